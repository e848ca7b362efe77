//! Kaspa end to end on a real kaspad (2.1.0, built by scripts/kaspad.sh; `QUARRY_KASPAD`): a
//! private devnet, `quarry serve` with Bitcoin off and a `[kaspa]` section, and `quarry mine --coin kaspa`
//! as an IceRiver (one hex string per job), a Bitmain (`GodMiner`: array jobs, no extranonce)
//! and a generic miner (array jobs, 2-byte extranonce), all at once; and solo mode, where each
//! miner's blocks pay that miner.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kaspa_addresses::{Address, Prefix, Version};
use kaspa_wrpc_client::prelude::{RpcApi, RpcBlockColor};
use kaspa_wrpc_client::{KaspaRpcClient, WrpcEncoding};
use quarry_ledger::{BlockStatus, Chain, Store};
use serde_json::Value;
use support::{free_port, loadgen_report, run_miner, scratch_dir, start_pool};

/// kaspad on a private devnet, killed on drop.
struct Kaspad {
    child: Child,
    log: std::path::PathBuf,
    borsh_port: u16,
}

impl Kaspad {
    fn start(dir: &Path) -> Kaspad {
        let binary = std::env::var("QUARRY_KASPAD")
            .expect("QUARRY_KASPAD names kaspad 2.1.0 (scripts/test.sh builds it: scripts/kaspad.sh install)");
        let (borsh_port, grpc_port, p2p_port) = (free_port(), free_port(), free_port());
        let log = dir.join("kaspad.log");
        let file = std::fs::File::create(&log).expect("kaspad log");
        let child = Command::new(binary)
            .args([
                "--devnet",
                "--enable-unsynced-mining",
                "--nodnsseed",
                "--disable-upnp",
                "--utxoindex",
                "--yes",
                &format!("--appdir={}", dir.join("kaspad").display()),
                &format!("--rpclisten-borsh=127.0.0.1:{borsh_port}"),
                &format!("--rpclisten=127.0.0.1:{grpc_port}"),
                &format!("--listen=127.0.0.1:{p2p_port}"),
            ])
            .stdout(file.try_clone().expect("clone"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn kaspad");
        Kaspad {
            child,
            log,
            borsh_port,
        }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.borsh_port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A wRPC client once the node answers.
    async fn client(&mut self) -> KaspaRpcClient {
        let start = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.borsh_port)).is_ok() {
                break;
            }
            assert!(
                matches!(self.child.try_wait(), Ok(None)),
                "kaspad exited:\n{}",
                self.log_text()
            );
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "kaspad did not listen:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let client = KaspaRpcClient::new(WrpcEncoding::Borsh, Some(&self.url()), None, None, None)
            .expect("client");
        client.connect(None).await.expect("connect to kaspad");
        client
    }
}

impl Kaspad {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Kaspad {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn devnet_address(seed: u8) -> Address {
    Address::new(Prefix::Devnet, Version::PubKey, &[seed; 32])
}

/// One devnet at a time: both tests mine on the CPU, and sharing two cores would halve each
/// one's blocks.
static DEVNET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asics_in_each_dialect_mine_devnet_blocks_that_kaspad_accepts() {
    let _one_devnet_at_a_time = DEVNET.lock().await;
    let dir = scratch_dir("kaspa");
    let mut kaspad = Kaspad::start(&dir);
    let node = kaspad.client().await;
    let before = node.get_block_dag_info().await.expect("dag info");
    let pool_address = devnet_address(7);
    let miner_address = devnet_address(9);
    let port = free_port();
    let api_port = free_port();
    let config = format!(
        r#"
data_dir = "{data}"

[stratum]
enabled = false

[payout]
scheme = "pplns"

[api]
listen = "127.0.0.1:{api_port}"

[kaspa]
enabled = true
listen = "127.0.0.1:{port}"
network = "devnet"
nodes = ["{url}"]
pool_address = "{pool_address}"
poll_ms = 500
maturity = 5
start_difficulty = 0.00001
min_difficulty = 0.0000001
"#,
        data = dir.join("data").display(),
        url = kaspad.url(),
    );
    let pool = start_pool(&dir, &config, port).await;
    let dialects = [
        ("iceriver", "IceRiverMiner-v1.1"),
        ("bitmain", "GodMiner/2.0.0"),
        ("generic", "lolMiner 1.88"),
    ];
    let rigs: Vec<(String, &str)> = dialects
        .iter()
        .map(|(rig, agent)| (format!("{miner_address}.{rig}"), *agent))
        .collect();
    let context = || {
        format!(
            "serve:\n{}\nkaspad (tail):\n{}",
            pool.log_text(),
            tail(&kaspad.log_text(), 40)
        )
    };
    let blocks = mine_until_each_finds_a_block(&dir, port, api_port, &rigs, context).await;

    // kaspad took blocks from every dialect: its DAG grew, and each block Quarry recorded as
    // accepted is one kaspad knows.
    let after = node.get_block_dag_info().await.expect("dag info");
    assert!(
        after.virtual_daa_score > before.virtual_daa_score,
        "DAA score grows: {} -> {}\n{}",
        before.virtual_daa_score,
        after.virtual_daa_score,
        context()
    );
    // /metrics carries the coin: Kaspa's own series, counting what the miners did.
    let metrics = reqwest::get(format!("http://127.0.0.1:{api_port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let series = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics:\n{metrics}"))
    };
    assert!(
        series("quarry_kaspa_shares_accepted_total") > 0.0,
        "{metrics}"
    );
    assert!(
        series("quarry_kaspa_blocks_accepted_total") >= blocks.len() as f64,
        "{metrics}"
    );
    assert!(series("quarry_kaspa_network_difficulty") > 0.0, "{metrics}");
    assert_eq!(
        series("quarry_shares_accepted_total"),
        0.0,
        "no Bitcoin share counted"
    );
    // The dashboard and the history know the coin: Kaspa's pool page, its node, its workers.
    let page = reqwest::get(format!("http://127.0.0.1:{api_port}/?chain=kaspa"))
        .await
        .expect("dashboard")
        .text()
        .await
        .expect("html");
    assert!(
        page.contains("Kaspa pool") && page.contains("serving work"),
        "{page}"
    );
    let miner_page = reqwest::get(format!(
        "http://127.0.0.1:{api_port}/miners/{miner_address}?chain=kaspa"
    ))
    .await
    .expect("miner page")
    .text()
    .await
    .expect("html");
    assert!(
        miner_page.contains(&format!("data-worker=\"{miner_address}.")),
        "the Kaspa miner page lists its workers: {miner_page}"
    );
    assert!(
        after.block_count >= before.block_count + blocks.len() as u64,
        "kaspad holds every accepted block: {} -> {} for {} found",
        before.block_count,
        after.block_count,
        blocks.len()
    );
    let first_hash = blocks[0]["hash"].as_str().expect("hash");
    let hash = kaspa_wrpc_client::prelude::RpcHash::from_bytes(
        hex::decode(first_hash)
            .expect("hex")
            .try_into()
            .expect("32 bytes"),
    );
    let known = node
        .get_block(hash, false)
        .await
        .expect("kaspad has the block");
    assert_eq!(hex::encode(known.header.hash.as_bytes()), first_hash);

