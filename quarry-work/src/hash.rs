//! SHA-256d, the one hash of Bitcoin's proof of work.
//!
//! `sha2` is used rather than `bitcoin_hashes` because it picks SHA-NI at run time, which is most
//! of the cost of validating a share.

use sha2::{Digest, Sha256};

/// A 32-byte hash in Bitcoin's internal byte order (the order it has inside a block).
pub type Hash32 = [u8; 32];

/// SHA256(SHA256(data)).
pub fn sha256d(data: &[u8]) -> Hash32 {
    let first = Sha256::digest(data);
    Sha256::digest(first).into()
}

/// SHA256(SHA256(parts[0] ‖ parts[1] ‖ …)) without concatenating into a buffer.
pub fn sha256d_parts(parts: &[&[u8]]) -> Hash32 {
    let mut engine = Sha256::new();
    for part in parts {
        engine.update(part);
    }
    Sha256::digest(engine.finalize()).into()
}

/// Hash in display order (reversed), as RPC and block explorers print it.
pub fn to_display_hex(hash: &Hash32) -> String {
    let mut reversed = *hash;
    reversed.reverse();
    hex::encode(reversed)
}

/// Parses a hash printed in display order into internal byte order.
pub fn from_display_hex(text: &str) -> Option<Hash32> {
    let mut bytes: Hash32 = hex::decode(text).ok()?.try_into().ok()?;
    bytes.reverse();
    Some(bytes)
}
