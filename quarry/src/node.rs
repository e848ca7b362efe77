//! Bitcoin nodes: JSON-RPC, templates (long poll, ZMQ, polling, failover) and block submission.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use quarry_stratum::v1::FoundBlock;
use quarry_stratum::v2::declaration::Verdict;
use quarry_work::hash::to_display_hex;
use quarry_work::template::{GetBlockTemplate, WorkTemplate};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, warn};

use crate::config::NodeConfig;

/// Why an RPC call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// Could not talk to the node.
    #[error("transport: {0}")]
    Transport(String),
    /// The node answered with an error object.
    #[error("rpc error {code}: {message}")]
    Rpc {
        /// JSON-RPC error code.
        code: i64,
        /// Message.
        message: String,
    },
    /// The answer did not decode.
    #[error("bad answer: {0}")]
    Decode(String),
}

enum Auth {
    UserPassword(String, String),
    Cookie(PathBuf),
}

/// A JSON-RPC client for one bitcoind.
pub struct Rpc {
    /// Name for logs (the URL).
    pub name: String,
    url: String,
    auth: Auth,
    http: reqwest::Client,
    next_id: AtomicU64,
}

impl Rpc {
    /// A client for `config`.
    pub fn new(config: &NodeConfig) -> anyhow::Result<Self> {
        let auth = match (&config.cookie_file, &config.user, &config.password) {
            (Some(path), _, _) => Auth::Cookie(path.clone()),
            (None, Some(user), Some(password)) => {
                Auth::UserPassword(user.clone(), password.clone())
            }
            _ => anyhow::bail!("node {}: no credentials", config.url),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building HTTP client")?;
        Ok(Rpc {
            name: config.url.clone(),
            url: config.url.clone(),
            auth,
            http,
            next_id: AtomicU64::new(1),
        })
    }

    /// Calls `method`; `timeout` bounds the whole request (long polls need minutes).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<T, RpcError> {
        let (user, password) = match &self.auth {
            Auth::UserPassword(user, password) => (user.clone(), password.clone()),
            Auth::Cookie(path) => {
                let cookie = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| RpcError::Transport(format!("cookie {}: {e}", path.display())))?;
                let (user, password) = cookie
                    .trim()
                    .split_once(':')
                    .ok_or_else(|| RpcError::Transport("cookie file has no ':'".into()))?;
                (user.to_string(), password.to_string())
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "1.0", "id": id, "method": method, "params": params});
        let response = self
            .http
            .post(&self.url)
            .basic_auth(user, Some(password))
            .timeout(timeout)
            .json(&body)
            .send()
            .await
            .map_err(|e| RpcError::Transport(e.to_string()))?;
        let status = response.status();
        // bitcoind answers RPC errors with HTTP 500 and a JSON body: read the body either way.
        let text = response
            .text()
            .await
            .map_err(|e| RpcError::Transport(e.to_string()))?;
        let value: Value = serde_json::from_str(&text).map_err(|_| {
            RpcError::Transport(format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            ))
        })?;
        if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
            return Err(RpcError::Rpc {
                code: error["code"].as_i64().unwrap_or(0),
                message: error["message"].as_str().unwrap_or("").to_string(),
            });
        }
        // A body without a `result` (a proxy's error page, `null`, `{}`) is no answer: never
        // read as a null result, which for submitblock would mean "accepted".
        let Some(result) = value.get("result") else {
            return Err(RpcError::Transport(format!(
                "HTTP {status}: not a JSON-RPC answer: {}",
                text.chars().take(200).collect::<String>()
            )));
        };
        serde_json::from_value(result.clone()).map_err(|e| RpcError::Decode(e.to_string()))
    }
}

const RPC_TIMEOUT: Duration = Duration::from_secs(30);
const LONGPOLL_TIMEOUT: Duration = Duration::from_secs(300);

