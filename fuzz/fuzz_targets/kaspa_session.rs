//! Arbitrary bytes from a miner into a Kaspa stratum session: never a panic, every output line
//! is valid JSON. `cargo fuzz run kaspa_session`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quarry_kaspa::fuzzing::kaspa_session::run(data));
