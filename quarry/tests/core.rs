//! Bitcoin Core end to end. Segwit blocks for real: the mempool holds a few hundred P2WPKH and
//! P2TR spends (so templates carry witness data and a witness commitment), the pool mines them
//! over Stratum V1, over Stratum V2, and through `quarry tp` + SRI's `pool_sv2`, and Core must
//! have accepted every block with every one of those transactions. And a block Core refuses
//! shows Core's reason in the pool's log and in `/api/blocks`.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use bitcoin::Txid;
use quarry_stratum::v2::AuthorityKeypair;
use serde_json::{json, Value};
use support::keys::{fill_mempool, fund, Coin, TestKey};
use support::sri::*;
use support::*;

/// Coins split per round, and outputs per split: 20 × (1 + 15) = 320 transactions a round.
const COINS_PER_ROUND: usize = 20;
const FANOUT: u64 = 15;
/// The coinbase output that commits to the block's witnesses (BIP141): OP_RETURN, push 36,
/// aa21a9ed, then the commitment.
const WITNESS_COMMITMENT_PREFIX: &str = "6a24aa21a9ed";

async fn mempool_size(nodes: &Regtest) -> u64 {
    nodes.rpc_ok('A', "getmempoolinfo", json!([])).await["size"]
        .as_u64()
        .expect("mempool size")
}

/// Runs `quarry mine` on `url` as `user` in 3-second rounds until the mempool is empty (every
/// transaction is in a block), at most 15 times.
async fn mine_until_mempool_empty(
    nodes: &Regtest,
    dir: &std::path::Path,
    url: &str,
    user: &str,
    extra: &[&str],
) -> bool {
    for round in 0..15 {
        run_miner(url, user, 3, extra, &dir.join(format!("mine-{round}.log")));
        if mempool_size(nodes).await == 0 {
            return true;
        }
    }
    false
}

/// Every block above `from` is in Core's chain with a coinbase that carries `tag`; together
/// they hold every txid of `sent`, and each block with transactions commits to its witnesses.
/// Returns how many blocks there were.
async fn assert_blocks_hold(
    nodes: &Regtest,
    from: u64,
    sent: &[Txid],
    tag: &str,
    context: &str,
) -> u64 {
    let tip = nodes.height().await;
    assert!(tip > from, "blocks were mined\n{context}");
    let mut mined: HashSet<String> = HashSet::new();
    let mut witness_kinds = HashSet::new();
    for h in from + 1..=tip {
        let hash = nodes.rpc_ok('A', "getblockhash", json!([h])).await;
        let block = nodes.rpc_ok('A', "getblock", json!([hash, 2])).await;
        assert_eq!(
            block["confirmations"].as_i64().map(|c| c > 0),
            Some(true),
            "block {h} is on Core's best chain"
        );
        let txs = block["tx"].as_array().expect("transactions");
        assert_eq!(
            block["nTx"].as_u64(),
            Some(txs.len() as u64),
            "block {h}: nTx"
        );
        let coinbase = &txs[0];
        let script_sig = coinbase["vin"][0]["coinbase"].as_str().expect("coinbase");
        assert!(
            script_sig.contains(&hex::encode(tag)),
            "block {h} was mined through the pool under test ({tag}): {script_sig}\n{context}"
        );
        if txs.len() > 1 {
            let commits = coinbase["vout"]
                .as_array()
                .expect("outputs")
                .iter()
                .any(|o| {
                    o["scriptPubKey"]["hex"]
                        .as_str()
                        .is_some_and(|s| s.starts_with(WITNESS_COMMITMENT_PREFIX))
                });
            assert!(commits, "block {h} commits to its witnesses: {coinbase}");
        }
        for tx in &txs[1..] {
            mined.insert(tx["txid"].as_str().expect("txid").to_string());
            for input in tx["vin"].as_array().expect("inputs") {
                // Two witness items: a P2WPKH spend; one of 64 bytes: a P2TR key-path spend.
                if let Some(witness) = input["txinwitness"].as_array() {
                    match (witness.len(), witness[0].as_str().map(str::len)) {
                        (2, _) => witness_kinds.insert("p2wpkh"),
                        (1, Some(128)) => witness_kinds.insert("p2tr"),
                        _ => false,
                    };
                }
            }
        }
    }
    let missing: Vec<&Txid> = sent
        .iter()
        .filter(|t| !mined.contains(&t.to_string()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} transactions are in no block above {from}: {:?}\n{context}",
        missing.len(),
        sent.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        witness_kinds.contains("p2wpkh") && witness_kinds.contains("p2tr"),
        "the blocks carry P2WPKH and P2TR witnesses: {witness_kinds:?}"
    );
    tip - from
}

