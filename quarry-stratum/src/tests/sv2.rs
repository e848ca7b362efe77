//! SV2 pool sessions against our miner client and a raw scripted client, over real Noise, on a
//! simulated clock.

use std::sync::Arc;

use bitcoin::hashes::Hash;
use quarry_work::hash::sha256d_80;
use quarry_work::job::header_bytes;
use quarry_work::share::ShareReject;
use quarry_work::template::WorkTemplate;
use quarry_work::Target;

use super::{config, template, test_pool, TestPool, ADDRESS, HARD_BITS, REGTEST_BITS, START};
use crate::clock::Now;
use crate::event::Event;
use crate::v2::client::{ClientEvent, HeaderWork, MinerClient};
use crate::v2::message::{flags, Message, Protocol, SetupConnection};
use crate::v2::noise::{InitiatorHandshake, Transport, ACT2_LEN};
use crate::v2::{AuthorityKeypair, PoolSession, Sv2Config};

fn pool_session(authority: &AuthorityKeypair) -> PoolSession {
    PoolSession::new(
        Arc::new(config()),
        Arc::new(Sv2Config::new(authority.clone())),
        START,
    )
}

/// Moves bytes both ways until neither side has anything to say.
pub(super) fn pump(client: &mut MinerClient, session: &mut PoolSession, pool: &TestPool) {
    pump_at(client, session, pool, START)
}

