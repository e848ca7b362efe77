//! The stratum listener and the loop that moves bytes between a socket and its session: a V1
//! [`Session`] or an SV2 [`PoolSession`], told apart by the first bytes on the one port. No
//! protocol decisions are made here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quarry_ledger::{ShareLog, ShareRecord};
use quarry_stratum::detect::{detect, Detected};
use quarry_stratum::v1::{AcceptedShare, Event, Session, SessionConfig};
use quarry_stratum::v2::{PoolSession, Sv2Config};
use quarry_stratum::{Pool, SharedPool};
use quarry_work::share::ShareReject;
use quarry_work::template::WorkTemplate;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, error, info, warn};

use crate::events::{EventBus, Metrics};
use crate::node::Nodes;

/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 8 * 1024;

/// Unix time in milliseconds: the one clock read per event.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (single inserts).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where a connection's results go: the share log, block submission, metrics and events.
pub struct Outputs {
    /// The durable share log; shares are acknowledged only once it has them.
    pub ledger: ShareLog,
    /// Name of this instance in the share log.
    pub instance: String,
    /// Found blocks go here, to be submitted at once.
    pub blocks: tokio::sync::mpsc::Sender<quarry_stratum::v1::FoundBlock>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The event stream.
    pub events: Arc<EventBus>,
}

/// Listener limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections in total.
    pub max_connections: usize,
    /// Connections from one IP.
    pub max_per_ip: usize,
    /// How long a write may block.
    pub write_timeout: Duration,
}

/// Everything a connection task needs.
pub struct Server {
    /// Session settings.
    pub session_config: Arc<SessionConfig>,
    /// SV2 settings; SV2 clients are turned away when unset.
    pub sv2: Option<Arc<Sv2Config>>,
    /// Shared pool state.
    pub pool: Arc<SharedPool>,
    /// Nodes (templates).
    pub nodes: Arc<Nodes>,
    /// Share log, blocks, metrics, events.
    pub out: Outputs,
    /// Limits.
    pub limits: Limits,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    slots: Arc<Semaphore>,
}

impl Server {
    /// A server; call [`Server::run`].
    pub fn new(
        session_config: SessionConfig,
        sv2: Option<Sv2Config>,
        pool: Arc<SharedPool>,
        nodes: Arc<Nodes>,
        out: Outputs,
        limits: Limits,
    ) -> Arc<Self> {
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        Arc::new(Server {
            out,
            session_config: Arc::new(session_config),
            sv2: sv2.map(Arc::new),
            pool,
            nodes,
            limits,
            per_ip: Mutex::new(HashMap::new()),
            slots,
        })
    }

