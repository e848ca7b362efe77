//! Stratum V2 against real peers: our SV2 miner, SRI's `translator_sv2` 0.6.0 (from crates.io)
//! in front of our SV1 miner, both on Quarry's pool on the regtest node pair.

mod support;

use std::time::Duration;

use quarry_stratum::v2::AuthorityKeypair;
use serde_json::{json, Value};
use support::sri::*;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sv2_miner_mines_blocks_on_quarry_and_refuses_an_impostor() {
    mines_blocks_and_refuses_an_impostor(Via::Tcp).await;
}

/// The same over QUIC (`sv2.quic_listen`, `stratum2+quic://`): Noise and the pinned authority
/// key inside each QUIC stream, exactly as over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sv2_over_quic_mines_blocks_and_refuses_an_impostor() {
    mines_blocks_and_refuses_an_impostor(Via::Quic).await;
}

/// The same over Iroh (`sv2.iroh_listen`, `iroh://<node id>@<address>/<key>`), relays off: the
/// pool dialed by its node id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sv2_over_iroh_mines_blocks_and_refuses_an_impostor() {
    mines_blocks_and_refuses_an_impostor(Via::Iroh).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Tcp,
    Quic,
    Iroh,
}

async fn mines_blocks_and_refuses_an_impostor(via: Via) {
    let nodes = Regtest::single();
    let dir = scratch_dir(&format!("sv2-{via:?}").to_lowercase());
    let port = free_port();
    let udp_port = free_port();
    let authority = AuthorityKeypair::generate();
    let mut config = pool_config(&nodes, &dir, port, "");
    config.push_str(&sv2_section(&authority));
    // The pool's Iroh node key, written before it starts: its node id is what miners dial.
    let node_key = iroh::SecretKey::from_bytes(&[0x51; 32]);
    match via {
        Via::Tcp => {}
        Via::Quic => config.push_str(&format!("quic_listen = \"127.0.0.1:{udp_port}\"\n")),
        Via::Iroh => {
            config.push_str(&format!("iroh_listen = \"127.0.0.1:{udp_port}\"\n"));
            std::fs::create_dir_all(dir.join("data")).expect("data dir");
            std::fs::write(dir.join("data/iroh-secret.key"), hex::encode([0x51; 32])).expect("key");
        }
    }
    let pool = start_pool(&dir, &config, port).await;
    let address = nodes.new_address().await;
    let before = nodes.height().await;

    let endpoint = match via {
        Via::Tcp => format!("stratum2+tcp://127.0.0.1:{port}"),
        Via::Quic => format!("stratum2+quic://127.0.0.1:{udp_port}"),
        Via::Iroh => format!("iroh://{}@127.0.0.1:{udp_port}", node_key.public()),
    };
    let url = format!("{endpoint}/{}", authority.public_text());
    let user = format!("{address}.sv2rig");
    let mut miner = Process::spawn(
        &[
            "mine",
            &url,
            "--user",
            &user,
            "--threads",
            "1",
            "--duration",
            "4",
        ],
        &dir.join("mine.log"),
    );
    assert!(miner.wait(Duration::from_secs(40)), "miner stops");
    let log = miner.log_text();
    assert!(
        tally(&log, "accepted") > 0,
        "shares accepted over SV2:\n{log}\n{}",
        pool.log_text()
    );
    assert_eq!(tally(&log, "rejected"), 0, "{log}");
    assert!(tally(&log, "blocks") > 0, "blocks found over SV2:\n{log}");
    assert!(
        wait_until(Duration::from_secs(20), || async {
            nodes.height().await > before
        })
        .await,
        "the node accepted the SV2 blocks:\n{}",
        pool.log_text()
    );
    let pool_log = plain(&pool.log_text());
    assert!(pool_log.contains("outcome=Accepted"), "{pool_log}");
    match via {
        Via::Tcp => {}
        Via::Quic => assert!(
            pool_log.contains("Stratum V2 over QUIC listening"),
            "{pool_log}"
        ),
        Via::Iroh => assert!(
            pool_log.contains(&format!("node_id={}", node_key.public())),
            "{pool_log}"
        ),
    }
    assert!(pool_log.contains("worker authorized"), "{pool_log}");
    assert!(pool_log.contains(".sv2rig"), "{pool_log}");

    // The same pool, pinned to another authority key: the miner refuses the handshake.
    let impostor = AuthorityKeypair::generate();
    let url = format!("{endpoint}/{}", impostor.public_text());
    let mut refused = Process::spawn(
        &[
            "mine",
            &url,
            "--user",
            &user,
            "--threads",
            "1",
            "--duration",
            "3",
        ],
        &dir.join("impostor.log"),
    );
    assert!(refused.wait(Duration::from_secs(30)), "miner stops");
    let log = refused.log_text();
    assert_eq!(tally(&log, "accepted"), 0, "{log}");
    assert!(
        log.contains("certificate"),
        "refused for the certificate:\n{log}"
    );

    // V1 still works on the same port.
    let mut v1 = V1Client::connect(port).await;
    let job = v1.handshake(&format!("{address}.v1")).await;
    assert!(!job.job_id.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sri_translator_proxies_sv1_miners_to_quarry_sv2() {
    let nodes = Regtest::single();
    let dir = scratch_dir("sv2-translator");
    let port = free_port();
    let authority = AuthorityKeypair::generate();
    let mut config = pool_config(&nodes, &dir, port, "");
    config.push_str(&sv2_section(&authority));
    let pool = start_pool(&dir, &config, port).await;
    let address = nodes.new_address().await;
    let before = nodes.height().await;

    let mut translator = Translator::start(
        &dir,
        port,
        &authority.public_text(),
        &format!("{address}.tproxy"),
        100_000.0,
    )
    .await;
    let proxy_port = translator.port;

    let mut miner = Process::spawn(
        &[
            "mine",
            &format!("stratum+tcp://127.0.0.1:{proxy_port}"),
            "--user",
            &format!("{address}.behindproxy"),
            "--threads",
            "1",
            "--duration",
            "8",
        ],
        &dir.join("mine.log"),
    );
    assert!(miner.wait(Duration::from_secs(60)), "miner stops");
    let mined = wait_until(Duration::from_secs(20), || async {
        nodes.height().await > before
    })
    .await;
    translator.stop();
    let miner_log = miner.log_text();
    let pool_log = plain(&pool.log_text());
    assert!(
        mined,
        "blocks through the translator reached the node.\nminer:\n{miner_log}\ntranslator:\n{}\npool:\n{pool_log}",
        translator.log()
    );
    assert!(tally(&miner_log, "accepted") > 0, "{miner_log}");
    assert!(pool_log.contains("share accepted"), "{pool_log}");
    assert!(pool_log.contains("outcome=Accepted"), "{pool_log}");
    // Credited to the address in the translator's upstream identity.
    assert!(
        pool_log.contains(&format!("worker={address}.")),
        "credited to the translator's identity:\n{pool_log}"
    );
}

/// SRI's pool, fed templates by `quarry tp` (which gets them from the regtest node), with our
/// SV2 miner mining on it: its blocks must reach the node, paying the pool's reward script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sri_pool_on_quarry_template_provider_gets_blocks_accepted() {
    let nodes = Regtest::single();
    let dir = scratch_dir("sv2-tp");
    let address = nodes.new_address().await;
    let before = nodes.height().await;
    let mut sri = SriPool::start(&nodes, &dir, &address).await;
    let (pool_port, pool_authority) = (sri.port, &sri.authority);

    let url = format!(
        "stratum2+tcp://127.0.0.1:{pool_port}/{}",
        pool_authority.public_text()
    );
    let mut miner = Process::spawn(
        &[
            "mine",
            &url,
            "--user",
            &format!("{address}.onsri"),
            "--threads",
            "1",
            // pool_sv2 sets the first target from this: a share every few ms, not seconds.
            "--hashrate",
            "10000",
            "--duration",
            "6",
        ],
        &dir.join("mine.log"),
    );
    assert!(miner.wait(Duration::from_secs(60)), "miner stops");
    let mined = wait_until(Duration::from_secs(20), || async {
        nodes.height().await > before
    })
    .await;
    sri.stop();
    let miner_log = miner.log_text();
    let tp_log = plain(&sri.tp.log_text());
    assert!(
        mined,
        "blocks from pool_sv2 via quarry tp reached the node.\nminer:\n{miner_log}\npool_sv2:\n{}\ntp:\n{tp_log}",
        sri.log()
    );
    assert!(tally(&miner_log, "accepted") > 0, "{miner_log}");
    assert!(tp_log.contains("coinbase output constraints"), "{tp_log}");
    assert!(tp_log.contains("outcome=Accepted"), "{tp_log}");

    // The new tip is pool_sv2's block: its coinbase pays the pool's reward script and carries
    // its signature.
    let tip = nodes.rpc_ok('A', "getbestblockhash", json!([])).await;
    let block = nodes.rpc_ok('A', "getblock", json!([tip, 2])).await;
    let coinbase = &block["tx"][0];
    let paid = coinbase["vout"]
        .as_array()
        .expect("outputs")
        .iter()
        .any(|out| {
            out["scriptPubKey"]["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(out["scriptPubKey"].get("address"))
                .any(|a| a.as_str() == Some(address.as_str()))
        });
    assert!(
        paid,
        "the block pays pool_sv2's coinbase_reward_script: {coinbase}"
    );
    let script_sig = coinbase["vin"][0]["coinbase"]
        .as_str()
        .expect("coinbase hex");
    assert!(
        script_sig.contains(&hex::encode("quarry-interop")),
        "pool_sv2's signature is in the coinbase: {script_sig}"
    );
}

/// The load generator's answer checks, for any pool: everyone connected, every share answered,
/// none rejected (a share a new block made stale is counted apart).
fn assert_every_share_answered(report: &Value, miners: u64, context: &str) {
    let n = |key: &str| report[key].as_u64().unwrap_or(u64::MAX);
    assert_eq!(n("connections_established"), miners, "{report}\n{context}");
    assert_eq!(n("connect_failures"), 0, "{report}\n{context}");
    assert!(n("accepted") > 0, "{report}\n{context}");
    assert_eq!(
        n("unanswered"),
        0,
        "every share answered: {report}\n{context}"
    );
    assert_eq!(n("rejected"), 0, "none rejected: {report}\n{context}");
    assert_eq!(n("unauthorized"), 0, "{report}\n{context}");
    assert_eq!(n("dropped"), 0, "no miner dropped: {report}\n{context}");
    assert_eq!(
        n("accepted") + n("stale"),
        n("shares_sent"),
        "answers add up: {report}\n{context}"
    );
}

/// `quarry loadgen` is not tied to Quarry: it drives SRI's `pool_sv2` directly with SV2 miners,
/// and SRI's `translator_sv2` in front of it with SV1 miners. Every share it sends gets an
/// answer and none of them is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_drives_sri_pool_and_translator() {
    let nodes = Regtest::single();
    let dir = scratch_dir("loadgen-sri");
    let address = nodes.new_address().await;
    let sri = SriPool::start(&nodes, &dir, &address).await;

    let url = format!(
        "stratum2+tcp://127.0.0.1:{}/{}",
        sri.port,
        sri.authority.public_text()
    );
    let sv2 = loadgen_report(
        &[
            "loadgen",
            &url,
            "--miners",
            "40",
            "--user",
            &address,
            "--rate",
            "0.25",
            "--duration",
            "6",
            "--hashrate",
            "10000",
            "--json",
        ],
        &dir.join("loadgen-sv2.log"),
        || format!("pool_sv2:\n{}", sri.log()),
    );
    assert_eq!(sv2["protocol"], "sv2", "{sv2}");
    assert_every_share_answered(&sv2, 40, &sri.log());

    let mut translator = Translator::start(
        &dir,
        sri.port,
        &sri.authority.public_text(),
        &format!("{address}.tproxy"),
        10_000.0,
    )
    .await;
    let proxy_port = translator.port;
    let v1 = loadgen_report(
        &[
            "loadgen",
            &format!("stratum+tcp://127.0.0.1:{proxy_port}"),
            "--miners",
            "40",
            "--user",
            &format!("{address}.lg"),
            "--rate",
            "0.25",
            "--duration",
            "6",
            "--json",
        ],
        &dir.join("loadgen-v1.log"),
        || {
            format!(
                "translator:\n{}\npool_sv2:\n{}",
                translator.log(),
                sri.log()
            )
        },
    );
    translator.stop();
    assert_eq!(v1["protocol"], "v1", "{v1}");
    assert_every_share_answered(&v1, 40, &translator.log());
}

/// `quarry mine` (SV1) → `quarry proxy` → Quarry's SV2 pool, with a dead first upstream the
/// proxy must fail over from. Blocks found through the proxy reach the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sv1_miner_through_quarry_proxy_fails_over_and_mines_blocks() {
    proxy_fails_over_and_mines_blocks(false).await;
}

