//! The embedded Lightning node: `quarry-lightning` (ldk-node on the pool's Bitcoin Core) run as
//! a child process, asked over its stdin/stdout pipe (one JSON object per line; see that crate's
//! docs), and the pool's side of Lightning payouts: the channel policy, the node's status for
//! the API and metrics, and [`LightningNode`] for the ledger's payout run.
//!
//! A child process and not a library because ldk-node's SQLite (rusqlite 0.31) and the ledger's
//! (sqlx 0.8.6) cannot link into one binary; see quarry-lightning/Cargo.toml.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use quarry_ledger::lightning::{LightningNode, LightningPolicy, Payment, PaymentState, RoutingFee};
use quarry_ledger::Sat;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::{Config, LightningToml};
use crate::events::EventBus;

/// How long a request may take (a wallet sync on a large chain is the slowest).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// The running Lightning node.
pub struct Lightning {
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    child: tokio::sync::Mutex<Child>,
    waiters: Waiters,
    next_id: AtomicU64,
    /// The node's public key.
    pub node_id: String,
    /// An address of the node's on-chain wallet, for funding it (channels are opened from it).
    pub funding_address: String,
    /// When and how balances are paid over Lightning.
    pub policy: LightningPolicy,
    /// `[lightning]` as configured.
    pub config: LightningToml,
    /// The last status read (API, metrics, dashboard).
    pub status: Mutex<Value>,
}

