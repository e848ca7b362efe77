//! Who a share is credited to: `address[.rig]` usernames, checked against the pool's network.

use std::str::FromStr;

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
