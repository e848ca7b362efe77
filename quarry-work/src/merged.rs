//! Merged mining as part of the work: the aux chains' blocks a template commits to, and what a
//! share that meets one of their targets proves.
//!
//! A [`MergedWork`] is attached to a template when it is published, so every job built on that
//! template carries the same aux hashes in its coinbase, and a share is checked against exactly
//! the aux blocks its own job committed (a share on an older job proves an older aux block,
//! which its node still accepts until its tip moves).

use crate::auxpow::{meets_target, AuxHash, AuxPow, AuxTree, AuxTreeError, ChainId};
use crate::coinbase::TxOutput;
use crate::hash::Hash32;
use crate::job::Job;
use crate::rsk::{partial_merkle_params, RskWork};
use crate::target::Target;

/// One AuxPoW chain's block, as `createauxblock` described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuxBlock {
    /// The chain's key in the pool (its `[[aux]] name`).
    pub chain: String,
    /// The chain id its node reported.
    pub chain_id: ChainId,
    /// The block hash to commit to.
    pub hash: AuxHash,
    /// Its compact target.
    pub bits: u32,
    /// Its height.
    pub height: u64,
    /// What its coinbase pays, in the chain's base unit.
    pub reward: u64,
}

/// RSK work, as `mnr_getWork` described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RskBlock {
    /// The chain's key in the pool.
    pub chain: String,
    /// The work unit.
    pub work: RskWork,
}

/// The aux blocks a template commits to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedWork {
    /// AuxPoW chains, in the tree built over them.
    pub aux: Vec<AuxBlock>,
    /// The aux merkle tree over `aux` (`None` without AuxPoW chains).
    pub tree: Option<AuxTree>,
    /// RSK, tagged in the coinbase's last output.
    pub rsk: Option<RskBlock>,
}

/// A share that solved an aux block: what to submit, and to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuxSolution {
    /// `submitauxblock <hash> <auxpow>` to the node that issued `block`.
    AuxPow {
        /// The block solved.
        block: AuxBlock,
        /// The serialized AuxPoW.
        auxpow: Vec<u8>,
    },
    /// `mnr_submitBitcoinBlockPartialMerkle(params)`.
    Rsk {
        /// The chain's key.
        chain: String,
        /// The RSK block hash committed (the tag's 32 bytes).
        block_hash: [u8; 32],
        /// The five RPC arguments.
        params: [String; 5],
        /// `feesPaidToMiner` of the work solved (decimal, 1e-18 RBTC).
        fees_paid: String,
    },
}

impl AuxSolution {
    /// The chain solved.
    pub fn chain(&self) -> &str {
        match self {
            AuxSolution::AuxPow { block, .. } => &block.chain,
            AuxSolution::Rsk { chain, .. } => chain,
        }
    }
}

impl MergedWork {
    /// Work over `aux` and `rsk`.
    ///
    /// # Errors
    /// Two AuxPoW chains with one chain id (they can never share a tree).
    pub fn new(aux: Vec<AuxBlock>, rsk: Option<RskBlock>) -> Result<MergedWork, AuxTreeError> {
        let tree = match aux.is_empty() {
            true => None,
            false => Some(AuxTree::build(
                &aux.iter().map(|b| (b.chain_id, b.hash)).collect::<Vec<_>>(),
            )?),
        };
        Ok(MergedWork { aux, tree, rsk })
    }

    /// Whether there is anything to merge-mine.
    pub fn is_empty(&self) -> bool {
        self.aux.is_empty() && self.rsk.is_none()
    }

    /// The scriptSig commitments the coinbase carries (the aux tree's `fabe6d6d` record).
    pub fn commitments(&self) -> Vec<Vec<u8>> {
        self.tree
            .iter()
            .map(|tree| tree.commitment().to_vec())
            .collect()
    }

    /// The outputs the coinbase carries after the payouts (RSK's tag).
    pub fn extra_outputs(&self) -> Vec<TxOutput> {
        self.rsk.iter().map(|r| r.work.tag_output()).collect()
    }

    /// The easiest aux target: a share target harder than it would lose aux blocks, so the
    /// session's share target never goes above it.
    pub fn easiest_target(&self) -> Option<Target> {
        let aux = self
            .aux
            .iter()
            .filter_map(|b| Target::from_compact_checked(b.bits));
        let rsk = self.rsk.iter().map(|r| r.work.target);
        aux.chain(rsk).reduce(Target::max)
    }

    /// The aux blocks a share of `job` solves, with their proofs. `header` is the share's
    /// header and `hash` its SHA256d.
    pub fn solutions(
        &self,
        job: &Job,
        extranonce1: &[u8],
        extranonce2: &[u8],
        header: &[u8; 80],
        hash: &Hash32,
    ) -> Vec<AuxSolution> {
        let mut found = Vec::new();
        let solved_aux: Vec<&AuxBlock> = self
            .aux
            .iter()
            .filter(|b| meets_target(hash, b.bits))
            .collect();
        let solved_rsk = self.rsk.as_ref().filter(|r| r.work.is_solved_by(hash));
        if solved_aux.is_empty() && solved_rsk.is_none() {
            return found;
        }
        let mut coinbase = Vec::new();
        // The txid serialization: what the parent's merkle root commits to.
        job.coinbase
            .write_without_witness(extranonce1, extranonce2, &mut coinbase);
        let branch = &job.template.merkle_branch;
        if let Some(tree) = &self.tree {
            for block in solved_aux {
                if let Some(auxpow) =
                    AuxPow::from_share(coinbase.clone(), branch, *header, tree, block.chain_id)
                {
                    found.push(AuxSolution::AuxPow {
                        block: block.clone(),
                        auxpow: auxpow.encode(),
                    });
                }
            }
        }
        if let Some(rsk) = solved_rsk {
            found.push(AuxSolution::Rsk {
                chain: rsk.chain.clone(),
                block_hash: rsk.work.block_hash,
                params: partial_merkle_params(header, &coinbase, branch, job.template.tx_count + 1),
                fees_paid: rsk.work.fees_paid.clone(),
            });
        }
        found
    }
}
