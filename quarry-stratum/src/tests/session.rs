use std::str::FromStr;

use serde_json::json;

use super::*;
use crate::clock::Now;
use crate::v1::codec::MAX_LINE_LEN;

fn ntime(miner: &Miner) -> u32 {
    miner.now.unix_secs() as u32
}

#[test]
fn handshake_sends_difficulty_then_clean_job() {
    let miner = Miner::handshake(config(), HARD_BITS);
    let methods: Vec<&str> = miner
        .notifications
        .iter()
        .map(|n| n["method"].as_str().expect("method"))
        .collect();
    assert_eq!(methods, ["mining.set_difficulty", "mining.notify"]);
    let job = miner.last_job();
    assert!(job.clean);
    assert_eq!(job.prev_hash, [7; 32]);
    assert_eq!(job.bits, HARD_BITS);
    assert_eq!(miner.difficulty, 1e-6);
}

#[test]
fn valid_share_is_accepted_and_credited_at_job_difficulty() {
    let mut miner = Miner::handshake(config(), HARD_BITS);
    let job = miner.last_job();
    let t = ntime(&miner);
    let (en2, nonce) = miner.find(&job, job.version, t, true);
    let answer = miner.submit(&job, &en2, t, nonce, None);
    assert_eq!(answer["result"], true, "{answer}");
    let events = miner.events();
    let accepted = events
        .iter()
        .find_map(|e| match e {
            Event::ShareAccepted(share) => Some(share.clone()),
            _ => None,
        })
        .expect("accepted event");
    assert_eq!(accepted.difficulty.get(), 1e-6);
    assert_eq!(accepted.address, ADDRESS);
    assert!(!accepted.is_block);
}

#[test]
fn rejections_carry_ecosystem_codes() {
    let mut miner = Miner::handshake(config(), HARD_BITS);
    let job = miner.last_job();
    let t = ntime(&miner);

    let (en2, nonce) = miner.find(&job, job.version, t, false);
    assert_eq!(
        code(&miner.submit(&job, &en2, t, nonce, None)),
        Some(23),
        "low difficulty"
    );

    let (en2, nonce) = miner.find(&job, job.version, t, true);
    assert_eq!(miner.submit(&job, &en2, t, nonce, None)["result"], true);
    assert_eq!(
        code(&miner.submit(&job, &en2, t, nonce, None)),
        Some(22),
        "duplicate"
    );

    let unknown = WireJob {
        job_id: "ffff".into(),
        ..job.clone()
    };
    assert_eq!(
        code(&miner.submit(&unknown, &en2, t, nonce, None)),
        Some(21),
        "unknown job"
    );

    // Bit 0 is outside the BIP320 mask.
    assert_eq!(
        code(&miner.submit(&job, &en2, t, nonce, Some(1))),
        Some(20),
        "version mask"
    );

    let far_future = t + 7201 + 60;
    assert_eq!(
        code(&miner.submit(&job, &en2, far_future, nonce, None)),
        Some(20),
        "ntime future"
    );
    let too_old = (START.unix_secs() - 601) as u32;
    assert_eq!(
        code(&miner.submit(&job, &en2, too_old, nonce, None)),
        Some(20),
        "ntime mintime"
    );

    let short_en2 = [0u8; 4];
    assert_eq!(
        code(&miner.submit(&job, &short_en2, t, nonce, None)),
        Some(20),
        "en2 size"
    );

    let rejected = miner
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::ShareRejected { .. }))
        .count();
    assert_eq!(rejected, 7);
}

#[test]
fn rolled_version_inside_mask_is_accepted() {
    let mut miner = Miner::handshake(config(), HARD_BITS);
    let job = miner.last_job();
    let t = ntime(&miner);
    let bits = 0x0000_6000;
    let version = (job.version & !0x1fff_e000) | bits;
    let (en2, nonce) = miner.find(&job, version, t, true);
    assert_eq!(
        miner.submit(&job, &en2, t, nonce, Some(bits))["result"],
        true
    );
}

