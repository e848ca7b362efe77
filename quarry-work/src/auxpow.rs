//! Merged mining with AuxPoW (Namecoin and its forks): the aux tree, its coinbase commitment,
//! and the AuxPoW object that proves a parent (Bitcoin) share solved an aux block.
//!
//! Byte orders: an aux block hash is *stored* in internal order (the raw SHA256d bytes) and
//! *shown* in display order, the `hash` hex of `createauxblock`. The aux tree is hashed like
//! Bitcoin's merkle tree over internal-order leaves, and its root is written reversed (display
//! order) into the parent coinbase's scriptSig, after the magic `fa be 6d 6d`.
//!
//! The flow, per job and per share:
//!
//! 1. [`AuxTree::build`] places every aux chain's block hash at its slot and gives the 44-byte
//!    [`AuxTree::commitment`] for the coinbase scriptSig (one tree per job: old jobs keep their
//!    own tree, so a late share still names the aux hash it committed to).
//! 2. For a share that meets an aux target ([`meets_target`] with the aux block's `bits`),
//!    [`AuxPow::from_share`] builds the proof from the share's own coinbase, merkle branch and
//!    header, and [`AuxPow::encode`] gives the bytes for `submitauxblock`.
//! 3. [`AuxPow::decode`] and [`AuxPow::verify`] are the node's side (a port of Namecoin Core's
//!    `CAuxPow::check` and the parent-version checks before it), for tests, fuzzing and
//!    checking our own output before it leaves. Proof of work is not part of `verify`: call
//!    [`meets_target`] on [`AuxPow::parent_block_hash`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bitcoin::hashes::Hash as _;
use bitcoin::Transaction;

use crate::coinbase::write_compact_size;
use crate::hash::{sha256d_80, Hash32};
use crate::merkle;
use crate::target::Target;

/// The merged-mining magic that precedes the aux root in the parent coinbase's scriptSig.
pub const MERGED_MINING_MAGIC: [u8; 4] = [0xfa, 0xbe, 0x6d, 0x6d];

/// Bytes of the scriptSig commitment: magic ‖ root ‖ tree size ‖ nonce.
pub const COMMITMENT_LEN: usize = 44;

/// The deepest aux tree (chain merkle branch) Namecoin Core accepts ("chain merkle branch too
/// long").
pub const MAX_CHAIN_BRANCH_LEN: usize = 30;

/// The longest coinbase merkle branch [`AuxPow::decode`] reads. Consensus has no such rule, but a
/// Bitcoin block would need over 2^32 transactions to need more, so longer is garbage.
pub const MAX_MERKLE_BRANCH_LEN: usize = 32;

/// The parent header's version bit that marks a block carrying an AuxPoW itself.
pub const VERSION_AUXPOW: i32 = 0x100;

/// A version's chain id is `nVersion / VERSION_CHAIN_START`.
const VERSION_CHAIN_START: i32 = 0x1_0000;

/// Without the magic (legacy coinbases), the root must start within this many bytes of the
/// scriptSig's start.
const LEGACY_ROOT_MAX_OFFSET: usize = 20;

/// Offset of `hashMerkleRoot` in an 80-byte header.
const HEADER_MERKLE_ROOT: usize = 36;

/// An aux chain's id, as its blocks carry it in `nVersion / 65536` and as `createauxblock`
/// reports it in `chainid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChainId(pub u32);

impl ChainId {
    /// Namecoin: 0x0001 on main, testnet, signet and regtest.
    pub const NAMECOIN: ChainId = ChainId(1);
    /// Syscoin (16; it used 4096 before).
    pub const SYSCOIN: ChainId = ChainId(16);
    /// Elastos (1224).
    pub const ELASTOS: ChainId = ChainId(1224);
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An aux block hash: stored in internal order, parsed from and shown as display hex (the
/// `hash` that `createauxblock` returns and `submitauxblock` takes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuxHash(Hash32);

impl AuxHash {
    /// From internal-order bytes (the raw SHA256d output).
    pub const fn from_internal(bytes: Hash32) -> Self {
        AuxHash(bytes)
    }

    /// From display-order bytes (the RPC hex, decoded as it is).
    pub fn from_display_bytes(mut bytes: Hash32) -> Self {
        bytes.reverse();
        AuxHash(bytes)
    }

    /// The internal-order bytes: a leaf of the aux tree.
    pub const fn to_internal(self) -> Hash32 {
        self.0
    }

    /// The display-order bytes: what the scriptSig holds when this is the only chain.
    pub fn to_display_bytes(self) -> Hash32 {
        let mut bytes = self.0;
        bytes.reverse();
        bytes
    }
}

impl FromStr for AuxHash {
    type Err = ParseAuxHashError;

    /// Parses 64 hex digits in display order.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != 64 {
            return Err(ParseAuxHashError { len: text.len() });
        }
        let bytes: Hash32 = hex::decode(text)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(ParseAuxHashError { len: text.len() })?;
        Ok(AuxHash::from_display_bytes(bytes))
    }
}

