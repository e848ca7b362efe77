//! Lightning payouts on Bitcoin Core regtest, with two real LDK nodes: the pool's embedded one
//! (`[lightning]`, started by `quarry serve`) and a miner's (`quarry-lightning` started here).
//! The pool's node is funded by mining, opens a channel to the miner's by its channel policy, the
//! miner registers a BOLT12 offer with a signed request, mines a block through the pool, and the
//! payout run pays the offer — once, even when the run is killed between the payment and its
//! record. Refusals: a bad signature, an offer for another network, an amount above what the
//! channel can carry (paid on chain instead, as configured).
//!
//! The chain is first advanced past 13 halvings (regtest halves every 150 blocks), so that a
//! block pays about 610,000 sat: a home miner's balance, well inside Lightning's limits.

mod support;

use std::time::Duration;

use quarry_ledger::{Chain, Sat, Store};
use serde_json::{json, Value};
use support::keys::TestKey;
use support::lightning::LnNode;
use support::sri::plain;
use support::*;

/// The BOLT12 specification's test vector: an offer with no `offer_chains`, i.e. for mainnet.
const MAINNET_OFFER: &str =
    "lno1pgx9getnwss8vetrw3hhyuckyypwa3eyt44h6txtxquqh7lz5djge4afgfjn7k4rgrkuag0jsd5xvxg";

const ADMIN: &str = "test-admin-token";
const CHANNEL_SAT: u64 = 16_000_000;

struct Pool {
    process: Process,
    api: String,
}

