//! Which Kaspa stratum variant a miner speaks, from the user agent it subscribes with.
//!
//! The bridges (onemorebsmith's, its rdugan fork, rusty-kaspa's) agree on three variants:
//! IceRiver and BzMiner take the job as one 80-hex string (the pre-PoW hash and the timestamp);
//! Bitmain (`GodMiner`, `Antminer`) takes the four-word array, answers subscribe as
//! `[null, extranonce, size]` and gets a sized `set_extranonce`; everyone else takes the array.

/// How the job reaches the miner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEncoding {
    /// `["<id>", [w0, w1, w2, w3], <timestamp>]`: the pre-PoW hash as little-endian u64 words.
    Words,
    /// `["<id>", "<80 hex>"]`: the pre-PoW hash then the timestamp (little-endian u64).
    Hex,
}

/// A miner's variant of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect {
    /// The job encoding.
    pub encoding: JobEncoding,
    /// Bitmain's subscribe answer and sized `set_extranonce`.
    pub bitmain: bool,
    /// IceRiver firmware: notifications carry only `method` and `params`.
    pub bare_notifications: bool,
}

impl Dialect {
    /// Everyone not recognised: the array job, the EthereumStratum subscribe answer.
    pub const GENERIC: Dialect = Dialect {
        encoding: JobEncoding::Words,
        bitmain: false,
        bare_notifications: false,
    };

    /// The variant for a user agent (case-insensitive substrings, as rusty-kaspa's bridge
    /// matches them).
    pub fn from_user_agent(agent: &str) -> Dialect {
        let agent = agent.to_ascii_lowercase();
        let has = |needle: &str| agent.contains(needle);
        if has("godminer") || has("bitmain") || has("antminer") {
            return Dialect {
                bitmain: true,
                ..Dialect::GENERIC
            };
        }
        if has("iceriver") || has("icemining") || has("icm") {
            return Dialect {
                encoding: JobEncoding::Hex,
                bitmain: false,
                bare_notifications: true,
            };
        }
        if has("bzminer") {
            return Dialect {
                encoding: JobEncoding::Hex,
                ..Dialect::GENERIC
            };
        }
        Dialect::GENERIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents() {
        let bitmain = Dialect::from_user_agent("GodMiner/2.0.0");
        assert!(bitmain.bitmain && bitmain.encoding == JobEncoding::Words);
        let iceriver = Dialect::from_user_agent("IceRiverMiner-v1.1");
        assert_eq!(iceriver.encoding, JobEncoding::Hex);
        assert!(iceriver.bare_notifications && !iceriver.bitmain);
        let bz = Dialect::from_user_agent("BzMiner/v21.0.1");
        assert_eq!(bz.encoding, JobEncoding::Hex);
        assert!(!bz.bare_notifications);
        assert_eq!(Dialect::from_user_agent("lolMiner 1.88"), Dialect::GENERIC);
        assert_eq!(Dialect::from_user_agent(""), Dialect::GENERIC);
    }
}
