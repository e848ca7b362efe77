//! Arbitrary bytes from a miner into a Stratum V1 session: never a panic, every output line
//! is valid JSON. `cargo fuzz run v1_session`
#![no_main]

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use quarry_stratum::v1::{Session, SessionConfig};
use quarry_stratum::Pool;
use quarry_work::coinbase::CoinbaseLayout;
use quarry_work::job::{Job, JobFactory};
use quarry_work::template::{GetBlockTemplate, WorkTemplate};
use quarry_work::Hash32;

struct FuzzPool {
    factory: RefCell<JobFactory>,
    seen: RefCell<HashSet<Hash32>>,
}

impl Pool for FuzzPool {
    fn job_for(&self, template: &Arc<WorkTemplate>, payout: &[u8]) -> Option<Arc<Job>> {
        self.factory.borrow_mut().job_for(template, payout).ok()
    }
    fn first_seen(&self, hash: &Hash32) -> bool {
        self.seen.borrow_mut().insert(*hash)
    }
    fn claim_block(&self, _prev_hash: &Hash32) -> bool {
        true
    }
    fn allocate_extranonce1(&self) -> Vec<u8> {
        vec![0, 0, 0, 2]
    }
    fn release_extranonce1(&self, _extranonce1: &[u8]) {}
    fn resume_extranonce1(&self, _current: &[u8], requested: &[u8]) -> bool {
        requested.first() == Some(&7)
    }
}

fuzz_target!(|data: &[u8]| {
    let pool = FuzzPool {
        factory: RefCell::new(JobFactory::new(CoinbaseLayout {
            extranonce1_len: 4,
            extranonce2_len: 8,
            tag: b"/fuzz/".to_vec(),
        })),
        seen: RefCell::new(HashSet::new()),
    };
    let gbt: GetBlockTemplate = serde_json::from_str(
        r#"{"version":536870912,"previousblockhash":"0000000000000000000000000000000000000000000000000000000000000007",
            "transactions":[],"coinbasevalue":5000000000,"bits":"207fffff","curtime":1800000000,
            "mintime":1799990000,"height":300}"#,
    )
    .expect("static template");
    let template = Arc::new(WorkTemplate::from_gbt(&gbt, 1).expect("static template"));
    let mut session = Session::new(Arc::new(SessionConfig::default()), vec![0, 0, 0, 1], 1_800_000_000_000);
    session.handle_template(template, 1_800_000_000_000, &pool);
    // Feed in chunks so that line splitting across reads is exercised too.
    for (i, chunk) in data.chunks(97).enumerate() {
        session.handle_bytes(chunk, 1_800_000_000_000 + i as u64 * 1000, &pool);
        while let Some(line) = session.poll_transmit() {
            assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok());
        }
        while session.poll_event().is_some() {}
    }
});
