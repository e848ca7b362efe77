//! The test kit: the pool, templates, session settings and a scripted V1 miner that this
//! crate's tests, the binary's tests and the benches share (feature `testkit`), so that each
//! exists once.
//!
//! The miner rebuilds headers from what it receives on the wire (`mining.notify`), the way
//! real firmware does, so tests written with it also check the encoding of every field.

use std::sync::Arc;

use quarry_work::coinbase::CoinbaseLayout;
use quarry_work::job::JobFactory;
use quarry_work::template::{GetBlockTemplate, WorkTemplate};
use quarry_work::vardiff::VardiffConfig;
use quarry_work::{Difficulty, Target};
use serde_json::{json, Value};

use crate::clock::Now;
use crate::pool::SharedPool;
use crate::v1::{CloseReason, Event, Session, SessionConfig};

/// A regtest P2PKH address (the kind the registry node hands out).
pub const ADDRESS: &str = "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn";
/// A bech32 regtest address.
pub const BECH32_ADDRESS: &str = "bcrt1qu28ckp7yu0w8jrhp2lcj4mphvs9kms362vq3jy";
/// A mainnet address: wrong network for these tests.
pub const MAINNET_ADDRESS: &str = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa";

pub const START: Now = Now::synced(1_800_000_000_000);

/// The pool the tests run against: the server's own [`SharedPool`], not a stand-in.
pub type TestPool = SharedPool;

/// A pool with the tests' coinbase layout (4-byte extranonce1, 8-byte extranonce2).
pub fn test_pool() -> SharedPool {
    pool_with_prefix(Vec::new())
}

/// The same, with every extranonce1 starting with `prefix` (a 3-byte prefix leaves 256 ids,
/// so a test or fuzz input can run the space out).
pub fn pool_with_prefix(prefix: Vec<u8>) -> SharedPool {
    SharedPool::new(
        JobFactory::new(CoinbaseLayout {
            extranonce1_len: 4,
            extranonce2_len: 8,
            tag: b"/quarry-test/".to_vec(),
        }),
        prefix,
    )
}

/// A template with no transactions on `prev` with compact target `bits`, at [`START`].
pub fn template(id: u64, prev: u8, bits: u32) -> Arc<WorkTemplate> {
    template_at(id, prev, bits, START.unix_secs())
}

/// The same at `curtime` (Unix seconds): for tests on the real clock.
pub fn template_at(id: u64, prev: u8, bits: u32, curtime: u64) -> Arc<WorkTemplate> {
    let gbt: GetBlockTemplate = serde_json::from_value(json!({
        "version": 0x2000_0000u32,
        "previousblockhash": hex::encode([prev; 32]),
        "transactions": [],
        "coinbasevalue": 5_000_000_000u64,
        "bits": format!("{bits:08x}"),
        "curtime": curtime,
        "mintime": curtime - 600,
        "height": 200 + id,
        "rules": ["csv", "!segwit"],
    }))
    .expect("valid template");
    Arc::new(WorkTemplate::from_gbt(&gbt, id).expect("consistent"))
}

/// Network difficulty 1: shares at tiny difficulties are cheap, blocks never happen.
pub const HARD_BITS: u32 = 0x1d00ffff;
/// Regtest: every other hash is a block.
pub const REGTEST_BITS: u32 = 0x207fffff;

pub fn config() -> SessionConfig {
    SessionConfig {
        vardiff: VardiffConfig {
            start: Difficulty::new(1e-6).expect("positive"),
            min: Difficulty::new(1e-7).expect("positive"),
            max: Difficulty::new(1e6).expect("positive"),
            ..VardiffConfig::default()
        },
        ..SessionConfig::default()
    }
}

/// A job as the miner saw it on the wire.
pub type WireJob = crate::v1::Notify;

/// The miner end of a session.
pub struct Miner {
    pub session: Session,
    pub pool: TestPool,
    pub now: Now,
    pub next_id: u64,
    pub jobs: Vec<WireJob>,
    pub difficulty: f64,
    pub notifications: Vec<Value>,
    pub extranonce1: Vec<u8>,
}

impl Miner {
    pub fn new(config: SessionConfig) -> Miner {
        Miner {
            session: Session::new(Arc::new(config), START),
            pool: test_pool(),
            now: START,
            next_id: 1,
            jobs: Vec::new(),
            difficulty: 0.0,
            notifications: Vec::new(),
            extranonce1: Vec::new(),
        }
    }

    /// Sends a raw line; returns the answers to requests (notifications are recorded).
    pub fn send_raw(&mut self, line: &str) -> Vec<Value> {
        self.session
            .handle_bytes(format!("{line}\n").as_bytes(), self.now, &self.pool);
        record_all(&mut self.session);
        self.drain()
    }

    pub fn drain(&mut self) -> Vec<Value> {
        let mut answers = Vec::new();
        while let Some(line) = self.session.poll_transmit() {
            assert!(line.ends_with('\n'));
            let value: Value = serde_json::from_str(&line).expect("we send JSON");
            match value["method"].as_str() {
                Some("mining.notify") => self
                    .jobs
                    .push(WireJob::from_params(&value["params"]).expect("valid notify")),
                Some("mining.set_difficulty") => {
                    self.difficulty = value["params"][0].as_f64().expect("number")
                }
                Some(_) => {}
                None => {
                    answers.push(value);
                    continue;
                }
            }
            self.notifications.push(value);
        }
        answers
    }

