//! Stratum V2 against real peers: our SV2 miner, SRI's `translator_sv2` 0.6.0 (from crates.io)
//! in front of our SV1 miner, both on Quarry's pool on the regtest node pair.

mod support;

use std::time::Duration;

use quarry_stratum::v2::AuthorityKeypair;
use serde_json::{json, Value};
use support::*;

fn sv2_section(authority: &AuthorityKeypair) -> String {
    format!(
        "\n[sv2]\nauthority_secret_key = \"{}\"\nauthority_public_key = \"{}\"\n",
        authority.secret_text(),
        authority.public_text()
    )
}

/// A log without its ANSI colours.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `accepted=.. rejected=.. blocks=..` line `quarry mine` prints last.
fn tally(log: &str, key: &str) -> u64 {
    log.lines()
        .rev()
        .find(|l| l.starts_with("accepted="))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Whether something accepts connections on `port` within `limit`.
async fn listens(port: u16, limit: Duration) -> bool {
    wait_until(limit, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await
}

/// Starts one of SRI's binaries on `config`, logging to `log`.
fn spawn_sri(binary: &str, config: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    let log_file = std::fs::File::create(log).expect("log");
    std::process::Command::new(binary)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(log_file.try_clone().expect("clone"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("start {binary}: {e}"))
}

async fn height(nodes: &NodePair) -> u64 {
    nodes
        .rpc_ok('A', "getblockcount", json!([]))
        .await
        .as_u64()
        .expect("height")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sv2_miner_mines_blocks_on_quarry_and_refuses_an_impostor() {
    let nodes = NodePair::start();
    let dir = scratch_dir("sv2-direct");
    let port = free_port();
    let authority = AuthorityKeypair::generate();
    let mut config = pool_config(&nodes, &dir, port, "");
    config.push_str(&sv2_section(&authority));
    let pool = start_pool(&dir, &config, port).await;
    let address = nodes.rpc_ok('B', "getnewaddress", json!([])).await;
    let address = address.as_str().expect("address").to_string();
    let before = height(&nodes).await;

    let url = format!(
        "stratum2+tcp://127.0.0.1:{port}/{}",
        authority.public_text()
    );
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
            height(&nodes).await > before
        })
        .await,
        "the node accepted the SV2 blocks:\n{}",
        pool.log_text()
    );
    let pool_log = plain(&pool.log_text());
    assert!(pool_log.contains("outcome=Accepted"), "{pool_log}");
    assert!(pool_log.contains("worker authorized"), "{pool_log}");
    assert!(pool_log.contains(".sv2rig"), "{pool_log}");

    // The same pool, pinned to another authority key: the miner refuses the handshake.
    let impostor = AuthorityKeypair::generate();
    let url = format!("stratum2+tcp://127.0.0.1:{port}/{}", impostor.public_text());
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

fn translator_binary() -> String {
    std::env::var("QUARRY_TRANSLATOR_SV2").unwrap_or_else(|_| {
        let home = std::env::var("HOME").expect("HOME");
        format!("{home}/.cache/quarry/sri/bin/translator_sv2")
    })
}

/// SRI's `translator_sv2`: SV1 miners on `port`, one aggregated channel to an SV2 upstream.
struct Translator {
    child: std::process::Child,
    port: u16,
    log_path: std::path::PathBuf,
}

impl Translator {
    /// Starts it in `dir` against the SV2 pool on `upstream_port` (pinned to `key`), as
    /// `identity`, with a downstream difficulty set by `miner_hashrate`, and waits until it
    /// listens.
    async fn start(
        dir: &std::path::Path,
        upstream_port: u16,
        key: &str,
        identity: &str,
        miner_hashrate: f64,
    ) -> Translator {
        let binary = translator_binary();
        assert!(
            std::path::Path::new(&binary).exists(),
            "{binary} missing: scripts/test.sh installs SRI's translator_sv2 0.6.0 with cargo install"
        );
        let port = free_port();
        let config = format!(
            r#"
downstream_address = "127.0.0.1"
downstream_port = {port}
max_supported_version = 2
min_supported_version = 2
downstream_extranonce2_size = 4
aggregate_channels = true
supported_extensions = []
required_extensions = []

[downstream_difficulty_config]
min_individual_miner_hashrate = {miner_hashrate:?}
shares_per_minute = 60.0
enable_vardiff = false
job_keepalive_interval_secs = 60

[[upstreams]]
address = "127.0.0.1"
port = {upstream_port}
authority_pubkey = "{key}"
user_identity = "{identity}"
"#
        );
        let config_path = dir.join("translator.toml");
        std::fs::write(&config_path, config).expect("write translator config");
        let log_path = dir.join("translator.log");
        let child = spawn_sri(&binary, &config_path, &log_path);
        let translator = Translator {
            child,
            port,
            log_path,
        };
        let listening = listens(port, Duration::from_secs(30)).await;
        assert!(listening, "translator listens:\n{}", translator.log());
        translator
    }

    fn log(&self) -> String {
        plain(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Translator {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sri_translator_proxies_sv1_miners_to_quarry_sv2() {
    let nodes = NodePair::start();
    let dir = scratch_dir("sv2-translator");
    let port = free_port();
    let authority = AuthorityKeypair::generate();
    let mut config = pool_config(&nodes, &dir, port, "");
    config.push_str(&sv2_section(&authority));
    let pool = start_pool(&dir, &config, port).await;
    let address = nodes.rpc_ok('B', "getnewaddress", json!([])).await;
    let address = address.as_str().expect("address").to_string();
    let before = height(&nodes).await;

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
        height(&nodes).await > before
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

fn pool_sv2_binary() -> String {
    std::env::var("QUARRY_POOL_SV2").unwrap_or_else(|_| {
        let home = std::env::var("HOME").expect("HOME");
        format!("{home}/.cache/quarry/sri/bin/pool_sv2")
    })
}

/// SRI's `pool_sv2`, fed templates by `quarry tp` on the regtest node pair, paying `address`.
struct SriPool {
    tp: Process,
    pool: std::process::Child,
    port: u16,
    authority: AuthorityKeypair,
    log_path: std::path::PathBuf,
}

impl SriPool {
    async fn start(nodes: &NodePair, dir: &std::path::Path, address: &str) -> SriPool {
        let binary = pool_sv2_binary();
        assert!(
            std::path::Path::new(&binary).exists(),
            "{binary} missing: scripts/test.sh installs SRI's pool_sv2 0.7.0 with cargo install"
        );
        let tp_port = free_port();
        let tp_authority = AuthorityKeypair::generate();
        let mut config = pool_config(nodes, dir, free_port(), "");
        config.push_str(&sv2_section(&tp_authority));
        config.push_str(&format!("\n[tp]\nlisten = \"127.0.0.1:{tp_port}\"\n"));
        let config_path = dir.join("quarry.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut tp = Process::spawn(
            &["tp", "--config", config_path.to_str().expect("utf-8")],
            &dir.join("tp.log"),
        );
        let listening = listens(tp_port, Duration::from_secs(20)).await;
        assert!(
            listening && tp.is_running(),
            "quarry tp listens:\n{}",
            tp.log_text()
        );

        let port = free_port();
        let authority = AuthorityKeypair::generate();
        let pool_config = format!(
            r#"
authority_public_key = "{pool_public}"
authority_secret_key = "{pool_secret}"
cert_validity_sec = 3600
listen_address = "127.0.0.1:{port}"
coinbase_reward_script = "addr({address})"
server_id = 1
pool_signature = "quarry-interop"
shares_per_minute = 60.0
share_batch_size = 1

[template_provider_type.Sv2Tp]
address = "127.0.0.1:{tp_port}"
public_key = "{tp_public}"
"#,
            pool_public = authority.public_text(),
            pool_secret = authority.secret_text(),
            tp_public = tp_authority.public_text(),
        );
        let pool_config_path = dir.join("pool_sv2.toml");
        std::fs::write(&pool_config_path, pool_config).expect("write pool config");
        let log_path = dir.join("pool_sv2.log");
        let pool = spawn_sri(&binary, &pool_config_path, &log_path);
        let sri = SriPool {
            tp,
            pool,
            port,
            authority,
            log_path,
        };
        let listening = listens(port, Duration::from_secs(30)).await;
        assert!(
            listening,
            "pool_sv2 listens:\n{}\ntp:\n{}",
            sri.log(),
            sri.tp.log_text()
        );
        sri
    }

    fn log(&self) -> String {
        plain(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    fn stop(&mut self) {
        let _ = self.pool.kill();
        let _ = self.pool.wait();
    }
}

impl Drop for SriPool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SRI's pool, fed templates by `quarry tp` (which gets them from the regtest node), with our
/// SV2 miner mining on it: its blocks must reach the node, paying the pool's reward script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sri_pool_on_quarry_template_provider_gets_blocks_accepted() {
    let nodes = NodePair::start();
    let dir = scratch_dir("sv2-tp");
    let address = nodes.rpc_ok('B', "getnewaddress", json!([])).await;
    let address = address.as_str().expect("address").to_string();
    let before = height(&nodes).await;
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
        height(&nodes).await > before
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
    let nodes = NodePair::start();
    let dir = scratch_dir("loadgen-sri");
    let address = nodes.rpc_ok('B', "getnewaddress", json!([])).await;
    let address = address.as_str().expect("address").to_string();
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
    let nodes = NodePair::start();
    let dir = scratch_dir("sv2-proxy");
    let port = free_port();
    let authority = AuthorityKeypair::generate();
    let mut config = pool_config(&nodes, &dir, port, "");
    config.push_str(&sv2_section(&authority));
    let pool = start_pool(&dir, &config, port).await;
    let address = nodes.rpc_ok('B', "getnewaddress", json!([])).await;
    let address = address.as_str().expect("address").to_string();
    let before = height(&nodes).await;

    let dead = format!(
        "stratum2+tcp://127.0.0.1:{}/{}",
        free_port(),
        authority.public_text()
    );
    let live = format!(
        "stratum2+tcp://127.0.0.1:{port}/{}",
        authority.public_text()
    );
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
        height(&nodes).await > before
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
