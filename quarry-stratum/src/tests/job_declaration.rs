//! Job Declaration, pool side: a scripted JDC declares jobs over real Noise, the mining side
//! takes them with SetCustomMiningJob, and every refusal answers with the spec's error code
//! and credits nothing.

use std::sync::Arc;

use bitcoin::absolute::LockTime;
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::Hash;
use bitcoin::transaction::Version;
use bitcoin::{Amount, Block, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};
use quarry_work::hash::{sha256d_80, Hash32};
use quarry_work::job::header_bytes;
use quarry_work::merkle;
use quarry_work::template::{witness_commitment_script, GetBlockTemplate, WorkTemplate};
use quarry_work::Target;
use serde_json::json;

use super::sv2::{events, Raw};
use super::{config, test_pool, TestPool, ADDRESS, REGTEST_BITS, START};
use crate::event::Event;
use crate::pool::Pool;
use crate::v2::declaration::{JdConfig, Verdict};
use crate::v2::message::{flags, Message, Protocol};
use crate::worker::Worker;

/// A transaction the tests declare: a segwit spend of a made-up outpoint, unique per `n` (the
/// JDS resolves transactions by wtxid; whether they spend anything is the node's verdict).
fn tx(n: u8) -> Transaction {
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(bitcoin::Txid::from_byte_array([n; 32]), 0),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::from_slice(&[vec![n; 72], vec![2; 33]]),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(10_000 + u64::from(n)),
            script_pubkey: ScriptBuf::from_bytes(vec![
                0x00, 0x14, n, n, n, n, n, n, n, n, n, n, n, n, n, n, n, n, n, n, n, n,
            ]),
        }],
    }
}

fn wtxid(tx: &Transaction) -> Hash32 {
    tx.compute_wtxid().to_byte_array()
}

/// A segwit template on `prev` carrying `txs`, at regtest difficulty (every other hash a block).
fn template_with(id: u64, prev: u8, txs: &[Transaction]) -> Arc<WorkTemplate> {
    let transactions: Vec<_> = txs
        .iter()
        .map(|t| json!({"data": hex::encode(serialize(t)), "fee": 1000}))
        .collect();
    let gbt: GetBlockTemplate = serde_json::from_value(json!({
        "version": 0x2000_0000u32,
        "previousblockhash": hex::encode([prev; 32]),
        "transactions": transactions,
        "coinbasevalue": 5_000_000_000u64,
        "bits": format!("{REGTEST_BITS:08x}"),
        "curtime": START.unix_secs(),
        "mintime": START.unix_secs() - 600,
        "height": 200 + id,
        "rules": ["csv", "segwit"],
    }))
    .expect("template");
    Arc::new(WorkTemplate::from_gbt(&gbt, id).expect("consistent"))
}

fn miner_script() -> Vec<u8> {
    Worker::parse(ADDRESS, config().network)
        .expect("address")
        .payout_script
}

/// The extranonce a channel of the tests has: 4 bytes of the pool's, 8 of the miner's.
const EXTRANONCE: usize = 12;

/// A declared coinbase paying `value` to `script` (and committing to `wtxids`), split around
/// its zero extranonce as DeclareMiningJob carries it.
fn coinbase(script: &[u8], value: u64, wtxids: &[Hash32]) -> (Vec<u8>, Vec<u8>) {
    let mut leaves = vec![[0u8; 32]];
    leaves.extend_from_slice(wtxids);
    let mut script_sig = vec![0x02, 0xc9, 0x00]; // BIP34 height push
    script_sig.extend_from_slice(&[0x05]);
    script_sig.extend_from_slice(b"jdtst");
    script_sig.push(EXTRANONCE as u8);
    let prefix_len = script_sig.len();
    script_sig.extend_from_slice(&[0; EXTRANONCE]);
    let tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: ScriptBuf::from_bytes(script_sig),
            sequence: Sequence::MAX,
            witness: Witness::from_slice(&[[0u8; 32]]),
        }],
        output: vec![
            TxOut {
                value: Amount::from_sat(value),
                script_pubkey: ScriptBuf::from_bytes(script.to_vec()),
            },
            TxOut {
                value: Amount::ZERO,
                script_pubkey: ScriptBuf::from_bytes(witness_commitment_script(&leaves)),
            },
        ],
    };
    let bytes = serialize(&tx);
    // version, marker and flag, one input, its outpoint, the scriptSig length, then the
    // scriptSig up to the extranonce.
    let split = 4 + 2 + 1 + 36 + 1 + prefix_len;
    (
        bytes[..split].to_vec(),
        bytes[split + EXTRANONCE..].to_vec(),
    )
}

