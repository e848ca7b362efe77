//! Job Declaration on Bitcoin Core regtest: SRI's `jd_client_sv2`, fed templates by `quarry
//! tp`, declares its own jobs (its own transactions) to Quarry's JDS and mines them on Quarry's
//! pool; the blocks carry its transactions, pay the pool, and the shares are in the ledger.

mod support;

use std::time::Duration;

use quarry_ledger::Store;
use quarry_stratum::v2::AuthorityKeypair;
use serde_json::json;
use support::keys::{fill_mempool, fund, TestKey};
use support::sri::*;
use support::*;

/// `quarry serve` in pool mode paying `pool_address`, with SV2 and Job Declaration on (and
/// coinbase-only declarers taken if `coinbase_only`), and its ledger.
struct JdPool {
    pool: Process,
    store: Store,
    port: u16,
    authority: AuthorityKeypair,
}

impl JdPool {
    async fn start(
        nodes: &Regtest,
        dir: &std::path::Path,
        pool_address: &str,
        coinbase_only: bool,
    ) -> JdPool {
        let port = free_port();
        let authority = AuthorityKeypair::generate();
        let mut config = pool_config(nodes, dir, port, "").replace(
            "mode = \"solo\"",
            &format!("mode = \"pool\"\npool_address = \"{pool_address}\""),
        );
        config.push_str(&sv2_section(&authority));
        config.push_str("job_declaration = true\n");
        if coinbase_only {
            config.push_str("jd_coinbase_only = true\n");
        }
        let pool = start_pool(dir, &config, port).await;
        let store = Store::open(&format!(
            "sqlite://{}",
            dir.join("data/quarry.db").display()
        ))
        .await
        .expect("ledger");
        JdPool {
            pool,
            store,
            port,
            authority,
        }
    }
}

/// A Quarry pool with Job Declaration in pool mode, `quarry tp` on the same node, and SRI's
/// JDC between them in `mode`.
struct SriJd {
    nodes: Regtest,
    dir: std::path::PathBuf,
    pool: Process,
    store: Store,
    _tp: Process,
    jdc: JdClient,
    identity: String,
    pool_address: String,
}

impl SriJd {
    async fn start(name: &str, mode: &str, before_pool: impl AsyncFnOnce(&Regtest)) -> SriJd {
        let nodes = Regtest::single();
        let dir = scratch_dir(name);
        before_pool(&nodes).await;
        let pool_address = nodes.new_address().await;
        let miner_address = nodes.new_address().await;
        let JdPool {
            pool,
            store,
            port,
            authority,
        } = JdPool::start(&nodes, &dir, &pool_address, true).await;
        let (tp, tp_port, tp_authority) = start_tp(&nodes, &dir, "template_refresh_secs = 1").await;
        let identity = format!("{miner_address}.jdc");
        let jdc = JdClient::start(
            &dir,
            port,
            &authority.public_text(),
            &identity,
            tp_port,
            &tp_authority.public_text(),
            mode,
        )
        .await;
        SriJd {
            nodes,
            dir,
            pool,
            store,
            _tp: tp,
            jdc,
            identity,
            pool_address,
        }
    }
}

