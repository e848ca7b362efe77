//! Who a share is credited to: `address[.rig]` usernames, checked against the pool's network,
//! and, per merge-mined chain, the address its rewards go to (`<chain>=<address>` in the
//! password).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use bitcoin::{Address, Network};

use crate::pool::PoolMode;

/// An authorized worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// Full username (`address.rig`).
    pub name: String,
    /// Its payout address.
    pub address: String,
    /// The address's script.
    pub payout_script: Vec<u8>,
    /// Where this worker's merge-mined rewards go, per aux chain.
    pub aux_payouts: AuxPayouts,
}

impl Worker {
    /// Parses a username; the part before the first `.` must be an address on `network`.
    pub fn parse(username: &str, network: Network) -> Result<Worker, String> {
        let address_text = username.split('.').next().unwrap_or(username);
        let address = Address::from_str(address_text)
            .map_err(|e| e.to_string())
            .and_then(|a| {
                a.require_network(network)
                    .map_err(|_| format!("not an address for {network}"))
            })?;
        Ok(Worker {
            name: username.to_string(),
            address: address.to_string(),
            payout_script: address.script_pubkey().into_bytes(),
            aux_payouts: AuxPayouts::default(),
        })
    }

    /// The script the coinbase pays for this worker's jobs.
    pub fn coinbase_script<'a>(&'a self, mode: &'a PoolMode) -> &'a [u8] {
        match mode {
            PoolMode::Solo => &self.payout_script,
            PoolMode::Pool { payout_script } => payout_script,
        }
    }
}

/// Most aux chains one password may name.
pub const MAX_AUX_PAYOUTS: usize = 8;
/// Longest aux chain name (the ledger's chain key) and aux address accepted.
const MAX_CHAIN_NAME: usize = 32;
const MAX_AUX_ADDRESS: usize = 128;

/// Longest Lightning offer taken from a password.
const MAX_OFFER_LEN: usize = 2_000;

/// The BOLT12 offer in an `ln=lno1…` part of a comma-separated authorize password, if any and
/// well-formed (bech32 characters, bounded). The pool registers it as the address's payout
/// destination the first time only.
pub fn lightning_offer(password: &str) -> Option<&str> {
    password.split(',').find_map(|part| {
        let (key, offer) = part.trim().split_once('=')?;
        let offer = offer.trim();
        let well_formed = key.trim() == "ln"
            && offer.len() <= MAX_OFFER_LEN
            && offer
                .get(..4)
                .is_some_and(|p| p.eq_ignore_ascii_case("lno1"))
            && offer.bytes().all(|b| b.is_ascii_alphanumeric());
        well_formed.then_some(offer)
    })
}

/// A worker's payout address on each merge-mined chain, from `<chain>=<address>` parts of its
/// comma-separated password (`x,namecoin=ncrt1q…,d=0.01`). Shares carry it, so an aux block's
/// reward goes to the addresses named by the shares that earned it: nobody can redirect
/// another miner's aux rewards by authorizing with their Bitcoin address.
///
/// Shared (`Arc`) because every accepted share carries it; empty costs a pointer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuxPayouts(Option<Arc<BTreeMap<String, String>>>);

impl AuxPayouts {
    /// The `<chain>=<address>` parts of `password`. `d=` (difficulty) and parts without `=`
    /// are not aux payouts.
    ///
    /// # Errors
    /// A part that names a chain but whose name or address is malformed, or too many chains.
    pub fn from_password(password: &str) -> Result<AuxPayouts, String> {
        let mut map = BTreeMap::new();
        for part in password.split(',') {
            let Some((chain, address)) = part.trim().split_once('=') else {
                continue;
            };
            let (chain, address) = (chain.trim(), address.trim());
            if chain == "d" || chain == "ln" {
                continue; // difficulty; Lightning offer (see `lightning_offer`)
            }
            let name_ok = !chain.is_empty()
                && chain.len() <= MAX_CHAIN_NAME
                && chain.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !name_ok {
                return Err(format!("'{chain}' is not a chain name (a-z, 0-9, -, _)"));
            }
            if address.is_empty()
                || address.len() > MAX_AUX_ADDRESS
                || !address.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(format!("{chain}: '{address}' is not an address"));
            }
            map.insert(chain.to_string(), address.to_string());
            if map.len() > MAX_AUX_PAYOUTS {
                return Err(format!("more than {MAX_AUX_PAYOUTS} aux payout addresses"));
            }
        }
        Ok(AuxPayouts::from_map(map))
    }

    /// From a chain → address map.
    pub fn from_map(map: BTreeMap<String, String>) -> AuxPayouts {
        AuxPayouts((!map.is_empty()).then(|| Arc::new(map)))
    }

    /// The address named for `chain`.
    pub fn get(&self, chain: &str) -> Option<&str> {
        self.0.as_ref()?.get(chain).map(String::as_str)
    }

    /// Every (chain, address).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .flat_map(|m| m.iter().map(|(c, a)| (c.as_str(), a.as_str())))
    }

    /// True when no chain is named.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// A copy of the map (for the share log).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.0.as_deref().cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lightning_offer_comes_from_the_password() {
        assert_eq!(lightning_offer("x,ln=lno1qqsabc,d=1"), Some("lno1qqsabc"));
        assert_eq!(lightning_offer(" ln = LNO1QQ "), Some("LNO1QQ"));
        assert_eq!(lightning_offer("x,d=1"), None);
        assert_eq!(
            lightning_offer("ln=lnbc1invoice"),
            None,
            "invoices are not offers"
        );
        assert_eq!(lightning_offer("ln=lno1<script>"), None);
        assert_eq!(
            lightning_offer(&format!("ln=lno1{}", "q".repeat(2_000))),
            None
        );
    }

    #[test]
    fn aux_payouts_come_from_the_password() {
        let p = AuxPayouts::from_password("x, namecoin=ncrt1qabc ,d=0.5,rsk=0fAb12,ln=lno1qqq")
            .expect("ok");
        assert_eq!(p.get("namecoin"), Some("ncrt1qabc"));
        assert_eq!(p.get("rsk"), Some("0fAb12"));
        assert_eq!(p.get("d"), None);
        assert_eq!(p.iter().count(), 2);
        assert!(AuxPayouts::from_password("x").expect("ok").is_empty());
        assert!(AuxPayouts::from_password("").expect("ok").is_empty());
        assert!(AuxPayouts::from_password("Name=abc").is_err());
        assert!(AuxPayouts::from_password("namecoin=").is_err());
        assert!(AuxPayouts::from_password("namecoin=a b").is_err());
        assert!(AuxPayouts::from_password("namecoin=\"quoted\"").is_err());
        let many: Vec<String> = (0..9).map(|i| format!("c{i}=a")).collect();
        assert!(AuxPayouts::from_password(&many.join(",")).is_err());
        let long = format!("namecoin={}", "a".repeat(129));
        assert!(AuxPayouts::from_password(&long).is_err());
    }
}