/// A `getblocktemplate` request; with `longpoll_id`, a long poll. Bitcoin Core refuses a signet
/// template unless the request names the `signet` rule; other chains ignore rules they do not
/// need.
fn template_request(longpoll_id: Option<&str>) -> serde_json::Value {
    let mut request = json!({"rules": ["segwit", "signet"], "capabilities": ["longpoll"]});
    if let Some(id) = longpoll_id {
        request["longpollid"] = json!(id);
    }
    request
}

/// A long poll in flight, kept across template refreshes.
type LongPoll =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<(usize, GetBlockTemplate)>> + Send>>;

/// Bitcoin Core's JSON-RPC error while it loads its block index and chainstate.
const RPC_IN_WARMUP: i64 = -28;

/// What a node said to a submitted block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// `null`: accepted.
    Accepted,
    /// `"duplicate"`: the node has it already; counts as accepted.
    Duplicate,
    /// `"inconclusive"`: valid but not (yet) on the best chain.
    Inconclusive,
    /// Rejected with a reason (`high-hash`, `bad-txnmrklroot`, …).
    Rejected(String),
    /// The call failed.
    Failed(String),
}

impl SubmitOutcome {
    fn from_result(result: Result<Value, RpcError>) -> Self {
        match result {
            Ok(Value::Null) => SubmitOutcome::Accepted,
            Ok(Value::String(s)) if s == "duplicate" => SubmitOutcome::Duplicate,
            Ok(Value::String(s)) if s == "inconclusive" => SubmitOutcome::Inconclusive,
            Ok(Value::String(s)) => SubmitOutcome::Rejected(s),
            Ok(other) => SubmitOutcome::Rejected(other.to_string()),
            // A node still starting ("Loading block index…") has not looked at the block:
            // the submission failed and is retried, it was not refused.
            Err(
                e @ RpcError::Rpc {
                    code: RPC_IN_WARMUP,
                    ..
                },
            ) => SubmitOutcome::Failed(e.to_string()),
            Err(RpcError::Rpc { message, .. }) => SubmitOutcome::Rejected(message),
            Err(e) => SubmitOutcome::Failed(e.to_string()),
        }
    }
}

/// The nodes, the current template, and block submission.
pub struct Nodes {
    /// Counters shared with `/metrics`.
    pub metrics: Arc<crate::events::Metrics>,
    rpcs: Vec<Arc<Rpc>>,
    zmq: Vec<Option<String>>,
    templates: watch::Sender<Option<Arc<WorkTemplate>>>,
    refresh: Notify,
    next_template_id: AtomicU64,
    blocks_dir: PathBuf,
    refresh_every: Duration,
    poll_every: Duration,
    longpoll: bool,
}

impl Nodes {
    /// Clients for `configs`; nothing is contacted yet.
    pub fn new(
        configs: &[NodeConfig],
        blocks_dir: PathBuf,
        refresh_every: Duration,
        poll_every: Duration,
        longpoll: bool,
    ) -> anyhow::Result<Arc<Self>> {
        let rpcs = configs
            .iter()
            .map(|c| Rpc::new(c).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (templates, _) = watch::channel(None);
        Ok(Arc::new(Nodes {
            metrics: Arc::default(),
            rpcs,
            zmq: configs.iter().map(|c| c.zmq_hashblock.clone()).collect(),
            templates,
            refresh: Notify::new(),
            next_template_id: AtomicU64::new(1),
            blocks_dir,
            refresh_every,
            poll_every: poll_every.max(Duration::from_millis(100)),
            longpoll,
        }))
    }

    /// Follows the current template.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<WorkTemplate>>> {
        self.templates.subscribe()
    }

    /// Asks for a new template now.
    pub fn refresh_now(&self) {
        self.refresh.notify_one();
    }

