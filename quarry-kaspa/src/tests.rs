//! Session tests: each ASIC dialect's message order replayed as its firmware sends it, then
//! every way a share can fail, each answered.

use std::sync::Arc;

use kaspa_addresses::{Address, Prefix, Version};
use kaspa_consensus_core::config::genesis::DEVNET_GENESIS;
use kaspa_consensus_core::header::Header;
use quarry_stratum::{Event, Now};
use quarry_work::Difficulty;
use serde_json::{json, Value};

use crate::pool::KaspaPool;
use crate::session::{share_target, KaspaConfig, KaspaSession};
use crate::work::{KaspaJob, KaspaTemplate};

const START: Now = Now {
    mono_ms: 1_000,
    unix_ms: 1_700_000_000_000,
};

fn address(prefix: Prefix) -> String {
    Address::new(prefix, Version::PubKey, &[7u8; 32]).to_string()
}

/// Shares at 2^-20 (about 4,000 hashes each) on devnet's genesis difficulty (about 500,000
/// hashes a block): most shares are not blocks.
fn config() -> Arc<KaspaConfig> {
    let mut config = KaspaConfig {
        network: Prefix::Devnet,
        ..KaspaConfig::default()
    };
    config.vardiff.start = Difficulty::new(2f64.powi(-20)).expect("difficulty");
    config.vardiff.min = config.vardiff.start;
    config.vardiff.max = config.vardiff.start;
    Arc::new(config)
}

fn job(id: u64, timestamp: u64) -> Arc<KaspaJob> {
    let mut header = Header::from(&DEVNET_GENESIS);
    header.timestamp = timestamp;
    Arc::new(KaspaJob::new(Arc::new(KaspaTemplate {
        id,
        header,
        reward: 50_000_000_000,
    })))
}

struct Miner {
    session: KaspaSession,
    pool: KaspaPool,
    next_id: u64,
}

impl Miner {
    fn new() -> Miner {
        Miner {
            session: KaspaSession::new(config(), START),
            pool: KaspaPool::new(64),
            next_id: 1,
        }
    }

    /// Sends one request; returns every line the session sends back, the share log
    /// recording each accepted share.
    fn request(&mut self, method: &str, params: Value) -> Vec<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let line = json!({"id": id, "method": method, "params": params}).to_string() + "\n";
        self.raw(line.as_bytes())
    }

    fn raw(&mut self, bytes: &[u8]) -> Vec<Value> {
        self.session.handle_bytes(bytes, START, &self.pool);
        while self.session.awaiting_record() > 0 {
            self.session.share_recorded(true);
        }
        self.lines()
    }

    fn lines(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(text) = self.session.poll_transmit() {
            for line in text.lines() {
                out.push(serde_json::from_str(line).expect("a JSON line"));
            }
        }
        out
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.session.poll_event()).collect()
    }

    /// Subscribes as `agent` and authorizes; the lines after the authorize request.
    fn connect(&mut self, agent: &str) -> (Vec<Value>, Vec<Value>) {
        self.session.handle_job(job(1, 1_700_000_000_000), START);
        let subscribed = self.request("mining.subscribe", json!([agent]));
        let authorized = self.request(
            "mining.authorize",
            json!([format!("{}.rig1", address(Prefix::Devnet)), "x"]),
        );
        (subscribed, authorized)
    }
}

/// A nonce (with `extranonce` in its high bytes) meeting the share target but not the block
/// target, or the block target when `block`.
fn find_nonce(job: &KaspaJob, extranonce: &[u8], block: bool) -> u64 {
    let share = share_target(config().vardiff.start);
    let prefix = extranonce
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    let shift = 64 - 8 * extranonce.len() as u32;
    let base = if extranonce.is_empty() {
        0
    } else {
        prefix << shift
    };
    (0u64..)
        .map(|n| base | n)
        .find(|&nonce| {
            let pow = job.pow(nonce);
            match block {
                true => pow <= job.network_target,
                false => pow <= share && pow > job.network_target,
            }
        })
        .expect("a nonce")
}

fn methods(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["method"].as_str().unwrap_or("answer"))
        .collect()
}