/// The config of a pool that refreshes its template every second, with SV2 on the same port.
fn segwit_pool_config(
    nodes: &Regtest,
    dir: &std::path::Path,
    port: u16,
    authority: &AuthorityKeypair,
) -> String {
    let mut config = pool_config(nodes, dir, port, "template_refresh_secs = 1");
    config.push_str(&sv2_section(authority));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segwit_blocks_mined_over_v1_sv2_and_the_template_provider_are_accepted_by_core() {
    let nodes = Regtest::single();
    let version = nodes.rpc_ok('A', "getnetworkinfo", json!([])).await;
    assert!(
        version["subversion"]
            .as_str()
            .is_some_and(|v| v.contains("Satoshi:30.99")),
        "the node is Bitcoin Core 30.99: {version}"
    );
    let key = TestKey::random();
    let coins = fund(&nodes, &key, 3 * COINS_PER_ROUND).await;
    let rounds: Vec<&[Coin]> = coins.chunks(COINS_PER_ROUND).collect();
    let address = nodes.new_address().await;
    let authority = AuthorityKeypair::generate();

    // Over Stratum V1, and then Stratum V2, each on a pool started after the mempool is full.
    for (round, protocol) in ["v1", "sv2"].iter().enumerate() {
        let dir = scratch_dir(&format!("segwit-{protocol}"));
        let sent = fill_mempool(&nodes, &key, rounds[round], FANOUT).await;
        assert_eq!(sent.len(), COINS_PER_ROUND * (FANOUT as usize + 1));
        assert_eq!(mempool_size(&nodes).await, sent.len() as u64);
        let template = nodes
            .rpc_ok('A', "getblocktemplate", json!([{"rules": ["segwit"]}]))
            .await;
        assert!(
            template["default_witness_commitment"].is_string(),
            "Core's template commits to witnesses"
        );
        let before = nodes.height().await;
        let port = free_port();
        let pool = start_pool(
            &dir,
            &segwit_pool_config(&nodes, &dir, port, &authority),
            port,
        )
        .await;
        let url = match *protocol {
            "v1" => format!("stratum+tcp://127.0.0.1:{port}"),
            _ => format!(
                "stratum2+tcp://127.0.0.1:{port}/{}",
                authority.public_text()
            ),
        };
        let user = format!("{address}.{protocol}");
        let emptied = mine_until_mempool_empty(&nodes, &dir, &url, &user, &[]).await;
        let pool_log = plain(&pool.log_text());
        assert!(emptied, "{protocol}: every transaction mined\n{pool_log}");
        let blocks = assert_blocks_hold(&nodes, before, &sent, "/quarry-test/", &pool_log).await;
        assert!(
            !pool_log.contains("block rejected"),
            "{protocol}: Core refused none of the {blocks} blocks:\n{pool_log}"
        );
    }

    // Through `quarry tp` and SRI's pool_sv2: pool_sv2 builds the coinbase, quarry tp rebuilds
    // the block with the template's transactions and submits it.
    let dir = scratch_dir("segwit-tp");
    let sent = fill_mempool(&nodes, &key, rounds[2], FANOUT).await;
    let before = nodes.height().await;
    let mut sri = SriPool::start_with(&nodes, &dir, &address, "template_refresh_secs = 1").await;
    let url = format!(
        "stratum2+tcp://127.0.0.1:{}/{}",
        sri.port,
        sri.authority.public_text()
    );
    let user = format!("{address}.onsri");
    let emptied =
        mine_until_mempool_empty(&nodes, &dir, &url, &user, &["--hashrate", "10000"]).await;
    sri.stop();
    let context = format!(
        "pool_sv2:\n{}\ntp:\n{}",
        sri.log(),
        plain(&sri.tp.log_text())
    );
    assert!(emptied, "tp: every transaction mined\n{context}");
    assert_blocks_hold(&nodes, before, &sent, "quarry-interop", &context).await;
    assert!(!context.contains("block rejected"), "{context}");
}

/// A JSON-RPC proxy in front of Core that raises every template's `coinbasevalue` by one
/// satoshi: the pool then builds blocks that Core must refuse (`bad-cb-amount`).
async fn tampering_proxy(core_url: String) -> u16 {
    use axum::body::Bytes;
    use axum::http::HeaderMap;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    let client = reqwest::Client::new();
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let client = client.clone();
            let core_url = core_url.clone();
            async move {
                let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let mut forward = client
                    .post(&core_url)
                    .timeout(Duration::from_secs(120))
                    .body(body.to_vec());
                if let Some(auth) = headers.get("authorization") {
                    forward = forward.header("authorization", auth.as_bytes());
                }
                let answer = forward.send().await.expect("Core answers");
                let status = answer.status().as_u16();
                let mut value: Value = answer.json().await.unwrap_or(Value::Null);
                if request["method"] == "getblocktemplate" {
                    if let Some(v) = value["result"]["coinbasevalue"].as_u64() {
                        value["result"]["coinbasevalue"] = json!(v + 1);
                    }
                }
                (
                    axum::http::StatusCode::from_u16(status).expect("status"),
                    axum::Json(value),
                )
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_core_refuses_shows_cores_reason_in_the_log_and_the_api() {
    let nodes = Regtest::single();
    let dir = scratch_dir("core-refuses");
    let proxy = tampering_proxy(nodes.rpc_url('A')).await;
    let port = free_port();
    let api_port = free_port();
    let mut config = pool_config(&nodes, &dir, port, "").replacen(
        &format!("url = \"{}\"", nodes.rpc_url('A')),
        &format!("url = \"http://127.0.0.1:{proxy}\""),
        1,
    );
    config.push_str(&format!("\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n"));
    let pool = start_pool(&dir, &config, port).await;
    let before = nodes.height().await;
    let address = nodes.new_address().await;

    run_miner(
        &format!("stratum+tcp://127.0.0.1:{port}"),
        &format!("{address}.tampered"),
        3,
        &[],
        &dir.join("mine.log"),
    );
    let refused = wait_until(Duration::from_secs(20), || async {
        plain(&pool.log_text()).contains("block rejected by every node")
    })
    .await;
    let log = plain(&pool.log_text());
    assert!(refused, "the pool reports the refusal:\n{log}");
    assert!(
        log.contains("reason=bad-cb-amount"),
        "with Core's reason:\n{log}"
    );
    assert_eq!(nodes.height().await, before, "Core took none of them");

    let blocks: Value = reqwest::get(format!("http://127.0.0.1:{api_port}/api/blocks"))
        .await
        .expect("GET /api/blocks")
        .json()
        .await
        .expect("JSON");
    let blocks = blocks.as_array().expect("a list of blocks");
    assert!(!blocks.is_empty(), "the refused blocks are listed");
    for block in blocks {
        assert_eq!(block["status"], "rejected", "{block}");
        assert_eq!(block["reject_reason"], "bad-cb-amount", "{block}");
    }
}

/// However often the pool refreshes its template, it keeps one long poll on Core. Core holds an
/// RPC thread for each until the tip (or, a minute on, the mempool) moves, whether or not the
/// client still listens: a long poll abandoned on every refresh piles up on a quiet chain until
/// the node's RPC threads are gone and submitblock waits for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_refreshes_keep_a_single_long_poll_on_core() {
    let nodes = Regtest::single();
    let dir = scratch_dir("longpoll");
    let port = free_port();
    let config = pool_config(&nodes, &dir, port, "template_refresh_secs = 1");
    let pool = start_pool(&dir, &config, port).await;
    let long_polls = || async {
        let info = nodes.rpc_ok('A', "getrpcinfo", json!([])).await;
        info["active_commands"]
            .as_array()
            .map(|commands| {
                commands
                    .iter()
                    .filter(|c| c["method"] == "getblocktemplate")
                    .count()
            })
            .unwrap_or_default()
    };
    // A new block (the long poll answers, and the pool follows it), then six refreshes on a
    // quiet chain.
    let address = nodes.new_address().await;
    nodes
        .rpc_ok('A', "generatetoaddress", json!([1, address]))
        .await;
    let height = nodes.height().await;
    let followed = wait_until(Duration::from_secs(10), || async {
        plain(&pool.log_text()).contains(&format!("new block template height={}", height + 1))
    })
    .await;
    assert!(followed, "the pool follows the chain\n{}", pool.log_text());
    tokio::time::sleep(Duration::from_secs(6)).await;
    // One long poll, and at most one quick fetch caught in passing.
    let polls = long_polls().await;
    assert!(
        (1..=2).contains(&polls),
        "{polls} getblocktemplate calls active on Core\n{}",
        pool.log_text()
    );
    // The long poll still answers: the next block reaches the pool.
    nodes
        .rpc_ok('A', "generatetoaddress", json!([1, address]))
        .await;
    let followed = wait_until(Duration::from_secs(10), || async {
        plain(&pool.log_text()).contains(&format!("new block template height={}", height + 2))
    })
    .await;
    assert!(followed, "the pool follows the chain\n{}", pool.log_text());
}