#[test]
fn stale_after_new_tip_but_grace_for_shares_in_flight() {
    let mut miner = Miner::handshake(config(), HARD_BITS);
    let old = miner.last_job();
    let t = ntime(&miner);
    miner.template(template(2, 8, HARD_BITS));
    let new = miner.last_job();
    assert!(new.clean);
    assert_ne!(new.job_id, old.job_id);

    miner.advance(500);
    let (en2, nonce) = miner.find(&old, old.version, t, true);
    assert_eq!(
        miner.submit(&old, &en2, t, nonce, None)["result"],
        true,
        "in grace"
    );

    miner.advance(3_000);
    let en2b = vec![1, 0, 0, 0, 0, 0, 0, 9];
    let nonce = (0..)
        .find(|&n| {
            Target::from_difficulty(Difficulty::new(miner.difficulty).expect("set"))
                .is_met_by(&old.hash(&miner.extranonce1, &en2b, old.version, t, n))
        })
        .expect("a nonce");
    assert_eq!(
        code(&miner.submit(&old, &en2b, t, nonce, None)),
        Some(21),
        "stale"
    );
}

#[test]
fn same_tip_refresh_keeps_old_jobs_valid() {
    let mut miner = Miner::handshake(config(), HARD_BITS);
    let old = miner.last_job();
    miner.template(template(2, 7, HARD_BITS));
    assert!(!miner.last_job().clean);
    miner.advance(60_000);
    let t = ntime(&miner);
    let (en2, nonce) = miner.find(&old, old.version, t, true);
    assert_eq!(miner.submit(&old, &en2, t, nonce, None)["result"], true);
}

#[test]
fn share_on_old_job_is_credited_at_old_difficulty() {
    let mut miner = Miner::handshake(config(), HARD_BITS);
    let old = miner.last_job();
    let answer = miner.call("mining.suggest_difficulty", json!([2e-6]));
    assert_eq!(answer["result"], true);
    assert_eq!(miner.difficulty, 2e-6, "set_difficulty sent");
    let newer = miner.last_job();
    assert_ne!(
        newer.job_id, old.job_id,
        "a new job carries the new difficulty"
    );
    miner.events();

    // A share that meets 1e-6 but not 2e-6 on the old job is still good.
    let t = ntime(&miner);
    let old_target = Target::from_difficulty(Difficulty::new(1e-6).expect("positive"));
    let new_target = Target::from_difficulty(Difficulty::new(2e-6).expect("positive"));
    let en2 = vec![0, 0, 0, 0, 0, 0, 0, 3];
    let nonce = (0..)
        .find(|&n| {
            let hash = old.hash(&miner.extranonce1, &en2, old.version, t, n);
            old_target.is_met_by(&hash) && !new_target.is_met_by(&hash)
        })
        .expect("a nonce");
    assert_eq!(miner.submit(&old, &en2, t, nonce, None)["result"], true);
    let credited = miner.events().into_iter().find_map(|e| match e {
        Event::ShareAccepted(share) => Some(share.difficulty.get()),
        _ => None,
    });
    assert_eq!(credited, Some(1e-6));
    // The same hash on the new job would be low difficulty.
    let nonce = (0..)
        .find(|&n| {
            let hash = newer.hash(&miner.extranonce1, &en2, newer.version, t, n);
            old_target.is_met_by(&hash) && !new_target.is_met_by(&hash)
        })
        .expect("a nonce");
    assert_eq!(code(&miner.submit(&newer, &en2, t, nonce, None)), Some(23));
}

#[test]
fn suggest_difficulty_is_floored_at_pool_minimum() {
    let mut miner = Miner::handshake(config(), HARD_BITS);
    miner.call("mining.suggest_difficulty", json!([1e-12]));
    assert_eq!(miner.difficulty, 1e-7);
}

