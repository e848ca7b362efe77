//! Kaspa work: a block template from kaspad, and the job every miner on it shares.
//!
//! A job is built once per template: the pre-PoW hash (the header hashed with timestamp and
//! nonce zero) and `kaspa_pow::State` (its kHeavyHash matrix and PoW hasher), which is most of
//! the work of checking a share. The bridges rebuild that state for every share; here each share
//! costs one kHeavyHash.

use std::sync::Arc;

use kaspa_consensus_core::hashing;
use kaspa_consensus_core::header::Header;
use kaspa_math::Uint256;
use kaspa_pow::State;
use quarry_work::Hash32;

use crate::target::difficulty_of;

/// A block template as the pool keeps it: kaspad's header (nonce unset) and what the ledger
/// needs to know about it.
#[derive(Debug, Clone)]
pub struct KaspaTemplate {
    /// The pool's own counter, increasing.
    pub id: u64,
    /// The header to mine (its `nonce` is ignored).
    pub header: Header,
    /// What the coinbase pays, sompi.
    pub reward: u64,
}

/// The work every miner on one template shares.
pub struct KaspaJob {
    /// The template it was built from.
    pub template: Arc<KaspaTemplate>,
    /// The header hashed with timestamp and nonce zero: what miners hash.
    pub pre_pow_hash: Hash32,
    /// The header's timestamp, Unix milliseconds.
    pub timestamp: u64,
    /// The network target.
    pub network_target: Uint256,
    state: State,
}

impl std::fmt::Debug for KaspaJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KaspaJob")
            .field("template", &self.template.id)
            .field("pre_pow_hash", &hex::encode(self.pre_pow_hash))
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

impl KaspaJob {
    /// The job for `template`.
    pub fn new(template: Arc<KaspaTemplate>) -> KaspaJob {
        let header = &template.header;
        let pre_pow_hash = hashing::header::hash_override_nonce_time(header, 0, 0).as_bytes();
        let state = State::new(header);
        KaspaJob {
            pre_pow_hash,
            timestamp: header.timestamp,
            network_target: Uint256::from_compact_target_bits(header.bits),
            state,
            template,
        }
    }

    /// kHeavyHash of the header with `nonce`, as the integer targets are compared with.
    pub fn pow(&self, nonce: u64) -> Uint256 {
        self.state.calculate_pow(nonce)
    }

    /// The block's hash with `nonce` (what kaspad names it by).
    pub fn block_hash(&self, nonce: u64) -> Hash32 {
        hashing::header::hash_override_nonce_time(&self.template.header, nonce, self.timestamp)
            .as_bytes()
    }

    /// The network difficulty, in stratum units.
    pub fn network_difficulty(&self) -> f64 {
        difficulty_of(&self.network_target)
    }

    /// The array job encoding: the pre-PoW hash as four little-endian u64 words.
    pub fn words(&self) -> [u64; 4] {
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(self.pre_pow_hash.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            *word = u64::from_le_bytes(bytes);
        }
        words
    }

    /// The single-hex job encoding (IceRiver, BzMiner): the pre-PoW hash, then the timestamp as
    /// a little-endian u64, 80 hex digits.
    pub fn hex(&self) -> String {
        let mut bytes = self.pre_pow_hash.to_vec();
        bytes.extend_from_slice(&self.timestamp.to_le_bytes());
        hex::encode(bytes)
    }
}

/// What the pool publishes to every Kaspa connection: the job paying the pool (pool mode), or
/// one job per miner address (solo mode: each miner's blocks pay that miner).
#[derive(Debug, Default)]
pub struct KaspaWork {
    /// The job whose coinbase pays the pool.
    pub pool: Option<Arc<KaspaJob>>,
    /// Solo mode: the job whose coinbase pays each address.
    pub solo: std::collections::HashMap<String, Arc<KaspaJob>>,
}

impl KaspaWork {
    /// Pool mode's work: one job for everyone.
    pub fn pool(job: Arc<KaspaJob>) -> KaspaWork {
        KaspaWork {
            pool: Some(job),
            solo: Default::default(),
        }
    }

    /// The job a miner paying `address` mines.
    pub fn job_for(&self, address: &str) -> Option<&Arc<KaspaJob>> {
        self.solo.get(address).or(self.pool.as_ref())
    }
}

/// A job as a miner sees it: only the pre-PoW hash and the timestamp come over the wire, so
/// the kHeavyHash state is built from those (rusty-kaspa's own matrix and PoW hasher; the
/// pool, which has the header, uses [`KaspaJob`]).
pub struct MinerJob {
    matrix: kaspa_pow::matrix::Matrix,
    hasher: kaspa_hashes::PowHash,
}

impl MinerJob {
    /// The job a `mining.notify` describes.
    pub fn new(pre_pow_hash: Hash32, timestamp: u64) -> MinerJob {
        let pre_pow = kaspa_hashes::Hash::from_bytes(pre_pow_hash);
        MinerJob {
            matrix: kaspa_pow::matrix::Matrix::generate(pre_pow),
            hasher: kaspa_hashes::PowHash::new(pre_pow, timestamp),
        }
    }

