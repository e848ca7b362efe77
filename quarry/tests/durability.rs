//! A share the pool acknowledged is never lost, also under `kill -9`.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_shares_survive_kill_9() {
    let nodes = Regtest::single();
    let dir = scratch_dir("kill9");
    let port = free_port();
    let mut pool = start_pool(&dir, &pool_config(&nodes, &dir, port, ""), port).await;
    let address = nodes.var("MINING_ADDRESS").to_string();
    let mut miner = Process::spawn(
        &[
            "mine",
            &format!("stratum+tcp://127.0.0.1:{port}"),
            "--user",
            &format!("{address}.kill9"),
            "--threads",
            "1",
            "--duration",
            "8",
        ],
        &dir.join("mine.log"),
    );
    // Let shares flow, then kill the pool without warning (SIGKILL).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.child.kill().expect("SIGKILL the pool");
    let _ = pool.child.wait();
    assert!(miner.wait(Duration::from_secs(30)), "miner stops by itself");
    let summary = miner.log_text();
    let acknowledged: i64 = summary
        .lines()
        .find_map(|l| l.strip_prefix("accepted="))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("miner summary: {summary}"));
    assert!(acknowledged > 0, "shares were acknowledged before the kill");

    let url = format!("sqlite://{}", dir.join("data/quarry.db").display());
    let store = quarry_ledger::Store::open(&url)
        .await
        .expect("open the killed pool's ledger");
    let stored = store.share_count().await.expect("count");
    assert!(
        stored >= acknowledged,
        "every acknowledged share is stored: {stored} stored, {acknowledged} acknowledged"
    );
}
