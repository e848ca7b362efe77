//! Arbitrary bytes from a pool into the miner-side V1 client: never a panic, and nothing it
//! hands to the hashers breaks the extranonce bounds. `cargo fuzz run v1_client`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quarry_stratum::fuzzing::v1_client::run(data));