fn pump_at(client: &mut MinerClient, session: &mut PoolSession, pool: &TestPool, now: Now) {
    loop {
        let mut moved = false;
        while let Some(bytes) = client.poll_transmit() {
            session.handle_bytes(&bytes, now, pool);
            record_all(session);
            moved = true;
        }
        while let Some(bytes) = session.poll_transmit() {
            client.handle_bytes(&bytes, START.unix_secs() as u32);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

/// What the driver does once the share log has every accepted share: report them recorded.
fn record_all(session: &mut PoolSession) {
    while session.awaiting_record() > 0 {
        session.share_recorded(true);
    }
}

pub(super) fn events(session: &mut PoolSession) -> Vec<Event> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

pub(super) fn client_events(client: &mut MinerClient) -> Vec<ClientEvent> {
    std::iter::from_fn(|| client.poll_event()).collect()
}

fn connected(bits: u32) -> (MinerClient, PoolSession, TestPool, HeaderWork, Target) {
    connected_to(template(1, 7, bits))
}

/// A standard channel open on `first`, with its first job.
pub(super) fn connected_to(
    first: Arc<WorkTemplate>,
) -> (MinerClient, PoolSession, TestPool, HeaderWork, Target) {
    let authority = AuthorityKeypair::generate();
    let pool = test_pool();
    let mut session = pool_session(&authority);
    session.handle_template(first, START, &pool);
    let mut client = MinerClient::new(
        &authority.public,
        &format!("{ADDRESS}.rig"),
        0.0,
        ("127.0.0.1".into(), 3333),
    )
    .expect("client");
    pump(&mut client, &mut session, &pool);
    let mut work = None;
    let mut target = None;
    for event in client_events(&mut client) {
        match event {
            ClientEvent::ChannelOpened { target: t, .. } => target = Some(Target::from_le_bytes(t)),
            ClientEvent::Work(w) => work = Some(w),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        session.close_reason().is_none(),
        "{:?}",
        session.close_reason()
    );
    (
        client,
        session,
        pool,
        work.expect("a job and its prevhash"),
        target.expect("channel opened"),
    )
}

/// A nonce whose header meets `target` (and, with `block`, the work's network target too).
pub(super) fn solve(work: &HeaderWork, target: &Target, version: u32) -> (u32, [u8; 32]) {
    solve_from(work, target, version, 0)
}

/// The first nonce from `from` whose header meets `target`.
fn solve_from(work: &HeaderWork, target: &Target, version: u32, from: u32) -> (u32, [u8; 32]) {
    (from..)
        .find_map(|nonce| {
            let header = header_bytes(
                version,
                &work.prev_hash,
                &work.merkle_root,
                work.ntime,
                work.nbits,
                nonce,
            );
            let hash = sha256d_80(&header);
            target.is_met_by(&hash).then_some((nonce, hash))
        })
        .expect("a nonce")
}

#[test]
fn standard_channel_mines_accepted_shares() {
    let (mut client, mut session, pool, work, target) = connected(HARD_BITS);
    let authorized = events(&mut session);
    assert!(
        matches!(&authorized[..], [Event::Authorized { worker, .. }] if worker == &format!("{ADDRESS}.rig"))
    );
    assert_eq!(target, Target::from_difficulty(config().vardiff.start));
    // Two shares in one read: one batched SubmitShares.Success.
    let rolled = work.version | 0x0000_e000;
    let (first, _) = solve(&work, &target, work.version);
    let (second, _) = solve(&work, &target, rolled);
    client.submit(work.job_id, first, work.ntime, work.version);
    client.submit(work.job_id, second, work.ntime, rolled);
    pump(&mut client, &mut session, &pool);
    assert_eq!(
        client_events(&mut client),
        vec![ClientEvent::Accepted {
            count: 2,
            last_sequence_number: 1
        }]
    );
    let accepted: Vec<_> = events(&mut session)
        .into_iter()
        .filter_map(|e| match e {
            Event::ShareAccepted(share) => Some(share),
            _ => None,
        })
        .collect();
    assert_eq!(accepted.len(), 2);
    assert_eq!(accepted[0].difficulty, config().vardiff.start);
    assert!(!accepted[0].is_block);

    // The same share again, a share on an unknown job, and one that misses the target.
    client.submit(work.job_id, first, work.ntime, work.version);
    client.submit(work.job_id + 100, first, work.ntime, work.version);
    let miss = (0u32..)
        .find(|&n| {
            let header = header_bytes(
                work.version,
                &work.prev_hash,
                &work.merkle_root,
                work.ntime,
                work.nbits,
                n,
            );
            !target.is_met_by(&sha256d_80(&header))
        })
        .expect("a miss");
    client.submit(work.job_id, miss, work.ntime, work.version);
    // A version bit outside BIP320's mask.
    client.submit(work.job_id, first, work.ntime, work.version | 1);
    pump(&mut client, &mut session, &pool);
    let codes: Vec<String> = client_events(&mut client)
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::Rejected { code, .. } => Some(code),
            _ => None,
        })
        .collect();
    assert_eq!(
        codes,
        [
            "duplicate-share",
            "invalid-job-id",
            "difficulty-too-low",
            "invalid-non-rollable-version-bit"
        ]
    );
}

#[test]
fn a_block_is_reported_whole_and_new_tips_arrive_as_future_jobs() {
    let (mut client, mut session, pool, work, _) = connected(REGTEST_BITS);
    let network = Target::from_compact(REGTEST_BITS);
    let (nonce, hash) = solve(&work, &network, work.version);
    client.submit(work.job_id, nonce, work.ntime, work.version);
    pump(&mut client, &mut session, &pool);
    let block = events(&mut session)
        .into_iter()
        .find_map(|e| match e {
            Event::BlockFound(block) => Some(block),
            _ => None,
        })
        .expect("block found");
    assert_eq!(block.hash, hash);
    let decoded: bitcoin::Block = bitcoin::consensus::deserialize(&block.block).expect("a block");
    assert!(decoded.check_merkle_root());
    assert_eq!(decoded.header.merkle_root.to_byte_array(), work.merkle_root);

    // New tip: the client switches to the new job only through SetNewPrevHash.
    session.handle_template(template(2, 8, REGTEST_BITS), START.plus_ms(1000), &pool);
    pump(&mut client, &mut session, &pool);
    let works: Vec<_> = client_events(&mut client)
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::Work(w) => Some(w),
            _ => None,
        })
        .collect();
    assert_eq!(works.len(), 1);
    assert_eq!(works[0].prev_hash, [8; 32]);
    // A share on the old tip after the grace period is stale.
    session.handle_template(template(3, 9, REGTEST_BITS), START.plus_ms(10_000), &pool);
    pump(&mut client, &mut session, &pool);
    client_events(&mut client);
    let (nonce, _) = solve(
        &works[0],
        &Target::from_difficulty(config().vardiff.start),
        works[0].version,
    );
    client.submit(works[0].job_id, nonce, works[0].ntime, works[0].version);
    // A share on the first job, two tips back: the session has forgotten that job, and it is
    // still a stale share (the miner's work was real), not an invalid job id.
    let (old_nonce, _) = solve(
        &work,
        &Target::from_difficulty(config().vardiff.start),
        work.version,
    );
    client.submit(work.job_id, old_nonce, work.ntime, work.version);
    pump_at(&mut client, &mut session, &pool, START.plus_ms(13_000));
    let after = client_events(&mut client);
    let stale = after
        .iter()
        .filter(|e| matches!(e, ClientEvent::Rejected { code, .. } if code == "stale-share"))
        .count();
    assert_eq!(stale, 2, "{after:?}");
}

