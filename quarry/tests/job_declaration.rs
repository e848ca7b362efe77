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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sri_jd_client_declares_its_transactions_and_mines_them_on_quarry() {
    let nodes = Regtest::single();
    let dir = scratch_dir("jd-sri");
    // Transactions in the mempool: the JDC's templates carry them, and so must its blocks.
    let key = TestKey::random();
    let coins = fund(&nodes, &key, 2).await;
    let txids = fill_mempool(&nodes, &key, &coins, 3).await;
    let pool_address = nodes.new_address().await;
    let miner_address = nodes.new_address().await;

    let port = free_port();
    let authority = AuthorityKeypair::generate();
    let mut config = pool_config(&nodes, &dir, port, "").replace(
        "mode = \"solo\"",
        &format!("mode = \"pool\"\npool_address = \"{pool_address}\""),
    );
    config.push_str(&sv2_section(&authority));
    config.push_str("job_declaration = true\n");
    let pool = start_pool(&dir, &config, port).await;
    let store = Store::open(&format!(
        "sqlite://{}",
        dir.join("data/quarry.db").display()
    ))
    .await
    .expect("ledger");

    let (_tp, tp_port, tp_authority) = start_tp(&nodes, &dir, "").await;
    let identity = format!("{miner_address}.jdc");
    let mut jdc = JdClient::start(
        &dir,
        port,
        &authority.public_text(),
        &identity,
        tp_port,
        &tp_authority.public_text(),
        "FULLTEMPLATE",
    )
    .await;
    let before = nodes.height().await;
    let url = format!(
        "stratum2+tcp://127.0.0.1:{}/{}",
        jdc.port,
        jdc.authority.public_text()
    );
    let mut miner = Process::spawn(
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
            "20",
        ],
        &dir.join("mine.log"),
    );
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

/// A TCP relay to `target` that can be cut: how a test takes a JDS away without taking the
/// pool (Quarry serves both on one port).
struct Relay {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
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
    let nodes = Regtest::single();
    let dir = scratch_dir("jd-proxy");
    let key = TestKey::random();
    let coins = fund(&nodes, &key, 2).await;
    let txids = fill_mempool(&nodes, &key, &coins, 3).await;
    let pool_address = nodes.new_address().await;
    let miner_address = nodes.new_address().await;

    let port = free_port();
    let authority = AuthorityKeypair::generate();
    let mut config = pool_config(&nodes, &dir, port, "").replace(
        "mode = \"solo\"",
        &format!("mode = \"pool\"\npool_address = \"{pool_address}\""),
    );
    config.push_str(&sv2_section(&authority));
    config.push_str("job_declaration = true\n");
    let pool = start_pool(&dir, &config, port).await;
    let store = Store::open(&format!(
        "sqlite://{}",
        dir.join("data/quarry.db").display()
    ))
    .await
    .expect("ledger");
    let relay = Relay::start(port).await;

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

    // Shares from both phases are in the ledger, credited to the proxy's identity.
    let shares = store
        .shares_newest_first(&quarry_ledger::Chain::BITCOIN, i64::MAX, 10_000)
        .await
        .expect("shares");
    let ours = shares.iter().filter(|s| s.worker == identity).count();
    assert!(ours >= 2, "shares credited to {identity}: {ours}");
}
