//! SHA-256d, the one hash of Bitcoin's proof of work.
//!
//! `sha2` is used rather than `bitcoin_hashes` because it picks SHA-NI at run time, which is most
//! of the cost of validating a share.

use sha2::digest::generic_array::GenericArray;
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

/// SHA-256 initial state (FIPS 180-4 §5.3.3).
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

#[inline(always)]
fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
    sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
}

/// The second SHA-256 of SHA256d: one block holding a 32-byte digest.
#[inline(always)]
fn finish_double(first: &[u32; 8]) -> Hash32 {
    let mut block = [0u8; 64];
    for (chunk, word) in block[..32].chunks_exact_mut(4).zip(first) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    block[32] = 0x80;
    block[62] = 0x01; // length: 256 bits
    let mut state = H0;
    compress(&mut state, &block);
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(&state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// SHA256d of exactly 64 bytes (a merkle node's two children): three compressions and no
/// buffering, the hot loop of share validation.
#[inline]
pub fn sha256d_64(data: &[u8; 64]) -> Hash32 {
    const PAD: [u8; 64] = {
        let mut pad = [0u8; 64];
        pad[0] = 0x80;
        pad[62] = 0x02; // length: 512 bits
        pad
    };
    let mut state = H0;
    compress(&mut state, data);
    compress(&mut state, &PAD);
    finish_double(&state)
}

/// The SHA-256 state after a header's first 64 bytes. A miner computes it once per
/// (extranonce2, version) and then only hashes the last 16 bytes per nonce.
#[inline]
pub fn header_midstate(first: &[u8; 64]) -> [u32; 8] {
    let mut state = H0;
    compress(&mut state, first);
    state
}

/// SHA256d of a header from its [`header_midstate`] and its last 16 bytes
/// (merkle root tail, time, bits, nonce).
#[inline]
pub fn sha256d_header_tail(midstate: &[u32; 8], tail: &[u8; 16]) -> Hash32 {
    let mut block = [0u8; 64];
    block[..16].copy_from_slice(tail);
    block[16] = 0x80;
    block[62] = 0x02;
    block[63] = 0x80; // length: 640 bits
    let mut state = *midstate;
    compress(&mut state, &block);
    finish_double(&state)
}

/// SHA256d of an 80-byte block header.
#[inline]
pub fn sha256d_80(header: &[u8; 80]) -> Hash32 {
    let mut first = [0u8; 64];
    first.copy_from_slice(&header[..64]);
    let mut tail = [0u8; 16];
    tail.copy_from_slice(&header[64..]);
    sha256d_header_tail(&header_midstate(&first), &tail)
}

/// SHA-256 of one message per lane, the lanes' compressions interleaved: block `i` of every
/// lane, then block `i + 1`. Each compression waits on the one before it in its own lane only,
/// so the CPU overlaps the lanes' chains (SHA-NI's latency is several times its throughput).
/// Messages are given in parts, hashed as if concatenated; lanes may differ in length.
pub fn sha256_lanes<const N: usize>(messages: [&[&[u8]]; N]) -> [[u32; 8]; N] {
    let mut readers = messages.map(Padded::new);
    let mut states = [H0; N];
    let mut block = [0u8; 64];
    loop {
        let mut any = false;
        for (state, reader) in states.iter_mut().zip(&mut readers) {
            if reader.next_block(&mut block) {
                compress(state, &block);
                any = true;
            }
        }
        if !any {
            return states;
        }
    }
}

/// A message in parts, read as SHA-256's padded 64-byte blocks without copying it whole.
struct Padded<'a> {
    parts: &'a [&'a [u8]],
    part: usize,
    offset: usize,
    /// Message length in bytes.
    len: u64,
    /// The 0x80 byte is written.
    marked: bool,
    done: bool,
}

impl<'a> Padded<'a> {
    fn new(parts: &'a [&'a [u8]]) -> Self {
        Padded {
            parts,
            part: 0,
            offset: 0,
            len: parts.iter().map(|p| p.len() as u64).sum(),
            marked: false,
            done: false,
        }
    }

    /// Fills `block` with the next block; false when there is none.
    fn next_block(&mut self, block: &mut [u8; 64]) -> bool {
        if self.done {
            return false;
        }
        let mut filled = 0;
        while filled < 64 && self.part < self.parts.len() {
            let part = self.parts[self.part];
            let n = (part.len() - self.offset).min(64 - filled);
            block[filled..filled + n].copy_from_slice(&part[self.offset..self.offset + n]);
            filled += n;
            self.offset += n;
            if self.offset == part.len() {
                self.part += 1;
                self.offset = 0;
            }
        }
        if filled == 64 {
            return true;
        }
        if !self.marked {
            block[filled] = 0x80;
            filled += 1;
            self.marked = true;
        }
        block[filled..].fill(0);
        if filled <= 56 {
            block[56..].copy_from_slice(&(self.len * 8).to_be_bytes());
            self.done = true;
        }
        true
    }
}

