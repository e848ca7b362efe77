//! Share validation: the one path every protocol's shares go through.
//!
//! [`validate_share`] rebuilds coinbase → merkle root → header exactly as the node will and checks
//! what depends only on the job and the submission. What depends on a session's history (unknown
//! job, stale tip, duplicates) is the caller's, and reported with the same [`ShareReject`] enum so
//! that one function maps every reason to a wire code.

use crate::hash::{sha256d_64_lanes, sha256d_80, sha256d_80_lanes, sha256d_parts_lanes, Hash32};
use crate::job::{header_bytes, Job, HEADER_LEN};
use crate::target::{hash_difficulty, Target};

/// How far ahead of the pool's clock a header time may be (Bitcoin's `time-too-new` is 2 h).
pub const MAX_FUTURE_NTIME_SECS: u64 = 7200;

/// A miner's proposed header fields.
#[derive(Debug, Clone, Copy)]
pub struct Submission<'a> {
    /// The connection's extranonce.
    pub extranonce1: &'a [u8],
    /// The miner's extranonce.
    pub extranonce2: &'a [u8],
    /// The full header version (after any version rolling).
    pub version: u32,
    /// Header time.
    pub ntime: u32,
    /// Header nonce.
    pub nonce: u32,
}

/// The rules a submission is checked against.
#[derive(Debug, Clone, Copy)]
pub struct ShareRules {
    /// The share target the job was sent with.
    pub target: Target,
    /// Version bits the miner may change (BIP310/BIP320); 0 when not negotiated.
    pub version_mask: u32,
    /// Expected extranonce2 length.
    pub extranonce2_len: usize,
    /// The pool's clock, seconds since the Unix epoch.
    pub now_unix: u64,
}

/// Why a share was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShareReject {
    /// The job id is unknown (never sent, or forgotten).
    #[error("job not found")]
    JobNotFound,
    /// The job builds on a block that is no longer the tip.
    #[error("stale job")]
    Stale,
    /// The same header was submitted before.
    #[error("duplicate share")]
    Duplicate,
    /// The hash does not meet the share target.
    #[error("low difficulty share")]
    LowDifficulty,
    /// Wrong extranonce2 length.
    #[error("extranonce2 must be {expected} bytes, got {got}")]
    Extranonce2Size {
        /// Expected length.
        expected: usize,
        /// Received length.
        got: usize,
    },
    /// Header time before the template's `mintime`.
    #[error("ntime is before the template's mintime")]
    NtimeTooOld,
    /// Header time too far in the future.
    #[error("ntime is more than 2 hours in the future")]
    NtimeTooNew,
    /// Version bits changed outside the negotiated mask.
    #[error("version bits outside the negotiated mask")]
    VersionOutsideMask,
}

/// Proof that a submission met its share target. Only [`validate_share`] builds one.
#[derive(Debug, Clone)]
pub struct ValidShare {
    header: [u8; HEADER_LEN],
    hash: Hash32,
    is_block: bool,
}

impl ValidShare {
    /// The header.
    pub fn header(&self) -> &[u8; HEADER_LEN] {
        &self.header
    }

    /// The header's hash (internal byte order): the block hash if it is a block.
    pub fn hash(&self) -> &Hash32 {
        &self.hash
    }

    /// Whether it meets the network target.
    pub fn is_block(&self) -> bool {
        self.is_block
    }

    /// The difficulty the hash achieved.
    pub fn achieved_difficulty(&self) -> f64 {
        hash_difficulty(&self.hash)
    }
}

/// Validates a submission against its job.
///
/// # Errors
/// The first rule the submission breaks, cheapest checks first.
#[inline]
pub fn validate_share(
    job: &Job,
    submission: &Submission<'_>,
    rules: &ShareRules,
) -> Result<ValidShare, ShareReject> {
    precheck(job, submission, rules)?;
    let header = job.header(
        submission.extranonce1,
        submission.extranonce2,
        submission.version,
        submission.ntime,
        submission.nonce,
    );
    let hash = sha256d_80(&header);
    judge(job, rules, header, hash)
}

