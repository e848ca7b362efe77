//! RSK (Rootstock) merged mining: no AuxPoW, a tagged coinbase output instead.
//!
//! The pool polls `mnr_getWork` ([`RskWork::from_get_work`]), puts [`RskWork::tag_output`] as
//! the **last** coinbase output, and when a share's hash meets [`RskWork::target`] submits
//! [`partial_merkle_params`] with `mnr_submitBitcoinBlockPartialMerkle` (RSKIP92, active since
//! Orchid). rskj finds its block by searching the serialized coinbase for the last
//! `RSKBLOCK:` tag; [`check_coinbase`] applies its rules to a coinbase before it goes out.

use serde_json::Value;

use crate::coinbase::TxOutput;
use crate::hash::{sha256d, sha256d_80, to_display_hex, Hash32};
use crate::target::Target;

/// The tag rskj looks for in the coinbase, before the 32-byte block hash.
pub const RSK_TAG: &[u8; 9] = b"RSKBLOCK:";

/// rskj's `MAX_BYTES_AFTER_MERGED_MINING_HASH`: at most this many coinbase bytes may follow the
/// hash after the last tag.
pub const MAX_BYTES_AFTER_HASH: usize = 128;

/// rskj rejects a coinbase of 64 bytes or fewer.
pub const MIN_COINBASE_LEN: usize = 65;

/// Longest `feesPaidToMiner` accepted: 78 decimal digits hold any 256-bit number.
const MAX_FEES_DIGITS: usize = 78;

/// One RSK work unit, from `mnr_getWork`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RskWork {
    /// `blockHashForMergedMining`: the bytes that follow the tag, in the order the hex prints
    /// them.
    pub block_hash: [u8; 32],
    /// `target`, which the share hash (as a Bitcoin hash number) must not exceed.
    pub target: Target,
    /// `feesPaidToMiner`, a decimal string in units of 1e-18 RBTC (kept as text: it can exceed
    /// every machine integer, and it is only reported).
    pub fees_paid: String,
    /// `notify`: true once per new work unit (new parent or fees up), false when polled again.
    pub notify: bool,
    /// `parentBlockHash`, in the order the hex prints it.
    pub parent_hash: [u8; 32],
}

/// Why an `mnr_getWork` result was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RskWorkError {
    /// The result is not a JSON object.
    #[error("mnr_getWork result is not an object")]
    NotAnObject,
    /// A field is absent.
    #[error("mnr_getWork result has no {0}")]
    MissingField(&'static str),
    /// A field has the wrong JSON type.
    #[error("mnr_getWork {field} must be a {expected}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// The JSON type it needs.
        expected: &'static str,
    },
    /// A hex field does not start with `0x`.
    #[error("mnr_getWork {0} must start with 0x")]
    MissingHexPrefix(&'static str),
    /// A hex field does not have 64 digits after `0x`.
    #[error("mnr_getWork {field} must have 64 hex digits after 0x, got {len} characters")]
    HexLength {
        /// The field.
        field: &'static str,
        /// Characters after the prefix.
        len: usize,
    },
    /// A hex field has a character that is not a hex digit.
    #[error("mnr_getWork {0} is not hex")]
    NotHex(&'static str),
    /// The target is zero: rskj never sends that (difficulty is at least 3).
    #[error("mnr_getWork target is zero")]
    ZeroTarget,
    /// `feesPaidToMiner` is not a decimal number of at most 78 digits.
    #[error("mnr_getWork feesPaidToMiner must be 1 to 78 decimal digits")]
    BadFees,
}

impl RskWork {
    /// Parses the `result` of `mnr_getWork` (what rskj's `MinerWork` serializes).
    ///
    /// # Errors
    /// A missing or mistyped field, a hash or target that is not `0x` + 64 hex digits, a zero
    /// target, or fees that are not a decimal string.
    pub fn from_get_work(result: &Value) -> Result<RskWork, RskWorkError> {
        let object = result.as_object().ok_or(RskWorkError::NotAnObject)?;
        let field = |name: &'static str| object.get(name).ok_or(RskWorkError::MissingField(name));
        let text = |name: &'static str| {
            field(name)?.as_str().ok_or(RskWorkError::WrongType {
                field: name,
                expected: "string",
            })
        };

        let block_hash = hex32(
            text("blockHashForMergedMining")?,
            "blockHashForMergedMining",
        )?;
        // Big-endian, zero-padded to 64 digits.
        let mut target = hex32(text("target")?, "target")?;
        if target == [0; 32] {
            return Err(RskWorkError::ZeroTarget);
        }
        target.reverse();
        let fees_paid = text("feesPaidToMiner")?;
        if fees_paid.is_empty()
            || fees_paid.len() > MAX_FEES_DIGITS
            || !fees_paid.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(RskWorkError::BadFees);
        }
        let notify = field("notify")?.as_bool().ok_or(RskWorkError::WrongType {
            field: "notify",
            expected: "boolean",
        })?;
        let parent_hash = hex32(text("parentBlockHash")?, "parentBlockHash")?;
        Ok(RskWork {
            block_hash,
            target: Target::from_le_bytes(target),
            fees_paid: fees_paid.to_owned(),
            notify,
            parent_hash,
        })
    }

    /// The zero-value output `OP_RETURN push(RSKBLOCK: ‖ hash)`, i.e. the script
    /// `6a 29 52534b424c4f434b3a <32 bytes>`. Make it the coinbase's last output, so that the
    /// bytes after the hash (the lock time) stay within [`MAX_BYTES_AFTER_HASH`].
    pub fn tag_output(&self) -> TxOutput {
        let mut data = [0u8; 41];
        data[..9].copy_from_slice(RSK_TAG);
        data[9..].copy_from_slice(&self.block_hash);
        TxOutput::op_return(&data)
    }

    /// Whether a share hash (internal order) solves this RSK block: `hash <= target`, the same
    /// comparison as Bitcoin's.
    pub fn is_solved_by(&self, share_hash: &Hash32) -> bool {
        self.target.is_met_by(share_hash)
    }

    /// [`check_coinbase`] for this work's block hash.
    ///
    /// # Errors
    /// As [`check_coinbase`].
    pub fn check_coinbase(&self, coinbase_tx: &[u8]) -> Result<(), RskCoinbaseError> {
        check_coinbase(coinbase_tx, &self.block_hash)
    }
}