#[test]
fn password_difficulty_sets_start() {
    let mut miner = Miner::new(config());
    miner.template(template(1, 7, HARD_BITS));
    miner.call("mining.subscribe", json!([]));
    miner.call("mining.authorize", json!([ADDRESS, "x,d=0.0005"]));
    assert_eq!(miner.difficulty, 0.0005);
}

#[test]
fn difficulty_never_exceeds_network() {
    let mut miner = Miner::new(config());
    miner.template(template(1, 7, REGTEST_BITS));
    miner.call("mining.subscribe", json!([]));
    miner.call("mining.authorize", json!([ADDRESS, "d=1"]));
    assert!(miner.difficulty < 1e-9, "{}", miner.difficulty);
}

#[test]
fn block_is_reported_with_full_bytes() {
    let mut miner = Miner::handshake(config(), REGTEST_BITS);
    let job = miner.last_job();
    let t = ntime(&miner);
    let network = Target::from_compact(REGTEST_BITS);
    let en2 = vec![0, 0, 0, 0, 0, 0, 0, 1];
    let nonce = (0..)
        .find(|&n| network.is_met_by(&job.hash(&miner.extranonce1, &en2, job.version, t, n)))
        .expect("a nonce");
    assert_eq!(miner.submit(&job, &en2, t, nonce, None)["result"], true);
    let block = miner
        .events()
        .into_iter()
        .find_map(|e| match e {
            Event::BlockFound(block) => Some(block),
            _ => None,
        })
        .expect("block event");
    assert_eq!(quarry_work::hash::sha256d(&block.block[..80]), block.hash);
    let decoded: bitcoin::Block =
        bitcoin::consensus::deserialize(&block.block).expect("a well-formed block");
    assert!(decoded.check_merkle_root());
    assert_eq!(decoded.bip34_block_height().ok(), Some(block.height));
}

#[test]
fn second_block_on_the_same_parent_is_a_share_not_a_rival_block() {
    // Until the next template arrives the miner keeps solving on the parent it already
    // extended; submitting those would race the pool's own block.
    let mut miner = Miner::handshake(config(), REGTEST_BITS);
    let job = miner.last_job();
    let t = ntime(&miner);
    let network = Target::from_compact(REGTEST_BITS);
    let mut blocks = 0;
    let mut accepted = Vec::new();
    for en2 in [1u8, 2] {
        let en2 = vec![0, 0, 0, 0, 0, 0, 0, en2];
        let nonce = (0..)
            .find(|&n| network.is_met_by(&job.hash(&miner.extranonce1, &en2, job.version, t, n)))
            .expect("a nonce");
        assert_eq!(miner.submit(&job, &en2, t, nonce, None)["result"], true);
        for event in miner.events() {
            match event {
                Event::BlockFound(_) => blocks += 1,
                Event::ShareAccepted(share) => accepted.push(share.is_block),
                _ => {}
            }
        }
    }
    assert_eq!(blocks, 1, "one block per parent");
    assert_eq!(accepted, vec![true, false], "both shares credited");
}

#[test]
fn order_errors() {
    let mut miner = Miner::new(config());
    miner.template(template(1, 7, HARD_BITS));
    let submit = json!(["w", "1", "0000000000000000", "00000000", "00000000"]);
    assert_eq!(code(&miner.call("mining.submit", submit.clone())), Some(25));
    miner.call("mining.subscribe", json!([]));
    assert_eq!(code(&miner.call("mining.submit", submit)), Some(24));
}

#[test]
fn bad_addresses_are_refused_at_authorize() {
    let mut miner = Miner::new(config());
    miner.call("mining.subscribe", json!([]));
    let wrong_network = miner.call("mining.authorize", json!([MAINNET_ADDRESS, "x"]));
    assert_eq!(code(&wrong_network), Some(24));
    assert!(wrong_network["error"][1]
        .as_str()
        .expect("message")
        .contains("regtest"));
    let garbage = miner.call("mining.authorize", json!(["notanaddress.worker", "x"]));
    assert_eq!(code(&garbage), Some(24));
    let bech32 = miner.call(
        "mining.authorize",
        json!([format!("{BECH32_ADDRESS}.w"), "x"]),
    );
    assert_eq!(bech32["result"], true);
}

