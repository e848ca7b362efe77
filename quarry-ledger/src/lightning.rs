//! Payouts over Lightning: one payment per miner to the BOLT12 offer it registered, through the
//! same intent → send → record steps as on-chain payouts (see `payouts.rs`).
//!
//! 1. **Intent**: a payout row (method `lightning`, one item: the miner's whole payable amount),
//!    committed before the node is asked to pay. The amount is reserved from then on.
//! 2. **Send**: the node pays the offer, the intent's tag as the payment's payer note. The node
//!    stores the note with the payment before it answers.
//! 3. **Record**: once the node reports the payment succeeded, the payment id, what the miner
//!    received and the routing fee are stored; the payout is `sent`.
//!
//! A run that died after step 1 finds the payment by its tag: paid, it is only recorded; failed,
//! the intent is marked `failed` and the amount is owed again; never started, it is sent now.
//! A payment still in flight when the run stops waiting stays an intent for the next run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::chain::Chain;
use crate::payouts::{PayoutError, Step};
use crate::schemes::Sat;
use crate::store::{PayoutDestination, PayoutMethod, Store};

/// What a payment is doing, as the node reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentState {
    /// In flight (waiting for the invoice, or for the HTLCs to settle).
    Pending,
    /// The recipient claimed it.
    Succeeded,
    /// It failed for good; the node will not retry it.
    Failed,
}

/// A payment the node started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// The node's payment id (hex).
    pub id: String,
    /// Where it stands.
    pub state: PaymentState,
    /// What the recipient is paid, millisatoshis.
    pub amount_msat: Option<u64>,
    /// Routing fee paid, millisatoshis (known once it succeeded).
    pub fee_msat: Option<u64>,
}

/// The Lightning node as payouts need it.
#[allow(async_fn_in_trait)]
pub trait LightningNode {
    /// Millisatoshis one payment can carry now (over every usable channel).
    async fn sendable_msat(&self) -> Result<u64, String>;
    /// Starts paying `amount_msat` to `offer` with `tag` as payer note and at most
    /// `max_fee_msat` in routing fees; returns the payment id.
    async fn pay_offer(
        &self,
        offer: &str,
        amount_msat: u64,
        tag: &str,
        max_fee_msat: u64,
    ) -> Result<String, String>;
    /// The payment whose payer note is `tag`, if the node ever started one.
    async fn find_payment(&self, tag: &str) -> Result<Option<Payment>, String>;
}

/// Who pays the routing fee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingFee {
    /// The pool: the miner receives its whole balance.
    Pool,
    /// The miner: the fee budget is held back from the amount sent, and what the route really
    /// cost is debited.
    Miner,
}

/// When and how balances are paid over Lightning.
#[derive(Debug, Clone)]
pub struct LightningPolicy {
    /// Smallest Lightning payout: smaller balances wait.
    pub min: Sat,
    /// Largest Lightning payout: larger balances are paid on chain.
    pub max: Sat,
    /// Who pays the routing fee.
    pub routing_fee: RoutingFee,
    /// Routing fee budget per payment: this much…
    pub fee_base: Sat,
    /// …plus this many millionths of the amount.
    pub fee_ppm: u64,
    /// A balance Lightning cannot carry (above capacity, or its payment failed) is paid on
    /// chain in the same run (when at or above the on-chain threshold); otherwise it waits.
    pub onchain_fallback: bool,
    /// How long a run waits for its payments to settle.
    pub wait: Duration,
}

impl LightningPolicy {
    /// The routing fee budget for paying `amount`, millisatoshis.
    pub fn fee_budget_msat(&self, amount: Sat) -> u64 {
        let amount_msat = amount.0.saturating_mul(1000);
        self.fee_base
            .0
            .saturating_mul(1000)
            .saturating_add(amount_msat.saturating_mul(self.fee_ppm) / 1_000_000)
    }
}

/// A Lightning payout recorded as paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LightningPaid {
    /// The miner.
    pub address: String,
    /// The payout's tag (the payer note).
    pub tag: String,
    /// The node's payment id.
    pub payment_id: String,
    /// What the miner received.
    pub received: Sat,
    /// The routing fee.
    pub fee: Sat,
}

