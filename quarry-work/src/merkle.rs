//! Merkle branches and roots, as Bitcoin builds them (an odd level repeats its last hash).

use crate::hash::{sha256d_64, Hash32};

/// The parent of two nodes: SHA256d(left ‖ right).
#[inline]
pub fn parent(left: &Hash32, right: &Hash32) -> Hash32 {
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(left);
    buf[32..].copy_from_slice(right);
    sha256d_64(&buf)
}

/// The branch that proves leaf 0 (the coinbase), given the hashes of every *other* transaction in
/// block order. It is computed once per template; each share then costs one hash per entry.
pub fn coinbase_branch(others: &[Hash32]) -> Vec<Hash32> {
    let mut branch = Vec::new();
    let mut level: Vec<Hash32> = others.to_vec();
    while !level.is_empty() {
        branch.push(level[0]);
        // With the coinbase's own node in front, the level has len + 1 entries: pad it to even.
        if level.len() % 2 == 0 {
            let last = level[level.len() - 1];
            level.push(last);
        }
        level = level[1..]
            .chunks_exact(2)
            .map(|pair| parent(&pair[0], &pair[1]))
            .collect();
    }
    branch
}

/// The root from the coinbase's leaf hash and its branch.
#[inline]
pub fn root_from_branch(leaf: &Hash32, branch: &[Hash32]) -> Hash32 {
    branch.iter().fold(*leaf, |acc, node| parent(&acc, node))
}

/// The root of a whole list of leaves; all zeros for an empty list.
pub fn root(leaves: &[Hash32]) -> Hash32 {
    if leaves.is_empty() {
        return [0; 32];
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        if level.len() % 2 == 1 {
            let last = level[level.len() - 1];
            level.push(last);
        }
        level = level
            .chunks_exact(2)
            .map(|pair| parent(&pair[0], &pair[1]))
            .collect();
    }
    level[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(n: u8) -> Hash32 {
        [n; 32]
    }

    #[test]
    fn branch_agrees_with_full_root() {
        for count in 0..40u8 {
            let leaves: Vec<Hash32> = (0..=count).map(leaf).collect();
            let branch = coinbase_branch(&leaves[1..]);
            assert_eq!(
                root_from_branch(&leaves[0], &branch),
                root(&leaves),
                "{count}"
            );
        }
    }

    #[test]
    fn branch_length_is_log2() {
        let others: Vec<Hash32> = (0..2999u32)
            .map(|n| {
                let mut h = [0u8; 32];
                h[..4].copy_from_slice(&n.to_le_bytes());
                h
            })
            .collect();
        assert_eq!(coinbase_branch(&others).len(), 12);
        assert!(coinbase_branch(&[]).is_empty());
    }
}