/// The checks before any hashing, cheapest first.
#[inline]
fn precheck(job: &Job, submission: &Submission<'_>, rules: &ShareRules) -> Result<(), ShareReject> {
    let template = &job.template;
    if submission.extranonce2.len() != rules.extranonce2_len {
        return Err(ShareReject::Extranonce2Size {
            expected: rules.extranonce2_len,
            got: submission.extranonce2.len(),
        });
    }
    if (submission.version ^ template.version) & !rules.version_mask != 0 {
        return Err(ShareReject::VersionOutsideMask);
    }
    if submission.ntime < template.mintime {
        return Err(ShareReject::NtimeTooOld);
    }
    if u64::from(submission.ntime) > rules.now_unix.saturating_add(MAX_FUTURE_NTIME_SECS) {
        return Err(ShareReject::NtimeTooNew);
    }
    Ok(())
}

/// The targets, once the header is hashed.
#[inline]
fn judge(
    job: &Job,
    rules: &ShareRules,
    header: [u8; HEADER_LEN],
    hash: Hash32,
) -> Result<ValidShare, ShareReject> {
    let is_block = job.template.network_target.is_met_by(&hash);
    if !is_block && !rules.target.is_met_by(&hash) {
        return Err(ShareReject::LowDifficulty);
    }
    Ok(ValidShare {
        header,
        hash,
        is_block,
    })
}

/// [`validate_share`] for `N` shares at once (2 or 4: shares of one read, or of several
/// connections), their SHA-256 chains interleaved so that the CPU overlaps them: the coinbase
/// txids, each level of the merkle branches, and the headers. The results are those
/// [`validate_share`] gives each share alone, in order.
pub fn validate_shares<const N: usize>(
    shares: [(&Job, &Submission<'_>, &ShareRules); N],
) -> [Result<ValidShare, ShareReject>; N] {
    let coinbases: [[&[u8]; 4]; N] = std::array::from_fn(|lane| {
        let (job, submission, _) = shares[lane];
        job.coinbase
            .parts(submission.extranonce1, submission.extranonce2)
    });
    let mut nodes: [Hash32; N] =
        sha256d_parts_lanes(std::array::from_fn(|lane| &coinbases[lane][..]));
    let depth = shares
        .iter()
        .map(|(job, _, _)| job.template.merkle_branch.len())
        .max()
        .unwrap_or(0);
    for level in 0..depth {
        let blocks: [[u8; 64]; N] = std::array::from_fn(|lane| {
            let mut block = [0u8; 64];
            block[..32].copy_from_slice(&nodes[lane]);
            if let Some(sibling) = shares[lane].0.template.merkle_branch.get(level) {
                block[32..].copy_from_slice(sibling);
            }
            block
        });
        let parents: [Hash32; N] = sha256d_64_lanes(std::array::from_fn(|lane| &blocks[lane]));
        for (lane, parent) in parents.into_iter().enumerate() {
            // A shorter branch (another template) has its root already.
            if level < shares[lane].0.template.merkle_branch.len() {
                nodes[lane] = parent;
            }
        }
    }
    let headers: [[u8; HEADER_LEN]; N] = std::array::from_fn(|lane| {
        let (job, submission, _) = shares[lane];
        header_bytes(
            submission.version,
            &job.template.prev_hash,
            &nodes[lane],
            submission.ntime,
            job.template.bits,
            submission.nonce,
        )
    });
    let hashes: [Hash32; N] = sha256d_80_lanes(std::array::from_fn(|lane| &headers[lane]));
    std::array::from_fn(|lane| {
        let (job, submission, rules) = shares[lane];
        precheck(job, submission, rules)?;
        judge(job, rules, headers[lane], hashes[lane])
    })
}
