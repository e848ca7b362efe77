//! The coinbase transaction, split around the extranonce as Stratum sends it.
//!
//! Layout of the scriptSig (the same as Bitcoin Core's recorded vectors):
//! `BIP34 height push | coinbaseaux bytes | push(extranonce1 ‖ extranonce2) | push(tag)`.
//! Outputs: the payout, then the witness commitment (segwit chains). The witness is one 32-byte
//! zero item, the witness reserved value.
//!
//! `coinb1` ends with the extranonce's push opcode and `coinb2` starts with the tag's push, so the
//! miner's bytes land inside a single push and cannot change the script's structure.

use bitcoin::script::Builder;

use crate::hash::{sha256d_parts, Hash32};
use crate::template::WorkTemplate;

/// Consensus limit on the coinbase scriptSig (`bad-cb-length`).
pub const MAX_SCRIPT_SIG_LEN: usize = 100;

/// Transaction version of the coinbase.
const COINBASE_TX_VERSION: u32 = 2;

/// How the pool lays out its coinbases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoinbaseLayout {
    /// Bytes of the per-connection extranonce.
    pub extranonce1_len: usize,
    /// Bytes the miner rolls.
    pub extranonce2_len: usize,
    /// The pool's tag, pushed after the extranonce (e.g. `/quarry/`).
    pub tag: Vec<u8>,
}

impl CoinbaseLayout {
    /// Length of the extranonce push.
    pub fn extranonce_len(&self) -> usize {
        self.extranonce1_len + self.extranonce2_len
    }
}

/// Why a coinbase cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoinbaseError {
    /// The scriptSig would exceed the consensus limit.
    #[error("coinbase scriptSig would be {len} bytes, the limit is {MAX_SCRIPT_SIG_LEN}: shorten the coinbase tag")]
    ScriptSigTooLong {
        /// Would-be length.
        len: usize,
    },
    /// Extranonce sizes outside what a single push allows.
    #[error("extranonce of {0} bytes is not supported")]
    ExtranonceSize(usize),
    /// The payout script is empty.
    #[error("payout script is empty")]
    EmptyPayout,
}

/// A coinbase as two halves around the extranonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoinbaseParts {
    /// Serialized (without witness) up to and including the extranonce push opcode.
    pub coinb1: Vec<u8>,
    /// Serialized from the tag push to the end.
    pub coinb2: Vec<u8>,
    /// Whether the block carries a witness commitment, so the coinbase needs its witness.
    pub segwit: bool,
}

impl CoinbaseParts {
    /// Builds the coinbase of `template` paying its whole value to `payout_script`.
    ///
    /// # Errors
    /// A scriptSig over 100 bytes, an unusable extranonce size or an empty payout script.
    pub fn build(
        template: &WorkTemplate,
        payout_script: &[u8],
        layout: &CoinbaseLayout,
    ) -> Result<Self, CoinbaseError> {
        if payout_script.is_empty() {
            return Err(CoinbaseError::EmptyPayout);
        }
        let extranonce_len = layout.extranonce_len();
        if !(2..=75).contains(&extranonce_len) {
            return Err(CoinbaseError::ExtranonceSize(extranonce_len));
        }
        let height = i64::try_from(template.height).unwrap_or(i64::MAX);
        let height_push = Builder::new().push_int(height).into_bytes();
        let tag_push = push_bytes(&layout.tag);
        let script_len =
            height_push.len() + template.coinbase_aux.len() + 1 + extranonce_len + tag_push.len();
        if script_len > MAX_SCRIPT_SIG_LEN {
            return Err(CoinbaseError::ScriptSigTooLong { len: script_len });
        }

        let mut coinb1 = Vec::with_capacity(64);
        coinb1.extend_from_slice(&COINBASE_TX_VERSION.to_le_bytes());
        coinb1.push(1); // one input
        coinb1.extend_from_slice(&[0u8; 32]);
        coinb1.extend_from_slice(&u32::MAX.to_le_bytes());
        write_compact_size(script_len as u64, &mut coinb1);
        coinb1.extend_from_slice(&height_push);
        coinb1.extend_from_slice(&template.coinbase_aux);
        coinb1.push(extranonce_len as u8);

        let mut coinb2 = Vec::with_capacity(128);
        coinb2.extend_from_slice(&tag_push);
        coinb2.extend_from_slice(&u32::MAX.to_le_bytes()); // sequence
        let outputs = 1 + usize::from(template.witness_commitment.is_some());
        write_compact_size(outputs as u64, &mut coinb2);
        write_output(template.coinbase_value, payout_script, &mut coinb2);
        if let Some(commitment) = &template.witness_commitment {
            write_output(0, commitment, &mut coinb2);
        }
        coinb2.extend_from_slice(&0u32.to_le_bytes()); // lock time

        Ok(CoinbaseParts {
            coinb1,
            coinb2,
            segwit: template.witness_commitment.is_some(),
        })
    }

    /// The txid (merkle leaf) for the given extranonces.
    #[inline]
    pub fn txid(&self, extranonce1: &[u8], extranonce2: &[u8]) -> Hash32 {
        sha256d_parts(&[&self.coinb1, extranonce1, extranonce2, &self.coinb2])
    }

    /// Appends the coinbase as it goes into the block: with its witness on segwit chains.
    pub fn write_for_block(&self, extranonce1: &[u8], extranonce2: &[u8], out: &mut Vec<u8>) {
        if !self.segwit {
            self.write_without_witness(extranonce1, extranonce2, out);
            return;
        }
        out.extend_from_slice(&self.coinb1[..4]);
        out.extend_from_slice(&[0x00, 0x01]); // segwit marker and flag
        out.extend_from_slice(&self.coinb1[4..]);
        out.extend_from_slice(extranonce1);
        out.extend_from_slice(extranonce2);
        let lock_time_at = self.coinb2.len() - 4;
        out.extend_from_slice(&self.coinb2[..lock_time_at]);
        out.push(1); // one witness item: the 32-byte witness reserved value
        out.push(32);
        out.extend_from_slice(&[0u8; 32]);
        out.extend_from_slice(&self.coinb2[lock_time_at..]);
    }

    /// Appends the coinbase without witness: the bytes that are hashed for the txid.
    pub fn write_without_witness(&self, extranonce1: &[u8], extranonce2: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.coinb1);
        out.extend_from_slice(extranonce1);
        out.extend_from_slice(extranonce2);
        out.extend_from_slice(&self.coinb2);
    }
}

/// A minimal push of `data` (empty data pushes nothing).
fn push_bytes(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 2);
    match data.len() {
        0 => return out,
        1..=75 => out.push(data.len() as u8),
        76..=255 => {
            out.push(0x4c); // OP_PUSHDATA1
            out.push(data.len() as u8);
        }
        _ => {
            out.push(0x4d); // OP_PUSHDATA2; longer tags fail the 100-byte check anyway
            out.extend_from_slice(&(data.len() as u16).to_le_bytes());
        }
    }
    out.extend_from_slice(data);
    out
}

fn write_output(value: u64, script: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&value.to_le_bytes());
    write_compact_size(script.len() as u64, out);
    out.extend_from_slice(script);
}

/// Bitcoin's CompactSize integer.
pub fn write_compact_size(n: u64, out: &mut Vec<u8>) {
    match n {
        0..=0xfc => out.push(n as u8),
        0xfd..=0xffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xfe);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        _ => {
            out.push(0xff);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}