    /// Runs template fetching until the process ends: the first node that answers wins;
    /// a failing node hands over to the next, and the first is retried on every round.
    pub async fn run(self: Arc<Self>) {
        for endpoint in self.zmq.iter().flatten() {
            tokio::spawn(Arc::clone(&self).follow_zmq(endpoint.clone()));
        }
        tokio::spawn(Arc::clone(&self).poll_best_block());
        let mut failures = 0u32;
        // At most one long poll in flight, kept across refreshes. Core holds an RPC thread for
        // each until the tip (or, a minute on, the mempool) changes, whether or not anyone
        // still listens: one abandoned per refresh piles up on a quiet chain until the node's
        // RPC threads run out and even submitblock waits.
        let mut longpoll: Option<LongPoll> = None;
        loop {
            match self.fetch_from_any().await {
                Some((index, gbt)) => {
                    failures = 0;
                    self.publish(&gbt);
                    if let (None, true, Some(id)) = (&longpoll, self.longpoll, &gbt.longpollid) {
                        longpoll = Some(Box::pin(Arc::clone(&self).long_poll(index, id.clone())));
                    }
                    self.wait_for_change(&mut longpoll).await;
                }
                None => {
                    failures = failures.saturating_add(1);
                    // Miners keep their connections and last job; we just retry.
                    let backoff = Duration::from_millis(250 * u64::from(failures.min(8)));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.refresh.notified() => {}
                    }
                }
            }
        }
    }

    /// Waits for a reason to fetch again: a refresh request (ZMQ, poll, found block) or the
    /// fee-refresh interval. Long poll answers in the meantime are published, and the next
    /// long poll goes out on the id each one brings.
    async fn wait_for_change(self: &Arc<Self>, longpoll: &mut Option<LongPoll>) {
        let refresh_at = tokio::time::sleep(self.refresh_every);
        tokio::pin!(refresh_at);
        loop {
            let polled = async {
                match longpoll.as_mut() {
                    Some(poll) => poll.await,
                    None => std::future::pending().await,
                }
            };
            // `Some(answer)`: the long poll ended; `None`: time to fetch again.
            let polled = tokio::select! {
                answer = polled => Some(answer),
                _ = self.refresh.notified() => None,
                _ = &mut refresh_at => None,
            };
            match polled {
                Some(Some((index, gbt))) => {
                    self.publish(&gbt);
                    *longpoll = gbt
                        .longpollid
                        .map(|id| Box::pin(Arc::clone(self).long_poll(index, id)) as LongPoll);
                }
                // Failed: the next fetch starts another.
                Some(None) => {
                    *longpoll = None;
                    return;
                }
                None => return,
            }
        }
    }

    /// One long poll on node `index`: its answer, or `None` (after a pause) if it failed.
    async fn long_poll(
        self: Arc<Self>,
        index: usize,
        id: String,
    ) -> Option<(usize, GetBlockTemplate)> {
        let rpc = self.rpcs.get(index)?;
        match rpc
            .call::<GetBlockTemplate>(
                "getblocktemplate",
                json!([template_request(Some(&id))]),
                LONGPOLL_TIMEOUT,
            )
            .await
        {
            Ok(gbt) => Some((index, gbt)),
            Err(e) => {
                debug!(node = %rpc.name, error = %e, "long poll ended");
                tokio::time::sleep(Duration::from_millis(500)).await;
                None
            }
        }
    }

    /// A template from the first node that answers.
    async fn fetch_from_any(&self) -> Option<(usize, GetBlockTemplate)> {
        for (index, rpc) in self.rpcs.iter().enumerate() {
            let started = Instant::now();
            match rpc
                .call::<GetBlockTemplate>(
                    "getblocktemplate",
                    json!([template_request(None)]),
                    RPC_TIMEOUT,
                )
                .await
            {
                Ok(gbt) => {
                    self.metrics
                        .rpc_micros
                        .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    self.metrics
                        .node_answered(index, &rpc.name, Ok(started.elapsed()));
                    debug!(node = %rpc.name, ms = started.elapsed().as_millis() as u64, height = gbt.height, "template");
                    return Some((index, gbt));
                }
                Err(e) => {
                    warn!(node = %rpc.name, error = %e, "getblocktemplate failed");
                    self.metrics
                        .node_answered(index, &rpc.name, Err(e.to_string()));
                }
            }
        }
        None
    }

    /// Publishes a template unless it is the same work as the current one.
    fn publish(&self, gbt: &GetBlockTemplate) {
        let id = self.next_template_id.fetch_add(1, Ordering::Relaxed);
        let template = match WorkTemplate::from_gbt(gbt, id) {
            Ok(template) => template,
            Err(e) => {
                // Loud: mining this template could produce invalid blocks.
                error!(error = %e, height = gbt.height, "refusing to mine template");
                return;
            }
        };
        let unchanged = self.templates.borrow().as_ref().is_some_and(|current| {
            current.prev_hash == template.prev_hash
                && current.coinbase_value == template.coinbase_value
                && current.transactions == template.transactions
                && current.bits == template.bits
        });
        if unchanged {
            return;
        }
        let new_tip = self
            .templates
            .borrow()
            .as_ref()
            .is_none_or(|current| current.prev_hash != template.prev_hash);
        if new_tip {
            info!(
                height = template.height,
                prev = %to_display_hex(&template.prev_hash),
                txs = template.tx_count,
                value = template.coinbase_value,
                "new block template"
            );
        } else {
            debug!(
                height = template.height,
                txs = template.tx_count,
                "template refresh"
            );
        }
        self.templates.send_replace(Some(Arc::new(template)));
    }

    /// The fallback: compare the best block hash every `poll_every`.
    async fn poll_best_block(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.poll_every).await;
            let current = self.templates.borrow().as_ref().map(|t| t.prev_hash);
            for rpc in &self.rpcs {
                if let Ok(best) = rpc
                    .call::<String>("getbestblockhash", json!([]), RPC_TIMEOUT)
                    .await
                {
                    if current.map(|c| to_display_hex(&c)) != Some(best) {
                        self.refresh_now();
                    }
                    break;
                }
            }
        }
    }

    async fn follow_zmq(self: Arc<Self>, endpoint: String) {
        use zeromq::{Socket, SocketRecv};
        loop {
            let mut socket = zeromq::SubSocket::new();
            let connected = async {
                socket.connect(&endpoint).await?;
                socket.subscribe("hashblock").await?;
                Ok::<_, zeromq::ZmqError>(())
            }
            .await;
            if let Err(e) = connected {
                warn!(%endpoint, error = %e, "zmq connect failed");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            info!(%endpoint, "following zmq hashblock");
            loop {
                match socket.recv().await {
                    Ok(message) => {
                        if let Some(hash) = message.get(1) {
                            debug!(hash = %hex::encode(hash), "zmq hashblock");
                        }
                        self.refresh_now();
                    }
                    Err(e) => {
                        warn!(%endpoint, error = %e, "zmq receive failed");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Calls `method` on the first node that answers.
    ///
    /// # Errors
    /// The last node's error when none answers.
    pub async fn call_any<T: DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<T, RpcError> {
        let mut last = RpcError::Transport("no nodes".into());
        for rpc in &self.rpcs {
            match rpc.call(method, params.clone(), RPC_TIMEOUT).await {
                Ok(value) => return Ok(value),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Whether `block` would be a valid block on the node's tip but for its proof of work:
    /// Bitcoin Core's `getblocktemplate` proposal mode (BIP 23), which checks the transactions,
    /// the coinbase value, the witness commitment and the merkle root.
    pub async fn check_proposal(&self, block: &[u8]) -> Verdict {
        let params = json!([{"mode": "proposal", "data": hex::encode(block), "rules": ["segwit"]}]);
        match self.call_any::<Value>("getblocktemplate", params).await {
            Ok(Value::Null) => Verdict::Valid,
            Ok(Value::String(reason)) => Verdict::Invalid(reason),
            Ok(other) => Verdict::Invalid(other.to_string()),
            // A block that does not even decode is the miner's fault, not the node's.
            Err(RpcError::Rpc { message, .. }) => Verdict::Invalid(message),
            Err(e) => Verdict::Unavailable(e.to_string()),
        }
    }

    /// Where [`Nodes::save_block`] keeps `block`.
    pub fn saved_block_path(&self, block: &FoundBlock) -> PathBuf {
        let hash = to_display_hex(&block.hash);
        self.blocks_dir.join(format!("{}-{hash}.hex", block.height))
    }

    /// Writes the block hex to `blocks/<height>-<hash>.hex` before anything is sent.
    pub async fn save_block(&self, block: &FoundBlock) -> String {
        let block_hex = hex::encode(&block.block);
        let path = self.saved_block_path(block);
        if let Err(e) = tokio::fs::create_dir_all(&self.blocks_dir).await {
            error!(error = %e, "cannot create blocks dir");
        }
        if let Err(e) = tokio::fs::write(&path, &block_hex).await {
            error!(error = %e, path = %path.display(), "cannot save block before submission");
        }
        block_hex
    }

    /// Submits a found block to every node in parallel, then `preciousblock`, then checks it
    /// with `getblockhash`.
    pub async fn submit_block(
        self: Arc<Self>,
        block: &FoundBlock,
        block_hex: String,
    ) -> Vec<SubmitOutcome> {
        let hash = to_display_hex(&block.hash);
        info!(height = block.height, %hash, worker = %block.worker, "block found, submitting");
        let submissions = self.rpcs.iter().map(|rpc| {
            let rpc = Arc::clone(rpc);
            let block_hex = block_hex.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let outcome = SubmitOutcome::from_result(
                    rpc.call::<Value>("submitblock", json!([block_hex]), RPC_TIMEOUT)
                        .await,
                );
                (rpc, outcome, started.elapsed())
            })
        });
        let mut outcomes = Vec::new();
        let mut accepted_by = None;
        for handle in submissions.collect::<Vec<_>>() {
            let Ok((rpc, outcome, elapsed)) = handle.await else {
                continue;
            };
            match &outcome {
                SubmitOutcome::Accepted | SubmitOutcome::Duplicate => {
                    info!(node = %rpc.name, %hash, ?outcome, ms = elapsed.as_millis() as u64, "block accepted");
                    let _ = rpc
                        .call::<Value>("preciousblock", json!([hash]), RPC_TIMEOUT)
                        .await;
                    accepted_by.get_or_insert(rpc);
                }
                SubmitOutcome::Inconclusive => {
                    warn!(node = %rpc.name, %hash, "block inconclusive (not on the best chain yet)")
                }
                SubmitOutcome::Rejected(reason) => {
                    error!(node = %rpc.name, %hash, %reason, "block rejected")
                }
                SubmitOutcome::Failed(reason) => {
                    error!(node = %rpc.name, %hash, %reason, "block submission failed")
                }
            }
            outcomes.push(outcome);
        }
        self.refresh_now();
        // "Block not found after submission" is a classic complaint: confirm it holds its height.
        if let Some(rpc) = accepted_by {
            match rpc
                .call::<String>("getblockhash", json!([block.height]), RPC_TIMEOUT)
                .await
            {
                Ok(at_height) if at_height == hash => {
                    info!(node = %rpc.name, height = block.height, %hash, "block confirmed at its height")
                }
                Ok(other) => {
                    warn!(node = %rpc.name, height = block.height, %hash, %other, "another block holds this height")
                }
                Err(e) => warn!(error = %e, "getblockhash after submission failed"),
            }
        }
        outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_still_warming_up_has_not_refused_the_block() {
        let warming = Err(RpcError::Rpc {
            code: RPC_IN_WARMUP,
            message: "Loading block index…".into(),
        });
        assert!(matches!(
            SubmitOutcome::from_result(warming),
            SubmitOutcome::Failed(_)
        ));
        let undecodable = Err(RpcError::Rpc {
            code: -22,
            message: "Block decode failed".into(),
        });
        assert_eq!(
            SubmitOutcome::from_result(undecodable),
            SubmitOutcome::Rejected("Block decode failed".into())
        );
        assert_eq!(
            SubmitOutcome::from_result(Ok(Value::String("high-hash".into()))),
            SubmitOutcome::Rejected("high-hash".into())
        );
        assert_eq!(
            SubmitOutcome::from_result(Ok(Value::Null)),
            SubmitOutcome::Accepted
        );
    }
}