    // The blocks pay the configured address: later blocks merge them and pay their reward to
    // the pool's address (kaspad's UTXO index has it).
    wait_paid(&node, &pool_address, context).await;
    assert_eq!(
        node.get_balance_by_address(miner_address.clone())
            .await
            .expect("balance"),
        0,
        "pool mode: the coinbase pays the pool, not the miner"
    );

    // The load generator speaks the dialect too: 20 miners, two shares a second each.
    let report = loadgen_report(
        &[
            "loadgen",
            &format!("127.0.0.1:{port}"),
            "--kaspa",
            "--miners",
            "20",
            "--rate",
            "2",
            "--duration",
            "5",
            "--user",
            &format!("{miner_address}"),
            "--password",
            "d=0.0000001",
            "--json",
        ],
        &dir.join("loadgen.log"),
        context,
    );
    assert_eq!(report["protocol"], "kaspa", "{report}");
    assert!(report["accepted"].as_u64().unwrap_or(0) > 50, "{report}");
    assert_eq!(report["rejected"], 0, "{report}");
    assert_eq!(report["unanswered"], 0, "{report}");

    // Shares are in the ledger under Kaspa, by worker, apart from Bitcoin's.
    let store = Store::open(&format!(
        "sqlite://{}",
        dir.join("data/quarry.db").display()
    ))
    .await
    .expect("ledger");
    let kaspa = Chain::new("kaspa").expect("chain");
    let shares = store
        .shares_newest_first(&kaspa, i64::MAX, 100_000)
        .await
        .expect("shares");
    for (rig, _) in &dialects {
        assert!(
            shares
                .iter()
                .any(|s| s.worker.ends_with(&format!(".{rig}"))),
            "{rig}'s shares are in the ledger"
        );
    }
    assert!(shares
        .iter()
        .all(|s| s.address == miner_address.to_string()));
    let bitcoin = store
        .shares_newest_first(&Chain::BITCOIN, i64::MAX, 10)
        .await
        .expect("shares");
    assert!(bitcoin.is_empty(), "no Kaspa share counts as Bitcoin's");

