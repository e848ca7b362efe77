//! Arbitrary bytes as one Stratum V1 line: the in-place `mining.submit` parser answers exactly
//! as the general `serde_json::Value` one. `cargo fuzz run v1_submit`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quarry_stratum::fuzzing::v1_submit::run(data));
