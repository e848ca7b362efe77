//! Arbitrary bytes into an SV2 pool session, both raw (handshake bytes, garbage) and as frames
//! encrypted after a real handshake: never a panic; a session either keeps going or closes
//! with a reason. `cargo fuzz run sv2_session`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quarry_stratum::fuzzing::sv2_session::run(data));
