//! Pool events for the SSE stream (`/api/events`) and the counters behind `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

/// One event, named as the event stream names it.
#[derive(Debug, Clone, Serialize)]
pub struct PoolEvent {
    /// `MiningJobCreated`, `ShareSubmitted`, `BlockFound`, `BlockConfirmed`, `BlockOrphaned`,
    /// `PayoutSent`, `MinerConnected` or `MinerDisconnected`.
    pub name: &'static str,
    /// Event data.
    pub data: Value,
}

/// Events go to every SSE subscriber; a slow subscriber loses old events, never blocks the pool.
pub struct EventBus {
    sender: broadcast::Sender<PoolEvent>,
}

impl Default for EventBus {
    fn default() -> Self {
        let (sender, _) = broadcast::channel(4096);
        EventBus { sender }
    }
}

impl EventBus {
    /// Publishes an event (dropped when nobody listens).
    pub fn publish(&self, name: &'static str, data: Value) {
        let _ = self.sender.send(PoolEvent { name, data });
    }

    /// As [`EventBus::publish`], building the payload only while someone listens: for the
    /// events of every share, which would otherwise cost a JSON map each.
    pub fn publish_with(&self, name: &'static str, data: impl FnOnce() -> Value) {
        if self.sender.receiver_count() > 0 {
            self.publish(name, data());
        }
    }

    /// A new subscriber.
    pub fn subscribe(&self) -> broadcast::Receiver<PoolEvent> {
        self.sender.subscribe()
    }
}

/// An `f64` that many threads add to.
#[derive(Default)]
pub struct AtomicF64(AtomicU64);

impl AtomicF64 {
    /// Adds `value`.
    pub fn add(&self, value: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// The sum.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    /// Open Stratum connections.
    pub connections: AtomicU64,
    /// Accepted shares.
    pub accepted: AtomicU64,
    /// Sum of accepted difficulty. A float: regtest shares are worth 5e-10 each.
    pub difficulty: AtomicF64,
    /// Rejected shares by reason.
    pub rejected: Mutex<BTreeMap<String, u64>>,
    /// Blocks found (submitted).
    pub blocks_found: AtomicU64,
    /// Height of the last block found (Kaspa: DAA score), and when (Unix ms; 0: none yet).
    pub last_block_height: AtomicU64,
    /// See `last_block_height`.
    pub last_block_ms: AtomicU64,
    /// Blocks accepted by a node.
    pub blocks_accepted: AtomicU64,
    /// When the current template arrived, Unix ms.
    pub template_ms: AtomicU64,
    /// Latest getblocktemplate round trip, microseconds.
    pub rpc_micros: AtomicU64,
    /// Height of the current template.
    pub height: AtomicU64,
    /// Network difficulty of the current template, as f64 bits.
    pub network_difficulty_bits: AtomicU64,
    /// Merge-mined chains, by name.
    pub aux: Mutex<BTreeMap<String, crate::aux::AuxCounters>>,
    /// The nodes work comes from, in order of preference (for the dashboard and /api/network).
    pub nodes: Mutex<Vec<NodeState>>,
}

/// How a node answered the last time it was asked.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeState {
    /// Its name in logs (the RPC URL's host and port).
    pub name: String,
    /// Whether it answered.
    pub up: bool,
    /// Whether the current template is its.
    pub active: bool,
    /// When it last answered, Unix ms (0: never).
    pub last_ok_ms: u64,
    /// That answer's round trip, milliseconds.
    pub rpc_ms: f64,
    /// Its last error, while down.
    pub error: Option<String>,
}

impl Metrics {
    /// Records a node's answer (`Ok(round trip)`) or failure; an answer makes it the source.
    pub fn node_answered(
        &self,
        index: usize,
        name: &str,
        result: Result<std::time::Duration, String>,
    ) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if nodes.len() <= index {
            nodes.resize_with(index + 1, NodeState::default);
        }
        let up = result.is_ok();
        if up {
            for node in nodes.iter_mut() {
                node.active = false;
            }
        }
        let node = &mut nodes[index];
        node.name = name.to_string();
        node.up = up;
        node.active = up;
        match result {
            Ok(rtt) => {
                node.last_ok_ms = crate::driver::unix_ms();
                node.rpc_ms = rtt.as_secs_f64() * 1000.0;
                node.error = None;
            }
            Err(e) => node.error = Some(e),
        }
    }
}

impl Metrics {
    /// Counts a rejected share.
    pub fn reject(&self, reason: &str) {
        let mut rejected = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        *rejected.entry(reason.to_string()).or_default() += 1;
    }

    /// Rejected shares in total.
    pub fn rejected_total(&self) -> u64 {
        self.rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    /// Network difficulty of the current template.
    pub fn network_difficulty(&self) -> f64 {
        f64::from_bits(self.network_difficulty_bits.load(Ordering::Relaxed))
    }
}
