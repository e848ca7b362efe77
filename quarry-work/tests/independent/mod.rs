//! A second merged-mining verifier, written from the merged-mining note alone: the AuxPoW
//! checks of its §1–3, with their own parser and the note's 64-bit slot formula, and rskj's
//! `mnr_submitBitcoinBlockPartialMerkle` checks of its §5. It uses only `bitcoin::hashes` for
//! SHA-256d and `hex`, and shares no code with `quarry_work::auxpow` or `quarry_work::rsk`, so
//! the two agreeing is evidence that both read the note right.
//!
//! It sits in a subdirectory so that cargo does not make it a test target of its own. The
//! vectors (`tests/auxpow_vectors.rs`) and quarry-stratum's session tests
//! (`src/tests/merged.rs`, through `#[path]`) include it as a module.

use bitcoin::hashes::{sha256d, Hash};

fn dsha(data: &[u8]) -> [u8; 32] {
    sha256d::Hash::hash(data).to_byte_array()
}

fn dsha_pair(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut both = [0u8; 64];
    both[..32].copy_from_slice(left);
    both[32..].copy_from_slice(right);
    dsha(&both)
}

/// §3, Namecoin's 64-bit form.
pub fn expected_index(nonce: u32, chain_id: u32, h: u32) -> u64 {
    let modulus = 1u64 << h;
    let mut rand = u64::from(nonce);
    rand = (rand * 1103515245 + 12345) % modulus;
    rand += u64::from(chain_id);
    (rand * 1103515245 + 12345) % modulus
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).ok_or("overflow")?;
        let out = self.bytes.get(self.at..end).ok_or("truncated")?;
        self.at = end;
        Ok(out)
    }

    fn u32le(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| "u32")?,
        ))
    }

    fn compact(&mut self) -> Result<u64, String> {
        let first = self.take(1)?[0];
        let (value, min) = match first {
            0xfd => (
                u64::from(u16::from_le_bytes(
                    self.take(2)?.try_into().map_err(|_| "u16")?,
                )),
                0xfd,
            ),
            0xfe => (u64::from(self.u32le()?), 0x10000),
            0xff => (
                u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "u64")?),
                0x1_0000_0000,
            ),
            n => return Ok(u64::from(n)),
        };
        if value < min {
            return Err("non-canonical compact size".into());
        }
        Ok(value)
    }

    fn hashes(&mut self) -> Result<Vec<[u8; 32]>, String> {
        let n = self.compact()?;
        if n > 1000 {
            return Err("absurd branch".into());
        }
        (0..n)
            .map(|_| Ok(self.take(32)?.try_into().map_err(|_| "hash")?))
            .collect()
    }
}

/// A non-witness transaction: returns (txid, vin[0].scriptSig).
fn parse_coinbase(cursor: &mut Cursor<'_>) -> Result<([u8; 32], Vec<u8>), String> {
    let start = cursor.at;
    cursor.take(4)?; // version
    let inputs = cursor.compact()?;
    if inputs == 0 {
        // Either an empty vin (§1: refused) or the witness form, which Quarry never sends.
        return Err("vin is empty".into());
    }
    let mut first_script = None;
    for _ in 0..inputs {
        cursor.take(36)?; // prevout
        let len = cursor.compact()?;
        let script = cursor.take(usize::try_from(len).map_err(|_| "len")?)?;
        first_script.get_or_insert_with(|| script.to_vec());
        cursor.take(4)?; // sequence
    }
    let outputs = cursor.compact()?;
    for _ in 0..outputs {
        cursor.take(8)?;
        let len = cursor.compact()?;
        cursor.take(usize::try_from(len).map_err(|_| "len")?)?;
    }
    cursor.take(4)?; // lock time
    let raw = &cursor.bytes[start..cursor.at];
    Ok((dsha(raw), first_script.ok_or("no input")?))
}