/// `quarry mine` behind the JDC for `secs`.
fn miner_behind(jdc: &JdClient, dir: &std::path::Path, secs: &str) -> Process {
    let url = format!(
        "stratum2+tcp://127.0.0.1:{}/{}",
        jdc.port,
        jdc.authority.public_text()
    );
    Process::spawn(
        &[
            "mine",
            &url,
            "--user",
            "behind-jdc",
            "--threads",
            "1",
            "--hashrate",
            "10000",
            "--duration",
            secs,
        ],
        &dir.join("mine.log"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sri_jd_client_declares_its_transactions_and_mines_them_on_quarry() {
    // Transactions in the mempool: the JDC's templates carry them, and so must its blocks.
    let key = TestKey::random();
    let mut txids = Vec::new();
    let SriJd {
        nodes,
        dir,
        pool,
        store,
        _tp,
        mut jdc,
        identity,
        pool_address,
    } = SriJd::start("jd-sri", "FULLTEMPLATE", async |nodes: &Regtest| {
        let coins = fund(nodes, &key, 2).await;
        txids = fill_mempool(nodes, &key, &coins, 3).await;
    })
    .await;
    let before = nodes.height().await;
    let mut miner = miner_behind(&jdc, &dir, "20");
    // A block from the declared job: it holds the mempool's transactions.
    let mined = wait_until(Duration::from_secs(40), || async {
        nodes.height().await > before
    })
    .await;
    let _ = miner.wait(Duration::from_secs(1));
    jdc.stop();
    let context = || {
        format!(
            "pool:\n{}\njdc:\n{}\nminer:\n{}",
            pool.log_text(),
            jdc.log(),
            miner.log_text()
        )
    };
    assert!(mined, "a block from the JDC's declared job\n{}", context());
    let jdc_log = jdc.log();
    assert!(
        jdc_log.contains("DeclareMiningJobSuccess"),
        "Quarry's JDS accepted the declaration\n{}",
        context()
    );
    assert!(
        jdc_log.contains("SetCustomMiningJobSuccess"),
        "Quarry's pool accepted the custom job\n{}",
        context()
    );
    assert!(
        !jdc_log.contains("solo mining mode"),
        "the JDC never fell back\n{}",
        context()
    );

    let hash = nodes.rpc_ok('A', "getblockhash", json!([before + 1])).await;
    let block = nodes.rpc_ok('A', "getblock", json!([hash, 2])).await;
    let in_block: Vec<String> = block["tx"]
        .as_array()
        .expect("transactions")
        .iter()
        .filter_map(|tx| tx["txid"].as_str().map(str::to_string))
        .collect();
    for txid in &txids {
        assert!(
            in_block.contains(&txid.to_string()),
            "the block carries the JDC's transaction {txid}: {in_block:?}"
        );
    }
    let coinbase = &block["tx"][0];
    let paid_to_pool: f64 = coinbase["vout"]
        .as_array()
        .expect("outputs")
        .iter()
        .filter(|o| o["scriptPubKey"]["address"].as_str() == Some(pool_address.as_str()))
        .filter_map(|o| o["value"].as_f64())
        .sum();
    assert!(
        paid_to_pool > 0.0,
        "the declared coinbase pays the pool: {coinbase}"
    );
    let script_sig = coinbase["vin"][0]["coinbase"].as_str().expect("scriptSig");
    assert!(
        script_sig.contains(&hex::encode("quarry-jd-test")),
        "the JDC built the coinbase: {script_sig}"
    );

    // The shares and the block are in the ledger, credited to the JDC's identity.
    let credited = wait_until(Duration::from_secs(20), || async {
        let blocks = store.blocks(None, 100).await.unwrap_or_default();
        blocks
            .iter()
            .any(|b| b.hash == hash.as_str().unwrap_or_default())
    })
    .await;
    assert!(credited, "the block is in the ledger\n{}", context());
    let shares = store
        .shares_newest_first(&quarry_ledger::Chain::BITCOIN, i64::MAX, 1000)
        .await
        .expect("shares");
    assert!(
        shares.iter().any(|s| s.worker == identity),
        "shares credited to {identity}: {shares:?}"
    );
}

/// SRI's JDC in COINBASEONLY mode, on a Quarry that takes it: nothing is declared, and the
/// allocated token names a custom job Quarry accepts. (Mining coinbase-only jobs down to a
/// credited block is tested with `quarry proxy --jd-mode coinbase-only` below: SRI's JDC 0.6.0
/// builds coinbase-only jobs only from templates on the current tip, since on a new tip it
/// leaves the pool's zero-value output unfilled and its job factory refuses the sum, and the
/// miners it already serves keep their earlier job, so on regtest, where every share is a
/// block, its blocks come from its local jobs before a custom job reaches them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sri_jd_client_in_coinbase_only_mode_gets_its_custom_jobs_accepted() {
    let key = TestKey::random();
    let mut coins = Vec::new();
    let jd = SriJd::start("jd-sri-cb", "COINBASEONLY", async |nodes: &Regtest| {
        coins = fund(nodes, &key, 1).await;
    })
    .await;
    // An idle SV2 miner makes the JDC open its channel on Quarry without finding blocks.
    let _idle = Process::spawn(
        &[
            "loadgen",
            &format!("127.0.0.1:{}", jd.jdc.port),
            "--sv2",
            "--authority-pubkey",
            &jd.jdc.authority.public_text(),
            "--miners",
            "1",
            "--rate",
            "0",
            "--duration",
            "60",
            "--user",
            "idle",
        ],
        &jd.dir.join("idle.log"),
    );
    let channel = wait_until(Duration::from_secs(20), || async {
        jd.jdc
            .log()
            .contains("Extended mining channel successfully initialized")
    })
    .await;
    assert!(
        channel,
        "the JDC opened its channel on Quarry\n{}",
        jd.jdc.log()
    );
    // New transactions make `quarry tp` send a template on the current tip.
    fill_mempool(&jd.nodes, &key, &coins, 3).await;
    let custom = wait_until(Duration::from_secs(20), || async {
        jd.jdc.log().contains("SetCustomMiningJobSuccess")
    })
    .await;
    let context = || {
        format!(
            "pool:\n{}\njdc:\n{}",
            plain(&jd.pool.log_text()),
            jd.jdc.log()
        )
    };
    assert!(custom, "Quarry took the coinbase-only job\n{}", context());
    let jdc_log = jd.jdc.log();
    assert!(
        !jdc_log.contains("DeclareMiningJob("),
        "nothing declared\n{}",
        context()
    );
    assert!(!jdc_log.contains("solo mining mode"), "{}", context());
    assert!(
        !plain(&jd.pool.log_text()).contains("custom job refused"),
        "{}",
        context()
    );
}

/// A TCP relay to `target` that can be cut: how a test takes a JDS away without taking the
/// pool (Quarry serves both on one port).
struct Relay {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay on `port` (0: any free one) to `target`.
    async fn start(port: u16, target: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind relay");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                links.spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay { port, task }
    }

    /// Cuts every connection through it and stops listening.
    fn cut(&self) {
        self.task.abort();
    }
}

fn paid_by(block: &serde_json::Value) -> String {
    block["tx"][0]["vin"][0]["coinbase"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `quarry proxy --jd`: V1 miners behind it mine the proxy's own templates (its node's
/// transactions), declared to Quarry's JDS; when the JDS goes away they go on with the pool's
/// jobs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarry_proxy_declares_its_own_jobs_and_falls_back_when_the_jds_goes() {
    proxy_declares_and_falls_back(false).await;
}

/// The same in coinbase-only mode, on a pool that takes it: the pool never sees the
/// transactions; the proxy's node publishes the blocks, and the pool credits them once its node
/// has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarry_proxy_in_coinbase_only_mode_mines_its_own_transactions() {
    proxy_declares_and_falls_back(true).await;
}

async fn proxy_declares_and_falls_back(coinbase_only: bool) {
    let nodes = Regtest::single();
    let dir = scratch_dir(if coinbase_only {
        "jd-proxy-cb"
    } else {
        "jd-proxy"
    });
    let key = TestKey::random();
    let coins = fund(&nodes, &key, 2).await;
    let txids = fill_mempool(&nodes, &key, &coins, 3).await;
    let pool_address = nodes.new_address().await;
    let miner_address = nodes.new_address().await;

    let JdPool {
        pool,
        store,
        port,
        authority,
    } = JdPool::start(&nodes, &dir, &pool_address, coinbase_only).await;
    let relay = Relay::start(0, port).await;

    let identity = format!("{miner_address}.jdproxy");
    let proxy_port = free_port();
    let upstream = format!(
        "stratum2+tcp://127.0.0.1:{port}/{}",
        authority.public_text()
    );
    let jds = format!(
        "stratum2+tcp://127.0.0.1:{}/{}",
        relay.port,
        authority.public_text()
    );
    let proxy = Process::spawn(
        &[
            "proxy",
            "--listen",
            &format!("127.0.0.1:{proxy_port}"),
            "--upstream",
            &upstream,
            "--user",
            &identity,
            "--jd",
            "--jd-node",
            &nodes.rpc_url('A'),
            "--jd-node-cookie",
            nodes.var("NODE_A_COOKIE"),
            "--jds",
            &jds,
            "--jd-retry-secs",
            "1",
            "--jd-mode",
            if coinbase_only {
                "coinbase-only"
            } else {
                "full-template"
            },
        ],
        &dir.join("proxy.log"),
    );
    assert!(
        listens(proxy_port, Duration::from_secs(20)).await,
        "proxy listens:\n{}",
        proxy.log_text()
    );
    let before = nodes.height().await;
    let miner = |name: &str, secs: &str| {
        Process::spawn(
            &[
                "mine",
                &format!("stratum+tcp://127.0.0.1:{proxy_port}"),
                "--user",
                "rig1",
                "--threads",
                "1",
                "--duration",
                secs,
            ],
            &dir.join(name),
        )
    };
    let mut first = miner("mine1.log", "30");
    let mined = wait_until(Duration::from_secs(40), || async {
        nodes.height().await > before
    })
    .await;
    let context = |miner: &Process| {
        format!(
            "pool:\n{}\nproxy:\n{}\nminer:\n{}",
            plain(&pool.log_text()),
            plain(&proxy.log_text()),
            miner.log_text()
        )
    };
    assert!(mined, "a block from the declared job\n{}", context(&first));
    let hash = nodes.rpc_ok('A', "getblockhash", json!([before + 1])).await;
    let block = nodes.rpc_ok('A', "getblock", json!([hash, 2])).await;
    let in_block: Vec<&str> = block["tx"]
        .as_array()
        .expect("transactions")
        .iter()
        .filter_map(|tx| tx["txid"].as_str())
        .collect();
    for txid in &txids {
        assert!(
            in_block.contains(&txid.to_string().as_str()),
            "the block carries the proxy's transaction {txid}: {in_block:?}\n{}",
            context(&first)
        );
    }
    assert!(
        paid_by(&block).contains(&hex::encode("/quarry-jd/")),
        "the proxy built the coinbase: {}",
        paid_by(&block)
    );
    let proxy_log = plain(&proxy.log_text());
    assert!(proxy_log.contains("mining our declared job"), "{proxy_log}");
    // The pool has the block in its ledger: assembled and submitted by the pool from the
    // declared transactions, or (coinbase only) seen on the node after the proxy published it.
    let recorded = wait_until(Duration::from_secs(20), || async {
        let blocks = store.blocks(None, 1000).await.unwrap_or_default();
        blocks
            .iter()
            .any(|b| b.hash == hash.as_str().unwrap_or_default())
    })
    .await;
    assert!(recorded, "the block is in the ledger\n{}", context(&first));
    if coinbase_only {
        assert!(
            plain(&pool.log_text()).contains("block found on a coinbase-only job"),
            "the pool knew it could not build the block\n{}",
            context(&first)
        );
    }

    // The JDS goes away: miners go on with the pool's own jobs, and find blocks on them.
    relay.cut();
    let fell_back = wait_until(Duration::from_secs(20), || async {
        plain(&proxy.log_text()).contains("Job Declaration over")
    })
    .await;
    assert!(fell_back, "the proxy noticed\n{}", context(&first));
    let _ = first.wait(Duration::from_secs(1));
    drop(first);
    let height = nodes.height().await;
    let mut second = miner("mine2.log", "6");
    let mined = wait_until(Duration::from_secs(30), || async {
        nodes.height().await > height
    })
    .await;
    assert!(mined, "blocks on the pool's jobs\n{}", context(&second));
    let tip = nodes.rpc_ok('A', "getbestblockhash", json!([])).await;
    let block = nodes.rpc_ok('A', "getblock", json!([tip, 2])).await;
    assert!(
        paid_by(&block).contains(&hex::encode("/quarry-test/")),
        "after the fallback the pool built the coinbase: {}",
        paid_by(&block)
    );
    assert!(second.wait(Duration::from_secs(30)), "miner stops");

    // The JDS comes back: the proxy redials it and declares its own jobs again.
    let _back = Relay::start(relay.port, port).await;
    let mut third = miner("mine3.log", "6");
    let redeclared = wait_until(Duration::from_secs(20), || async {
        let log = plain(&proxy.log_text());
        // A declared job mined after the second set-up.
        log.match_indices("Job Declaration set up")
            .nth(1)
            .is_some_and(|(at, _)| log[at..].contains("mining our declared job"))
    })
    .await;
    assert!(
        redeclared,
        "declared jobs again once the JDS is back\n{}",
        context(&third)
    );
    assert!(third.wait(Duration::from_secs(30)), "miner stops");

    // Shares from both phases are in the ledger, credited to the proxy's identity.
    let shares = store
        .shares_newest_first(&quarry_ledger::Chain::BITCOIN, i64::MAX, 10_000)
        .await
        .expect("shares");
    let ours = shares.iter().filter(|s| s.worker == identity).count();
    assert!(ours >= 2, "shares credited to {identity}: {ours}");
}
