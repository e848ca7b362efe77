//! A miner's Lightning node for the tests: the same `quarry-lightning` (ldk-node) the pool
//! embeds, started here as a separate process on the test's Bitcoin Core and asked over its
//! pipe.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::{repo_root, Regtest};

/// `quarry-lightning`, built once per test run (its own workspace and target directory; a
/// no-op when scripts/test.sh built it already).
pub fn binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let manifest = repo_root().join("quarry-lightning/Cargo.toml");
            let status = std::process::Command::new(env!("CARGO"))
                .args(["build", "--locked", "--manifest-path"])
                .arg(&manifest)
                .status()
                .expect("run cargo build for quarry-lightning");
            assert!(status.success(), "quarry-lightning builds");
            repo_root().join("quarry-lightning/target/debug/quarry-lightning")
        })
        .clone()
}

/// A running node, stopped (cleanly: end of input) on drop.
pub struct LnNode {
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    child: Child,
    next_id: u64,
    pub node_id: String,
    pub events: VecDeque<Value>,
}

impl LnNode {
    /// Starts a node in `dir` on node A of `nodes`, listening on `port`.
    pub async fn start(nodes: &Regtest, dir: &Path, port: u16) -> LnNode {
        let rpc = format!("127.0.0.1:{}", nodes.var("NODE_A_RPC_PORT"));
        let mut child = Command::new(binary())
            .arg("--data-dir")
            .arg(dir)
            .args(["--network", "regtest", "--rpc", &rpc, "--rpc-cookie"])
            .arg(nodes.var("NODE_A_COOKIE"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start quarry-lightning");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let mut node = LnNode {
            stdin,
            lines: BufReader::new(stdout).lines(),
            child,
            next_id: 1,
            node_id: String::new(),
            events: VecDeque::new(),
        };
        let ready = node.next_message(Duration::from_secs(60)).await;
        node.node_id = ready["ready"]["node_id"]
            .as_str()
            .unwrap_or_else(|| panic!("a ready line, got {ready}"))
            .to_string();
        node
    }

    async fn next_message(&mut self, limit: Duration) -> Value {
        let line = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .expect("the Lightning node answers in time")
            .expect("read")
            .expect("the Lightning node is running");
        serde_json::from_str(&line).expect("JSON")
    }

    /// One request; panics on the node's error.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// One request: its result or the node's error.
    pub async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let line = format!(
            "{}\n",
            json!({"id": id, "method": method, "params": params})
        );
        let stdin = self.stdin.as_mut().expect("running");
        stdin.write_all(line.as_bytes()).await.expect("write");
        loop {
            let message = self.next_message(Duration::from_secs(120)).await;
            if message.get("event").is_some() {
                self.events.push_back(message["event"].clone());
                continue;
            }
            if message["id"] == json!(id) {
                return match message.get("error") {
                    Some(e) => Err(e.as_str().unwrap_or_default().to_string()),
                    None => Ok(message["result"].clone()),
                };
            }
        }
    }

    /// Inbound BOLT12 payments that succeeded: (payer note, msat).
    pub async fn received_offer_payments(&mut self) -> Vec<(String, u64)> {
        let payments = self.call("payments", json!({})).await;
        payments
            .as_array()
            .expect("a list")
            .iter()
            .filter(|p| {
                p["direction"] == "inbound"
                    && p["kind"] == "bolt12_offer"
                    && p["status"] == "succeeded"
            })
            .map(|p| {
                (
                    p["payer_note"].as_str().unwrap_or_default().to_string(),
                    p["amount_msat"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }
}

impl Drop for LnNode {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.start_kill();
    }
}