impl fmt::Display for AuxHash {
    /// Display-order hex, as the RPC prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.to_display_bytes()))
    }
}

impl fmt::Debug for AuxHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuxHash({self})")
    }
}

/// An aux block hash that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("aux block hash must be 64 hex digits (got {len} characters)")]
#[non_exhaustive]
pub struct ParseAuxHashError {
    /// Length of the rejected text.
    pub len: usize,
}

/// The slot a chain must occupy in an aux tree of `2^height` leaves with this `nonce`
/// (Namecoin Core `getExpectedIndex`).
///
/// Wrapping u32 arithmetic: Core computes in 64 bits and reduces mod 2^height at each step, which
/// gives the same slot because 2^height divides 2^32. A `height` of 32 or more keeps all 32 bits
/// (such trees are invalid anyway: see [`MAX_CHAIN_BRANCH_LEN`]).
pub fn expected_index(nonce: u32, chain_id: u32, height: u32) -> u32 {
    const MULTIPLIER: u32 = 1_103_515_245;
    const INCREMENT: u32 = 12_345;
    let mut rand = nonce.wrapping_mul(MULTIPLIER).wrapping_add(INCREMENT);
    rand = rand.wrapping_add(chain_id);
    rand = rand.wrapping_mul(MULTIPLIER).wrapping_add(INCREMENT);
    match 1u32.checked_shl(height) {
        Some(size) => rand % size,
        None => rand,
    }
}

/// Why an aux tree cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuxTreeError {
    /// No chains: there is nothing to commit to.
    #[error("an aux tree needs at least one chain")]
    Empty,
    /// Two chains share an id. They would need the same slot in every tree, so they can never be
    /// merge-mined together: a configuration error.
    #[error("chain id {0} appears twice; chains with one id cannot share an aux tree")]
    DuplicateChainId(ChainId),
    /// No tree of at most 2^30 leaves gives every chain its own slot (ids equal mod 2^30).
    #[error("chain ids need more than {MAX_CHAIN_BRANCH_LEN} tree levels to get distinct slots")]
    TooDeep,
}

/// One chain's place in an [`AuxTree`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Leaf {
    chain: ChainId,
    hash: AuxHash,
    slot: u32,
    branch: Vec<Hash32>,
}

/// The aux merkle tree of one job: every aux chain's block hash at its slot, empty slots zero.
///
/// Its size is the smallest power of two at which the chains' slots are distinct, with nonce 0.
/// The slot is `(1103515245·id + f(nonce)) mod size` with an odd multiplier, so two chains
/// collide exactly when their ids are equal mod size, whatever the nonce: trying other nonces
/// buys nothing, and doubling the size is the only remedy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuxTree {
    height: u32,
    nonce: u32,
    /// Internal order.
    root: Hash32,
    /// Sorted by chain id.
    leaves: Vec<Leaf>,
}

impl AuxTree {
    /// Builds the tree for `chains` (id and current aux block hash of each).
    ///
    /// # Errors
    /// No chains, a repeated chain id, or ids that no tree of at most 2^30 leaves separates.
    pub fn build(chains: &[(ChainId, AuxHash)]) -> Result<AuxTree, AuxTreeError> {
        if chains.is_empty() {
            return Err(AuxTreeError::Empty);
        }
        let mut sorted: Vec<(ChainId, AuxHash)> = chains.to_vec();
        sorted.sort_by_key(|(chain, _)| *chain);
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(AuxTreeError::DuplicateChainId(pair[0].0));
        }
        const NONCE: u32 = 0;
        let max_height = MAX_CHAIN_BRANCH_LEN as u32;
        let (height, slots) = (0..=max_height)
            .filter(|&height| (1u64 << height) >= sorted.len() as u64)
            .find_map(|height| {
                let slots: Vec<u32> = sorted
                    .iter()
                    .map(|(chain, _)| expected_index(NONCE, chain.0, height))
                    .collect();
                let mut seen = slots.clone();
                seen.sort_unstable();
                seen.dedup();
                (seen.len() == slots.len()).then_some((height, slots))
            })
            .ok_or(AuxTreeError::TooDeep)?;

