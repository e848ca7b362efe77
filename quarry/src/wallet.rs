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

/// Payouts sent and failed since start, by method, for `/metrics`.
#[derive(Debug, Default)]
pub struct PayoutStats {
    /// (method, outcome) → count; outcome `sent` or a failure reason's kind.
    pub counts: std::sync::Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Satoshis sent, by method.
    pub sent_sat: std::sync::Mutex<BTreeMap<&'static str, u64>>,
}

impl PayoutStats {
    fn count(&self, method: &'static str, outcome: &'static str, sat: u64) {
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry((method, outcome)).or_default() += 1;
        }
        if outcome == "sent" {
            if let Ok(mut sent) = self.sent_sat.lock() {
                *sent.entry(method).or_default() += sat;
            }
        }
    }
}

/// This process's payout counters.
pub static PAYOUT_STATS: std::sync::LazyLock<PayoutStats> =
    std::sync::LazyLock::new(PayoutStats::default);

/// A Lightning failure reason's kind, a bounded label for metrics.
fn failure_kind(reason: &str) -> &'static str {
    if reason.contains("above what the pool's channels can send") {
        "capacity"
    } else if reason.contains("payment failed") {
        "payment_failed"
    } else {
        "refused"
    }
}

/// The Lightning part of a Bitcoin payout run: returns the addresses the on-chain run must
/// leave alone (they wait for Lightning).
async fn lightning_run(
    store: &Store,
    lightning: &crate::lightning::Lightning,
    events: &EventBus,
    now_ms: i64,
    crash_at: Option<Step>,
) -> Result<BTreeSet<String>> {
    let started = std::time::Instant::now();
    let report = quarry_ledger::lightning::run_lightning_payouts(
        store,
        lightning,
        &lightning.policy,
        now_ms,
        |step| {
            if Some(step) == crash_at {
                error!(?step, "QUARRY_PAYOUT_CRASH_AT: aborting");
                std::process::abort();
            }
            false
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("lightning: {e}"))?;
    info!(
        paid = report.paid.len(),
        reconciled = report.reconciled,
        failed = report.failed.len(),
        pending = report.pending,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Lightning payout run done"
    );
    for paid in &report.paid {
        PAYOUT_STATS.count("lightning", "sent", paid.received.0);
        events.publish(
            "PayoutSent",
            json!({"chain": "bitcoin", "method": "lightning", "address": paid.address,
                   "payment_id": paid.payment_id, "amount_sat": paid.received.0,
                   "fee_sat": paid.fee.0, "tag": paid.tag}),
        );
    }
    for (address, reason) in &report.failed {
        PAYOUT_STATS.count("lightning", failure_kind(reason), 0);
        warn!(%address, %reason, onchain_fallback = lightning.policy.onchain_fallback, "Lightning payout not made");
        events.publish(
            "PayoutFailed",
            json!({"chain": "bitcoin", "method": "lightning", "address": address,
                   "reason": reason, "onchain_fallback": lightning.policy.onchain_fallback}),
        );
    }
    Ok(report.hold)
}

/// One payout run on every chain in `wallets`, Bitcoin's Lightning payouts first when
/// `lightning` runs. `QUARRY_PAYOUT_CRASH_AT=after_intent|after_send|after_record` aborts the
/// process at that step (for the crash tests).
///
/// # Errors
/// The chains whose run failed (each other chain still ran); their intents stay pending.
pub async fn payout_once(
    store: &Store,
    wallets: &[ChainWallet],
    lightning: Option<&crate::lightning::Lightning>,
    events: &EventBus,
) -> Result<()> {
    let crash_at = std::env::var("QUARRY_PAYOUT_CRASH_AT")
        .ok()
        .and_then(|s| Step::parse(&s));
    let now_ms = i64::try_from(crate::driver::unix_ms()).unwrap_or(i64::MAX);
    let mut failed = Vec::new();
    let mut waiting_for_lightning = BTreeSet::new();
    if let Some(lightning) = lightning {
        match lightning_run(store, lightning, events, now_ms, crash_at).await {
            Ok(hold) => waiting_for_lightning = hold,
            Err(e) => {
                // Nobody with an offer is paid on chain while the node cannot be asked.
                warn!(error = %format!("{e:#}"), "Lightning payout run failed");
                waiting_for_lightning = store
                    .payout_destinations()
                    .await?
                    .into_values()
                    .filter(|d| d.method == "bolt12")
                    .map(|d| d.address)
                    .collect();
                failed.push(format!("{e:#}"));
            }
        }
    }
    for chain_wallet in wallets {
        let chain = &chain_wallet.chain;
        let mut wallet = chain_wallet.wallet.clone();
        if chain == &Chain::BITCOIN {
            wallet.hold.extend(waiting_for_lightning.iter().cloned());
        }
        let report = run_payouts(
            chain,
            store,
            &wallet,
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
                if report.sent > 0 {
                    PAYOUT_STATS.count("onchain", "sent", report.sent_sat.0);
                }
                for txid in &report.txids {
                    events.publish(
                        "PayoutSent",
                        json!({"chain": chain.as_str(), "method": "onchain", "txid": txid}),
                    );
                }
            }
            Err(e) => {
                PAYOUT_STATS.count("onchain", "wallet_error", 0);
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
