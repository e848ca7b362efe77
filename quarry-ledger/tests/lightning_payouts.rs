//! Lightning payouts: killed at every step they pay exactly once; balances Lightning cannot carry
//! stay owed (or go on chain); failed payments are owed again; the fee lands where configured.
//! The real node is exercised by quarry/tests/lightning.rs; this node is a fake in memory.

use std::sync::Mutex;
use std::time::Duration;

use quarry_ledger::lightning::{
    run_lightning_payouts, LightningNode, LightningPolicy, Payment, PaymentState, RoutingFee,
};
use quarry_ledger::payouts::Step;
use quarry_ledger::{
    BlockRecord, BlockStatus, Chain, Credit, CreditStatus, Msat, PayoutDestination, Sat, Store,
};

/// A node whose payments settle when `settle` says, with a 2-sat routing fee.
struct FakeNode {
    sendable_msat: u64,
    payments: Mutex<Vec<(String, String, Payment)>>,
    /// How a new payment ends: `Succeeded`, `Failed` or `Pending` (never settles).
    settle: PaymentState,
    /// Offers the node refuses at once.
    refuse: Vec<String>,
}

const FEE_MSAT: u64 = 2_000;

impl FakeNode {
    fn new(sendable_sat: u64) -> FakeNode {
        FakeNode {
            sendable_msat: sendable_sat * 1000,
            payments: Mutex::new(Vec::new()),
            settle: PaymentState::Succeeded,
            refuse: Vec::new(),
        }
    }

    /// (offer, msat) of every payment started.
    fn started(&self) -> Vec<(String, u64)> {
        let payments = self.payments.lock().expect("lock");
        payments
            .iter()
            .map(|(offer, _, p)| (offer.clone(), p.amount_msat.unwrap_or(0)))
            .collect()
    }
}

impl LightningNode for FakeNode {
    async fn sendable_msat(&self) -> Result<u64, String> {
        Ok(self.sendable_msat)
    }

    async fn pay_offer(
        &self,
        offer: &str,
        amount_msat: u64,
        tag: &str,
        max_fee_msat: u64,
    ) -> Result<String, String> {
        if self.refuse.iter().any(|o| o == offer) {
            return Err("InvoiceRequestCreationFailed".into());
        }
        assert!(max_fee_msat >= FEE_MSAT, "a fee budget is given");
        let mut payments = self.payments.lock().expect("lock");
        let id = format!("p{}", payments.len());
        payments.push((
            offer.to_string(),
            tag.to_string(),
            Payment {
                id: id.clone(),
                state: self.settle,
                amount_msat: Some(amount_msat),
                fee_msat: (self.settle == PaymentState::Succeeded).then_some(FEE_MSAT),
            },
        ));
        Ok(id)
    }

    async fn find_payment(&self, tag: &str) -> Result<Option<Payment>, String> {
        let payments = self.payments.lock().expect("lock");
        Ok(payments
            .iter()
            .find(|(_, t, _)| t == tag)
            .map(|(_, _, p)| p.clone()))
    }
}

fn policy() -> LightningPolicy {
    LightningPolicy {
        min: Sat(1_000),
        max: Sat(2_000_000),
        routing_fee: RoutingFee::Pool,
        fee_base: Sat(5),
        fee_ppm: 5_000,
        onchain_fallback: true,
        wait: Duration::from_millis(300),
    }
}

