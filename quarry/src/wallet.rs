//! Payouts through node wallets (`sendmany`): Bitcoin's on the first node that answers, each
//! AuxPoW chain's on its own node; and the `quarry payout` command.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::{bail, Result};
use quarry_ledger::payouts::{run_payouts, Step, Wallet};
use quarry_ledger::{Chain, Sat, Store};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tracing::{error, info, warn};

use crate::aux::{AuxChains, AuxClient};
use crate::config::Config;
use crate::events::EventBus;
use crate::node::{Nodes, RpcError};

/// Where a wallet's RPCs go.
#[derive(Clone)]
pub enum WalletRpc {
    /// Bitcoin: the first node that answers.
    Bitcoin(Arc<Nodes>),
    /// An aux chain: the node that issued its work.
    Aux(Arc<AuxClient>),
}

impl WalletRpc {
    async fn call<T: DeserializeOwned>(&self, method: &str, params: Value) -> Result<T, String> {
        let result: Result<T, RpcError> = match self {
            WalletRpc::Bitcoin(nodes) => nodes.call_any(method, params).await,
            WalletRpc::Aux(client) => client.call(method, params).await,
        };
        result.map_err(|e| e.to_string())
    }
}

/// A node wallet over JSON-RPC.
#[derive(Clone)]
pub struct NodeWallet {
    /// The node.
    pub rpc: WalletRpc,
    /// Ask the node (`validateaddress`) before paying an address: an aux chain's balances may
    /// be credited to Bitcoin addresses its wallet cannot pay.
    pub check_addresses: bool,
    /// Addresses never paid automatically (the commons, without `auto_distribute`).
    pub hold: BTreeSet<String>,
}

/// One chain's payouts: its wallet and smallest payout.
#[derive(Clone)]
pub struct ChainWallet {
    /// The chain paid.
    pub chain: Chain,
    /// Its wallet.
    pub wallet: NodeWallet,
    /// Smallest payout, in the chain's base unit.
    pub threshold: Sat,
}

/// Every chain the pool pays: Bitcoin, then each AuxPoW chain with `payouts = true`.
pub fn chain_wallets(
    config: &Config,
    nodes: &Arc<Nodes>,
    aux: Option<&Arc<AuxChains>>,
) -> Vec<ChainWallet> {
    let mut wallets = Vec::new();
    // Under coinbase-pplns the coinbase is Bitcoin's payout: balances it carries are paid by later
    // coinbases, never by the wallet (which could pay one a coinbase already committed to).
    let coinbase_pays = config.mining.mode == "pool" && config.payout.scheme == "coinbase-pplns";
    if !coinbase_pays {
        wallets.push(ChainWallet {
            chain: Chain::BITCOIN,
            wallet: NodeWallet {
                rpc: WalletRpc::Bitcoin(Arc::clone(nodes)),
                check_addresses: false,
                hold: BTreeSet::new(),
            },
            threshold: Sat(config.threshold_sat()),
        });
    }
    let fee = &config.merge_mining_fee;
    for client in aux.map(|a| a.clients()).unwrap_or_default() {
        let aux = &client.config;
        let Ok(chain) = Chain::new(&aux.name) else {
            continue;
        };
        if aux.kind != "auxpow" || !aux.payouts {
            continue;
        }
        let hold = match (
            fee.enabled && !fee.auto_distribute,
            fee.commons.get(&aux.name),
        ) {
            (true, Some(commons)) => BTreeSet::from([commons.clone()]),
            _ => BTreeSet::new(),
        };
        wallets.push(ChainWallet {
            chain,
            wallet: NodeWallet {
                rpc: WalletRpc::Aux(Arc::clone(client)),
                check_addresses: true,
                hold,
            },
            threshold: Sat(aux.threshold_sat()),
        });
    }
    wallets
}

/// Satoshis as the exact 8-decimal string bitcoind parses (no float rounding on the way).
fn btc_string(sat: Sat) -> String {
    format!("{}.{:08}", sat.0 / 100_000_000, sat.0 % 100_000_000)
}

/// A wallet amount (BTC, float in JSON) to satoshis: reading only, rounded to the nearest.
fn sat_from_btc(value: &Value) -> Option<Sat> {
    let btc = value.as_f64()?.abs();
    Some(Sat((btc * 100_000_000.0).round() as u64))
}

