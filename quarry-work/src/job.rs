//! A job: a template plus the coinbase for one payout. Shared by every miner it is sent to.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::coinbase::{
    write_compact_size, CoinbaseError, CoinbaseLayout, CoinbaseParts, CoinbaseSpec,
};
use crate::hash::Hash32;
use crate::merkle;
use crate::template::WorkTemplate;

/// Size of a block header.
pub const HEADER_LEN: usize = 80;

/// Work that can be sent to miners.
#[derive(Debug)]
pub struct Job {
    /// The template it builds on.
    pub template: Arc<WorkTemplate>,
    /// Its coinbase, split around the extranonce.
    pub coinbase: CoinbaseParts,
    /// The payout script the coinbase pays (the remainder's, for a [`CoinbaseSpec`]).
    pub payout_script: Vec<u8>,
    /// Text a protocol layer derives from the job once for every miner it goes to (Stratum
    /// V1's notify fields): thousands of miners share one job, so it is encoded once.
    encoded: OnceLock<String>,
}

impl Job {
    /// Builds a job paying the whole value to `payout_script` on `template`.
    ///
    /// # Errors
    /// When the coinbase cannot be built (see [`CoinbaseParts::from_spec`]).
    pub fn new(
        template: Arc<WorkTemplate>,
        payout_script: &[u8],
        layout: &CoinbaseLayout,
    ) -> Result<Self, CoinbaseError> {
        let spec = CoinbaseSpec::single(layout.clone(), payout_script.to_vec());
        Job::from_spec(template, &spec)
    }

    /// Builds a job whose coinbase is `spec` on `template`.
    ///
    /// # Errors
    /// When the coinbase cannot be built (see [`CoinbaseParts::from_spec`]).
    pub fn from_spec(
        template: Arc<WorkTemplate>,
        spec: &CoinbaseSpec,
    ) -> Result<Self, CoinbaseError> {
        let coinbase = CoinbaseParts::from_spec(&template, spec)?;
        Ok(Job::from_parts(
            template,
            coinbase,
            spec.payouts.remainder_script.clone(),
        ))
    }

    /// A job from a coinbase built elsewhere (an upstream pool's, for a proxy).
    pub fn from_parts(
        template: Arc<WorkTemplate>,
        coinbase: CoinbaseParts,
        payout_script: Vec<u8>,
    ) -> Self {
        Job {
            template,
            coinbase,
            payout_script,
            encoded: OnceLock::new(),
        }
    }

    /// The job's encoding, built by `encode` on first use and shared from then on.
    pub fn encoded(&self, encode: impl FnOnce(&Job) -> String) -> &str {
        self.encoded.get_or_init(|| encode(self))
    }

    /// The 80-byte header for a submission.
    #[inline]
    pub fn header(
        &self,
        extranonce1: &[u8],
        extranonce2: &[u8],
        version: u32,
        ntime: u32,
        nonce: u32,
    ) -> [u8; HEADER_LEN] {
        let leaf = self.coinbase.txid(extranonce1, extranonce2);
        let root = merkle::root_from_branch(&leaf, &self.template.merkle_branch);
        header_bytes(
            version,
            &self.template.prev_hash,
            &root,
            ntime,
            self.template.bits,
            nonce,
        )
    }

    /// The full block for a header built from this job with these extranonces.
    pub fn block(
        &self,
        header: &[u8; HEADER_LEN],
        extranonce1: &[u8],
        extranonce2: &[u8],
    ) -> Vec<u8> {
        let template = &self.template;
        let mut block = Vec::with_capacity(
            HEADER_LEN
                + 9
                + self.coinbase.coinb1.len()
                + self.coinbase.coinb2.len()
                + 64
                + template.transactions.len(),
        );
        block.extend_from_slice(header);
        write_compact_size(template.tx_count as u64 + 1, &mut block);
        self.coinbase
            .write_for_block(extranonce1, extranonce2, &mut block);
        block.extend_from_slice(&template.transactions);
        block
    }
}

/// Serializes a block header.
pub fn header_bytes(
    version: u32,
    prev_hash: &Hash32,
    merkle_root: &Hash32,
    ntime: u32,
    bits: u32,
    nonce: u32,
) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&version.to_le_bytes());
    header[4..36].copy_from_slice(prev_hash);
    header[36..68].copy_from_slice(merkle_root);
    header[68..72].copy_from_slice(&ntime.to_le_bytes());
    header[72..76].copy_from_slice(&bits.to_le_bytes());
    header[76..80].copy_from_slice(&nonce.to_le_bytes());
    header
}

/// Builds jobs on demand and keeps one per payout script for the current template, so that in
/// solo mode a thousand miners paying to the same address share one coinbase.
#[derive(Debug)]
pub struct JobFactory {
    layout: CoinbaseLayout,
    template_id: Option<u64>,
    jobs: HashMap<Vec<u8>, Arc<Job>>,
}

impl JobFactory {
    /// A factory laying out coinbases with `layout`.
    pub fn new(layout: CoinbaseLayout) -> Self {
        JobFactory {
            layout,
            template_id: None,
            jobs: HashMap::new(),
        }
    }

    /// The coinbase layout.
    pub fn layout(&self) -> &CoinbaseLayout {
        &self.layout
    }

    /// The job paying `payout_script` on `template`; jobs of older templates are dropped.
    ///
    /// # Errors
    /// When the coinbase cannot be built.
    pub fn job_for(
        &mut self,
        template: &Arc<WorkTemplate>,
        payout_script: &[u8],
    ) -> Result<Arc<Job>, CoinbaseError> {
        if self.template_id != Some(template.id) {
            self.jobs.clear();
            self.template_id = Some(template.id);
        }
        if let Some(job) = self.jobs.get(payout_script) {
            return Ok(Arc::clone(job));
        }
        let mut spec = CoinbaseSpec::single(self.layout.clone(), payout_script.to_vec());
        if let Some(merged) = &template.merged {
            spec.commitments = merged.commitments();
            spec.extra_outputs = merged.extra_outputs();
        }
        if let Some(payouts) = &template.payouts {
            spec.payouts.fixed.clone_from(&payouts.outputs);
        }
        let job = Arc::new(Job::from_spec(Arc::clone(template), &spec)?);
        self.jobs.insert(payout_script.to_vec(), Arc::clone(&job));
        Ok(job)
    }
}