/// Why rskj would not find `block_hash` in a coinbase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RskCoinbaseError {
    /// The coinbase is 64 bytes or shorter.
    #[error("coinbase of {len} bytes is too short for rsk (more than 64 needed)")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// No `RSKBLOCK:` anywhere.
    #[error("coinbase has no RSKBLOCK: tag")]
    TagMissing,
    /// The last tag is followed by fewer than 32 bytes.
    #[error("coinbase ends inside the hash after the last RSKBLOCK: tag")]
    HashTruncated,
    /// The last tag is followed by another hash: rskj only reads the last one, so a second tag
    /// (e.g. in a pool tag) hides ours.
    #[error("the last RSKBLOCK: tag carries another block hash")]
    HashMismatch,
    /// More than [`MAX_BYTES_AFTER_HASH`] bytes follow the hash.
    #[error("{after} bytes follow the rsk block hash, over the limit of {MAX_BYTES_AFTER_HASH}")]
    TooManyBytesAfterHash {
        /// How many.
        after: usize,
    },
}

/// Applies rskj's `ProofOfWorkRule` tag rules to a serialized coinbase: more than 64 bytes, the
/// **last** `RSKBLOCK:` followed by `block_hash`, and at most 128 bytes after that hash. (The
/// merkle proof is checked by the node from the header and branch.)
///
/// # Errors
/// The first rule broken.
pub fn check_coinbase(coinbase_tx: &[u8], block_hash: &[u8; 32]) -> Result<(), RskCoinbaseError> {
    if coinbase_tx.len() < MIN_COINBASE_LEN {
        return Err(RskCoinbaseError::TooShort {
            len: coinbase_tx.len(),
        });
    }
    let tag_at = coinbase_tx
        .windows(RSK_TAG.len())
        .rposition(|window| window == RSK_TAG)
        .ok_or(RskCoinbaseError::TagMissing)?;
    let hash_at = tag_at + RSK_TAG.len();
    let hash = coinbase_tx
        .get(hash_at..hash_at + 32)
        .ok_or(RskCoinbaseError::HashTruncated)?;
    if hash != block_hash {
        return Err(RskCoinbaseError::HashMismatch);
    }
    let after = coinbase_tx.len() - (hash_at + 32);
    if after > MAX_BYTES_AFTER_HASH {
        return Err(RskCoinbaseError::TooManyBytesAfterHash { after });
    }
    Ok(())
}

/// The five arguments of `mnr_submitBitcoinBlockPartialMerkle`, none with `0x`:
///
/// 0. `blockHashHex`: the Bitcoin block hash in display order (rskj only logs it).
/// 1. `blockHeaderHex`: the 80-byte header.
/// 2. `coinbaseHex`: the coinbase as given; pass the non-witness serialization.
/// 3. `merkleHashesHex`: the coinbase txid then each branch hash, internal order, separated by
///    single spaces (rskj skips the first entry and folds the rest, coinbase leftmost).
/// 4. `blockTxnCountHex`: the block's transaction count, lowercase hex (rskj parses it with
///    `Integer.parseInt(s, 16)` and RSKIP92 ignores it).
pub fn partial_merkle_params(
    header: &[u8; 80],
    coinbase_tx: &[u8],
    merkle_branch: &[Hash32],
    tx_count: usize,
) -> [String; 5] {
    let txid = sha256d(coinbase_tx);
    let hashes: Vec<String> = std::iter::once(&txid)
        .chain(merkle_branch)
        .map(hex::encode)
        .collect();
    [
        to_display_hex(&sha256d_80(header)),
        hex::encode(header),
        hex::encode(coinbase_tx),
        hashes.join(" "),
        format!("{tx_count:x}"),
    ]
}

