//! Arbitrary bytes as an AuxPoW, as RSK work and as a coinbase: errors, never panics, and every
//! AuxPoW that decodes encodes back to the same bytes. `cargo fuzz run auxpow`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quarry_stratum::fuzzing::auxpow::run(data));
