//! The HTTP API, /metrics and the event stream, against a pool mining on the regtest pair.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

async fn get(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    let body = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// On Bitcoin Core: everything up to mature balances (Core here has no wallet to pay from).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_metrics_and_events_describe_the_pool() {
    describe_the_pool(Regtest::start()).await;
}

/// On the wallet node: the same, then a payout run from the admin endpoint and its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_admin_payout_run_pays_and_is_announced() {
    describe_the_pool(Regtest::with_wallet()).await;
}

/// Every series /metrics exports is in docs/metrics.md, and so is every series the Grafana
/// dashboard in contrib/ charts; the pool's own (not Kaspa's or an aux chain's) are exported.
fn metrics_are_documented_and_charted(metrics: &str) {
    let root = repo_root();
    let docs = std::fs::read_to_string(root.join("docs/metrics.md")).expect("docs/metrics.md");
    let grafana: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("contrib/grafana/quarry.json")).expect("dashboard"),
    )
    .expect("the Grafana dashboard is JSON");
    let names = |text: &str| -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find("quarry_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.push(name);
        }
        names.sort();
        names.dedup();
        names
    };
    // HELP/TYPE lines too: a labelled series (rejects by reason) has no sample until it happens.
    let exported: Vec<String> = names(metrics);
    let documented =
        |name: &str| docs.contains(&format!("`{name}`")) || docs.contains(&format!("`{name}{{"));
    assert!(exported.len() >= 15, "{exported:?}");
    for name in &exported {
        assert!(
            documented(name),
            "{name} is exported but not in docs/metrics.md"
        );
    }
    let mut charted = Vec::new();
    for panel in grafana["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            charted.extend(names(target["expr"].as_str().unwrap_or("")));
        }
    }
    assert!(charted.len() >= 20, "{charted:?}");
    for name in &charted {
        assert!(documented(name), "Grafana charts {name}, undocumented");
        if !name.starts_with("quarry_kaspa_") && !name.starts_with("quarry_aux_") {
            assert!(
                exported.contains(name),
                "Grafana charts {name}, which /metrics lacks"
            );
        }
    }
}