    /// Accepts connections until `shutdown` fires.
    pub async fn run(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
                debug!(%peer, "connection limit reached");
                continue;
            };
            if !self.admit_ip(peer.ip()) {
                debug!(%peer, "per-IP connection limit reached");
                continue;
            }
            let server = Arc::clone(&self);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                server
                    .out
                    .metrics
                    .connections
                    .fetch_add(1, Ordering::Relaxed);
                server.drive(stream, peer, shutdown).await;
                server
                    .out
                    .metrics
                    .connections
                    .fetch_sub(1, Ordering::Relaxed);
                server.release_ip(peer.ip());
                drop(permit);
            });
        }
    }

    fn admit_ip(&self, ip: IpAddr) -> bool {
        let mut per_ip = lock(&self.per_ip);
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.limits.max_per_ip {
            return false;
        }
        *count += 1;
        true
    }

    fn release_ip(&self, ip: IpAddr) {
        let mut per_ip = lock(&self.per_ip);
        if let Some(count) = per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    /// Reads until the first bytes tell the protocol apart.
    async fn sniff(&self, stream: &mut TcpStream) -> Option<(Detected, Vec<u8>)> {
        let mut buf = vec![0u8; 512];
        let mut first = Vec::new();
        // One deadline for the whole sniff, so a client dripping bytes cannot stretch it.
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.session_config.auth_timeout_ms.max(1000));
        loop {
            match detect(&first) {
                Detected::NeedMore => {}
                decided => return Some((decided, first)),
            }
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => first.extend_from_slice(&buf[..n]),
                _ => return None,
            }
        }
    }

    /// One connection: socket ↔ session, until either side ends.
    async fn drive(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let _ = stream.set_nodelay(true);
        let pool: &SharedPool = &self.pool;
        let Some((protocol, first)) = Box::pin(self.sniff(&mut stream)).await else {
            debug!(%peer, "closed before speaking");
            return;
        };
        let mut conn = match (protocol, &self.sv2) {
            (Detected::V2, Some(sv2)) => Conn::V2(Box::new(PoolSession::new(
                Arc::clone(&self.session_config),
                Arc::clone(sv2),
                now_ms(),
            ))),
            (Detected::V2, None) => {
                debug!(%peer, "SV2 client turned away: no [sv2] authority key configured");
                return;
            }
            _ => Conn::V1(Session::new(Arc::clone(&self.session_config), now_ms())),
        };
        debug!(%peer, protocol = conn.name(), "connected");
        let mut templates = self.nodes.subscribe();
        if let Some(template) = templates.borrow_and_update().clone() {
            conn.handle_template(template, now_ms(), pool);
        }
        conn.handle_bytes(&first, now_ms(), pool);
        drop(first);
        loop {
            // Shares first. The session holds each accepted share's answer until it hears here
            // that the share log has the share durably; a share the log cannot take closes
            // the connection unanswered.
            let mut receipts = Vec::new();
            while let Some(event) = conn.poll_event() {
                if let Event::ShareAccepted(share) = &event {
                    // Boxed only when the queue is full: the await's state would otherwise sit
                    // in every connection's task, idle or not.
                    let queued = match self.out.ledger.try_enqueue(self.share_record(share)) {
                        Ok(queued) => queued,
                        Err(record) => Box::pin(self.out.ledger.enqueue(record)).await,
                    };
                    match queued {
                        Ok(receipt) => receipts.push(Some(receipt)),
                        Err(e) => {
                            error!(%peer, error = %e, "share log unavailable: dropping the connection unacknowledged");
                            receipts.push(None);
                        }
                    }
                }
                self.on_event(event, peer);
            }
            for receipt in receipts {
                let durable = match receipt {
                    Some(receipt) => match receipt.durable().await {
                        Ok(()) => true,
                        Err(e) => {
                            error!(%peer, error = %e, "share not durable: dropping the connection unacknowledged");
                            false
                        }
                    },
                    None => false,
                };
                conn.share_recorded(durable);
            }
            // Allocated only when there is something to send: an idle connection keeps no buffer.
            let mut out = Vec::new();
            conn.transmit(&mut out);
            // Most writes fit the socket buffer at once; only the rest waits, boxed like above.
            let written = match out.is_empty() {
                true => 0,
                false => match stream.try_write(&out) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                    Err(_) => break,
                },
            };
            if written < out.len() {
                let write = stream.write_all(&out[written..]);
                match Box::pin(tokio::time::timeout(self.limits.write_timeout, write)).await {
                    Ok(Ok(())) => {}
                    _ => {
                        debug!(%peer, "write failed or timed out");
                        break;
                    }
                }
            }
            if let Some(reason) = conn.close_reason() {
                debug!(%peer, %reason, "closing");
                break;
            }
            let deadline = conn.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => {
                        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Wait for readability, then read into the stack: no read buffer is held per
                // connection while it waits, which is most of an idle connection's life.
                // poll_fn rather than readable(): the waker sits in the socket's own slot, so
                // the pending future is a pointer instead of a 150-byte waiter.
                ready = std::future::poll_fn(|cx| stream.poll_read_ready(cx)) => {
                    if ready.is_err() {
                        break;
                    }
                    let mut buf = [0u8; READ_CHUNK];
                    match stream.try_read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => conn.handle_bytes(&buf[..n], now_ms(), pool),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => break,
                    }
                }
                changed = templates.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let template = templates.borrow_and_update().clone();
                    if let Some(template) = template {
                        conn.handle_template(template, now_ms(), pool);
                    }
                }
                _ = sleep => conn.handle_timeout(now_ms(), pool),
                _ = shutdown.changed() => {
                    // Graceful restart: miners come back to the same address after a pause.
                    if let Ok(local) = stream.local_addr() {
                        conn.handle_reconnect(&local.ip().to_string(), local.port());
                    }
                }
            }
        }
        let worker = conn.worker().map(str::to_string);
        conn.release(pool);
        if let Some(worker) = worker {
            self.out.events.publish(
                "MinerDisconnected",
                json!({"worker": worker, "peer": peer.to_string()}),
            );
        }
        debug!(%peer, "disconnected");
    }

    fn share_record(&self, share: &AcceptedShare) -> ShareRecord {
        ShareRecord {
            created_ms: i64::try_from(share.time_ms).unwrap_or(i64::MAX),
            address: share.address.clone(),
            worker: share.worker.clone(),
            difficulty: share.difficulty.get(),
            network_difficulty: share.network_difficulty,
            block_reward: i64::try_from(share.block_reward).unwrap_or(i64::MAX),
            height: i64::try_from(share.height).unwrap_or(i64::MAX),
            template_id: i64::try_from(share.template_id).unwrap_or(i64::MAX),
            is_block: share.is_block,
            instance: self.out.instance.clone(),
        }
    }

    fn on_event(&self, event: Event, peer: SocketAddr) {
        let (metrics, events) = (&self.out.metrics, &self.out.events);
        match event {
            Event::BlockFound(block) => {
                metrics.blocks_found.fetch_add(1, Ordering::Relaxed);
                if let Err(tokio::sync::mpsc::error::TrySendError::Full(block)) =
                    self.out.blocks.try_send(block)
                {
                    // Only a flood of blocks (regtest) fills the queue; wait there, never drop.
                    let blocks = self.out.blocks.clone();
                    tokio::spawn(async move { blocks.send(block).await });
                }
            }
            Event::ShareAccepted(share) => {
                metrics.accepted.fetch_add(1, Ordering::Relaxed);
                metrics
                    .difficulty_micro
                    .fetch_add((share.difficulty.get() * 1e6) as u64, Ordering::Relaxed);
                events.publish(
                    "ShareSubmitted",
                    json!({"worker": share.worker, "address": share.address, "accepted": true,
                           "difficulty": share.difficulty.get(), "height": share.height, "block": share.is_block}),
                );
                debug!(target: "quarry::share", worker = %share.worker, difficulty = share.difficulty.get(), achieved = share.achieved, height = share.height, block = share.is_block, "share accepted");
            }
            Event::ShareRejected { worker, reason } => {
                metrics.reject(reject_label(reason));
                events.publish(
                    "ShareSubmitted",
                    json!({"worker": worker, "accepted": false, "reason": reason.to_string()}),
                );
                debug!(target: "quarry::share", %worker, %reason, "share rejected");
            }
            Event::Authorized { worker, address } => {
                events.publish(
                    "MinerConnected",
                    json!({"worker": worker, "address": address, "peer": peer.to_string()}),
                );
                info!(%peer, %worker, %address, "worker authorized");
            }
            _ => {}
        }
    }
}

