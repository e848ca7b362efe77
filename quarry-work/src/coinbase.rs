//! The coinbase transaction, split around the extranonce as Stratum sends it.
//!
//! A [`CoinbaseSpec`] says what goes in; [`CoinbaseParts::from_spec`] lays it out.
//!
//! Layout of the scriptSig (with no commitments, the same as Bitcoin Core's recorded vectors):
//! `BIP34 height push | coinbaseaux bytes | one push per commitment | push(extranonce1 ‖
//! extranonce2) | push(tag)`.
//! Outputs: the payouts (the remainder first, then the fixed amounts in order), the extra outputs,
//! then the witness commitment last (segwit chains). The witness is one 32-byte zero item, the
//! witness reserved value.
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

/// `OP_RETURN`: an output that can never be spent, for data.
const OP_RETURN: u8 = 0x6a;

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

/// One transaction output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxOutput {
    /// Satoshis.
    pub value: u64,
    /// The script that locks it.
    pub script_pubkey: Vec<u8>,
}

impl TxOutput {
    /// An output of `value` satoshis to `script_pubkey`.
    pub fn new(value: u64, script_pubkey: Vec<u8>) -> Self {
        TxOutput {
            value,
            script_pubkey,
        }
    }

    /// A zero-value `OP_RETURN <data>` output: data in the block that no node keeps as a coin.
    pub fn op_return(data: &[u8]) -> Self {
        let mut script_pubkey = vec![OP_RETURN];
        script_pubkey.extend_from_slice(&push_bytes(data));
        TxOutput::new(0, script_pubkey)
    }

    /// Appends the output's serialization.
    pub fn write(&self, out: &mut Vec<u8>) {
        write_output(self.value, &self.script_pubkey, out);
    }
}

/// Who is paid the coinbase value. The remainder rule makes the outputs sum to the template's
/// value exactly, whatever it is: a coinbase that pays less burns the difference, one that pays
/// more is an invalid block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payouts {
    /// Gets what the fixed payouts and extra outputs leave; its output comes first, and is
    /// written even at zero so that output positions never depend on the fees (and a coinbase
    /// always has an output).
    pub remainder_script: Vec<u8>,
    /// Fixed amounts, written after the remainder in this order.
    pub fixed: Vec<TxOutput>,
}

/// Everything a coinbase carries besides the template's own data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoinbaseSpec {
    /// Extranonce sizes and the tag.
    pub layout: CoinbaseLayout,
    /// The value's recipients.
    pub payouts: Payouts,
    /// Opaque scriptSig data (e.g. a merged-mining commitment), each as one push after the
    /// height and coinbaseaux and before the extranonce, so its bytes stay contiguous and at a
    /// place the miner cannot shift.
    pub commitments: Vec<Vec<u8>>,
    /// Outputs after the payouts (e.g. an `OP_RETURN`); their values come out of the remainder.
    pub extra_outputs: Vec<TxOutput>,
}

impl CoinbaseSpec {
    /// The whole value to `payout_script`: the coinbase Quarry has always built.
    pub fn single(layout: CoinbaseLayout, payout_script: Vec<u8>) -> Self {
        CoinbaseSpec {
            layout,
            payouts: Payouts {
                remainder_script: payout_script,
                fixed: Vec::new(),
            },
            commitments: Vec::new(),
            extra_outputs: Vec::new(),
        }
    }

    /// The outputs paying `coinbase_value`, in coinbase order (the witness commitment, which
    /// belongs to the template, is not among them). They sum to `coinbase_value` exactly.
    ///
    /// # Errors
    /// An empty script, or fixed amounts and extra outputs over `coinbase_value`.
    pub fn outputs(&self, coinbase_value: u64) -> Result<Vec<TxOutput>, CoinbaseError> {
        if self.payouts.remainder_script.is_empty() {
            return Err(CoinbaseError::EmptyPayout);
        }
        let lists = [
            ("fixed payout", &self.payouts.fixed),
            ("extra output", &self.extra_outputs),
        ];
        let mut committed = 0u64;
        for (kind, list) in lists {
            for (index, output) in list.iter().enumerate() {
                // An empty script is anyone-can-spend: a typo away from giving the value away.
                if output.script_pubkey.is_empty() {
                    return Err(CoinbaseError::EmptyScript { kind, index });
                }
                committed = committed.saturating_add(output.value);
            }
        }
        let Some(remainder) = coinbase_value.checked_sub(committed) else {
            return Err(CoinbaseError::PayoutsExceedValue {
                committed,
                value: coinbase_value,
            });
        };
        let mut outputs =
            Vec::with_capacity(1 + self.payouts.fixed.len() + self.extra_outputs.len());
        outputs.push(TxOutput::new(
            remainder,
            self.payouts.remainder_script.clone(),
        ));
        outputs.extend(self.payouts.fixed.iter().cloned());
        outputs.extend(self.extra_outputs.iter().cloned());
        Ok(outputs)
    }
}

