//! A hostile pool's payout table and share file through `quarry verify`, and the coinbase payout
//! planner on arbitrary windows: never a panic, and the verifier agrees with every table planned.
//! `cargo fuzz run coinbase_verify`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quarry_ledger::fuzzing::coinbase_verify::run(data));