/// `<chain>=<address>` in the password names where the worker's merge-mined rewards go: the
/// authorize event and every accepted share carry it, and a malformed one is refused.
#[test]
fn aux_payout_addresses_come_from_the_password_and_ride_on_shares() {
    let mut miner = Miner::new(config());
    miner.template(template(1, 7, HARD_BITS));
    let subscribed = miner.call("mining.subscribe", json!([]));
    miner.extranonce1 =
        hex::decode(subscribed["result"][1].as_str().expect("extranonce1")).expect("hex");
    let worker = format!("{ADDRESS}.rig1");
    let refused = miner.call("mining.authorize", json!([worker, "x,namecoin=not valid"]));
    assert_eq!(code(&refused), Some(24), "{refused}");
    assert!(refused["error"][1]
        .as_str()
        .expect("message")
        .contains("namecoin"));
    let authorized = miner.call(
        "mining.authorize",
        json!([worker, "x,namecoin=nc1qminer,d=0.000001"]),
    );
    assert_eq!(authorized["result"], true, "{authorized}");
    assert_eq!(miner.difficulty, 1e-6, "d= still read");
    let events = miner.events();
    let named = events.iter().find_map(|e| match e {
        Event::Authorized { aux_payouts, .. } => Some(aux_payouts.clone()),
        _ => None,
    });
    assert_eq!(
        named.as_ref().and_then(|p| p.get("namecoin")),
        Some("nc1qminer")
    );

    let job = miner.last_job();
    let t = ntime(&miner);
    let (en2, nonce) = miner.find(&job, job.version, t, true);
    assert_eq!(miner.submit(&job, &en2, t, nonce, None)["result"], true);
    let share = miner
        .events()
        .into_iter()
        .find_map(|e| match e {
            Event::ShareAccepted(share) => Some(share),
            _ => None,
        })
        .expect("accepted");
    assert_eq!(share.aux_payouts.get("namecoin"), Some("nc1qminer"));
    assert_eq!(share.address, ADDRESS, "Bitcoin credit unchanged");
}

/// 10,000 pipelined `mining.subscribe` on one connection get at most the burst of answers,
/// then the connection closes: the pool never answers a flood in bulk.
#[test]
fn a_pipelined_request_flood_is_cut_off_at_the_budget() {
    let mut miner = Miner::new(config());
    miner.template(template(1, 7, HARD_BITS));
    let flood: String = (0..10_000)
        .map(|i| format!("{{\"id\":{i},\"method\":\"mining.subscribe\",\"params\":[]}}\n"))
        .collect();
    let answers = miner.send_raw(&flood);
    let burst = config().control_budget.burst as usize;
    assert_eq!(answers.len(), burst, "answered up to the burst");
    let bytes_out: usize = answers.iter().map(|a| a.to_string().len()).sum();
    assert!(
        bytes_out < flood.len() / 50,
        "no amplification: {bytes_out} bytes out"
    );
    assert_eq!(miner.closed(), Some(&CloseReason::Flood));
}

/// A miner within its budget is never cut off: shares at a steady rate, and the control
/// budget refilling between bursts.
#[test]
fn requests_within_the_budget_are_all_answered() {
    let mut miner = Miner::handshake(config(), HARD_BITS);
    let job = miner.last_job();
    let t = ntime(&miner);
    for _ in 0..200 {
        // Ten shares a second, far under the submit budget.
        let (en2, nonce) = miner.find(&job, job.version, t, false);
        miner.submit(&job, &en2, t, nonce, None);
        miner.advance(100);
    }
    for _ in 0..100 {
        // One suggest_difficulty a second: under the two a second allowed.
        miner.call("mining.suggest_difficulty", json!([0.001]));
        miner.advance(1000);
    }
    assert_eq!(miner.closed(), None);
}

