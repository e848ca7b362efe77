//! The SV1 → SV2 proxy between scripted V1 miners and our SV2 pool session, over real Noise,
//! all sans-IO: every byte a miner or the pool sees went through the real codecs.

use std::sync::Arc;

use quarry_work::Target;
use serde_json::{json, Value};

use super::{config, template, test_pool, TestPool, ADDRESS, HARD_BITS, REGTEST_BITS, START};
use crate::event::Event;
use crate::proxy::{DownstreamId, Proxy, ProxyConfig, ProxyEvent};
use crate::v1::Notify;
use crate::v2::declaration::{JdConfig, Verdict};
use crate::v2::{AuthorityKeypair, PoolSession, Sv2Config};

struct Rig {
    proxy: Proxy,
    pool: PoolSession,
    backend: TestPool,
    /// Lines each miner received, by id.
    received: std::collections::HashMap<DownstreamId, Vec<Value>>,
    /// The pool's JDS session, when the proxy declares its own jobs, and what the node says
    /// of every declared block.
    jds: Option<(PoolSession, Verdict)>,
}

impl Rig {
    fn new(aggregate: bool, bits: u32) -> Rig {
        Rig::build(aggregate, bits, false)
    }

    /// An aggregating proxy that declares its own jobs (full template) to the pool's JDS, with
    /// the pool's first template as its own.
    fn with_jd(bits: u32) -> Rig {
        Rig::build(true, bits, true)
    }

    fn build(aggregate: bool, bits: u32, jd: bool) -> Rig {
        let authority = AuthorityKeypair::generate();
        let backend = match jd {
            true => test_pool().with_declarations(JdConfig::default()),
            false => test_pool(),
        };
        let first = template(1, 7, bits);
        backend.on_template(&first);
        let session = || {
            PoolSession::new(
                Arc::new(config()),
                Arc::new(Sv2Config::new(authority.clone())),
                START,
            )
        };
        let mut pool = session();
        pool.handle_template(Arc::clone(&first), START, &backend);
        let mut proxy = Proxy::new(ProxyConfig {
            user_identity: format!("{ADDRESS}.proxy"),
            aggregate,
            nominal_hash_rate: 0.0,
            jd,
            ..ProxyConfig::default()
        });
        proxy
            .upstream_connected(&authority.public, ("127.0.0.1".into(), 3333))
            .expect("initiator");
        let jds = jd.then(|| {
            let mut jds = session();
            jds.handle_template(Arc::clone(&first), START, &backend);
            proxy
                .jd_connected(&authority.public, ("127.0.0.1".into(), 3333))
                .expect("initiator");
            proxy.handle_template(Arc::clone(&first));
            (jds, Verdict::Valid)
        });
        let mut rig = Rig {
            proxy,
            pool,
            backend,
            received: Default::default(),
            jds,
        };
        rig.pump();
        rig
    }