        // Sparse: a tree of up to 2^30 leaves holds only a few chains, so only their paths are
        // hashed; every other node is an all-empty subtree whose hash depends on its level only.
        let mut level: BTreeMap<u32, Hash32> = slots
            .iter()
            .zip(&sorted)
            .map(|(&slot, (_, hash))| (slot, hash.to_internal()))
            .collect();
        let mut empty: Hash32 = [0; 32];
        let mut paths: Vec<(u32, Vec<Hash32>)> = slots
            .iter()
            .map(|&slot| (slot, Vec::with_capacity(height as usize)))
            .collect();
        for _ in 0..height {
            for (index, branch) in &mut paths {
                branch.push(level.get(&(*index ^ 1)).copied().unwrap_or(empty));
                *index >>= 1;
            }
            let mut next = BTreeMap::new();
            for &index in level.keys() {
                let left = level.get(&(index & !1)).unwrap_or(&empty);
                let right = level.get(&(index | 1)).unwrap_or(&empty);
                next.insert(index >> 1, merkle::parent(left, right));
            }
            level = next;
            empty = merkle::parent(&empty, &empty);
        }
        let root = level.values().next().copied().unwrap_or(empty);
        let leaves = sorted
            .into_iter()
            .zip(slots)
            .zip(paths)
            .map(|(((chain, hash), slot), (_, branch))| Leaf {
                chain,
                hash,
                slot,
                branch,
            })
            .collect();
        Ok(AuxTree {
            height,
            nonce: NONCE,
            root,
            leaves,
        })
    }

    /// The 44 scriptSig bytes: magic ‖ root (display order) ‖ size (u32 LE) ‖ nonce (u32 LE).
    /// Put them in pool-controlled coinb1, before the extranonce, so a miner cannot add a second
    /// magic in front of them.
    pub fn commitment(&self) -> [u8; COMMITMENT_LEN] {
        let mut out = [0u8; COMMITMENT_LEN];
        out[..4].copy_from_slice(&MERGED_MINING_MAGIC);
        let mut root = self.root;
        root.reverse();
        out[4..36].copy_from_slice(&root);
        out[36..40].copy_from_slice(&self.size().to_le_bytes());
        out[40..].copy_from_slice(&self.nonce.to_le_bytes());
        out
    }

    /// The aux branch of `chain` (internal order, leaf to root) and its slot, which become the
    /// AuxPoW's `vChainMerkleBranch` and `nChainIndex`; `None` if the chain is not in the tree.
    pub fn branch(&self, chain: ChainId) -> Option<(Vec<Hash32>, u32)> {
        self.leaf(chain)
            .map(|leaf| (leaf.branch.clone(), leaf.slot))
    }

    /// The slot of `chain`, if it is in the tree.
    pub fn slot(&self, chain: ChainId) -> Option<u32> {
        self.leaf(chain).map(|leaf| leaf.slot)
    }

    /// The aux block hash the tree commits to for `chain`.
    pub fn aux_hash(&self, chain: ChainId) -> Option<AuxHash> {
        self.leaf(chain).map(|leaf| leaf.hash)
    }

    /// The chains in the tree, by id.
    pub fn chains(&self) -> impl Iterator<Item = ChainId> + '_ {
        self.leaves.iter().map(|leaf| leaf.chain)
    }

    /// Number of leaves (a power of two).
    pub fn size(&self) -> u32 {
        1 << self.height
    }

    /// Levels below the root: the length of every branch.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The merkle nonce written after the size.
    pub fn nonce(&self) -> u32 {
        self.nonce
    }

    /// The root in internal order (the commitment holds it reversed).
    pub fn root(&self) -> Hash32 {
        self.root
    }

    fn leaf(&self, chain: ChainId) -> Option<&Leaf> {
        self.leaves
            .binary_search_by_key(&chain, |leaf| leaf.chain)
            .ok()
            .and_then(|at| self.leaves.get(at))
    }
}

