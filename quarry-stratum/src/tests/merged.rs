//! Merged mining through the sessions: jobs carry the aux commitment and the RSK tag, share
//! targets never exceed the easiest aux target, and a share that solves an aux block yields a
//! proof its chain accepts, over V1 and SV2 alike. Every proof is checked twice: by the
//! builder's own verifiers and by a second one written from the merged-mining note alone
//! (quarry-work's `tests/independent`, shared with its vectors).

use proptest::prelude::*;
use quarry_work::auxpow::{meets_target, AuxHash, AuxPow, ChainId};
use quarry_work::merged::{AuxBlock, AuxSolution, MergedWork, RskBlock};
use quarry_work::rsk::{check_coinbase, RskWork};
use quarry_work::Target;
use serde_json::json;

use super::sv2::{client_events, connected_to, events, pump, solve};
use super::*;
use crate::v2::client::ClientEvent;

// Not every checker is used here (the slot formula is the vectors').
#[allow(dead_code)]
#[path = "../../../quarry-work/tests/independent/mod.rs"]
mod independent;

/// A V1 miner subscribed and authorized on `first`, its extranonce1 noted for hashing.
fn mining_on(first: &Arc<WorkTemplate>) -> Miner {
    let mut miner = Miner::new(config());
    miner.template(Arc::clone(first));
    let subscribed = miner.call("mining.subscribe", json!([]));
    miner.extranonce1 =
        hex::decode(subscribed["result"][1].as_str().expect("extranonce1")).expect("hex");
    let authorized = miner.call("mining.authorize", json!([format!("{ADDRESS}.rig1"), "x"]));
    assert_eq!(authorized["result"], true, "{authorized}");
    miner
}

/// Checks each solution as its chain's node would, with the builder's verifiers and with the
/// independent one; returns the chains solved.
fn check(solutions: &[AuxSolution], template: &WorkTemplate) -> Vec<String> {
    let merged = template.merged.as_ref().expect("merged work");
    solutions
        .iter()
        .map(|solution| {
            match solution {
                AuxSolution::AuxPow { block, auxpow } => {
                    let proof = AuxPow::decode(auxpow).expect("decodes");
                    proof
                        .verify(block.hash, block.chain_id, true)
                        .expect("Namecoin Core's checks pass");
                    assert_eq!(
                        independent::check(auxpow, &block.hash.to_string(), block.chain_id.0, true),
                        Ok(()),
                        "the note's checks pass for {} ({})",
                        block.chain,
                        block.chain_id
                    );
                    assert!(meets_target(&proof.parent_block_hash(), block.bits));
                    assert!(merged.aux.contains(block), "a block the job committed");
                }
                AuxSolution::Rsk {
                    chain,
                    block_hash,
                    params,
                    fees_paid,
                } => {
                    let rsk = merged.rsk.as_ref().expect("the job has rsk work");
                    assert_eq!(
                        fees_paid, &rsk.work.fees_paid,
                        "the work's fees are reported"
                    );
                    assert_eq!((chain, block_hash), (&rsk.chain, &rsk.work.block_hash));
                    let mut target_be = rsk.work.target.to_le_bytes();
                    target_be.reverse();
                    assert_eq!(
                        independent::check_rsk(params, block_hash, &target_be),
                        Ok(()),
                        "the note's rskj checks pass"
                    );
                    let coinbase = hex::decode(&params[2]).expect("hex");
                    check_coinbase(&coinbase, block_hash).expect("rskj finds its tag");
                    let header = hex::decode(&params[1]).expect("hex");
                    // The coinbase txid and the branch fold to the header's merkle root.
                    let hashes: Vec<[u8; 32]> = params[3]
                        .split(' ')
                        .map(|h| hex::decode(h).expect("hex").try_into().expect("32 bytes"))
                        .collect();
                    let root = quarry_work::merkle::root_from_branch(&hashes[0], &hashes[1..]);
                    assert_eq!(&header[36..68], &root[..]);
                }
            }
            solution.chain().to_string()
        })
        .collect()
}

