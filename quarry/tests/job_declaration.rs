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