    /// Moves bytes until nobody has anything to say.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(bytes) = self.proxy.poll_upstream_transmit() {
                self.pool.handle_bytes(&bytes, START, &self.backend);
                // The share log has every accepted share at once here.
                while self.pool.awaiting_record() > 0 {
                    self.pool.share_recorded(true);
                }
                moved = true;
            }
            while let Some(bytes) = self.pool.poll_transmit() {
                self.proxy.upstream_bytes(&bytes, START.unix_secs() as u32);
                moved = true;
            }
            for id in self.proxy.downstreams_with_output() {
                let bytes = self.proxy.poll_downstream_transmit(id).expect("output");
                let text = String::from_utf8(bytes).expect("utf-8");
                for line in text.lines() {
                    let value = serde_json::from_str(line).expect("JSON lines");
                    self.received.entry(id).or_default().push(value);
                }
                moved = true;
            }
            if let Some((jds, verdict)) = &mut self.jds {
                while let Some(bytes) = self.proxy.poll_jd_transmit() {
                    jds.handle_bytes(&bytes, START, &self.backend);
                    moved = true;
                }
                while let Some(event) = jds.poll_event() {
                    if let Event::CheckDeclaredBlock { request_id, .. } = event {
                        jds.handle_verdict(request_id, verdict.clone(), START, &self.backend);
                    }
                }
                while let Some(bytes) = jds.poll_transmit() {
                    self.proxy.jd_bytes(&bytes, START.unix_secs() as u32);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn send(&mut self, id: DownstreamId, request: Value) {
        let line = format!("{request}\n");
        self.proxy
            .downstream_bytes(id, line.as_bytes(), START.unix_secs());
        self.pump();
    }

    fn answer(&self, id: DownstreamId, request_id: u64) -> Value {
        self.received[&id]
            .iter()
            .find(|v| v["id"] == json!(request_id))
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "answer {request_id} for miner {id}: {:?}",
                    self.received.get(&id)
                )
            })
    }

    /// Connects, configures, subscribes and authorizes a miner: (extranonce1, extranonce2 size).
    fn miner(&mut self, id: DownstreamId) -> (Vec<u8>, usize) {
        self.proxy.downstream_connected(id);
        self.send(id, json!({"id": 1, "method": "mining.configure", "params": [["version-rolling"], {"version-rolling.mask": "ffffffff"}]}));
        self.send(
            id,
            json!({"id": 2, "method": "mining.subscribe", "params": ["test/1"]}),
        );
        self.send(
            id,
            json!({"id": 3, "method": "mining.authorize", "params": [format!("rig{id}"), "x"]}),
        );
        let subscribed = self.answer(id, 2);
        let extranonce1 = hex::decode(subscribed["result"][1].as_str().expect("en1")).expect("hex");
        let size = subscribed["result"][2].as_u64().expect("en2 size") as usize;
        assert_eq!(self.answer(id, 3)["result"], json!(true));
        (extranonce1, size)
    }

    fn last_job(&self, id: DownstreamId) -> (Notify, f64) {
        let lines = &self.received[&id];
        let notify = lines
            .iter()
            .rev()
            .find(|v| v["method"] == "mining.notify")
            .expect("a job");
        let difficulty = lines
            .iter()
            .rev()
            .find(|v| v["method"] == "mining.set_difficulty")
            .and_then(|v| v["params"][0].as_f64())
            .expect("a difficulty");
        (
            Notify::from_params(&notify["params"]).expect("valid notify"),
            difficulty,
        )
    }

    /// Solves the miner's newest job and submits it; returns the answer.
    fn submit(
        &mut self,
        id: DownstreamId,
        request_id: u64,
        extranonce1: &[u8],
        en2_size: usize,
    ) -> Value {
        let (job, difficulty) = self.last_job(id);
        let target =
            Target::from_difficulty(quarry_work::Difficulty::new(difficulty).expect("positive"));
        let extranonce2 = vec![0x5a; en2_size];
        let nonce = (0u32..)
            .find(|n| {
                target.is_met_by(&job.hash(extranonce1, &extranonce2, job.version, job.ntime, *n))
            })
            .expect("a share");
        self.send(
            id,
            json!({"id": request_id, "method": "mining.submit", "params": [
                format!("rig{id}"), job.job_id, hex::encode(&extranonce2),
                format!("{:08x}", job.ntime), format!("{nonce:08x}")]}),
        );
        self.answer(id, request_id)
    }

    fn pool_events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.pool.poll_event()).collect()
    }

    fn proxy_events(&mut self) -> Vec<ProxyEvent> {
        std::iter::from_fn(|| self.proxy.poll_event()).collect()
    }
}

#[test]
fn aggregated_miners_get_disjoint_extranonces_and_their_shares_reach_the_pool() {
    let mut rig = Rig::new(true, HARD_BITS);
    assert!(rig.proxy.upstream_ready());
    let (en1_a, size_a) = rig.miner(1);
    let (en1_b, size_b) = rig.miner(2);
    assert_ne!(en1_a, en1_b, "each miner has its own search space");
    assert_eq!(en1_a.len(), en1_b.len());
    assert_eq!(size_a, size_b);
    assert!(size_a >= 4);
    assert_eq!(rig.pool.channel_count(), 1, "one upstream channel for all");

    assert_eq!(rig.submit(1, 10, &en1_a, size_a)["result"], json!(true));
    assert_eq!(rig.submit(2, 11, &en1_b, size_b)["result"], json!(true));
    let accepted: Vec<_> = rig
        .pool_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::ShareAccepted(share) => Some(share.worker),
            _ => None,
        })
        .collect();
    assert_eq!(accepted.len(), 2, "the pool accepted both shares");
    assert!(accepted.iter().all(|w| w == &format!("{ADDRESS}.proxy")));
    let events = rig.proxy_events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProxyEvent::UpstreamAccepted { .. })),
        "{events:?}"
    );

    // Bad shares are answered by the proxy and never reach the pool.
    rig.send(1, json!({"id": 20, "method": "mining.submit", "params": ["rig1", "ffff", "00000000", "00000000", "00000000"]}));
    assert_eq!(rig.answer(1, 20)["error"][0], json!(21));
    let (job, _) = rig.last_job(1);
    rig.send(1, json!({"id": 21, "method": "mining.submit", "params": ["rig1", job.job_id, "00", format!("{:08x}", job.ntime), "00000000"]}));
    assert_eq!(
        rig.answer(1, 21)["error"][0],
        json!(20),
        "wrong extranonce2 size"
    );
    assert!(rig.pool_events().is_empty());
}

#[test]
fn new_blocks_reach_miners_as_clean_jobs_and_blocks_are_found_through_the_proxy() {
    let mut rig = Rig::new(true, REGTEST_BITS);
    let (en1, size) = rig.miner(1);
    assert_eq!(rig.submit(1, 10, &en1, size)["result"], json!(true));
    let blocks = rig
        .pool_events()
        .into_iter()
        .filter(|e| matches!(e, Event::BlockFound(_)))
        .count();
    assert_eq!(blocks, 1, "a regtest share is a block, found by the pool");

    let before = rig.last_job(1).0;
    rig.pool
        .handle_template(template(2, 8, REGTEST_BITS), START, &rig.backend);
    rig.pump();
    let (after, _) = rig.last_job(1);
    assert!(after.clean, "a new tip voids older jobs");
    assert_ne!(after.prev_hash, before.prev_hash);
    assert_eq!(after.prev_hash, [8; 32]);
    // A share on the old job is stale.
    rig.send(1, json!({"id": 30, "method": "mining.submit", "params": ["rig1", before.job_id, hex::encode(vec![0; size]), format!("{:08x}", before.ntime), "00000000"]}));
    assert_eq!(rig.answer(1, 30)["error"][0], json!(21));
    assert_eq!(rig.submit(1, 31, &en1, size)["result"], json!(true));
}