#[test]
fn session_resume_reuses_extranonce1() {
    let mut first = Miner::new(config());
    let answer = first.call("mining.subscribe", json!([]));
    let issued = answer["result"][1]
        .as_str()
        .expect("session id")
        .to_string();
    assert_eq!(issued, "00000001");
    // The connection ends: the driver gives its extranonce1 back to the pool.
    let extranonce1 = first.session.extranonce1().expect("subscribed").to_vec();
    first.pool.release_extranonce1(&extranonce1);
    let mut second = Miner::new(config());
    second.pool = std::mem::replace(&mut first.pool, test_pool());
    let answer = second.call("mining.subscribe", json!(["x", issued]));
    assert_eq!(answer["result"][1], issued.as_str(), "resumed");
    let mut third = Miner::new(config());
    third.pool = std::mem::replace(&mut second.pool, test_pool());
    let answer = third.call("mining.subscribe", json!(["x", issued]));
    assert_eq!(
        answer["result"][1], "00000002",
        "in use: a fresh extranonce"
    );
    let mut other = Miner::new(config());
    let answer = other.call("mining.subscribe", json!(["x", "0a0a0a0a"]));
    assert_eq!(
        answer["result"][1], "00000001",
        "unknown session id: fresh extranonce"
    );
}

#[test]
fn a_full_server_refuses_subscribe_and_closes() {
    use quarry_work::coinbase::CoinbaseLayout;
    use quarry_work::job::JobFactory;
    // A 3-byte prefix of a 4-byte extranonce1 leaves 256 ids.
    let pool = SharedPool::new(
        JobFactory::new(CoinbaseLayout {
            extranonce1_len: 4,
            extranonce2_len: 8,
            tag: b"/q/".to_vec(),
        }),
        vec![0xaa, 0, 0],
    );
    let config = Arc::new(config());
    let subscribe = "{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n";
    let sessions: Vec<Session> = (0..256)
        .map(|_| {
            let mut session = Session::new(Arc::clone(&config), START);
            session.handle_bytes(subscribe.as_bytes(), START, &pool);
            session
        })
        .collect();
    assert!(sessions
        .iter()
        .all(|s| s.extranonce1().is_some() && s.close_reason().is_none()));
    let mut full = Session::new(config, START);
    full.handle_bytes(subscribe.as_bytes(), START, &pool);
    let answer: Value =
        serde_json::from_str(&full.poll_transmit().expect("an answer")).expect("JSON");
    assert_eq!(answer["id"], 1);
    assert_eq!(code(&answer), Some(20), "{answer}");
    assert!(
        answer["error"][1]
            .as_str()
            .is_some_and(|m| m.contains("server full")),
        "{answer}"
    );
    assert_eq!(full.close_reason(), Some(&CloseReason::ServerFull));
    assert_eq!(full.extranonce1(), None);
}

#[test]
fn garbage_lines_close_the_connection() {
    let mut miner = Miner::new(config());
    for i in 0..4 {
        let answers = miner.send_raw("this is not json");
        assert_eq!(code(&answers[0]), Some(20));
        assert!(miner.closed().is_none(), "after {i}");
    }
    miner.send_raw("{\"id\":1,\"method\":\"nope\"}");
    assert_eq!(miner.closed(), Some(&CloseReason::Garbage));
}

#[test]
fn overlong_line_closes_the_connection() {
    let mut miner = Miner::new(config());
    let long = "x".repeat(MAX_LINE_LEN + 10);
    miner
        .session
        .handle_bytes(long.as_bytes(), miner.now, &miner.pool);
    assert_eq!(miner.closed(), Some(&CloseReason::LineTooLong));
}

#[test]
fn unauthenticated_and_idle_connections_time_out() {
    let mut miner = Miner::new(config());
    miner.call("mining.subscribe", json!([]));
    // 30 s by default: a subscribe alone does not keep a connection.
    miner.advance(29_000);
    assert!(miner.closed().is_none());
    miner.advance(2_000);
    assert_eq!(miner.closed(), Some(&CloseReason::AuthTimeout));

    let mut miner = Miner::handshake(config(), HARD_BITS);
    for _ in 0..6 {
        miner.advance(100_000);
    }
    assert_eq!(miner.closed(), Some(&CloseReason::Idle));
}