async fn describe_the_pool(nodes: Regtest) {
    let pays = nodes.kind == NodeKind::Wallet;
    let dir = scratch_dir("api");
    let port = free_port();
    let api_port = free_port();
    // The wallet node must own the pool's address to pay from it.
    let pool_address = if pays {
        let address = nodes.rpc_ok('A', "getnewaddress", json!([])).await;
        address.as_str().expect("address").to_string()
    } else {
        nodes.new_address().await
    };
    let miner_address = nodes.new_address().await;
    let mut config = pool_config(&nodes, &dir, port, "").replace(
        "mode = \"solo\"",
        &format!("mode = \"pool\"\npool_address = \"{pool_address}\""),
    );
    config.push_str(&format!(
        "\n[payout]\nscheme = \"pplns\"\ninterval_secs = 0\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\nadmin_token = \"s3cret\"\n"
    ));
    let _pool = start_pool(&dir, &config, port).await;
    let base = format!("http://127.0.0.1:{api_port}");

    // Follow the event stream from the start.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let events_url = format!("{base}/api/events");
    let collector = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut response = reqwest::get(&events_url).await.expect("SSE");
        let mut buffer = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                if let Some(name) = frame.lines().find_map(|l| l.strip_prefix("event: ")) {
                    collector.lock().expect("lock").push(name.to_string());
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut miner = Process::spawn(
        &[
            "mine",
            &format!("stratum+tcp://127.0.0.1:{port}"),
            "--user",
            &format!("{miner_address}.api"),
            "--threads",
            "1",
            "--duration",
            "3",
        ],
        &dir.join("mine.log"),
    );
    assert!(miner.wait(Duration::from_secs(30)), "miner stops");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, pool) = get(&format!("{base}/api/pool")).await;
    assert_eq!(status, 200, "{pool}");
    assert!(
        pool["blocks_found"].as_u64().expect("blocks") >= 1,
        "{pool}"
    );
    assert_eq!(pool["active_miners"], 1, "{pool}");
    assert!(pool["hashrate"].as_f64().expect("hashrate") > 0.0, "{pool}");
    assert!(
        pool["network_difficulty"].as_f64().expect("difficulty") > 0.0,
        "{pool}"
    );
    assert_eq!(pool["scheme"], "pplns");

    let (status, miner_view) = get(&format!("{base}/api/miners/{miner_address}")).await;
    assert_eq!(status, 200, "{miner_view}");
    assert_eq!(
        miner_view["workers"][0]["worker"],
        format!("{miner_address}.api")
    );
    assert!(
        wait_until(Duration::from_secs(20), || async {
            let (_, view) = get(&format!("{base}/api/miners/{miner_address}")).await;
            view["balance"]["immature_msat"].as_i64().unwrap_or(0) > 0
        })
        .await,
        "blocks credit the miner (immature)"
    );
    let (status, missing) = get(&format!("{base}/api/miners/nobody")).await;
    assert_eq!(status, 404);
    assert!(missing["error"].is_string(), "errors are JSON: {missing}");
    let (status, _) = get(&format!("{base}/api/nope")).await;
    assert_eq!(status, 404);

    let (_, workers) = get(&format!("{base}/api/workers")).await;
    assert_eq!(workers.as_array().expect("list").len(), 1);
    let (_, blocks) = get(&format!("{base}/api/blocks?limit=5")).await;
    assert!(!blocks.as_array().expect("list").is_empty());
    let (_, network) = get(&format!("{base}/api/network")).await;
    assert!(network["height"].as_u64().expect("height") > 101);
    let (_, openapi) = get(&format!("{base}/api/openapi.json")).await;
    assert!(openapi["paths"]["/api/miners/{address}"].is_object());

    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "quarry_shares_accepted_total",
        "quarry_blocks_found_total",
        "quarry_connections",
        "quarry_template_age_seconds",
        "quarry_node_rpc_seconds",
        "quarry_hashrate",
    ] {
        assert!(
            metrics.contains(&format!("\n{name} "))
                || metrics.starts_with(&format!("{name} "))
                || metrics.contains(&format!("# TYPE {name} ")),
            "{name} in /metrics"
        );
    }
    let accepted: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("quarry_shares_accepted_total "))
        .and_then(|v| v.parse().ok())
        .expect("accepted counter");
    assert!(accepted >= 1.0);
    metrics_are_documented_and_charted(&metrics);

    // History: the API serves the windows it documents and refuses others.
    let (status, history) = get(&format!("{base}/api/history?window=24h")).await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["window"], "24h");
    assert_eq!(history["step_secs"], 600.0);
    assert_eq!(history["points"].as_array().expect("points").len(), 144);
    let (status, _) = get(&format!("{base}/api/history?window=2w")).await;
    assert_eq!(status, 400);
    let (status, mine) = get(&format!(
        "{base}/api/miners/{miner_address}/history?window=1h"
    ))
    .await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["points"].as_array().expect("points").len(), 60);
    assert!(openapi["paths"]["/api/history"]["get"]["parameters"].is_array());
    assert!(openapi["paths"]["/api/miners/{address}/history"].is_object());
    // The worker's best share reaches the ledger within a history write or two.
    let best = wait_until(Duration::from_secs(20), || async {
        let (_, miner) = get(&format!("{base}/api/miners/{miner_address}")).await;
        miner["workers"][0]["best_difficulty"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    })
    .await;
    assert!(best, "the worker's best share is served");

    // Admin: refused without the token, runs with it.
    let client = reqwest::Client::new();
    let admin = format!("{base}/api/admin/payouts/run");
    assert_eq!(
        client
            .post(&admin)
            .send()
            .await
            .expect("post")
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        client
            .post(&admin)
            .bearer_auth("wrong")
            .send()
            .await
            .expect("post")
            .status()
            .as_u16(),
        401
    );

    // Mature the blocks, pay out, and watch the stream say so.
    let b_address = nodes.new_address().await;
    nodes
        .rpc_ok('B', "generatetoaddress", json!([101, b_address]))
        .await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            let (_, view) = get(&format!("{base}/api/miners/{miner_address}")).await;
            view["balance"]["mature_msat"].as_i64().unwrap_or(0) > 0
        })
        .await,
        "credits mature"
    );
    let mut expected = vec![
        "MiningJobCreated",
        "ShareSubmitted",
        "BlockFound",
        "BlockConfirmed",
        "MinerConnected",
        "MinerDisconnected",
    ];
    if pays {
        pay_from_the_admin_endpoint(&client, &admin, &base, &miner_address).await;
        expected.push("PayoutSent");
    }
    assert!(
        wait_until(Duration::from_secs(10), || async {
            let names = seen.lock().expect("lock").clone();
            expected.iter().all(|n| names.iter().any(|s| s == n))
        })
        .await,
        "events seen: {:?}",
        {
            let mut names = seen.lock().expect("lock").clone();
            names.dedup();
            names
        }
    );
}

async fn pay_from_the_admin_endpoint(
    client: &reqwest::Client,
    admin: &str,
    base: &str,
    miner: &str,
) {
    let response = client
        .post(admin)
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("post");
    assert_eq!(
        response.status().as_u16(),
        200,
        "{}",
        response.text().await.unwrap_or_default()
    );
    let (_, payments) = get(&format!("{base}/api/payments")).await;
    assert_eq!(payments[0]["status"], "sent", "{payments}");
    // The miner's dashboard page lists the payout that paid it, by its transaction.
    let txid = payments[0]["txid"].as_str().expect("txid");
    let page = reqwest::get(format!("{base}/miners/{miner}"))
        .await
        .expect("miner page")
        .text()
        .await
        .expect("html");
    assert!(
        page.contains(&txid[..10]),
        "payout {txid} on the miner page:\n{page}"
    );
}