/// A connection's session, whichever protocol it speaks.
// Unboxed V1 on purpose: it is the common case, and the whole enum lives in the task anyway.
#[allow(clippy::large_enum_variant)]
enum Conn {
    V1(Session),
    // Boxed: V1 connections, the many, do not pay for the larger SV2 session.
    V2(Box<PoolSession>),
}

impl Conn {
    fn name(&self) -> &'static str {
        match self {
            Conn::V1(_) => "stratum-v1",
            Conn::V2(_) => "stratum-v2",
        }
    }

    fn handle_bytes(&mut self, data: &[u8], now_ms: u64, pool: &dyn Pool) {
        match self {
            Conn::V1(s) => s.handle_bytes(data, now_ms, pool),
            Conn::V2(s) => s.handle_bytes(data, now_ms, pool),
        }
    }

    fn handle_template(&mut self, template: Arc<WorkTemplate>, now_ms: u64, pool: &dyn Pool) {
        match self {
            Conn::V1(s) => s.handle_template(template, now_ms, pool),
            Conn::V2(s) => s.handle_template(template, now_ms, pool),
        }
    }

    fn handle_timeout(&mut self, now_ms: u64, pool: &dyn Pool) {
        match self {
            Conn::V1(s) => s.handle_timeout(now_ms, pool),
            Conn::V2(s) => s.handle_timeout(now_ms, pool),
        }
    }

    fn handle_reconnect(&mut self, host: &str, port: u16) {
        match self {
            Conn::V1(s) => s.handle_reconnect(host, port, 5),
            Conn::V2(s) => s.handle_reconnect(host, port),
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        match self {
            Conn::V1(s) => s.poll_event(),
            Conn::V2(s) => s.poll_event(),
        }
    }

    /// Reports the oldest unreported accepted share recorded (or not).
    fn share_recorded(&mut self, durable: bool) {
        match self {
            Conn::V1(s) => s.share_recorded(durable),
            Conn::V2(s) => s.share_recorded(durable),
        }
    }

    /// Appends everything there is to send.
    fn transmit(&mut self, out: &mut Vec<u8>) {
        match self {
            Conn::V1(s) => {
                while let Some(line) = s.poll_transmit() {
                    out.extend_from_slice(line.as_bytes());
                }
            }
            Conn::V2(s) => {
                while let Some(bytes) = s.poll_transmit() {
                    out.extend_from_slice(&bytes);
                }
            }
        }
    }

    fn close_reason(&self) -> Option<String> {
        match self {
            Conn::V1(s) => s.close_reason().map(ToString::to_string),
            Conn::V2(s) => s.close_reason().map(ToString::to_string),
        }
    }

    fn poll_timeout(&self) -> Option<u64> {
        match self {
            Conn::V1(s) => s.poll_timeout(),
            Conn::V2(s) => s.poll_timeout(),
        }
    }

    fn worker(&self) -> Option<&str> {
        match self {
            Conn::V1(s) => s.worker(),
            Conn::V2(s) => s.worker(),
        }
    }

    fn release(&mut self, pool: &dyn Pool) {
        match self {
            Conn::V1(s) => {
                if let Some(extranonce1) = s.extranonce1() {
                    pool.release_extranonce1(extranonce1);
                }
            }
            Conn::V2(s) => s.release(pool),
        }
    }
}

