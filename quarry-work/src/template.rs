//! Block templates from a node's `getblocktemplate` (BIP22/23, BIP145 for segwit).
//!
//! [`WorkTemplate::from_gbt`] does every per-template computation once: it decodes each
//! transaction, recomputes txids and wtxids (and refuses a template whose own ids disagree), the
//! coinbase merkle branch and the witness commitment, which must equal the node's
//! `default_witness_commitment` byte for byte: a pool that mines a different commitment mines
//! invalid blocks.

use std::collections::BTreeMap;

use bitcoin::consensus::encode::deserialize_partial;
use bitcoin::hashes::Hash as _;
use serde::Deserialize;

use crate::hash::{from_display_hex, sha256d, Hash32};
use crate::merkle;
use crate::target::Target;

/// The fields of a `getblocktemplate` answer that a pool uses. Unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct GetBlockTemplate {
    /// Block version, with version-bits signalling already set by the node.
    pub version: u32,
    /// Tip the block builds on, display order.
    pub previousblockhash: String,
    /// Transactions to include, in order.
    pub transactions: Vec<GbtTransaction>,
    /// Subsidy plus fees, in satoshis.
    pub coinbasevalue: u64,
    /// Data the node wants in the coinbase scriptSig (hex values), usually empty.
    #[serde(default)]
    pub coinbaseaux: BTreeMap<String, String>,
    /// Compact target, hex.
    pub bits: String,
    /// Full target, big-endian hex.
    #[serde(default)]
    pub target: Option<String>,
    /// The node's current time for the header.
    pub curtime: u64,
    /// The earliest header time the node accepts.
    #[serde(default)]
    pub mintime: Option<u64>,
    /// Height of the block to build.
    pub height: u64,
    /// The witness commitment output script, hex (segwit chains).
    #[serde(default)]
    pub default_witness_commitment: Option<String>,
    /// Pass back to `getblocktemplate` to wait for a change (BIP22 long polling).
    #[serde(default)]
    pub longpollid: Option<String>,
    /// Active consensus rules; `segwit` or `!segwit` means a witness commitment is needed.
    #[serde(default)]
    pub rules: Vec<String>,
}

/// One transaction of a template.
#[derive(Debug, Clone, Deserialize)]
pub struct GbtTransaction {
    /// The serialized transaction (with witness), hex.
    pub data: String,
    /// Txid, display order.
    #[serde(default)]
    pub txid: Option<String>,
    /// Wtxid, display order (BIP145).
    #[serde(default)]
    pub hash: Option<String>,
    /// Fee in satoshis.
    #[serde(default)]
    pub fee: Option<i64>,
    /// Weight units.
    #[serde(default)]
    pub weight: Option<u64>,
}

