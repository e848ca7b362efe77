//! The share log on both backends: SQLite (a temp file) and PostgreSQL (a throwaway cluster
//! from scripts/postgres.sh, installed from Debian's packages when missing).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use quarry_ledger::{Chain, Msat, Sat, ShareLog, ShareRecord, Store};

fn scratch(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "quarry-ledger-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh")
}

/// A PostgreSQL cluster for one test, stopped on drop.
struct Postgres {
    dir: PathBuf,
    url: String,
}

impl Postgres {
    fn start(name: &str) -> Postgres {
        let dir = scratch(name);
        let output = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(&dir)
            .output()
            .expect("run scripts/postgres.sh");
        assert!(
            output.status.success(),
            "postgres must start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let url = String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_string();
        Postgres { dir, url }
    }

    fn stop(&self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }

    fn restart(&self) -> String {
        let port = self
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .expect("port");
        let output = Command::new("bash")
            .env("PGPORT_OVERRIDE", port)
            .arg(script())
            .arg("start")
            .arg(&self.dir)
            .output()
            .expect("restart postgres");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn share(i: i64) -> ShareRecord {
    ShareRecord {
        created_ms: 1_800_000_000_000 + i,
        address: format!("addr{}", i % 7),
        worker: format!("addr{}.rig{}", i % 7, i % 3),
        difficulty: 0.5 + i as f64,
        network_difficulty: 1e6,
        block_reward: 312_500_000,
        height: 900_000,
        template_id: i / 100,
        is_block: i % 1000 == 999,
        instance: "test".into(),
        chain: Chain::BITCOIN,
        aux_payouts: Default::default(),
        hash: None,
    }
}

async fn exercise(store: &Store) {
    let shares: Vec<ShareRecord> = (0..2500).map(share).collect();
    store.insert_shares(&shares).await.expect("insert");
    assert_eq!(store.share_count().await.expect("count"), 2500);
    let newest = store
        .shares_newest_first(&Chain::BITCOIN, 1_800_000_000_000 + 2000, 3)
        .await
        .expect("query");
    assert_eq!(newest, vec![share(2000), share(1999), share(1998)]);
    // A spool file counts once, even when replayed twice.
    let spooled: Vec<ShareRecord> = (5000..5010).map(share).collect();
    assert!(store
        .insert_spooled("a.spool", &spooled)
        .await
        .expect("spool"));
    assert!(!store
        .insert_spooled("a.spool", &spooled)
        .await
        .expect("spool again"));
    assert_eq!(store.share_count().await.expect("count"), 2510);
}

#[tokio::test]
async fn sqlite_stores_and_reads_shares() {
    let dir = scratch("sqlite");
    let url = format!("sqlite://{}", dir.join("quarry.db").display());
    let store = Store::open(&url).await.expect("open sqlite");
    exercise(&store).await;
    // Reopening runs no migration twice and keeps everything.
    store.close().await;
    let again = Store::open(&url).await.expect("reopen");
    assert_eq!(again.share_count().await.expect("count"), 2510);
}

#[tokio::test]
async fn postgres_stores_and_reads_shares() {
    let pg = Postgres::start("pg");
    let store = Store::open(&pg.url).await.expect("open postgres");
    exercise(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_log_commits_in_groups_and_acknowledges_each_share() {
    let dir = scratch("group");
    let store = Store::open(&format!("sqlite://{}", dir.join("q.db").display()))
        .await
        .expect("open");
    let log = ShareLog::spawn(store.clone(), dir.join("spool"));
    let tasks: Vec<_> = (0..2000)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.record(share(i)).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("recorded");
    }
    assert_eq!(store.share_count().await.expect("count"), 2000);
    let commits = log.stats().commits.load(Ordering::Relaxed);
    assert!(
        commits < 2000,
        "shares share commits: {commits} commits for 2000 shares"
    );
}

/// A spool left by an earlier run, with one damaged acknowledged line in the middle and a torn
/// last line: every readable share is replayed, the damaged line is kept aside (not lost), and
/// the torn one (never acknowledged) is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_replay_keeps_corrupt_lines_aside() {
    let dir = scratch("spool-corrupt");
    let spool = dir.join("spool");
    std::fs::create_dir_all(&spool).expect("spool dir");
    let line = |i: i64| serde_json::to_string(&share(i)).expect("serializes");
    let damaged = format!("{}#", &line(2)[..30]);
    let torn = &line(4)[..25];
    std::fs::write(
        spool.join("shares-1-1.spool"),
        format!("{}\n{damaged}\n{}\n{torn}", line(1), line(3)),
    )
    .expect("write spool");
    let store = Store::open(&format!("sqlite://{}", dir.join("q.db").display()))
        .await
        .expect("open");
    let _log = ShareLog::spawn(store.clone(), spool.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while spool.join("shares-1-1.spool").exists() {
        assert!(std::time::Instant::now() < deadline, "spool replayed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        store.share_count().await.expect("count"),
        2,
        "shares 1 and 3"
    );
    let aside = std::fs::read_to_string(spool.join("corrupt/shares-1-1.spool.corrupt"))
        .expect("the damaged line is kept aside");
    assert_eq!(aside, format!("2\t{damaged}\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_spools_shares_and_loses_none() {
    let pg = Postgres::start("outage");
    let dir = scratch("outage-spool");
    let store = Store::open(&pg.url).await.expect("open");
    let log = ShareLog::spawn(store.clone(), dir.clone());
    for i in 0..100 {
        log.record(share(i)).await.expect("recorded while up");
    }
    pg.stop();
    // While the database is down every share is still acknowledged: it is in the spool.
    for i in 100..300 {
        log.record(share(i)).await.expect("recorded while down");
    }
    assert!(log.stats().spooled.load(Ordering::Relaxed) >= 200);
    let url = pg.restart();
    assert_eq!(url, pg.url);
    // The next commits replay the spool.
    let mut i = 300;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        log.record(share(i)).await.expect("recorded after");
        i += 1;
        let count = store.share_count().await.unwrap_or(0);
        if count == i {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spool not replayed: {count} of {i}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        store.share_count().await.expect("count"),
        i,
        "every share exactly once"
    );
}

mod blocks {
    use super::*;
    use quarry_ledger::schemes::{FeePolicy, SplitDestination};
    use quarry_ledger::{BlockRecord, BlockStatus, CreditStatus, Rewards, Scheme};

    fn block(hash: &str, found_ms: i64) -> BlockRecord {
        BlockRecord {
            hash: hash.into(),
            height: 1000,
            status: BlockStatus::Submitted,
            reward: 1_000_000,
            worker: "alice.rig".into(),
            address: "alice".into(),
            found_ms,
            network_difficulty: 10.0,
            instance: "test".into(),
            chain: Chain::BITCOIN,
            reject_reason: None,
        }
    }

    fn record(address: &str, difficulty: f64, ms: i64) -> ShareRecord {
        ShareRecord {
            created_ms: ms,
            address: address.into(),
            worker: format!("{address}.rig"),
            difficulty,
            network_difficulty: 10.0,
            block_reward: 1_000_000,
            height: 1000,
            template_id: 1,
            is_block: false,
            instance: "test".into(),
            chain: Chain::BITCOIN,
            aux_payouts: Default::default(),
            hash: None,
        }
    }

    /// A 1 % fee, split 60/40 between `dev` and `ops`.
    pub fn dev_ops_policy() -> FeePolicy {
        FeePolicy {
            fee_ppm: 10_000,
            split: vec![
                SplitDestination {
                    label: "dev".into(),
                    address: "dev".into(),
                    ppm: 600_000,
                },
                SplitDestination {
                    label: "ops".into(),
                    address: "ops".into(),
                    ppm: 400_000,
                },
            ],
        }
    }

    /// PPLNS with N = 2 (window 20), 1 % fee split 60/40 between two destinations.
    pub async fn lifecycle(store: &Store) {
        // Oldest first: carol 10 (outside the window), bob 8, alice 12 → window = 12 + 8.
        store
            .insert_shares(&[
                record("carol", 10.0, 1),
                record("bob", 8.0, 2),
                record("alice", 12.0, 3),
            ])
            .await
            .expect("shares");
        let rewards = Rewards::new(Scheme::Pplns { n: 2.0 }, dev_ops_policy());
        let found = block("b1", 3);
        store.insert_block(&found).await.expect("block");
        store
            .insert_block(&found)
            .await
            .expect("same block again is a no-op");
        let credits = rewards.credits_for(store, &found).await.expect("credits");
        assert!(store.credit_block("b1", &credits, 4).await.expect("credit"));
        assert!(
            !store.credit_block("b1", &credits, 4).await.expect("once"),
            "credited once"
        );

        // 1,000,000 sat: fee 10,000 (dev 6,000, ops 4,000); miners 990,000 as 12:8.
        let balances = store.balances().await.expect("balances");
        let immature = |who: &str| {
            balances
                .iter()
                .find(|b| b.address == who)
                .map(|b| (b.mature_msat, b.immature_msat))
        };
        assert_eq!(immature("alice"), Some((0, 594_000_000)));
        assert_eq!(immature("bob"), Some((0, 396_000_000)));
        assert_eq!(immature("dev"), Some((0, 6_000_000)));
        assert_eq!(immature("ops"), Some((0, 4_000_000)));
        assert_eq!(immature("carol"), None, "outside the window");

        // Maturity makes them payable.
        assert!(store
            .transition_block(
                "b1",
                BlockStatus::Pending,
                BlockStatus::Confirmed,
                Some((CreditStatus::Immature, CreditStatus::Mature))
            )
            .await
            .expect("confirm"));
        let alice = store
            .balances()
            .await
            .expect("balances")
            .into_iter()
            .find(|b| b.address == "alice")
            .expect("alice");
        assert_eq!((alice.mature_msat, alice.immature_msat), (594_000_000, 0));

        // A second block is orphaned: its credits are reversed, nobody keeps them.
        store
            .insert_shares(&[record("bob", 20.0, 5)])
            .await
            .expect("share");
        let orphan = block("b2", 5);
        store.insert_block(&orphan).await.expect("block");
        let credits = rewards.credits_for(store, &orphan).await.expect("credits");
        assert!(store.credit_block("b2", &credits, 6).await.expect("credit"));
        let bob_before = store.balances().await.expect("balances");
        assert!(bob_before
            .iter()
            .any(|b| b.address == "bob" && b.immature_msat == 990_000_000));
        assert!(store
            .transition_block(
                "b2",
                BlockStatus::Pending,
                BlockStatus::Orphaned,
                Some((CreditStatus::Immature, CreditStatus::Reversed))
            )
            .await
            .expect("orphan"));
        let bob = store
            .balances()
            .await
            .expect("balances")
            .into_iter()
            .find(|b| b.address == "bob")
            .expect("bob");
        // Bob keeps what the confirmed block paid him; the orphan's 990,000 sat are gone.
        assert_eq!((bob.mature_msat, bob.immature_msat), (396_000_000, 0));
        let statuses: Vec<BlockStatus> = store
            .blocks(None, 10)
            .await
            .expect("blocks")
            .into_iter()
            .map(|b| b.status)
            .collect();
        assert_eq!(
            statuses,
            vec![BlockStatus::Orphaned, BlockStatus::Confirmed]
        );

        // A block every node refused keeps the node's reason; only a submitted block moves.
        store
            .insert_block(&block("refused", 9))
            .await
            .expect("insert");
        assert!(store
            .reject_block("refused", "bad-cb-amount")
            .await
            .expect("reject"));
        assert!(!store
            .reject_block("refused", "again")
            .await
            .expect("reject twice"));
        let refused = store
            .blocks(Some(BlockStatus::Rejected), 10)
            .await
            .expect("blocks");
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].hash, "refused");
        assert_eq!(refused[0].reject_reason.as_deref(), Some("bad-cb-amount"));
        let others = store.blocks(None, 10).await.expect("blocks");
        assert!(others
            .iter()
            .filter(|b| b.hash != "refused")
            .all(|b| b.reject_reason.is_none()));
    }
}

#[tokio::test]
async fn sqlite_block_lifecycle_credits_matures_and_reverses() {
    let dir = scratch("blocks-sqlite");
    let store = Store::open(&format!("sqlite://{}", dir.join("q.db").display()))
        .await
        .expect("open");
    blocks::lifecycle(&store).await;
}

#[tokio::test]
async fn postgres_block_lifecycle_credits_matures_and_reverses() {
    let pg = Postgres::start("blocks-pg");
    let store = Store::open(&pg.url).await.expect("open");
    blocks::lifecycle(&store).await;
}

mod accrual_and_retention {
    use super::*;
    use quarry_ledger::schemes::{pps_credit_msat, FeePolicy};
    use quarry_ledger::{BlockRecord, BlockStatus, Rewards, Scheme};

    fn record(address: &str, difficulty: f64, ms: i64) -> ShareRecord {
        ShareRecord {
            created_ms: ms,
            address: address.into(),
            worker: format!("{address}.w"),
            difficulty,
            network_difficulty: 1000.0,
            block_reward: 312_500_000,
            height: 1,
            template_id: 1,
            is_block: false,
            instance: "t".into(),
            chain: Chain::BITCOIN,
            aux_payouts: Default::default(),
            hash: None,
        }
    }

    async fn owed(store: &Store, who: &str) -> Option<i64> {
        store
            .balances()
            .await
            .expect("balances")
            .into_iter()
            .find(|b| b.address == who)
            .map(|b| b.mature_msat)
    }

    pub async fn pps(store: &Store) {
        store
            .insert_shares(&[
                record("a", 1.0, 1),
                record("b", 2.0, 2),
                record("a", 0.5, 3),
            ])
            .await
            .expect("shares");
        // 2 % fee: a difficulty-1 share at network difficulty 1000 is worth 306,250 sat.
        assert_eq!(
            store
                .accrue_pps(20_000, 1000, i64::MAX, 10)
                .await
                .expect("accrue"),
            3
        );
        assert_eq!(
            store
                .accrue_pps(20_000, 1000, i64::MAX, 11)
                .await
                .expect("again"),
            0,
            "idempotent"
        );
        let one = pps_credit_msat(1.0, 1000.0, Sat(312_500_000), 20_000).to_db();
        assert_eq!(one, 306_250_000);
        assert_eq!(owed(store, "a").await, Some(one + one / 2));
        assert_eq!(owed(store, "b").await, Some(2 * one));
        store
            .insert_shares(&[record("b", 1.0, 4), record("a", 1.0, 100)])
            .await
            .expect("shares");
        // The share at t = 100 has not settled (cut-off 50): only the one before it counts.
        assert_eq!(
            store.accrue_pps(20_000, 1000, 50, 12).await.expect("new"),
            1,
            "only new, settled shares"
        );
        assert_eq!(owed(store, "b").await, Some(3 * one));
        assert_eq!(owed(store, "a").await, Some(one + one / 2));
        assert_eq!(
            store
                .accrue_pps(20_000, 1000, 101, 13)
                .await
                .expect("settled"),
            1
        );
        assert_eq!(owed(store, "a").await, Some(2 * one + one / 2));
    }

    pub async fn retention(store: &Store) {
        // Shares at t = 1..=10 (difficulty 1 each); an uncredited block at t = 10 whose PPLNS
        // window (N = 2, network difficulty 2 → 4 shares) reaches back to t = 7.
        let shares: Vec<ShareRecord> = (1..=10).map(|t| record("a", 1.0, t)).collect();
        store.insert_shares(&shares).await.expect("shares");
        store
            .insert_block(&BlockRecord {
                hash: "uncredited".into(),
                height: 5,
                status: BlockStatus::Submitted,
                reward: 100,
                worker: "a.w".into(),
                address: "a".into(),
                found_ms: 10,
                network_difficulty: 2.0,
                instance: "t".into(),
                chain: Chain::BITCOIN,
                reject_reason: None,
            })
            .await
            .expect("block");
        let rewards = Rewards::new(
            Scheme::Pplns { n: 2.0 },
            FeePolicy {
                fee_ppm: 0,
                split: Vec::new(),
            },
        );
        // Retention alone would cut everything before t = 100; the block's window keeps 7..=10.
        let cutoff = rewards
            .retention_cutoff(store, 1_000, 900)
            .await
            .expect("cutoff");
        assert_eq!(cutoff, 7);
        assert_eq!(
            store.prune_shares(cutoff, i64::MAX).await.expect("prune"),
            6
        );
        assert_eq!(store.share_count().await.expect("count"), 4);
        // Once the block is credited nothing holds the window back.
        store
            .credit_block("uncredited", &[], 11)
            .await
            .expect("credit");
        let cutoff = rewards
            .retention_cutoff(store, 1_000, 900)
            .await
            .expect("cutoff");
        assert_eq!(cutoff, 100);
        // PPS progress protects shares not credited yet.
        assert_eq!(store.prune_shares(cutoff, 8).await.expect("prune"), 2);
        assert_eq!(store.share_count().await.expect("count"), 2);
    }
}

#[tokio::test]
async fn sqlite_pps_accrual_and_retention() {
    let dir = scratch("pps-sqlite");
    let store = Store::open(&format!("sqlite://{}", dir.join("q.db").display()))
        .await
        .expect("open");
    accrual_and_retention::pps(&store).await;
    let dir = scratch("retention-sqlite");
    let store = Store::open(&format!("sqlite://{}", dir.join("q.db").display()))
        .await
        .expect("open");
    accrual_and_retention::retention(&store).await;
}

#[tokio::test]
async fn postgres_pps_accrual_and_retention() {
    let pg = Postgres::start("pps-pg");
    let store = Store::open(&pg.url).await.expect("open");
    accrual_and_retention::pps(&store).await;
    let pg2 = Postgres::start("retention-pg");
    let store = Store::open(&pg2.url).await.expect("open");
    accrual_and_retention::retention(&store).await;
}

/// Migration 0006 (the chain key) on a database written by the schema before it: every old row
/// is kept and is Bitcoin's, and a second chain's rows never mix with Bitcoin's sums.
mod chain_key {
    use std::collections::BTreeMap;

    use super::*;
    use quarry_ledger::{BlockRecord, BlockStatus, Credit, CreditStatus};
    use sqlx::any::{install_default_drivers, AnyPoolOptions};
    use sqlx::Executor;

    /// The schema as it was before the chain key: migrations 0001-0005 only, run by sqlx
    /// itself so that their checksums are the real ones.
    async fn old_schema(url: &str, backend: &str) {
        let dir = scratch("old-migrations");
        let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(backend);
        for entry in std::fs::read_dir(&source).expect("migrations") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .to_string();
            if name.as_str() < "0006" {
                std::fs::copy(&path, dir.join(&name)).expect("copy");
            }
        }
        install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .expect("connect");
        sqlx::migrate::Migrator::new(dir.as_path())
            .await
            .expect("old migrations")
            .run(&pool)
            .await
            .expect("old schema");
        for sql in [
            "INSERT INTO shares (created_ms, address, worker, difficulty, network_difficulty, \
             block_reward, height, template_id, is_block, instance) \
             VALUES (10, 'alice', 'alice.rig', 2.0, 10.0, 1000000, 100, 1, 0, 'old')",
            "INSERT INTO blocks (hash, height, status, reward, worker, address, found_ms, \
             share_id, network_difficulty, instance) \
             VALUES ('oldblock', 100, 'confirmed', 1000000, 'alice.rig', 'alice', 11, NULL, 10.0, 'old')",
            "INSERT INTO credits (block_hash, address, amount_msat, kind, status, created_ms) \
             VALUES ('oldblock', 'alice', 700000000, 'pplns', 'mature', 12)",
            "INSERT INTO payouts (tag, status, created_ms) VALUES ('old-payout', 'sent', 13)",
            "INSERT INTO payout_items (payout_id, address, amount_sat) \
             VALUES ((SELECT id FROM payouts WHERE tag = 'old-payout'), 'alice', 300000)",
        ] {
            pool.execute(sql).await.expect(sql);
        }
        pool.close().await;
    }

    pub async fn upgrade(url: &str, backend: &str) {
        old_schema(url, backend).await;
        let store = Store::open(url).await.expect("migrates to the chain key");
        let bitcoin = Chain::BITCOIN;

        // Every old row is still there, and Bitcoin's.
        let shares = store
            .shares_newest_first(&bitcoin, 1000, 10)
            .await
            .expect("shares");
        assert_eq!(shares.len(), 1);
        assert_eq!(
            (shares[0].address.as_str(), shares[0].chain.clone()),
            ("alice", bitcoin.clone())
        );
        let blocks = store.blocks(None, 10).await.expect("blocks");
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].chain, bitcoin);
        let payouts = store.payouts(10).await.expect("payouts");
        assert_eq!(
            (payouts[0].chain.clone(), payouts[0].total_sat),
            (bitcoin.clone(), 300_000)
        );
        // 700,000 sat credited, 300,000 already paid.
        assert_eq!(
            store.payable(&bitcoin).await.expect("payable"),
            BTreeMap::from([("alice".to_string(), Sat(400_000))])
        );

        // A second chain: its block, credits and payouts stay its own.
        let namecoin = Chain::new("namecoin").expect("key");
        store
            .insert_block(&BlockRecord {
                hash: "auxblock".into(),
                height: 5000,
                status: BlockStatus::Submitted,
                reward: 5_000_000,
                worker: "alice.rig".into(),
                address: "alice".into(),
                found_ms: 20,
                network_difficulty: 3.0,
                instance: "new".into(),
                reject_reason: None,
                chain: namecoin.clone(),
            })
            .await
            .expect("aux block");
        let credit = Credit {
            address: "alice".into(),
            amount_msat: Msat(5_000_000_000),
            kind: "pplns".into(),
        };
        assert!(store
            .credit_block("auxblock", &[credit], 21)
            .await
            .expect("credit"));
        assert!(store
            .transition_block(
                "auxblock",
                BlockStatus::Pending,
                BlockStatus::Confirmed,
                Some((CreditStatus::Immature, CreditStatus::Mature)),
            )
            .await
            .expect("mature"));
        assert_eq!(
            store.payable(&namecoin).await.expect("payable"),
            BTreeMap::from([("alice".to_string(), Sat(5_000_000))])
        );
        assert_eq!(
            store.payable(&bitcoin).await.expect("payable"),
            BTreeMap::from([("alice".to_string(), Sat(400_000))]),
            "another chain's credit is not Bitcoin's"
        );
        let balances = store.balances().await.expect("balances");
        let per_chain: Vec<(String, i64)> = balances
            .iter()
            .map(|b| (b.chain.to_string(), b.mature_msat))
            .collect();
        assert_eq!(
            per_chain,
            [
                ("bitcoin".to_string(), 700_000_000),
                ("namecoin".to_string(), 5_000_000_000)
            ]
        );
        store
            .create_payout(
                &namecoin,
                "aux-payout",
                &BTreeMap::from([("alice".to_string(), Sat(1))]),
                22,
            )
            .await
            .expect("aux payout");
        assert_eq!(
            store
                .pending_payouts(&bitcoin)
                .await
                .expect("pending")
                .len(),
            0
        );
        assert_eq!(
            store
                .pending_payouts(&namecoin)
                .await
                .expect("pending")
                .len(),
            1
        );
        assert_eq!(
            store.payable(&bitcoin).await.expect("payable")["alice"],
            Sat(400_000),
            "another chain's payout is not Bitcoin's"
        );
    }
}

#[tokio::test]
async fn sqlite_chain_key_migration_keeps_old_rows_and_separates_chains() {
    let dir = scratch("chain-sqlite");
    let url = format!("sqlite://{}?mode=rwc", dir.join("q.db").display());
    chain_key::upgrade(&url, "sqlite").await;
}

#[tokio::test]
async fn postgres_chain_key_migration_keeps_old_rows_and_separates_chains() {
    let pg = Postgres::start("chain-pg");
    chain_key::upgrade(&pg.url, "postgres").await;
}

/// An aux block is paid from the parent chain's shares by the same scheme, after the
/// merge-mining fee and then the pool's fee, to the satoshi.
mod merged_credits {
    use std::collections::BTreeMap;

    use super::blocks::dev_ops_policy;
    use super::*;
    use quarry_ledger::{BlockRecord, BlockStatus, MergeMiningFee, Rewards, Scheme};

    pub async fn aux_block(store: &Store) {
        let share = |address: &str, difficulty: f64, ms: i64, chain: &Chain| ShareRecord {
            created_ms: ms,
            address: address.into(),
            worker: format!("{address}.rig"),
            difficulty,
            network_difficulty: 10.0,
            block_reward: 1_000_000,
            height: 1000,
            template_id: 1,
            is_block: false,
            instance: "test".into(),
            chain: chain.clone(),
            aux_payouts: Default::default(),
            hash: None,
        };
        let namecoin = Chain::new("namecoin").expect("key");
        let kaspa = Chain::new("kaspa").expect("key");
        store
            .insert_shares(&[
                share("carol", 10.0, 1, &Chain::BITCOIN),
                // Bob names his namecoin address: his namecoin credits go there.
                ShareRecord {
                    aux_payouts: BTreeMap::from([("namecoin".into(), "nc-bob".into())]),
                    hash: None,
                    ..share("bob", 8.0, 2, &Chain::BITCOIN)
                },
                // Another chain's work is never in Bitcoin's window.
                share("dave", 1000.0, 3, &kaspa),
                share("alice", 12.0, 4, &Chain::BITCOIN),
            ])
            .await
            .expect("shares");
        assert_eq!(
            store.aux_payouts_of("bob", 0).await.expect("named"),
            BTreeMap::from([("namecoin".to_string(), "nc-bob".to_string())])
        );
        assert!(store
            .aux_payouts_of("alice", 0)
            .await
            .expect("named")
            .is_empty());
        let mut rewards = Rewards::new(Scheme::Pplns { n: 2.0 }, dev_ops_policy());
        rewards.parents.insert(namecoin.clone(), Chain::BITCOIN);
        rewards.merge_mining_fee = Some(MergeMiningFee {
            fee_ppm: 10_000,
            commons: BTreeMap::from([(namecoin.clone(), "nc-commons".to_string())]),
            contributor_id: "quarry-test".into(),
        });
        let block = BlockRecord {
            hash: "aux1".into(),
            height: 500,
            status: BlockStatus::Submitted,
            reward: 1_000_000,
            worker: "alice.rig".into(),
            address: "alice".into(),
            found_ms: 5,
            network_difficulty: 10.0,
            instance: "test".into(),
            reject_reason: None,
            chain: namecoin.clone(),
        };
        store.insert_block(&block).await.expect("block");
        let credits = rewards.credits_for(store, &block).await.expect("credits");
        let by: BTreeMap<(String, String), u64> = credits
            .iter()
            .map(|c| ((c.kind.clone(), c.address.clone()), c.amount_msat.0 / 1000))
            .collect();
        // 1 % = 10,000 to the commons; of 990,000, 1 % = 9,900 to dev/ops (5,940 / 3,960);
        // 980,100 to the window alice 12 + bob 8 (588,060 / 392,040).
        assert_eq!(
            by,
            BTreeMap::from([
                (("merge_mining_fee".into(), "nc-commons".into()), 10_000),
                (("fee".into(), "dev".into()), 5_940),
                (("fee".into(), "ops".into()), 3_960),
                (("pplns".into(), "alice".into()), 588_060),
                (("pplns".into(), "nc-bob".into()), 392_040),
            ])
        );
        assert_eq!(
            credits.iter().map(|c| c.amount_msat.0).sum::<u64>(),
            1_000_000_000
        );
        assert!(store
            .credit_block("aux1", &credits, 6)
            .await
            .expect("credit"));
        let balances = store.balances().await.expect("balances");
        assert!(balances
            .iter()
            .filter(|b| b.address == "alice")
            .all(|b| b.chain == namecoin && b.immature_msat == 588_060_000));

        // PROP reads the same payees: bob's named address, alice's own.
        let mut prop = rewards.clone();
        prop.scheme = Scheme::Prop;
        let credits = prop.credits_for(store, &block).await.expect("credits");
        let payees: std::collections::BTreeSet<&str> = credits
            .iter()
            .filter(|c| c.kind == "prop")
            .map(|c| c.address.as_str())
            .collect();
        assert_eq!(
            payees,
            std::collections::BTreeSet::from(["alice", "carol", "nc-bob"])
        );

        // Solo: the aux reward (after the merge-mining fee) goes to the finder.
        let mut solo = rewards.clone();
        solo.scheme = Scheme::Solo;
        solo.policy = quarry_ledger::schemes::FeePolicy {
            fee_ppm: 0,
            split: Vec::new(),
        };
        let credits = solo.credits_for(store, &block).await.expect("credits");
        let paid: Vec<(&str, u64)> = credits
            .iter()
            .map(|c| (c.address.as_str(), c.amount_msat.0 / 1000))
            .collect();
        assert_eq!(paid, [("nc-commons", 10_000), ("alice", 990_000)]);
        // A Bitcoin block in solo mode is paid by its own coinbase: nothing to credit.
        let mut own = block.clone();
        own.chain = Chain::BITCOIN;
        assert!(solo
            .credits_for(store, &own)
            .await
            .expect("credits")
            .is_empty());
    }
}

#[tokio::test]
async fn sqlite_aux_blocks_are_credited_from_parent_shares_after_the_merge_mining_fee() {
    let dir = scratch("merged-sqlite");
    let store = Store::open(&format!("sqlite://{}", dir.join("q.db").display()))
        .await
        .expect("open");
    merged_credits::aux_block(&store).await;
}

#[tokio::test]
async fn postgres_aux_blocks_are_credited_from_parent_shares_after_the_merge_mining_fee() {
    let pg = Postgres::start("merged-pg");
    let store = Store::open(&pg.url).await.expect("open");
    merged_credits::aux_block(&store).await;
}

/// Hashrate history on a simulated clock: minute buckets roll up into hours with the sum of
/// difficulty unchanged, late minutes still reach their hour, and both are pruned on time.
mod history {
    use quarry_ledger::history::{Bucket, HistoryShare, HOUR_MS, MINUTE_MS};
    use quarry_ledger::{Chain, HistoryBook, Retention, Scope, Store};

    /// An hour boundary in 2027.
    const T0: i64 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR_MS;

    fn total(rows: &[quarry_ledger::history::BucketRow], pool: bool) -> f64 {
        rows.iter()
            .filter(|r| r.worker.is_empty() == pool)
            .map(|r| r.bucket.difficulty)
            .sum()
    }

    pub async fn roll_up_and_prune(store: &Store) {
        let mut book = HistoryBook::new();
        let mut expected = 0.0;
        // Three hours of two workers, a write every 15 simulated seconds.
        let mut now = T0;
        while now < T0 + 3 * HOUR_MS {
            for (i, worker) in ["miner1.a", "miner1.b", "miner2.x"].iter().enumerate() {
                let difficulty = 0.001 * (1 + i as i64 + (now / 15_000) % 5) as f64;
                expected += difficulty;
                book.accepted(&HistoryShare {
                    chain: "bitcoin",
                    address: worker.split('.').next().unwrap_or(worker),
                    worker,
                    difficulty,
                    achieved: difficulty * 3.0,
                    time_ms: now + 7,
                });
            }
            if now % (20 * MINUTE_MS) == 0 {
                book.rejected("bitcoin", "miner2", "miner2.x", "stale", now + 9);
            }
            store.write_history(&book.take()).await.expect("write");
            now += 15_000;
        }
        let minutes = store.history_rows(60).await.expect("rows");
        assert_eq!(
            minutes.iter().filter(|r| r.worker.is_empty()).count(),
            180,
            "one pool row per minute"
        );
        assert!((total(&minutes, false) - expected).abs() < 1e-9);
        assert!(
            (total(&minutes, true) - expected).abs() < 1e-9,
            "pool = sum of workers"
        );

        // One minute after the third hour ends: within the grace, only two hours roll up.
        let report = store
            .roll_up_history(T0 + 3 * HOUR_MS + MINUTE_MS, Retention::default())
            .await
            .expect("roll up");
        assert_eq!(report.rolled_until_ms, T0 + 2 * HOUR_MS);
        assert_eq!(
            report.hours_written,
            2 * 4,
            "two hours of three workers and the pool"
        );
        assert_eq!(report.minutes_pruned, 0, "minutes are kept a day");
        let report = store
            .roll_up_history(T0 + 3 * HOUR_MS + 3 * MINUTE_MS, Retention::default())
            .await
            .expect("roll up");
        assert_eq!(report.rolled_until_ms, T0 + 3 * HOUR_MS);
        assert_eq!(report.hours_written, 4);
        // Run again: nothing is added twice.
        let again = store
            .roll_up_history(T0 + 3 * HOUR_MS + 4 * MINUTE_MS, Retention::default())
            .await
            .expect("roll up");
        assert_eq!(again.hours_written, 0);
        let hours = store.history_rows(3600).await.expect("rows");
        assert_eq!(hours.iter().filter(|r| r.worker.is_empty()).count(), 3);
        assert!(
            (total(&hours, true) - expected).abs() < 1e-9,
            "the roll-up keeps the sum"
        );
        assert!((total(&hours, false) - expected).abs() < 1e-9);
        let rejected: i64 = hours
            .iter()
            .filter(|r| r.worker.is_empty())
            .map(|r| r.bucket.rejected)
            .sum();
        assert_eq!(rejected, 9, "a stale share every 20 minutes");

        // A late minute of the first hour (an instance that was cut off): it reaches the hour.
        book.accepted(&HistoryShare {
            chain: "bitcoin",
            address: "miner2",
            worker: "miner2.x",
            difficulty: 0.5,
            achieved: 100.0,
            time_ms: T0 + 30 * MINUTE_MS,
        });
        expected += 0.5;
        store.write_history(&book.take()).await.expect("late write");
        let hours = store.history_rows(3600).await.expect("rows");
        assert!(
            (total(&hours, true) - expected).abs() < 1e-9,
            "late minute in its hour"
        );

        // The series: hour steps read hour buckets, minute steps minute buckets, same sums.
        let hourly = store
            .history(&Chain::BITCOIN, Scope::Pool, T0, T0 + 3 * HOUR_MS, HOUR_MS)
            .await
            .expect("series");
        assert_eq!(hourly.len(), 3);
        let sum = |series: &[Bucket]| series.iter().map(|b| b.difficulty).sum::<f64>();
        assert!((sum(&hourly) - expected).abs() < 1e-9);
        let tenths = store
            .history(
                &Chain::BITCOIN,
                Scope::Pool,
                T0,
                T0 + 3 * HOUR_MS,
                10 * MINUTE_MS,
            )
            .await
            .expect("series");
        assert_eq!(tenths.len(), 18);
        assert!((sum(&tenths) - expected).abs() < 1e-9);
        let miner = store
            .history(
                &Chain::BITCOIN,
                Scope::Miner("miner1"),
                T0,
                T0 + 3 * HOUR_MS,
                HOUR_MS,
            )
            .await
            .expect("series");
        let worker = store
            .history(
                &Chain::BITCOIN,
                Scope::Worker("miner2", "miner2.x"),
                T0,
                T0 + 3 * HOUR_MS,
                HOUR_MS,
            )
            .await
            .expect("series");
        assert!((sum(&miner) + sum(&worker) - expected).abs() < 1e-9);

        // A day later the minutes are pruned; the hours, and the sum, stay.
        let report = store
            .roll_up_history(T0 + 27 * HOUR_MS + 5 * MINUTE_MS, Retention::default())
            .await
            .expect("roll up");
        assert_eq!(
            report.minutes_pruned as usize,
            minutes.len(),
            "every minute row (the late one added to its own)"
        );
        assert!(store.history_rows(60).await.expect("rows").is_empty());
        let hourly = store
            .history(&Chain::BITCOIN, Scope::Pool, T0, T0 + 3 * HOUR_MS, HOUR_MS)
            .await
            .expect("series");
        assert!(
            (sum(&hourly) - expected).abs() < 1e-9,
            "hours outlive minutes"
        );
        // A year later the hours go too: the history is bounded.
        let report = store
            .roll_up_history(T0 + 366 * 24 * HOUR_MS, Retention::default())
            .await
            .expect("roll up");
        assert_eq!(report.hours_pruned, 3 * 4);
        assert!(store.history_rows(3600).await.expect("rows").is_empty());

        // Workers: best share ever and since the last block, last difficulty, rejects by reason.
        let workers = store
            .worker_summaries(&Chain::BITCOIN, "miner2")
            .await
            .expect("workers");
        assert_eq!(workers.len(), 1);
        assert_eq!(workers[0].best_difficulty, 100.0);
        assert_eq!(workers[0].rejects.get("stale"), Some(&9));
        book.block_found("bitcoin");
        store.write_history(&book.take()).await.expect("reset");
        let workers = store
            .worker_summaries(&Chain::BITCOIN, "miner2")
            .await
            .expect("workers");
        assert_eq!(
            (workers[0].best_difficulty, workers[0].round_best_difficulty),
            (100.0, 0.0)
        );
        let pool = store
            .worker_summaries(&Chain::BITCOIN, "")
            .await
            .expect("pool");
        assert_eq!(pool.len(), 1);
        assert_eq!(pool[0].shares, 3 * 720 + 1);
    }
}

#[tokio::test]
async fn sqlite_history_rolls_up_and_prunes_on_a_simulated_clock() {
    let dir = scratch("history");
    let store = Store::open(&format!("sqlite://{}", dir.join("l.db").display()))
        .await
        .expect("open");
    history::roll_up_and_prune(&store).await;
}

#[tokio::test]
async fn postgres_history_rolls_up_and_prunes_on_a_simulated_clock() {
    let pg = Postgres::start("history");
    let store = Store::open(&pg.url).await.expect("open");
    history::roll_up_and_prune(&store).await;
}

/// Payouts in the coinbase on each backend: a block's table is stored with it, reserves the
/// balances it pays at once, credits exactly its earnings, becomes a sent payout at confirmation
/// and a void one when orphaned or refused (its balances owed again).
mod coinbase_ledger {
    use std::collections::BTreeMap;

    use super::*;
    use quarry_ledger::coinbase::{plan, CoinbaseLimits, OutputCost, WindowSnapshot};
    use quarry_ledger::schemes::FeePolicy;
    use quarry_ledger::store::CreditStatus;
    use quarry_ledger::{BlockRecord, BlockStatus, Rewards, Scheme};

    fn share(address: &str, difficulty: f64, ms: i64) -> ShareRecord {
        ShareRecord {
            address: address.into(),
            worker: format!("{address}.rig"),
            difficulty,
            created_ms: ms,
            hash: Some(format!("{ms:064x}")),
            ..super::share(ms)
        }
    }

    fn block(hash: &str, height: i64, reward: i64, ms: i64) -> BlockRecord {
        BlockRecord {
            hash: hash.into(),
            height,
            status: BlockStatus::Submitted,
            reward,
            worker: "a.rig".into(),
            address: "a".into(),
            found_ms: ms,
            network_difficulty: 1.0,
            instance: "test".into(),
            reject_reason: None,
            chain: Chain::BITCOIN,
        }
    }

    fn payout_status(payouts: &[quarry_ledger::store::PayoutRecord], hash: &str) -> String {
        payouts
            .iter()
            .find(|p| p.tag == format!("coinbase-{hash}"))
            .map(|p| p.status.clone())
            .unwrap_or_default()
    }

    pub async fn lifecycle(store: &Store) {
        // a: 6, b: 3, c: 1 of difficulty, in id order.
        let mut shares = Vec::new();
        for (i, address) in ["a", "a", "b", "a", "b", "c", "a", "a", "b", "a"]
            .iter()
            .enumerate()
        {
            shares.push(share(address, 1.0, 1_000 + i as i64));
        }
        store.insert_shares(&shares).await.expect("shares");
        let window = store
            .window_shares_after(&Chain::BITCOIN, 0, i64::MAX, 100)
            .await
            .expect("window");
        assert_eq!(window.len(), 10);
        assert!(window.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
        let unsettled = store
            .window_shares_after(&Chain::BITCOIN, 0, 1_005, 100)
            .await
            .expect("settled prefix");
        assert_eq!(unsettled.len(), 5, "only shares older than the settle time");
        let end = window.last().expect("shares").id;
        let published = store
            .published_shares(&Chain::BITCOIN, end, 100)
            .await
            .expect("published");
        assert_eq!(published.len(), 10);
        assert_eq!(published[0].id, end, "newest first");
        assert_eq!(
            published[0].hash.as_deref(),
            Some(format!("{:064x}", 1_009).as_str())
        );

        let snapshot = WindowSnapshot::from_newest_first(window.iter().rev(), 10.0);
        let policy = FeePolicy {
            fee_ppm: 0,
            split: Vec::new(),
        };
        let limits = CoinbaseLimits {
            min_output_sat: 2_000,
            max_outputs: 10,
            weight_budget: 10_000,
            sigops_budget: 400,
        };
        let p2wpkh = |_: &str| {
            Some(OutputCost {
                weight: 124,
                sigops: 0,
            })
        };
        // 10,000 sat: a 6,000 and b 3,000 get outputs; c's 1,000 is carried.
        let first = plan(
            1,
            Sat(10_000),
            &snapshot,
            &BTreeMap::new(),
            &policy,
            &limits,
            p2wpkh,
        );
        let rewards = Rewards::new(Scheme::CoinbasePplns { n: 10.0 }, policy.clone());
        let b1 = block("b1", 1, 10_000, 2_000);
        store
            .insert_coinbase_block(&b1, &first, "tx1")
            .await
            .expect("record");
        store
            .insert_coinbase_block(&b1, &first, "tx1")
            .await
            .expect("twice: a no-op");
        let (stored, txid) = store
            .coinbase_table("b1")
            .await
            .expect("read")
            .expect("stored");
        assert_eq!((stored, txid.as_str()), (first.clone(), "tx1"));
        let credits = rewards.credits_for(store, &b1).await.expect("credits");
        let credited: BTreeMap<&str, u64> = credits
            .iter()
            .map(|c| (c.address.as_str(), c.amount_msat.0 / 1000))
            .collect();
        assert_eq!(
            credited,
            BTreeMap::from([("a", 6_000), ("b", 3_000), ("c", 1_000)])
        );
        assert!(store
            .credit_block("b1", &credits, 2_000)
            .await
            .expect("credit"));
        assert!(store
            .transition_block(
                "b1",
                BlockStatus::Pending,
                BlockStatus::Confirmed,
                Some((CreditStatus::Immature, CreditStatus::Mature))
            )
            .await
            .expect("confirm"));
        let payouts = store.payouts(100).await.expect("payouts");
        assert_eq!(payout_status(&payouts, "b1"), "sent");
        let paid = store.paid(&Chain::BITCOIN).await.expect("paid");
        assert_eq!(paid.get("a"), Some(&(6_000, 6_000)));
        assert_eq!(
            store.payable(&Chain::BITCOIN).await.expect("payable"),
            BTreeMap::from([("c".to_string(), Sat(1_000))]),
            "c's earnings are carried; a and b were paid in the coinbase"
        );

        // The next block pays c's balance from b's earnings, carried since b's address cannot
        // be paid this time.
        let carried = store.payable(&Chain::BITCOIN).await.expect("payable");
        let second = plan(
            2,
            Sat(10_000),
            &snapshot,
            &carried,
            &policy,
            &limits,
            |a: &str| {
                (a != "b").then_some(OutputCost {
                    weight: 124,
                    sigops: 0,
                })
            },
        );
        let c = second.entries.iter().find(|e| e.address == "c").expect("c");
        assert_eq!((c.carried_sat, c.output_sat), (1_000, 2_000));
        let b2 = block("b2", 2, 10_000, 3_000);
        store
            .insert_coinbase_block(&b2, &second, "tx2")
            .await
            .expect("record");
        assert!(
            store
                .payable(&Chain::BITCOIN)
                .await
                .expect("payable")
                .is_empty(),
            "the balance is reserved as soon as the block is recorded"
        );
        let credits = rewards.credits_for(store, &b2).await.expect("credits");
        assert!(store
            .credit_block("b2", &credits, 3_000)
            .await
            .expect("credit"));
        // Orphaned: the payout is void and c is owed its balance again; b2's credits reversed.
        assert!(store
            .transition_block(
                "b2",
                BlockStatus::Pending,
                BlockStatus::Orphaned,
                Some((CreditStatus::Immature, CreditStatus::Reversed))
            )
            .await
            .expect("orphan"));
        let payouts = store.payouts(100).await.expect("payouts");
        assert_eq!(payout_status(&payouts, "b2"), "void");
        assert_eq!(
            store.payable(&Chain::BITCOIN).await.expect("payable"),
            BTreeMap::from([("c".to_string(), Sat(1_000))])
        );

        // Refused by every node: void as well.
        let b3 = block("b3", 3, 10_000, 4_000);
        store
            .insert_coinbase_block(&b3, &second, "tx3")
            .await
            .expect("record");
        assert!(store
            .reject_block("b3", "bad-cb-amount")
            .await
            .expect("reject"));
        let payouts = store.payouts(100).await.expect("payouts");
        assert_eq!(payout_status(&payouts, "b3"), "void");
        assert_eq!(
            store.payable(&Chain::BITCOIN).await.expect("payable").len(),
            1
        );

        // A block without a table (the window was empty) is credited by plain PPLNS.
        let b4 = block("b4", 4, 10_000, 5_000);
        store.insert_block(&b4).await.expect("record");
        let credits = rewards.credits_for(store, &b4).await.expect("credits");
        let total: u64 = credits.iter().map(|c| c.amount_msat.0).sum();
        assert_eq!(total, 10_000_000);
        assert_eq!(
            credits
                .iter()
                .find(|c| c.address == "a")
                .map(|c| c.amount_msat.0),
            Some(6_000_000)
        );

        // One frontend pays balances.
        let lock = store.try_coinbase_balances_lock().await.expect("lock");
        assert!(lock.is_some());
    }
}

#[tokio::test]
async fn sqlite_coinbase_payouts_reserve_credit_and_settle_with_their_block() {
    let dir = scratch("coinbase-sqlite");
    let store = Store::open(&format!("sqlite://{}", dir.join("q.db").display()))
        .await
        .expect("open");
    coinbase_ledger::lifecycle(&store).await;
}

#[tokio::test]
async fn postgres_coinbase_payouts_reserve_credit_and_settle_with_their_block() {
    let pg = Postgres::start("coinbase-pg");
    let store = Store::open(&pg.url).await.expect("open");
    coinbase_ledger::lifecycle(&store).await;
    // A second frontend on the same database does not get the balances lock.
    let other = Store::open(&pg.url).await.expect("open");
    let held = store.try_coinbase_balances_lock().await.expect("lock");
    assert!(held.is_some());
    assert!(other
        .try_coinbase_balances_lock()
        .await
        .expect("lock")
        .is_none());
}