/// A metric label for a reject reason.
fn reject_label(reason: ShareReject) -> &'static str {
    match reason {
        ShareReject::JobNotFound => "job_not_found",
        ShareReject::Stale => "stale",
        ShareReject::Duplicate => "duplicate",
        ShareReject::LowDifficulty => "low_difficulty",
        ShareReject::Extranonce2Size { .. } => "extranonce2_size",
        ShareReject::NtimeTooOld | ShareReject::NtimeTooNew => "ntime",
        ShareReject::VersionOutsideMask => "version_mask",
        _ => "other",
    }
}

/// Logs a status line every `every`.
pub async fn report(stats: Arc<Metrics>, every: Duration) {
    let mut last = (0u64, 0u64);
    loop {
        tokio::time::sleep(every).await;
        let accepted = stats.accepted.load(Ordering::Relaxed);
        let difficulty = stats.difficulty_micro.load(Ordering::Relaxed);
        let hashrate =
            (difficulty - last.1) as f64 / 1e6 * 4_294_967_296.0 / every.as_secs_f64().max(1.0);
        info!(
            connections = stats.connections.load(Ordering::Relaxed),
            accepted,
            rejected = stats.rejected_total(),
            blocks = stats.blocks_found.load(Ordering::Relaxed),
            shares_per_min = (accepted - last.0) as f64 * 60.0 / every.as_secs_f64().max(1.0),
            hashrate = %format_hashrate(hashrate),
            "pool status"
        );
        last = (accepted, difficulty);
    }
}

/// `1.23 MH/s` and the like.
pub fn format_hashrate(hashes_per_sec: f64) -> String {
    let units = ["H/s", "kH/s", "MH/s", "GH/s", "TH/s", "PH/s", "EH/s"];
    let mut value = hashes_per_sec;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.2} {}", units[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashrate_formatting() {
        assert_eq!(format_hashrate(1_500_000.0), "1.50 MH/s");
        assert_eq!(format_hashrate(12.0), "12.00 H/s");
    }
}