#[test]
fn wrong_authority_key_is_refused_by_the_client() {
    let authority = AuthorityKeypair::generate();
    let impostor = AuthorityKeypair::generate();
    let pool = test_pool();
    let mut session = pool_session(&impostor);
    let mut client =
        MinerClient::new(&authority.public, ADDRESS, 0.0, ("h".into(), 1)).expect("client");
    pump(&mut client, &mut session, &pool);
    assert!(client
        .close_reason()
        .expect("refused")
        .contains("certificate"));
}

/// A scripted client speaking raw messages.
pub(super) struct Raw {
    transport: Transport,
    pub(super) session: PoolSession,
    pub(super) pool: Arc<TestPool>,
}

impl Raw {
    fn connect() -> Raw {
        Raw::connect_to(Arc::new(test_pool()), template(1, 7, HARD_BITS))
    }

    /// A connection to a session on `pool`, which has `first` as its template.
    pub(super) fn connect_to(pool: Arc<TestPool>, first: Arc<WorkTemplate>) -> Raw {
        let authority = AuthorityKeypair::generate();
        let mut session = pool_session(&authority);
        session.handle_template(first, START, &*pool);
        let mut handshake = InitiatorHandshake::new(&authority.public, 1 << 20).expect("init");
        let act1 = handshake.start().expect("act1");
        session.handle_bytes(&act1, START, &*pool);
        let act2 = session.poll_transmit().expect("act2");
        assert_eq!(act2.len(), ACT2_LEN);
        let act2: [u8; ACT2_LEN] = act2.try_into().expect("length");
        let transport = handshake
            .finish(&act2, START.unix_secs() as u32)
            .expect("trusted");
        Raw {
            transport,
            session,
            pool,
        }
    }

    pub(super) fn send(&mut self, message: Message) -> Vec<Message> {
        let mut wire = Vec::new();
        self.transport.encrypt(&message.to_frame_bytes(), &mut wire);
        self.session.handle_bytes(&wire, START, &*self.pool);
        record_all(&mut self.session);
        self.received()
    }

    /// What the session sent since.
    pub(super) fn received(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(bytes) = self.session.poll_transmit() {
            self.transport.push(&bytes);
        }
        while let Ok(Some(frame)) = self.transport.next_frame() {
            out.push(Message::decode(&frame).expect("pool sends valid messages"));
        }
        out
    }

    fn setup(&mut self, flags: u32) -> Vec<Message> {
        self.setup_protocol(Protocol::Mining, flags)
    }

    pub(super) fn setup_protocol(&mut self, protocol: Protocol, flags: u32) -> Vec<Message> {
        self.send(Message::SetupConnection(SetupConnection {
            protocol,
            min_version: 2,
            max_version: 2,
            flags,
            endpoint_host: "pool".into(),
            endpoint_port: 3333,
            vendor: "test".into(),
            hardware_version: String::new(),
            firmware: String::new(),
            device_id: String::new(),
        }))
    }
}

#[test]
fn unsupported_flags_are_listed_in_the_error() {
    let mut raw = Raw::connect();
    let answer =
        raw.setup(flags::REQUIRES_WORK_SELECTION | flags::REQUIRES_VERSION_ROLLING | 1 << 9);
    assert_eq!(
        answer,
        vec![Message::SetupConnectionError {
            flags: flags::REQUIRES_WORK_SELECTION | 1 << 9,
            error_code: "unsupported-feature-flags".into()
        }]
    );
    assert!(raw.session.close_reason().is_some());
}