/// What a Lightning run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LightningReport {
    /// Payouts recorded as paid by this run (new or reconciled).
    pub paid: Vec<LightningPaid>,
    /// Pending intents whose payment an earlier run had started (it died before recording).
    pub reconciled: usize,
    /// Balances not paid over Lightning this run: (address, why).
    pub failed: Vec<(String, String)>,
    /// Payments still in flight, left for the next run.
    pub pending: usize,
    /// Addresses the on-chain run must leave alone this time: they wait for Lightning.
    pub hold: BTreeSet<String>,
}

/// One Lightning payout run on Bitcoin's balances: reconcile pending Lightning intents, then
/// pay every payable balance whose miner registered an offer and that fits the policy.
///
/// # Errors
/// Database errors, or the node not answering; what was committed stays consistent.
pub async fn run_lightning_payouts<N: LightningNode>(
    store: &Store,
    node: &N,
    policy: &LightningPolicy,
    now_ms: i64,
    crash: impl Fn(Step) -> bool,
) -> Result<LightningReport, PayoutError> {
    let chain = Chain::BITCOIN;
    let mut report = LightningReport::default();
    let destinations: BTreeMap<String, PayoutDestination> = store
        .payout_destinations()
        .await?
        .into_iter()
        .filter(|(_, d)| d.method == "bolt12")
        .collect();
    let mut in_flight: Vec<InFlight> = Vec::new();

    for (id, tag) in store
        .pending_payouts_by(&chain, PayoutMethod::Lightning)
        .await?
    {
        let items = store.payout_items(id).await?;
        let Some((address, amount)) = items.into_iter().next() else {
            store.mark_payout_failed(id, "no recipient").await?;
            continue;
        };
        report.hold.insert(address.clone());
        match node.find_payment(&tag).await.map_err(PayoutError::Wallet)? {
            // Started by an earlier run: settled below, with the new ones.
            Some(_) => {
                report.reconciled += 1;
                in_flight.push(InFlight {
                    id,
                    tag,
                    address,
                    amount,
                });
            }
            None => match destinations.get(&address) {
                // Never sent: send it now.
                Some(destination) => {
                    let flight = InFlight {
                        id,
                        tag,
                        address,
                        amount,
                    };
                    if send(store, node, policy, &flight, destination, &mut report).await? {
                        in_flight.push(flight);
                    }
                }
                None => {
                    store
                        .mark_payout_failed(id, "the Lightning destination was removed")
                        .await?;
                }
            },
        }
    }

    let mut sendable_msat = node.sendable_msat().await.map_err(PayoutError::Wallet)?;
    let payable = store.payable(&chain).await?;
    for (n, (address, amount)) in payable.iter().enumerate() {
        let Some(destination) = destinations.get(address) else {
            continue;
        };
        if report.hold.contains(address) {
            continue;
        }
        if *amount > policy.max {
            continue; // on chain: too large for Lightning
        }
        if *amount < policy.min {
            report.hold.insert(address.clone()); // grows until Lightning pays it
            continue;
        }
        let (send_msat, fee_msat) = amounts(policy, *amount);
        if send_msat == 0 {
            report.hold.insert(address.clone());
            continue;
        }
        if send_msat.saturating_add(fee_msat) > sendable_msat {
            let reason = format!(
                "{} sat is above what the pool's channels can send now ({} sat)",
                amount.0,
                sendable_msat / 1000
            );
            refuse(&mut report, policy, address, reason);
            continue;
        }
        let tag = format!("quarry-ln-{now_ms}-{n}");
        let items = BTreeMap::from([(address.clone(), *amount)]);
        let id = store
            .create_payout_by(&chain, PayoutMethod::Lightning, &tag, &items, now_ms)
            .await?;
        report.hold.insert(address.clone());
        if crash(Step::AfterIntent) {
            return Ok(report);
        }
        let flight = InFlight {
            id,
            tag,
            address: address.clone(),
            amount: *amount,
        };
        if send(store, node, policy, &flight, destination, &mut report).await? {
            sendable_msat = sendable_msat.saturating_sub(send_msat.saturating_add(fee_msat));
            in_flight.push(flight);
        }
    }

    if settle(store, node, policy, in_flight, now_ms, &mut report, &crash).await? {
        crash(Step::AfterRecord);
    }
    Ok(report)
}