async fn start(
    dir: &std::path::Path,
    config: &str,
    port: u16,
    api: u16,
    envs: &[(&str, &str)],
) -> Pool {
    let process = start_pool_env(dir, config, port, envs).await;
    let api = format!("http://127.0.0.1:{api}");
    let ready = wait_until(Duration::from_secs(60), || async {
        reqwest::get(format!("{api}/api/lightning"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(
        ready,
        "the pool's Lightning node runs:\n{}",
        process.log_text()
    );
    Pool { process, api }
}

impl Pool {
    async fn lightning(&self) -> Value {
        reqwest::get(format!("{}/api/lightning", self.api))
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON")
    }

    /// Runs a payout (the admin endpoint): (status, body).
    async fn payout(&self) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/api/admin/payouts/run", self.api))
            .bearer_auth(ADMIN)
            .send()
            .await;
        match response {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (0, json!(e.to_string())),
        }
    }

    async fn register(&self, address: &str, body: Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!(
                "{}/api/miners/{address}/payout-destination",
                self.api
            ))
            .json(&body)
            .send()
            .await
            .expect("POST");
        (
            response.status().as_u16(),
            response.json().await.expect("JSON"),
        )
    }

    async fn miner(&self, address: &str) -> Value {
        reqwest::get(format!("{}/api/miners/{address}", self.api))
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON")
    }
}

fn signed(key: &TestKey, address: &str, destination: &str, timestamp: i64) -> Value {
    let message = format!("quarry payout-destination {address} {destination} {timestamp}");
    // BIP322 signs for the key's own address; a stranger's signature proves nothing for ours.
    let signature =
        bip322::sign_simple_encoded(&key.p2wpkh_address(), &message, &[key.wif()], None)
            .expect("sign");
    json!({"destination": destination, "timestamp": timestamp, "signature": signature})
}

/// Whether a `quarry-lightning` process runs on `data_dir`.
fn node_running(data_dir: &std::path::Path) -> bool {
    let needle = data_dir.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("quarry-lightning") && cmdline.contains(&needle)
        })
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// One block through the pool, mined by `user` with the V1 client (exactly one: a CPU miner
/// would find several on regtest, each worth ~610,000 sat).
async fn mine_one_block(nodes: &Regtest, port: u16, user: &str) {
    let mut client = V1Client::connect(port).await;
    let job = client.handshake(user).await;
    let en2 = vec![3u8; client.extranonce2_len];
    let (nonce, hash) = client.solve_block(&job, &en2);
    let answer = client
        .submit(user, &job, &en2, job.ntime, nonce, None)
        .await;
    assert_eq!(answer["result"], true, "{answer}");
    // The pool submits found blocks in the background: wait for the tip, so that the blocks the
    // test mines next build on it instead of orphaning it.
    let tip = wait_until(Duration::from_secs(30), || async {
        nodes.rpc_ok('A', "getbestblockhash", json!([])).await == json!(hash)
    })
    .await;
    assert!(tip, "the node took the pool's block {hash}");
}

async fn payable(store: &Store, address: &str) -> Sat {
    store
        .payable(&Chain::BITCOIN)
        .await
        .expect("payable")
        .get(address)
        .copied()
        .unwrap_or(Sat::ZERO)
}

/// Mines `n` blocks to the burn address through Core and waits until the ledger owes `address`
/// something (its blocks matured).
async fn mature(nodes: &Regtest, store: &Store, address: &str, n: u64) -> Sat {
    nodes
        .rpc_ok(
            'A',
            "generatetoaddress",
            json!([n, nodes.var("MINING_ADDRESS")]),
        )
        .await;
    let matured = wait_until(Duration::from_secs(60), || async {
        payable(store, address).await > Sat::ZERO
    })
    .await;
    let blocks = store.blocks(None, 10).await.expect("blocks");
    assert!(matured, "the miner's credit matures: {blocks:?}");
    payable(store, address).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lightning_payouts_pay_a_registered_offer_exactly_once() {
    let nodes = Regtest::single();
    let dir = scratch_dir("lightning");
    let burn = nodes.var("MINING_ADDRESS").to_string();
    nodes
        .rpc_ok('A', "generatetoaddress", json!([1650, burn]))
        .await;

    // The miner's own node, funded with one coinbase (its anchor-channel reserve).
    let miner_port = free_port();
    let mut miner_ln = LnNode::start(&nodes, &dir.join("miner-ln"), miner_port).await;
    let miner_funding = miner_ln.call("new_address", json!({})).await;

    let (port, api_port, ln_port) = (free_port(), free_port(), free_port());
    let mut config = pool_config(&nodes, &dir, port, "").replace(
        "mode = \"solo\"",
        &format!("mode = \"pool\"\npool_address = \"{burn}\""),
    );
    config.push_str(&format!(
        r#"
[payout]
scheme = "pplns"
maturity = 2
interval_secs = 0

[api]
listen = "127.0.0.1:{api_port}"
admin_token = "{ADMIN}"

[lightning]
enabled = true
binary = "{binary}"
listen = "127.0.0.1:{ln_port}"
peers = ["{miner_id}@127.0.0.1:{miner_port}"]
channel_sat = {CHANNEL_SAT}
channel_check_secs = 1
min_payout_sat = 1000
max_payout_sat = 2000000
payment_timeout_secs = 60
onchain_fallback = true
"#,
        binary = support::lightning::binary().display(),
        miner_id = miner_ln.node_id,
    ));
    let pool = start(&dir, &config, port, api_port, &[]).await;
    let status = pool.lightning().await;
    let funding = status["node"]["funding_address"]
        .as_str()
        .expect("funding address")
        .to_string();

    // Funded by mining: seven coinbases of 2.44 BTC/2^10… (11 halvings: 2,441,406 sat each) to
    // the pool's node, one to the miner's; then past the 13th halving and coinbase maturity.
    nodes
        .rpc_ok('A', "generatetoaddress", json!([7, funding]))
        .await;
    nodes
        .rpc_ok(
            'A',
            "generatetoaddress",
            json!([1, miner_funding["address"]]),
        )
        .await;
    let height = nodes.height().await;
    nodes
        .rpc_ok('A', "generatetoaddress", json!([1960 - height, burn]))
        .await;

    // The channel policy opens the channel; six confirmations make it usable.
    let opened = wait_until(Duration::from_secs(60), || async {
        pool.lightning().await["node"]["channels"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    })
    .await;
    assert!(
        opened,
        "the pool opens a channel to the configured peer:\n{}",
        pool.process.log_text()
    );
    let broadcast = wait_until(Duration::from_secs(30), || async {
        nodes
            .rpc_ok('A', "getrawmempool", json!([]))
            .await
            .as_array()
            .is_some_and(|m| !m.is_empty())
    })
    .await;
    assert!(broadcast, "the funding transaction reaches the node");
    nodes
        .rpc_ok('A', "generatetoaddress", json!([6, burn]))
        .await;
    let usable = wait_until(Duration::from_secs(60), || async {
        pool.lightning().await["node"]["channels"][0]["usable"] == true
    })
    .await;
    assert!(usable, "the channel is usable: {}", pool.lightning().await);

    // Registration: the miner's key signs its offer.
    let key = TestKey::random();
    let address = key.p2wpkh_address();
    let offer = miner_ln
        .call("create_offer", json!({"description": "bitaxe"}))
        .await;
    let offer = offer["offer"].as_str().expect("offer").to_string();
    let t = now_secs();
    let other_key = TestKey::random();
    let (code, body) = pool
        .register(&address, signed(&other_key, &address, &offer, t))
        .await;
    assert_eq!(code, 403, "another key's signature is refused: {body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("bad signature")),
        "{body}"
    );
    let (code, body) = pool
        .register(&address, signed(&key, &address, MAINNET_OFFER, t))
        .await;
    assert_eq!(code, 400, "a mainnet offer is refused on regtest: {body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("another network")),
        "{body}"
    );
    let (code, body) = pool
        .register(&address, signed(&key, &address, &offer, t))
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = pool
        .register(&address, signed(&key, &address, &offer, t))
        .await;
    assert_eq!(
        code, 409,
        "the same signed message cannot be replayed: {body}"
    );
    assert_eq!(
        pool.miner(&address).await["payout_destination"]["destination"],
        json!(offer)
    );

    // An offer in the authorize password registers once; a second one needs a signature.
    let other = TestKey::random().p2wpkh_address();
    let first = miner_ln
        .call("create_offer", json!({"description": "first"}))
        .await["offer"]
        .clone();
    let second = miner_ln
        .call("create_offer", json!({"description": "second"}))
        .await["offer"]
        .clone();
    for offer in [&first, &second] {
        let mut client = V1Client::connect(port).await;
        client.call("mining.subscribe", json!(["test/1"])).await;
        let password = format!("x,ln={}", offer.as_str().expect("offer"));
        let answer = client
            .call(
                "mining.authorize",
                json!([format!("{other}.rig"), password]),
            )
            .await;
        assert_eq!(answer["result"], true, "{answer}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let registered = pool.miner(&other).await;
    assert_eq!(
        registered["payout_destination"]["destination"],
        first,
        "{registered}\n{}",
        pool.process.log_text()
    );
    assert_eq!(registered["payout_destination"]["source"], "authorize");

    let store = Store::open(&format!(
        "sqlite://{}",
        dir.join("data/quarry.db").display()
    ))
    .await
    .expect("ledger");
    let user = format!("{address}.bitaxe");

    // 1. Mine a block through the pool; after maturity a run pays the offer.
    mine_one_block(&nodes, port, &user).await;
    let owed = mature(&nodes, &store, &address, 2).await;
    assert!(
        owed > Sat(500_000) && owed < Sat(700_000),
        "one block's reward: {owed:?}"
    );
    let (code, body) = pool.payout().await;
    assert_eq!(code, 200, "{body}\n{}", pool.process.log_text());
    let received = miner_ln.received_offer_payments().await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        received[0].1,
        owed.0 * 1000,
        "the whole balance (the pool pays routing)"
    );
    assert!(
        received[0].0.starts_with("quarry-ln-"),
        "the payout's tag as payer note"
    );
    assert_eq!(
        payable(&store, &address).await,
        Sat::ZERO,
        "the ledger shows it paid"
    );
    let payouts = store.payouts(10).await.expect("payouts");
    assert_eq!(payouts[0].method, "lightning");
    assert_eq!(payouts[0].status, "sent");
    assert_eq!(payouts[0].tag, received[0].0);
    // The dashboard shows where the miner is paid, and how.
    let page = reqwest::get(format!("{}/miners/{address}", pool.api))
        .await
        .expect("GET")
        .text()
        .await
        .expect("HTML");
    assert!(
        page.contains("data-testid=\"payout-destination\""),
        "{page}"
    );
    assert!(
        page.contains(&format!("title=\"{offer}\"")),
        "the offer, whole, in its title"
    );
    assert!(page.contains("with a signed request") && page.contains(">Lightning<"));
    // A second run pays nothing.
    let (code, _) = pool.payout().await;
    assert_eq!(code, 200);
    assert_eq!(
        miner_ln.received_offer_payments().await.len(),
        1,
        "paid once"
    );
    assert_eq!(
        store.payouts(10).await.expect("payouts").len(),
        payouts.len()
    );

    // 2. Killed between the payment and its record, then run again: paid exactly once.
    mine_one_block(&nodes, port, &user).await;
    let owed = mature(&nodes, &store, &address, 2).await;
    drop(pool); // killed: its Lightning node stops by itself, the next one waits for its data
    let mut pool = start(
        &dir,
        &config,
        port,
        api_port,
        &[("QUARRY_PAYOUT_CRASH_AT", "after_send")],
    )
    .await;
    let (code, _) = pool.payout().await;
    assert_eq!(code, 0, "the run aborted the pool");
    assert!(pool.process.wait(Duration::from_secs(10)), "the pool died");
    assert!(pool.process.log_text().contains("QUARRY_PAYOUT_CRASH_AT"));
    let mut received = Vec::new();
    for _ in 0..50 {
        received = miner_ln.received_offer_payments().await;
        if received.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        received.len(),
        2,
        "the payment went through before the kill: {received:?}"
    );
    assert_eq!(
        payable(&store, &address).await,
        Sat::ZERO,
        "reserved by the pending intent"
    );
    let pending = store.payouts(1).await.expect("payouts");
    assert_eq!(pending[0].status, "intent", "not recorded");
    // The killed pool's Lightning node stops by itself (end of its input) and frees its data.
    let ln_dir = dir.join("data/lightning");
    assert!(
        wait_until(Duration::from_secs(30), || async { !node_running(&ln_dir) }).await,
        "the orphaned Lightning node stops"
    );
    let pool = start(&dir, &config, port, api_port, &[]).await;
    let (code, body) = pool.payout().await;
    assert_eq!(code, 200, "{body}\n{}", pool.process.log_text());
    let received = miner_ln.received_offer_payments().await;
    assert_eq!(
        received.len(),
        2,
        "reconciled, not paid again: {received:?}"
    );
    assert_eq!(received[1].1, owed.0 * 1000);
    let payouts = store.payouts(10).await.expect("payouts");
    assert_eq!(payouts[0].status, "sent", "recorded by the rerun");
    assert_eq!(payouts[0].tag, pending[0].tag);
    assert!(
        plain(&pool.process.log_text()).contains("Lightning payout run done paid=1 reconciled=1"),
        "{}",
        pool.process.log_text()
    );

    // 3. More than the channel can carry now: refused with the reason, kept, and (with
    // onchain_fallback) put into the on-chain payout. Core here has no wallet, so that intent
    // waits with the wallet's error; the miner's node gets nothing more.
    let sendable = pool.lightning().await["node"]["sendable_msat"]
        .as_u64()
        .expect("sendable")
        / 1000;
    while payable(&store, &address).await <= Sat(sendable) {
        mine_one_block(&nodes, port, &user).await;
        let before = payable(&store, &address).await;
        nodes
            .rpc_ok('A', "generatetoaddress", json!([2, burn]))
            .await;
        assert!(
            wait_until(Duration::from_secs(60), || async {
                payable(&store, &address).await > before
            })
            .await,
            "credited"
        );
    }
    let owed = payable(&store, &address).await;
    let (code, body) = pool.payout().await;
    assert_eq!(
        code, 502,
        "the on-chain part fails without a node wallet: {body}"
    );
    assert_eq!(
        miner_ln.received_offer_payments().await.len(),
        2,
        "no Lightning payment"
    );
    let log = pool.process.log_text();
    assert!(
        log.contains("above what the pool's channels can send"),
        "{log}"
    );
    let metrics = reqwest::get(format!("{}/metrics", pool.api))
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("quarry_payouts_total{method=\"lightning\",outcome=\"capacity\"} 1"),
        "{metrics}"
    );
    let fallback = store.payouts(1).await.expect("payouts");
    assert_eq!(
        (fallback[0].method.as_str(), fallback[0].status.as_str()),
        ("onchain", "intent")
    );
    assert_eq!(
        fallback[0].total_sat, owed.0 as i64,
        "the whole balance goes on chain"
    );
    assert!(fallback[0].error.is_some(), "with the wallet's error");
}
