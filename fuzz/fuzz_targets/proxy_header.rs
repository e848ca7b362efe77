//! Arbitrary first bytes as a PROXY protocol header (v1 and v2). `cargo fuzz run proxy_header`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quarry_stratum::fuzzing::proxy_header::run(data));
