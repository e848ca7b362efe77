//! Arbitrary bytes into the SV1 → SV2 proxy from both sides: miner lines (V1 JSON) and upstream
//! bytes before and during the handshake. Never a panic. `cargo fuzz run proxy`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quarry_stratum::fuzzing::proxy::run(data));
