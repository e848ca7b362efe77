//! Merged mining: the vectors V1–V7 of the merged-mining note, every `CAuxPow::check` failure,
//! a pool job carrying both commitments end to end, and property tests against a second
//! verifier written from the note's text alone (module `independent`, in `independent/mod.rs`).

mod independent;

use std::path::PathBuf;
use std::sync::Arc;

use proptest::prelude::*;
use quarry_work::auxpow::{
    expected_index, meets_target, AuxHash, AuxPow, AuxPowError, AuxTree, ChainId, COMMITMENT_LEN,
    MERGED_MINING_MAGIC,
};
use quarry_work::coinbase::{CoinbaseLayout, CoinbaseSpec, Payouts};
use quarry_work::hash::{sha256d, sha256d_80, to_display_hex, Hash32};
use quarry_work::job::Job;
use quarry_work::merkle;
use quarry_work::rsk::{partial_merkle_params, RskWork};
use quarry_work::share::{validate_share, ShareRules, Submission};
use quarry_work::template::{GetBlockTemplate, WorkTemplate};
use quarry_work::Target;
use serde_json::json;

/// V1: namecoin `test_framework/auxpow.py`, size 1, valid for any chain id.
const V1_AUXPOW: &str = "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff2cfabe6d6d00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff0100000000000000ffffffff000000000055a40f7de9702f7b75be27fe1bc2912b1a77a67f5ebb11fe013fc4555ec36e5e0000000000000000000001000000000000000000000000000000000000000000000000000000000000000000000013f11e5dcf43b77c3aeb864b90eaf2e4d932c937ebc71b10053079114a84c99b000000000000000000000001";
const V1_AUX_HASH: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// V2: Elastos `auxpow/auxpow_test.go` case 1, chain id 6, a one-hash chain branch.
const V2_AUXPOW: &str = "02000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4b0313ee0904a880495b742f4254432e434f4d2ffabe6d6d9581ba0156314f1e92fd03430c6e4428a32bb3f1b9dc627102498e5cfbf26261020000004204cb9a010f32a00601000000000000ffffffff0200000000000000001976a914c0174e89bd93eacd1d5a1af4ba1802d412afc08688ac0000000000000000266a24aa21a9ede2f61c3f71d1defd3fa999dfa36953755c690689799962b48bebd836974e8cf90000000014acac4ee8fdd8ca7e0b587b35fce8c996c70aefdf24c333038bdba7af531266000000000001ccc205f0e1cb435f50cc2f63edd53186b414fcb22b719da8c59eab066cf30bdb0000000000000020d1061d1e456cae488c063838b64c4911ce256549afadfc6a4736643359141b01551e4d94f9e8b6b03eec92bb6de1e478a0e913e5f733f5884857a7c2b965f53ca880495bffff7f20a880495b";
const V2_AUX_HASH: &str = "7926398947f332fe534b15c628ff0cd9dc6f7d3ea59c74801dc758ac65428e64";

/// V6: rskj#1216's `merkleHashesHex`, corrected to internal order.
const V6_MERKLE_HASHES: &str = "151d59f5d9c5a1630dc7c2bf864c677b4edd5bba8179ecb9daea7f843ad6edc0 0ec7df19f8d9008b666219743fd28e328bef5b14e18a8de3d9e6ca80b463cf9c 3d3c8683969966f288d326a2ed7bf6c70f6ff8cf0b90b7faa473a4d7b531b9d7 aebcf9e4a4139a648b69e79eb5aa82ccb2e52433a0499258f7819c2872429569 3ebfb78e431325bb57c1d10471675b15a76e8afa72088b1fad84f5e315bd5b80 9cd5e8d45776324248de99f8413a5b19854257f9072001010c4a58143707daee";

/// V6: rskj#1216's `blockHeaderHex` and `coinbaseHex`, as posted: the tag is at byte 275 of the
/// 320-byte coinbase, 4 bytes before its end, and the BTC hash is `000000000000a8c3…34909b9e`.
const V6_HEADER: &str = "00008020b97ca7cf024293f5ed3274181e32f0f7a43ef1f229a091e6da0200000000000051642669bcb5e866b4d5c021f8f94a4397e8eb87dc763cde402a2c38ac6206ad6c46995ee09f0a1a407a4988";
const V6_COINBASE: &str = "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff5b03473d1a046d46995e2f70702e636f6d2ffabe6d6d6b23c75620eb00835bcd424492a5465bbbc9716ef80af8228b42c95fd3d5bc49010000000000000020e939c80756e35e391e4b87fba457d910255be980006336010000000000ffffffff04fe362c010000000017a914eca6d10aa55062bd09574783489e3001f9717c69870000000000000000266a24b9e11b6d0f7c61dc75324c142730fd0edaf90417ad475e9fa09482c010afa5fed88261180000000000000000266a24aa21a9ed34f53d51bd9411ed8e9f9a1ea091460d890be4a2bdfb30fb52b385250c82b44a00000000000000002b6a2952534b424c4f434b3a49800bf3433de624db9d89fd5fb9034b7c4cb540d25dbe44653b58160006f50363673c8f";
/// The RSK hash V6's tag carries.
const V6_RSK_HASH: &str = "49800bf3433de624db9d89fd5fb9034b7c4cb540d25dbe44653b58160006f503";

/// Regtest's `bits` (target 7fffff00…).
const REGTEST_BITS: u32 = 0x207f_ffff;

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).expect("test hex")
}

fn aux_hash(text: &str) -> AuxHash {
    text.parse().expect("64 hex digits")
}

fn hash32(text: &str) -> Hash32 {
    unhex(text).try_into().expect("32 bytes")
}

// ---------------------------------------------------------------------------------------------
// The vectors.

#[test]
fn v1_minimal_auxpow_decodes_verifies_and_round_trips() {
    let bytes = unhex(V1_AUXPOW);
    assert_eq!(bytes.len(), 217);
    let auxpow = AuxPow::decode(&bytes).expect("V1 decodes");
    assert_eq!(auxpow.encode(), bytes, "byte-exact round trip");
    assert_eq!(
        auxpow.parent_hash,
        hash32("55a40f7de9702f7b75be27fe1bc2912b1a77a67f5ebb11fe013fc4555ec36e5e")
    );
    assert!(auxpow.merkle_branch.is_empty() && auxpow.chain_branch.is_empty());
    assert_eq!((auxpow.index, auxpow.chain_index), (0, 0));
    // A coinbase with no outputs decodes (Core accepts those: electrum-nmc#230).
    let coinbase: bitcoin::Transaction =
        bitcoin::consensus::deserialize(&auxpow.coinbase_tx).expect("coinbase");
    assert!(coinbase.output.is_empty());

    let hash = aux_hash(V1_AUX_HASH);
    for chain in [1, 6, 16, 98, 1224] {
        assert_eq!(auxpow.verify(hash, ChainId(chain), true), Ok(()), "{chain}");
    }
    assert!(meets_target(&auxpow.parent_block_hash(), REGTEST_BITS));
    assert_eq!(
        auxpow.verify(
            aux_hash("ff112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"),
            ChainId(1),
            true
        ),
        Err(AuxPowError::ChainRootMissing),
    );
    assert_eq!(independent::check(&bytes, V1_AUX_HASH, 1, true), Ok(()));
}