impl Lightning {
    /// Starts the node in `data_dir/lightning` on the first `[[node]]`'s RPC and waits until it
    /// runs.
    ///
    /// # Errors
    /// The binary is missing, the data dir is in use, or the node cannot start.
    pub async fn start(config: &Config, events: Arc<EventBus>) -> Result<Arc<Lightning>> {
        let ln = &config.lightning;
        let policy = ln.policy()?;
        let node = config
            .nodes
            .first()
            .context("[lightning] needs a [[node]] for its chain data")?;
        let url =
            reqwest::Url::parse(&node.url).with_context(|| format!("node url {}", node.url))?;
        let rpc = format!(
            "{}:{}",
            url.host_str().unwrap_or("127.0.0.1"),
            url.port_or_known_default().unwrap_or(8332)
        );
        let binary = ln.binary_path()?;
        let data_dir = config.data_dir.join("lightning");
        let mut command = Command::new(&binary);
        command
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--network")
            .arg(&config.network)
            .arg("--rpc")
            .arg(&rpc)
            .arg("--listen")
            .arg(&ln.listen)
            .arg("--alias")
            .arg(&ln.alias)
            .arg("--anchor-reserve-sat")
            .arg(ln.anchor_reserve_sat.to_string());
        for peer in &ln.trusted_peers {
            command.arg("--trusted-peer").arg(peer);
        }
        match (&node.cookie_file, &node.user, &node.password) {
            (Some(cookie), _, _) => {
                command.arg("--rpc-cookie").arg(cookie);
            }
            (None, Some(user), Some(password)) => {
                // By environment, not argv: other users can read a process's arguments.
                command
                    .env("QUARRY_LN_RPC_USER", user)
                    .env("QUARRY_LN_RPC_PASSWORD", password);
            }
            _ => bail!("[lightning] needs the node's cookie_file or user and password"),
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdin = child.stdin.take().context("the node's stdin")?;
        let stdout = child.stdout.take().context("the node's stdout")?;
        let waiters: Waiters = Arc::default();
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(read_answers(
            BufReader::new(stdout),
            Arc::clone(&waiters),
            ready_tx,
            events,
        ));
        let ready = match tokio::time::timeout(CALL_TIMEOUT, ready_rx).await {
            Ok(Ok(ready)) => ready,
            _ => {
                let status = child.try_wait().ok().flatten();
                bail!(
                    "the Lightning node ({}) did not start (exit: {status:?}); see its log in {}",
                    binary.display(),
                    data_dir.join("ldk_node.log").display()
                );
            }
        };
        let node_id = ready["node_id"].as_str().unwrap_or_default().to_string();
        let mut lightning = Lightning {
            stdin: tokio::sync::Mutex::new(Some(stdin)),
            child: tokio::sync::Mutex::new(child),
            waiters,
            next_id: AtomicU64::new(1),
            node_id,
            funding_address: String::new(),
            policy,
            config: ln.clone(),
            status: Mutex::new(Value::Null),
        };
        let funding = lightning.call("new_address", json!({})).await?;
        lightning.funding_address = funding["address"].as_str().unwrap_or_default().to_string();
        let lightning = Arc::new(lightning);
        lightning.refresh().await?;
        info!(
            target: "quarry::status",
            node_id = %lightning.node_id,
            listen = %lightning.config.listen,
            funding_address = %lightning.funding_address,
            "Lightning node running (fund its on-chain wallet at funding_address)"
        );
        Ok(lightning)
    }

    /// One request to the node.
    ///
    /// # Errors
    /// The node's own error, or the node being gone.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(id, tx);
        let line = format!(
            "{}\n",
            json!({"id": id, "method": method, "params": params})
        );
        {
            let mut stdin = self.stdin.lock().await;
            let Some(stdin) = stdin.as_mut() else {
                lock(&self.waiters).remove(&id);
                bail!("the Lightning node is stopped");
            };
            if let Err(e) = stdin.write_all(line.as_bytes()).await {
                lock(&self.waiters).remove(&id);
                bail!("the Lightning node is gone: {e}");
            }
        }
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(e))) => Err(anyhow!("{e}")),
            Ok(Err(_)) => bail!("the Lightning node stopped"),
            Err(_) => {
                lock(&self.waiters).remove(&id);
                bail!("the Lightning node did not answer {method} in {CALL_TIMEOUT:?}")
            }
        }
    }

    /// Reads the node's status into [`Lightning::status`].
    ///
    /// # Errors
    /// The node not answering.
    pub async fn refresh(&self) -> Result<Value> {
        let mut status = self.call("status", json!({})).await?;
        status["funding_address"] = json!(self.funding_address);
        *lock(&self.status) = status.clone();
        Ok(status)
    }

    /// Checks `offer` is a BOLT12 offer for this pool's network.
    ///
    /// # Errors
    /// Why it is not.
    pub async fn check_offer(&self, offer: &str) -> Result<Value> {
        self.call("decode_offer", json!({ "offer": offer })).await
    }

    /// Stops the node cleanly (it persists its state), waiting up to 20 s.
    pub async fn shutdown(&self) {
        drop(self.stdin.lock().await.take()); // end of input: the node stops
        let mut child = self.child.lock().await;
        if tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .is_err()
        {
            warn!("the Lightning node did not stop in 20 s; killing it");
            let _ = child.kill().await;
        }
    }

    /// The channel policy, every `channel_check_secs`: a channel to each configured peer,
    /// opened once the on-chain wallet can fund it; and a fresh status for the API.
    pub async fn run_policy(self: Arc<Self>) {
        let every = Duration::from_secs(self.config.channel_check_secs.max(1));
        loop {
            if let Err(e) = self.keep_channels().await {
                warn!(error = %format!("{e:#}"), "Lightning channel policy");
            }
            tokio::time::sleep(every).await;
        }
    }

    async fn keep_channels(&self) -> Result<()> {
        let status = self.refresh().await?;
        let spendable = status["onchain_spendable_sat"].as_u64().unwrap_or(0);
        for peer in &self.config.peers {
            let (node_id, address) = parse_peer(peer)?;
            let has_channel = status["channels"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["counterparty"] == node_id);
            if has_channel {
                continue;
            }
            let needed = self.config.channel_sat + self.config.anchor_reserve_sat;
            if spendable < needed {
                warn!(peer = %node_id, spendable_sat = spendable, needed_sat = needed, funding_address = %self.funding_address,
                      "not enough on-chain funds to open the configured channel yet");
                continue;
            }
            let opened = self
                .call(
                    "open_channel",
                    json!({"node_id": node_id, "address": address, "amount_sat": self.config.channel_sat}),
                )
                .await?;
            info!(peer = %node_id, amount_sat = self.config.channel_sat, ?opened, "opening a Lightning channel");
            self.refresh().await?;
        }
        Ok(())
    }
}

