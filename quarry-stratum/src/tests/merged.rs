//! Merged mining through the sessions: jobs carry the aux commitment and the RSK tag, share
//! targets never exceed the easiest aux target, and a share that solves an aux block yields a
//! proof its chain accepts, over V1 and SV2 alike.

use quarry_work::auxpow::{meets_target, AuxPow};
use quarry_work::merged::AuxSolution;
use quarry_work::rsk::check_coinbase;
use quarry_work::Target;
use serde_json::json;

use super::sv2::{client_events, connected_to, events, pump, solve};
use super::*;
use crate::v2::client::ClientEvent;

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

/// Checks each solution as its chain's node would; returns the chains solved.
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
                    assert!(meets_target(&proof.parent_block_hash(), block.bits));
                    assert!(merged.aux.contains(block), "a block the job committed");
                }
                AuxSolution::Rsk {
                    block_hash, params, ..
                } => {
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

/// Random jobs merge-mining 2 to 8 AuxPoW chains (random distinct chain ids and aux hashes)
/// and sometimes RSK: a V1 share and an SV2 share each prove every chain, and every proof
/// passes the chain's checks.
#[test]
fn random_trees_of_two_to_eight_chains_are_proved_over_v1_and_sv2() {
    use quarry_work::auxpow::{AuxHash, ChainId};
    use quarry_work::merged::{AuxBlock, MergedWork};
    use rand::{Rng, SeedableRng};

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_a0c5);
    for round in 0..12u64 {
        let count = rng.gen_range(2..=8);
        let mut ids: Vec<u32> = Vec::new();
        while ids.len() < count {
            let id = rng.gen_range(1..5000);
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let blocks: Vec<AuxBlock> = ids
            .iter()
            .map(|&id| AuxBlock {
                chain: format!("chain{id}"),
                chain_id: ChainId(id),
                hash: AuxHash::from_internal(rng.gen()),
                bits: REGTEST_BITS,
                height: rng.gen_range(1..1_000_000),
                reward: 1,
            })
            .collect();
        let rsk = round % 3 == 0;
        let mut first = (*merged_template(1, 7, HARD_BITS, &[], rsk)).clone();
        let rsk_block = first.merged.as_ref().and_then(|m| m.rsk.clone());
        first.merged = Some(Arc::new(
            MergedWork::new(blocks.clone(), rsk_block).expect("distinct ids"),
        ));
        let first = Arc::new(first);
        let mut expected: Vec<String> = blocks.iter().map(|b| b.chain.clone()).collect();
        if rsk {
            expected.push("rsk".into());
        }
        expected.sort();

        // V1.
        let mut miner = mining_on(&first);
        let job = miner.last_job();
        let aux = Target::from_compact(REGTEST_BITS);
        let en2 = [0u8, 0, 0, 0, 0, 0, 0, round as u8];
        let nonce = (0u32..)
            .find(|n| {
                aux.is_met_by(&job.hash(&miner.extranonce1, &en2, job.version, job.ntime, *n))
            })
            .expect("a nonce");
        assert_eq!(
            miner.submit(&job, &en2, job.ntime, nonce, None)["result"],
            true
        );
        let mut solved = check(&solutions(miner.events()), &first);
        solved.sort();
        assert_eq!(solved, expected, "round {round}: V1, {count} chains");

        // SV2, standard channel.
        let (mut client, mut session, pool, work, _) = connected_to(Arc::clone(&first));
        let _ = events(&mut session);
        let (nonce, _) = solve(&work, &aux, work.version);
        client.submit(work.job_id, nonce, work.ntime, work.version);
        pump(&mut client, &mut session, &pool);
        let mut solved = check(&solutions(events(&mut session)), &first);
        solved.sort();
        assert_eq!(solved, expected, "round {round}: SV2, {count} chains");
    }
}