    // Blue blocks mature: credited to the miner (PPLNS on Kaspa shares), then confirmed.
    // Blocks deepen only as the DAG grows: mine on (the generic rig) until one is 5 deep.
    let mut round = 0;
    let confirmed = 'deep: loop {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let confirmed = store
                .blocks(Some(BlockStatus::Confirmed), 1000)
                .await
                .expect("blocks");
            if let Some(block) = confirmed.into_iter().find(|b| b.chain == kaspa) {
                break 'deep block;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(round < 4, "a kaspa block confirms\n{}", context());
        mine_round(
            &dir,
            port,
            &rigs[2..],
            8,
            &format!("deeper-{round}"),
            &context,
        );
        round += 1;
    };
    // kaspad agrees: blue, at least `maturity` (5) deep.
    let hash = kaspa_wrpc_client::prelude::RpcHash::from_bytes(
        hex::decode(&confirmed.hash)
            .expect("hex")
            .try_into()
            .expect("32 bytes"),
    );
    let info = node.get_block_reward_info(hash).await.expect("reward info");
    assert!(matches!(info.block_color, RpcBlockColor::Blue), "{info:?}");
    assert!(info.confirmation_count.unwrap_or(0) >= 5, "{info:?}");
    let balances = store.balances().await.expect("balances");
    assert!(
        balances
            .iter()
            .any(|b| b.chain == kaspa && b.address == miner_address.to_string()),
        "the miner has a Kaspa balance: {balances:?}"
    );
    assert!(
        balances.iter().all(|b| b.chain != Chain::BITCOIN),
        "no Bitcoin balance from Kaspa blocks: {balances:?}"
    );
}

/// One round: each `(user, agent)` mines at once, one thread each, for `secs`. Every miner's
/// shares are accepted and none rejected; returns how many were accepted.
fn mine_round(
    dir: &Path,
    port: u16,
    rigs: &[(String, &str)],
    secs: u64,
    round: &str,
    context: &impl Fn() -> String,
) -> u64 {
    let url = format!("stratum+tcp://127.0.0.1:{port}");
    let mut accepted = 0;
    let miners: Vec<_> = rigs
        .iter()
        .map(|(user, agent)| {
            let log = dir.join(format!("miner-{}-{round}.log", user.replace(':', "_")));
            let (url, user, agent) = (url.clone(), user.clone(), agent.to_string());
            std::thread::spawn(move || {
                run_miner(
                    &url,
                    &user,
                    secs,
                    &["--coin", "kaspa", "--agent", &agent],
                    &log,
                )
            })
        })
        .collect();
    for ((user, _), miner) in rigs.iter().zip(miners) {
        let miner = miner.join().expect("miner thread");
        let text = miner.log_text();
        let summary = text
            .lines()
            .rev()
            .find(|l| l.starts_with("accepted="))
            .unwrap_or_else(|| panic!("{user}: a summary line:\n{text}"))
            .to_string();
        let count = |key: &str| -> u64 {
            summary
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        assert!(
            count("accepted") > 0,
            "{user}: shares accepted: {summary}\n{text}\n{}",
            context()
        );
        assert_eq!(
            count("rejected"),
            0,
            "{user}: no share rejected: {summary}\n{text}"
        );
        accepted += count("accepted");
    }
    accepted
}

/// Mines in rounds of 15 s until every user has a block kaspad took (at most four rounds),
/// and no block was rejected. Returns the pool's Kaspa blocks (`/api/blocks?chain=kaspa`).
async fn mine_until_each_finds_a_block(
    dir: &Path,
    port: u16,
    api_port: u16,
    rigs: &[(String, &str)],
    context: impl Fn() -> String,
) -> Vec<Value> {
    let mut waiting: Vec<(String, &str)> = rigs.to_vec();
    for round in 0..4 {
        let _ = mine_round(dir, port, &waiting, 15, &round.to_string(), &context);
        let blocks = kaspa_blocks(api_port).await;
        for block in &blocks {
            assert_ne!(block["status"], "rejected", "{block}\n{}", context());
        }
        waiting.retain(|(user, _)| !blocks.iter().any(|b| b["worker"] == user.as_str()));
        if waiting.is_empty() {
            return blocks;
        }
    }
    panic!("no block from {waiting:?} in four rounds\n{}", context());
}

/// Mines in rounds of 6 s until `node` holds more blocks than it did; the shares accepted.
async fn mine_onto(
    node: &KaspaRpcClient,
    name: &str,
    dir: &Path,
    port: u16,
    rigs: &[(String, &str)],
    context: &impl Fn() -> String,
) -> u64 {
    let before = node.get_block_dag_info().await.expect("dag").block_count;
    let mut accepted = 0;
    for round in 0..5 {
        accepted += mine_round(dir, port, rigs, 6, &format!("{name}-{round}"), context);
        if node.get_block_dag_info().await.expect("dag").block_count > before {
            return accepted;
        }
    }
    panic!("node {name} took no block\n{}", context());
}

async fn kaspa_blocks(api_port: u16) -> Vec<Value> {
    let blocks: Value = reqwest::get(format!(
        "http://127.0.0.1:{api_port}/api/blocks?chain=kaspa&limit=1000"
    ))
    .await
    .expect("api")
    .json()
    .await
    .expect("json");
    blocks.as_array().expect("blocks").clone()
}

/// Whether kaspad's UTXO index shows `address` paid.
async fn paid(node: &KaspaRpcClient, address: &Address) -> bool {
    node.get_balance_by_address(address.clone())
        .await
        .expect("balance (utxoindex)")
        > 0
}

/// Waits until kaspad's UTXO index shows `address` paid: a block's reward is paid by the
/// chain block that merges it, and counts once a later one accepts that.
async fn wait_paid(node: &KaspaRpcClient, address: &Address, context: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !paid(node, address).await {
        assert!(
            Instant::now() < deadline,
            "{address} is paid\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Solo mode: each miner mines a template paying its own address, so kaspad pays each miner
/// for its own blocks and the ledger credits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn solo_miners_are_paid_by_their_own_blocks() {
    let _one_devnet_at_a_time = DEVNET.lock().await;
    let dir = scratch_dir("kaspa-solo");
    let mut kaspad = Kaspad::start(&dir);
    let node = kaspad.client().await;
    let (alice, bob) = (devnet_address(21), devnet_address(22));
    let port = free_port();
    let api_port = free_port();
    let config = format!(
        r#"
data_dir = "{data}"

[stratum]
enabled = false

[api]
listen = "127.0.0.1:{api_port}"

[kaspa]
enabled = true
mode = "solo"
listen = "127.0.0.1:{port}"
network = "devnet"
nodes = ["{url}"]
poll_ms = 500
start_difficulty = 0.00001
min_difficulty = 0.0000001
"#,
        data = dir.join("data").display(),
        url = kaspad.url(),
    );
    let pool = start_pool(&dir, &config, port).await;
    let context = || {
        format!(
            "serve:\n{}\nkaspad (tail):\n{}",
            pool.log_text(),
            tail(&kaspad.log_text(), 40)
        )
    };
    let rigs = [
        (format!("{alice}.iceriver"), "IceRiverMiner-v1.1"),
        (format!("{bob}.generic"), "lolMiner 1.88"),
    ];
    let blocks = mine_until_each_finds_a_block(&dir, port, api_port, &rigs, context).await;
    for block in &blocks {
        let address = block["address"].as_str().expect("address");
        assert!(
            block["worker"]
                .as_str()
                .is_some_and(|w| w.starts_with(address)),
            "a solo block is its finder's: {block}"
        );
    }
    // Their rewards come with the blocks that merge theirs: mine on until both are paid.
    for round in 0..4 {
        if paid(&node, &alice).await && paid(&node, &bob).await {
            break;
        }
        assert!(round < 3, "both solo miners are paid\n{}", context());
        let _ = mine_round(&dir, port, &rigs, 8, &format!("paid-{round}"), &context);
    }
    let store = Store::open(&format!(
        "sqlite://{}",
        dir.join("data/quarry.db").display()
    ))
    .await
    .expect("ledger");
    assert!(
        store.balances().await.expect("balances").is_empty(),
        "solo: the coinbase paid the finders, nothing is credited"
    );
}

/// Two kaspads, not peered. The preferred one is killed mid-run: the pool fails over to the
/// other, miners keep mining (the shares on the last job are answered and kept), and the
/// other node takes the blocks. Every acknowledged share is in the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kaspad_that_goes_away_fails_over_and_no_share_is_lost() {
    let _one_devnet_at_a_time = DEVNET.lock().await;
    let dir = scratch_dir("kaspa-failover");
    let (dir_a, dir_b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&dir_a).expect("dir");
    std::fs::create_dir_all(&dir_b).expect("dir");
    let mut kaspad_a = Kaspad::start(&dir_a);
    let mut kaspad_b = Kaspad::start(&dir_b);
    let node_a = kaspad_a.client().await;
    let node_b = kaspad_b.client().await;
    let address = devnet_address(31);
    let (port, api_port) = (free_port(), free_port());
    let config = format!(
        r#"
data_dir = "{data}"

[stratum]
enabled = false

[api]
listen = "127.0.0.1:{api_port}"

[kaspa]
enabled = true
listen = "127.0.0.1:{port}"
network = "devnet"
nodes = ["{url_a}", "{url_b}"]
pool_address = "{address}"
poll_ms = 500
start_difficulty = 0.00001
min_difficulty = 0.0000001
"#,
        data = dir.join("data").display(),
        url_a = kaspad_a.url(),
        url_b = kaspad_b.url(),
    );
    let pool = start_pool(&dir, &config, port).await;
    let context = || pool.log_text();
    let rigs = [(format!("{address}.rig"), "lolMiner 1.88")];
    let mut accepted = mine_onto(&node_a, "a", &dir, port, &rigs, &context).await;
    kaspad_a.kill();
    // With A gone, the same miners go on, and B takes their blocks.
    accepted += mine_onto(&node_b, "b", &dir, port, &rigs, &context).await;
    assert!(
        pool.log_text().contains("kaspa node disconnected"),
        "A's loss is logged\n{}",
        context()
    );

    let store = Store::open(&format!(
        "sqlite://{}",
        dir.join("data/quarry.db").display()
    ))
    .await
    .expect("ledger");
    let kaspa = Chain::new("kaspa").expect("chain");
    let recorded = store
        .shares_newest_first(&kaspa, i64::MAX, 1_000_000)
        .await
        .expect("shares")
        .len() as u64;
    assert!(
        recorded >= accepted,
        "every acknowledged share is in the ledger: {recorded} recorded, {accepted} acknowledged"
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
