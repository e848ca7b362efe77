//! Payouts through the first node's wallet (`sendmany`), and the `quarry payout` command.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use quarry_ledger::payouts::{run_payouts, Step, Wallet};
use quarry_ledger::{Chain, Sat, Store};
use serde_json::{json, Value};
use tracing::{error, info};

use crate::events::EventBus;
use crate::node::Nodes;

/// The node wallet over JSON-RPC.
pub struct NodeWallet {
    /// Nodes; the wallet calls go to the first that answers.
    pub nodes: Arc<Nodes>,
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
        self.nodes
            .call_any::<String>("sendmany", json!(["", outputs, 1, tag, subtract]))
            .await
            .map_err(|e| e.to_string())
    }

    async fn find_sent(&self, tag: &str) -> Result<Option<String>, String> {
        let transactions: Vec<Value> = self
            .nodes
            .call_any("listtransactions", json!(["*", 10_000, 0]))
            .await
            .map_err(|e| e.to_string())?;
        Ok(transactions
            .iter()
            .find(|t| t["comment"].as_str() == Some(tag) && t["category"] == "send")
            .and_then(|t| t["txid"].as_str().map(str::to_string)))
    }

    async fn received(&self, txid: &str) -> Result<BTreeMap<String, Sat>, String> {
        let transaction: Value = self
            .nodes
            .call_any("gettransaction", json!([txid]))
            .await
            .map_err(|e| e.to_string())?;
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
}

/// One payout run. `QUARRY_PAYOUT_CRASH_AT=after_intent|after_send|after_record` aborts the
/// process at that step (for the crash tests).
pub async fn payout_once(
    store: &Store,
    nodes: Arc<Nodes>,
    threshold_sat: u64,
    events: &EventBus,
) -> Result<()> {
    let crash_at = std::env::var("QUARRY_PAYOUT_CRASH_AT")
        .ok()
        .and_then(|s| Step::parse(&s));
    let wallet = NodeWallet { nodes };
    let now_ms = i64::try_from(crate::driver::unix_ms()).unwrap_or(i64::MAX);
    let report = run_payouts(
        &Chain::BITCOIN,
        store,
        &wallet,
        Sat(threshold_sat),
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
    .context("payout run")?;
    info!(
        reconciled = report.reconciled,
        sent = report.sent,
        sent_sat = report.sent_sat.0,
        "payout run done"
    );
    for txid in &report.txids {
        events.publish("PayoutSent", json!({"txid": txid}));
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
