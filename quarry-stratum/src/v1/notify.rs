//! `mining.notify`: the pool writes it ([`job_fields`], [`notify_line`]) and the miner side reads
//! it ([`Notify`], for `quarry mine`, the load generator and tests that play miner).

use quarry_work::hash::{sha256d, sha256d_80, Hash32};
use quarry_work::job::{header_bytes, Job, HEADER_LEN};
use quarry_work::merkle;
use serde_json::Value;

/// A decoded `mining.notify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// Job id to submit with.
    pub job_id: String,
    /// Previous block hash, internal byte order.
    pub prev_hash: Hash32,
    /// Coinbase up to the extranonce.
    pub coinb1: Vec<u8>,
    /// Coinbase after the extranonce.
    pub coinb2: Vec<u8>,
    /// Merkle branch of the coinbase.
    pub merkle_branch: Vec<Hash32>,
    /// Block version.
    pub version: u32,
    /// Compact target.
    pub bits: u32,
    /// Header time.
    pub ntime: u32,
    /// Whether older jobs are void.
    pub clean: bool,
}

/// A `mining.notify` that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad mining.notify parameter {0}")]
pub struct BadNotify(pub usize);

impl Notify {
    /// Decodes the `params` array.
    ///
    /// # Errors
    /// The index of the first parameter that is missing or malformed.
    pub fn from_params(params: &Value) -> Result<Notify, BadNotify> {
        let text = |i: usize| params.get(i).and_then(Value::as_str).ok_or(BadNotify(i));
        let bytes = |i: usize| text(i).and_then(|t| hex::decode(t).map_err(|_| BadNotify(i)));
        let word =
            |i: usize| text(i).and_then(|t| u32::from_str_radix(t, 16).map_err(|_| BadNotify(i)));
        let merkle_branch = params
            .get(4)
            .and_then(Value::as_array)
            .ok_or(BadNotify(4))?
            .iter()
            .map(|h| {
                h.as_str()
                    .and_then(|t| hex::decode(t).ok())
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or(BadNotify(4))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Notify {
            job_id: text(0)?.to_string(),
            prev_hash: parse_stratum_prev_hash(text(1)?).ok_or(BadNotify(1))?,
            coinb1: bytes(2)?,
            coinb2: bytes(3)?,
            merkle_branch,
            version: word(5)?,
            bits: word(6)?,
            ntime: word(7)?,
            clean: params.get(8).and_then(Value::as_bool).ok_or(BadNotify(8))?,
        })
    }

    /// The merkle root for these extranonces.
    pub fn merkle_root(&self, extranonce1: &[u8], extranonce2: &[u8]) -> Hash32 {
        let coinbase = [&self.coinb1[..], extranonce1, extranonce2, &self.coinb2[..]].concat();
        merkle::root_from_branch(&sha256d(&coinbase), &self.merkle_branch)
    }

    /// The header for a submission.
    pub fn header(
        &self,
        extranonce1: &[u8],
        extranonce2: &[u8],
        version: u32,
        ntime: u32,
        nonce: u32,
    ) -> [u8; HEADER_LEN] {
        let root = self.merkle_root(extranonce1, extranonce2);
        header_bytes(version, &self.prev_hash, &root, ntime, self.bits, nonce)
    }

    /// The header hash for a submission.
    pub fn hash(
        &self,
        extranonce1: &[u8],
        extranonce2: &[u8],
        version: u32,
        ntime: u32,
        nonce: u32,
    ) -> Hash32 {
        sha256d_80(&self.header(extranonce1, extranonce2, version, ntime, nonce))
    }
}

/// The fields of `mining.notify` that depend only on the job (previous hash, coinbase halves,
/// merkle branch, version, bits), as JSON text. Built once per job and shared by every miner.
pub fn job_fields(job: &Job) -> String {
    let template = &job.template;
    let mut out = String::with_capacity(
        100 + 2 * (job.coinbase.coinb1.len() + job.coinbase.coinb2.len())
            + 67 * template.merkle_branch.len(),
    );
    out.push('"');
    out.push_str(&stratum_prev_hash(&template.prev_hash));
    out.push_str("\",\"");
    out.push_str(&hex::encode(&job.coinbase.coinb1));
    out.push_str("\",\"");
    out.push_str(&hex::encode(&job.coinbase.coinb2));
    out.push_str("\",[");
    for (i, node) in template.merkle_branch.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(&hex::encode(node));
        out.push('"');
    }
    out.push_str(&format!(
        "],\"{:08x}\",\"{:08x}\"",
        template.version, template.bits
    ));
    out
}

/// A `mining.notify` line from a job's [`job_fields`] and what is per miner: the job id (hex
/// digits), the header time and whether older jobs are void.
pub fn notify_line(job_id: &str, fields: &str, ntime: u32, clean: bool) -> String {
    format!(
        "{{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"{job_id}\",{fields},\"{ntime:08x}\",{clean}]}}\n"
    )
}

/// The previous block hash as `mining.notify` carries it: internal byte order with each 4-byte
/// word byte-swapped (what cgminer-derived firmware expects).
pub fn stratum_prev_hash(prev_hash: &Hash32) -> String {
    hex::encode(swap_words(prev_hash))
}

/// Reverses [`stratum_prev_hash`].
pub fn parse_stratum_prev_hash(text: &str) -> Option<Hash32> {
    let bytes: [u8; 32] = hex::decode(text).ok()?.try_into().ok()?;
    Some(swap_words(&bytes))
}

fn swap_words(bytes: &Hash32) -> Hash32 {
    let mut out = [0u8; 32];
    for (to, from) in out.chunks_exact_mut(4).zip(bytes.chunks_exact(4)) {
        to.copy_from_slice(&[from[3], from[2], from[1], from[0]]);
    }
    out
}
