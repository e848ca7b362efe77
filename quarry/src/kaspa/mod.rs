//! Kaspa in `quarry serve`: templates from kaspad, the Kaspa stratum port on the one driver,
//! found blocks submitted and followed until the DAG colours them. The protocol itself is in
//! the `quarry-kaspa` crate; this is the thin tokio layer around it.

pub mod blocks;
pub mod miner;
pub mod node;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kaspa_addresses::Address;
use kaspa_consensus_core::hashing::header::hash_override_nonce_time;
use kaspa_consensus_core::header::Header;
use kaspa_wrpc_client::prelude::RpcRawBlock;
use quarry_kaspa::pool::KaspaPool;
use quarry_kaspa::work::{KaspaJob, KaspaTemplate, KaspaWork};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::events::{EventBus, Metrics};
use node::KaspaNodes;

/// Templates kept for submission, by the pool's id: a block found on any job a miner may
/// still answer is completed from here.
pub struct Templates {
    kept: Mutex<VecDeque<(u64, Arc<RpcRawBlock>)>>,
    /// Kept per address mined for.
    per_address: usize,
}

impl Templates {
    /// Keeps the newest `per_address` for each address mined for.
    pub fn new(per_address: usize) -> Templates {
        Templates {
            kept: Mutex::new(VecDeque::new()),
            per_address: per_address.max(1),
        }
    }

    fn insert(&self, id: u64, block: RpcRawBlock, addresses: usize) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        while kept.len() >= self.per_address * addresses.max(1) {
            kept.pop_front();
        }
        kept.push_back((id, Arc::new(block)));
    }

    /// The template with pool id `id`, while kept.
    pub fn get(&self, id: u64) -> Option<Arc<RpcRawBlock>> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter()
            .rev()
            .find(|(kept_id, _)| *kept_id == id)
            .map(|(_, block)| Arc::clone(block))
    }
}

/// Who a template's coinbase pays.
#[derive(Debug, Clone)]
pub enum PayTo {
    /// Pool mode: the pool's address, one template for every miner.
    Pool(Address),
    /// Solo mode: each miner's own address, a template for each.
    Solo,
}

/// What the template follower needs.
pub struct Follower {
    /// The nodes.
    pub nodes: Arc<KaspaNodes>,
    /// Who the coinbase pays.
    pub pay: PayTo,
    /// Coinbase payload after kaspad's version.
    pub extra_data: Vec<u8>,
    /// How often to ask when no notification comes.
    pub poll: Duration,
    /// The duplicate rule's generations follow the templates; solo mode's addresses.
    pub pool: Arc<KaspaPool>,
    /// Where templates are kept for submission.
    pub templates: Arc<Templates>,
    /// Template metrics.
    pub metrics: Arc<Metrics>,
    /// `MiningJobCreated`.
    pub events: Arc<EventBus>,
}

/// The follower's state between rounds.
#[derive(Default)]
struct Current {
    /// Template ids handed out.
    id: u64,
    /// Rounds that brought new work: the duplicate rule's generations count these, since each
    /// gives every connection at most one new job.
    round: u64,
    /// Per address: the pre-PoW hash of its newest template, and its job.
    jobs: std::collections::HashMap<String, ([u8; 32], Arc<KaspaJob>)>,
    failing: bool,
}

impl Follower {
    /// Publishes new work whenever a template changes: on each `NewBlockTemplate`
    /// notification, every `poll` in case none comes, and (solo mode) as soon as a new address
    /// is mined for. A template differing only in its timestamp is not new.
    pub fn spawn(self) -> watch::Receiver<Option<Arc<KaspaWork>>> {
        let (publish, work) = watch::channel(None);
        let wake = Arc::new(Notify::new());
        self.nodes.on_new_templates(Arc::clone(&wake));
        tokio::spawn(async move {
            let mut current = Current::default();
            loop {
                let payees_seen = self.pool.payees_version();
                if let Some(work) = self.round(&mut current).await {
                    if publish.send(Some(work)).is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(self.poll) => {}
                    _ = new_payee(&self.pool, payees_seen), if matches!(self.pay, PayTo::Solo) => {}
                }
            }
        });
        work
    }

    /// One round: a template for each address; the new work when any changed.
    async fn round(&self, current: &mut Current) -> Option<Arc<KaspaWork>> {
        let addresses: Vec<Address> = match &self.pay {
            PayTo::Pool(address) => vec![address.clone()],
            PayTo::Solo => self
                .pool
                .payees()
                .iter()
                .filter_map(|a| Address::try_from(a.as_str()).ok())
                .collect(),
        };
        let mut changed = false;
        for address in &addresses {
            let started = std::time::Instant::now();
            let (block, synced) = match self.nodes.template(address, &self.extra_data).await {
                Ok(template) => template,
                Err(e) => {
                    if !current.failing {
                        warn!(error = %e, "no kaspa template; retrying");
                    }
                    current.failing = true;
                    continue;
                }
            };
            current.failing = false;
            self.metrics
                .rpc_micros
                .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            let header = match Header::try_from(&block.header) {
                Ok(header) => header,
                Err(e) => {
                    warn!(error = %e, "kaspa template with an unusable header");
                    continue;
                }
            };
            let pre_pow = hash_override_nonce_time(&header, 0, 0).as_bytes();
            let key = address.to_string();
            if current.jobs.get(&key).map(|(hash, _)| *hash) == Some(pre_pow) {
                continue;
            }
            current.id += 1;
            let job = self.publish(current.id, header, block, synced, addresses.len());
            current.jobs.insert(key, (pre_pow, job));
            changed = true;
        }
        if let PayTo::Solo = self.pay {
            // Addresses nobody mines for any more get no work.
            let before = current.jobs.len();
            let live: Vec<String> = addresses.iter().map(ToString::to_string).collect();
            current.jobs.retain(|address, _| live.contains(address));
            changed |= current.jobs.len() != before;
        }
        if !changed {
            return None;
        }
        current.round += 1;
        self.pool.on_template(current.round);
        let work = match &self.pay {
            PayTo::Pool(address) => KaspaWork {
                pool: current
                    .jobs
                    .get(&address.to_string())
                    .map(|(_, job)| Arc::clone(job)),
                solo: Default::default(),
            },
            PayTo::Solo => KaspaWork {
                pool: None,
                solo: current
                    .jobs
                    .iter()
                    .map(|(address, (_, job))| (address.clone(), Arc::clone(job)))
                    .collect(),
            },
        };
        Some(Arc::new(work))
    }