/// The same with the live upstream over QUIC (`stratum2+quic://`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sv1_miner_through_quarry_proxy_over_quic_mines_blocks() {
    proxy_fails_over_and_mines_blocks(true).await;
}

async fn proxy_fails_over_and_mines_blocks(quic: bool) {
    let nodes = Regtest::single();
    let dir = scratch_dir(if quic { "sv2-proxy-quic" } else { "sv2-proxy" });
    let port = free_port();
    let quic_port = free_port();
    let authority = AuthorityKeypair::generate();
    let mut config = pool_config(&nodes, &dir, port, "");
    config.push_str(&sv2_section(&authority));
    config.push_str(&format!("quic_listen = \"127.0.0.1:{quic_port}\"\n"));
    let pool = start_pool(&dir, &config, port).await;
    let address = nodes.new_address().await;
    let before = nodes.height().await;

    let dead = format!(
        "stratum2+tcp://127.0.0.1:{}/{}",
        free_port(),
        authority.public_text()
    );
    let live = match quic {
        true => format!(
            "stratum2+quic://127.0.0.1:{quic_port}/{}",
            authority.public_text()
        ),
        false => format!(
            "stratum2+tcp://127.0.0.1:{port}/{}",
            authority.public_text()
        ),
    };
    let proxy_port = free_port();
    let proxy = Process::spawn(
        &[
            "proxy",
            "--listen",
            &format!("127.0.0.1:{proxy_port}"),
            "--upstream",
            &dead,
            "--upstream",
            &live,
            "--user",
            &format!("{address}.viaproxy"),
        ],
        &dir.join("proxy.log"),
    );
    let listening = listens(proxy_port, Duration::from_secs(20)).await;
    assert!(listening, "proxy listens:\n{}", proxy.log_text());

    let mut miner = Process::spawn(
        &[
            "mine",
            &format!("stratum+tcp://127.0.0.1:{proxy_port}"),
            "--user",
            "rig1",
            "--threads",
            "1",
            "--duration",
            "6",
        ],
        &dir.join("mine.log"),
    );
    assert!(miner.wait(Duration::from_secs(60)), "miner stops");
    let mined = wait_until(Duration::from_secs(20), || async {
        nodes.height().await > before
    })
    .await;
    let miner_log = miner.log_text();
    let proxy_log = plain(&proxy.log_text());
    let pool_log = plain(&pool.log_text());
    assert!(
        mined,
        "blocks through the proxy reached the node.\nminer:\n{miner_log}\nproxy:\n{proxy_log}\npool:\n{pool_log}"
    );
    assert!(
        tally(&miner_log, "accepted") > 0,
        "{miner_log}\n{proxy_log}"
    );
    assert_eq!(tally(&miner_log, "rejected"), 0, "{miner_log}\n{proxy_log}");
    assert!(
        proxy_log.contains("upstream unreachable"),
        "the dead upstream was tried first:\n{proxy_log}"
    );
    assert!(proxy_log.contains("upstream ready"), "{proxy_log}");
    assert!(pool_log.contains("outcome=Accepted"), "{pool_log}");
    assert!(
        pool_log.contains(&format!("{address}.viaproxy")),
        "the pool credits the proxy's identity:\n{pool_log}"
    );
}
