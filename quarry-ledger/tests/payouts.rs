//! Payouts killed at every step never pay twice and never skip anyone.

use std::collections::BTreeMap;
use std::sync::Mutex;

use quarry_ledger::payouts::{run_payouts, PayoutError, Step, Wallet};
use quarry_ledger::{BlockRecord, BlockStatus, Chain, Credit, CreditStatus, Msat, Sat, Store};

/// (tag, txid, amounts) of one payment.
type Sent = (String, String, BTreeMap<String, Sat>);

/// A wallet that records what it sent; the recipients share a 1,000-sat fee.
struct FakeWallet {
    balance: Mutex<Sat>,
    sent: Mutex<Vec<Sent>>,
    /// Addresses this wallet says it cannot pay.
    foreign: Vec<String>,
}

impl FakeWallet {
    fn new(balance: u64) -> Self {
        FakeWallet {
            balance: Mutex::new(Sat(balance)),
            sent: Mutex::new(Vec::new()),
            foreign: Vec::new(),
        }
    }

    fn sends(&self) -> Vec<BTreeMap<String, Sat>> {
        self.sent
            .lock()
            .expect("lock")
            .iter()
            .map(|s| s.2.clone())
            .collect()
    }
}

const FEE: u64 = 1000;

impl Wallet for FakeWallet {
    async fn send_many(
        &self,
        tag: &str,
        amounts: &BTreeMap<String, Sat>,
    ) -> Result<String, String> {
        let total: Sat = amounts.values().sum();
        let mut balance = self.balance.lock().expect("lock");
        if *balance < total {
            return Err("Insufficient funds".into());
        }
        *balance = *balance - total;
        let mut sent = self.sent.lock().expect("lock");
        let txid = format!("tx{}", sent.len());
        sent.push((tag.to_string(), txid.clone(), amounts.clone()));
        Ok(txid)
    }

    async fn find_sent(&self, tag: &str) -> Result<Option<String>, String> {
        Ok(self
            .sent
            .lock()
            .expect("lock")
            .iter()
            .find(|s| s.0 == tag)
            .map(|s| s.1.clone()))
    }

    async fn received(&self, txid: &str) -> Result<BTreeMap<String, Sat>, String> {
        let sent = self.sent.lock().expect("lock");
        let (_, _, amounts) = sent.iter().find(|s| s.1 == txid).ok_or("unknown txid")?;
        let share = Sat(FEE / amounts.len() as u64);
        Ok(amounts
            .iter()
            .map(|(a, v)| (a.clone(), *v - share))
            .collect())
    }

    async fn can_pay(&self, address: &str) -> Result<bool, String> {
        Ok(!self.foreign.iter().any(|a| a == address))
    }
}

async fn ledger(name: &str) -> Store {
    let dir = std::env::temp_dir().join(format!("quarry-payouts-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let store = Store::open(&format!("sqlite://{}", dir.join("q.db").display()))
        .await
        .expect("open");
    let block = BlockRecord {
        hash: "b".into(),
        height: 1,
        status: BlockStatus::Submitted,
        reward: 8050,
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
        amount_msat: Msat(sat * 1000 + 400), // sub-satoshi remainders stay in the ledger
        kind: "pplns".into(),
    };
    store
        .credit_block(
            "b",
            &[
                credit("alice", 5000),
                credit("bob", 3000),
                credit("carol", 50),
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
    store
}

fn expected() -> BTreeMap<String, Sat> {
    [
        ("alice".to_string(), Sat(5000)),
        ("bob".to_string(), Sat(3000)),
    ]
    .into_iter()
    .collect()
}

#[tokio::test]
async fn killed_at_every_step_pays_exactly_once() {
    for step in [Step::AfterIntent, Step::AfterSend, Step::AfterRecord] {
        let store = ledger(&format!("{step:?}")).await;
        let wallet = FakeWallet::new(1_000_000);
        // First run dies at `step`.
        run_payouts(&Chain::BITCOIN, &store, &wallet, Sat(100), 10, |at| {
            at == step
        })
        .await
        .expect("first run");
        // Later runs recover; a third one finds nothing left to do.
        run_payouts(&Chain::BITCOIN, &store, &wallet, Sat(100), 20, |_| false)
            .await
            .expect("recovery run");
        let report = run_payouts(&Chain::BITCOIN, &store, &wallet, Sat(100), 30, |_| false)
            .await
            .expect("idle run");
        assert_eq!(report.sent, 0, "{step:?}: nothing left");
        assert_eq!(
            wallet.sends(),
            vec![expected()],
            "{step:?}: exactly one payment, nobody skipped"
        );
        let paid = store.paid(&Chain::BITCOIN).await.expect("paid");
        assert_eq!(paid["alice"], (5000, 5000 - FEE as i64 / 2), "{step:?}");
        assert_eq!(paid["bob"], (3000, 3000 - FEE as i64 / 2), "{step:?}");
        assert!(!paid.contains_key("carol"), "below the threshold");
        assert!(store
            .pending_payouts(&Chain::BITCOIN)
            .await
            .expect("pending")
            .is_empty());
        assert_eq!(
            store
                .payable(&Chain::BITCOIN)
                .await
                .expect("payable")
                .get("carol"),
            Some(&Sat(50))
        );
    }
}

#[tokio::test]
async fn short_wallet_keeps_the_payout_pending_until_it_can_pay() {
    let store = ledger("short").await;
    let wallet = FakeWallet::new(100);
    let error = run_payouts(&Chain::BITCOIN, &store, &wallet, Sat(100), 10, |_| false)
        .await
        .expect_err("too little");
    assert!(matches!(error, PayoutError::Wallet(_)));
    assert_eq!(
        store
            .pending_payouts(&Chain::BITCOIN)
            .await
            .expect("pending")
            .len(),
        1,
        "intent kept"
    );
    assert!(
        store.paid(&Chain::BITCOIN).await.expect("paid").is_empty(),
        "nothing recorded as paid"
    );
    assert!(wallet.sends().is_empty());
    *wallet.balance.lock().expect("lock") = Sat(1_000_000);
    run_payouts(&Chain::BITCOIN, &store, &wallet, Sat(100), 20, |_| false)
        .await
        .expect("retry");
    run_payouts(&Chain::BITCOIN, &store, &wallet, Sat(100), 30, |_| false)
        .await
        .expect("idle");
    assert_eq!(wallet.sends(), vec![expected()]);
}

/// An address the wallet cannot pay (an aux chain's balance credited to a Bitcoin address) is
/// left out of the payout and stays payable; everyone else is paid.
#[tokio::test]
async fn an_address_the_wallet_cannot_pay_waits_and_the_rest_are_paid() {
    let store = ledger("foreign").await;
    let mut wallet = FakeWallet::new(1_000_000);
    wallet.foreign.push("bob".into());
    run_payouts(&Chain::BITCOIN, &store, &wallet, Sat(100), 10, |_| false)
        .await
        .expect("run");
    assert_eq!(
        wallet.sends(),
        vec![BTreeMap::from([("alice".to_string(), Sat(5000))])]
    );
    assert_eq!(
        store
            .payable(&Chain::BITCOIN)
            .await
            .expect("payable")
            .get("bob"),
        Some(&Sat(3000))
    );
}