/// IceRiver: EthereumStratum subscribe answer, then after authorize set_extranonce (2 bytes),
/// set_difficulty and a hex job, notifications without `id`; the nonce comes without the
/// extranonce and is accepted.
#[test]
fn iceriver_message_order() {
    let mut miner = Miner::new();
    let (subscribed, authorized) = miner.connect("IceRiverMiner-v1.1");
    assert_eq!(
        subscribed,
        vec![json!({"id": 1, "result": [true, "EthereumStratum/1.0.0"], "error": null})]
    );
    assert_eq!(
        methods(&authorized),
        [
            "answer",
            "mining.set_extranonce",
            "mining.set_difficulty",
            "mining.notify"
        ]
    );
    assert_eq!(authorized[0]["result"], true);
    let extranonce = authorized[1]["params"][0]
        .as_str()
        .expect("hex")
        .to_string();
    assert_eq!(extranonce.len(), 4, "two bytes");
    assert_eq!(authorized[2]["params"][0].as_f64(), Some(2f64.powi(-20)));
    for notification in &authorized[1..] {
        assert!(notification.get("id").is_none(), "{notification}");
    }
    let notify = &authorized[3]["params"];
    let job = job(1, 1_700_000_000_000);
    assert_eq!(notify, &json!(["1", job.hex()]));
    let nonce = find_nonce(&job, &hex::decode(&extranonce).expect("hex"), false);
    let tail = format!("{:012x}", nonce & 0xffff_ffff_ffff);
    let answer = miner.request("mining.submit", json!(["rig1", "1", tail]));
    assert_eq!(
        answer,
        vec![json!({"id": 3, "result": true, "error": null})]
    );
    let accepted = miner
        .events()
        .into_iter()
        .find_map(|e| match e {
            Event::ShareAccepted(share) => Some(share),
            _ => None,
        })
        .expect("a share");
    assert_eq!(accepted.chain, "kaspa");
    assert_eq!(accepted.address, address(Prefix::Devnet));
    assert!(!accepted.is_block);
}

/// Bitmain (GodMiner): subscribe answered `[null, extranonce, size]`, a sized set_extranonce
/// (no extranonce by default: 8 bytes of nonce), array jobs whose words above 2^53 arrive
/// exact; the full 16-digit nonce.
#[test]
fn bitmain_message_order() {
    let mut miner = Miner::new();
    let (subscribed, authorized) = miner.connect("GodMiner/2.0.0");
    assert_eq!(subscribed[0]["result"], json!([null, "", 8]));
    assert_eq!(
        methods(&authorized),
        [
            "answer",
            "mining.set_extranonce",
            "mining.set_difficulty",
            "mining.notify"
        ]
    );
    assert_eq!(authorized[1]["params"], json!(["", 8]));
    let job = job(1, 1_700_000_000_000);
    let notify = &authorized[3]["params"];
    assert_eq!(notify[0], "1");
    let words: Vec<u64> = notify[1]
        .as_array()
        .expect("words")
        .iter()
        .map(|w| w.as_u64().expect("a u64"))
        .collect();
    assert_eq!(words, job.words());
    assert_eq!(notify[2], json!(1_700_000_000_000u64));
    assert_eq!(authorized[3]["jsonrpc"], "2.0");
    let nonce = find_nonce(&job, &[], false);
    let answer = miner.request(
        "mining.submit",
        json!([
            format!("{}.rig1", address(Prefix::Devnet)),
            "1",
            format!("{nonce:016x}")
        ]),
    );
    assert_eq!(answer[0]["result"], true, "{answer:?}");
}

/// Anything else (lolMiner): the array job, and its five-parameter submit with the nonce last.
#[test]
fn generic_miner_with_the_five_parameter_submit() {
    let mut miner = Miner::new();
    let (subscribed, authorized) = miner.connect("lolMiner 1.88");
    assert_eq!(
        subscribed[0]["result"],
        json!([true, "EthereumStratum/1.0.0"])
    );
    assert!(authorized[3]["params"][1].is_array());
    let extranonce = hex::decode(authorized[1]["params"][0].as_str().expect("hex")).expect("hex");
    let job = job(1, 1_700_000_000_000);
    let nonce = find_nonce(&job, &extranonce, false);
    let answer = miner.request(
        "mining.submit",
        json!(["rig1", "1", "", "", format!("0x{nonce:016x}")]),
    );
    assert_eq!(answer[0]["result"], true, "{answer:?}");
}