/// Whether a parent header hash (internal order) meets the target of an aux block's compact
/// `bits`, as Core's `CheckProofOfWork` compares them (`hash <= target`). Bits that encode a
/// negative, zero or overflowing target are never met. The chain's proof-of-work limit is the
/// node's business and is not checked.
pub fn meets_target(header_hash: &Hash32, bits: u32) -> bool {
    Target::from_compact_checked(bits).is_some_and(|target| target.is_met_by(header_hash))
}

/// Why an AuxPoW does not decode or does not prove what it should.
///
/// The first group is malformed bytes ([`AuxPow::decode`]); the rest are the rules of
/// [`AuxPow::verify`], one per check in Namecoin Core, in the order Core applies them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuxPowError {
    /// The bytes end inside `field`.
    #[error("auxpow truncated in {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A CompactSize written with more bytes than its value needs (Core rejects those).
    #[error("non-canonical compact size in {field}")]
    NonCanonicalCompactSize {
        /// The field being read.
        field: &'static str,
    },
    /// The coinbase is not a transaction.
    #[error("auxpow coinbase does not decode: {0}")]
    CoinbaseUndecodable(String),
    /// The coinbase merkle branch is longer than [`MAX_MERKLE_BRANCH_LEN`].
    #[error("coinbase merkle branch of {len} hashes is too long")]
    MerkleBranchTooLong {
        /// Its declared length.
        len: u64,
    },
    /// Bytes after the parent header.
    #[error("{0} bytes after the auxpow")]
    TrailingBytes(usize),

    /// The parent header has the auxpow version bit (0x100) set ("auxpow parent block has auxpow
    /// version"). A version-rolling mask must never include bit 8.
    #[error("auxpow parent block has auxpow version {version:#010x}")]
    ParentHasAuxPowVersion {
        /// The parent's `nVersion`.
        version: i32,
    },
    /// Strict chain id: the parent's `nVersion / 65536` is the aux chain's own id ("Aux POW
    /// parent has our chain ID").
    #[error("auxpow parent has our chain id {0}")]
    ParentHasOurChainId(ChainId),
    /// The aux (chain) branch is longer than [`MAX_CHAIN_BRANCH_LEN`] ("Aux POW chain merkle
    /// branch too long").
    #[error("auxpow chain merkle branch of {len} hashes is too long")]
    ChainBranchTooLong {
        /// Its length.
        len: u64,
    },
    /// The coinbase txid folded with the merkle branch is not the parent's merkle root ("Aux POW
    /// merkle root incorrect").
    #[error("auxpow coinbase is not in the parent block's merkle root")]
    CoinbaseNotInParentMerkleRoot,
    /// The coinbase has no inputs, so no scriptSig ("Aux POW coinbase has no inputs").
    #[error("auxpow coinbase has no inputs")]
    CoinbaseNoInputs,
    /// The aux root is not in `vin[0].scriptSig` ("Aux POW missing chain merkle root in parent
    /// coinbase"): usually a stale aux hash, or a byte order mixed up.
    #[error("auxpow missing chain merkle root in parent coinbase")]
    ChainRootMissing,
    /// The magic occurs more than once ("Multiple merged mining headers in coinbase").
    #[error("multiple merged mining headers in coinbase")]
    MultipleMergedMiningHeaders,
    /// The magic is present but the root does not start right after it ("Merged mining header is
    /// not just before chain merkle root").
    #[error("merged mining header is not just before chain merkle root")]
    HeaderNotJustBeforeRoot,
    /// No magic, and the root starts past byte 20 of the scriptSig ("Aux POW chain merkle root
    /// must start in the first 20 bytes of the parent coinbase").
    #[error("auxpow chain merkle root starts at byte {offset}, past the first 20 bytes")]
    LegacyRootTooLate {
        /// Where it starts.
        offset: usize,
    },
    /// Fewer than 8 bytes (size and nonce) follow the root ("Aux POW missing chain merkle tree
    /// size and nonce in parent coinbase").
    #[error("auxpow missing chain merkle tree size and nonce in parent coinbase")]
    MissingSizeAndNonce,
    /// The committed tree size is not `1 << branch length` ("Aux POW merkle branch size does not
    /// match parent coinbase").
    #[error("auxpow tree size {size} does not match a chain branch of {branch_len} hashes")]
    TreeSizeMismatch {
        /// The size in the coinbase.
        size: u32,
        /// The chain branch's length.
        branch_len: usize,
    },
    /// `nChainIndex` is not the slot the nonce and chain id give ("Aux POW wrong index").
    #[error("auxpow chain index {index}, expected {expected}")]
    WrongChainIndex {
        /// The AuxPoW's `nChainIndex`.
        index: i32,
        /// `expected_index(nonce, chain id, branch length)`.
        expected: u32,
    },
}