    /// Sends one request and returns its answer.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let line = json!({"id": id, "method": method, "params": params}).to_string();
        let answers = self.send_raw(&line);
        assert_eq!(answers.len(), 1, "one answer to {method}: {answers:?}");
        assert_eq!(answers[0]["id"], json!(id));
        answers[0].clone()
    }

    pub fn template(&mut self, template: Arc<WorkTemplate>) {
        self.session.handle_template(template, self.now, &self.pool);
        self.drain();
    }

    pub fn advance(&mut self, ms: u64) {
        self.now = self.now.plus_ms(ms);
        if let Some(due) = self.session.poll_timeout() {
            if due <= self.now.mono_ms {
                self.session.handle_timeout(self.now, &self.pool);
            }
        }
        self.drain();
    }

    /// configure + subscribe + authorize, with a first template.
    pub fn handshake(config: SessionConfig, bits: u32) -> Miner {
        let mut miner = Miner::new(config);
        miner.template(template(1, 7, bits));
        let configured = miner.call(
            "mining.configure",
            json!([["version-rolling"], {"version-rolling.mask": "ffffffff"}]),
        );
        assert_eq!(configured["result"]["version-rolling.mask"], "1fffe000");
        let subscribed = miner.call("mining.subscribe", json!(["test/1.0"]));
        miner.extranonce1 =
            hex::decode(subscribed["result"][1].as_str().expect("extranonce1")).expect("hex");
        assert_eq!(subscribed["result"][2], 8);
        let authorized = miner.call("mining.authorize", json!([format!("{ADDRESS}.rig1"), "x"]));
        assert_eq!(authorized["result"], true, "{authorized}");
        assert!(!miner.jobs.is_empty(), "a job follows authorize");
        miner
    }

    pub fn last_job(&self) -> WireJob {
        self.jobs.last().expect("a job").clone()
    }

    /// Finds extranonce2/nonce whose hash meets (`meets`) or misses the job's share target.
    pub fn find(&self, job: &WireJob, version: u32, ntime: u32, meets: bool) -> (Vec<u8>, u32) {
        let target = Target::from_difficulty(Difficulty::new(self.difficulty).expect("set"));
        let en2 = vec![0, 0, 0, 0, 0, 0, 0, 9];
        for nonce in 0.. {
            let hash = job.hash(&self.extranonce1, &en2, version, ntime, nonce);
            if target.is_met_by(&hash) == meets {
                return (en2, nonce);
            }
        }
        unreachable!("the nonce space holds a match")
    }

    pub fn submit(
        &mut self,
        job: &WireJob,
        en2: &[u8],
        ntime: u32,
        nonce: u32,
        vbits: Option<u32>,
    ) -> Value {
        let mut params = vec![
            json!(format!("{ADDRESS}.rig1")),
            json!(job.job_id),
            json!(hex::encode(en2)),
            json!(format!("{ntime:08x}")),
            json!(format!("{nonce:08x}")),
        ];
        if let Some(bits) = vbits {
            params.push(json!(format!("{bits:08x}")));
        }
        self.call("mining.submit", Value::Array(params))
    }

    pub fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.session.poll_event()).collect()
    }

    pub fn closed(&self) -> Option<&CloseReason> {
        self.session.close_reason()
    }
}

/// What the driver does once the share log has every accepted share: report them recorded.
pub fn record_all(session: &mut Session) {
    while session.awaiting_record() > 0 {
        session.share_recorded(true);
    }
}

/// The error code of an answer, or None for success.
pub fn code(answer: &Value) -> Option<i64> {
    answer["error"]
        .as_array()
        .map(|e| e[0].as_i64().expect("code"))
}

/// Namecoin's chain id, easy (regtest) bits: every other share solves it.
pub const EASY_AUX: (&str, u32, u32) = ("namecoin", 1, REGTEST_BITS);
/// A second AuxPoW chain at difficulty 1: no test share solves it.
pub const HARD_AUX: (&str, u32, u32) = ("syscoin", 16, HARD_BITS);

/// `template(id, prev, bits)` merge-mining `aux` (name, chain id, bits) and, with `rsk`, an
/// RSK chain at regtest difficulty.
pub fn merged_template(
    id: u64,
    prev: u8,
    bits: u32,
    aux: &[(&str, u32, u32)],
    rsk: bool,
) -> Arc<WorkTemplate> {
    use quarry_work::auxpow::{AuxHash, ChainId};
    use quarry_work::merged::{AuxBlock, MergedWork, RskBlock};
    let blocks = aux
        .iter()
        .enumerate()
        .map(|(i, (chain, chain_id, bits))| AuxBlock {
            chain: chain.to_string(),
            chain_id: ChainId(*chain_id),
            hash: AuxHash::from_internal([0xa0 + i as u8 + prev; 32]),
            bits: *bits,
            height: 1000 + id,
            reward: 5_000_000_000,
        })
        .collect();
    let rsk = rsk.then(|| RskBlock {
        chain: "rsk".into(),
        work: quarry_work::rsk::RskWork {
            block_hash: [0x5b; 32],
            target: Target::from_compact(REGTEST_BITS),
            fees_paid: "0".into(),
            notify: true,
            parent_hash: [0; 32],
        },
    });
    let mut template = (*template(id, prev, bits)).clone();
    template.merged = Some(Arc::new(
        MergedWork::new(blocks, rsk).expect("distinct chain ids"),
    ));
    Arc::new(template)
}