/// A block: reported with the nonce and template id for the submitter, and credited.
#[test]
fn a_block_is_reported_and_credited() {
    let mut miner = Miner::new();
    let (_, authorized) = miner.connect("lolMiner");
    let extranonce = hex::decode(authorized[1]["params"][0].as_str().expect("hex")).expect("hex");
    let job = job(1, 1_700_000_000_000);
    let nonce = find_nonce(&job, &extranonce, true);
    let answer = miner.request(
        "mining.submit",
        json!(["rig1", "1", format!("{nonce:016x}")]),
    );
    assert_eq!(answer[0]["result"], true);
    let events = miner.events();
    let block = events
        .iter()
        .find_map(|e| match e {
            Event::BlockFound(block) => Some(block),
            _ => None,
        })
        .expect("a block");
    assert_eq!(block.chain, "kaspa");
    assert_eq!(block.hash, job.block_hash(nonce));
    assert_eq!(
        block.block,
        [nonce.to_le_bytes(), 1u64.to_le_bytes()].concat()
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::ShareAccepted(s) if s.is_block)));
}

/// Every refusal is answered, with its code: the bridges stay silent on unknown jobs and bad
/// params.
#[test]
fn every_bad_share_gets_its_answer() {
    let mut miner = Miner::new();
    let code = |lines: &[Value]| lines[0]["error"][0].as_i64();
    // Before subscribe / authorize.
    let early = miner.request("mining.authorize", json!([address(Prefix::Devnet), "x"]));
    assert_eq!(code(&early), Some(25));
    let unauthorized = miner.request("mining.submit", json!(["rig1", "1", "00"]));
    assert_eq!(code(&unauthorized), Some(24));
    miner.request("mining.subscribe", json!(["lolMiner"]));
    // Another network's address, and garbage.
    let mainnet = miner.request("mining.authorize", json!([address(Prefix::Mainnet), "x"]));
    assert_eq!(code(&mainnet), Some(20));
    assert!(mainnet[0]["error"][1]
        .as_str()
        .is_some_and(|m| m.contains("mines kaspadev")));
    let bad = miner.request("mining.authorize", json!(["kaspadev:nonsense", "x"]));
    assert_eq!(code(&bad), Some(20));
    let (_, authorized) = miner.connect("lolMiner");
    let extranonce = hex::decode(authorized[1]["params"][0].as_str().expect("hex")).expect("hex");
    let job = job(1, 1_700_000_000_000);
    let nonce = find_nonce(&job, &extranonce, false);
    let nonce = format!("{nonce:016x}");
    for (params, expected) in [
        (json!(["rig1", "99", nonce]), 21),
        (json!(["rig1", "x", nonce]), 21),
        (json!(["rig1", "1", "zz"]), 20),
        (json!(["rig1", "1", "0123456789abcdef0"]), 20),
        (json!(["rig1", "1"]), 20),
        (json!(["someone-else.rig", "1", nonce]), 24),
    ] {
        let answer = miner.request("mining.submit", params.clone());
        assert_eq!(code(&answer), Some(expected), "{params} -> {answer:?}");
    }
    assert_eq!(
        miner.request("mining.submit", json!(["rig1", "1", nonce]))[0]["result"],
        true
    );
    let duplicate = miner.request("mining.submit", json!(["rig1", "1", nonce]));
    assert_eq!(code(&duplicate), Some(22));
    // A nonce that misses the share target.
    let share = share_target(config().vardiff.start);
    let low = (0u64..)
        .map(|n| u64::from_be_bytes([extranonce[0], extranonce[1], 0, 0, 0, 0, 0, 0]) | n)
        .find(|&n| job.pow(n) > share)
        .expect("a low share");
    let answer = miner.request("mining.submit", json!(["rig1", "1", format!("{low:016x}")]));
    assert_eq!(code(&answer), Some(23));
    let unknown = miner.request("mining.frobnicate", json!([]));
    assert_eq!(code(&unknown), Some(20));
    assert!(miner.session.close_reason().is_none());
}

/// Firmware that names a newer job id than the one it mined: the share is found on the
/// earlier job and accepted.
#[test]
fn a_share_on_the_wrong_job_id_is_found_on_an_earlier_job() {
    let mut miner = Miner::new();
    let (_, authorized) = miner.connect("IceRiverMiner");
    let extranonce = hex::decode(authorized[1]["params"][0].as_str().expect("hex")).expect("hex");
    miner.session.handle_job(job(2, 1_700_000_001_000), START);
    miner.session.handle_job(job(3, 1_700_000_002_000), START);
    assert_eq!(methods(&miner.lines()), ["mining.notify", "mining.notify"]);
    let first = job(1, 1_700_000_000_000);
    let nonce = find_nonce(&first, &extranonce, false);
    let answer = miner.request(
        "mining.submit",
        json!(["rig1", "3", format!("{nonce:016x}")]),
    );
    assert_eq!(answer[0]["result"], true, "{answer:?}");
}