/// `0x` + 64 hex digits, as the bytes print.
fn hex32(text: &str, field: &'static str) -> Result<[u8; 32], RskWorkError> {
    let digits = text
        .strip_prefix("0x")
        .ok_or(RskWorkError::MissingHexPrefix(field))?;
    if digits.len() != 64 {
        return Err(RskWorkError::HexLength {
            field,
            len: digits.len(),
        });
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(digits, &mut out).map_err(|_| RskWorkError::NotHex(field))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn work_json() -> Value {
        json!({
            "blockHashForMergedMining":
                "0xe0d8b5b3f4f0d3e1a7e2c2d1b0a99887766554433221100ffeeddccbbaa99887",
            "target": "0x0000000000000000000000000000000000000000000000000000000000ffffff",
            "feesPaidToMiner": "12345678901234567890",
            "notify": true,
            "parentBlockHash":
                "0x00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        })
    }

    #[test]
    fn parses_get_work() {
        let work = RskWork::from_get_work(&work_json()).expect("valid work");
        assert_eq!(work.block_hash[0], 0xe0, "hash bytes as printed");
        assert_eq!(work.parent_hash[31], 0xff);
        assert!(work.notify);
        assert_eq!(work.fees_paid, "12345678901234567890");
        let mut hash = [0u8; 32];
        hash[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert!(work.is_solved_by(&hash), "big-endian target, low bytes");
        hash[3] = 1;
        assert!(!work.is_solved_by(&hash));
    }

    #[test]
    fn refuses_bad_get_work() {
        let cases: [(&str, Value, RskWorkError); 8] = [
            (
                "blockHashForMergedMining",
                Value::Null,
                RskWorkError::WrongType {
                    field: "blockHashForMergedMining",
                    expected: "string",
                },
            ),
            (
                "target",
                json!("ffff"),
                RskWorkError::MissingHexPrefix("target"),
            ),
            (
                "target",
                json!("0xffff"),
                RskWorkError::HexLength {
                    field: "target",
                    len: 4,
                },
            ),
            (
                "target",
                json!(format!("0x{}", "0".repeat(64))),
                RskWorkError::ZeroTarget,
            ),
            (
                "parentBlockHash",
                json!(format!("0x{}", "zz".repeat(32))),
                RskWorkError::NotHex("parentBlockHash"),
            ),
            ("feesPaidToMiner", json!("-1"), RskWorkError::BadFees),
            (
                "feesPaidToMiner",
                json!("1".repeat(79)),
                RskWorkError::BadFees,
            ),
            (
                "notify",
                json!("true"),
                RskWorkError::WrongType {
                    field: "notify",
                    expected: "boolean",
                },
            ),
        ];
        for (field, value, error) in cases {
            let mut work = work_json();
            work[field] = value;
            assert_eq!(RskWork::from_get_work(&work), Err(error), "{field}");
        }
        let mut work = work_json();
        work.as_object_mut().expect("object").remove("notify");
        assert_eq!(
            RskWork::from_get_work(&work),
            Err(RskWorkError::MissingField("notify"))
        );
        assert_eq!(
            RskWork::from_get_work(&json!([1, 2])),
            Err(RskWorkError::NotAnObject)
        );
    }

    #[test]
    fn tag_output_is_op_return_41_bytes() {
        let work = RskWork::from_get_work(&work_json()).expect("valid work");
        let output = work.tag_output();
        assert_eq!(output.value, 0);
        let mut expected = hex::decode("6a2952534b424c4f434b3a").expect("hex");
        expected.extend_from_slice(&work.block_hash);
        assert_eq!(output.script_pubkey, expected);
    }

    #[test]
    fn coinbase_tag_rules() {
        let hash = [0xab; 32];
        let other = [0xcd; 32];
        let tagged = |before: usize, hash: &[u8; 32], after: usize| {
            let mut tx = vec![0x11; before];
            tx.extend_from_slice(RSK_TAG);
            tx.extend_from_slice(hash);
            tx.extend(std::iter::repeat_n(0x22, after));
            tx
        };
        assert_eq!(check_coinbase(&tagged(30, &hash, 128), &hash), Ok(()));
        assert_eq!(
            check_coinbase(&tagged(30, &hash, 129), &hash),
            Err(RskCoinbaseError::TooManyBytesAfterHash { after: 129 })
        );
        assert_eq!(
            check_coinbase(&tagged(23, &hash, 0), &hash),
            Err(RskCoinbaseError::TooShort { len: 64 })
        );
        assert_eq!(check_coinbase(&tagged(24, &hash, 0), &hash), Ok(()));
        assert_eq!(
            check_coinbase(&[0x11; 100], &hash),
            Err(RskCoinbaseError::TagMissing)
        );
        // A later tag (say in a pool tag) wins, whatever it carries.
        let mut two = tagged(30, &hash, 4);
        two.extend_from_slice(&tagged(0, &other, 4));
        assert_eq!(
            check_coinbase(&two, &hash),
            Err(RskCoinbaseError::HashMismatch)
        );
        let mut cut = tagged(60, &hash, 0);
        cut.truncate(cut.len() - 1);
        assert_eq!(
            check_coinbase(&cut, &hash),
            Err(RskCoinbaseError::HashTruncated)
        );
    }
}
