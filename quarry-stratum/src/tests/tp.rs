//! The Template Provider against a scripted SV2 pool, over real Noise. The pool side builds its
//! coinbase from `NewTemplate` the way SRI's `channels_sv2` does (its outputs first, then the
//! template's, a segwit serialization with the 32-byte reserved value), so these tests check
//! every field a real pool reads.

use std::sync::Arc;

use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::Hash as _;
use bitcoin::{Amount, Block, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};
use quarry_work::hash::sha256d_80;
use quarry_work::job::header_bytes;
use quarry_work::merkle;
use quarry_work::template::{GetBlockTemplate, WorkTemplate};
use quarry_work::Target;
use serde_json::Value;

use super::{template, HARD_BITS, REGTEST_BITS, START};
use crate::clock::Now;
use crate::v2::message::{Message, Protocol, SetupConnection};
use crate::v2::noise::{InitiatorHandshake, Transport, ACT2_LEN};
use crate::v2::template_provider::{TpConfig, TpEvent, TpSession};
use crate::v2::AuthorityKeypair;

struct Pool {
    transport: Transport,
    tp: TpSession,
}

impl Pool {
    fn connect() -> Pool {
        let authority = AuthorityKeypair::generate();
        let mut tp = TpSession::new(Arc::new(TpConfig::new(authority.clone())), START);
        let mut handshake = InitiatorHandshake::new(&authority.public, 1 << 24).expect("init");
        tp.handle_bytes(&handshake.start().expect("act1"), START);
        let act2: [u8; ACT2_LEN] = tp
            .poll_transmit()
            .expect("act2")
            .try_into()
            .expect("act2 length");
        let transport = handshake
            .finish(&act2, START.unix_secs() as u32)
            .expect("certificate verifies");
        Pool { transport, tp }
    }

    fn send(&mut self, message: Message) -> Vec<Message> {
        let mut wire = Vec::new();
        self.transport.encrypt(&message.to_frame_bytes(), &mut wire);
        self.tp.handle_bytes(&wire, START);
        self.received()
    }

    fn received(&mut self) -> Vec<Message> {
        while let Some(bytes) = self.tp.poll_transmit() {
            self.transport.push(&bytes);
        }
        let mut out = Vec::new();
        while let Ok(Some(frame)) = self.transport.next_frame() {
            out.push(Message::decode(&frame).expect("the TP sends valid messages"));
        }
        out
    }

    fn setup(&mut self, protocol: Protocol) -> Vec<Message> {
        self.send(Message::SetupConnection(SetupConnection {
            protocol,
            min_version: 2,
            max_version: 2,
            flags: 0,
            endpoint_host: "127.0.0.1".into(),
            endpoint_port: 8442,
            vendor: String::new(),
            hardware_version: String::new(),
            firmware: String::new(),
            device_id: String::new(),
        }))
    }

    /// Set up and state constraints (SRI's pool: one P2WPKH output plus its offsets).
    fn ready(template: Arc<WorkTemplate>) -> (Pool, Vec<Message>) {
        let mut pool = Pool::connect();
        pool.tp.handle_template(template);
        let setup = pool.setup(Protocol::TemplateDistribution);
        assert!(matches!(
            setup.as_slice(),
            [Message::SetupConnectionSuccess {
                used_version: 2,
                ..
            }]
        ));
        let first = pool.send(Message::CoinbaseOutputConstraints {
            coinbase_output_max_additional_size: 74,
            coinbase_output_max_additional_sigops: 4,
        });
        (pool, first)
    }

    fn events(&mut self) -> Vec<TpEvent> {
        std::iter::from_fn(|| self.tp.poll_event()).collect()
    }
}