/// A ledger where alice is owed 50,000 sat, bob 3,000,000 and carol 500, all mature; alice and
/// carol registered offers, bob did too (but his balance is above Lightning's max).
async fn ledger(name: &str) -> Store {
    let dir = std::env::temp_dir().join(format!("quarry-ln-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let store = Store::open(&format!("sqlite://{}", dir.join("q.db").display()))
        .await
        .expect("open");
    let block = BlockRecord {
        hash: "b".into(),
        height: 1,
        status: BlockStatus::Submitted,
        reward: 3_050_500,
        worker: "alice.rig".into(),
        address: "alice".into(),
        found_ms: 1,
        network_difficulty: 1.0,
        instance: "t".into(),
        chain: Chain::BITCOIN,
        reject_reason: None,
    };
    store.insert_block(&block).await.expect("block");
    let credit = |address: &str, sat: u64| Credit {
        address: address.into(),
        amount_msat: Msat(sat * 1000),
        kind: "pplns".into(),
    };
    store
        .credit_block(
            "b",
            &[
                credit("alice", 50_000),
                credit("bob", 3_000_000),
                credit("carol", 500),
            ],
            1,
        )
        .await
        .expect("credit");
    store
        .transition_block(
            "b",
            BlockStatus::Pending,
            BlockStatus::Confirmed,
            Some((CreditStatus::Immature, CreditStatus::Mature)),
        )
        .await
        .expect("mature");
    for who in ["alice", "bob", "carol"] {
        store
            .set_payout_destination(&PayoutDestination {
                address: who.into(),
                method: "bolt12".into(),
                destination: format!("lno1{who}"),
                source: "signed".into(),
                signed_at: Some(1),
                updated_ms: 1,
            })
            .await
            .expect("destination");
    }
    store
}

async fn owed(store: &Store, who: &str) -> Sat {
    store
        .payable(&Chain::BITCOIN)
        .await
        .expect("payable")
        .get(who)
        .copied()
        .unwrap_or(Sat::ZERO)
}

#[tokio::test]
async fn pays_offers_within_limits_and_leaves_the_rest() {
    let store = ledger("limits").await;
    let node = FakeNode::new(1_000_000);
    let report = run_lightning_payouts(&store, &node, &policy(), 10, |_| false)
        .await
        .expect("run");
    // alice: paid in full (the pool pays the fee); bob: above max, left to the on-chain run;
    // carol: below min, held for Lightning.
    assert_eq!(node.started(), vec![("lno1alice".into(), 50_000_000)]);
    assert_eq!(report.paid.len(), 1);
    assert_eq!(report.paid[0].received, Sat(50_000));
    assert_eq!(report.paid[0].fee, Sat(2));
    assert!(report.hold.contains("carol") && !report.hold.contains("bob"));
    assert_eq!(owed(&store, "alice").await, Sat::ZERO);
    assert_eq!(owed(&store, "bob").await, Sat(3_000_000));
    assert_eq!(owed(&store, "carol").await, Sat(500));
    let payouts = store.payouts(10).await.expect("payouts");
    assert_eq!(payouts[0].method, "lightning");
    assert_eq!(payouts[0].status, "sent");
    assert_eq!(payouts[0].txid.as_deref(), Some("p0"));
    assert_eq!(payouts[0].fee_sat, Some(2));
    // A second run pays nothing.
    let again = run_lightning_payouts(&store, &node, &policy(), 20, |_| false)
        .await
        .expect("run");
    assert!(again.paid.is_empty());
    assert_eq!(node.started().len(), 1);
}

#[tokio::test]
async fn killed_at_every_step_pays_exactly_once() {
    for step in [Step::AfterIntent, Step::AfterSend, Step::AfterRecord] {
        let store = ledger(&format!("{step:?}")).await;
        let node = FakeNode::new(1_000_000);
        run_lightning_payouts(&store, &node, &policy(), 10, |at| at == step)
            .await
            .expect("first run");
        let report = run_lightning_payouts(&store, &node, &policy(), 20, |_| false)
            .await
            .expect("rerun");
        assert_eq!(node.started().len(), 1, "{step:?}: paid once");
        assert_eq!(owed(&store, "alice").await, Sat::ZERO, "{step:?}");
        let sent: Vec<_> = store
            .payouts(10)
            .await
            .expect("payouts")
            .into_iter()
            .filter(|p| p.status == "sent")
            .collect();
        assert_eq!(sent.len(), 1, "{step:?}: recorded once");
        if step == Step::AfterSend {
            assert_eq!(report.reconciled, 1, "found by its tag, not sent again");
        }
    }
}

#[tokio::test]
async fn above_capacity_is_refused_and_owed_with_or_without_fallback() {
    for fallback in [true, false] {
        let store = ledger(&format!("capacity-{fallback}")).await;
        let node = FakeNode::new(10_000); // less than alice's 50,000
        let policy = LightningPolicy {
            onchain_fallback: fallback,
            ..policy()
        };
        let report = run_lightning_payouts(&store, &node, &policy, 10, |_| false)
            .await
            .expect("run");
        assert!(node.started().is_empty());
        assert_eq!(report.failed.len(), 1);
        assert!(
            report.failed[0]
                .1
                .contains("above what the pool's channels can send"),
            "{:?}",
            report.failed
        );
        assert_eq!(
            owed(&store, "alice").await,
            Sat(50_000),
            "the balance is kept"
        );
        // With the fallback the on-chain run may pay alice; without, she waits for Lightning.
        assert_eq!(report.hold.contains("alice"), !fallback);
    }
}

#[tokio::test]
async fn a_failed_payment_is_owed_again_and_paid_by_a_later_run() {
    let store = ledger("failed").await;
    let mut node = FakeNode::new(1_000_000);
    node.settle = PaymentState::Failed;
    let report = run_lightning_payouts(&store, &node, &policy(), 10, |_| false)
        .await
        .expect("run");
    assert!(report.paid.is_empty());
    assert_eq!(report.failed[0].1, "the Lightning payment failed");
    assert_eq!(owed(&store, "alice").await, Sat(50_000));
    assert!(store
        .payouts(10)
        .await
        .expect("payouts")
        .iter()
        .any(|p| p.status == "failed"));
    node.settle = PaymentState::Succeeded;
    let report = run_lightning_payouts(&store, &node, &policy(), 20, |_| false)
        .await
        .expect("run");
    assert_eq!(report.paid.len(), 1);
    assert_eq!(owed(&store, "alice").await, Sat::ZERO);
}

#[tokio::test]
async fn refused_offers_and_pending_payments() {
    let store = ledger("pending").await;
    let mut node = FakeNode::new(1_000_000);
    node.refuse = vec!["lno1alice".into()];
    let report = run_lightning_payouts(&store, &node, &policy(), 10, |_| false)
        .await
        .expect("run");
    assert_eq!(report.failed[0].1, "InvoiceRequestCreationFailed");
    assert_eq!(owed(&store, "alice").await, Sat(50_000));
    // In flight past the wait: the intent stays, the amount reserved, nothing paid twice.
    node.refuse.clear();
    node.settle = PaymentState::Pending;
    let report = run_lightning_payouts(&store, &node, &policy(), 20, |_| false)
        .await
        .expect("run");
    assert_eq!(report.pending, 1);
    assert_eq!(
        owed(&store, "alice").await,
        Sat::ZERO,
        "reserved by the intent"
    );
    let report = run_lightning_payouts(&store, &node, &policy(), 30, |_| false)
        .await
        .expect("run");
    assert_eq!((report.reconciled, report.pending), (1, 1));
    assert_eq!(node.started().len(), 1, "not sent again");
    assert!(report.hold.contains("alice"));
}

#[tokio::test]
async fn the_miner_pays_the_routing_fee_when_so_configured() {
    let store = ledger("miner-fee").await;
    let node = FakeNode::new(1_000_000);
    let policy = LightningPolicy {
        routing_fee: RoutingFee::Miner,
        ..policy()
    };
    let report = run_lightning_payouts(&store, &node, &policy, 10, |_| false)
        .await
        .expect("run");
    // Budget 5 sat + 0.5 % of 50,000 = 255 sat held back; the route cost 2 sat.
    assert_eq!(node.started(), vec![("lno1alice".into(), 49_745_000)]);
    assert_eq!(report.paid[0].received, Sat(49_745));
    // Debited 49,745 + 2: what the route did not use is owed again.
    assert_eq!(owed(&store, "alice").await, Sat(253));
}