    fn publish(
        &self,
        id: u64,
        header: Header,
        block: RpcRawBlock,
        synced: bool,
        addresses: usize,
    ) -> Arc<KaspaJob> {
        // What this template's coinbase pays out: the pool's expected reward per block (it
        // pays the blocks it merges, whose subsidy is this block's to within a DAA step).
        let reward = block
            .transactions
            .first()
            .map(|coinbase| coinbase.outputs.iter().map(|o| o.value).sum())
            .unwrap_or(0);
        let daa_score = header.daa_score;
        let job = Arc::new(KaspaJob::new(Arc::new(KaspaTemplate {
            id,
            header,
            reward,
        })));
        self.templates.insert(id, block, addresses);
        let now = crate::driver::unix_ms();
        self.metrics.template_ms.store(now, Ordering::Relaxed);
        self.metrics.height.store(daa_score, Ordering::Relaxed);
        self.metrics
            .network_difficulty_bits
            .store(job.network_difficulty().to_bits(), Ordering::Relaxed);
        self.events.publish(
            "MiningJobCreated",
            serde_json::json!({"chain": quarry_kaspa::KASPA, "template_id": id,
                "height": daa_score, "reward": reward, "synced": synced}),
        );
        if id == 1 {
            info!(daa_score, synced, "first kaspa template");
        }
        job
    }
}

/// Solo mode: returns once an address was added since `seen`.
async fn new_payee(pool: &KaspaPool, seen: u64) {
    while pool.payees_version() == seen {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What `quarry serve` shares with the Kaspa port.
pub struct Shared {
    /// The ledger.
    pub store: quarry_ledger::Store,
    /// The share log.
    pub share_log: quarry_ledger::ShareLog,
    /// This instance's name.
    pub instance: String,
    /// `data_dir`.
    pub data_dir: std::path::PathBuf,
    /// The event stream.
    pub events: Arc<EventBus>,
    /// The ban book.
    pub bans: Arc<crate::server::Bans>,
    /// Hashrate history, shared with the Bitcoin port: one ledger keyed by chain.
    pub history: Arc<std::sync::Mutex<quarry_ledger::HistoryBook>>,
}

/// Connects to kaspad, follows its templates, binds the Kaspa port: the server to run on it
/// (counting into `metrics`).
pub async fn start(
    toml: &crate::config::KaspaToml,
    resolved: crate::config::KaspaResolved,
    metrics: Arc<Metrics>,
    shared: Shared,
) -> anyhow::Result<(Arc<crate::server::Server>, tokio::net::TcpListener)> {
    use anyhow::Context;
    let nodes = KaspaNodes::connect(&toml.nodes, Arc::clone(&metrics)).await?;
    let session = Arc::new(resolved.session);
    let pool = Arc::new(KaspaPool::new(session.jobs_kept));
    // Twice the jobs a connection keeps: any share a miner may still send finds its template.
    let templates = Arc::new(Templates::new(session.jobs_kept * 2));
    let work = Follower {
        nodes: Arc::clone(&nodes),
        pay: resolved.pay.clone(),
        extra_data: toml.extra_data.as_bytes().to_vec(),
        poll: Duration::from_millis(toml.poll_ms),
        pool: Arc::clone(&pool),
        templates: Arc::clone(&templates),
        metrics: Arc::clone(&metrics),
        events: Arc::clone(&shared.events),
    }
    .spawn();
    let blocks = blocks::KaspaKeeper {
        nodes,
        templates,
        store: shared.store.clone(),
        rewards: resolved.rewards,
        maturity: toml.maturity,
        instance: shared.instance.clone(),
        dir: shared.data_dir.join("kaspa-blocks"),
        events: Arc::clone(&shared.events),
        metrics: Arc::clone(&metrics),
    }
    .spawn();
    let server = crate::server::Server::new(
        crate::server::Protocol::Kaspa {
            config: session,
            pool,
            work,
        },
        crate::server::Outputs {
            ledger: shared.share_log,
            instance: shared.instance,
            blocks,
            aux_blocks: None,
            metrics: Arc::clone(&metrics),
            events: shared.events,
            history: shared.history,
            destinations: None,
            nodes: None,
        },
        crate::server::Limits {
            max_connections: toml.max_connections,
            max_per_ip: toml.max_connections_per_ip,
            write_timeout: Duration::from_secs(10),
            trusted_proxies: Default::default(),
        },
        shared.bans,
    );
    let listener = tokio::net::TcpListener::bind(toml.listen)
        .await
        .with_context(|| format!("binding kaspa.listen {}", toml.listen))?;
    info!(listen = %listener.local_addr()?, network = %toml.network, pay = ?resolved.pay, "kaspa stratum listening");
    Ok((server, listener))
}