/// The coinbase a pool builds from `NewTemplate`: prefix, the pool's own bytes, its payout, then
/// the template's outputs.
fn pool_coinbase(new_template: &Message, extra_script: &[u8], payout: ScriptBuf) -> Transaction {
    let Message::NewTemplate {
        coinbase_tx_version,
        coinbase_prefix,
        coinbase_tx_input_sequence,
        coinbase_tx_value_remaining,
        coinbase_tx_outputs_count,
        coinbase_tx_outputs,
        coinbase_tx_locktime,
        ..
    } = new_template
    else {
        panic!("not a NewTemplate: {new_template:?}");
    };
    let mut outputs = vec![TxOut {
        value: Amount::from_sat(*coinbase_tx_value_remaining),
        script_pubkey: payout,
    }];
    let mut rest = coinbase_tx_outputs.as_slice();
    for _ in 0..*coinbase_tx_outputs_count {
        let (out, used): (TxOut, usize) =
            bitcoin::consensus::encode::deserialize_partial(rest).expect("outputs without prefix");
        outputs.push(out);
        rest = &rest[used..];
    }
    assert!(
        rest.is_empty(),
        "outputs carry no count prefix and nothing after them"
    );
    let mut script_sig = coinbase_prefix.clone();
    script_sig.extend_from_slice(extra_script);
    Transaction {
        version: bitcoin::transaction::Version::non_standard(*coinbase_tx_version as i32),
        lock_time: bitcoin::absolute::LockTime::from_consensus(*coinbase_tx_locktime),
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: script_sig.into(),
            sequence: Sequence(*coinbase_tx_input_sequence),
            witness: Witness::from(vec![vec![0u8; 32]]),
        }],
        output: outputs,
    }
}

/// The first nonce whose header meets (or, with `meets` false, misses) the network target.
fn find_nonce(template: &WorkTemplate, coinbase: &Transaction, meets: bool) -> u32 {
    let txid = coinbase.compute_txid().to_byte_array();
    let root = merkle::root_from_branch(&txid, &template.merkle_branch);
    (0u32..)
        .find(|n| {
            let header = header_bytes(
                template.version,
                &template.prev_hash,
                &root,
                template.curtime,
                template.bits,
                *n,
            );
            template.network_target.is_met_by(&sha256d_80(&header)) == meets
        })
        .expect("regtest: half of all nonces are blocks")
}

