//! Arbitrary bytes into a Template Provider connection, raw and as frames encrypted after a real
//! handshake (with a template to serve): never a panic. `cargo fuzz run tp_session`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quarry_stratum::fuzzing::tp_session::run(data));