/// A quiet miner's retarget deadline passes; once handled, the next deadline must lie ahead, or
/// the connection's task would wake in a loop until the miner speaks again.
#[test]
fn a_handled_timeout_moves_the_deadline_ahead() {
    let mut miner = Miner::handshake(config(), HARD_BITS);
    for _ in 0..20 {
        let due = miner
            .session
            .poll_timeout()
            .expect("a deadline while mining");
        miner.now = Now::synced(miner.now.mono_ms.max(due));
        miner.session.handle_timeout(miner.now, &miner.pool);
        miner.drain();
        if miner.closed().is_some() {
            break;
        }
        let next = miner
            .session
            .poll_timeout()
            .expect("a deadline while mining");
        assert!(
            next > miner.now.mono_ms,
            "deadline {next} not after {}",
            miner.now.mono_ms
        );
    }
    assert_eq!(miner.closed(), Some(&CloseReason::Idle));
}

#[test]
fn vardiff_raises_difficulty_for_a_fast_miner() {
    let mut fast = config();
    fast.vardiff.retarget_secs = 9.0;
    fast.vardiff.target_interval_secs = 3.0;
    let mut miner = Miner::handshake(fast, HARD_BITS);
    let start = miner.difficulty;
    let mut en2_counter = 0u64;
    for _ in 0..16 {
        let job = miner.last_job();
        let t = ntime(&miner);
        en2_counter += 1;
        let en2 = en2_counter.to_be_bytes().to_vec();
        let target = Target::from_difficulty(Difficulty::new(miner.difficulty).expect("set"));
        let nonce = (0..)
            .find(|&n| target.is_met_by(&job.hash(&miner.extranonce1, &en2, job.version, t, n)))
            .expect("a nonce");
        assert_eq!(miner.submit(&job, &en2, t, nonce, None)["result"], true);
        miner.advance(200);
    }
    assert!(
        miner.difficulty > start * 5.0,
        "{} -> {}",
        start,
        miner.difficulty
    );
    // set_difficulty always came right before a notify.
    for pair in miner.notifications.windows(2) {
        if pair[0]["method"] == "mining.set_difficulty" {
            assert_eq!(pair[1]["method"], "mining.notify");
        }
    }
}

#[test]
fn reconnect_and_version_mask_notifications() {
    let mut miner = Miner::handshake(config(), HARD_BITS);
    miner.session.handle_version_mask(0x0000_e000);
    miner.drain();
    let last = miner.notifications.last().expect("notification");
    assert_eq!(last["method"], "mining.set_version_mask");
    assert_eq!(last["params"][0], "0000e000");
    miner.session.handle_reconnect("pool.example", 3333, 5);
    miner.drain();
    assert_eq!(
        miner.notifications.last().expect("sent")["method"],
        "client.reconnect"
    );
    assert_eq!(miner.closed(), Some(&CloseReason::Reconnect));
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let fragments: [&[u8]; 8] = [
        b"{\"id\":1,\"method\":\"mining.submit\",\"params\":[",
        b"\"mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn\",",
        b"\"1\",\"00\",\"ffffffff\",\"0\"]}\n",
        b"{\"id\":2,\"method\":\"mining.subscribe\",\"params\":[]}\n",
        b"{\"id\":3,\"method\":\"mining.authorize\",\"params\":[\"mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn\"]}\n",
        b"[[[[[[[[[[",
        b"\n\r\n\xff\x00",
        b"{\"id\":{},\"method\":\"mining.configure\",\"params\":[[\"version-rolling\"],{}]}\n",
    ];
    for _ in 0..2000 {
        let mut miner = Miner::new(config());
        miner.template(template(1, 7, HARD_BITS));
        for _ in 0..(next() % 12) {
            let mut chunk = fragments[(next() % 8) as usize].to_vec();
            if next() % 3 == 0 {
                let at = (next() as usize) % chunk.len();
                chunk[at] = next() as u8;
            }
            miner.session.handle_bytes(&chunk, miner.now, &miner.pool);
            while let Some(line) = miner.session.poll_transmit() {
                let _: serde_json::Value = serde_json::from_str(&line).expect("valid JSON out");
            }
        }
    }
}