#[test]
fn per_miner_channels_and_upstream_loss_sends_miners_back() {
    let mut rig = Rig::new(false, HARD_BITS);
    let (en1_a, size) = rig.miner(1);
    let (en1_b, _) = rig.miner(2);
    assert_eq!(
        rig.pool.channel_count(),
        2,
        "one upstream channel per miner"
    );
    assert_ne!(en1_a, en1_b);
    assert_eq!(rig.submit(1, 10, &en1_a, size)["result"], json!(true));
    rig.proxy.downstream_closed(2);
    rig.pump();
    assert_eq!(
        rig.pool.channel_count(),
        1,
        "a gone miner's channel is closed upstream"
    );

    rig.proxy.upstream_lost("test");
    rig.pump();
    assert!(rig.received[&1]
        .iter()
        .any(|v| v["method"] == "client.reconnect"));
    assert!(rig
        .proxy_events()
        .iter()
        .any(|e| matches!(e, ProxyEvent::CloseDownstream(1, _))));
}

#[test]
fn a_miner_that_subscribes_before_the_upstream_is_up_waits_for_it() {
    let authority = AuthorityKeypair::generate();
    let mut proxy = Proxy::new(ProxyConfig {
        user_identity: "x".into(),
        ..ProxyConfig::default()
    });
    proxy.downstream_connected(7);
    proxy.downstream_bytes(
        7,
        b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n",
        START.unix_secs(),
    );
    assert!(
        proxy.poll_downstream_transmit(7).is_none(),
        "no answer without a channel"
    );
    // Garbage five times closes the miner.
    for _ in 0..5 {
        proxy.downstream_bytes(7, b"garbage\n", START.unix_secs());
    }
    assert!(std::iter::from_fn(|| proxy.poll_event())
        .any(|e| matches!(e, ProxyEvent::CloseDownstream(7, _))));
    // A wrong authority key fails the upstream, not the process.
    proxy
        .upstream_connected(&AuthorityKeypair::generate().public, ("h".into(), 1))
        .expect("initiator");
    let backend = test_pool();
    let mut pool = PoolSession::new(
        Arc::new(config()),
        Arc::new(Sv2Config::new(authority)),
        START,
    );
    while let Some(bytes) = proxy.poll_upstream_transmit() {
        pool.handle_bytes(&bytes, START, &backend);
        while pool.awaiting_record() > 0 {
            pool.share_recorded(true);
        }
    }
    while let Some(bytes) = pool.poll_transmit() {
        proxy.upstream_bytes(&bytes, START.unix_secs() as u32);
    }
    assert!(std::iter::from_fn(|| proxy.poll_event()).any(
        |e| matches!(e, ProxyEvent::UpstreamFailed(reason) if reason.contains("certificate"))
    ));
}

#[test]
fn a_declaration_called_stale_lets_the_pools_held_back_job_through() {
    let mut rig = Rig::with_jd(REGTEST_BITS);
    let (_, _) = rig.miner(1);
    let events = rig.proxy_events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProxyEvent::CustomJobActive { .. })),
        "the declared job is mined: {events:?}"
    );
    let (declared, _) = rig.last_job(1);
    assert_eq!(declared.prev_hash, [7; 32]);

    // The pool moves to a new tip; the proxy's node has not yet, so the miners keep the
    // declared job and the pool's is held back.
    let pool_tip = template(2, 8, REGTEST_BITS);
    rig.backend.on_template(&pool_tip);
    rig.pool
        .handle_template(Arc::clone(&pool_tip), START, &rig.backend);
    if let Some((jds, _)) = &mut rig.jds {
        jds.handle_template(Arc::clone(&pool_tip), START, &rig.backend);
    }
    rig.pump();
    assert_eq!(rig.last_job(1).0.job_id, declared.job_id, "held back");

    // The proxy's node then has a rival block at the same height, which the pool's node calls
    // stale. Nothing declared is left to mine: the pool's job goes through, instead of leaving
    // the miners on a job whose tip is gone.
    if let Some((_, verdict)) = &mut rig.jds {
        *verdict = Verdict::Invalid("inconclusive-not-best-prevblk".into());
    }
    rig.proxy.handle_template(template(2, 9, REGTEST_BITS));
    rig.pump();
    let (now_mining, _) = rig.last_job(1);
    assert_eq!(now_mining.prev_hash, [8; 32], "the pool's job on its tip");
    assert!(now_mining.clean);
    let events = rig.proxy_events();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ProxyEvent::JdFallback(_))),
        "a stale declaration is no fallback: {events:?}"
    );
}
