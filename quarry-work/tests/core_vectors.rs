//! Reproduces blocks that Bitcoin Core accepted, from the template alone plus the payout script
//! and extranonce recorded with it (testdata/bitcoin-core, see its README).

use std::path::PathBuf;
use std::sync::Arc;

use quarry_work::coinbase::{CoinbaseLayout, CoinbaseParts, CoinbaseSpec, Payouts, TxOutput};
use quarry_work::hash::{sha256d, to_display_hex};
use quarry_work::job::Job;
use quarry_work::merkle;
use quarry_work::share::{validate_share, validate_shares, ShareReject, ShareRules, Submission};
use quarry_work::template::{GetBlockTemplate, TemplateError, WorkTemplate};
use quarry_work::Target;
use serde_json::Value;

fn vectors_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("QUARRY_VECTORS") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/bitcoin-core")
}

fn load(name: &str) -> Value {
    let path = vectors_dir().join(format!("core-{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("vector {} must exist: {e}", path.display()));
    serde_json::from_str(&text).expect("vector is JSON")
}

fn hex_field(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(v[key].as_str().expect("string field")).expect("hex field")
}

struct Case {
    vector: Value,
    job: Job,
    en1: Vec<u8>,
    en2: Vec<u8>,
}

fn template_of(vector: &Value) -> WorkTemplate {
    let gbt: GetBlockTemplate =
        serde_json::from_value(vector["getblocktemplate"].clone()).expect("template parses");
    WorkTemplate::from_gbt(&gbt, 1).expect("template is consistent")
}

fn vectors_layout() -> CoinbaseLayout {
    CoinbaseLayout {
        extranonce1_len: 4,
        extranonce2_len: 8,
        tag: b"/quarry-vectors/".to_vec(),
    }
}

fn case(name: &str) -> Case {
    let vector = load(name);
    let template = template_of(&vector);
    let extranonce = hex_field(&vector, "extranonce_hex");
    let (en1, en2) = extranonce.split_at(4);
    let payout = hex_field(&vector, "payout_script_pubkey");
    let job = Job::new(Arc::new(template), &payout, &vectors_layout()).expect("coinbase builds");
    Case {
        vector,
        job,
        en1: en1.to_vec(),
        en2: en2.to_vec(),
    }
}

fn header_fields(header: &[u8]) -> (u32, u32, u32) {
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    (word(0), word(68), word(76))
}

fn reproduce(name: &str) {
    let Case {
        vector,
        job,
        en1,
        en2,
    } = case(name);
    let mut coinbase = Vec::new();
    job.coinbase
        .write_without_witness(&en1, &en2, &mut coinbase);
    assert_eq!(
        hex::encode(&coinbase),
        vector["coinbase_tx_without_witness_hex"]
            .as_str()
            .expect("field"),
        "{name}: coinbase without witness"
    );
    let mut with_witness = Vec::new();
    job.coinbase.write_for_block(&en1, &en2, &mut with_witness);
    assert_eq!(
        hex::encode(&with_witness),
        vector["coinbase_tx_with_witness_hex"]
            .as_str()
            .expect("field"),
        "{name}: coinbase with witness"
    );

    let expected_header = hex_field(&vector, "header_hex");
    let (version, ntime, nonce) = header_fields(&expected_header);
    let header = job.header(&en1, &en2, version, ntime, nonce);
    assert_eq!(
        hex::encode(header),
        hex::encode(&expected_header),
        "{name}: header"
    );
    assert_eq!(
        to_display_hex(&sha256d(&header)),
        vector["block_hash"].as_str().expect("field"),
        "{name}: block hash"
    );
    let block = job.block(&header, &en1, &en2);
    assert_eq!(
        hex::encode(&block),
        vector["accepted_block_hex"].as_str().expect("field"),
        "{name}: block bytes"
    );

    // The share path reaches the same header and calls it a block.
    let rules = ShareRules {
        target: Target::MAX,
        version_mask: 0,
        extranonce2_len: 8,
        now_unix: u64::from(ntime),
    };
    let submission = Submission {
        extranonce1: &en1,
        extranonce2: &en2,
        version,
        ntime,
        nonce,
    };
    let share = validate_share(&job, &submission, &rules).expect("the accepted block is a share");
    assert!(share.is_block(), "{name}: meets the network target");
    assert_eq!(share.header(), &header);

    // The node rejected the high-hash variant: so must we.
    let broken = &vector["broken_variants"]["high_hash"];
    if let Some(block_hex) = broken["block_hex"].as_str() {
        let bad = hex::decode(block_hex).expect("hex");
        let (v, t, n) = header_fields(&bad[..80]);
        let bad_submission = Submission {
            version: v,
            ntime: t,
            nonce: n,
            ..submission
        };
        let network_only = ShareRules {
            target: job.template.network_target,
            ..rules
        };
        assert_eq!(
            validate_share(&job, &bad_submission, &network_only).map(|_| ()),
            Err(ShareReject::LowDifficulty),
            "{name}: high-hash variant"
        );
    }
}

#[test]
fn empty_template_block_is_reproduced() {
    reproduce("empty");
}

#[test]
fn mixed_segwit_template_block_is_reproduced() {
    reproduce("mixed");
}

#[test]
fn forty_transaction_template_block_is_reproduced() {
    reproduce("forty");
}

#[test]
fn merkle_branch_matches_full_root() {
    let Case { job, en1, en2, .. } = case("forty");
    assert_eq!(job.template.merkle_branch.len(), 6);
    let leaf = job.coinbase.txid(&en1, &en2);
    let header = job.header(&en1, &en2, job.template.version, job.template.curtime, 0);
    assert_eq!(
        merkle::root_from_branch(&leaf, &job.template.merkle_branch),
        <[u8; 32]>::try_from(&header[36..68]).expect("32 bytes")
    );
}

#[test]
fn tampered_commitment_is_refused() {
    let vector = load("mixed");
    let mut gbt: GetBlockTemplate =
        serde_json::from_value(vector["getblocktemplate"].clone()).expect("template parses");
    let mut commitment = gbt
        .default_witness_commitment
        .clone()
        .expect("segwit template");
    commitment.replace_range(commitment.len() - 2.., "00");
    gbt.default_witness_commitment = Some(commitment);
    assert!(matches!(
        WorkTemplate::from_gbt(&gbt, 1),
        Err(TemplateError::WitnessCommitmentMismatch { .. })
    ));
}

#[test]
fn tampered_txid_is_refused() {
    let vector = load("mixed");
    let mut gbt: GetBlockTemplate =
        serde_json::from_value(vector["getblocktemplate"].clone()).expect("template parses");
    gbt.transactions[1].txid = Some("00".repeat(32));
    assert!(matches!(
        WorkTemplate::from_gbt(&gbt, 1),
        Err(TemplateError::IdMismatch {
            index: 1,
            field: "txid",
            ..
        })
    ));
}

#[test]
fn single_payout_spec_builds_the_recorded_coinbases() {
    for name in ["empty", "mixed", "forty"] {
        let vector = load(name);
        let spec =
            CoinbaseSpec::single(vectors_layout(), hex_field(&vector, "payout_script_pubkey"));
        let parts = CoinbaseParts::from_spec(&template_of(&vector), &spec).expect("builds");
        let extranonce = hex_field(&vector, "extranonce_hex");
        let (en1, en2) = extranonce.split_at(4);
        let mut coinbase = Vec::new();
        parts.write_for_block(en1, en2, &mut coinbase);
        assert_eq!(
            hex::encode(&coinbase),
            vector["coinbase_tx_with_witness_hex"]
                .as_str()
                .expect("field"),
            "{name}"
        );
    }
}

/// A merged-mining coinbase on a template Core accepted a block for: the AuxPoW commitment sits
/// in the scriptSig right before the extranonce, the share path finds a block on it, and
/// rust-bitcoin agrees the block's merkle root, witness commitment and BIP34 height are right.
#[test]
fn an_aux_pow_commitment_goes_before_the_extranonce_and_its_block_validates() {
    use bitcoin::blockdata::script::Instruction;

    let vector = load("mixed");
    let template = Arc::new(template_of(&vector));
    let payout = hex_field(&vector, "payout_script_pubkey");
    let mut aux_pow = vec![0xfa, 0xbe, 0x6d, 0x6d];
    aux_pow.extend([0x42; 32]); // aux merkle root
    aux_pow.extend(1u32.to_le_bytes()); // tree size
    aux_pow.extend(7u32.to_le_bytes()); // nonce
    let donation = TxOutput::new(10_000, vec![0x51]);
    let spec = CoinbaseSpec {
        layout: vectors_layout(),
        payouts: Payouts {
            remainder_script: payout.clone(),
            fixed: vec![donation.clone()],
        },
        commitments: vec![aux_pow.clone()],
        extra_outputs: vec![TxOutput::op_return(b"quarry")],
    };
    let job = Job::from_spec(Arc::clone(&template), &spec).expect("coinbase builds");
    let (en1, en2) = ([0xe1; 4], [0xe2; 8]);
    assert!(
        job.coinbase
            .coinb1
            .ends_with(&[&[44u8][..], &aux_pow, &[12]].concat()),
        "commitment push, then the extranonce push opcode"
    );

    let rules = ShareRules {
        target: job.template.network_target,
        version_mask: 0,
        extranonce2_len: 8,
        now_unix: u64::from(template.curtime),
    };
    let share = (0..1_000u32)
        .find_map(|nonce| {
            let submission = Submission {
                extranonce1: &en1,
                extranonce2: &en2,
                version: template.version,
                ntime: template.curtime,
                nonce,
            };
            validate_share(&job, &submission, &rules).ok()
        })
        .expect("a regtest block within 1,000 nonces");
    assert!(share.is_block());

    let bytes = job.block(share.header(), &en1, &en2);
    let block: bitcoin::Block = bitcoin::consensus::deserialize(&bytes).expect("block decodes");
    assert!(block.check_merkle_root(), "header commits to the coinbase");
    assert!(block.check_witness_commitment(), "witness commitment holds");
    assert_eq!(block.bip34_block_height(), Ok(template.height));
    assert_eq!(block.block_hash().to_string(), to_display_hex(share.hash()));

    let coinbase = &block.txdata[0];
    let pushes: Vec<Vec<u8>> = coinbase.input[0]
        .script_sig
        .instructions()
        .skip(1) // the height
        .map(|i| match i.expect("script parses") {
            Instruction::PushBytes(data) => data.as_bytes().to_vec(),
            Instruction::Op(op) => panic!("unexpected {op}"),
        })
        .collect();
    let extranonce = [&en1[..], &en2[..]].concat();
    assert_eq!(
        pushes,
        vec![aux_pow, extranonce, b"/quarry-vectors/".to_vec()]
    );

    let values: Vec<u64> = coinbase.output.iter().map(|o| o.value.to_sat()).collect();
    assert_eq!(
        values,
        vec![
            template.coinbase_value - donation.value,
            donation.value,
            0,
            0
        ]
    );
    assert_eq!(
        coinbase.output[0].script_pubkey.as_bytes(),
        payout.as_slice()
    );
    assert_eq!(
        Some(coinbase.output[3].script_pubkey.to_bytes()),
        template.witness_commitment,
        "the witness commitment is last"
    );
}

/// Shares validated in lanes get what each gets alone: Core's accepted blocks from templates
/// with different branch lengths side by side, a high-hash variant, a share below a harder
/// target and one with a wrong extranonce2 length.
#[test]
fn shares_validated_in_lanes_match_one_at_a_time() {
    let cases: Vec<Case> = ["empty", "mixed", "forty"].into_iter().map(case).collect();
    let mut shares = Vec::new();
    for case in &cases {
        let (version, ntime, nonce) = header_fields(&hex_field(&case.vector, "header_hex"));
        let rules = ShareRules {
            target: Target::MAX,
            version_mask: 0,
            extranonce2_len: 8,
            now_unix: u64::from(ntime),
        };
        let accepted = Submission {
            extranonce1: &case.en1,
            extranonce2: &case.en2,
            version,
            ntime,
            nonce,
        };
        let network_only = ShareRules {
            target: case.job.template.network_target,
            ..rules
        };
        let short_en2 = Submission {
            extranonce2: &case.en2[..7],
            ..accepted
        };
        shares.push((&case.job, accepted, rules));
        shares.push((
            &case.job,
            Submission {
                nonce: nonce ^ 1,
                ..accepted
            },
            network_only,
        ));
        shares.push((&case.job, short_en2, rules));
    }
    let alone: Vec<_> = shares
        .iter()
        .map(|(job, submission, rules)| validate_share(job, submission, rules).map(|s| *s.hash()))
        .collect();
    assert!(alone.iter().filter(|r| r.is_ok()).count() >= 3);
    assert!(alone.iter().any(|r| r == &Err(ShareReject::LowDifficulty)));
    let lane = |i: usize| (shares[i].0, &shares[i].1, &shares[i].2);
    // Every window of four, and of two, over the mixed list.
    for start in 0..shares.len() - 3 {
        let four = validate_shares([
            lane(start),
            lane(start + 1),
            lane(start + 2),
            lane(start + 3),
        ]);
        for (k, result) in four.iter().enumerate() {
            assert_eq!(
                result.as_ref().map(|s| *s.hash()).map_err(Clone::clone),
                alone[start + k]
            );
        }
    }
    for start in 0..shares.len() - 1 {
        let two = validate_shares([lane(start), lane(start + 1)]);
        for (k, result) in two.iter().enumerate() {
            assert_eq!(
                result.as_ref().map(|s| *s.hash()).map_err(Clone::clone),
                alone[start + k]
            );
        }
    }
}
