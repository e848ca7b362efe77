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

/// Payout outputs a pool commits to in every coinbase built on a template (payouts in the
/// coinbase), with the ledger's record of them, which a block found on them carries to the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedPayouts {
    /// The table's id (increasing).
    pub id: u64,
    /// The outputs, after the pool's remainder output, in coinbase order.
    pub outputs: Vec<TxOutput>,
    /// The ledger's record of the table (JSON), stored with a block found on it.
    pub record: String,
}

/// Weight units one output adds to a transaction: 4 × (8-byte value, script length, script).
pub fn output_weight(script_len: usize) -> u64 {
    let mut len = Vec::new();
    write_compact_size(script_len as u64, &mut len);
    4 * (8 + len.len() + script_len) as u64
}

/// The weight of a coinbase as it goes into a block (with its witness on segwit chains).
pub fn coinbase_weight(parts: &CoinbaseParts, extranonce_len: usize) -> u64 {
    let base = (parts.coinb1.len() + extranonce_len + parts.coinb2.len()) as u64;
    // Segwit: marker and flag, one witness item count, a 32-byte item with its length.
    let witness = if parts.segwit { 2 + 1 + 1 + 32 } else { 0 };
    4 * base + witness
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
        sha256d_parts(&self.parts(extranonce1, extranonce2))
    }

    /// The coinbase without its witness, in the four parts the extranonces split it into.
    #[inline]
    pub fn parts<'a>(&'a self, extranonce1: &'a [u8], extranonce2: &'a [u8]) -> [&'a [u8]; 4] {
        [&self.coinb1, extranonce1, extranonce2, &self.coinb2]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Target;
    use bitcoin::consensus::deserialize;
    use bitcoin::Transaction;

    const P2WPKH: &str = "0014000102030405060708090a0b0c0d0e0f10111213";

    fn template(height: u64, aux: Vec<u8>, segwit: bool, value: u64) -> WorkTemplate {
        let witness_commitment = segwit.then(|| {
            let mut script = vec![0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];
            script.extend([0x5c; 32]);
            script
        });
        WorkTemplate {
            id: 1,
            height,
            version: 0x2000_0000,
            prev_hash: [7; 32],
            bits: 0x207f_ffff,
            network_target: Target::from_compact(0x207f_ffff),
            curtime: 1_700_000_000,
            mintime: 1_700_000_000,
            coinbase_value: value,
            coinbase_aux: aux,
            witness_commitment,
            merkle_branch: Vec::new(),
            tx_count: 0,
            transactions: Vec::new(),
            fees: 0,
            longpoll_id: None,
            merged: None,
            payouts: None,
        }
    }

    fn layout(tag: &[u8]) -> CoinbaseLayout {
        CoinbaseLayout {
            extranonce1_len: 4,
            extranonce2_len: 8,
            tag: tag.to_vec(),
        }
    }

    fn script(hex: &str) -> Vec<u8> {
        hex::decode(hex).expect("hex")
    }

    /// The coinbase without witness, decoded, for a 12-byte extranonce.
    fn decode(parts: &CoinbaseParts) -> Transaction {
        let mut bytes = Vec::new();
        parts.write_without_witness(&[1; 4], &[2; 8], &mut bytes);
        deserialize(&bytes).expect("the coinbase decodes")
    }

    #[test]
    fn single_payout_spec_is_the_old_coinbase() {
        // Recorded from CoinbaseParts::build before CoinbaseSpec existed.
        let cases = [
            (
                template(840_000, Vec::new(), true, 312_500_000),
                layout(b"/quarry/"),
                "02000000010000000000000000000000000000000000000000000000000000000000000000ffffffff1a0340d10c0c",
                "082f7175617272792fffffffff02205fa01200000000160014000102030405060708090a0b0c0d0e0f101112130000000000000000266a24aa21a9ed5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c00000000",
            ),
            (
                template(16, vec![1, 2, 3], false, 5_000_000_000),
                CoinbaseLayout {
                    extranonce1_len: 4,
                    extranonce2_len: 4,
                    tag: Vec::new(),
                },
                "02000000010000000000000000000000000000000000000000000000000000000000000000ffffffff0d6001020308",
                "ffffffff0100f2052a01000000160014000102030405060708090a0b0c0d0e0f1011121300000000",
            ),
        ];
        for (template, layout, coinb1, coinb2) in cases {
            let spec = CoinbaseSpec::single(layout.clone(), script(P2WPKH));
            let parts = CoinbaseParts::from_spec(&template, &spec).expect("builds");
            assert_eq!(hex::encode(&parts.coinb1), coinb1);
            assert_eq!(hex::encode(&parts.coinb2), coinb2);
            assert_eq!(parts.segwit, template.witness_commitment.is_some());
            let wrapped = CoinbaseParts::build(&template, &script(P2WPKH), &layout);
            assert_eq!(wrapped, Ok(parts), "build is the single-payout spec");
        }
    }

    #[test]
    fn payouts_sum_to_the_value_in_spec_order() {
        let value = 312_500_000;
        let template = template(840_000, Vec::new(), true, value);
        let (pool, alice, bob) = (script(P2WPKH), script("51"), script("0020aa"));
        let spec = CoinbaseSpec {
            payouts: Payouts {
                remainder_script: pool.clone(),
                fixed: vec![
                    TxOutput::new(100_000_000, alice.clone()),
                    TxOutput::new(2_500, bob.clone()),
                ],
            },
            extra_outputs: vec![TxOutput::op_return(b"quarry")],
            ..CoinbaseSpec::single(layout(b"/q/"), Vec::new())
        };
        let tx = decode(&CoinbaseParts::from_spec(&template, &spec).expect("builds"));
        let got: Vec<(u64, Vec<u8>)> = tx
            .output
            .iter()
            .map(|o| (o.value.to_sat(), o.script_pubkey.to_bytes()))
            .collect();
        let witness = template.witness_commitment.clone().expect("segwit");
        assert_eq!(
            got,
            vec![
                (value - 100_002_500, pool),
                (100_000_000, alice),
                (2_500, bob),
                (0, b"\x6a\x06quarry".to_vec()),
                (0, witness),
            ],
            "remainder, fixed in order, extra outputs, witness commitment last"
        );
        assert_eq!(got.iter().map(|(v, _)| v).sum::<u64>(), value);
    }

    #[test]
    fn fixed_amounts_over_the_value_are_refused() {
        let mut spec = CoinbaseSpec::single(layout(b"/q/"), script(P2WPKH));
        spec.payouts.fixed = vec![TxOutput::new(600, script("51"))];
        spec.extra_outputs = vec![TxOutput::new(500, script("52"))];
        let err = CoinbaseParts::from_spec(&template(100, Vec::new(), true, 1_000), &spec)
            .expect_err("1,100 sat out of 1,000");
        assert_eq!(
            err,
            CoinbaseError::PayoutsExceedValue {
                committed: 1_100,
                value: 1_000
            }
        );
        assert!(err.to_string().contains("100 more than"), "{err}");

        // Exactly the value: the remainder output stays, at zero, so positions do not move.
        let outputs = spec.outputs(1_100).expect("fits exactly");
        assert_eq!(outputs.len(), 3);
        assert_eq!(outputs[0], TxOutput::new(0, script(P2WPKH)));
    }

    #[test]
    fn a_spec_over_the_script_sig_budget_is_refused_with_what_took_the_room() {
        // Height 840,000 (4), a 44-byte AuxPoW commitment (45), extranonce (13): 62 bytes, so a
        // 37-byte tag (38) fills the 100 exactly and a 38-byte one is one over.
        let template = template(840_000, Vec::new(), true, 312_500_000);
        let mut aux_pow = vec![0xfa, 0xbe, 0x6d, 0x6d];
        aux_pow.extend([0x11; 32]);
        aux_pow.extend(1u32.to_le_bytes());
        aux_pow.extend(0u32.to_le_bytes());
        let mut spec = CoinbaseSpec::single(layout(&[b'q'; 37]), script(P2WPKH));
        spec.commitments = vec![aux_pow];
        CoinbaseParts::from_spec(&template, &spec).expect("100 bytes fit");

        spec.layout.tag.push(b'q');
        let err = CoinbaseParts::from_spec(&template, &spec).expect_err("101 bytes");
        assert_eq!(
            err,
            CoinbaseError::ScriptSigTooLong {
                len: 101,
                height: 4,
                coinbase_aux: 0,
                commitments: 45,
                extranonce: 13,
                tag: 39,
            }
        );
        let message = err.to_string();
        assert!(message.contains("1 over"), "{message}");
        assert!(message.contains("commitments 45"), "{message}");
    }

    #[test]
    fn empty_scripts_are_refused() {
        let template = template(100, Vec::new(), false, 1_000);
        let empty = CoinbaseSpec::single(layout(b"/q/"), Vec::new());
        assert_eq!(
            CoinbaseParts::from_spec(&template, &empty),
            Err(CoinbaseError::EmptyPayout)
        );
        let mut spec = CoinbaseSpec::single(layout(b"/q/"), script(P2WPKH));
        spec.extra_outputs = vec![TxOutput::op_return(b""), TxOutput::new(0, Vec::new())];
        assert_eq!(
            CoinbaseParts::from_spec(&template, &spec),
            Err(CoinbaseError::EmptyScript {
                kind: "extra output",
                index: 1
            })
        );
    }
}
