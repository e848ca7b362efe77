//! Merged mining at runtime: one client per aux chain (Namecoin Core's `createauxblock` /
//! `submitauxblock`, or RSK's `mnr_getWork` / `mnr_submitBitcoinBlockPartialMerkle`), the task
//! that folds their work into each Bitcoin template, and the submitter for solved aux blocks.
//!
//! Bitcoin never waits for an aux chain: a chain that does not answer is left out of new work
//! until it answers again, and its solved blocks are submitted on their own task.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use quarry_ledger::{BlockRecord, BlockStatus, Chain, CreditStatus, Rewards, Store};
use quarry_stratum::FoundAux;
use quarry_work::auxpow::{AuxHash, ChainId};
use quarry_work::merged::{AuxBlock, AuxSolution, MergedWork, RskBlock};
use quarry_work::rsk::RskWork;
use quarry_work::template::WorkTemplate;
use quarry_work::Target;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, error, info, warn};

use crate::config::AuxConfig;
use crate::events::{EventBus, Metrics};
use crate::node::{Nodes, Rpc, RpcError};

/// How long one aux RPC may take: aux work is refreshed every second or two.
const AUX_RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Transport errors retried per submission (the node may be restarting).
const SUBMIT_ATTEMPTS: u32 = 3;
/// Solved aux blocks remembered, so that one block is submitted once.
const REMEMBERED_SOLUTIONS: usize = 4096;

/// One aux chain's node.
pub struct AuxClient {
    /// The chain's configuration.
    pub config: AuxConfig,
    rpc: Rpc,
}

impl AuxClient {
    fn new(config: AuxConfig) -> Result<AuxClient> {
        let rpc = Rpc::new(&config.rpc())?;
        Ok(AuxClient { config, rpc })
    }

    /// One RPC to this chain's node.
    pub(crate) async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<T, RpcError> {
        self.rpc.call(method, params, AUX_RPC_TIMEOUT).await
    }

    /// The chain's current work.
    async fn work(&self) -> Result<AuxWork> {
        match self.config.kind.as_str() {
            "rsk" => {
                let result: Value = self.call("mnr_getWork", json!([])).await?;
                let work = RskWork::from_get_work(&result)?;
                Ok(AuxWork::Rsk(RskBlock {
                    chain: self.config.name.clone(),
                    work,
                }))
            }
            _ => {
                let address = self.config.address.clone().unwrap_or_default();
                let result: Value = self.call("createauxblock", json!([address])).await?;
                Ok(AuxWork::AuxPow(self.aux_block(&result)?))
            }
        }
    }

    /// `createauxblock`'s answer, checked: the target comes from `bits`, and the chain id must
    /// be the one configured.
    fn aux_block(&self, result: &Value) -> Result<AuxBlock> {
        let hash: AuxHash = result["hash"]
            .as_str()
            .context("createauxblock: no hash")?
            .parse()
            .context("createauxblock: hash")?;
        let chain_id = result["chainid"]
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .context("createauxblock: no chainid")?;
        if let Some(expected) = self.config.chain_id {
            if expected != chain_id {
                bail!(
                    "createauxblock: the node reports chain id {chain_id}, aux.chain_id says {expected}: wrong node?"
                );
            }
        }
        let bits = result["bits"]
            .as_str()
            .and_then(|b| u32::from_str_radix(b, 16).ok())
            .context("createauxblock: bits")?;
        if Target::from_compact_checked(bits).is_none() {
            bail!("createauxblock: bits {bits:08x} is not a valid target");
        }
        Ok(AuxBlock {
            chain: self.config.name.clone(),
            chain_id: ChainId(chain_id),
            hash,
            bits,
            height: result["height"]
                .as_u64()
                .context("createauxblock: height")?,
            reward: result["coinbasevalue"]
                .as_u64()
                .context("createauxblock: coinbasevalue")?,
        })
    }