    /// kHeavyHash with `nonce`, as the integer targets are compared with.
    pub fn pow(&self, nonce: u64) -> Uint256 {
        let hash = self.hasher.clone().finalize_with_nonce(nonce);
        Uint256::from_le_bytes(self.matrix.heavy_hash(hash).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaspa_consensus_core::config::genesis::{DEVNET_GENESIS, SIMNET_GENESIS, TESTNET_GENESIS};

    fn job(header: Header) -> KaspaJob {
        KaspaJob::new(Arc::new(KaspaTemplate {
            id: 1,
            header,
            reward: 0,
        }))
    }

    fn uint(hex_be: &str) -> Uint256 {
        Uint256::from_hex(hex_be).expect("hex")
    }

    /// The testnet genesis header, from kaspa-consensus-core: its pre-PoW hash, both job
    /// encodings and its proof of work, as the note lists them (checked there with kaspa-pow).
    #[test]
    fn testnet_genesis_vectors() {
        let header = Header::from(&TESTNET_GENESIS);
        let nonce = header.nonce;
        assert_eq!(nonce, 83330);
        let job = job(header);
        assert_eq!(
            hex::encode(job.pre_pow_hash),
            "f8a14d381ea0ba5b0c169e8a41c222bce2fa42f4631d9fe4d226456006d7ea3d"
        );
        assert_eq!(
            job.words(),
            [
                6609771454773699064,
                13556611415092893196,
                16473918277081561826,
                4461614803248817874
            ]
        );
        assert_eq!(job.timestamp, 1633687894966);
        assert_eq!(
            job.hex(),
            "f8a14d381ea0ba5b0c169e8a41c222bce2fa42f4631d9fe4d226456006d7ea3db6fb625f7c010000"
        );
        assert_eq!(
            job.pow(nonce),
            uint("00001a5067451653f51227ec8487ef8ef5d55c021f277c86f76d206b30e1aa91")
        );
        assert!(job.pow(nonce) <= job.network_target);
        assert_eq!(
            job.pow(0),
            uint("276afe9a06eb2ffdcb1f9ebf598f1fab40f51581de4a3282676e979c4cb03822")
        );
        assert!(job.pow(0) > job.network_target);
        // kaspad's own literal for the block hash.
        assert_eq!(
            hex::encode(job.block_hash(nonce)),
            "f896a3034873be1739fc4359236899fd3d65d2bc94f9780df0d0da3eb1cc4370"
        );
    }

    /// rusty-kaspa's kHeavyHash inputs ([42; 32], timestamp 5435345234, nonce 432432432): the
    /// PoW hasher and the heavy hash the pool's checks are built from (values from the note,
    /// which reproduces rusty-kaspa's literals).
    #[test]
    fn rusty_kaspa_heavy_hash_vectors() {
        use kaspa_hashes::{Hash, KHeavyHash, PowHash};
        let input = Hash::from_bytes([42; 32]);
        let pow = PowHash::new(input, 5435345234).finalize_with_nonce(432432432);
        assert_eq!(
            hex::encode(pow.as_bytes()),
            "2fb72b63dd0dd0d82b00cd9f83d4eca0710b7eb8c05966888f39ebc578978abf"
        );
        assert_eq!(
            hex::encode(KHeavyHash::hash(input).as_bytes()),
            "ad4ded01225705fea9aa043dd0a4e22ca28068bb41d5c6e06d35ca507d5656c7"
        );
    }

    /// Simnet's genesis passes its proof of work; devnet's does not (genesis is exempt).
    #[test]
    fn other_genesis_headers() {
        let simnet = Header::from(&SIMNET_GENESIS);
        let nonce = simnet.nonce;
        let job_s = job(simnet);
        assert!(job_s.pow(nonce) <= job_s.network_target);
        let devnet = Header::from(&DEVNET_GENESIS);
        let nonce = devnet.nonce;
        let job_d = job(devnet);
        assert_eq!(
            hex::encode(job_d.pre_pow_hash),
            "10715db954e2a2aa995f813c27f5fd2c3a2da8c8f71db37de6dbb266d79df268"
        );
        assert!(job_d.pow(nonce) > job_d.network_target);
    }

    /// The miner's job, built from the wire's pre-PoW hash and timestamp alone, hashes as the
    /// pool's job built from the whole header.
    #[test]
    fn a_miner_job_from_the_wire_hashes_like_the_pools() {
        let header = Header::from(&TESTNET_GENESIS);
        let nonce = header.nonce;
        let pool = job(header);
        let miner = MinerJob::new(pool.pre_pow_hash, pool.timestamp);
        for n in [0, 1, nonce, u64::MAX] {
            assert_eq!(miner.pow(n), pool.pow(n));
        }
        assert_ne!(
            MinerJob::new(pool.pre_pow_hash, pool.timestamp + 1).pow(nonce),
            pool.pow(nonce)
        );
    }
}
