//! The web dashboard in headless Chromium (Debian's `chromium`, driven by playwright-core from
//! npm: tests/browser/dashboard.mjs) while `quarry mine` mines on a Bitcoin Core regtest node.
//! Screenshots of every page land in target/test-artifacts/dashboard/.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// The browser script's npm packages, installed from the lockfile when missing.
fn browser_dir() -> std::path::PathBuf {
    repo_root().join("quarry/tests/browser")
}

fn npm_ci() {
    let dir = browser_dir();
    if dir
        .join("node_modules/playwright-core/package.json")
        .exists()
        && dir.join("node_modules/axe-core/axe.min.js").exists()
    {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .expect("npm (scripts/test.sh installs Node.js's npm when missing)");
    assert!(status.success(), "npm ci in {}", dir.display());
}

async fn get(url: &str) -> Value {
    reqwest::get(url)
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_pool_mining_in_a_real_browser() {
    npm_ci();
    let nodes = Regtest::single();
    let dir = scratch_dir("dashboard");
    let port = free_port();
    let api_port = free_port();
    let mut config = pool_config(&nodes, &dir, port, "");
    config.push_str(&format!("\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n"));
    let pool = start_pool(&dir, &config, port).await;
    let base = format!("http://127.0.0.1:{api_port}");
    let address = nodes.new_address().await;
    let worker = format!("{address}.browser");
    // Mines until the test ends (killed on drop): the live check needs blocks to keep coming.
    let _miner = Process::spawn(
        &[
            "mine",
            &format!("stratum+tcp://127.0.0.1:{port}"),
            "--user",
            &worker,
            "--threads",
            "1",
        ],
        &dir.join("mine.log"),
    );
    // Shares and a block in the ledger, and the worker's best share written by the history.
    let ready = wait_until(Duration::from_secs(60), || async {
        let pool = get(&format!("{base}/api/pool")).await;
        let miner = get(&format!("{base}/api/miners/{address}")).await;
        pool["hashrate"].as_f64().unwrap_or(0.0) > 0.0
            && pool["blocks_found"].as_u64().unwrap_or(0) > 0
            && miner["workers"][0]["best_difficulty"]
                .as_f64()
                .unwrap_or(0.0)
                > 0.0
    })
    .await;
    assert!(ready, "the pool mines:\n{}", pool.log_text());

    let artifacts = repo_root().join("target/test-artifacts/dashboard");
    let output = Command::new("node")
        .arg(browser_dir().join("dashboard.mjs"))
        .arg(&base)
        .arg(&address)
        .arg(&worker)
        .arg(&artifacts)
        .output()
        .expect("node runs tests/browser/dashboard.mjs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser checks pass:\n{stdout}\n{stderr}\npool log tail:\n{}",
        pool.log_text()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("the script's JSON report");
    // What the script measured, asserted here too: it is the acceptance record.
    let transferred = report["pages"]["overview"]["transferred_bytes"]
        .as_u64()
        .expect("overview size");
    assert!(transferred < 300 * 1024, "overview {transferred} B");
    assert!(
        report["pages"]["miner"]["best_share"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    );
    for page in [
        "overview",
        "overview-live",
        "overview-phone",
        "miner",
        "blocks",
        "payments",
    ] {
        let shot = artifacts.join(format!("{page}.png"));
        let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "screenshot {}", shot.display());
    }
}