/// A flood of channel opens past the budget (the V1 burst plus a full set of channels) closes
/// the connection instead of being answered.
#[test]
fn a_flood_of_sv2_requests_closes_the_connection() {
    let mut raw = Raw::connect();
    raw.setup(flags::REQUIRES_VERSION_ROLLING);
    let budget = config().control_budget.burst as usize + 1024;
    let mut answered = 0;
    for request_id in 0..(budget as u32 + 100) {
        answered += raw
            .send(Message::OpenStandardMiningChannel {
                request_id,
                user_identity: "not-an-address".into(),
                nominal_hash_rate: 0.0,
                max_target: [0xff; 32],
            })
            .len();
        if raw.session.close_reason().is_some() {
            break;
        }
    }
    assert_eq!(raw.session.close_reason(), Some("request flood"));
    // The SetupConnection took one token.
    assert_eq!(answered, budget - 1);
}

/// SV2 has no password: `address.rig,<chain>=<address>` in user_identity names aux payout
/// addresses; the channel's worker is the part before the comma, and a bad one is refused.
#[test]
fn user_identity_options_name_aux_payout_addresses() {
    let mut raw = Raw::connect();
    raw.setup(flags::REQUIRES_VERSION_ROLLING);
    let opened = raw.send(Message::OpenExtendedMiningChannel {
        request_id: 1,
        user_identity: format!("{ADDRESS}.rig,namecoin=nc1qminer"),
        nominal_hash_rate: 0.0,
        max_target: [0xff; 32],
        min_extranonce_size: 4,
    });
    assert!(matches!(
        opened.first(),
        Some(Message::OpenExtendedMiningChannelSuccess { .. })
    ));
    let named = events(&mut raw.session).into_iter().find_map(|e| match e {
        Event::Authorized {
            worker,
            aux_payouts,
            ..
        } => Some((worker, aux_payouts)),
        _ => None,
    });
    let (worker, payouts) = named.expect("authorized");
    assert_eq!(worker, format!("{ADDRESS}.rig"));
    assert_eq!(payouts.get("namecoin"), Some("nc1qminer"));
    let refused = raw.send(Message::OpenExtendedMiningChannel {
        request_id: 2,
        user_identity: format!("{ADDRESS}.rig,namecoin=not valid"),
        nominal_hash_rate: 0.0,
        max_target: [0xff; 32],
        min_extranonce_size: 4,
    });
    assert!(matches!(
        &refused[..],
        [Message::OpenMiningChannelError { request_id: 2, error_code }] if error_code == "invalid-user-identity"
    ));
}