/// `coinbase` with its BIP34 height (201) changed to `height`.
fn at_height((prefix, suffix): &(Vec<u8>, Vec<u8>), height: u8) -> (Vec<u8>, Vec<u8>) {
    let mut prefix = prefix.clone();
    prefix[4 + 2 + 1 + 36 + 1 + 1] = height; // the low byte of the height push
    (prefix, suffix.clone())
}

struct Rig {
    pool: Arc<TestPool>,
    template: Arc<WorkTemplate>,
    jd: Raw,
}

/// A pool taking declarations, whose template carries `known`, and a JD connection set up.
fn rig(known: &[Transaction], jd_config: JdConfig) -> Rig {
    rig_with_flags(known, jd_config, 1)
}

/// The same with the JD connection's SetupConnection flags: 1 is DECLARE_TX_DATA, 0 a
/// coinbase-only declarer.
fn rig_with_flags(known: &[Transaction], jd_config: JdConfig, flags: u32) -> Rig {
    let template = template_with(1, 7, known);
    let pool = Arc::new(test_pool().with_declarations(jd_config));
    pool.on_template(&template);
    let mut jd = Raw::connect_to(Arc::clone(&pool), Arc::clone(&template));
    let answer = jd.setup_protocol(Protocol::JobDeclaration, flags);
    assert!(
        matches!(
            &answer[..],
            [Message::SetupConnectionSuccess {
                used_version: 2,
                ..
            }]
        ),
        "{answer:?}"
    );
    Rig { pool, template, jd }
}