impl Wallet for NodeWallet {
    async fn send_many(
        &self,
        tag: &str,
        amounts: &BTreeMap<String, Sat>,
    ) -> Result<String, String> {
        let outputs: serde_json::Map<String, Value> = amounts
            .iter()
            .map(|(address, sat)| (address.clone(), json!(btc_string(*sat))))
            .collect();
        let subtract: Vec<&String> = amounts.keys().collect();
        // `sendmany "" {amounts} minconf comment subtractfeefrom`: the same call on Bitcoin Core
        // and on the registry node. Recipients share the transaction fee.
        self.rpc
            .call::<String>("sendmany", json!(["", outputs, 1, tag, subtract]))
            .await
    }

    async fn find_sent(&self, tag: &str) -> Result<Option<String>, String> {
        let transactions: Vec<Value> = self
            .rpc
            .call("listtransactions", json!(["*", 10_000, 0]))
            .await?;
        Ok(transactions
            .iter()
            .find(|t| t["comment"].as_str() == Some(tag) && t["category"] == "send")
            .and_then(|t| t["txid"].as_str().map(str::to_string)))
    }

    async fn received(&self, txid: &str) -> Result<BTreeMap<String, Sat>, String> {
        let transaction: Value = self.rpc.call("gettransaction", json!([txid])).await?;
        let mut received = BTreeMap::new();
        for detail in transaction["details"].as_array().into_iter().flatten() {
            if detail["category"] != "send" {
                continue;
            }
            if let (Some(address), Some(sat)) =
                (detail["address"].as_str(), sat_from_btc(&detail["amount"]))
            {
                *received.entry(address.to_string()).or_insert(Sat::ZERO) += sat;
            }
        }
        Ok(received)
    }

    async fn can_pay(&self, address: &str) -> Result<bool, String> {
        if self.hold.contains(address) {
            return Ok(false);
        }
        if !self.check_addresses {
            return Ok(true);
        }
        let answer: Value = self.rpc.call("validateaddress", json!([address])).await?;
        Ok(answer["isvalid"] == true)
    }
}

/// One payout run on every chain in `wallets`. `QUARRY_PAYOUT_CRASH_AT=after_intent|after_send|
/// after_record` aborts the process at that step (for the crash tests).
///
/// # Errors
/// The chains whose run failed (each other chain still ran); their intents stay pending.
pub async fn payout_once(store: &Store, wallets: &[ChainWallet], events: &EventBus) -> Result<()> {
    let crash_at = std::env::var("QUARRY_PAYOUT_CRASH_AT")
        .ok()
        .and_then(|s| Step::parse(&s));
    let now_ms = i64::try_from(crate::driver::unix_ms()).unwrap_or(i64::MAX);
    let mut failed = Vec::new();
    for chain_wallet in wallets {
        let chain = &chain_wallet.chain;
        let report = run_payouts(
            chain,
            store,
            &chain_wallet.wallet,
            chain_wallet.threshold,
            now_ms,
            |step| {
                if Some(step) == crash_at {
                    error!(?step, "QUARRY_PAYOUT_CRASH_AT: aborting");
                    std::process::abort();
                }
                false
            },
        )
        .await;
        match report {
            Ok(report) => {
                info!(
                    %chain,
                    reconciled = report.reconciled,
                    sent = report.sent,
                    sent_sat = report.sent_sat.0,
                    "payout run done"
                );
                for txid in &report.txids {
                    events.publish("PayoutSent", json!({"chain": chain.as_str(), "txid": txid}));
                }
            }
            Err(e) => {
                warn!(%chain, error = %e, "payout run failed; the intent stays pending");
                failed.push(format!("{chain}: {e}"));
            }
        }
    }
    if !failed.is_empty() {
        bail!("payout run: {}", failed.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_exact_decimal_strings() {
        assert_eq!(btc_string(Sat(1)), "0.00000001");
        assert_eq!(btc_string(Sat(12_345_678_901)), "123.45678901");
        assert_eq!(sat_from_btc(&json!(-0.12343078)), Some(Sat(12_343_078)));
    }
}
