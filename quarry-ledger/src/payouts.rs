//! Payouts that never pay twice and never skip anyone.
//!
//! 1. **Intent**: payable balances at or above the threshold become a payout row with a unique
//!    tag and its items, in one transaction. From then on the amounts are reserved.
//! 2. **Send**: the wallet is asked to pay the items, with the tag as the transaction comment.
//! 3. **Record**: the txid and what each recipient received are stored; the payout is `sent`.
//!
//! A run that dies between 1 and 3 leaves an intent. The next run asks the wallet for a
//! transaction carrying its tag: if there is one, it only records it (step 3); if not, the
//! send never happened and it sends now (step 2). A wallet that cannot pay (too little balance)
//! leaves the intent pending with the error, reported and retried; nothing is half-recorded.

use std::collections::BTreeMap;

use crate::chain::Chain;
use crate::schemes::Sat;
use crate::store::{Store, StoreError};

/// The node wallet as payouts need it.
#[allow(async_fn_in_trait)]
pub trait Wallet {
    /// Pays `amounts` in one transaction whose comment is `tag`, the fee shared by the
    /// recipients; returns the txid.
    async fn send_many(&self, tag: &str, amounts: &BTreeMap<String, Sat>)
        -> Result<String, String>;
    /// The txid of a transaction this wallet sent with comment `tag`, if any.
    async fn find_sent(&self, tag: &str) -> Result<Option<String>, String>;
    /// What each recipient of `txid` received, satoshis.
    async fn received(&self, txid: &str) -> Result<BTreeMap<String, Sat>, String>;
    /// Whether `address` is one this wallet can pay. An aux chain's balance credited to a
    /// Bitcoin address (its miner named no address there) waits instead of failing the run.
    async fn can_pay(&self, _address: &str) -> Result<bool, String> {
        Ok(true)
    }
}

/// Points where a payout run can be told to stop dead (`crash` returns true), as a kill would
/// stop it; `quarry payout` aborts the process there when `QUARRY_PAYOUT_CRASH_AT` names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// After the intent is committed, before the wallet is asked.
    AfterIntent,
    /// After the wallet sent, before the txid is recorded.
    AfterSend,
    /// After the txid is recorded.
    AfterRecord,
}

impl Step {
    /// Parses `after_intent`, `after_send`, `after_record`.
    pub fn parse(text: &str) -> Option<Step> {
        Some(match text {
            "after_intent" => Step::AfterIntent,
            "after_send" => Step::AfterSend,
            "after_record" => Step::AfterRecord,
            _ => return None,
        })
    }
}

/// Why a payout run stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayoutError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The wallet failed; the intent stays pending.
    #[error("wallet: {0}")]
    Wallet(String),
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PayoutReport {
    /// Intents found sent in the wallet and recorded.
    pub reconciled: usize,
    /// Payouts sent by this run (new or retried intents).
    pub sent: usize,
    /// Satoshis sent by this run.
    pub sent_sat: Sat,
    /// Transactions recorded by this run.
    pub txids: Vec<String>,
}

/// One payout run on `chain` (the wallet's): reconcile pending intents, then pay every balance
/// at or above `threshold`.
///
/// # Errors
/// Database or wallet errors; what was committed stays consistent.
pub async fn run_payouts<W: Wallet>(
    chain: &Chain,
    store: &Store,
    wallet: &W,
    threshold: Sat,
    now_ms: i64,
    crash: impl Fn(Step) -> bool,
) -> Result<PayoutReport, PayoutError> {
    let mut report = PayoutReport::default();
    for (id, tag) in store.pending_payouts(chain).await? {
        let items = store.payout_items(id).await?;
        let txid = match wallet.find_sent(&tag).await.map_err(PayoutError::Wallet)? {
            Some(txid) => {
                report.reconciled += 1;
                txid
            }
            None => {
                let txid = send(store, wallet, id, &tag, &items).await?;
                report.sent += 1;
                report.sent_sat += items.values().sum::<Sat>();
                if crash(Step::AfterSend) {
                    return Ok(report);
                }
                txid
            }
        };
        report
            .txids
            .push(record(store, wallet, id, &txid, now_ms).await?);
        if crash(Step::AfterRecord) {
            return Ok(report);
        }
    }
    let mut payable = BTreeMap::new();
    for (address, sat) in store.payable(chain).await? {
        if sat >= threshold.max(Sat(1))
            && wallet
                .can_pay(&address)
                .await
                .map_err(PayoutError::Wallet)?
        {
            payable.insert(address, sat);
        }
    }
    if payable.is_empty() {
        return Ok(report);
    }
    // Unique across chains: one run pays every chain at the same instant.
    let tag = match chain == &Chain::BITCOIN {
        true => format!("quarry-payout-{now_ms}"),
        false => format!("quarry-payout-{chain}-{now_ms}"),
    };
    let id = store.create_payout(chain, &tag, &payable, now_ms).await?;
    if crash(Step::AfterIntent) {
        return Ok(report);
    }
    let txid = send(store, wallet, id, &tag, &payable).await?;
    report.sent += 1;
    report.sent_sat += payable.values().sum::<Sat>();
    if crash(Step::AfterSend) {
        return Ok(report);
    }
    report
        .txids
        .push(record(store, wallet, id, &txid, now_ms).await?);
    crash(Step::AfterRecord);
    Ok(report)
}

async fn send<W: Wallet>(
    store: &Store,
    wallet: &W,
    id: i64,
    tag: &str,
    items: &BTreeMap<String, Sat>,
) -> Result<String, PayoutError> {
    match wallet.send_many(tag, items).await {
        Ok(txid) => Ok(txid),
        Err(e) => {
            store.payout_error(id, &e).await?;
            Err(PayoutError::Wallet(e))
        }
    }
}

async fn record<W: Wallet>(
    store: &Store,
    wallet: &W,
    id: i64,
    txid: &str,
    now_ms: i64,
) -> Result<String, PayoutError> {
    let received = wallet.received(txid).await.map_err(PayoutError::Wallet)?;
    store.mark_payout_sent(id, txid, &received, now_ms).await?;
    Ok(txid.to_string())
}