#[test]
fn extended_channel_gets_coinbase_parts_and_validates_extranonce() {
    let mut raw = Raw::connect();
    assert!(matches!(
        &raw.setup(flags::REQUIRES_VERSION_ROLLING)[..],
        [Message::SetupConnectionSuccess {
            used_version: 2,
            ..
        }]
    ));
    let opened = raw.send(Message::OpenExtendedMiningChannel {
        request_id: 7,
        user_identity: format!("{ADDRESS}.proxy"),
        nominal_hash_rate: 0.0,
        max_target: [0xff; 32],
        min_extranonce_size: 4,
    });
    let [Message::OpenExtendedMiningChannelSuccess {
        request_id: 7,
        channel_id,
        extranonce_size: 8,
        extranonce_prefix,
        group_channel_id: 1,
        ..
    }, Message::NewExtendedMiningJob {
        job_id,
        min_ntime: None,
        version_rolling_allowed: true,
        coinbase_tx_prefix,
        coinbase_tx_suffix,
        merkle_path,
        version,
        ..
    }, Message::SetNewPrevHash {
        job_id: activated,
        prev_hash,
        min_ntime,
        nbits,
        ..
    }] = &opened[..]
    else {
        panic!("unexpected answer {opened:?}");
    };
    assert_eq!(job_id, activated);
    assert_ne!(*channel_id, 1);
    // Rebuild the coinbase the way a proxy does and mine on it.
    let extranonce = [0u8, 0, 0, 0, 0, 0, 0, 9];
    let coinbase = [
        coinbase_tx_prefix.as_slice(),
        extranonce_prefix,
        &extranonce,
        coinbase_tx_suffix,
    ]
    .concat();
    let tx: bitcoin::Transaction =
        bitcoin::consensus::deserialize(&coinbase).expect("a transaction");
    let mut root = tx.compute_txid().to_byte_array();
    for step in merkle_path {
        root = quarry_work::hash::sha256d(&[root.as_slice(), step].concat());
    }
    let target = Target::from_difficulty(config().vardiff.start);
    let work = HeaderWork {
        job_id: *job_id,
        version: *version,
        prev_hash: *prev_hash,
        merkle_root: root,
        ntime: *min_ntime,
        nbits: *nbits,
    };
    let (nonce, _) = solve(&work, &target, *version);
    let submit = |extranonce: Vec<u8>, sequence_number: u32| Message::SubmitSharesExtended {
        channel_id: *channel_id,
        sequence_number,
        job_id: *job_id,
        nonce,
        ntime: *min_ntime,
        version: *version,
        extranonce,
    };
    let channel_id = *channel_id;
    assert_eq!(
        raw.send(submit(extranonce.to_vec(), 1)),
        vec![Message::SubmitSharesSuccess {
            channel_id,
            last_sequence_number: 1,
            new_submits_accepted_count: 1,
            new_shares_sum: 0
        }]
    );
    assert_eq!(
        raw.send(submit(vec![0; 5], 2)),
        vec![Message::SubmitSharesError {
            channel_id,
            sequence_number: 2,
            error_code: "bad-extranonce-size".into()
        }]
    );
    // A share for a channel that does not exist.
    assert!(matches!(
        &raw.send(Message::SubmitSharesExtended {
            channel_id: 999,
            sequence_number: 3,
            job_id: 1,
            nonce: 0,
            ntime: 0,
            version: 0,
            extranonce: vec![],
        })[..],
        [Message::SubmitSharesError { error_code, .. }] if error_code == "invalid-channel-id"
    ));
    // Closed channels take no more shares.
    raw.send(Message::CloseChannel {
        channel_id,
        reason_code: "bye".into(),
    });
    assert!(matches!(
        &raw.send(submit(extranonce.to_vec(), 4))[..],
        [Message::SubmitSharesError { error_code, .. }] if error_code == "invalid-channel-id"
    ));
}

#[test]
fn garbage_and_protocol_violations_close_the_connection() {
    // 64 bytes of garbage pass as act 1 (every string is an ElligatorSwift encoding); the next
    // frame then fails its MAC.
    let authority = AuthorityKeypair::generate();
    let pool = test_pool();
    let mut session = pool_session(&authority);
    session.handle_bytes(&[0x42; 64], START, &pool);
    assert!(session.close_reason().is_none());
    session.handle_bytes(&[0x42; 40], START, &pool);
    assert!(session.close_reason().expect("closed").contains("MAC"));

    // A mining message before SetupConnection.
    let mut raw = Raw::connect();
    raw.send(Message::CloseChannel {
        channel_id: 1,
        reason_code: String::new(),
    });
    assert!(raw
        .session
        .close_reason()
        .expect("closed")
        .contains("SetupConnection"));

    // A message only a pool sends.
    let mut raw = Raw::connect();
    raw.setup(0);
    raw.send(Message::SetTarget {
        channel_id: 2,
        maximum_target: [0; 32],
    });
    assert!(raw
        .session
        .close_reason()
        .expect("closed")
        .contains("unexpected"));

    // An oversized frame.
    let mut raw = Raw::connect();
    raw.setup(0);
    let mut wire = Vec::new();
    let mut huge = Message::SetupConnectionError {
        flags: 0,
        error_code: String::new(),
    }
    .to_frame_bytes();
    huge[3..6].copy_from_slice(&[0xff, 0xff, 0x0f]);
    raw.transport.encrypt(&huge[..6], &mut wire);
    raw.session.handle_bytes(&wire, START, &*raw.pool);
    assert!(raw
        .session
        .close_reason()
        .expect("closed")
        .contains("exceeds"));
}