fn positions(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// §1 field table, §1 checks, §2 rules, in the note's words.
pub fn check(
    auxpow: &[u8],
    aux_hash_display_hex: &str,
    chain_id: u32,
    strict: bool,
) -> Result<(), String> {
    let mut cursor = Cursor {
        bytes: auxpow,
        at: 0,
    };
    let (txid, script_sig) = parse_coinbase(&mut cursor)?;
    cursor.take(32)?; // hashBlock, never checked
    let merkle_branch = cursor.hashes()?;
    cursor.take(4)?; // nIndex, ignored
    let chain_branch = cursor.hashes()?;
    let chain_index = cursor.u32le()? as i32;
    let parent: [u8; 80] = cursor.take(80)?.try_into().map_err(|_| "header")?;
    if cursor.at != auxpow.len() {
        return Err("trailing bytes".into());
    }

    let version = i32::from_le_bytes(parent[0..4].try_into().map_err(|_| "version")?);
    if version & 0x100 != 0 {
        return Err("auxpow parent block has auxpow version".into());
    }
    if strict && i64::from(version / 65536) == i64::from(chain_id) {
        return Err("parent has our chain id".into());
    }
    if chain_branch.len() > 30 {
        return Err("chain merkle branch too long".into());
    }
    // Coinbase: fold the txid with vMerkleBranch at index 0.
    let mut h = txid;
    for b in &merkle_branch {
        h = dsha_pair(&h, b);
    }
    if h[..] != parent[36..68] {
        return Err("coinbase not in the parent merkle root".into());
    }
    // Aux root: from the aux hash in internal order, fold by nChainIndex's bits, reverse.
    let mut h: [u8; 32] = hex::decode(aux_hash_display_hex)
        .map_err(|_| "aux hash hex")?
        .try_into()
        .map_err(|_| "aux hash length")?;
    h.reverse();
    let mut i = chain_index;
    for b in &chain_branch {
        h = if i & 1 != 0 {
            dsha_pair(b, &h)
        } else {
            dsha_pair(&h, b)
        };
        i >>= 1;
    }
    h.reverse();
    let root = h;

    // §2 rule 1: the first occurrence of the root.
    let Some(&pc) = positions(&script_sig, &root).first() else {
        return Err("missing chain merkle root".into());
    };
    // Rules 2 and 3.
    let magics = positions(&script_sig, &[0xfa, 0xbe, 0x6d, 0x6d]);
    if let Some(&head) = magics.first() {
        if magics.len() != 1 {
            return Err("multiple merged mining headers".into());
        }
        if head + 4 != pc {
            return Err("root not immediately after the magic".into());
        }
    } else if pc > 20 {
        return Err("legacy root beyond byte 20".into());
    }
    // Rule 4.
    let rest = &script_sig[pc + 32..];
    if rest.len() < 8 {
        return Err("fewer than 8 bytes after the root".into());
    }
    let size = u32::from_le_bytes(rest[0..4].try_into().map_err(|_| "size")?);
    let nonce = u32::from_le_bytes(rest[4..8].try_into().map_err(|_| "nonce")?);
    let m = chain_branch.len() as u32;
    if u64::from(size) != 1u64 << m {
        return Err("size is not 1 << m".into());
    }
    if i64::from(chain_index) != expected_index(nonce, chain_id, m) as i64 {
        return Err("wrong chain index".into());
    }
    Ok(())
}

/// `RSKBLOCK:`, the tag before the RSK block hash (§5).
const RSK_TAG: &[u8] = b"RSKBLOCK:";

/// Hex with no `0x` (§5: "No argument takes `0x`"), of exactly `len` bytes.
fn rsk_hex(text: &str, what: &str, len: Option<usize>) -> Result<Vec<u8>, String> {
    if text.starts_with("0x") || text.starts_with("0X") {
        return Err(format!("{what} has a 0x prefix"));
    }
    let bytes = hex::decode(text).map_err(|e| format!("{what} is not hex: {e}"))?;
    match len {
        Some(len) if bytes.len() != len => {
            Err(format!("{what} is {} bytes, not {len}", bytes.len()))
        }
        _ => Ok(bytes),
    }
}

/// §5: what rskj checks of the five `mnr_submitBitcoinBlockPartialMerkle` arguments
/// (`blockHashHex`, `blockHeaderHex`, `coinbaseHex`, `merkleHashesHex`, `blockTxnCountHex`) for
/// the RSK block `rsk_hash` (the bytes of `blockHashForMergedMining`) and its `target`, given
/// big-endian as `mnr_getWork` prints it.
///
/// - `blockHashHex` is only logged: it must be 32 bytes of hex, whatever they are.
/// - The header is 80 bytes; the coinbase a non-witness transaction of more than 64 bytes.
/// - The **last** `RSKBLOCK:` in the coinbase is followed by `rsk_hash`, and at most 128 bytes
///   follow that hash to the end of the transaction.
/// - `merkleHashesHex` is space-separated, internal order, non-empty: the coinbase txid, then
///   the branch, folded with the coinbase leftmost (`h = sha256d(h ‖ b)`) to the header's merkle
///   root (bytes 36..68).
/// - `blockTxnCountHex` parses as Java's `Integer.parseInt(s, 16)` would, with no `0x`.
/// - `sha256d(header)`, read as a little-endian 256-bit number, is `<=` the target.
pub fn check_rsk(
    params: &[String; 5],
    rsk_hash: &[u8; 32],
    target_be: &[u8; 32],
) -> Result<(), String> {
    let [block_hash, header, coinbase, merkle_hashes, txn_count] = params;
    rsk_hex(block_hash, "blockHashHex", Some(32))?;
    let header = rsk_hex(header, "blockHeaderHex", Some(80))?;
    let coinbase = rsk_hex(coinbase, "coinbaseHex", None)?;

    // The coinbase: a whole non-witness transaction, of more than 64 bytes.
    if coinbase.len() <= 64 {
        return Err(format!(
            "coinbase of {} bytes, not more than 64",
            coinbase.len()
        ));
    }
    let mut cursor = Cursor {
        bytes: &coinbase,
        at: 0,
    };
    let (txid, _) = parse_coinbase(&mut cursor)?;
    if cursor.at != coinbase.len() {
        return Err("coinbase has bytes after its lock time".into());
    }

    // The tag: its last occurrence, then our hash, then at most 128 bytes.
    let Some(&tag_at) = positions(&coinbase, RSK_TAG).last() else {
        return Err("no RSKBLOCK: in the coinbase".into());
    };
    let hash_at = tag_at + RSK_TAG.len();
    let Some(tagged) = coinbase.get(hash_at..hash_at + 32) else {
        return Err("the coinbase ends inside the hash after the last RSKBLOCK:".into());
    };
    if tagged != rsk_hash {
        return Err(format!(
            "the last RSKBLOCK: carries {}, not the rsk hash",
            hex::encode(tagged)
        ));
    }
    let after = coinbase.len() - (hash_at + 32);
    if after > 128 {
        return Err(format!("{after} bytes after the rsk hash, over 128"));
    }

    // The partial merkle proof (RSKIP92): the txid first, then the branch.
    let mut hashes = Vec::new();
    for (i, text) in merkle_hashes.split(' ').enumerate() {
        let bytes: [u8; 32] = rsk_hex(text, &format!("merkle hash {i}"), Some(32))?
            .try_into()
            .map_err(|_| "merkle hash length")?;
        hashes.push(bytes);
    }
    let Some((first, branch)) = hashes.split_first() else {
        return Err("no merkle hashes".into());
    };
    if *first != txid {
        return Err("the first merkle hash is not the coinbase txid (internal order)".into());
    }
    let mut h = txid;
    for b in branch {
        h = dsha_pair(&h, b);
    }
    if h[..] != header[36..68] {
        return Err("the coinbase and branch do not fold to the header's merkle root".into());
    }

    // Java's Integer.parseInt(s, 16): an optional sign, then hex digits, within an i32.
    if txn_count.starts_with("0x") || txn_count.starts_with("0X") {
        return Err("blockTxnCountHex has a 0x prefix".into());
    }
    let digits = txn_count.strip_prefix(['+', '-']).unwrap_or(txn_count);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("blockTxnCountHex {txn_count:?} is not hex"));
    }
    i32::from_str_radix(txn_count, 16)
        .map_err(|_| format!("blockTxnCountHex {txn_count:?} overflows an int"))?;

    // Proof of work: the header hash as a number (its bytes reversed to big-endian) <= target.
    let mut hash_be = dsha(&header);
    hash_be.reverse();
    if hash_be > *target_be {
        return Err(format!(
            "header hash {} is above the target {}",
            hex::encode(hash_be),
            hex::encode(target_be)
        ));
    }
    Ok(())
}