impl Rig {
    /// A token, and the outputs the pool requires.
    fn allocate(&mut self, request_id: u32) -> (Vec<u8>, Vec<u8>) {
        let answer = self.jd.send(Message::AllocateMiningJobToken {
            user_identifier: format!("{ADDRESS}.jd"),
            request_id,
        });
        match &answer[..] {
            [Message::AllocateMiningJobTokenSuccess {
                request_id: r,
                mining_job_token,
                coinbase_outputs,
            }] if *r == request_id => (mining_job_token.clone(), coinbase_outputs.clone()),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn declare(
        &mut self,
        request_id: u32,
        token: &[u8],
        (prefix, suffix): &(Vec<u8>, Vec<u8>),
        wtxids: Vec<Hash32>,
    ) -> Vec<Message> {
        self.jd.send(Message::DeclareMiningJob {
            request_id,
            mining_job_token: token.to_vec(),
            version: 0x2000_0000,
            coinbase_tx_prefix: prefix.clone(),
            coinbase_tx_suffix: suffix.clone(),
            wtxid_list: wtxids,
            excess_data: Vec::new(),
        })
    }

    /// The block the session asked the node about, if it did.
    fn proposal(&mut self) -> Option<(u32, Block)> {
        events(&mut self.jd.session)
            .into_iter()
            .find_map(|e| match e {
                Event::CheckDeclaredBlock { request_id, block } => {
                    Some((request_id, deserialize(&block).expect("a block")))
                }
                _ => None,
            })
    }

    fn verdict(&mut self, request_id: u32, verdict: Verdict) -> Vec<Message> {
        let pool = Arc::clone(&self.pool);
        self.jd
            .session
            .handle_verdict(request_id, verdict, START, &*pool);
        self.jd.received()
    }

    /// A declared job accepted: its new token.
    fn declared(&mut self, request_id: u32, txs: &[Transaction]) -> Vec<u8> {
        let (token, _) = self.allocate(request_id);
        let wtxids: Vec<Hash32> = txs.iter().map(wtxid).collect();
        let declared = coinbase(&miner_script(), 5_000_000_000, &wtxids);
        let answer = self.declare(request_id, &token, &declared, wtxids);
        assert!(answer.is_empty(), "no answer before the node's: {answer:?}");
        let (asked, _) = self.proposal().expect("the block goes to the node");
        assert_eq!(asked, request_id);
        match &self.verdict(request_id, Verdict::Valid)[..] {
            [Message::DeclareMiningJobSuccess {
                request_id: r,
                new_mining_job_token,
            }] if *r == request_id => new_mining_job_token.clone(),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A mining connection on the same pool that selects its own work, with one extended
    /// channel: the connection and the channel's id and extranonce prefix.
    fn miner(&self) -> (Raw, u32, Vec<u8>) {
        let mut miner = Raw::connect_to(Arc::clone(&self.pool), Arc::clone(&self.template));
        let setup = miner.setup_protocol(
            Protocol::Mining,
            flags::REQUIRES_WORK_SELECTION | flags::REQUIRES_VERSION_ROLLING,
        );
        assert!(
            matches!(&setup[..], [Message::SetupConnectionSuccess { .. }]),
            "{setup:?}"
        );
        let opened = miner.send(Message::OpenExtendedMiningChannel {
            request_id: 1,
            user_identity: format!("{ADDRESS}.jd"),
            nominal_hash_rate: 0.0,
            max_target: [0xff; 32],
            min_extranonce_size: 8,
        });
        let Some(Message::OpenExtendedMiningChannelSuccess {
            channel_id,
            extranonce_prefix,
            extranonce_size: 8,
            ..
        }) = opened.first()
        else {
            panic!("unexpected {opened:?}");
        };
        (miner, *channel_id, extranonce_prefix.clone())
    }
}

/// SetCustomMiningJob for a job declared with `txs` (paying the miner's script) on `channel_id`.
fn custom_job(
    channel_id: u32,
    token: Vec<u8>,
    template: &WorkTemplate,
    txs: &[Transaction],
) -> Message {
    let wtxids: Vec<Hash32> = txs.iter().map(wtxid).collect();
    let (prefix, suffix) = coinbase(&miner_script(), 5_000_000_000, &wtxids);
    let declared: Transaction = {
        let mut bytes = prefix.clone();
        bytes.extend_from_slice(&[0; EXTRANONCE]);
        bytes.extend_from_slice(&suffix);
        deserialize(&bytes).expect("coinbase")
    };
    let script = declared.input[0].script_sig.as_bytes();
    let txids: Vec<Hash32> = txs
        .iter()
        .map(|t| t.compute_txid().to_byte_array())
        .collect();
    Message::SetCustomMiningJob {
        channel_id,
        request_id: 9,
        token,
        version: 0x2000_0000,
        prev_hash: template.prev_hash,
        min_ntime: template.curtime,
        nbits: template.bits,
        coinbase_tx_version: 2,
        coinbase_prefix: script[..script.len() - EXTRANONCE].to_vec(),
        coinbase_tx_input_n_sequence: u32::MAX,
        coinbase_tx_outputs: serialize(&declared.output),
        coinbase_tx_locktime: 0,
        merkle_path: merkle::coinbase_branch(&txids),
    }
}

/// A block on a job declared with `txs` (paying the miner) on `template`, mined with
/// `extranonce` after the channel's `extranonce_prefix` at the template's curtime: its
/// coinbase, its merkle root, and a nonce whose header meets the regtest target.
fn solve_block(
    template: &WorkTemplate,
    extranonce_prefix: &[u8],
    extranonce: &[u8],
    txs: &[Transaction],
) -> (Transaction, Hash32, u32) {
    let wtxids: Vec<Hash32> = txs.iter().map(wtxid).collect();
    let (prefix, suffix) = coinbase(&miner_script(), 5_000_000_000, &wtxids);
    let mut full = prefix;
    full.extend_from_slice(extranonce_prefix);
    full.extend_from_slice(extranonce);
    full.extend_from_slice(&suffix);
    let coinbase_tx: Transaction = deserialize(&full).expect("coinbase");
    let txids: Vec<Hash32> = txs
        .iter()
        .map(|t| t.compute_txid().to_byte_array())
        .collect();
    let root = merkle::root_from_branch(
        &coinbase_tx.compute_txid().to_byte_array(),
        &merkle::coinbase_branch(&txids),
    );
    let network = Target::from_compact(REGTEST_BITS);
    let nonce = (0..)
        .find(|n| {
            let header = header_bytes(
                0x2000_0000,
                &template.prev_hash,
                &root,
                template.curtime,
                REGTEST_BITS,
                *n,
            );
            network.is_met_by(&sha256d_80(&header))
        })
        .expect("nonce");
    (coinbase_tx, root, nonce)
}

fn error_code(answer: &[Message]) -> Option<&str> {
    answer.iter().find_map(|m| match m {
        Message::DeclareMiningJobError { error_code, .. }
        | Message::SetCustomMiningJobError { error_code, .. } => Some(error_code.as_str()),
        _ => None,
    })
}

#[test]
fn a_declared_job_with_a_missing_transaction_is_mined_into_a_block_of_its_transactions() {
    let known = [tx(1), tx(2)];
    let mut rig = rig(&known, JdConfig::default());
    let (token, outputs) = rig.allocate(1);
    assert_eq!(token.len(), 8);
    // One output of value 0 paying the miner (solo), with its count.
    let required: Vec<TxOut> = deserialize(&outputs).expect("outputs");
    assert_eq!(required.len(), 1);
    assert_eq!(required[0].value, Amount::ZERO);
    assert_eq!(
        required[0].script_pubkey.as_bytes(),
        miner_script().as_slice()
    );

    // Two transactions the pool's template has, one it has never seen.
    let txs = [tx(1), tx(2), tx(3)];
    let wtxids: Vec<Hash32> = txs.iter().map(wtxid).collect();
    let declared = coinbase(&miner_script(), 5_000_000_000, &wtxids);
    let answer = rig.declare(1, &token, &declared, wtxids);
    assert!(
        matches!(&answer[..], [Message::ProvideMissingTransactions { request_id: 1, unknown_tx_position_list }] if unknown_tx_position_list == &[2]),
        "{answer:?}"
    );
    let answer = rig.jd.send(Message::ProvideMissingTransactionsSuccess {
        request_id: 1,
        transaction_list: vec![serialize(&txs[2])],
    });
    assert!(answer.is_empty(), "{answer:?}");
    // The node is asked about the whole block: coinbase first, then the declared order.
    let (_, block) = rig.proposal().expect("proposal");
    assert_eq!(block.txdata.len(), 4);
    assert!(block.txdata[0].is_coinbase());
    for (declared, got) in txs.iter().zip(&block.txdata[1..]) {
        assert_eq!(declared.compute_wtxid(), got.compute_wtxid());
    }
    assert!(
        block.check_merkle_root(),
        "the proposal's merkle root is its transactions'"
    );
    assert!(
        block.check_witness_commitment(),
        "and the coinbase commits to their witnesses"
    );
    assert_eq!(
        block.header.prev_blockhash.to_byte_array(),
        rig.template.prev_hash
    );
    let answer = rig.verdict(1, Verdict::Valid);
    let [Message::DeclareMiningJobSuccess {
        request_id: 1,
        new_mining_job_token,
    }] = &answer[..]
    else {
        panic!("unexpected {answer:?}");
    };

    // The mining side takes the job and mines it: a share that is a block carries the
    // declared transactions, and is credited like any share.
    let (mut miner, channel_id, extranonce_prefix) = rig.miner();
    let answer = miner.send(custom_job(
        channel_id,
        new_mining_job_token.clone(),
        &rig.template,
        &txs,
    ));
    let [Message::SetCustomMiningJobSuccess {
        request_id: 9,
        job_id,
        ..
    }] = &answer[..]
    else {
        panic!("unexpected {answer:?}");
    };
    let extranonce = [0u8, 0, 0, 0, 0, 0, 0, 5];
    let ntime = rig.template.curtime;
    let (coinbase_tx, _, nonce) = solve_block(&rig.template, &extranonce_prefix, &extranonce, &txs);
    let answer = miner.send(Message::SubmitSharesExtended {
        channel_id,
        sequence_number: 1,
        job_id: *job_id,
        nonce,
        ntime,
        version: 0x2000_0000,
        extranonce: extranonce.to_vec(),
    });
    assert!(
        matches!(
            &answer[..],
            [Message::SubmitSharesSuccess {
                new_submits_accepted_count: 1,
                ..
            }]
        ),
        "{answer:?}"
    );
    let happened = events(&mut miner.session);
    assert!(happened
        .iter()
        .any(|e| matches!(e, Event::ShareAccepted(s) if s.is_block)));
    let found = happened
        .iter()
        .find_map(|e| match e {
            Event::BlockFound(found) => Some(found),
            _ => None,
        })
        .expect("a block");
    let block: Block = deserialize(&found.block).expect("the found block decodes");
    assert_eq!(block.txdata.len(), 4);
    assert_eq!(block.txdata[0].compute_txid(), coinbase_tx.compute_txid());
    for (declared, got) in txs.iter().zip(&block.txdata[1..]) {
        assert_eq!(declared.compute_wtxid(), got.compute_wtxid());
    }
    assert!(block.check_merkle_root());
    assert!(block.check_witness_commitment());
}

#[test]
fn declarations_are_refused_with_the_specs_errors_and_nothing_is_kept() {
    let known = [tx(1), tx(2)];
    let jd_config = JdConfig {
        max_transactions: 3,
        ..JdConfig::default()
    };
    let mut rig = rig(&known, jd_config);
    let wtxids: Vec<Hash32> = known.iter().map(wtxid).collect();
    let good = coinbase(&miner_script(), 5_000_000_000, &wtxids);

    // A token never allocated, a short one, and one used twice.
    let answer = rig.declare(1, &[9; 8], &good, wtxids.clone());
    assert_eq!(error_code(&answer), Some("invalid-mining-job-token"));
    let answer = rig.declare(2, &[9; 3], &good, wtxids.clone());
    assert_eq!(error_code(&answer), Some("invalid-mining-job-token"));
    let (token, _) = rig.allocate(3);
    let answer = rig.declare(3, &token, &good, wtxids.clone());
    assert!(answer.is_empty(), "{answer:?}");
    let answer = rig.declare(4, &token, &good, wtxids.clone());
    assert_eq!(
        error_code(&answer),
        Some("invalid-mining-job-token"),
        "token reuse"
    );

    // A token allocated to another connection.
    let mut other = Raw::connect_to(Arc::clone(&rig.pool), Arc::clone(&rig.template));
    other.setup_protocol(Protocol::JobDeclaration, 1);
    let theirs = match &other.send(Message::AllocateMiningJobToken {
        user_identifier: ADDRESS.into(),
        request_id: 1,
    })[..]
    {
        [Message::AllocateMiningJobTokenSuccess {
            mining_job_token, ..
        }] => mining_job_token.clone(),
        other => panic!("unexpected {other:?}"),
    };
    let answer = rig.declare(5, &theirs, &good, wtxids.clone());
    assert_eq!(error_code(&answer), Some("invalid-mining-job-token"));

    // A coinbase paying someone else, or only part to the pool's output.
    let (token, _) = rig.allocate(6);
    let elsewhere = coinbase(&[0x51], 5_000_000_000, &wtxids);
    let answer = rig.declare(6, &token, &elsewhere, wtxids.clone());
    assert_eq!(error_code(&answer), Some("invalid-coinbase-tx"));
    let (token, _) = rig.allocate(7);
    let (prefix, mut suffix) = good.clone();
    suffix.truncate(suffix.len() / 2);
    let answer = rig.declare(7, &token, &(prefix, suffix), wtxids.clone());
    assert_eq!(
        error_code(&answer),
        Some("invalid-coinbase-tx"),
        "bytes that are no transaction"
    );
    let (token, _) = rig.allocate(8);
    let (mut prefix, suffix) = good.clone();
    prefix[7] = 1; // the input spends an outpoint: not a coinbase
    let answer = rig.declare(8, &token, &(prefix, suffix), wtxids.clone());
    assert_eq!(error_code(&answer), Some("invalid-coinbase-tx-input"));

    // A coinbase for the block before the pool's next one (a JDC racing a new block), or two
    // after it (a pool far behind).
    for height in [200, 203] {
        let (token, _) = rig.allocate(8);
        let answer = rig.declare(8, &token, &at_height(&good, height), wtxids.clone());
        assert_eq!(
            error_code(&answer),
            Some("stale-chain-tip"),
            "height {height}"
        );
    }

    // Too many transactions, or one listed twice.
    let (token, _) = rig.allocate(9);
    let many: Vec<Hash32> = (10..14).map(|n| wtxid(&tx(n))).collect();
    let answer = rig.declare(9, &token, &coinbase(&miner_script(), 1, &many), many);
    assert_eq!(error_code(&answer), Some("invalid-job"));
    let (token, _) = rig.allocate(10);
    let twice = vec![wtxids[0], wtxids[0]];
    let answer = rig.declare(10, &token, &coinbase(&miner_script(), 1, &twice), twice);
    assert_eq!(error_code(&answer), Some("invalid-job"));

    // Missing transactions not sent, or sent wrong.
    let unknown = vec![wtxids[0], wtxid(&tx(20))];
    let (token, _) = rig.allocate(11);
    let answer = rig.declare(
        11,
        &token,
        &coinbase(&miner_script(), 1, &unknown),
        unknown.clone(),
    );
    assert!(matches!(
        &answer[..],
        [Message::ProvideMissingTransactions { .. }]
    ));
    let answer = rig.jd.send(Message::ProvideMissingTransactionsSuccess {
        request_id: 11,
        transaction_list: Vec::new(),
    });
    assert_eq!(error_code(&answer), Some("missing-txs"));
    let (token, _) = rig.allocate(12);
    rig.declare(12, &token, &coinbase(&miner_script(), 1, &unknown), unknown);
    let answer = rig.jd.send(Message::ProvideMissingTransactionsSuccess {
        request_id: 12,
        transaction_list: vec![serialize(&tx(21))],
    });
    assert_eq!(
        error_code(&answer),
        Some("invalid-job"),
        "not the transaction declared there"
    );

    // The node's verdicts: an invalid block, a stale tip, no node at all.
    for (request_id, verdict, code) in [
        (
            13,
            Verdict::Invalid("bad-txns-inputs-missingorspent".into()),
            "invalid-job",
        ),
        (
            14,
            Verdict::Invalid("inconclusive-not-best-prevblk".into()),
            "stale-chain-tip",
        ),
        (
            15,
            Verdict::Unavailable("connection refused".into()),
            "internal-error",
        ),
    ] {
        let (token, _) = rig.allocate(request_id);
        rig.declare(request_id, &token, &good, wtxids.clone());
        assert!(rig.proposal().is_some());
        let answer = rig.verdict(request_id, verdict);
        assert_eq!(error_code(&answer), Some(code));
    }
    // The first good declaration (request 3) is still waiting for its verdict; nothing was
    // accepted, so no declared job exists.
    assert_eq!(rig.pool.declarations().expect("on").counts().1, 0);
    assert!(
        rig.jd.session.close_reason().is_none(),
        "refusals keep the connection"
    );
}

#[test]
fn a_declaration_for_the_next_block_waits_for_the_pools_tip_or_is_stale() {
    let known = [tx(1), tx(2)];
    let mut rig = rig(&known, JdConfig::default());
    // The JDC's node has block 201 before the pool's: its template at 202 has a transaction
    // the pool has not seen yet.
    let next_txs = [tx(1), tx(2), tx(3)];
    let wtxids: Vec<Hash32> = next_txs.iter().map(wtxid).collect();
    let early = at_height(&coinbase(&miner_script(), 5_000_000_000, &wtxids), 202);
    let (token, _) = rig.allocate(1);
    let answer = rig.declare(1, &token, &early, wtxids.clone());
    assert!(answer.is_empty(), "waits: {answer:?}");
    assert!(rig.proposal().is_none(), "no tip to check it on yet");
    let wait_until = rig.jd.session.poll_timeout().expect("a deadline");
    assert!(wait_until <= START.mono_ms + 10_000, "{wait_until}");

    // The pool's node catches up. The declaration goes on, on the new tip, and finds tx(3) in
    // the new template (no ProvideMissingTransactions) though the pool's own task has not
    // indexed it yet.
    let next = template_with(2, 8, &next_txs);
    let pool = Arc::clone(&rig.pool);
    rig.jd
        .session
        .handle_template(Arc::clone(&next), START.plus_ms(800), &*pool);
    assert!(rig.jd.received().is_empty());
    let (asked, block) = rig.proposal().expect("checked once the tip came");
    assert_eq!(asked, 1);
    assert_eq!(block.header.prev_blockhash.to_byte_array(), next.prev_hash);
    assert_eq!(block.txdata.len(), 4);
    let answer = rig.verdict(1, Verdict::Valid);
    assert!(
        matches!(
            &answer[..],
            [Message::DeclareMiningJobSuccess { request_id: 1, .. }]
        ),
        "{answer:?}"
    );

    // One for block 203 whose tip never reaches the pool: stale once the wait is over, and
    // the connection goes on.
    let (token, _) = rig.allocate(2);
    let answer = rig.declare(2, &token, &at_height(&early, 203), wtxids);
    assert!(answer.is_empty(), "waits: {answer:?}");
    rig.jd.session.handle_timeout(START.plus_ms(9_000), &*pool);
    assert!(rig.jd.received().is_empty(), "still waiting");
    rig.jd.session.handle_timeout(START.plus_ms(11_000), &*pool);
    let answer = rig.jd.received();
    assert_eq!(error_code(&answer), Some("stale-chain-tip"), "{answer:?}");
    assert!(rig.proposal().is_none());
    assert!(rig.jd.session.close_reason().is_none());
}

#[test]
fn custom_jobs_are_refused_unless_they_are_the_declared_job_on_the_current_tip() {
    let known = [tx(1)];
    let mut rig = rig(&known, JdConfig::default());
    let (mut miner, channel_id, _) = rig.miner();
    let good =
        |token: Vec<u8>, template: &WorkTemplate| custom_job(channel_id, token, template, &known);

    // An unknown token, and a declared one used twice.
    let answer = miner.send(good(vec![1; 8], &rig.template));
    assert_eq!(error_code(&answer), Some("invalid-mining-job-token"));
    let token = rig.declared(1, &known);
    let answer = miner.send(good(token.clone(), &rig.template));
    assert!(
        matches!(&answer[..], [Message::SetCustomMiningJobSuccess { .. }]),
        "{answer:?}"
    );
    let answer = miner.send(good(token, &rig.template));
    assert_eq!(
        error_code(&answer),
        Some("invalid-mining-job-token"),
        "token reuse"
    );

    // Each field that must match the declaration.
    type Change = fn(&mut Message);
    let changes: [(Change, &str); 6] = [
        (
            |m| {
                if let Message::SetCustomMiningJob { nbits, .. } = m {
                    *nbits = 0x1d00ffff
                }
            },
            "invalid-nbits",
        ),
        (
            |m| {
                if let Message::SetCustomMiningJob { version, .. } = m {
                    *version = 0x2000_0004
                }
            },
            "invalid-version",
        ),
        (
            |m| {
                if let Message::SetCustomMiningJob {
                    coinbase_prefix, ..
                } = m
                {
                    coinbase_prefix.push(0)
                }
            },
            "invalid-coinbase-prefix",
        ),
        (
            |m| {
                if let Message::SetCustomMiningJob {
                    coinbase_tx_outputs,
                    ..
                } = m
                {
                    coinbase_tx_outputs[1] ^= 1
                }
            },
            "invalid-coinbase-tx-outputs",
        ),
        (
            |m| {
                if let Message::SetCustomMiningJob { merkle_path, .. } = m {
                    merkle_path.clear()
                }
            },
            "invalid-merkle-path",
        ),
        (
            |m| {
                if let Message::SetCustomMiningJob { prev_hash, .. } = m {
                    prev_hash[0] ^= 1
                }
            },
            "stale-chain-tip",
        ),
    ];
    for (n, (change, code)) in changes.into_iter().enumerate() {
        let token = rig.declared(10 + n as u32, &known);
        let mut message = good(token, &rig.template);
        change(&mut message);
        let answer = miner.send(message);
        assert_eq!(error_code(&answer), Some(code));
    }

    // A job declared on a tip the pool has since left.
    let token = rig.declared(20, &known);
    let next = template_with(2, 8, &known);
    let pool = Arc::clone(&rig.pool);
    miner
        .session
        .handle_template(Arc::clone(&next), START, &*pool);
    miner.received();
    let answer = miner.send(good(token, &rig.template));
    assert_eq!(error_code(&answer), Some("stale-chain-tip"));

    // No job was made of any of them: a share naming one is refused, nothing credited.
    let answer = miner.send(Message::SubmitSharesExtended {
        channel_id,
        sequence_number: 1,
        job_id: 2,
        nonce: 0,
        ntime: rig.template.curtime,
        version: 0x2000_0000,
        extranonce: vec![0; 8],
    });
    assert!(
        matches!(&answer[..], [Message::SubmitSharesError { .. }]),
        "{answer:?}"
    );
    assert!(!events(&mut miner.session)
        .iter()
        .any(|e| matches!(e, Event::ShareAccepted(_))));
}

#[test]
fn without_job_declaration_the_pool_says_so() {
    let template = template_with(1, 7, &[]);
    let pool = Arc::new(test_pool());
    let mut jd = Raw::connect_to(Arc::clone(&pool), Arc::clone(&template));
    let answer = jd.setup_protocol(Protocol::JobDeclaration, 1);
    assert!(
        matches!(&answer[..], [Message::SetupConnectionError { error_code, .. }] if error_code == "unsupported-protocol")
    );
    let mut miner = Raw::connect_to(pool, template);
    let answer = miner.setup_protocol(Protocol::Mining, flags::REQUIRES_WORK_SELECTION);
    assert!(
        matches!(&answer[..], [Message::SetupConnectionError { .. }]),
        "{answer:?}"
    );
}

#[test]
fn coinbase_only_declarers_are_refused_unless_the_pool_takes_them() {
    let template = template_with(1, 7, &[]);
    let pool = Arc::new(test_pool().with_declarations(JdConfig::default()));
    let mut jd = Raw::connect_to(Arc::clone(&pool), Arc::clone(&template));
    let answer = jd.setup_protocol(Protocol::JobDeclaration, 0);
    assert!(
        matches!(&answer[..], [Message::SetupConnectionError { error_code, .. }] if error_code == "missing-declare-tx-data-flag"),
        "{answer:?}"
    );
}

#[test]
fn a_coinbase_only_token_names_custom_jobs_checked_as_far_as_the_pool_can() {
    // The miner's transactions: the pool never sees them.
    let txs = [tx(1), tx(2)];
    let jd_config = JdConfig {
        coinbase_only: true,
        ..JdConfig::default()
    };
    let mut rig = rig_with_flags(&[], jd_config, 0);
    let template = Arc::clone(&rig.template);
    let (token, _) = rig.allocate(1);
    let (mut miner, channel_id, extranonce_prefix) = rig.miner();

    // The token names the job directly, as often as the miner likes until it expires.
    for request in 0..2 {
        let answer = miner.send(custom_job(channel_id, token.clone(), &template, &txs));
        assert!(
            matches!(&answer[..], [Message::SetCustomMiningJobSuccess { .. }]),
            "custom job {request}: {answer:?}"
        );
    }
    let job_id = match &miner.send(custom_job(channel_id, token.clone(), &template, &txs))[..] {
        [Message::SetCustomMiningJobSuccess { job_id, .. }] => *job_id,
        other => panic!("unexpected {other:?}"),
    };

    // What the pool can check: the outputs, the BIP34 height, the tip.
    let mut elsewhere = custom_job(channel_id, token.clone(), &template, &txs);
    if let Message::SetCustomMiningJob {
        coinbase_tx_outputs,
        ..
    } = &mut elsewhere
    {
        let mut outputs: Vec<TxOut> = deserialize(coinbase_tx_outputs).expect("outputs");
        outputs[0].script_pubkey = ScriptBuf::from_bytes(vec![0x51]);
        *coinbase_tx_outputs = serialize(&outputs);
    }
    assert_eq!(
        error_code(&miner.send(elsewhere)),
        Some("invalid-coinbase-tx-outputs")
    );
    let mut wrong_height = custom_job(channel_id, token.clone(), &template, &txs);
    if let Message::SetCustomMiningJob {
        coinbase_prefix, ..
    } = &mut wrong_height
    {
        coinbase_prefix[1] ^= 1;
    }
    assert_eq!(
        error_code(&miner.send(wrong_height)),
        Some("invalid-coinbase-prefix")
    );
    let mut stale = custom_job(channel_id, token.clone(), &template, &txs);
    if let Message::SetCustomMiningJob { prev_hash, .. } = &mut stale {
        prev_hash[0] ^= 1;
    }
    assert_eq!(error_code(&miner.send(stale)), Some("stale-chain-tip"));

    // A block on it is credited as a share, and reported without bytes: the pool cannot build
    // it, the miner's node publishes it.
    let extranonce = [0u8, 0, 0, 0, 0, 0, 0, 6];
    let ntime = template.curtime;
    let (_, root, nonce) = solve_block(&template, &extranonce_prefix, &extranonce, &txs);
    let answer = miner.send(Message::SubmitSharesExtended {
        channel_id,
        sequence_number: 1,
        job_id,
        nonce,
        ntime,
        version: 0x2000_0000,
        extranonce: extranonce.to_vec(),
    });
    assert!(
        matches!(&answer[..], [Message::SubmitSharesSuccess { .. }]),
        "{answer:?}"
    );
    let found = events(&mut miner.session)
        .into_iter()
        .find_map(|e| match e {
            Event::BlockFound(found) => Some(found),
            _ => None,
        })
        .expect("a block");
    assert!(
        found.block.is_empty(),
        "no block bytes without the transactions"
    );
    let header = header_bytes(
        0x2000_0000,
        &template.prev_hash,
        &root,
        ntime,
        REGTEST_BITS,
        nonce,
    );
    assert_eq!(
        found.hash,
        sha256d_80(&header),
        "but its hash, for the ledger to follow"
    );

    // Custom jobs for the next block, sent before the pool's node has it, wait for the pool's
    // template on that tip. There the one on it goes on and a rival's is stale; one for a
    // block the pool never reaches is stale when its wait is over.
    let next = template_with(2, 8, &[]);
    let early = |request: u32, height: u8, prev: u8| {
        let mut job = custom_job(channel_id, token.clone(), &next, &txs);
        if let Message::SetCustomMiningJob {
            request_id,
            prev_hash,
            coinbase_prefix,
            ..
        } = &mut job
        {
            *request_id = request;
            *prev_hash = [prev; 32];
            coinbase_prefix[1] = height;
        }
        job
    };
    assert!(miner.send(early(30, 202, 8)).is_empty(), "waits");
    assert!(miner.send(early(31, 202, 9)).is_empty(), "waits");
    let pool = Arc::clone(&miner.pool);
    miner
        .session
        .handle_template(Arc::clone(&next), START.plus_ms(1_000), &*pool);
    let answer = miner.received();
    let answered = |request: u32| {
        answer.iter().find_map(|m| match m {
            Message::SetCustomMiningJobSuccess { request_id, .. } if *request_id == request => {
                Some("success")
            }
            Message::SetCustomMiningJobError {
                request_id,
                error_code,
                ..
            } if *request_id == request => Some(error_code.as_str()),
            _ => None,
        })
    };
    assert_eq!(answered(30), Some("success"), "{answer:?}");
    assert_eq!(answered(31), Some("stale-chain-tip"), "{answer:?}");
    assert!(miner.send(early(32, 203, 10)).is_empty(), "waits");
    let due = miner.session.poll_timeout().expect("a deadline");
    assert!(due <= START.plus_ms(11_000).mono_ms, "{due}");
    miner.session.handle_timeout(START.plus_ms(11_000), &*pool);
    let answer = miner.received();
    assert_eq!(error_code(&answer), Some("stale-chain-tip"), "{answer:?}");
}

#[test]
fn coinbase_only_tokens_used_in_a_custom_job_stop_counting_against_the_limit() {
    // A coinbase-only JDC asks for a token per job and never declares any.
    let jd_config = JdConfig {
        coinbase_only: true,
        max_tokens_per_connection: 2,
        ..JdConfig::default()
    };
    let mut rig = rig_with_flags(&[], jd_config, 0);
    let template = Arc::clone(&rig.template);
    let (mut miner, channel_id, _) = rig.miner();
    for request in 1..=6 {
        let (token, _) = rig.allocate(request);
        let answer = miner.send(custom_job(channel_id, token, &template, &[]));
        assert!(
            matches!(&answer[..], [Message::SetCustomMiningJobSuccess { .. }]),
            "custom job {request}: {answer:?}"
        );
    }
    // Tokens held unused still count: the third is one too many.
    rig.allocate(7);
    rig.allocate(8);
    rig.jd.send(Message::AllocateMiningJobToken {
        user_identifier: format!("{ADDRESS}.jd"),
        request_id: 9,
    });
    assert!(
        rig.jd.session.close_reason().is_some(),
        "a JDC hoarding tokens is closed"
    );
}