/// Each refusal keeps its own reason: in the event the pool counts, and on the wire.
#[test]
fn refusals_are_labelled_by_what_went_wrong() {
    let (mut client, mut session, pool, work, _) = connected(HARD_BITS);
    events(&mut session);
    // ntime before the template's mintime: invalid-timestamp, counted as NtimeTooOld (it was
    // once counted as low difficulty).
    client.submit(work.job_id, 1, work.ntime - 3600, work.version);
    pump(&mut client, &mut session, &pool);
    assert!(matches!(
        &client_events(&mut client)[..],
        [ClientEvent::Rejected { code, .. }] if code == "invalid-timestamp"
    ));
    assert!(matches!(
        &events(&mut session)[..],
        [Event::ShareRejected {
            reason: ShareReject::NtimeTooOld,
            ..
        }]
    ));

    // Two extended channels: a job id sent on one is invalid on the other (not stale), and a
    // standard submit on an extended channel is a channel error, not a rejected share.
    let mut raw = Raw::connect();
    raw.setup(flags::REQUIRES_VERSION_ROLLING);
    let open = |raw: &mut Raw, request_id: u32| {
        let opened = raw.send(Message::OpenExtendedMiningChannel {
            request_id,
            user_identity: format!("{ADDRESS}.ext{request_id}"),
            nominal_hash_rate: 0.0,
            max_target: [0xff; 32],
            min_extranonce_size: 4,
        });
        match &opened[..] {
            [Message::OpenExtendedMiningChannelSuccess { channel_id, .. }, Message::NewExtendedMiningJob { job_id, .. }, ..] => {
                (*channel_id, *job_id)
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    let (first, first_job) = open(&mut raw, 1);
    let (second, second_job) = open(&mut raw, 2);
    assert_ne!(first_job, second_job);
    std::iter::from_fn(|| raw.session.poll_event()).for_each(drop);
    let answer = raw.send(Message::SubmitSharesExtended {
        channel_id: second,
        sequence_number: 1,
        job_id: first_job,
        nonce: 0,
        ntime: work.ntime,
        version: work.version,
        extranonce: vec![0; 8],
    });
    assert_eq!(
        answer,
        vec![Message::SubmitSharesError {
            channel_id: second,
            sequence_number: 1,
            error_code: "invalid-job-id".into()
        }]
    );
    let answer = raw.send(Message::SubmitSharesStandard {
        channel_id: first,
        sequence_number: 2,
        job_id: first_job,
        nonce: 0,
        ntime: work.ntime,
        version: work.version,
    });
    assert_eq!(
        answer,
        vec![Message::SubmitSharesError {
            channel_id: first,
            sequence_number: 2,
            error_code: "invalid-channel-id".into()
        }]
    );
    let counted: Vec<Event> = std::iter::from_fn(|| raw.session.poll_event()).collect();
    assert!(
        matches!(
            &counted[..],
            [Event::ShareRejected {
                reason: ShareReject::JobNotFound,
                ..
            }]
        ),
        "only the share on an unknown job counts as rejected: {counted:?}"
    );
}

/// Timeouts as long as the clock allows saturate instead of overflowing.
#[test]
fn endless_timeouts_never_overflow() {
    let authority = AuthorityKeypair::generate();
    let mut config = config();
    config.idle_timeout_ms = u64::MAX;
    config.auth_timeout_ms = u64::MAX;
    let pool = test_pool();
    let mut session =
        PoolSession::new(Arc::new(config), Arc::new(Sv2Config::new(authority)), START);
    assert_eq!(session.poll_timeout(), Some(u64::MAX));
    session.handle_timeout(Now::synced(u64::MAX - 1), &pool);
    assert!(session.close_reason().is_none());
}

/// SV2 holds SubmitShares.Success until the driver reports the shares recorded; an
/// unrecorded share gets SubmitShares.Error `share-not-recorded` instead, and the channel stays.
#[test]
fn success_waits_for_the_share_log() {
    for durable in [true, false] {
        let (mut client, mut session, pool, work, target) = connected(HARD_BITS);
        events(&mut session);
        let (nonce, _) = solve(&work, &target, work.version);
        client.submit(work.job_id, nonce, work.ntime, work.version);
        let bytes = client.poll_transmit().expect("a submit");
        session.handle_bytes(&bytes, START, &pool);
        assert_eq!(session.awaiting_record(), 1);
        assert_eq!(session.poll_transmit(), None, "held for the share log");
        assert!(events(&mut session)
            .iter()
            .any(|e| matches!(e, Event::ShareAccepted(_))));
        session.share_recorded(durable);
        assert_eq!(session.awaiting_record(), 0);
        let bytes = session.poll_transmit().expect("an answer");
        client.handle_bytes(&bytes, START.unix_secs() as u32);
        let expected = match durable {
            true => ClientEvent::Accepted {
                count: 1,
                last_sequence_number: 0,
            },
            false => ClientEvent::Rejected {
                sequence_number: 0,
                code: "share-not-recorded".into(),
            },
        };
        assert_eq!(client_events(&mut client), vec![expected]);
        assert!(session.close_reason().is_none(), "the channel stays");
    }
}

/// Shares from one read, the middle one unrecorded: the miner hears a Success for the first,
/// the Error for the second, a Success for the rest, in that order; and whatever the session
/// queued behind them (a new job) comes after, once every share has its word.
#[test]
fn an_unrecorded_share_in_a_batch_splits_the_success() {
    let (mut client, mut session, pool, work, target) = connected(HARD_BITS);
    events(&mut session);
    let mut from = 0;
    let mut bytes = Vec::new();
    for _ in 0..4 {
        let (nonce, _) = solve_from(&work, &target, work.version, from);
        from = nonce.wrapping_add(1);
        client.submit(work.job_id, nonce, work.ntime, work.version);
        bytes.extend(client.poll_transmit().expect("a submit"));
    }
    session.handle_bytes(&bytes, START, &pool);
    assert_eq!(session.awaiting_record(), 4);
    session.handle_template(template(2, 8, HARD_BITS), START, &pool);
    assert_eq!(
        session.poll_transmit(),
        None,
        "the job waits behind the shares"
    );
    session.share_recorded(true);
    session.share_recorded(false);
    assert_eq!(session.awaiting_record(), 2);
    let first = session.poll_transmit().expect("the first two answers");
    client.handle_bytes(&first, START.unix_secs() as u32);
    assert_eq!(
        client_events(&mut client),
        vec![
            ClientEvent::Accepted {
                count: 1,
                last_sequence_number: 0
            },
            ClientEvent::Rejected {
                sequence_number: 1,
                code: "share-not-recorded".into()
            },
        ]
    );
    session.share_recorded(true);
    session.share_recorded(true);
    let rest = session.poll_transmit().expect("the rest");
    client.handle_bytes(&rest, START.unix_secs() as u32);
    let heard = client_events(&mut client);
    assert_eq!(
        heard[0],
        ClientEvent::Accepted {
            count: 2,
            last_sequence_number: 3
        }
    );
    assert!(
        matches!(heard.last(), Some(ClientEvent::Work(_))),
        "{heard:?}"
    );
    assert!(session.close_reason().is_none());
}

/// SV2 too: a wall-clock jump neither closes the channel nor moves its deadline, and the next
/// job's ntime follows the new wall-clock time.
#[test]
fn a_wall_clock_step_keeps_the_sv2_channel_open() {
    let (mut client, mut session, pool, _work, _target) = connected(HARD_BITS);
    let idle = config().idle_timeout_ms;
    let stepped = Now {
        mono_ms: START.mono_ms + 1000,
        unix_ms: START.unix_ms + 10 * idle,
    };
    session.handle_timeout(stepped, &pool);
    assert!(
        session.close_reason().is_none(),
        "{:?}",
        session.close_reason()
    );
    let due = session.poll_timeout().expect("a deadline");
    assert!(
        due <= START.mono_ms + idle,
        "deadline {due} follows the wall clock"
    );
    session.handle_template(template(2, 8, HARD_BITS), stepped, &pool);
    pump_at(&mut client, &mut session, &pool, stepped);
    let work = client_events(&mut client)
        .into_iter()
        .find_map(|e| match e {
            ClientEvent::Work(w) => Some(w),
            _ => None,
        })
        .expect("new work");
    assert_eq!(u64::from(work.ntime), stepped.unix_secs());
    // The idle timeout still comes, on the monotonic clock.
    session.handle_timeout(
        Now {
            mono_ms: START.mono_ms + idle + 1,
            unix_ms: stepped.unix_ms,
        },
        &pool,
    );
    assert!(session.close_reason().is_some());
}