/// The proof that a parent block (a Bitcoin share) commits to an aux block: the second argument
/// of `submitauxblock`, field for field as `SERIALIZE_METHODS(CAuxPow)` writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuxPow {
    /// The parent coinbase as serialized bytes, kept exactly as given. Send the non-witness
    /// serialization (Stratum's coinb1 ‖ extranonce1 ‖ extranonce2 ‖ coinb2): other chains'
    /// parsers may not accept witness data.
    pub coinbase_tx: Vec<u8>,
    /// `hashBlock`, a legacy field no node checks.
    pub parent_hash: Hash32,
    /// The coinbase → parent merkle root branch, internal order (Stratum's `merkle_branch`).
    pub merkle_branch: Vec<Hash32>,
    /// `nIndex`: read and ignored by Namecoin; Dogecoin rejects anything but 0, so write 0.
    pub index: i32,
    /// The aux-tree branch from this chain's leaf to the root, internal order.
    pub chain_branch: Vec<Hash32>,
    /// `nChainIndex`: this chain's slot in the aux tree.
    pub chain_index: i32,
    /// The 80-byte parent header.
    pub parent_header: [u8; 80],
}

impl AuxPow {
    /// Builds the AuxPoW of `chain` from a share: its coinbase (non-witness serialization), its
    /// merkle branch and header, and the job's aux tree. `None` if the tree lacks `chain`.
    ///
    /// Nothing is checked here; [`AuxPow::verify`] does that.
    pub fn from_share(
        coinbase_tx: Vec<u8>,
        merkle_branch: &[Hash32],
        parent_header: [u8; 80],
        tree: &AuxTree,
        chain: ChainId,
    ) -> Option<AuxPow> {
        let (chain_branch, slot) = tree.branch(chain)?;
        Some(AuxPow {
            coinbase_tx,
            // Unchecked; the parent's own hash, in the order a uint256 serializes, is what the
            // field once meant.
            parent_hash: sha256d_80(&parent_header),
            merkle_branch: merkle_branch.to_vec(),
            index: 0,
            chain_branch,
            // Slots are below 2^30.
            chain_index: i32::try_from(slot).ok()?,
            parent_header,
        })
    }

    /// SHA256d of the parent header (internal order): the hash the aux chain's proof of work is
    /// checked on, with [`meets_target`].
    pub fn parent_block_hash(&self) -> Hash32 {
        sha256d_80(&self.parent_header)
    }