/// `<node id>@<host>:<port>`.
fn parse_peer(peer: &str) -> Result<(&str, &str)> {
    peer.split_once('@')
        .filter(|(id, address)| id.len() == 66 && !address.is_empty())
        .ok_or_else(|| anyhow!("lightning.peers: {peer:?} is not <node id>@<host>:<port>"))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Routes the node's lines: answers to their waiters, events to the event bus and the log.
async fn read_answers(
    stdout: BufReader<tokio::process::ChildStdout>,
    waiters: Waiters,
    ready: oneshot::Sender<Value>,
    events: Arc<EventBus>,
) {
    let mut ready = Some(ready);
    let mut lines = stdout.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            warn!(line = %line, "the Lightning node wrote something that is not JSON");
            continue;
        };
        if let Some(event) = message.get("event") {
            info!(event = %event, "Lightning node event");
            events.publish("LightningEvent", event.clone());
        } else if let Some(started) = message.get("ready") {
            if let Some(ready) = ready.take() {
                let _ = ready.send(started.clone());
            }
        } else if let Some(id) = message["id"].as_u64() {
            if let Some(waiter) = lock(&waiters).remove(&id) {
                let answer = match message.get("error") {
                    Some(error) => Err(error.as_str().unwrap_or("error").to_string()),
                    None => Ok(message["result"].clone()),
                };
                let _ = waiter.send(answer);
            }
        }
    }
    warn!("the Lightning node's output ended: it stopped");
    lock(&waiters).clear(); // every waiter learns it stopped
}

impl LightningNode for Lightning {
    async fn sendable_msat(&self) -> Result<u64, String> {
        let status = self.refresh().await.map_err(|e| format!("{e:#}"))?;
        Ok(status["sendable_msat"].as_u64().unwrap_or(0))
    }

    async fn pay_offer(
        &self,
        offer: &str,
        amount_msat: u64,
        tag: &str,
        max_fee_msat: u64,
    ) -> Result<String, String> {
        let paid = self
            .call(
                "pay_offer",
                json!({"offer": offer, "amount_msat": amount_msat, "payer_note": tag, "max_fee_msat": max_fee_msat}),
            )
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok(paid["payment_id"].as_str().unwrap_or_default().to_string())
    }

    async fn find_payment(&self, tag: &str) -> Result<Option<Payment>, String> {
        let found = self
            .call("find_payment", json!({ "payer_note": tag }))
            .await
            .map_err(|e| format!("{e:#}"))?;
        if found.is_null() {
            return Ok(None);
        }
        let state = match found["status"].as_str() {
            Some("succeeded") => PaymentState::Succeeded,
            Some("failed") => PaymentState::Failed,
            _ => PaymentState::Pending,
        };
        Ok(Some(Payment {
            id: found["payment_id"].as_str().unwrap_or_default().to_string(),
            state,
            amount_msat: found["amount_msat"].as_u64(),
            fee_msat: found["fee_paid_msat"].as_u64(),
        }))
    }
}

impl LightningToml {
    /// The payout policy.
    ///
    /// # Errors
    /// Limits out of order, or an unknown `routing_fee`.
    pub fn policy(&self) -> Result<LightningPolicy> {
        if self.min_payout_sat > self.max_payout_sat {
            bail!("lightning.min_payout_sat is above lightning.max_payout_sat");
        }
        let routing_fee = match self.routing_fee.as_str() {
            "pool" => RoutingFee::Pool,
            "miner" => RoutingFee::Miner,
            other => bail!("lightning.routing_fee: {other:?} (pool or miner)"),
        };
        for peer in &self.peers {
            parse_peer(peer)?;
        }
        Ok(LightningPolicy {
            min: Sat(self.min_payout_sat.max(1)),
            max: Sat(self.max_payout_sat),
            routing_fee,
            fee_base: Sat(self.max_fee_base_sat),
            fee_ppm: self.max_fee_ppm,
            onchain_fallback: self.onchain_fallback,
            wait: Duration::from_secs(self.payment_timeout_secs),
        })
    }

    /// The `quarry-lightning` executable: as configured, else next to this executable, else
    /// on `PATH`.
    ///
    /// # Errors
    /// None found.
    pub fn binary_path(&self) -> Result<PathBuf> {
        if let Some(binary) = &self.binary {
            return Ok(binary.clone());
        }
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("quarry-lightning")));
        if let Some(beside) = beside.filter(|p| p.exists()) {
            return Ok(beside);
        }
        let on_path = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("quarry-lightning"))
                .find(|p| p.exists())
        });
        on_path.ok_or_else(|| {
            anyhow!("quarry-lightning not found (set lightning.binary, or build it: cargo build --release --manifest-path quarry-lightning/Cargo.toml)")
        })
    }
}
