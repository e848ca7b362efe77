//! Arbitrary bytes from a miner into a Stratum V1 session: never a panic, every output line
//! is valid JSON. `cargo fuzz run v1_session`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quarry_stratum::fuzzing::v1_session::run(data));