    /// The serialization `submitauxblock` takes (hex-encode it for the RPC).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.coinbase_tx.len()
                + 32
                + 9
                + 32 * self.merkle_branch.len()
                + 4
                + 9
                + 32 * self.chain_branch.len()
                + 4
                + 80,
        );
        out.extend_from_slice(&self.coinbase_tx);
        out.extend_from_slice(&self.parent_hash);
        write_branch(&self.merkle_branch, &mut out);
        out.extend_from_slice(&self.index.to_le_bytes());
        write_branch(&self.chain_branch, &mut out);
        out.extend_from_slice(&self.chain_index.to_le_bytes());
        out.extend_from_slice(&self.parent_header);
        out
    }

    /// Decodes the serialization of [`AuxPow::encode`], as Namecoin Core reads it.
    ///
    /// The coinbase may be in witness or non-witness form; its bytes are kept as they are, so
    /// `decode(b)?.encode() == b`.
    ///
    /// # Errors
    /// Truncated or trailing bytes, an undecodable coinbase, a non-canonical CompactSize, or a
    /// branch longer than [`MAX_MERKLE_BRANCH_LEN`] (coinbase) or [`MAX_CHAIN_BRANCH_LEN`] (aux;
    /// Core would reject it in `check`, and refusing early bounds what we allocate).
    pub fn decode(bytes: &[u8]) -> Result<AuxPow, AuxPowError> {
        let (_, coinbase_len) = bitcoin::consensus::deserialize_partial::<Transaction>(bytes)
            .map_err(|e| AuxPowError::CoinbaseUndecodable(e.to_string()))?;
        let (coinbase_tx, rest) = bytes
            .split_at_checked(coinbase_len)
            .ok_or(AuxPowError::Truncated { field: "coinbase" })?;
        let mut reader = Reader(rest);
        let parent_hash = reader.array::<32>("hashBlock")?;
        let merkle_branch = reader.branch("vMerkleBranch", MAX_MERKLE_BRANCH_LEN, |len| {
            AuxPowError::MerkleBranchTooLong { len }
        })?;
        let index = i32::from_le_bytes(reader.array("nIndex")?);
        let chain_branch = reader.branch("vChainMerkleBranch", MAX_CHAIN_BRANCH_LEN, |len| {
            AuxPowError::ChainBranchTooLong { len }
        })?;
        let chain_index = i32::from_le_bytes(reader.array("nChainIndex")?);
        let parent_header = reader.array::<80>("parentBlock")?;
        if !reader.0.is_empty() {
            return Err(AuxPowError::TrailingBytes(reader.0.len()));
        }
        Ok(AuxPow {
            coinbase_tx: coinbase_tx.to_vec(),
            parent_hash,
            merkle_branch,
            index,
            chain_branch,
            chain_index,
            parent_header,
        })
    }

    /// Checks that this AuxPoW commits to `aux_hash` for `chain_id`, as Namecoin Core does
    /// before accepting an aux block: the parent-version checks of `CheckProofOfWork`, then
    /// `CAuxPow::check`. `strict_chain_id` is the chain's `fStrictChainId` (Namecoin: set
    /// everywhere but testnet).
    ///
    /// Proof of work is not checked: test [`AuxPow::parent_block_hash`] with [`meets_target`]
    /// and the aux block's `bits`. Neither is the aux block's own version, which the node
    /// builds.
    ///
    /// # Errors
    /// The first rule broken, one [`AuxPowError`] variant per rule.
    pub fn verify(
        &self,
        aux_hash: AuxHash,
        chain_id: ChainId,
        strict_chain_id: bool,
    ) -> Result<(), AuxPowError> {
        let header = &self.parent_header;
        let version = i32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        if version & VERSION_AUXPOW != 0 {
            return Err(AuxPowError::ParentHasAuxPowVersion { version });
        }
        // Signed division, as Core's `int` arithmetic: a version with bit 31 set gives a
        // negative id, which matches no chain.
        if strict_chain_id && i64::from(version / VERSION_CHAIN_START) == i64::from(chain_id.0) {
            return Err(AuxPowError::ParentHasOurChainId(chain_id));
        }
        let branch_len = self.chain_branch.len();
        if branch_len > MAX_CHAIN_BRANCH_LEN {
            return Err(AuxPowError::ChainBranchTooLong {
                len: branch_len as u64,
            });
        }

        // The aux root: fold from the leaf with nChainIndex's bits (arithmetic shift, as Core's
        // `int`), then reverse, since the scriptSig holds it in display order.
        let mut root = aux_hash.to_internal();
        let mut bits = self.chain_index;
        for node in &self.chain_branch {
            root = if bits & 1 == 1 {
                merkle::parent(node, &root)
            } else {
                merkle::parent(&root, node)
            };
            bits >>= 1;
        }
        root.reverse();

        let coinbase: Transaction = bitcoin::consensus::deserialize(&self.coinbase_tx)
            .map_err(|e| AuxPowError::CoinbaseUndecodable(e.to_string()))?;
        // The txid is over the non-witness serialization whatever form the bytes are in.
        let txid = coinbase.compute_txid().to_raw_hash().to_byte_array();
        let mut header_root = [0u8; 32];
        header_root.copy_from_slice(&header[HEADER_MERKLE_ROOT..HEADER_MERKLE_ROOT + 32]);
        // The coinbase is leaf 0 (nIndex is ignored): every branch hash goes on the right.
        if merkle::root_from_branch(&txid, &self.merkle_branch) != header_root {
            return Err(AuxPowError::CoinbaseNotInParentMerkleRoot);
        }
        let script = coinbase
            .input
            .first()
            .ok_or(AuxPowError::CoinbaseNoInputs)?
            .script_sig
            .as_bytes();

        let root_at = find(script, &root).ok_or(AuxPowError::ChainRootMissing)?;
        match find(script, &MERGED_MINING_MAGIC) {
            Some(magic_at) => {
                let after_magic = script.get(magic_at + 1..).unwrap_or_default();
                if find(after_magic, &MERGED_MINING_MAGIC).is_some() {
                    return Err(AuxPowError::MultipleMergedMiningHeaders);
                }
                if magic_at + MERGED_MINING_MAGIC.len() != root_at {
                    return Err(AuxPowError::HeaderNotJustBeforeRoot);
                }
            }
            // Legacy coinbases (before the magic existed) put the root near the start.
            None if root_at > LEGACY_ROOT_MAX_OFFSET => {
                return Err(AuxPowError::LegacyRootTooLate { offset: root_at });
            }
            None => {}
        }
        let tail = script.get(root_at + 32..).unwrap_or_default();
        let (Some(size), Some(nonce)) = (le_u32(tail, 0), le_u32(tail, 4)) else {
            return Err(AuxPowError::MissingSizeAndNonce);
        };
        // branch_len <= 30 here, so the shift cannot overflow.
        if u64::from(size) != 1u64 << branch_len {
            return Err(AuxPowError::TreeSizeMismatch { size, branch_len });
        }
        let expected = expected_index(nonce, chain_id.0, branch_len as u32);
        if u32::try_from(self.chain_index).ok() != Some(expected) {
            return Err(AuxPowError::WrongChainIndex {
                index: self.chain_index,
                expected,
            });
        }
        Ok(())
    }
}