#[test]
fn v2_elastos_regtest_auxpow_passes_for_chain_6_and_fails_for_chain_1() {
    let bytes = unhex(V2_AUXPOW);
    let auxpow = AuxPow::decode(&bytes).expect("V2 decodes");
    assert_eq!(auxpow.encode(), bytes);
    assert_eq!(auxpow.chain_branch.len(), 1);
    assert_eq!(auxpow.chain_index, 0);
    let script = {
        let coinbase: bitcoin::Transaction =
            bitcoin::consensus::deserialize(&auxpow.coinbase_tx).expect("coinbase");
        coinbase.input[0].script_sig.to_bytes()
    };
    let magic_at = find(&script, &MERGED_MINING_MAGIC).expect("magic");
    let commitment = &script[magic_at..magic_at + COMMITMENT_LEN];
    assert!(hex::encode(&commitment[4..36]).starts_with("9581ba01"));
    assert!(hex::encode(&commitment[4..36]).ends_with("f26261"));
    assert_eq!(commitment[36..40], 2u32.to_le_bytes(), "size 2");
    assert_eq!(commitment[40..44], 2_596_996_162u32.to_le_bytes(), "nonce");

    let hash = aux_hash(V2_AUX_HASH);
    assert_eq!(auxpow.verify(hash, ChainId(6), true), Ok(()));
    assert_eq!(
        auxpow.verify(hash, ChainId(1), true),
        Err(AuxPowError::WrongChainIndex {
            index: 0,
            expected: 1
        })
    );
    assert!(meets_target(&auxpow.parent_block_hash(), REGTEST_BITS));
    assert_eq!(independent::check(&bytes, V2_AUX_HASH, 6, true), Ok(()));
    assert!(independent::check(&bytes, V2_AUX_HASH, 1, true).is_err());
}

/// V3's branch hex is not in the note, only its parameters: the slot they imply is checked.
#[test]
fn v3_four_level_branch_parameters_give_slot_1() {
    let nonce = u32::from_le_bytes([0x8d, 0xf9, 0xe4, 0x83]);
    assert_eq!(nonce, 2_212_821_389);
    assert_eq!(expected_index(nonce, 6, 4), 1);
    // Any id ≡ 6 (mod 16) has the same slot.
    assert_eq!(expected_index(nonce, 6 + 16 * 77, 4), 1);
}

#[test]
fn v4_expected_index_table() {
    let ids = [1u32, 6, 16, 98, 1224];
    let heights = [1u32, 2, 3, 4, 30];
    let table: [(u32, [[u32; 5]; 5]); 5] = [
        (
            0,
            [
                [1, 3, 3, 11, 362964203],
                [0, 0, 4, 12, 511831308],
                [0, 2, 6, 14, 809565518],
                [0, 0, 0, 8, 29760568],
                [0, 2, 6, 6, 268636070],
            ],
        ),
        (
            7,
            [
                [0, 2, 2, 10, 672439754],
                [1, 3, 3, 11, 821306859],
                [1, 1, 5, 13, 45299245],
                [1, 3, 7, 7, 339236119],
                [1, 1, 5, 5, 578111621],
            ],
        ),
        (
            2596996162,
            [
                [1, 1, 5, 13, 691722237],
                [0, 2, 6, 14, 840589342],
                [0, 0, 0, 0, 64581728],
                [0, 2, 2, 10, 358518602],
                [0, 0, 0, 8, 597394104],
            ],
        ),
        (
            2212821389,
            [
                [0, 0, 0, 0, 837128640],
                [1, 1, 1, 1, 985995745],
                [1, 3, 3, 3, 209988131],
                [1, 1, 5, 13, 503925005],
                [1, 3, 3, 11, 742800507],
            ],
        ),
        (
            4294967295,
            [
                [0, 2, 2, 2, 318753410],
                [1, 3, 3, 3, 467620515],
                [1, 1, 5, 5, 765354725],
                [1, 3, 7, 15, 1059291599],
                [1, 1, 5, 13, 224425277],
            ],
        ),
    ];
    for (nonce, rows) in table {
        for (id, row) in ids.iter().zip(rows) {
            for (height, slot) in heights.iter().zip(row) {
                assert_eq!(
                    expected_index(nonce, *id, *height),
                    slot,
                    "nonce {nonce} id {id} h {height}"
                );
                assert_eq!(
                    u64::from(slot),
                    independent::expected_index(nonce, *id, *height),
                    "the note's 64-bit form"
                );
            }
        }
    }
    // Namecoin's own unit test: nonce 7, id 1, at h = 30 and h = 3.
    assert_eq!(expected_index(7, 1, 30), 672439754);
    assert_eq!(expected_index(7, 1, 3), 2);
}