/// An over-long line closes the connection for garbage; ten junk lines in a row too.
#[test]
fn over_long_and_junk_lines_close() {
    let mut miner = Miner::new();
    miner.raw(&vec![b'a'; 20_000]);
    assert!(miner.session.close_reason().is_some());
    let mut miner = Miner::new();
    for _ in 0..10 {
        miner.raw(b"not json\n");
    }
    assert!(miner.session.close_reason().is_some());
    assert!(miner.session.offence().is_some());
}

/// A share the share log cannot keep is answered with error 20, and the miner goes on.
#[test]
fn an_unrecorded_share_gets_an_error_not_true() {
    let mut miner = Miner::new();
    let (_, authorized) = miner.connect("lolMiner");
    let extranonce = hex::decode(authorized[1]["params"][0].as_str().expect("hex")).expect("hex");
    let job = job(1, 1_700_000_000_000);
    let nonce = find_nonce(&job, &extranonce, false);
    let line = json!({"id": 9, "method": "mining.submit", "params": ["rig1", "1", format!("{nonce:016x}")]})
        .to_string()
        + "\n";
    miner
        .session
        .handle_bytes(line.as_bytes(), START, &miner.pool);
    assert_eq!(
        miner.session.poll_transmit(),
        None,
        "held for the share log"
    );
    miner.session.share_recorded(false);
    let answer = miner.lines();
    assert_eq!(answer[0]["id"], 9);
    assert_eq!(answer[0]["error"][0], 20);
    assert!(miner.session.close_reason().is_none());
}

/// A Bitmain miner that subscribes and never authorizes is closed at the authorization
/// deadline, as an offence.
#[test]
fn a_miner_that_never_authorizes_times_out() {
    let mut miner = Miner::new();
    miner.request("mining.subscribe", json!(["GodMiner/2.0.0"]));
    let due = miner.session.poll_timeout().expect("a deadline");
    assert_eq!(due, START.mono_ms + 30_000);
    miner.session.handle_timeout(Now {
        mono_ms: due,
        unix_ms: START.unix_ms + 30_000,
    });
    assert!(miner.session.close_reason().is_some());
    assert!(miner.session.offence().is_some());
}

/// Solo mode: a miner registers its address with the pool on authorize, mines the job the pool
/// published for that address (not another's), and gives the address back when it goes.
#[test]
fn solo_miners_mine_their_own_address_jobs() {
    use crate::work::KaspaWork;
    let mut config = (*config()).clone();
    config.solo = true;
    let pool = KaspaPool::new(64);
    let mine = address(Prefix::Devnet);
    let other = Address::new(Prefix::Devnet, Version::PubKey, &[8u8; 32]).to_string();
    let (job_mine, job_other) = (job(1, 1_700_000_000_000), job(2, 1_700_000_000_500));
    let work = |jobs: &[(&str, &Arc<KaspaJob>)]| {
        Arc::new(KaspaWork {
            pool: None,
            solo: jobs
                .iter()
                .map(|(a, j)| (a.to_string(), Arc::clone(j)))
                .collect(),
        })
    };
    let mut session = KaspaSession::new(Arc::new(config), START);
    // Work for someone else only: nothing to mine yet.
    session.handle_work(work(&[(&other, &job_other)]), START);
    for line in [
        json!({"id": 1, "method": "mining.subscribe", "params": ["IceRiverMiner-v1.1"]}),
        json!({"id": 2, "method": "mining.authorize", "params": [format!("{mine}.rig"), "x"]}),
    ] {
        session.handle_bytes(format!("{line}\n").as_bytes(), START, &pool);
    }
    assert_eq!(pool.payees(), std::slice::from_ref(&mine));
    let notified = |session: &mut KaspaSession| -> Vec<Value> {
        std::iter::from_fn(|| session.poll_transmit())
            .flat_map(|t| {
                t.lines()
                    .map(|l| serde_json::from_str::<Value>(l).expect("json"))
                    .collect::<Vec<_>>()
            })
            .filter(|m| m["method"] == "mining.notify")
            .collect()
    };
    assert!(
        notified(&mut session).is_empty(),
        "no job of another address"
    );
    // The pool fetched this address's template: that job, once; the same work again sends
    // nothing new.
    let both = work(&[(&other, &job_other), (&mine, &job_mine)]);
    session.handle_work(Arc::clone(&both), START);
    let jobs = notified(&mut session);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["params"][1], job_mine.hex());
    session.handle_work(both, START);
    assert!(notified(&mut session).is_empty());
    session.release(&pool);
    assert!(pool.payees().is_empty(), "the address is given back");
}