fn solutions(events: Vec<Event>) -> Vec<AuxSolution> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::AuxFound(found) => Some(found.solution.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn v1_shares_solve_aux_blocks_with_proofs_their_chains_accept() {
    let first = merged_template(1, 7, HARD_BITS, &[EASY_AUX, HARD_AUX], true);
    let mut miner = mining_on(&first);
    // The share target is no harder than the easiest aux target (regtest, here), or aux blocks
    // would be refused as low-difficulty shares.
    let easy = Target::from_compact(REGTEST_BITS).difficulty();
    assert!(
        miner.difficulty <= easy * 1.000_001,
        "{} > {easy}",
        miner.difficulty
    );

    // A share at the share target meets the regtest aux targets too.
    let job = miner.last_job();
    let (en2, nonce) = miner.find(&job, job.version, job.ntime, true);
    let answer = miner.submit(&job, &en2, job.ntime, nonce, None);
    assert_eq!(answer["result"], true, "{answer}");
    let mut solved = check(&solutions(miner.events()), &first);
    solved.sort();
    assert_eq!(
        solved,
        ["namecoin", "rsk"],
        "the easy chains, not the hard one"
    );
}

#[test]
fn a_duplicate_share_proves_nothing_twice() {
    let first = merged_template(1, 7, HARD_BITS, &[EASY_AUX], false);
    let mut miner = mining_on(&first);
    let job = miner.last_job();
    let aux = Target::from_compact(REGTEST_BITS);
    let en2 = [0u8, 0, 0, 0, 0, 0, 0, 9];
    let nonce = (0u32..)
        .find(|n| aux.is_met_by(&job.hash(&miner.extranonce1, &en2, job.version, job.ntime, *n)))
        .expect("a nonce");
    assert_eq!(
        miner.submit(&job, &en2, job.ntime, nonce, None)["result"],
        true
    );
    assert_eq!(check(&solutions(miner.events()), &first), ["namecoin"]);
    assert_eq!(
        code(&miner.submit(&job, &en2, job.ntime, nonce, None)),
        Some(22)
    );
    assert!(solutions(miner.events()).is_empty());
}

#[test]
fn sv2_standard_channel_shares_solve_aux_blocks_too() {
    let first = merged_template(1, 7, HARD_BITS, &[EASY_AUX, HARD_AUX], true);
    let (mut client, mut session, pool, work, target) = connected_to(Arc::clone(&first));
    let easy = Target::from_compact(REGTEST_BITS);
    assert!(target.difficulty() <= easy.difficulty() * 1.000_001);
    let _ = events(&mut session);
    let (nonce, _) = solve(&work, &easy, work.version);
    client.submit(work.job_id, nonce, work.ntime, work.version);
    pump(&mut client, &mut session, &pool);
    assert!(matches!(
        client_events(&mut client)[..],
        [ClientEvent::Accepted { .. }]
    ));
    let mut solved = check(&solutions(events(&mut session)), &first);
    solved.sort();
    assert_eq!(solved, ["namecoin", "rsk"]);
}

/// Chain ids for the sessions' property: 2 to 8 distinct ones, in any order, many of them equal
/// modulo small powers of two (dense small ids, and ids sharing their low three bits, such as
/// SYS 16 and ELA 1224), so that trees grow past the smallest size. None is in 0x2000..0x4000,
/// the high half of the parent's BIP9 version, which strict chains refuse (§1), and no two are
/// equal modulo 2^30, the deepest tree.
fn session_chain_ids() -> impl Strategy<Value = Vec<u32>> {
    let id = prop_oneof![
        3 => 1u32..=32,
        3 => (0u32..4, 1u32..1024).prop_map(|(low, k)| low + 8 * k),
        2 => 1u32..0x2000,
        1 => any::<u32>().prop_filter("not the parent's version", |id| {
            *id != 0 && !(0x2000..0x4000).contains(id)
        }),
    ];
    prop::collection::btree_set(id, 2..=8)
        .prop_filter("distinct modulo 2^30", |ids| {
            let mut low: Vec<u32> = ids.iter().map(|id| id & ((1 << 30) - 1)).collect();
            low.sort_unstable();
            low.dedup();
            low.len() == ids.len()
        })
        .prop_map(|ids| ids.into_iter().collect::<Vec<_>>())
        .prop_shuffle()
}

/// A template merge-mining `ids` with `hashes` (internal order), and RSK when `rsk` has its
/// block hash; every target is regtest's, so a share at it proves every chain.
fn random_merged_template(
    ids: &[u32],
    hashes: &[[u8; 32]],
    heights: &[u64],
    rsk: Option<[u8; 32]>,
) -> Arc<WorkTemplate> {
    let blocks: Vec<AuxBlock> = ids
        .iter()
        .zip(hashes)
        .zip(heights)
        .map(|((&id, &hash), &height)| AuxBlock {
            chain: format!("chain{id}"),
            chain_id: ChainId(id),
            hash: AuxHash::from_internal(hash),
            bits: REGTEST_BITS,
            height,
            reward: 1,
        })
        .collect();
    let rsk = rsk.map(|block_hash| RskBlock {
        chain: "rsk".into(),
        work: RskWork {
            block_hash,
            target: Target::from_compact(REGTEST_BITS),
            fees_paid: "0".into(),
            notify: true,
            parent_hash: [0; 32],
        },
    });
    let mut template = (*template(1, 7, HARD_BITS)).clone();
    template.merged = Some(Arc::new(
        MergedWork::new(blocks, rsk).expect("distinct chain ids"),
    ));
    Arc::new(template)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random jobs merge-mining 2 to 8 AuxPoW chains (random distinct chain ids, random aux
    /// hashes) and RSK or not: a V1 share and an SV2 share each prove every chain, and every
    /// proof passes both the builder's checks and the independent verifier's.
    #[test]
    fn random_trees_of_two_to_eight_chains_are_proved_over_v1_and_sv2(
        ids in session_chain_ids(),
        hashes in prop::collection::vec(any::<[u8; 32]>(), 8),
        heights in prop::collection::vec(1u64..1_000_000, 8),
        rsk in prop::option::of(any::<[u8; 32]>()),
        en2 in any::<[u8; 8]>().prop_filter("no merged-mining magic", |en2| {
            !en2.windows(4).any(|w| w == quarry_work::auxpow::MERGED_MINING_MAGIC)
        }),
    ) {
        let first = random_merged_template(&ids, &hashes, &heights, rsk);
        let mut expected: Vec<String> = ids.iter().map(|id| format!("chain{id}")).collect();
        if rsk.is_some() {
            expected.push("rsk".into());
        }
        expected.sort();
        let aux = Target::from_compact(REGTEST_BITS);

        // V1.
        let mut miner = mining_on(&first);
        let job = miner.last_job();
        let nonce = (0u32..)
            .find(|n| {
                aux.is_met_by(&job.hash(&miner.extranonce1, &en2, job.version, job.ntime, *n))
            })
            .expect("a nonce");
        let answer = miner.submit(&job, &en2, job.ntime, nonce, None);
        prop_assert_eq!(&answer["result"], true, "{}", answer);
        let mut solved = check(&solutions(miner.events()), &first);
        solved.sort();
        prop_assert_eq!(&solved, &expected, "V1, ids {:?}", ids);

        // SV2, standard channel.
        let (mut client, mut session, pool, work, _) = connected_to(Arc::clone(&first));
        let _ = events(&mut session);
        let (nonce, _) = solve(&work, &aux, work.version);
        client.submit(work.job_id, nonce, work.ntime, work.version);
        pump(&mut client, &mut session, &pool);
        let accepted = client_events(&mut client);
        prop_assert!(
            matches!(accepted[..], [ClientEvent::Accepted { .. }]),
            "{:?}", accepted
        );
        let mut solved = check(&solutions(events(&mut session)), &first);
        solved.sort();
        prop_assert_eq!(&solved, &expected, "SV2, ids {:?}", ids);
    }
}
