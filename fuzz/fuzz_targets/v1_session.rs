//! Arbitrary bytes from a miner into a Stratum V1 session: never a panic, every output line
//! is valid JSON. `cargo fuzz run v1_session`
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use quarry_stratum::v1::{Session, SessionConfig};
use quarry_stratum::Now;
use quarry_work::template::{GetBlockTemplate, WorkTemplate};

const START: Now = Now::synced(1_800_000_000_000);

fuzz_target!(|data: &[u8]| {
    // The server's own pool state, from the test kit; a 3-byte prefix leaves one byte of ids
    // (256), so a long input can also run the extranonce space out.
    let pool = quarry_stratum::testkit::pool_with_prefix(vec![0, 0, 0]);
    let gbt: GetBlockTemplate = serde_json::from_str(
        r#"{"version":536870912,"previousblockhash":"0000000000000000000000000000000000000000000000000000000000000007",
            "transactions":[],"coinbasevalue":5000000000,"bits":"207fffff","curtime":1800000000,
            "mintime":1799990000,"height":300}"#,
    )
    .expect("static template");
    let template = Arc::new(WorkTemplate::from_gbt(&gbt, 1).expect("static template"));
    let mut session = Session::new(Arc::new(SessionConfig::default()), START);
    session.handle_template(template, START, &pool);
    // Feed in chunks so that line splitting across reads is exercised too.
    for (i, chunk) in data.chunks(97).enumerate() {
        session.handle_bytes(chunk, START.plus_ms(i as u64 * 1000), &pool);
        // The share log's word: recorded, except now and then, which must close cleanly.
        while session.awaiting_record() > 0 {
            session.share_recorded(chunk.first().is_none_or(|b| b % 7 != 0));
        }
        while let Some(line) = session.poll_transmit() {
            assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok());
        }
        while session.poll_event().is_some() {}
    }
});