/// The digest of a state, in bytes.
#[inline(always)]
fn state_bytes(state: &[u32; 8]) -> Hash32 {
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// [`finish_double`] for every lane, interleaved.
#[inline(always)]
fn finish_double_lanes<const N: usize>(first: &[[u32; 8]; N]) -> [Hash32; N] {
    let mut states = [H0; N];
    for (state, first) in states.iter_mut().zip(first) {
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&state_bytes(first));
        block[32] = 0x80;
        block[62] = 0x01; // length: 256 bits
        compress(state, &block);
    }
    std::array::from_fn(|lane| state_bytes(&states[lane]))
}

/// [`sha256d_parts`] of one message per lane, interleaved.
pub fn sha256d_parts_lanes<const N: usize>(messages: [&[&[u8]]; N]) -> [Hash32; N] {
    finish_double_lanes(&sha256_lanes(messages))
}

/// [`sha256d_64`] of one block per lane, interleaved.
#[inline]
pub fn sha256d_64_lanes<const N: usize>(data: [&[u8; 64]; N]) -> [Hash32; N] {
    const PAD: [u8; 64] = {
        let mut pad = [0u8; 64];
        pad[0] = 0x80;
        pad[62] = 0x02; // length: 512 bits
        pad
    };
    let mut states = [H0; N];
    for (state, data) in states.iter_mut().zip(data) {
        compress(state, data);
    }
    for state in &mut states {
        compress(state, &PAD);
    }
    finish_double_lanes(&states)
}

/// [`sha256d_80`] of one header per lane, interleaved.
#[inline]
pub fn sha256d_80_lanes<const N: usize>(headers: [&[u8; 80]; N]) -> [Hash32; N] {
    let mut states = [H0; N];
    for (state, header) in states.iter_mut().zip(headers) {
        let first: &[u8; 64] = header[..64].try_into().expect("64 bytes");
        compress(state, first);
    }
    for (state, header) in states.iter_mut().zip(headers) {
        let mut block = [0u8; 64];
        block[..16].copy_from_slice(&header[64..]);
        block[16] = 0x80;
        block[62] = 0x02;
        block[63] = 0x80; // length: 640 bits
        compress(state, &block);
    }
    finish_double_lanes(&states)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_hash_as_one_lane_does() {
        let messages: Vec<Vec<u8>> = (0..4usize)
            .map(|lane| {
                (0..(55 + lane * 70))
                    .map(|i| (i * 7 + lane) as u8)
                    .collect()
            })
            .collect();
        let parts: Vec<[&[u8]; 2]> = messages.iter().map(|m| [&m[..10], &m[10..]]).collect();
        let got = sha256d_parts_lanes([&parts[0][..], &parts[1][..], &parts[2][..], &parts[3][..]]);
        for (lane, message) in messages.iter().enumerate() {
            assert_eq!(got[lane], sha256d(message), "lane {lane}");
        }
        let blocks: Vec<[u8; 80]> = messages
            .iter()
            .map(|m| std::array::from_fn(|i| m[i % m.len()]))
            .collect();
        let headers = sha256d_80_lanes([&blocks[0], &blocks[1]]);
        let nodes = sha256d_64_lanes([
            blocks[2][..64].try_into().expect("64"),
            blocks[3][..64].try_into().expect("64"),
        ]);
        assert_eq!(headers, [sha256d(&blocks[0]), sha256d(&blocks[1])]);
        assert_eq!(
            nodes,
            [sha256d(&blocks[2][..64]), sha256d(&blocks[3][..64])]
        );
        // Any length around the padding boundaries.
        for len in 0..200 {
            let m: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(sha256d_parts_lanes([&[&m[..]][..]]), [sha256d(&m)], "{len}");
        }
    }

    #[test]
    fn fixed_size_paths_match_the_generic_one() {
        let mut data = [0u8; 80];
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = (i as u8).wrapping_mul(31).wrapping_add(7);
        }
        let first: [u8; 64] = data[..64].try_into().expect("64 bytes");
        assert_eq!(sha256d_64(&first), sha256d(&first));
        assert_eq!(sha256d_80(&data), sha256d(&data));
        let mid = header_midstate(&first);
        let tail: [u8; 16] = data[64..].try_into().expect("16 bytes");
        assert_eq!(sha256d_header_tail(&mid, &tail), sha256d(&data));
    }
}