/// CompactSize count, then the hashes.
fn write_branch(branch: &[Hash32], out: &mut Vec<u8>) {
    write_compact_size(branch.len() as u64, out);
    for node in branch {
        out.extend_from_slice(node);
    }
}

/// The first position of `needle` in `haystack` (`std::search`).
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The u32 LE at `at`, if the four bytes are there.
fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let four: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(four))
}

/// Reads the fields after the coinbase; every read is checked against what is left.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, len: usize, field: &'static str) -> Result<&[u8], AuxPowError> {
        let (head, rest) = self
            .0
            .split_at_checked(len)
            .ok_or(AuxPowError::Truncated { field })?;
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], AuxPowError> {
        self.take(N, field)?
            .try_into()
            .map_err(|_| AuxPowError::Truncated { field })
    }

    /// Core's `ReadCompactSize`: canonical encodings only.
    fn compact_size(&mut self, field: &'static str) -> Result<u64, AuxPowError> {
        let [first] = self.array::<1>(field)?;
        let (value, min) = match first {
            0xfd => (u64::from(u16::from_le_bytes(self.array(field)?)), 0xfd),
            0xfe => (u64::from(u32::from_le_bytes(self.array(field)?)), 0x1_0000),
            0xff => (u64::from_le_bytes(self.array(field)?), 0x1_0000_0000),
            small => return Ok(u64::from(small)),
        };
        if value < min {
            return Err(AuxPowError::NonCanonicalCompactSize { field });
        }
        Ok(value)
    }

    /// A count (at most `max`, checked before anything is allocated) and that many hashes.
    fn branch(
        &mut self,
        field: &'static str,
        max: usize,
        too_long: impl FnOnce(u64) -> AuxPowError,
    ) -> Result<Vec<Hash32>, AuxPowError> {
        let len = self.compact_size(field)?;
        let count = usize::try_from(len)
            .ok()
            .filter(|&count| count <= max)
            .ok_or_else(|| too_long(len))?;
        let mut branch = Vec::with_capacity(count);
        for _ in 0..count {
            branch.push(self.array::<32>(field)?);
        }
        Ok(branch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aux_hash_round_trips_display_hex() {
        let text = "7926398947f332fe534b15c628ff0cd9dc6f7d3ea59c74801dc758ac65428e64";
        let hash: AuxHash = text.parse().expect("64 hex digits");
        assert_eq!(hash.to_string(), text);
        assert_eq!(hash.to_internal()[0], 0x64, "stored reversed");
        assert_eq!(hash.to_display_bytes()[0], 0x79);
        assert!("79".parse::<AuxHash>().is_err());
        assert!(text.replace('7', "g").parse::<AuxHash>().is_err());
        assert!(format!("{text}00").parse::<AuxHash>().is_err());
    }

    #[test]
    fn expected_index_handles_the_extremes() {
        assert_eq!(expected_index(u32::MAX, u32::MAX, 30), {
            let r = u32::MAX.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let r = r.wrapping_add(u32::MAX);
            r.wrapping_mul(1_103_515_245).wrapping_add(12_345) % (1 << 30)
        });
        for id in [0, 1, 16, u32::MAX] {
            assert_eq!(expected_index(7, id, 0), 0, "a one-leaf tree has one slot");
        }
        // Heights past 31 keep the whole word instead of overflowing the shift.
        assert_eq!(expected_index(7, 1, 32), expected_index(7, 1, 40));
    }

    #[test]
    fn a_single_chain_commits_its_own_hash() {
        let hash: AuxHash = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
            .parse()
            .expect("hex");
        let tree = AuxTree::build(&[(ChainId::NAMECOIN, hash)]).expect("one chain");
        assert_eq!(tree.size(), 1);
        let commitment = tree.commitment();
        assert_eq!(commitment[..4], MERGED_MINING_MAGIC);
        assert_eq!(commitment[4..36], hash.to_display_bytes());
        assert_eq!(commitment[36..], [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(tree.branch(ChainId::NAMECOIN), Some((vec![], 0)));
        assert_eq!(tree.branch(ChainId::SYSCOIN), None);
    }

    #[test]
    fn tree_errors() {
        let hash = AuxHash::from_internal([7; 32]);
        assert_eq!(AuxTree::build(&[]), Err(AuxTreeError::Empty));
        assert_eq!(
            AuxTree::build(&[(ChainId(5), hash), (ChainId(9), hash), (ChainId(5), hash)]),
            Err(AuxTreeError::DuplicateChainId(ChainId(5)))
        );
        // Equal mod 2^30: no allowed size separates them.
        assert_eq!(
            AuxTree::build(&[(ChainId(3), hash), (ChainId(3 + (1 << 30)), hash)]),
            Err(AuxTreeError::TooDeep)
        );
        // Equal mod 2^29 only: the deepest tree allowed, built sparsely.
        let tree = AuxTree::build(&[(ChainId(3), hash), (ChainId(3 + (1 << 29)), hash)])
            .expect("30 levels");
        assert_eq!(tree.height(), 30);
        assert_eq!(tree.size(), 1 << 30);
        let (branch, _) = tree.branch(ChainId(3)).expect("in the tree");
        assert_eq!(branch.len(), 30);
    }

    #[test]
    fn colliding_ids_double_the_size() {
        let hash = AuxHash::from_internal([1; 32]);
        // NMC 1 + SYS 16 + ELA 1224: 16 ≡ 1224 (mod 8), so 8 leaves are not enough.
        let chains = [
            (ChainId::NAMECOIN, hash),
            (ChainId::SYSCOIN, hash),
            (ChainId::ELASTOS, hash),
        ];
        let tree = AuxTree::build(&chains).expect("distinct ids");
        assert_eq!(tree.size(), 16);
        let slots: Vec<u32> = chains
            .iter()
            .map(|(chain, _)| tree.slot(*chain).expect("in the tree"))
            .collect();
        assert_eq!(slots, [11, 14, 6], "V4, nonce 0, h = 4");
    }

    #[test]
    fn compact_size_must_be_canonical() {
        let mut reader = Reader(&[0xfd, 0x10, 0x00]);
        assert_eq!(
            reader.compact_size("n"),
            Err(AuxPowError::NonCanonicalCompactSize { field: "n" })
        );
        let mut reader = Reader(&[0xfd, 0xfd, 0x00]);
        assert_eq!(reader.compact_size("n"), Ok(0xfd));
        let mut reader = Reader(&[0xfe, 0x00, 0x00, 0x01]);
        assert_eq!(
            reader.compact_size("n"),
            Err(AuxPowError::Truncated { field: "n" })
        );
    }

    #[test]
    fn huge_branch_counts_are_refused_before_allocating() {
        let mut reader = Reader(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            reader.branch("b", 30, |len| AuxPowError::ChainBranchTooLong { len }),
            Err(AuxPowError::ChainBranchTooLong { len: u64::MAX })
        );
        let mut reader = Reader(&[31]);
        assert_eq!(
            reader.branch("b", 30, |len| AuxPowError::ChainBranchTooLong { len }),
            Err(AuxPowError::ChainBranchTooLong { len: 31 })
        );
        let mut reader = Reader(&[2, 0, 0]);
        assert_eq!(
            reader.branch("b", 30, |len| AuxPowError::ChainBranchTooLong { len }),
            Err(AuxPowError::Truncated { field: "b" })
        );
    }
}
