//! Arbitrary bytes as a signed ownership proof (BIP322 or legacy signmessage) for a miner's
//! address, and as an authorize password (`ln=` offers, aux addresses).
//! `cargo fuzz run ownership`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quarry_stratum::fuzzing::ownership::run(data));