/// Why a template cannot be mined.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum TemplateError {
    /// A field was not the hex it should be.
    #[error("template field `{0}` is not valid hex of the right length")]
    BadHex(&'static str),
    /// A transaction did not decode.
    #[error("template transaction {index} does not decode: {reason}")]
    BadTransaction {
        /// Position in the template.
        index: usize,
        /// Decoder message.
        reason: String,
    },
    /// A transaction's id differs from the one the node printed.
    #[error("template transaction {index}: node says {field} {node}, computed {ours}")]
    IdMismatch {
        /// Position in the template.
        index: usize,
        /// `txid` or `hash`.
        field: &'static str,
        /// What the node said.
        node: String,
        /// What the data hashes to.
        ours: String,
    },
    /// `target` disagrees with `bits`.
    #[error("template target {target} disagrees with bits {bits:08x}")]
    TargetMismatch {
        /// Compact bits.
        bits: u32,
        /// The `target` field.
        target: String,
    },
    /// Our witness commitment differs from the node's: mining it would make invalid blocks.
    #[error("witness commitment mismatch: node {node}, computed {ours}; refusing to mine")]
    WitnessCommitmentMismatch {
        /// `default_witness_commitment`.
        node: String,
        /// Ours.
        ours: String,
    },
    /// A number does not fit the header.
    #[error("template field `{0}` is out of range")]
    OutOfRange(&'static str),
}

/// The 4-byte prefix of a witness commitment (BIP141).
const WITNESS_COMMITMENT_HEADER: [u8; 4] = [0xaa, 0x21, 0xa9, 0xed];

/// A template prepared for mining: everything shared by every job and every miner built on it.
#[derive(Debug, Clone)]
pub struct WorkTemplate {
    /// Local sequence number, increasing with each template fetched.
    pub id: u64,
    /// Height of the block.
    pub height: u64,
    /// Block version before any version rolling.
    pub version: u32,
    /// Previous block hash, internal byte order.
    pub prev_hash: Hash32,
    /// Compact network target.
    pub bits: u32,
    /// Network target.
    pub network_target: Target,
    /// Header time suggested by the node.
    pub curtime: u32,
    /// Earliest acceptable header time.
    pub mintime: u32,
    /// Value the coinbase must pay out, in satoshis.
    pub coinbase_value: u64,
    /// Bytes the node asks for in the coinbase scriptSig (`coinbaseaux`).
    pub coinbase_aux: Vec<u8>,
    /// The witness commitment output script, when the chain has segwit.
    pub witness_commitment: Option<Vec<u8>>,
    /// Merkle branch of the coinbase (leaf 0).
    pub merkle_branch: Vec<Hash32>,
    /// Number of non-coinbase transactions.
    pub tx_count: usize,
    /// The non-coinbase transactions, serialized back to back, as they go into the block.
    pub transactions: Vec<u8>,
    /// Sum of transaction fees, when the node reports them.
    pub fees: i64,
    /// For the next long poll.
    pub longpoll_id: Option<String>,
    /// The aux chains' blocks every job on this template commits to (merged mining).
    pub merged: Option<std::sync::Arc<crate::merged::MergedWork>>,
    /// Payout outputs every job on this template commits to (payouts in the coinbase).
    pub payouts: Option<std::sync::Arc<crate::coinbase::CommittedPayouts>>,
}

impl WorkTemplate {
    /// Whether the template carries the transactions its merkle branch covers, so that a block
    /// can be assembled from it. Not so for work whose transactions only the miner has (a
    /// coinbase-only declared job, an upstream pool's job in a proxy).
    pub fn has_transactions(&self) -> bool {
        self.tx_count > 0 || self.merkle_branch.is_empty()
    }

    /// The easiest target any chain of this work accepts a block at: Bitcoin's, or an aux
    /// chain's when merged mining an easier chain. Share targets never go above it, or an aux
    /// block would be refused as a low-difficulty share.
    pub fn easiest_target(&self) -> Target {
        match self.merged.as_ref().and_then(|m| m.easiest_target()) {
            Some(aux) => self.network_target.max(aux),
            None => self.network_target,
        }
    }

    /// Checks and prepares a template.
    ///
    /// # Errors
    /// Any inconsistency in the node's answer, including a witness commitment that differs from
    /// `default_witness_commitment`.
    pub fn from_gbt(gbt: &GetBlockTemplate, id: u64) -> Result<Self, TemplateError> {
        let prev_hash = from_display_hex(&gbt.previousblockhash)
            .ok_or(TemplateError::BadHex("previousblockhash"))?;
        let bits = u32::from_str_radix(&gbt.bits, 16).map_err(|_| TemplateError::BadHex("bits"))?;
        let network_target = Target::from_compact(bits);
        if let Some(text) = &gbt.target {
            let target = Target::from_be_hex(text).ok_or(TemplateError::BadHex("target"))?;
            if target != network_target {
                return Err(TemplateError::TargetMismatch {
                    bits,
                    target: text.clone(),
                });
            }
        }
        let mut coinbase_aux = Vec::new();
        for value in gbt.coinbaseaux.values() {
            coinbase_aux
                .extend(hex::decode(value).map_err(|_| TemplateError::BadHex("coinbaseaux"))?);
        }

        let mut transactions = Vec::new();
        let mut txids = Vec::with_capacity(gbt.transactions.len());
        let mut wtxids = Vec::with_capacity(gbt.transactions.len() + 1);
        wtxids.push([0u8; 32]); // the coinbase's wtxid is defined as zero
        let mut fees = 0i64;
        for (index, tx) in gbt.transactions.iter().enumerate() {
            let bytes = hex::decode(&tx.data).map_err(|_| TemplateError::BadHex("data"))?;
            let (decoded, used): (bitcoin::Transaction, usize) = deserialize_partial(&bytes)
                .map_err(|e| TemplateError::BadTransaction {
                    index,
                    reason: e.to_string(),
                })?;
            if used != bytes.len() {
                return Err(TemplateError::BadTransaction {
                    index,
                    reason: format!("{} trailing bytes", bytes.len() - used),
                });
            }
            let txid = decoded.compute_txid().to_byte_array();
            let wtxid = decoded.compute_wtxid().to_byte_array();
            check_id(index, "txid", tx.txid.as_deref(), &txid)?;
            check_id(index, "hash", tx.hash.as_deref(), &wtxid)?;
            txids.push(txid);
            wtxids.push(wtxid);
            transactions.extend_from_slice(&bytes);
            fees = fees.saturating_add(tx.fee.unwrap_or(0));
        }

        let segwit = gbt.rules.iter().any(|r| r == "segwit" || r == "!segwit")
            || gbt.default_witness_commitment.is_some();
        let witness_commitment = if segwit {
            let ours = witness_commitment_script(&wtxids);
            if let Some(node) = &gbt.default_witness_commitment {
                let node_bytes = hex::decode(node)
                    .map_err(|_| TemplateError::BadHex("default_witness_commitment"))?;
                if node_bytes != ours {
                    return Err(TemplateError::WitnessCommitmentMismatch {
                        node: node.clone(),
                        ours: hex::encode(&ours),
                    });
                }
            }
            Some(ours)
        } else {
            None
        };

        let curtime =
            u32::try_from(gbt.curtime).map_err(|_| TemplateError::OutOfRange("curtime"))?;
        let mintime = match gbt.mintime {
            Some(t) => u32::try_from(t).map_err(|_| TemplateError::OutOfRange("mintime"))?,
            None => 0,
        };
        Ok(WorkTemplate {
            id,
            height: gbt.height,
            version: gbt.version,
            prev_hash,
            bits,
            network_target,
            curtime,
            mintime,
            coinbase_value: gbt.coinbasevalue,
            coinbase_aux,
            witness_commitment,
            merkle_branch: merkle::coinbase_branch(&txids),
            tx_count: txids.len(),
            transactions,
            fees,
            longpoll_id: gbt.longpollid.clone(),
            merged: None,
            payouts: None,
        })
    }
}

fn check_id(
    index: usize,
    field: &'static str,
    node: Option<&str>,
    ours: &Hash32,
) -> Result<(), TemplateError> {
    let Some(node) = node else { return Ok(()) };
    if from_display_hex(node).as_ref() == Some(ours) {
        return Ok(());
    }
    Err(TemplateError::IdMismatch {
        index,
        field,
        node: node.to_string(),
        ours: crate::hash::to_display_hex(ours),
    })
}

/// The BIP141 commitment output script for a block whose wtxids (coinbase first, as zero) are
/// given, with the all-zero witness reserved value.
pub fn witness_commitment_script(wtxids: &[Hash32]) -> Vec<u8> {
    let root = merkle::root(wtxids);
    let mut preimage = [0u8; 64];
    preimage[..32].copy_from_slice(&root);
    let commitment = sha256d(&preimage);
    let mut script = Vec::with_capacity(38);
    script.push(0x6a); // OP_RETURN
    script.push(0x24); // push 36 bytes
    script.extend_from_slice(&WITNESS_COMMITMENT_HEADER);
    script.extend_from_slice(&commitment);
    script
}