    /// Submits a solution, and says whether the node took the block (or already had it).
    async fn submit(&self, solution: &AuxSolution) -> Result<Submitted, RpcError> {
        match solution {
            AuxSolution::AuxPow { block, auxpow } => {
                let params = json!([block.hash.to_string(), hex::encode(auxpow)]);
                let taken = match self.call::<Value>("submitauxblock", params).await? {
                    Value::Bool(accepted) => accepted,
                    // Some forks answer a second solution for a taken block this way.
                    other => other.as_str() == Some("duplicate"),
                };
                Ok(match taken {
                    true => Submitted::Taken(None),
                    false => Submitted::Refused,
                })
            }
            AuxSolution::Rsk { params, .. } => {
                let result: Value = self
                    .call(
                        "mnr_submitBitcoinBlockPartialMerkle",
                        Value::Array(params.iter().map(|p| json!(p)).collect()),
                    )
                    .await?;
                // blockImportedResult is the hex of the name: IMPORTED_BEST, IMPORTED_NOT_BEST,
                // EXIST count as taken.
                let imported = result["blockImportedResult"]
                    .as_str()
                    .and_then(|h| hex::decode(h.trim_start_matches("0x")).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                if !(imported.starts_with("IMPORTED") || imported == "EXIST") {
                    return Ok(Submitted::Refused);
                }
                // The block rskj built: its own hash and height, which the tracker follows.
                let block = result["blockHash"]
                    .as_str()
                    .map(|h| h.trim_start_matches("0x").to_ascii_lowercase())
                    .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .zip(json_u64(&result["blockIncludedHeight"]).filter(|h| *h > 0));
                Ok(Submitted::Taken(block))
            }
        }
    }

    /// How many confirmations a block has on this chain (`-1`: not on its best chain).
    async fn confirmations(&self, hash: &str, height: u64) -> Result<i64, RpcError> {
        if self.config.kind == "rsk" {
            let block: Value = self
                .call(
                    "eth_getBlockByNumber",
                    json!([format!("0x{height:x}"), false]),
                )
                .await?;
            let Some(best) = block["hash"].as_str() else {
                return Ok(0);
            };
            if !best.trim_start_matches("0x").eq_ignore_ascii_case(hash) {
                return Ok(-1);
            }
            let tip: Value = self.call("eth_blockNumber", json!([])).await?;
            let tip = json_u64(&tip).unwrap_or(0);
            return Ok(i64::try_from(tip.saturating_sub(height) + 1).unwrap_or(i64::MAX));
        }
        let header: Value = self.call("getblockheader", json!([hash])).await?;
        Ok(header["confirmations"].as_i64().unwrap_or(0))
    }
}

/// What a node said to a submission.
enum Submitted {
    Refused,
    /// Taken; RSK also names the block it built, and its height.
    Taken(Option<(String, u64)>),
}

/// A number as RSK's JSON-RPC writes them (`"0x1f"`), or a plain one.
fn json_u64(value: &Value) -> Option<u64> {
    match value {
        Value::String(text) => match text.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => text.parse().ok(),
        },
        other => other.as_u64(),
    }
}