fn vector(name: &str) -> Value {
    let dir = std::env::var_os("QUARRY_VECTORS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/bitcoin-core")
        });
    let path = dir.join(format!("core-{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("vector {} must exist: {e}", path.display()));
    serde_json::from_str(&text).expect("vector is JSON")
}

fn hex_field(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(v[key].as_str().expect("string field")).expect("hex field")
}

fn core_template(v: &Value, id: u64) -> Arc<WorkTemplate> {
    let gbt: GetBlockTemplate =
        serde_json::from_value(v["getblocktemplate"].clone()).expect("template parses");
    Arc::new(WorkTemplate::from_gbt(&gbt, id).expect("consistent"))
}

#[test]
fn a_solution_on_a_core_template_rebuilds_the_block_core_accepted() {
    let v = vector("mixed");
    let template = core_template(&v, 9);
    let (mut pool, first) = Pool::ready(Arc::clone(&template));
    let [new_template @ Message::NewTemplate {
        template_id: 9,
        future_template: true,
        merkle_path,
        ..
    }, Message::TemplateSetNewPrevHash {
        template_id: 9,
        prev_hash,
        n_bits,
        target,
        ..
    }] = first.as_slice()
    else {
        panic!("a future template then its prev hash: {first:?}");
    };
    assert_eq!(prev_hash, &template.prev_hash);
    assert_eq!(*n_bits, template.bits);
    assert_eq!(Target::from_le_bytes(*target), template.network_target);
    assert_eq!(merkle_path, &template.merkle_branch);

    // Core's coinbase: prefix (height) | push(extranonce) | push(tag). Rebuild it from the
    // NewTemplate fields alone.
    let recorded: Transaction =
        deserialize(&hex_field(&v, "coinbase_tx_with_witness_hex")).expect("recorded coinbase");
    let Message::NewTemplate {
        coinbase_prefix, ..
    } = new_template
    else {
        unreachable!()
    };
    let script = recorded.input[0].script_sig.as_bytes();
    assert!(
        script.starts_with(coinbase_prefix),
        "prefix is the BIP34 height"
    );
    let rebuilt = pool_coinbase(
        new_template,
        &script[coinbase_prefix.len()..],
        recorded.output[0].script_pubkey.clone(),
    );
    assert_eq!(serialize(&rebuilt), serialize(&recorded));

    let header = hex_field(&v, "header_hex");
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let answer = pool.send(Message::SubmitSolution {
        template_id: 9,
        version: word(0),
        header_timestamp: word(68),
        header_nonce: word(76),
        coinbase_tx: serialize(&rebuilt),
    });
    assert!(answer.is_empty(), "no answer to a solution: {answer:?}");
    let events = pool.events();
    let block = events
        .iter()
        .find_map(|e| match e {
            TpEvent::Block(block) => Some(block),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a block: {events:?}"));
    assert_eq!(
        hex::encode(&block.block),
        v["accepted_block_hex"].as_str().expect("hex")
    );
    assert_eq!(block.height, template.height);
}

#[test]
fn a_chain_without_segwit_gets_the_coinbase_without_its_witness() {
    // As the registry node (Bitcoin SV) answers: no segwit rule, no commitment.
    let gbt: GetBlockTemplate = serde_json::from_value(serde_json::json!({
        "version": 0x2000_0000u32,
        "previousblockhash": hex::encode([7u8; 32]),
        "transactions": [],
        "coinbasevalue": 5_000_000_000u64,
        "bits": format!("{REGTEST_BITS:08x}"),
        "curtime": START.unix_secs(),
        "height": 203,
    }))
    .expect("valid template");
    let template = Arc::new(WorkTemplate::from_gbt(&gbt, 3).expect("consistent"));
    let (mut pool, first) = Pool::ready(Arc::clone(&template));
    let Some(
        new_template @ Message::NewTemplate {
            coinbase_tx_outputs_count: 0,
            ..
        },
    ) = first.first()
    else {
        panic!("no witness commitment output: {first:?}");
    };
    let payout =
        ScriptBuf::from_hex("76a914000102030405060708090a0b0c0d0e0f1011121388ac").expect("p2pkh");
    let coinbase = pool_coinbase(new_template, b"\x04pool\x08\0\0\0\0\0\0\0\x01", payout);
    let nonce = find_nonce(&template, &coinbase, true);
    pool.send(Message::SubmitSolution {
        template_id: 3,
        version: template.version,
        header_timestamp: template.curtime,
        header_nonce: nonce,
        coinbase_tx: serialize(&coinbase),
    });
    let events = pool.events();
    let Some(TpEvent::Block(found)) = events.iter().find(|e| matches!(e, TpEvent::Block(_))) else {
        panic!("a block: {events:?}");
    };
    let block: Block = deserialize(&found.block).expect("the block parses");
    assert!(block.check_merkle_root());
    assert_eq!(block.txdata.len(), 1);
    assert!(block.txdata[0].input[0].witness.is_empty());
    assert_eq!(block.block_hash().to_byte_array(), found.hash);

    // A nonce that misses the target never reaches the node.
    pool.send(Message::SubmitSolution {
        template_id: 3,
        version: template.version,
        header_timestamp: template.curtime,
        header_nonce: find_nonce(&template, &coinbase, false),
        coinbase_tx: serialize(&coinbase),
    });
    pool.send(Message::SubmitSolution {
        template_id: 77,
        version: 0,
        header_timestamp: 0,
        header_nonce: 0,
        coinbase_tx: serialize(&coinbase),
    });
    pool.send(Message::SubmitSolution {
        template_id: 3,
        version: 0,
        header_timestamp: 0,
        header_nonce: 0,
        coinbase_tx: vec![1, 2, 3],
    });
    let refused: Vec<_> = pool
        .events()
        .into_iter()
        .map(|e| match e {
            TpEvent::Refused { reason, .. } => reason,
            other => panic!("only refusals: {other:?}"),
        })
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused[1].contains("unknown"), "{refused:?}");
    assert!(refused[2].contains("parse"), "{refused:?}");
    assert!(
        pool.tp.close_reason().is_none(),
        "bad solutions do not cost the connection"
    );
}

#[test]
fn templates_wait_for_constraints_and_new_tips_come_as_future_templates() {
    let mut pool = Pool::connect();
    pool.tp.handle_template(template(1, 7, HARD_BITS));
    assert!(pool.received().is_empty(), "nothing before SetupConnection");
    pool.setup(Protocol::TemplateDistribution);
    pool.tp.handle_template(template(2, 7, HARD_BITS));
    assert!(
        pool.received().is_empty(),
        "nothing before CoinbaseOutputConstraints"
    );

    // Only the newest is sent, as a future template with its prev hash.
    let first = pool.send(Message::CoinbaseOutputConstraints {
        coinbase_output_max_additional_size: 74,
        coinbase_output_max_additional_sigops: 4,
    });
    assert!(matches!(
        first.as_slice(),
        [
            Message::NewTemplate {
                template_id: 2,
                future_template: true,
                ..
            },
            Message::TemplateSetNewPrevHash { template_id: 2, .. }
        ]
    ));
    assert!(matches!(
        pool.events().as_slice(),
        [TpEvent::Constraints { fits: true, .. }]
    ));

    // A refresh on the same tip replaces the active template directly.
    pool.tp.handle_template(template(3, 7, HARD_BITS));
    assert!(matches!(
        pool.received().as_slice(),
        [Message::NewTemplate {
            template_id: 3,
            future_template: false,
            ..
        }]
    ));
    pool.tp.handle_template(template(3, 7, HARD_BITS));
    assert!(pool.received().is_empty(), "the same template is sent once");

    // A new tip.
    pool.tp.handle_template(template(4, 8, HARD_BITS));
    assert!(matches!(
        pool.received().as_slice(),
        [
            Message::NewTemplate {
                template_id: 4,
                future_template: true,
                ..
            },
            Message::TemplateSetNewPrevHash { template_id: 4, .. }
        ]
    ));

    // Constraints beyond what getblocktemplate reserved are reported.
    pool.send(Message::CoinbaseOutputConstraints {
        coinbase_output_max_additional_size: 2_000,
        coinbase_output_max_additional_sigops: 4,
    });
    assert!(matches!(
        pool.events().as_slice(),
        [TpEvent::Constraints { fits: false, .. }]
    ));
}

#[test]
fn transaction_data_for_current_stale_and_unknown_templates() {
    let v = vector("mixed");
    let template = core_template(&v, 5);
    let (mut pool, _) = Pool::ready(Arc::clone(&template));
    let answer = pool.send(Message::RequestTransactionData { template_id: 5 });
    let [Message::RequestTransactionDataSuccess {
        template_id: 5,
        excess_data,
        transaction_list,
    }] = answer.as_slice()
    else {
        panic!("transactions: {answer:?}");
    };
    assert_eq!(excess_data, &vec![0u8; 32], "the witness reserved value");
    let gbt_data: Vec<Vec<u8>> = v["getblocktemplate"]["transactions"]
        .as_array()
        .expect("transactions")
        .iter()
        .map(|t| hex::decode(t["data"].as_str().expect("data")).expect("hex"))
        .collect();
    assert!(!gbt_data.is_empty());
    assert_eq!(transaction_list, &gbt_data);

    let answer = pool.send(Message::RequestTransactionData { template_id: 99 });
    assert!(matches!(
        answer.as_slice(),
        [Message::RequestTransactionDataError { error_code, .. }] if error_code == "template-id-not-found"
    ));
    pool.tp.handle_template(super::template(6, 1, HARD_BITS));
    pool.received();
    let answer = pool.send(Message::RequestTransactionData { template_id: 5 });
    assert!(matches!(
        answer.as_slice(),
        [Message::RequestTransactionDataError { error_code, .. }] if error_code == "stale-template-id"
    ));
}

#[test]
fn a_mining_client_is_refused_and_garbage_closes() {
    let mut pool = Pool::connect();
    let answer = pool.setup(Protocol::Mining);
    assert!(matches!(
        answer.as_slice(),
        [Message::SetupConnectionError { error_code, .. }] if error_code == "unsupported-protocol"
    ));
    assert!(pool.tp.close_reason().is_some());

    let mut pool = Pool::connect();
    pool.setup(Protocol::TemplateDistribution);
    pool.tp.handle_bytes(&[0x55; 200], START);
    assert!(
        pool.tp.close_reason().is_some(),
        "bytes that fail the MAC close"
    );

    // A client that never finishes the handshake is dropped at the setup deadline.
    let authority = AuthorityKeypair::generate();
    let mut tp = TpSession::new(Arc::new(TpConfig::new(authority)), START);
    tp.handle_bytes(&[1, 2, 3], START);
    let due = tp.poll_timeout().expect("a deadline");
    tp.handle_timeout(Now::synced(due - 1));
    assert!(tp.close_reason().is_none());
    tp.handle_timeout(Now::synced(due));
    assert!(tp.close_reason().is_some());
}

/// A timeout as long as the clock allows saturates instead of overflowing.
#[test]
fn an_endless_setup_timeout_never_overflows() {
    let authority = AuthorityKeypair::generate();
    let mut config = TpConfig::new(authority);
    config.setup_timeout_ms = u64::MAX;
    let mut tp = TpSession::new(Arc::new(config), START);
    assert_eq!(tp.poll_timeout(), Some(u64::MAX));
    tp.handle_timeout(Now::synced(u64::MAX - 1));
    assert!(tp.close_reason().is_none());
}
