//! Which chain a share, block, credit or payout belongs to.
//!
//! One ledger serves every chain the pool mines: Bitcoin today, merged-mined aux chains and
//! Kaspa next. Amounts, difficulties and addresses of different chains never mix, so every
//! query that sums them is per chain.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A chain's key in the ledger: lowercase ASCII letters, digits and `-`, 1 to 16 bytes
/// (`bitcoin`, `namecoin`, `rsk`, `kaspa`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Chain(Cow<'static, str>);

/// A chain key that breaks the rules of [`Chain`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chain key {0:?} must be 1-16 bytes of a-z, 0-9 and -")]
pub struct BadChain(pub String);

impl Chain {
    /// Bitcoin: the parent chain, and every row written before chains were recorded.
    pub const BITCOIN: Chain = Chain(Cow::Borrowed("bitcoin"));

    /// A chain by key.
    ///
    /// # Errors
    /// A key outside the rules above.
    pub fn new(key: &str) -> Result<Chain, BadChain> {
        let valid = (1..=16).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        match valid {
            true => Ok(Chain(Cow::Owned(key.to_string()))),
            false => Err(BadChain(key.to_string())),
        }
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Chain {
    fn default() -> Self {
        Chain::BITCOIN
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Chain {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Chain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let key = String::deserialize(deserializer)?;
        Chain::new(&key).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert_eq!(Chain::new("namecoin").expect("valid").as_str(), "namecoin");
        assert_eq!(Chain::new("bitcoin"), Ok(Chain::BITCOIN));
        for bad in ["", "Bitcoin", "a b", "x'; DROP", "seventeen-letters"] {
            assert!(Chain::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_row_without_a_chain_is_bitcoin() {
        #[derive(Deserialize)]
        struct Row {
            #[serde(default)]
            chain: Chain,
        }
        let old: Row = serde_json::from_str("{}").expect("old rows parse");
        assert_eq!(old.chain, Chain::BITCOIN);
        assert!(serde_json::from_str::<Row>(r#"{"chain":"NOPE"}"#).is_err());
    }
}
