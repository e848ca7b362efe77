//! End to end on a real regtest node pair: `quarry mine` → `quarry serve` → bitcoind.

mod support;

use std::str::FromStr;
use std::time::Duration;

use bitcoin::{Address, Network};
use serde_json::{json, Value};
use support::*;

async fn height(nodes: &Regtest, node: char) -> u64 {
    nodes
        .rpc_ok(node, "getblockcount", json!([]))
        .await
        .as_u64()
        .expect("height")
}

async fn block_at(nodes: &Regtest, node: char, height: u64) -> (String, bitcoin::Block) {
    let hash = nodes.rpc_ok(node, "getblockhash", json!([height])).await;
    let hash = hash.as_str().expect("hash").to_string();
    let raw = nodes.rpc_ok(node, "getblock", json!([hash, 0])).await;
    let bytes = hex::decode(raw.as_str().expect("hex")).expect("hex");
    (
        hash,
        bitcoin::consensus::deserialize(&bytes).expect("block decodes"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_miner_finds_blocks_the_nodes_accept() {
    let nodes = Regtest::start();
    let dir = scratch_dir("mine");
    let port = free_port();
    // The first node is dead: templates must come from the second (failover).
    let dead = free_port();
    let config = pool_config(&nodes, &dir, port, "").replacen(
        "[[node]]",
        &format!("[[node]]\nurl = \"http://127.0.0.1:{dead}\"\nuser = \"x\"\npassword = \"y\"\n\n[[node]]"),
        1,
    );
    let pool = start_pool(&dir, &config, port).await;
    // The payout address is a fresh key of the test: the coinbase must pay it, not the node.
    let address = nodes.new_address().await;
    let start_height = height(&nodes, 'A').await;

    let mut miner = Process::spawn(
        &[
            "mine",
            &format!("stratum+tcp://127.0.0.1:{port}"),
            "--user",
            &format!("{address}.cpu"),
            "--threads",
            "1",
            "--duration",
            "6",
        ],
        &dir.join("mine.log"),
    );
    assert!(miner.wait(Duration::from_secs(30)), "miner stops by itself");
    let summary = miner.log_text();
    assert!(summary.contains("rejected=0"), "{summary}");
    assert!(
        pool.log_text().contains("getblocktemplate failed"),
        "the dead node was tried first"
    );

    let tip_a = height(&nodes, 'A').await;
    assert!(
        tip_a >= start_height + 3,
        "at least 3 blocks found: {start_height} -> {tip_a}"
    );
    // Every block reaches the second node.
    let synced = wait_until(Duration::from_secs(20), || async {
        nodes.rpc('B', "getbestblockhash", json!([])).await.ok()
            == nodes.rpc('A', "getbestblockhash", json!([])).await.ok()
    })
    .await;
    assert!(synced, "node B follows node A");

    let payout = Address::from_str(&address)
        .expect("address")
        .require_network(Network::Regtest)
        .expect("regtest")
        .script_pubkey();
    let saved: Vec<String> = std::fs::read_dir(dir.join("data/blocks"))
        .expect("blocks dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    for h in start_height + 1..=tip_a {
        let (hash, block) = block_at(&nodes, 'B', h).await;
        let coinbase = &block.txdata[0];
        assert_eq!(
            coinbase.output[0].script_pubkey, payout,
            "block {h} pays the miner"
        );
        let script_sig = coinbase.input[0].script_sig.as_bytes();
        assert!(
            script_sig.windows(13).any(|w| w == b"/quarry-test/"),
            "block {h} carries the pool tag"
        );
        assert!(
            saved.iter().any(|name| name == &format!("{h}-{hash}.hex")),
            "block {h} was saved before submission"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_shares_get_their_codes_and_a_node_restart_keeps_miners() {
    let nodes = Regtest::start();
    let dir = scratch_dir("codes");
    let port = free_port();
    let pool = start_pool(
        &dir,
        &pool_config(&nodes, &dir, port, "stale_grace_ms = 300"),
        port,
    )
    .await;
    let user = format!("{}.rig", nodes.var("MINING_ADDRESS"));
    let mut client = V1Client::connect(port).await;
    let job = client.handshake(&user).await;
    let target = client.share_target();
    let ntime = job.ntime;
    let en2 = vec![0u8; client.extranonce2_len];

    // Low difficulty: a hash above the share target (on regtest, half of all hashes).
    let nonce = client.find(&job, &en2, job.version, ntime, &target, false);
    let answer = client.submit(&user, &job, &en2, ntime, nonce, None).await;
    assert_eq!(code(&answer), Some(23), "low difficulty: {answer}");

    // Version bits outside the negotiated mask.
    let nonce = client.find(&job, &en2, job.version | 1, ntime, &target, true);
    let answer = client
        .submit(&user, &job, &en2, ntime, nonce, Some(1))
        .await;
    assert_eq!(code(&answer), Some(20), "out of mask: {answer}");

    // ntime more than two hours ahead.
    let future = ntime + 3 * 3600;
    let nonce = client.find(&job, &en2, job.version, future, &target, true);
    let answer = client.submit(&user, &job, &en2, future, nonce, None).await;
    assert_eq!(code(&answer), Some(20), "bad ntime: {answer}");

    // A good share with rolled version bits is a block here; the same share again is a duplicate.
    let bits = 0x0000_2000;
    let version = (job.version & !0x1fff_e000) | bits;
    let nonce = client.find(&job, &en2, version, ntime, &target, true);
    let answer = client
        .submit(&user, &job, &en2, ntime, nonce, Some(bits))
        .await;
    assert_eq!(answer["result"], true, "valid share: {answer}");
    let answer = client
        .submit(&user, &job, &en2, ntime, nonce, Some(bits))
        .await;
    assert_eq!(code(&answer), Some(22), "duplicate: {answer}");

    // That block moves the tip: a clean job follows, and the old job turns stale after the grace.
    let new_job = client
        .wait_job(Duration::from_secs(15), |j| {
            j.clean && j.prev_hash != job.prev_hash
        })
        .await
        .expect("clean job after our block");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let en2b = vec![1u8; client.extranonce2_len];
    let nonce = client.find(&job, &en2b, job.version, ntime, &target, true);
    let answer = client.submit(&user, &job, &en2b, ntime, nonce, None).await;
    assert_eq!(code(&answer), Some(21), "stale: {answer}");
    let (tip_hash, tip_block) = block_at(&nodes, 'A', height(&nodes, 'A').await).await;
    assert_eq!(
        tip_block.header.block_hash().to_string(),
        tip_hash,
        "the node's tip decodes"
    );
    assert!(
        pool.log_text().contains("block accepted"),
        "pool logged the block"
    );

    // Restart node A under the pool. The miner's connection must stay up.
    nodes.stop_node_a().await;
    assert!(
        nodes.rpc('A', "getblockcount", json!([])).await.is_err(),
        "node A is down"
    );
    // While the node is away the pool still answers.
    let answer = client
        .call("mining.suggest_difficulty", json!([0.001]))
        .await;
    assert_eq!(answer["result"], true);
    // The chain moves on without A.
    let b_address = nodes.new_address().await;
    let mined: Value = nodes
        .rpc_ok('B', "generatetoaddress", json!([1, b_address]))
        .await;
    let b_tip = mined[0].as_str().expect("hash").to_string();
    nodes.spawn_node_a();
    let back = wait_until(Duration::from_secs(60), || async {
        nodes.rpc('A', "getbestblockhash", json!([])).await.ok() == Some(json!(b_tip))
    })
    .await;
    assert!(back, "node A restarted and synced to B");
    let after = client
        .wait_job(Duration::from_secs(30), |j| {
            j.clean && quarry_work::hash::to_display_hex(&j.prev_hash) == b_tip
        })
        .await;
    assert!(
        after.is_some(),
        "the same connection gets work on the new tip"
    );
    assert!(!client.closed, "the miner was never disconnected");
    assert_ne!(new_job.job_id, after.expect("job").job_id);

    // And mining on it still produces blocks the restarted node accepts.
    let job = client.jobs.last().expect("job").clone();
    let before = height(&nodes, 'A').await;
    let en2c = vec![2u8; client.extranonce2_len];
    let target = client.share_target();
    let nonce = client.find(&job, &en2c, job.version, job.ntime, &target, true);
    let answer = client
        .submit(&user, &job, &en2c, job.ntime, nonce, None)
        .await;
    assert_eq!(answer["result"], true, "{answer}");
    let grew = wait_until(Duration::from_secs(20), || async {
        height(&nodes, 'A').await > before
    })
    .await;
    assert!(grew, "block after restart accepted:\n{}", pool.log_text());
}

/// A JSON-RPC proxy in front of node A that, at the first `submitblock`, stops node A before
/// forwarding it (the node dies mid-call), then answers with a transport error. Later calls
/// pass through. Returns its port and a flag set once node A has been stopped.
async fn killing_proxy(
    core_url: String,
    datadir: String,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    let killed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&killed);
    let client = reqwest::Client::new();
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (client, core_url, datadir, killed) = (
                client.clone(),
                core_url.clone(),
                datadir.clone(),
                Arc::clone(&flag),
            );
            async move {
                let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if request["method"] == "submitblock" && !killed.swap(true, Ordering::SeqCst) {
                    let pid_file = std::path::Path::new(&datadir).join("regtest/bitcoind.pid");
                    let pid = std::fs::read_to_string(&pid_file).expect("node A pid");
                    let _ = std::process::Command::new("kill").arg(pid.trim()).status();
                    let proc_dir = std::path::PathBuf::from(format!("/proc/{}", pid.trim()));
                    while proc_dir.exists() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    return (StatusCode::BAD_GATEWAY, axum::Json(Value::Null));
                }
                let mut forward = client
                    .post(&core_url)
                    .timeout(Duration::from_secs(60))
                    .body(body.to_vec());
                if let Some(auth) = headers.get("authorization") {
                    forward = forward.header("authorization", auth.as_bytes());
                }
                match forward.send().await {
                    Ok(answer) => {
                        let status = StatusCode::from_u16(answer.status().as_u16())
                            .unwrap_or(StatusCode::BAD_GATEWAY);
                        (
                            status,
                            axum::Json(answer.json().await.unwrap_or(Value::Null)),
                        )
                    }
                    // Node A is down: the pool sees what it would see without the proxy.
                    Err(_) => (StatusCode::BAD_GATEWAY, axum::Json(Value::Null)),
                }
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, killed)
}

/// The node goes down during `submitblock`: the pool keeps the block (saved before sending)
/// and resubmits it from the saved hex until the restarted node takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_the_node_died_on_is_resubmitted_when_it_returns() {
    let nodes = Regtest::single();
    let dir = scratch_dir("resubmit");
    let port = free_port();
    let (proxy, killed) =
        killing_proxy(nodes.rpc_url('A'), nodes.var("NODE_A_DATADIR").to_string()).await;
    let config = pool_config(&nodes, &dir, port, "").replacen(
        &format!("url = \"{}\"", nodes.rpc_url('A')),
        &format!("url = \"http://127.0.0.1:{proxy}\""),
        1,
    );
    let pool = start_pool(&dir, &config, port).await;
    let user = format!("{}.rig", nodes.var("MINING_ADDRESS"));
    let mut client = V1Client::connect(port).await;
    let job = client.handshake(&user).await;
    let en2 = vec![7u8; client.extranonce2_len];
    let (nonce, hash) = client.solve_block(&job, &en2);
    let answer = client
        .submit(&user, &job, &en2, job.ntime, nonce, None)
        .await;
    assert_eq!(answer["result"], true, "{answer}");
    assert!(
        wait_until(Duration::from_secs(20), || async {
            killed.load(std::sync::atomic::Ordering::SeqCst)
        })
        .await,
        "the pool submitted the block"
    );
    assert!(nodes.rpc('A', "getblockcount", json!([])).await.is_err());
    tokio::time::sleep(Duration::from_secs(2)).await;
    nodes.spawn_node_a();
    assert!(
        wait_until(Duration::from_secs(90), || async {
            nodes
                .rpc('A', "getblockheader", json!([hash]))
                .await
                .is_ok()
        })
        .await,
        "the restarted node has the block {hash}\n{}",
        pool.log_text()
    );
    assert_eq!(
        nodes.rpc_ok('A', "getbestblockhash", json!([])).await,
        json!(hash),
        "and it is the tip"
    );
    let log = pool.log_text();
    assert!(log.contains("resubmitting from the saved block"), "{log}");
    let saved = std::fs::read_dir(dir.join("data").join("blocks"))
        .expect("blocks dir")
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains(&hash));
    assert!(
        saved,
        "the block's hex was saved before the first submission"
    );
}