#[test]
fn pool_mode_coinbase_pays_the_pool_not_the_miner() {
    let pool_script =
        hex::decode("76a914000102030405060708090a0b0c0d0e0f1011121388ac").expect("hex");
    let config = SessionConfig {
        mode: crate::PoolMode::Pool {
            payout_script: pool_script.clone(),
        },
        ..config()
    };
    let miner = Miner::handshake(config, HARD_BITS);
    let job = miner.last_job();
    let contains =
        |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(&job.coinb2, &pool_script),
        "coinbase pays the pool"
    );
    let miner_script = bitcoin::Address::from_str(ADDRESS)
        .expect("address")
        .assume_checked()
        .script_pubkey();
    assert!(!contains(&job.coinb2, miner_script.as_bytes()));
}

#[test]
fn notify_text_shared_per_job_is_the_same_json_as_built_per_miner() {
    use crate::v1::notify::{job_fields, notify_line, stratum_prev_hash};
    use quarry_work::coinbase::CoinbaseLayout;
    use quarry_work::job::Job;

    let mut template = (*template(1, 7, HARD_BITS)).clone();
    template.merkle_branch = vec![[0xab; 32], [0x01; 32]];
    let layout = CoinbaseLayout {
        extranonce1_len: 4,
        extranonce2_len: 4,
        tag: b"/t/".to_vec(),
    };
    let job = Job::new(Arc::new(template), &[0x51], &layout).expect("job");
    let fields = job.encoded(job_fields);
    let line = notify_line("1f", fields, 0x6000_0001, true);
    let generic = crate::v1::message::notification_line(
        "mining.notify",
        json!([
            "1f",
            stratum_prev_hash(&job.template.prev_hash),
            hex::encode(&job.coinbase.coinb1),
            hex::encode(&job.coinbase.coinb2),
            [hex::encode([0xab; 32]), hex::encode([0x01; 32])],
            format!("{:08x}", job.template.version),
            format!("{:08x}", job.template.bits),
            "60000001",
            true,
        ]),
    );
    assert_eq!(line, generic);
    let parsed: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
    let notify = crate::v1::Notify::from_params(&parsed["params"]).expect("decodes");
    assert_eq!(notify.merkle_branch, vec![[0xab; 32], [0x01; 32]]);
    // Built once: a second miner gets the very same text.
    assert!(std::ptr::eq(fields, job.encoded(|_| unreachable!())));
}

