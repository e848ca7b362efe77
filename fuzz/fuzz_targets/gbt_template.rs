//! Arbitrary `getblocktemplate` answers: errors, never panics. `cargo fuzz run gbt_template`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quarry_stratum::fuzzing::gbt_template::run(data));