/// RSK's `feesPaidToMiner` (1e-18 RBTC) in the ledger's base unit, 1e-8 RBTC (rounded down).
fn rsk_reward(fees_paid: &str) -> u64 {
    fees_paid
        .parse::<u128>()
        .map(|wei| u64::try_from(wei / 10_000_000_000).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

enum AuxWork {
    AuxPow(AuxBlock),
    Rsk(RskBlock),
}

/// What every aux chain offers right now; a chain that is down is absent.
#[derive(Debug, Clone, Default, PartialEq)]
struct AuxState {
    aux: BTreeMap<String, AuxBlock>,
    rsk: Option<RskBlock>,
}

/// The aux chains: pollers, the work they feed into templates, and the submitter.
pub struct AuxChains {
    clients: Vec<Arc<AuxClient>>,
    state: watch::Sender<AuxState>,
    /// Woken on every new Bitcoin tip: aux nodes often move with it.
    refresh: Arc<Notify>,
}

impl AuxChains {
    /// Clients for `chains`.
    ///
    /// # Errors
    /// A chain whose client cannot be built (no credentials).
    pub fn new(chains: &[AuxConfig]) -> Result<Arc<AuxChains>> {
        let clients = chains
            .iter()
            .map(|c| AuxClient::new(c.clone()).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(AuxChains {
            clients,
            state: watch::channel(AuxState::default()).0,
            refresh: Arc::new(Notify::new()),
        }))
    }

    /// Every chain's client.
    pub fn clients(&self) -> &[Arc<AuxClient>] {
        &self.clients
    }

    fn client(&self, chain: &str) -> Option<&Arc<AuxClient>> {
        self.clients.iter().find(|c| c.config.name == chain)
    }

    /// Polls every chain, and folds their work into `templates`: the returned receiver sees
    /// every Bitcoin template, and a new one (same Bitcoin work, not clean) whenever an aux
    /// chain's work changes.
    pub fn run(
        self: &Arc<Self>,
        mut templates: watch::Receiver<Option<Arc<WorkTemplate>>>,
        metrics: Arc<Metrics>,
    ) -> watch::Receiver<Option<Arc<WorkTemplate>>> {
        for client in &self.clients {
            tokio::spawn(poll(
                Arc::clone(client),
                self.state.clone(),
                Arc::clone(&self.refresh),
                Arc::clone(&metrics),
            ));
        }
        let (publish, work) = watch::channel(None);
        let chains = Arc::clone(self);
        tokio::spawn(async move {
            let mut aux = chains.state.subscribe();
            // Ids of published templates: sessions take only newer ones, and an aux update
            // must count as newer.
            let mut next_id = 1u64;
            let mut tip = None;
            loop {
                tokio::select! {
                    changed = templates.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    changed = aux.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
                let Some(template) = templates.borrow_and_update().clone() else {
                    continue;
                };
                if tip != Some(template.prev_hash) {
                    tip = Some(template.prev_hash);
                    chains.refresh.notify_waiters();
                }
                let state = aux.borrow_and_update().clone();
                let mut combined = (*template).clone();
                combined.id = next_id;
                next_id += 1;
                let blocks: Vec<AuxBlock> = state.aux.into_values().collect();
                match MergedWork::new(blocks, state.rsk) {
                    Ok(merged) if !merged.is_empty() => combined.merged = Some(Arc::new(merged)),
                    Ok(_) => {}
                    // Refused at start-up for configured ids; a node reporting another id is
                    // refused by its poller. Mine Bitcoin rather than nothing.
                    Err(e) => {
                        error!(error = %e, "aux chains cannot share a tree: mining Bitcoin alone")
                    }
                }
                let _ = publish.send(Some(Arc::new(combined)));
            }
        });
        work
    }

    /// Submits solved aux blocks as they come, records them, and follows AuxPoW blocks to
    /// maturity.
    pub fn spawn_submitter(self: &Arc<Self>, keeper: AuxKeeper) -> mpsc::Sender<FoundAux> {
        let (tx, mut rx) = mpsc::channel::<FoundAux>(1024);
        let chains = Arc::clone(self);
        let keeper = Arc::new(keeper);
        let submitter = Arc::clone(&keeper);
        let submit_chains = Arc::clone(&chains);
        tokio::spawn(async move {
            let mut seen: HashSet<(String, String)> = HashSet::new();
            let mut order: VecDeque<(String, String)> = VecDeque::new();
            while let Some(found) = rx.recv().await {
                let key = (
                    found.solution.chain().to_string(),
                    solution_hash(&found.solution),
                );
                if !seen.insert(key.clone()) {
                    debug!(chain = %key.0, hash = %key.1, "aux block already submitted");
                    continue;
                }
                order.push_back(key);
                if order.len() > REMEMBERED_SOLUTIONS {
                    if let Some(old) = order.pop_front() {
                        seen.remove(&old);
                    }
                }
                let Some(client) = submit_chains.client(found.solution.chain()).cloned() else {
                    continue;
                };
                let keeper = Arc::clone(&submitter);
                // Each on its own task: a slow aux node delays nothing else.
                tokio::spawn(async move { keeper.handle(&client, found).await });
            }
        });
        tokio::spawn(async move { keeper.follow(&chains).await });
        tx
    }
}

/// The block hash a solution submits, display hex.
fn solution_hash(solution: &AuxSolution) -> String {
    match solution {
        AuxSolution::AuxPow { block, .. } => block.hash.to_string(),
        AuxSolution::Rsk { block_hash, .. } => hex::encode(block_hash),
    }
}

/// Asks one chain for work every `poll_ms` and at every new Bitcoin tip.
async fn poll(
    client: Arc<AuxClient>,
    state: watch::Sender<AuxState>,
    refresh: Arc<Notify>,
    metrics: Arc<Metrics>,
) {
    let name = client.config.name.clone();
    let every = Duration::from_millis(client.config.poll_ms.max(100));
    let mut up = None;
    loop {
        let result = client.work().await;
        match (&result, up) {
            (Ok(_), Some(true)) | (Err(_), Some(false)) => {}
            (Ok(_), _) => info!(chain = %name, "aux chain answering: merge-mining it"),
            (Err(e), _) => {
                warn!(chain = %name, error = %format!("{e:#}"), "aux chain not answering: left out of new work until it does")
            }
        }
        up = Some(result.is_ok());
        metrics.aux_up(&name, result.is_ok());
        state.send_if_modified(|state| {
            let before = state.clone();
            match &result {
                Ok(AuxWork::AuxPow(block)) => {
                    state.aux.insert(name.clone(), block.clone());
                }
                Ok(AuxWork::Rsk(block)) => state.rsk = Some(block.clone()),
                Err(_) => {
                    state.aux.remove(&name);
                    if state.rsk.as_ref().is_some_and(|r| r.chain == name) {
                        state.rsk = None;
                    }
                }
            }
            // RSK's `notify` flips between polls of the same work: compare the work itself.
            if let (Some(a), Some(b)) = (&mut state.rsk, &before.rsk) {
                if a.work.block_hash == b.work.block_hash {
                    a.work.notify = b.work.notify;
                }
            }
            *state != before
        });
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = refresh.notified() => {}
        }
    }
}

/// Records, submits and credits solved aux blocks.
pub struct AuxKeeper {
    /// The ledger.
    pub store: Store,
    /// Scheme, fees and each aux chain's parent.
    pub rewards: Rewards,
    /// Bitcoin's coinbase maturity: an aux chain's, unless its `[[aux]] maturity` says.
    pub maturity: u64,
    /// Where submissions are written before they are sent.
    pub dir: PathBuf,
    /// This instance.
    pub instance: String,
    /// `MergeMiningReward` events.
    pub events: Arc<EventBus>,
    /// Aux block counters.
    pub metrics: Arc<Metrics>,
}

impl AuxKeeper {
    async fn handle(&self, client: &AuxClient, found: FoundAux) {
        let chain = found.solution.chain().to_string();
        let hash = solution_hash(&found.solution);
        let (height, reward, difficulty) = match &found.solution {
            AuxSolution::AuxPow { block, .. } => (
                block.height,
                block.reward,
                Target::from_compact(block.bits).difficulty(),
            ),
            // mnr_getWork gives no height (the node names it on import); the reward recorded
            // is the fees it offered the miner, in 1e-8 RBTC.
            AuxSolution::Rsk { fees_paid, .. } => (0, rsk_reward(fees_paid), 0.0),
        };
        self.save(&chain, &hash, &found, None).await;
        let Ok(key) = Chain::new(&chain) else {
            return;
        };
        let record = BlockRecord {
            hash: hash.clone(),
            height: i64::try_from(height).unwrap_or(i64::MAX),
            status: BlockStatus::Submitted,
            reward: i64::try_from(reward).unwrap_or(i64::MAX),
            worker: found.worker.clone(),
            address: found.address.clone(),
            found_ms: i64::try_from(found.time_ms).unwrap_or(i64::MAX),
            network_difficulty: difficulty,
            instance: self.instance.clone(),
            reject_reason: None,
            chain: key,
        };
        if let Err(e) = self.store.insert_block(&record).await {
            error!(%chain, %hash, error = %e, "could not record the aux block in the ledger");
        }
        let mut outcome = Err(RpcError::Transport("not sent".into()));
        for attempt in 1..=SUBMIT_ATTEMPTS {
            outcome = client.submit(&found.solution).await;
            match &outcome {
                Err(RpcError::Transport(e)) if attempt < SUBMIT_ATTEMPTS => {
                    warn!(%chain, %hash, attempt, error = %e, "aux submission failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                _ => break,
            }
        }
        let accepted = matches!(outcome, Ok(Submitted::Taken(_)));
        match &outcome {
            Ok(Submitted::Taken(_)) => {
                info!(%chain, %hash, height, worker = %found.worker, "aux block accepted")
            }
            Ok(Submitted::Refused) => warn!(%chain, %hash, "aux block refused by its node"),
            Err(e) => error!(%chain, %hash, error = %e, "aux block not submitted"),
        }
        let answer = match &outcome {
            Ok(Submitted::Taken(None)) => "accepted".to_string(),
            Ok(Submitted::Taken(Some((block, height)))) => {
                format!("accepted as {block} at height {height}")
            }
            Ok(Submitted::Refused) => "refused".to_string(),
            Err(e) => format!("error: {e}"),
        };
        self.save(&chain, &hash, &found, Some(answer)).await;
        let mut record = record;
        if let Ok(Submitted::Taken(Some((real_hash, real_height)))) = &outcome {
            let real_height = i64::try_from(*real_height).unwrap_or(i64::MAX);
            match self
                .store
                .identify_block(&record.chain, &hash, real_hash, real_height)
                .await
            {
                Ok(_) => {
                    record.hash.clone_from(real_hash);
                    record.height = real_height;
                }
                Err(e) => {
                    error!(%chain, %hash, error = %e, "could not record the RSK block's hash")
                }
            }
        }
        let hash = record.hash.clone();
        self.metrics.aux_block(&chain, accepted);
        // The commons' share of this block, announced with the pool's contributor id.
        let mut commons_fee = Value::Null;
        if accepted {
            match self.rewards.credits_for(&self.store, &record).await {
                Ok(credits) => {
                    if let (Some(fee), Some(policy)) = (
                        credits.iter().find(|c| c.kind == "merge_mining_fee"),
                        &self.rewards.merge_mining_fee,
                    ) {
                        commons_fee = json!({"address": fee.address, "msat": fee.amount_msat,
                                             "contributor_id": policy.contributor_id});
                    }
                    if let Err(e) = self
                        .store
                        .credit_block(&hash, &credits, record.found_ms)
                        .await
                    {
                        error!(%chain, %hash, error = %e, "could not credit the aux block");
                    }
                }
                Err(e) => {
                    error!(%chain, %hash, error = %e, "could not compute the aux block's credits")
                }
            }
        } else {
            let reason = match &outcome {
                Ok(_) => "refused".to_string(),
                Err(e) => e.to_string(),
            };
            let _ = self.store.reject_block(&hash, &reason).await;
        }
        self.events.publish(
            "MergeMiningReward",
            json!({"chain": chain, "hash": hash, "height": height, "reward": reward,
                   "worker": found.worker, "accepted": accepted,
                   "parent_height": found.parent_height, "merge_mining_fee": commons_fee}),
        );
    }

    /// Written before it is sent (a crash mid-submission loses no proof), and again with the
    /// node's answer.
    async fn save(&self, chain: &str, hash: &str, found: &FoundAux, answer: Option<String>) {
        let mut body = match &found.solution {
            AuxSolution::AuxPow { block, auxpow } => json!({
                "method": "submitauxblock", "params": [block.hash.to_string(), hex::encode(auxpow)]}),
            AuxSolution::Rsk { params, .. } => json!({
                "method": "mnr_submitBitcoinBlockPartialMerkle", "params": params}),
        };
        if let Some(answer) = answer {
            body["answer"] = json!(answer);
        }
        let path = self.dir.join(format!("{chain}-{hash}.json"));
        let write = async {
            tokio::fs::create_dir_all(&self.dir).await?;
            tokio::fs::write(&path, body.to_string()).await
        };
        if let Err(e) = write.await {
            warn!(path = %path.display(), error = %e, "could not save the aux submission");
        }
    }

    /// Follows pending aux blocks on their own chain: mature after that chain's maturity in
    /// confirmations, orphaned when their node no longer has them on its best chain.
    async fn follow(&self, chains: &AuxChains) {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let Ok(pending) = self.store.blocks(Some(BlockStatus::Pending), 1000).await else {
                continue;
            };
            for block in pending {
                let Some(client) = chains.client(block.chain.as_str()) else {
                    continue;
                };
                let height = u64::try_from(block.height).unwrap_or(0);
                if client.config.kind == "rsk" && height == 0 {
                    // rskj never named the block it built: nothing to follow it by.
                    continue;
                }
                let Ok(confirmations) = client.confirmations(&block.hash, height).await else {
                    continue;
                };
                let maturity = client.config.maturity(self.maturity);
                let next = match confirmations {
                    c if c < 0 => Some((BlockStatus::Orphaned, CreditStatus::Reversed)),
                    c if c as u64 >= maturity => {
                        Some((BlockStatus::Confirmed, CreditStatus::Mature))
                    }
                    _ => None,
                };
                if let Some((status, credits)) = next {
                    let moved = self
                        .store
                        .transition_block(
                            &block.hash,
                            BlockStatus::Pending,
                            status,
                            Some((CreditStatus::Immature, credits)),
                        )
                        .await;
                    if matches!(moved, Ok(true)) {
                        info!(chain = %block.chain, hash = %block.hash, status = status.as_str(), "aux block settled");
                    }
                }
            }
        }
    }
}

/// The template stream sessions follow: Bitcoin's own, or Bitcoin's with the aux chains folded
/// in.
pub fn work_stream(
    nodes: &Nodes,
    aux: Option<&Arc<AuxChains>>,
    metrics: &Arc<Metrics>,
) -> watch::Receiver<Option<Arc<WorkTemplate>>> {
    match aux {
        Some(aux) => aux.run(nodes.subscribe(), Arc::clone(metrics)),
        None => nodes.subscribe(),
    }
}

impl Metrics {
    /// Notes whether an aux chain answers.
    pub fn aux_up(&self, chain: &str, up: bool) {
        let mut aux = self.aux.lock().unwrap_or_else(|p| p.into_inner());
        aux.entry(chain.to_string()).or_default().up = up;
    }

    /// Counts a submitted aux block.
    pub fn aux_block(&self, chain: &str, accepted: bool) {
        let mut aux = self.aux.lock().unwrap_or_else(|p| p.into_inner());
        let entry = aux.entry(chain.to_string()).or_default();
        entry.submitted += 1;
        entry.accepted += u64::from(accepted);
    }
}

/// One aux chain's counters.
#[derive(Debug, Clone, Default)]
pub struct AuxCounters {
    /// Whether its node answered the last poll.
    pub up: bool,
    /// Blocks submitted.
    pub submitted: u64,
    /// Blocks its node took.
    pub accepted: u64,
}

/// For /metrics: `aux_blocks_total{chain,accepted}` and `aux_chain_up{chain}`.
pub fn render_metrics(metrics: &Metrics, out: &mut String) {
    use std::fmt::Write as _;
    let aux = metrics.aux.lock().unwrap_or_else(|p| p.into_inner());
    if aux.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP quarry_aux_chain_up Whether a merge-mined chain's node answers.\n# TYPE quarry_aux_chain_up gauge");
    for (chain, c) in aux.iter() {
        let _ = writeln!(
            out,
            "quarry_aux_chain_up{{chain=\"{chain}\"}} {}",
            u8::from(c.up)
        );
    }
    let _ = writeln!(out, "# HELP quarry_aux_blocks_total Merge-mined blocks submitted, by chain.\n# TYPE quarry_aux_blocks_total counter");
    for (chain, c) in aux.iter() {
        let _ = writeln!(
            out,
            "quarry_aux_blocks_total{{chain=\"{chain}\",result=\"accepted\"}} {}\nquarry_aux_blocks_total{{chain=\"{chain}\",result=\"refused\"}} {}",
            c.accepted,
            c.submitted - c.accepted
        );
    }
}