/// A Lightning intent whose payment was started.
struct InFlight {
    id: i64,
    tag: String,
    address: String,
    /// Debited from the balance by the intent.
    amount: Sat,
}

/// What is sent and the fee budget, millisatoshis, for a balance of `amount`.
fn amounts(policy: &LightningPolicy, amount: Sat) -> (u64, u64) {
    let budget = policy.fee_budget_msat(amount);
    let amount_msat = amount.0.saturating_mul(1000);
    match policy.routing_fee {
        RoutingFee::Pool => (amount_msat, budget),
        // Whole satoshis: the miner's node and the ledger both count satoshis.
        RoutingFee::Miner => ((amount_msat.saturating_sub(budget) / 1000) * 1000, budget),
    }
}

fn refuse(report: &mut LightningReport, policy: &LightningPolicy, address: &str, reason: String) {
    if !policy.onchain_fallback {
        report.hold.insert(address.to_string());
    }
    report.failed.push((address.to_string(), reason));
}

/// Starts the payment; false (the intent marked failed) when the node refused it at once.
async fn send<N: LightningNode>(
    store: &Store,
    node: &N,
    policy: &LightningPolicy,
    flight: &InFlight,
    destination: &PayoutDestination,
    report: &mut LightningReport,
) -> Result<bool, PayoutError> {
    let (send_msat, fee_msat) = amounts(policy, flight.amount);
    match node
        .pay_offer(&destination.destination, send_msat, &flight.tag, fee_msat)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) => {
            store.mark_payout_failed(flight.id, &e).await?;
            report.hold.remove(&flight.address);
            refuse(report, policy, &flight.address, e);
            Ok(false)
        }
    }
}

/// Waits (up to the policy's wait) for every started payment, and records each that settled.
/// `crash(AfterSend)` stops it where a kill hurts most: a payment succeeded, not yet recorded.
/// False when stopped so.
async fn settle<N: LightningNode>(
    store: &Store,
    node: &N,
    policy: &LightningPolicy,
    mut in_flight: Vec<InFlight>,
    now_ms: i64,
    report: &mut LightningReport,
    crash: &impl Fn(Step) -> bool,
) -> Result<bool, PayoutError> {
    let deadline = tokio::time::Instant::now() + policy.wait;
    loop {
        let mut still = Vec::new();
        for flight in in_flight {
            let payment = node
                .find_payment(&flight.tag)
                .await
                .map_err(PayoutError::Wallet)?;
            match payment {
                Some(p) if p.state == PaymentState::Succeeded => {
                    if crash(Step::AfterSend) {
                        return Ok(false);
                    }
                    let received = Sat(p.amount_msat.unwrap_or(0) / 1000);
                    let fee = Sat(p.fee_msat.unwrap_or(0).div_ceil(1000));
                    let debited = match policy.routing_fee {
                        RoutingFee::Pool => flight.amount,
                        RoutingFee::Miner => (received + fee).min(flight.amount),
                    };
                    store
                        .mark_lightning_paid(flight.id, &p.id, debited, received, fee, now_ms)
                        .await?;
                    report.paid.push(LightningPaid {
                        address: flight.address,
                        tag: flight.tag,
                        payment_id: p.id,
                        received,
                        fee,
                    });
                }
                Some(p) if p.state == PaymentState::Failed => {
                    let reason = "the Lightning payment failed".to_string();
                    store.mark_payout_failed(flight.id, &reason).await?;
                    report.hold.remove(&flight.address);
                    refuse(report, policy, &flight.address, reason);
                }
                _ => still.push(flight),
            }
        }
        if still.is_empty() {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            report.pending += still.len();
            return Ok(true);
        }
        in_flight = still;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