/// The acknowledgement rule lives in the session: no `true` leaves before the driver reports
/// the share in the share log, and a share the log could not take is answered with an error
/// (never `true`), in order, on a connection that stays open.
#[test]
fn an_accepted_share_is_answered_only_once_it_is_recorded() {
    for durable in [true, false] {
        let mut miner = Miner::handshake(config(), HARD_BITS);
        let job = miner.last_job();
        let t = ntime(&miner);
        let (en2, nonce) = miner.find(&job, job.version, t, true);
        let line = json!({"id": 9, "method": "mining.submit", "params": [
            format!("{ADDRESS}.rig1"), job.job_id, hex::encode(&en2),
            format!("{t:08x}"), format!("{nonce:08x}")]});
        // Straight into the session, as the driver does: nothing is answered yet.
        miner
            .session
            .handle_bytes(format!("{line}\n").as_bytes(), miner.now, &miner.pool);
        assert_eq!(miner.session.awaiting_record(), 1);
        assert_eq!(
            miner.session.poll_transmit(),
            None,
            "held for the share log"
        );
        assert!(miner
            .events()
            .iter()
            .any(|e| matches!(e, Event::ShareAccepted(_))));
        // A request behind the share waits too, so answers keep their order.
        miner.session.handle_bytes(
            b"{\"id\":10,\"method\":\"mining.extranonce.subscribe\",\"params\":[]}\n",
            miner.now,
            &miner.pool,
        );
        assert_eq!(miner.session.poll_transmit(), None);
        miner.session.share_recorded(durable);
        let answers: Vec<Value> = std::iter::from_fn(|| miner.session.poll_transmit())
            .map(|l| serde_json::from_str(&l).expect("JSON"))
            .collect();
        if durable {
            assert_eq!(answers.len(), 2, "{answers:?}");
            assert_eq!(
                (answers[0]["id"].clone(), answers[0]["result"].clone()),
                (json!(9), json!(true))
            );
            assert_eq!(answers[1]["id"], 10);
            assert!(miner.closed().is_none());
        } else {
            assert_eq!(answers.len(), 2, "{answers:?}");
            assert_eq!(answers[0]["id"], 9);
            assert_eq!(answers[0]["result"], Value::Null, "never true: {answers:?}");
            assert_eq!(answers[0]["error"][0], 20, "{answers:?}");
            assert_eq!(answers[1]["id"], 10, "later answers keep their order");
            assert!(miner.closed().is_none(), "the connection stays");
        }
    }
}

/// Deadlines run on the monotonic clock and ntime on the wall clock, so an NTP step or a
/// resumed VM moves ntime and nothing else: no session times out because the calendar jumped.
#[test]
fn a_wall_clock_step_closes_nothing_and_moves_only_ntime() {
    let mut miner = Miner::handshake(config(), HARD_BITS);
    let idle = config().idle_timeout_ms;
    // Ten idle timeouts' worth forward on the wall clock, one second on the monotonic one.
    miner.now = Now {
        mono_ms: miner.now.mono_ms + 1000,
        unix_ms: miner.now.unix_ms + 10 * idle,
    };
    miner.session.handle_timeout(miner.now, &miner.pool);
    miner.drain();
    assert!(miner.closed().is_none(), "{:?}", miner.closed());
    let due = miner.session.poll_timeout().expect("a deadline");
    assert!(
        due <= START.mono_ms + idle,
        "deadline {due} follows the wall clock"
    );

    // New work is stamped with the new wall-clock time, and a share at that ntime is good.
    miner.template(template(2, 8, HARD_BITS));
    let job = miner.last_job();
    assert_eq!(job.ntime, miner.now.unix_secs() as u32);
    let t = ntime(&miner);
    let (en2, nonce) = miner.find(&job, job.version, t, true);
    let answer = miner.submit(&job, &en2, t, nonce, None);
    assert_eq!(answer["result"], true, "{answer}");

    // The wall clock steps back two hours: a share at the job's own ntime is still the miner
    // getting it right (the bound runs from the job's ntime, not only from the pool's clock).
    miner.now = Now {
        mono_ms: miner.now.mono_ms + 10,
        unix_ms: miner.now.unix_ms - 2 * 3600 * 1000,
    };
    let en2 = vec![0, 0, 0, 0, 0, 0, 1, 2];
    let nonce = (0u32..)
        .find(|n| {
            Target::from_difficulty(Difficulty::new(miner.difficulty).expect("set"))
                .is_met_by(&job.hash(&miner.extranonce1, &en2, job.version, t, *n))
        })
        .expect("a nonce");
    let answer = miner.submit(&job, &en2, t, nonce, None);
    assert_eq!(answer["result"], true, "after a step back: {answer}");

    // The real idle timeout still fires, on the monotonic clock.
    miner.now = Now {
        mono_ms: miner.now.mono_ms + idle + 1,
        unix_ms: miner.now.unix_ms,
    };
    miner.session.handle_timeout(miner.now, &miner.pool);
    assert!(matches!(miner.closed(), Some(CloseReason::Idle)));
}
