//! Arbitrary `getblocktemplate` answers: errors, never panics. `cargo fuzz run gbt_template`
#![no_main]

use libfuzzer_sys::fuzz_target;
use quarry_work::template::{GetBlockTemplate, WorkTemplate};

fuzz_target!(|data: &[u8]| {
    if let Ok(gbt) = serde_json::from_slice::<GetBlockTemplate>(data) {
        let _ = WorkTemplate::from_gbt(&gbt, 1);
    }
});