#[test]
fn v5_two_chain_tree_commitment_and_branches() {
    let sys = aux_hash("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
    let nmc = aux_hash("202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f");
    let tree =
        AuxTree::build(&[(ChainId::SYSCOIN, sys), (ChainId::NAMECOIN, nmc)]).expect("distinct ids");
    assert_eq!((tree.size(), tree.nonce()), (2, 0));
    assert_eq!(
        hex::encode(tree.commitment()),
        "fabe6d6dacbeb35a6101ca45c44d286224eab1ab9948f0199eb12eba0623d8c30cf906100200000000000000"
    );
    assert_eq!(
        tree.branch(ChainId::NAMECOIN),
        Some((vec![sys.to_internal()], 1))
    );
    assert_eq!(
        tree.branch(ChainId::SYSCOIN),
        Some((vec![nmc.to_internal()], 0))
    );
    // Pitfall 2: display-order leaves give another root, which no node would find.
    let mut wrong = merkle::parent(&sys.to_display_bytes(), &nmc.to_display_bytes());
    wrong.reverse();
    let wrong = hex::encode(wrong);
    assert!(
        wrong.starts_with("ef033921") && wrong.ends_with("64f4c901"),
        "{wrong}"
    );
}

#[test]
fn v6_rsk_partial_merkle_hashes_reach_the_header_root() {
    let hashes: Vec<Hash32> = V6_MERKLE_HASHES.split(' ').map(hash32).collect();
    assert_eq!(hashes.len(), 6);
    let root = hex::encode(merkle::root_from_branch(&hashes[0], &hashes[1..]));
    // The header's bytes 36–67 as the note gives them (elided in the middle).
    assert!(
        root.starts_with("51642669") && root.ends_with("ac6206ad"),
        "{root}"
    );
    // The same shape from `partial_merkle_params`, on a header built around that root.
    let coinbase = unhex("01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff0100ffffffff0000000000");
    let branch = &hashes[1..];
    let leaf = sha256d(&coinbase);
    let mut header = [0u8; 80];
    header[36..68].copy_from_slice(&merkle::root_from_branch(&leaf, branch));
    let params = partial_merkle_params(&header, &coinbase, branch, 6);
    assert_eq!(params[0], to_display_hex(&sha256d_80(&header)));
    assert_eq!(params[1], hex::encode(header));
    assert_eq!(params[2], hex::encode(&coinbase));
    let listed: Vec<&str> = params[3].split(' ').collect();
    assert_eq!(
        listed[0],
        hex::encode(leaf),
        "coinbase txid, internal order"
    );
    assert_eq!(
        listed[1..].join(" "),
        V6_MERKLE_HASHES.split_once(' ').expect("six").1
    );
    assert_eq!(params[4], "6");
    assert_eq!(
        partial_merkle_params(&header, &coinbase, branch, 3000)[4],
        "bb8"
    );
}

/// V6 as rskj#1216 should have sent it: the posted header and coinbase, the corrected hashes.
fn v6_params() -> [String; 5] {
    let header = unhex(V6_HEADER);
    [
        to_display_hex(&sha256d(&header)),
        V6_HEADER.into(),
        V6_COINBASE.into(),
        V6_MERKLE_HASHES.into(),
        "6".into(),
    ]
}

#[test]
fn v6_rsk_submission_passes_the_independent_checker() {
    let params = v6_params();
    assert!(params[0].starts_with("000000000000a8c3") && params[0].ends_with("34909b9e"));
    let rsk_hash = hash32(V6_RSK_HASH);
    let coinbase = unhex(V6_COINBASE);
    assert_eq!(coinbase.len(), 320);
    assert_eq!(find(&coinbase, b"RSKBLOCK:"), Some(275));
    assert_eq!(hex::encode(sha256d(&coinbase)), V6_MERKLE_HASHES[..64]);
    assert_eq!(
        quarry_work::rsk::check_coinbase(&coinbase, &rsk_hash),
        Ok(())
    );
    // All-0xff: only the structure is checked.
    assert_eq!(
        independent::check_rsk(&params, &rsk_hash, &[0xff; 32]),
        Ok(())
    );

    // The builder's arguments for the same share are the vector's.
    let header: [u8; 80] = unhex(V6_HEADER).try_into().expect("80 bytes");
    let branch: Vec<Hash32> = V6_MERKLE_HASHES.split(' ').skip(1).map(hash32).collect();
    assert_eq!(
        partial_merkle_params(&header, &coinbase, &branch, 6),
        params
    );

    // Proof of work, big-endian target against the hash as a number: the hash itself is the
    // hardest target it meets.
    let mut at_hash: [u8; 32] = unhex(&params[0]).try_into().expect("32 bytes");
    assert_eq!(independent::check_rsk(&params, &rsk_hash, &at_hash), Ok(()));
    let last = at_hash.iter().rposition(|&b| b != 0).expect("non-zero");
    at_hash[last] -= 1;
    assert!(independent::check_rsk(&params, &rsk_hash, &at_hash).is_err());
    // It was an RSK solution only: the header's own (testnet) bits are harder.
    let bits = u32::from_le_bytes(header[72..76].try_into().expect("4 bytes"));
    let mut btc = Target::from_compact(bits).to_le_bytes();
    btc.reverse();
    assert!(independent::check_rsk(&params, &rsk_hash, &btc).is_err());
    // Another RSK hash is refused.
    assert!(independent::check_rsk(&params, &[0x49; 32], &[0xff; 32]).is_err());
}

/// A parent coinbase with `script` as its scriptSig and `outputs` (value, scriptPubKey).
fn coinbase_with_outputs(script: &[u8], outputs: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut tx = vec![1, 0, 0, 0, 1];
    tx.extend_from_slice(&[0; 32]);
    tx.extend_from_slice(&[0xff; 4]);
    assert!(script.len() < 0xfd && outputs.len() < 0xfd);
    tx.push(script.len() as u8);
    tx.extend_from_slice(script);
    tx.extend_from_slice(&[0xff; 4]);
    tx.push(outputs.len() as u8);
    for (value, script_pubkey) in outputs {
        assert!(script_pubkey.len() < 0xfd);
        tx.extend_from_slice(&value.to_le_bytes());
        tx.push(script_pubkey.len() as u8);
        tx.extend_from_slice(script_pubkey);
    }
    tx.extend_from_slice(&[0; 4]);
    tx
}

/// `6a 29 RSKBLOCK: <hash>`.
fn rsk_tag_script(hash: &Hash32) -> Vec<u8> {
    [&[0x6a, 0x29][..], b"RSKBLOCK:", hash].concat()
}

/// The five arguments for `coinbase` under a header built around it and V6's branch.
fn rsk_params_for(coinbase: &[u8]) -> [String; 5] {
    let branch: Vec<Hash32> = V6_MERKLE_HASHES.split(' ').skip(1).map(hash32).collect();
    let header = header_for(coinbase, &branch, BIP9_VERSION);
    let txid = sha256d(coinbase);
    let hashes: Vec<String> = std::iter::once(&txid)
        .chain(&branch)
        .map(hex::encode)
        .collect();
    [
        to_display_hex(&sha256d(&header)),
        hex::encode(header),
        hex::encode(coinbase),
        hashes.join(" "),
        "6".into(),
    ]
}

const RSK_HASH: Hash32 = [0x3c; 32];

/// A payout then the tag, the convention (btcpool).
fn rsk_outputs() -> Vec<(u64, Vec<u8>)> {
    vec![(5_000_000_000, vec![0x51]), (0, rsk_tag_script(&RSK_HASH))]
}

#[test]
fn rsk_checker_takes_the_last_tag_only() {
    let script = [3, 0x10, 0x27, 0x00];
    let good = coinbase_with_outputs(&script, &rsk_outputs());
    assert_eq!(
        independent::check_rsk(&rsk_params_for(&good), &RSK_HASH, &[0xff; 32]),
        Ok(())
    );
    // A pool tag holding `RSKBLOCK:` and another hash earlier in the coinbase does not matter.
    let early = [&script[..], b"RSKBLOCK:", &[0x77; 32]].concat();
    let coinbase = coinbase_with_outputs(&early, &rsk_outputs());
    assert_eq!(
        independent::check_rsk(&rsk_params_for(&coinbase), &RSK_HASH, &[0xff; 32]),
        Ok(())
    );
    // A later tag with another hash hides ours.
    let mut outputs = rsk_outputs();
    outputs.push((0, rsk_tag_script(&[0x77; 32])));
    let coinbase = coinbase_with_outputs(&script, &outputs);
    assert!(quarry_work::rsk::check_coinbase(&coinbase, &RSK_HASH).is_err());
    assert!(independent::check_rsk(&rsk_params_for(&coinbase), &RSK_HASH, &[0xff; 32]).is_err());
    // So does a bare `RSKBLOCK:` after ours (in an output, say), even with too few bytes after.
    let mut outputs = rsk_outputs();
    outputs.push((0, [&[0x6a, 0x09][..], b"RSKBLOCK:"].concat()));
    let coinbase = coinbase_with_outputs(&script, &outputs);
    assert!(quarry_work::rsk::check_coinbase(&coinbase, &RSK_HASH).is_err());
    assert!(independent::check_rsk(&rsk_params_for(&coinbase), &RSK_HASH, &[0xff; 32]).is_err());
    // No tag at all.
    let coinbase = coinbase_with_outputs(&script, &rsk_outputs()[..1]);
    assert!(independent::check_rsk(&rsk_params_for(&coinbase), &RSK_HASH, &[0xff; 32]).is_err());
}

#[test]
fn rsk_checker_allows_128_bytes_after_the_hash_and_no_more() {
    let script = [3, 0x10, 0x27, 0x00];
    // After the tag's hash: an output of 8 + 1 + len bytes, then the 4-byte lock time.
    for (len, ok) in [(0usize, true), (115, true), (116, false), (200, false)] {
        let mut outputs = rsk_outputs();
        outputs.push((0, vec![0x6a; len]));
        let coinbase = coinbase_with_outputs(&script, &outputs);
        let independent =
            independent::check_rsk(&rsk_params_for(&coinbase), &RSK_HASH, &[0xff; 32]);
        assert_eq!(
            independent.is_ok(),
            ok,
            "{} bytes after: {independent:?}",
            13 + len
        );
        assert_eq!(
            quarry_work::rsk::check_coinbase(&coinbase, &RSK_HASH).is_ok(),
            ok,
            "the module agrees"
        );
    }
}

#[test]
fn rsk_checker_refuses_a_wrong_branch() {
    let coinbase = coinbase_with_outputs(&[3, 0x10, 0x27, 0x00], &rsk_outputs());
    let params = rsk_params_for(&coinbase);
    let check = |merkle_hashes: String| {
        let mut params = params.clone();
        params[3] = merkle_hashes;
        independent::check_rsk(&params, &RSK_HASH, &[0xff; 32])
    };
    assert_eq!(check(params[3].clone()), Ok(()));
    let hashes: Vec<&str> = params[3].split(' ').collect();
    // One branch hash changed.
    let mut flipped: Vec<String> = hashes.iter().map(|h| h.to_string()).collect();
    flipped[3] = hex::encode(hash32(hashes[3]).map(|b| b ^ 1));
    assert!(check(flipped.join(" ")).is_err());
    // A branch hash missing.
    assert!(check(hashes[..hashes.len() - 1].join(" ")).is_err());
    // Pitfall 3: the branch in display order, with or without the txid.
    let mut display: Vec<String> = hashes.iter().map(|h| to_display_hex(&hash32(h))).collect();
    assert!(check(display.join(" ")).is_err());
    display[0] = hashes[0].to_string();
    assert!(check(display.join(" ")).is_err());
    // The first entry must be the coinbase txid even though the fold starts from it.
    let mut first = hashes.iter().map(|h| h.to_string()).collect::<Vec<_>>();
    first[0] = hex::encode([0u8; 32]);
    assert!(check(first.join(" ")).is_err());
    // Comma-separated, or empty.
    assert!(check(hashes.join(",")).is_err());
    assert!(check(String::new()).is_err());
}

#[test]
fn rsk_checker_refuses_malformed_arguments() {
    let coinbase = coinbase_with_outputs(&[3, 0x10, 0x27, 0x00], &rsk_outputs());
    let params = rsk_params_for(&coinbase);
    let check = |index: usize, value: String| {
        let mut params = params.clone();
        params[index] = value;
        independent::check_rsk(&params, &RSK_HASH, &[0xff; 32])
    };
    assert!(check(0, format!("0x{}", params[0])).is_err());
    assert!(check(1, format!("0x{}", params[1])).is_err());
    assert!(
        check(1, format!("{}00", params[1])).is_err(),
        "81-byte header"
    );
    assert!(
        check(2, format!("{}00", params[2])).is_err(),
        "bytes after the tx"
    );
    assert!(check(4, "0x6".into()).is_err());
    assert!(check(4, "".into()).is_err());
    assert!(check(4, "80000000".into()).is_err(), "beyond Java's int");
    assert_eq!(check(4, "bb8".into()), Ok(()));
    // A coinbase of 64 bytes or less.
    let short = coinbase_with_outputs(&[0; 2], &[]);
    assert!(short.len() <= 64);
    assert!(independent::check_rsk(&rsk_params_for(&short), &RSK_HASH, &[0xff; 32]).is_err());
    // The witness serialization (marker 0, flag 1) is not the non-witness tx rskj hashes.
    let mut witness = coinbase[..4].to_vec();
    witness.extend_from_slice(&[0, 1]);
    witness.extend_from_slice(&coinbase[4..coinbase.len() - 4]);
    witness.extend_from_slice(&[1, 32]);
    witness.extend_from_slice(&[0; 32]);
    witness.extend_from_slice(&[0; 4]);
    assert!(independent::check_rsk(&rsk_params_for(&witness), &RSK_HASH, &[0xff; 32]).is_err());
}

#[test]
fn v7_targets_from_bits_and_rsk() {
    let target = Target::from_compact(0x184927b0);
    assert_eq!(
        hex::encode(target.to_le_bytes()),
        "000000000000000000000000000000000000000000b027490000000000000000",
        "createauxblock's _target is little-endian"
    );
    assert_eq!(Target::from_compact_checked(0x184927b0), Some(target));
    let regtest = format!("7fffff{}", "00".repeat(29));
    assert_eq!(
        Target::from_compact(REGTEST_BITS),
        Target::from_be_hex(&regtest).expect("hex")
    );

    // RSK difficulty 3: 0x5555…55 (·3 = 2^256 − 1), big-endian in mnr_getWork.
    let work = RskWork::from_get_work(&json!({
        "blockHashForMergedMining": format!("0x{}", "ab".repeat(32)),
        "target": format!("0x{}", "55".repeat(32)),
        "feesPaidToMiner": "0",
        "notify": false,
        "parentBlockHash": format!("0x{}", "cd".repeat(32)),
    }))
    .expect("work");
    assert_eq!(work.target.to_le_bytes(), [0x55; 32]);
    let mut just_over = [0x55; 32];
    just_over[0] = 0x56;
    assert!(work.is_solved_by(&[0x55; 32]));
    assert!(!work.is_solved_by(&just_over));
}

// ---------------------------------------------------------------------------------------------
// Failures, one per rule, each on an AuxPoW that is valid but for that rule.

/// A parent coinbase whose `vin[0].scriptSig` is `script`.
fn coinbase_with_script(script: &[u8]) -> Vec<u8> {
    let mut tx = vec![1, 0, 0, 0, 1];
    tx.extend_from_slice(&[0; 32]);
    tx.extend_from_slice(&[0xff; 4]);
    assert!(script.len() < 0xfd);
    tx.push(script.len() as u8);
    tx.extend_from_slice(script);
    tx.extend_from_slice(&[0xff; 4]);
    tx.push(1); // one output: 50 BTC to OP_TRUE
    tx.extend_from_slice(&5_000_000_000u64.to_le_bytes());
    tx.extend_from_slice(&[1, 0x51]);
    tx.extend_from_slice(&[0; 4]);
    tx
}

/// A header committing to `coinbase` through `branch`.
fn header_for(coinbase: &[u8], branch: &[Hash32], version: i32) -> [u8; 80] {
    let mut header = [0u8; 80];
    header[..4].copy_from_slice(&version.to_le_bytes());
    header[4..36].copy_from_slice(&[0x11; 32]);
    header[36..68].copy_from_slice(&merkle::root_from_branch(&sha256d(coinbase), branch));
    header[68..72].copy_from_slice(&1_700_000_000u32.to_le_bytes());
    header[72..76].copy_from_slice(&REGTEST_BITS.to_le_bytes());
    header
}

const BIP9_VERSION: i32 = 0x2000_0000;

fn test_branch() -> Vec<Hash32> {
    (1..=3u8).map(|n| [n; 32]).collect()
}

/// NMC (1), SYS (16) and ELA (1224): a 16-leaf tree.
fn three_chains() -> (AuxTree, AuxHash) {
    let nmc = aux_hash(&"a1".repeat(32));
    let chains = [
        (ChainId::NAMECOIN, nmc),
        (ChainId::SYSCOIN, aux_hash(&"b2".repeat(32))),
        (ChainId::ELASTOS, aux_hash(&"c3".repeat(32))),
    ];
    (AuxTree::build(&chains).expect("distinct"), nmc)
}

/// Height push, `before`, the commitment, `after`.
fn script_around(commitment: &[u8], before: &[u8], after: &[u8]) -> Vec<u8> {
    [&[3, 0x10, 0x27, 0x00][..], before, commitment, after].concat()
}

fn auxpow_with_script(script: &[u8], tree: &AuxTree, chain: ChainId) -> AuxPow {
    let coinbase = coinbase_with_script(script);
    let branch = test_branch();
    let header = header_for(&coinbase, &branch, BIP9_VERSION);
    AuxPow::from_share(coinbase, &branch, header, tree, chain).expect("chain in tree")
}

/// The module and the independent verifier, on the encoded bytes.
fn both(auxpow: &AuxPow, hash: AuxHash, chain: ChainId) -> Result<(), AuxPowError> {
    let module = auxpow.verify(hash, chain, true);
    let independent = independent::check(&auxpow.encode(), &hash.to_string(), chain.0, true);
    assert_eq!(
        module.is_ok(),
        independent.is_ok(),
        "module {module:?}, independent {independent:?}"
    );
    module
}

#[test]
fn the_baseline_for_the_failures_is_valid() {
    let (tree, nmc) = three_chains();
    let auxpow = auxpow_with_script(
        &script_around(&tree.commitment(), b"", b"/q/"),
        &tree,
        ChainId::NAMECOIN,
    );
    assert_eq!(auxpow.chain_branch.len(), 4);
    assert_eq!(both(&auxpow, nmc, ChainId::NAMECOIN), Ok(()));
    assert_eq!(AuxPow::decode(&auxpow.encode()), Ok(auxpow));
}

#[test]
fn fail_chain_merkle_branch_too_long() {
    let hash = aux_hash(&"a1".repeat(32));
    let tree = AuxTree::build(&[(ChainId(1), hash)]).expect("one chain");
    let mut auxpow = auxpow_with_script(
        &script_around(&tree.commitment(), b"", b""),
        &tree,
        ChainId(1),
    );
    auxpow.chain_branch = vec![[0; 32]; 31];
    assert_eq!(
        auxpow.verify(hash, ChainId(1), true),
        Err(AuxPowError::ChainBranchTooLong { len: 31 })
    );
    assert!(independent::check(&auxpow.encode(), &hash.to_string(), 1, true).is_err());
    // Decode refuses it before reading the hashes.
    assert_eq!(
        AuxPow::decode(&auxpow.encode()),
        Err(AuxPowError::ChainBranchTooLong { len: 31 })
    );
    // 30 is the limit, not an error of its own (it fails later, on the size).
    auxpow.chain_branch.truncate(30);
    assert!(!matches!(
        auxpow.verify(hash, ChainId(1), true),
        Err(AuxPowError::ChainBranchTooLong { .. })
    ));
}

#[test]
fn fail_parent_has_our_chain_id_when_strict() {
    let (tree, nmc) = three_chains();
    let script = script_around(&tree.commitment(), b"", b"");
    let coinbase = coinbase_with_script(&script);
    // A parent version whose high half is 1: Namecoin's id.
    let header = header_for(&coinbase, &[], 0x0001_0004);
    let auxpow = AuxPow::from_share(coinbase, &[], header, &tree, ChainId::NAMECOIN).expect("in");
    assert_eq!(
        auxpow.verify(nmc, ChainId::NAMECOIN, true),
        Err(AuxPowError::ParentHasOurChainId(ChainId::NAMECOIN))
    );
    assert!(independent::check(&auxpow.encode(), &nmc.to_string(), 1, true).is_err());
    assert_eq!(
        auxpow.verify(nmc, ChainId::NAMECOIN, false),
        Ok(()),
        "testnet"
    );
    assert_eq!(
        independent::check(&auxpow.encode(), &nmc.to_string(), 1, false),
        Ok(())
    );
}

#[test]
fn fail_wrong_chain_index() {
    let (tree, nmc) = three_chains();
    let script = script_around(&tree.commitment(), b"", b"");
    let mut auxpow = auxpow_with_script(&script, &tree, ChainId::NAMECOIN);
    // SYS's proof presented for NMC: NMC's hash is not at SYS's slot.
    let sys = tree.aux_hash(ChainId::SYSCOIN).expect("sys");
    let sys_proof = auxpow_with_script(&script, &tree, ChainId::SYSCOIN);
    assert_eq!(both(&sys_proof, sys, ChainId::SYSCOIN), Ok(()));
    assert_eq!(
        both(&sys_proof, sys, ChainId::NAMECOIN),
        Err(AuxPowError::WrongChainIndex {
            index: 14,
            expected: 11
        })
    );
    // An index with the same low bits folds to the same root but is still the wrong slot.
    auxpow.chain_index += 16;
    assert_eq!(
        both(&auxpow, nmc, ChainId::NAMECOIN),
        Err(AuxPowError::WrongChainIndex {
            index: 27,
            expected: 11
        })
    );
    auxpow.chain_index = -5;
    assert!(both(&auxpow, nmc, ChainId::NAMECOIN).is_err());
}

#[test]
fn fail_chain_root_missing() {
    let (tree, nmc) = three_chains();
    let auxpow = auxpow_with_script(
        &script_around(&tree.commitment(), b"", b""),
        &tree,
        ChainId::NAMECOIN,
    );
    assert_eq!(both(&auxpow, nmc, ChainId::NAMECOIN), Ok(()));
    // Pitfall 1: a newer aux hash than the one the job committed.
    let newer = aux_hash(&"a2".repeat(32));
    assert_eq!(
        both(&auxpow, newer, ChainId::NAMECOIN),
        Err(AuxPowError::ChainRootMissing)
    );
    // Pitfall 2: the one-chain root written in internal order.
    let single = AuxTree::build(&[(ChainId(1), V1_HASH_FOR_ORDER)]).expect("one");
    let mut reversed = single.commitment();
    reversed[4..36].reverse();
    let auxpow = auxpow_with_script(&script_around(&reversed, b"", b""), &single, ChainId(1));
    assert_eq!(
        both(&auxpow, V1_HASH_FOR_ORDER, ChainId(1)),
        Err(AuxPowError::ChainRootMissing)
    );
}

const V1_HASH_FOR_ORDER: AuxHash = AuxHash::from_internal([
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    26, 27, 28, 29, 30, 31,
]);

#[test]
fn fail_multiple_merged_mining_headers() {
    let (tree, nmc) = three_chains();
    let commitment = tree.commitment();
    // A second magic after (an extranonce2 that happens to contain it) or before.
    for (before, after) in [
        (&b""[..], &MERGED_MINING_MAGIC[..]),
        (&MERGED_MINING_MAGIC[..], &b""[..]),
    ] {
        let auxpow = auxpow_with_script(
            &script_around(&commitment, before, after),
            &tree,
            ChainId::NAMECOIN,
        );
        assert_eq!(
            both(&auxpow, nmc, ChainId::NAMECOIN),
            Err(AuxPowError::MultipleMergedMiningHeaders)
        );
    }
}

#[test]
fn fail_root_not_just_after_the_magic() {
    let (tree, nmc) = three_chains();
    let commitment = tree.commitment();
    let script = script_around(
        &[&MERGED_MINING_MAGIC[..], &[0x00], &commitment[4..]].concat(),
        b"",
        b"",
    );
    let auxpow = auxpow_with_script(&script, &tree, ChainId::NAMECOIN);
    assert_eq!(
        both(&auxpow, nmc, ChainId::NAMECOIN),
        Err(AuxPowError::HeaderNotJustBeforeRoot)
    );
    // The root's first occurrence counts: a copy before the magic breaks an otherwise good one.
    let script = script_around(&commitment, &commitment[4..36], b"");
    let auxpow = auxpow_with_script(&script, &tree, ChainId::NAMECOIN);
    assert_eq!(
        both(&auxpow, nmc, ChainId::NAMECOIN),
        Err(AuxPowError::HeaderNotJustBeforeRoot)
    );
}

#[test]
fn legacy_root_without_magic_must_start_by_byte_20() {
    let (tree, nmc) = three_chains();
    let bare = &tree.commitment()[4..];
    // The height push is 4 bytes: 16 more puts the root at offset 20, 17 at 21.
    let ok = auxpow_with_script(
        &script_around(bare, &[0x42; 16], b""),
        &tree,
        ChainId::NAMECOIN,
    );
    assert_eq!(
        both(&ok, nmc, ChainId::NAMECOIN),
        Ok(()),
        "libdohj#15: block 19414"
    );
    let late = auxpow_with_script(
        &script_around(bare, &[0x42; 17], b""),
        &tree,
        ChainId::NAMECOIN,
    );
    assert_eq!(
        both(&late, nmc, ChainId::NAMECOIN),
        Err(AuxPowError::LegacyRootTooLate { offset: 21 })
    );
}

#[test]
fn fail_missing_size_and_nonce() {
    let (tree, nmc) = three_chains();
    let commitment = tree.commitment();
    for cut in 0..8 {
        let script = script_around(&commitment[..36 + cut], b"", b"");
        let auxpow = auxpow_with_script(&script, &tree, ChainId::NAMECOIN);
        assert_eq!(
            both(&auxpow, nmc, ChainId::NAMECOIN),
            Err(AuxPowError::MissingSizeAndNonce),
            "{cut} bytes"
        );
    }
}

#[test]
fn fail_tree_size_mismatch() {
    let (tree, nmc) = three_chains();
    let mut commitment = tree.commitment();
    commitment[36..40].copy_from_slice(&8u32.to_le_bytes());
    let auxpow = auxpow_with_script(
        &script_around(&commitment, b"", b""),
        &tree,
        ChainId::NAMECOIN,
    );
    assert_eq!(
        both(&auxpow, nmc, ChainId::NAMECOIN),
        Err(AuxPowError::TreeSizeMismatch {
            size: 8,
            branch_len: 4
        })
    );
}

#[test]
fn fail_parent_with_the_auxpow_version_bit() {
    let (tree, nmc) = three_chains();
    let coinbase = coinbase_with_script(&script_around(&tree.commitment(), b"", b""));
    let version = BIP9_VERSION | 0x100;
    let header = header_for(&coinbase, &[], version);
    let auxpow = AuxPow::from_share(coinbase, &[], header, &tree, ChainId::NAMECOIN).expect("in");
    assert_eq!(
        both(&auxpow, nmc, ChainId::NAMECOIN),
        Err(AuxPowError::ParentHasAuxPowVersion { version })
    );
    assert!(
        auxpow.verify(nmc, ChainId::NAMECOIN, false).is_err(),
        "strict or not"
    );
}

#[test]
fn fail_coinbase_branch_that_misses_the_parent_merkle_root() {
    let (tree, nmc) = three_chains();
    let mut auxpow = auxpow_with_script(
        &script_around(&tree.commitment(), b"", b""),
        &tree,
        ChainId::NAMECOIN,
    );
    auxpow.merkle_branch[1][0] ^= 1;
    assert_eq!(
        both(&auxpow, nmc, ChainId::NAMECOIN),
        Err(AuxPowError::CoinbaseNotInParentMerkleRoot)
    );
    auxpow.merkle_branch.pop();
    assert_eq!(
        both(&auxpow, nmc, ChainId::NAMECOIN),
        Err(AuxPowError::CoinbaseNotInParentMerkleRoot)
    );
}

#[test]
fn fail_coinbase_without_inputs_does_not_panic() {
    use bitcoin::hashes::Hash as _;
    // dingocoin#34: a coinbase with an empty vin, in the witness form (marker 0, flag 1) that
    // rust-bitcoin reads as zero inputs and one output.
    let coinbase = [
        &[2, 0, 0, 0, 0x00, 0x01, 0, 1][..],
        &0u64.to_le_bytes(),
        &[1, 0x51],
        &[0; 4],
    ]
    .concat();
    let tx: bitcoin::Transaction = bitcoin::consensus::deserialize(&coinbase).expect("decodes");
    assert!(tx.input.is_empty());
    let mut header = header_for(&coinbase, &[], BIP9_VERSION);
    // The txid is over the non-witness form, so the header commits to that.
    header[36..68].copy_from_slice(&tx.compute_txid().to_byte_array());
    let auxpow = AuxPow {
        coinbase_tx: coinbase,
        parent_hash: [0; 32],
        merkle_branch: vec![],
        index: 0,
        chain_branch: vec![],
        chain_index: 0,
        parent_header: header,
    };
    assert_eq!(
        auxpow.verify(aux_hash(&"a1".repeat(32)), ChainId(1), true),
        Err(AuxPowError::CoinbaseNoInputs)
    );
    assert_eq!(AuxPow::decode(&auxpow.encode()), Ok(auxpow));
}

#[test]
fn decode_refuses_malformed_bytes() {
    let bytes = unhex(V1_AUXPOW);
    for len in 0..bytes.len() {
        assert!(AuxPow::decode(&bytes[..len]).is_err(), "prefix of {len}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(AuxPow::decode(&long), Err(AuxPowError::TrailingBytes(1)));

    // After the coinbase and hashBlock: the merkle branch count.
    let coinbase_len = AuxPow::decode(&bytes).expect("V1").coinbase_tx.len();
    assert_eq!(coinbase_len, 95);
    let count_at = coinbase_len + 32;
    assert_eq!(bytes[count_at], 0);
    let mut huge = bytes[..count_at].to_vec();
    huge.extend_from_slice(&[0xff; 9]);
    assert_eq!(
        AuxPow::decode(&huge),
        Err(AuxPowError::MerkleBranchTooLong { len: u64::MAX })
    );
    let mut over = bytes.clone();
    over[count_at] = 33;
    assert_eq!(
        AuxPow::decode(&over),
        Err(AuxPowError::MerkleBranchTooLong { len: 33 })
    );
    let mut non_canonical = bytes[..count_at].to_vec();
    non_canonical.extend_from_slice(&[0xfd, 0, 0]);
    non_canonical.extend_from_slice(&bytes[count_at + 1..]);
    assert_eq!(
        AuxPow::decode(&non_canonical),
        Err(AuxPowError::NonCanonicalCompactSize {
            field: "vMerkleBranch"
        })
    );
    assert!(matches!(
        AuxPow::decode(&[0xff; 8]),
        Err(AuxPowError::CoinbaseUndecodable(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// End to end: a pool job carrying an aux commitment and an RSK tag.

fn load_mixed_template() -> (WorkTemplate, Vec<u8>) {
    let dir = std::env::var_os("QUARRY_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/bitcoin-core")
        });
    let text = std::fs::read_to_string(dir.join("core-forty.json")).expect("vector exists");
    let vector: serde_json::Value = serde_json::from_str(&text).expect("json");
    let gbt: GetBlockTemplate =
        serde_json::from_value(vector["getblocktemplate"].clone()).expect("template");
    let payout = unhex(vector["payout_script_pubkey"].as_str().expect("payout"));
    (WorkTemplate::from_gbt(&gbt, 1).expect("template"), payout)
}

#[test]
fn a_share_of_a_job_with_both_commitments_proves_both() {
    let (template, payout) = load_mixed_template();
    let template = Arc::new(template);
    let nmc = aux_hash(&"5a".repeat(32));
    let ela = aux_hash(&"e1".repeat(32));
    let tree = AuxTree::build(&[(ChainId::NAMECOIN, nmc), (ChainId::ELASTOS, ela)]).expect("tree");
    let rsk = RskWork::from_get_work(&json!({
        "blockHashForMergedMining": format!("0x{}", "3c".repeat(32)),
        "target": format!("0x{}", "ff".repeat(32)),
        "feesPaidToMiner": "1000",
        "notify": true,
        "parentBlockHash": format!("0x{}", "00".repeat(32)),
    }))
    .expect("rsk work");
    let spec = CoinbaseSpec {
        layout: CoinbaseLayout {
            extranonce1_len: 4,
            extranonce2_len: 8,
            tag: b"/quarry/".to_vec(),
        },
        payouts: Payouts {
            remainder_script: payout,
            fixed: vec![],
        },
        commitments: vec![tree.commitment().to_vec()],
        extra_outputs: vec![rsk.tag_output()],
    };
    let job = Job::from_spec(Arc::clone(&template), &spec).expect("coinbase fits");
    let (en1, en2) = ([1, 2, 3, 4], [9; 8]);
    let submission = Submission {
        extranonce1: &en1,
        extranonce2: &en2,
        version: template.version,
        ntime: template.curtime,
        nonce: 42,
    };
    let rules = ShareRules {
        target: Target::MAX,
        version_mask: 0,
        extranonce2_len: 8,
        now_unix: u64::from(template.curtime),
    };
    let share = validate_share(&job, &submission, &rules).expect("any hash meets MAX");
    let mut coinbase = Vec::new();
    job.coinbase
        .write_without_witness(&en1, &en2, &mut coinbase);

    for (chain, hash) in [(ChainId::NAMECOIN, nmc), (ChainId::ELASTOS, ela)] {
        let auxpow = AuxPow::from_share(
            coinbase.clone(),
            &template.merkle_branch,
            *share.header(),
            &tree,
            chain,
        )
        .expect("chain in tree");
        assert_eq!(both(&auxpow, hash, chain), Ok(()), "{chain}");
        assert_eq!(auxpow.parent_block_hash(), *share.hash());
    }

    assert_eq!(rsk.check_coinbase(&coinbase), Ok(()));
    let params = partial_merkle_params(
        share.header(),
        &coinbase,
        &template.merkle_branch,
        template.tx_count + 1,
    );
    assert_eq!(params[0], to_display_hex(share.hash()));
    let hashes: Vec<Hash32> = params[3].split(' ').map(hash32).collect();
    assert_eq!(
        merkle::root_from_branch(&hashes[0], &hashes[1..])[..],
        share.header()[36..68],
        "rskj's fold reproduces the header's merkle root"
    );
    assert_eq!(params[4], format!("{:x}", template.tx_count + 1));
    let mut target_be = rsk.target.to_le_bytes();
    target_be.reverse();
    assert_eq!(
        independent::check_rsk(&params, &rsk.block_hash, &target_be),
        Ok(())
    );
}

// ---------------------------------------------------------------------------------------------
// Properties.

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Chain ids: small ones collide often mod small sizes; any u32 exercises the wrap-around.
fn chain_ids() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::btree_set(prop_oneof![0u32..64, any::<u32>()], 1..=8)
        .prop_map(|ids| ids.into_iter().collect())
}

/// Pool bytes around the commitment, free of the magic.
fn script_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max).prop_filter("no magic", |bytes| {
        find(bytes, &MERGED_MINING_MAGIC).is_none()
    })
}

struct Built {
    tree: AuxTree,
    chains: Vec<(ChainId, AuxHash)>,
    proofs: Vec<AuxPow>,
}

fn build_all(
    ids: &[u32],
    hashes: &[[u8; 32]],
    before: &[u8],
    after: &[u8],
    branch: &[Hash32],
    version_bits: u32,
) -> Option<Built> {
    let chains: Vec<(ChainId, AuxHash)> = ids
        .iter()
        .zip(hashes)
        .map(|(&id, &hash)| (ChainId(id), AuxHash::from_internal(hash)))
        .collect();
    let tree = AuxTree::build(&chains).ok()?;
    let commitment = tree.commitment();
    let script = [before, &commitment[..], after].concat();
    let coinbase = coinbase_with_script(&script);
    // BIP320 rolls bits 13–28; bit 8 never.
    let version = BIP9_VERSION | (version_bits & 0x1fff_e000) as i32;
    let header = header_for(&coinbase, branch, version);
    let proofs = chains
        .iter()
        .map(|(chain, _)| {
            AuxPow::from_share(coinbase.clone(), branch, header, &tree, *chain).expect("in tree")
        })
        .collect();
    Some(Built {
        tree,
        chains,
        proofs,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn prop_every_chain_of_a_random_tree_verifies(
        ids in chain_ids(),
        hashes in prop::collection::vec(any::<[u8; 32]>(), 8),
        before in script_bytes(20),
        after in script_bytes(24),
        branch in prop::collection::vec(any::<[u8; 32]>(), 0..12),
        version_bits in any::<u32>(),
    ) {
        let Some(built) = build_all(&ids, &hashes, &before, &after, &branch, version_bits) else {
            // Only ids equal mod 2^30 can fail to build.
            let collide = ids.iter().enumerate().any(|(i, a)| {
                ids[i + 1..].iter().any(|b| (a ^ b) & ((1 << 30) - 1) == 0)
            });
            prop_assert!(collide, "{ids:?}");
            return Ok(());
        };
        let tree = &built.tree;
        // The smallest size: half of it would put two chains in one slot.
        let height = tree.height();
        let mut slots: Vec<u32> = ids.iter().map(|&id| expected_index(0, id, height)).collect();
        slots.sort_unstable();
        slots.dedup();
        prop_assert_eq!(slots.len(), ids.len());
        if height > 0 {
            let mut half: Vec<u32> = ids.iter().map(|&id| id % (1 << (height - 1))).collect();
            half.sort_unstable();
            half.dedup();
            prop_assert!(half.len() < ids.len(), "size {} is not minimal", tree.size());
        }
        for ((chain, hash), auxpow) in built.chains.iter().zip(&built.proofs) {
            prop_assert_eq!(tree.slot(*chain), Some(expected_index(0, chain.0, height)));
            prop_assert_eq!(auxpow.verify(*hash, *chain, true), Ok(()));
            let bytes = auxpow.encode();
            prop_assert_eq!(independent::check(&bytes, &hash.to_string(), chain.0, true), Ok(()));
            prop_assert_eq!(&AuxPow::decode(&bytes).expect("decodes"), auxpow);
            // Every other chain's hash is refused with this chain's proof.
            for (other, other_hash) in &built.chains {
                if other != chain {
                    prop_assert!(auxpow.verify(*other_hash, *other, true).is_err());
                    prop_assert!(independent::check(&bytes, &other_hash.to_string(), other.0, true).is_err());
                }
            }
        }
    }

    #[test]
    fn prop_verifiers_agree_on_mutated_proofs(
        ids in chain_ids(),
        hashes in prop::collection::vec(any::<[u8; 32]>(), 8),
        before in script_bytes(20),
        branch in prop::collection::vec(any::<[u8; 32]>(), 0..6),
        pick in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let Some(built) = build_all(&ids, &hashes, &before, b"", &branch, 0) else {
            return Ok(());
        };
        let which = pick.index(built.proofs.len());
        let (chain, hash) = built.chains[which];
        let mut bytes = built.proofs[which].encode();
        let at = at.index(bytes.len());
        bytes[at] ^= flip;
        let module = AuxPow::decode(&bytes).and_then(|a| a.verify(hash, chain, true));
        let independent = independent::check(&bytes, &hash.to_string(), chain.0, true);
        prop_assert_eq!(
            module.is_ok(),
            independent.is_ok(),
            "byte {} ^ {:#04x}: module {:?}, independent {:?}", at, flip, module, independent
        );
    }

    #[test]
    fn prop_verifiers_agree_on_script_layouts(
        ids in chain_ids(),
        hashes in prop::collection::vec(any::<[u8; 32]>(), 8),
        prefix in script_bytes(24),
        magic_before in prop::bool::weighted(0.75),
        junk in prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(any::<u8>(), 1..3)],
        tail_len in prop_oneof![3 => Just(8usize), 1 => 0usize..8],
        size_delta in prop_oneof![3 => Just(0u32), 1 => any::<u32>()],
        extra_magic in prop::bool::weighted(0.25),
        suffix in script_bytes(8),
    ) {
        let chains: Vec<(ChainId, AuxHash)> = ids
            .iter()
            .zip(&hashes)
            .map(|(&id, &hash)| (ChainId(id), AuxHash::from_internal(hash)))
            .collect();
        let Ok(tree) = AuxTree::build(&chains) else { return Ok(()); };
        let commitment = tree.commitment();
        let mut size_nonce = commitment[36..].to_vec();
        let size = tree.size().wrapping_add(size_delta);
        size_nonce[..4].copy_from_slice(&size.to_le_bytes());
        let mut script = prefix;
        if magic_before {
            script.extend_from_slice(&MERGED_MINING_MAGIC);
        }
        script.extend_from_slice(&junk);
        script.extend_from_slice(&commitment[4..36]);
        script.extend_from_slice(&size_nonce[..tail_len]);
        if extra_magic {
            script.extend_from_slice(&MERGED_MINING_MAGIC);
        }
        script.extend_from_slice(&suffix);
        let coinbase = coinbase_with_script(&script);
        let header = header_for(&coinbase, &[], BIP9_VERSION);
        for (chain, hash) in &chains {
            let auxpow = AuxPow::from_share(coinbase.clone(), &[], header, &tree, *chain)
                .expect("in tree");
            let module = auxpow.verify(*hash, *chain, true);
            let independent = independent::check(&auxpow.encode(), &hash.to_string(), chain.0, true);
            prop_assert_eq!(
                module.is_ok(),
                independent.is_ok(),
                "script {}: module {:?}, independent {:?}",
                hex::encode(&script), module, independent
            );
        }
    }
}
