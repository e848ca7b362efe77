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

    /// A new subscriber.
    pub fn subscribe(&self) -> broadcast::Receiver<PoolEvent> {
        self.sender.subscribe()
    }
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    /// Open Stratum connections.
    pub connections: AtomicU64,
    /// Accepted shares.
    pub accepted: AtomicU64,
    /// Sum of accepted difficulty, millionths.
    pub difficulty_micro: AtomicU64,
    /// Rejected shares by reason.
    pub rejected: Mutex<BTreeMap<String, u64>>,
    /// Blocks found (submitted).
    pub blocks_found: AtomicU64,
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