/// Why a coinbase cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoinbaseError {
    /// The scriptSig would exceed the consensus limit. Each field is the bytes one part takes,
    /// push opcodes included, so the message says what to shorten.
    #[error(
        "coinbase scriptSig would be {len} bytes, {over} over the limit of {MAX_SCRIPT_SIG_LEN}: \
         BIP34 height {height}, coinbaseaux {coinbase_aux}, commitments {commitments}, \
         extranonce {extranonce}, tag {tag}",
        over = .len.saturating_sub(MAX_SCRIPT_SIG_LEN)
    )]
    ScriptSigTooLong {
        /// Would-be length.
        len: usize,
        /// The BIP34 height push.
        height: usize,
        /// The node's coinbaseaux bytes.
        coinbase_aux: usize,
        /// The commitment pushes together.
        commitments: usize,
        /// The extranonce push.
        extranonce: usize,
        /// The tag push.
        tag: usize,
    },
    /// Extranonce sizes outside what a single push allows.
    #[error("extranonce of {0} bytes is not supported")]
    ExtranonceSize(usize),
    /// The remainder script is empty.
    #[error("payout script is empty")]
    EmptyPayout,
    /// A fixed payout or extra output has an empty script.
    #[error("{kind} {index} has an empty script")]
    EmptyScript {
        /// `fixed payout` or `extra output`.
        kind: &'static str,
        /// Its position in its list.
        index: usize,
    },
    /// Fixed payouts and extra outputs ask for more than the coinbase holds.
    #[error(
        "fixed payouts and extra outputs total {committed} sat, {over} more than the coinbase \
         value of {value} sat",
        over = .committed.saturating_sub(*.value)
    )]
    PayoutsExceedValue {
        /// Their total (saturating).
        committed: u64,
        /// The template's coinbase value.
        value: u64,
    },
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
    /// As [`CoinbaseParts::from_spec`].
    pub fn build(
        template: &WorkTemplate,
        payout_script: &[u8],
        layout: &CoinbaseLayout,
    ) -> Result<Self, CoinbaseError> {
        let spec = CoinbaseSpec::single(layout.clone(), payout_script.to_vec());
        Self::from_spec(template, &spec)
    }

    /// Builds the coinbase of `template` as `spec` describes.
    ///
    /// # Errors
    /// A scriptSig over 100 bytes, an unusable extranonce size, an empty script, or fixed
    /// amounts over the template's value.
    pub fn from_spec(template: &WorkTemplate, spec: &CoinbaseSpec) -> Result<Self, CoinbaseError> {
        let outputs = spec.outputs(template.coinbase_value)?;
        let layout = &spec.layout;
        let extranonce_len = layout.extranonce_len();
        if !(2..=75).contains(&extranonce_len) {
            return Err(CoinbaseError::ExtranonceSize(extranonce_len));
        }
        let height = i64::try_from(template.height).unwrap_or(i64::MAX);
        let height_push = Builder::new().push_int(height).into_bytes();
        let commitments: Vec<u8> = spec
            .commitments
            .iter()
            .flat_map(|data| push_one(data))
            .collect();
        let tag_push = push_bytes(&layout.tag);
        let script_len = height_push.len()
            + template.coinbase_aux.len()
            + commitments.len()
            + 1
            + extranonce_len
            + tag_push.len();
        if script_len > MAX_SCRIPT_SIG_LEN {
            return Err(CoinbaseError::ScriptSigTooLong {
                len: script_len,
                height: height_push.len(),
                coinbase_aux: template.coinbase_aux.len(),
                commitments: commitments.len(),
                extranonce: 1 + extranonce_len,
                tag: tag_push.len(),
            });
        }

        let mut coinb1 = Vec::with_capacity(48 + script_len);
        coinb1.extend_from_slice(&COINBASE_TX_VERSION.to_le_bytes());
        coinb1.push(1); // one input
        coinb1.extend_from_slice(&[0u8; 32]);
        coinb1.extend_from_slice(&u32::MAX.to_le_bytes());
        write_compact_size(script_len as u64, &mut coinb1);
        coinb1.extend_from_slice(&height_push);
        coinb1.extend_from_slice(&template.coinbase_aux);
        coinb1.extend_from_slice(&commitments);
        coinb1.push(extranonce_len as u8);

        let mut coinb2 = Vec::with_capacity(128);
        coinb2.extend_from_slice(&tag_push);
        coinb2.extend_from_slice(&u32::MAX.to_le_bytes()); // sequence
        let count = outputs.len() + usize::from(template.witness_commitment.is_some());
        write_compact_size(count as u64, &mut coinb2);
        for output in &outputs {
            output.write(&mut coinb2);
        }
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
        len => match u16::try_from(len) {
            Ok(len) => {
                out.push(0x4d); // OP_PUSHDATA2; such pushes fail the 100-byte check in a scriptSig
                out.extend_from_slice(&len.to_le_bytes());
            }
            Err(_) => {
                out.push(0x4e); // OP_PUSHDATA4
                out.extend_from_slice(&(len as u32).to_le_bytes());
            }
        },
    }
    out.extend_from_slice(data);
    out
}

/// One push of `data`, even when empty (`OP_0`): a commitment is always one item of the script.
fn push_one(data: &[u8]) -> Vec<u8> {
    if data.is_empty() {
        return vec![0x00];
    }
    push_bytes(data)
}

/// Appends one output: value, then the length-prefixed script. Coinbases and SV2 templates share
/// it so the two cannot serialize outputs differently.
pub fn write_output(value: u64, script: &[u8], out: &mut Vec<u8>) {
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
