//! The stratum listeners and the loop that moves bytes between a socket and its session: on a
//! Bitcoin port a V1 [`Session`] or an SV2 [`PoolSession`], told apart by the first bytes; on
//! a Kaspa port a [`KaspaSession`]. No protocol decisions are made here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quarry_kaspa::pool::KaspaPool;
use quarry_kaspa::session::{KaspaConfig, KaspaSession};
use quarry_kaspa::work::KaspaWork;
use quarry_ledger::{
    Chain, HistoryBook, HistoryShare, Receipt, RecordError, ShareLog, ShareRecord,
};
use quarry_stratum::bans::{BanBook, BanPolicy, Offence, Standing};
use quarry_stratum::detect::{detect, Detected};
use quarry_stratum::proxy_header::{self, ProxyHeader, TrustedProxies};
use quarry_stratum::v1::{AcceptedShare, Event, Session, SessionConfig};
use quarry_stratum::v2::declaration::Verdict;
use quarry_stratum::v2::{PoolSession, Sv2Config};
use quarry_stratum::{Pool, SharedPool};
use quarry_work::share::ShareReject;
use quarry_work::template::WorkTemplate;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, error, info, warn};

use crate::driver::{self, drive, Environment, Recording, Sink};
use crate::events::{EventBus, Metrics};

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
    /// Solved aux blocks go here (merged mining), to be submitted to their chains at once.
    pub aux_blocks: Option<tokio::sync::mpsc::Sender<quarry_stratum::FoundAux>>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The event stream.
    pub events: Arc<EventBus>,
    /// Hashrate history, written to the ledger every few seconds ([`write_history`]).
    pub history: Arc<Mutex<HistoryBook>>,
    /// Takes `ln=<offer>` authorize passwords as payout destinations, with `[lightning]` on.
    pub destinations: Option<Arc<crate::payout_destination::Registrar>>,
    /// The nodes, asked whether a declared job (Job Declaration) is a valid block.
    pub nodes: Option<Arc<crate::node::Nodes>>,
}

/// The ban book of one `quarry serve`, shared by its listeners and the API.
pub struct Bans {
    /// Bans are imposed when true; scores are kept either way.
    pub enabled: bool,
    book: Mutex<BanBook>,
    /// The latest end of any ban (monotonic ms): before it the book is looked up, after it
    /// nobody is banned and no lock is taken. Every connection asks after every round of
    /// events, so the common case must not touch the shared mutex.
    bans_until_ms: std::sync::atomic::AtomicU64,
    /// Connections refused because their address was banned.
    pub refused: std::sync::atomic::AtomicU64,
}

impl Bans {
    /// An empty book.
    pub fn new(policy: BanPolicy, enabled: bool) -> Bans {
        Bans {
            enabled,
            book: Mutex::new(BanBook::new(policy)),
            bans_until_ms: std::sync::atomic::AtomicU64::new(0),
            refused: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Counts `offence` against `peer`'s address.
    pub fn offend(&self, peer: SocketAddr, offence: Offence) {
        // Stale and duplicate shares score nothing: no lock for them.
        if offence.points() <= 0.0 {
            return;
        }
        let now_ms = driver::now().mono_ms;
        if let Some(until) = lock(&self.book).offend(peer.ip(), offence, now_ms) {
            self.bans_until_ms.fetch_max(until, Ordering::Relaxed);
            let secs = until.saturating_sub(now_ms) / 1000;
            match self.enabled {
                true => warn!(ip = %peer.ip(), ?offence, secs, "address banned"),
                false => {
                    info!(ip = %peer.ip(), ?offence, "address would be banned (bans.enabled = false)")
                }
            }
        }
    }

    /// Whether `ip` is banned now (never when bans are off).
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        if !self.enabled {
            return false;
        }
        let now_ms = driver::now().mono_ms;
        now_ms < self.bans_until_ms.load(Ordering::Relaxed)
            && lock(&self.book).is_banned(ip, now_ms)
    }

    /// Every scored or banned address, highest score first.
    pub fn standings(&self) -> Vec<Standing> {
        lock(&self.book).standings(driver::now().mono_ms)
    }

    /// (banned now, banned since start).
    pub fn counts(&self) -> (usize, u64) {
        let book = lock(&self.book);
        (book.banned_now(driver::now().mono_ms), book.banned_total())
    }
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
    /// Load balancers whose connections start with a PROXY header (v1 or v2).
    pub trusted_proxies: TrustedProxies,
}

/// What a listener speaks, and the state its sessions share.
pub enum Protocol {
    /// Bitcoin: Stratum V1 and V2 on one port.
    Bitcoin {
        /// Session settings.
        session_config: Arc<SessionConfig>,
        /// SV2 settings; SV2 clients are turned away when unset.
        sv2: Option<Arc<Sv2Config>>,
        /// Shared pool state.
        pool: Arc<SharedPool>,
        /// The work sessions follow: Bitcoin templates, with the aux chains folded in.
        work: watch::Receiver<Option<Arc<WorkTemplate>>>,
    },
    /// Kaspa's stratum dialect.
    Kaspa {
        /// Session settings.
        config: Arc<KaspaConfig>,
        /// Shared pool state.
        pool: Arc<KaspaPool>,
        /// The newest work (the pool's job, or each address's in solo mode).
        work: watch::Receiver<Option<Arc<KaspaWork>>>,
    },
}

/// The work a listener's connections follow.
#[derive(Clone)]
enum Followed {
    Bitcoin(watch::Receiver<driver::Work>),
    Kaspa(watch::Receiver<driver::Work<KaspaWork>>),
}

impl Protocol {
    /// The ledger's key for the chain this listener mines.
    pub fn chain(&self) -> &'static str {
        match self {
            Protocol::Bitcoin { .. } => quarry_stratum::accept::BITCOIN,
            Protocol::Kaspa { .. } => "kaspa",
        }
    }

    /// Bitcoin's protocols.
    pub fn bitcoin(
        session_config: SessionConfig,
        sv2: Option<Sv2Config>,
        pool: Arc<SharedPool>,
        work: watch::Receiver<Option<Arc<WorkTemplate>>>,
    ) -> Protocol {
        Protocol::Bitcoin {
            session_config: Arc::new(session_config),
            sv2: sv2.map(Arc::new),
            pool,
            work,
        }
    }

    /// How long a connection may take to say who it is.
    fn auth_timeout_ms(&self) -> u64 {
        match self {
            Protocol::Bitcoin { session_config, .. } => session_config.auth_timeout_ms,
            Protocol::Kaspa { config, .. } => config.auth_timeout_ms,
        }
    }

    fn follow(&self, shutdown: watch::Receiver<bool>) -> Followed {
        match self {
            Protocol::Bitcoin { work, .. } => {
                Followed::Bitcoin(driver::follow(work.clone(), shutdown))
            }
            Protocol::Kaspa { work, .. } => Followed::Kaspa(driver::follow(work.clone(), shutdown)),
        }
    }
}

/// Everything a connection task needs.
pub struct Server {
    /// The protocol and its shared state.
    pub protocol: Protocol,
    /// Share log, blocks, metrics, events.
    pub out: Outputs,
    /// Limits.
    pub limits: Limits,
    /// Scores and bans per address.
    pub bans: Arc<Bans>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    slots: Arc<Semaphore>,
}

impl Server {
    /// A server; call [`Server::run`].
    pub fn new(protocol: Protocol, out: Outputs, limits: Limits, bans: Arc<Bans>) -> Arc<Self> {
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        Arc::new(Server {
            out,
            protocol,
            limits,
            bans,
            per_ip: Mutex::new(HashMap::new()),
            slots,
        })
    }

    /// Accepts connections until `shutdown` fires; with `tls`, each speaks TLS first.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<Arc<crate::tls::Acceptor>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let work = self.protocol.follow(shutdown.clone());
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
            // Behind a trusted load balancer the client's address comes in a PROXY header:
            // limits and bans apply to it once read, in the connection's task.
            let proxied = self.limits.trusted_proxies.contains(peer.ip());
            if !proxied && !self.admit(peer) {
                continue;
            }
            let server = Arc::clone(&self);
            let work = work.clone();
            if let Some(tls) = &tls {
                // Its own task type: plain connections, the many, carry none of TLS's state.
                let acceptor = Arc::clone(tls);
                tokio::spawn(async move {
                    let _permit = permit;
                    server
                        .serve_tls(stream, peer, proxied, &acceptor, work)
                        .await;
                });
                continue;
            }
            tokio::spawn(async move {
                let mut stream = stream;
                let peer = match proxied {
                    false => peer,
                    true => match Box::pin(server.proxy_header(&mut stream, peer)).await {
                        Some(client) if server.admit(client) => client,
                        _ => return,
                    },
                };
                server
                    .out
                    .metrics
                    .connections
                    .fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                server.drive(stream, peer, work).await;
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

    /// Accepts SV2 over QUIC until `shutdown` fires (see `quic.rs`): each QUIC connection is
    /// admitted like a TCP one (bans, per-IP limit, the connection limit), and each of its
    /// bidirectional streams is a session of its own on the same driver.
    pub async fn run_quic(
        self: Arc<Self>,
        endpoint: quinn::Endpoint,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let work = self.protocol.follow(shutdown.clone());
        let local = endpoint.local_addr().ok();
        loop {
            let incoming = tokio::select! {
                incoming = endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => return,
                },
                _ = shutdown.changed() => {
                    endpoint.close(0u32.into(), b"shutting down");
                    return;
                }
            };
            let peer = incoming.remote_address();
            let Some(permit) = self.admit_connection(peer) else {
                incoming.refuse();
                continue;
            };
            let server = Arc::clone(&self);
            tokio::spawn(server.serve_connection(permit, peer, local, work.clone(), incoming));
        }
    }

    /// Accepts SV2 over Iroh until `shutdown` fires (see `iroh_endpoint.rs`), like
    /// [`Server::run_quic`]: limits and bans by the address the packets came from.
    pub async fn run_iroh(
        self: Arc<Self>,
        endpoint: iroh::Endpoint,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let work = self.protocol.follow(shutdown.clone());
        let local = endpoint.bound_sockets().first().copied();
        loop {
            let incoming = tokio::select! {
                incoming = endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => return,
                },
                _ = shutdown.changed() => {
                    endpoint.close().await;
                    return;
                }
            };
            let peer = incoming.remote_address();
            let Some(permit) = self.admit_connection(peer) else {
                incoming.refuse();
                continue;
            };
            let server = Arc::clone(&self);
            tokio::spawn(server.serve_connection(permit, peer, local, work.clone(), incoming));
        }
    }

    /// A slot under the connection limit for `peer`, if it is not banned and within the per-IP
    /// limit (it then holds a per-IP slot, freed by [`Server::serve_connection`]).
    fn admit_connection(&self, peer: SocketAddr) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = Arc::clone(&self.slots).try_acquire_owned().ok()?;
        self.admit(peer).then_some(permit)
    }

    /// One admitted QUIC or Iroh connection: its handshake within the auth timeout, then a
    /// session per bidirectional stream the miner opens, until it closes.
    async fn serve_connection<H, C, E>(
        self: Arc<Self>,
        permit: tokio::sync::OwnedSemaphorePermit,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        work: Followed,
        handshake: H,
    ) where
        H: std::future::IntoFuture<Output = Result<C, E>>,
        C: StreamSource,
        E: std::fmt::Display,
    {
        let timeout = Duration::from_millis(self.protocol.auth_timeout_ms().max(1000));
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(connection)) => {
                let mut streams = tokio::task::JoinSet::new();
                while let Some((send, recv)) = connection.next_stream(peer).await {
                    let server = Arc::clone(&self);
                    let work = work.clone();
                    streams.spawn(async move {
                        server
                            .out
                            .metrics
                            .connections
                            .fetch_add(1, Ordering::Relaxed);
                        let stream = driver::Buffered::new(tokio::io::join(recv, send), local);
                        server.drive(stream, peer, work).await;
                        server
                            .out
                            .metrics
                            .connections
                            .fetch_sub(1, Ordering::Relaxed);
                    });
                }
                streams.shutdown().await;
            }
            Ok(Err(e)) => debug!(%peer, error = %e, "QUIC handshake failed"),
            Err(_) => debug!(%peer, "QUIC handshake timed out"),
        }
        self.release_ip(peer.ip());
        drop(permit);
    }

    /// One TLS connection: the PROXY header (from a trusted balancer), the handshake within
    /// the auth timeout, then the session over the decrypted stream.
    async fn serve_tls(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        proxied: bool,
        tls: &crate::tls::Acceptor,
        work: Followed,
    ) {
        let peer = match proxied {
            false => peer,
            true => match self.proxy_header(&mut stream, peer).await {
                Some(client) if self.admit(client) => client,
                _ => return,
            },
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        let handshake = tokio::time::timeout(
            Duration::from_millis(self.protocol.auth_timeout_ms().max(1000)),
            tls.acceptor().accept(stream),
        )
        .await;
        self.out.metrics.connections.fetch_add(1, Ordering::Relaxed);
        match handshake {
            Ok(Ok(stream)) => {
                self.drive(driver::Buffered::new(stream, local), peer, work)
                    .await;
            }
            Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => debug!(%peer, "TLS handshake timed out"),
        }
        self.out.metrics.connections.fetch_sub(1, Ordering::Relaxed);
        self.release_ip(peer.ip());
    }

    /// Bans, then the per-IP limit; true when `peer` may connect (it then holds a per-IP slot).
    fn admit(&self, peer: SocketAddr) -> bool {
        if self.bans.is_banned(peer.ip()) {
            self.bans.refused.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "refused: address banned");
            return false;
        }
        if !self.admit_ip(peer.ip()) {
            debug!(%peer, "per-IP connection limit reached");
            return false;
        }
        true
    }

    /// Reads a trusted proxy's PROXY header, and nothing after it (the TLS handshake or the
    /// protocol follows): the client it names, or the proxy itself for a health check or
    /// UNKNOWN. `None` closes the connection.
    async fn proxy_header(&self, stream: &mut TcpStream, proxy: SocketAddr) -> Option<SocketAddr> {
        let mut buf = vec![0u8; proxy_header::MAX_HEADER_LEN];
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.protocol.auth_timeout_ms().max(1000));
        let mut seen = 0;
        loop {
            // Peeked, so that exactly the header's bytes are taken off the socket below.
            let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => return None,
            };
            match proxy_header::parse(&buf[..n]) {
                ProxyHeader::NeedMore if n == seen => {
                    // Nothing new since the last peek: wait a little for the rest.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                ProxyHeader::NeedMore => seen = n,
                ProxyHeader::Complete { len, client } => {
                    stream.read_exact(&mut buf[..len]).await.ok()?;
                    return Some(client.unwrap_or(proxy));
                }
                ProxyHeader::Invalid(reason) => {
                    warn!(%proxy, %reason, "trusted proxy sent no valid PROXY header: closing");
                    return None;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
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

    /// Reads until the first bytes (`first` holds those read already) tell the protocol apart.
    async fn sniff<S: driver::ByteStream>(&self, stream: &mut S) -> Option<(Detected, Vec<u8>)> {
        let mut first = Vec::new();
        let mut buf = [0u8; 512];
        // One deadline for the whole sniff, so a client dripping bytes cannot stretch it.
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.protocol.auth_timeout_ms().max(1000));
        loop {
            match detect(&first) {
                Detected::NeedMore => {}
                decided => return Some((decided, first)),
            }
            let ready = std::future::poll_fn(|cx| stream.poll_read_ready(cx));
            match tokio::time::timeout_at(deadline, ready).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
            match stream.try_read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => first.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
            }
        }
    }

    /// One connection, plain or TLS, on the one driver.
    // Not an `async fn`, and sessions are built inside the `drive` call: see driver::drive on
    // keeping each connection's task small (one async layer here, not two).
    #[allow(clippy::manual_async_fn)]
    fn drive<S: driver::ByteStream + 'static>(
        &self,
        stream: S,
        peer: SocketAddr,
        work: Followed,
    ) -> impl std::future::Future<Output = ()> + Send + '_ {
        async move {
            let sink = PoolSink { server: self, peer };
            let ended = match (&self.protocol, work) {
                (
                    Protocol::Bitcoin {
                        session_config,
                        sv2,
                        pool,
                        ..
                    },
                    Followed::Bitcoin(work),
                ) => {
                    let env = Environment {
                        shared: &**pool as &dyn Pool,
                        work,
                        write_timeout: self.limits.write_timeout,
                        peer,
                    };
                    Box::pin(self.drive_bitcoin(stream, session_config, sv2.as_ref(), env, &sink))
                        .await
                }
                (Protocol::Kaspa { config, pool, .. }, Followed::Kaspa(work)) => {
                    let env = Environment {
                        shared: &**pool,
                        work,
                        write_timeout: self.limits.write_timeout,
                        peer,
                    };
                    // Boxed, like Bitcoin's: neither protocol's task carries room for the other's
                    // session.
                    let session = Box::pin(drive(
                        KaspaSession::new(Arc::clone(config), driver::now()),
                        stream,
                        Vec::new(),
                        env,
                        &sink,
                    ))
                    .await;
                    Some((session.worker().map(str::to_string), session.offence()))
                }
                _ => None,
            };
            let Some((worker, offence)) = ended else {
                return;
            };
            if let Some(offence) = offence {
                self.bans.offend(peer, offence);
            }
            if let Some(worker) = worker {
                self.out.events.publish(
                    "MinerDisconnected",
                    json!({"worker": worker, "peer": peer.to_string()}),
                );
            }
            debug!(%peer, "disconnected");
        }
    }

    /// A Bitcoin connection: the protocol is sniffed, then its session runs. Returns the
    /// worker and the offence that closed it, if any; `None` when no session ran.
    // Not an `async fn`, for the reason on `drive`: its arguments are not copied again.
    #[allow(clippy::manual_async_fn)]
    fn drive_bitcoin<'a, S: driver::ByteStream + 'static>(
        &'a self,
        mut stream: S,
        session_config: &'a Arc<SessionConfig>,
        sv2: Option<&'a Arc<Sv2Config>>,
        env: Environment<'a, dyn Pool>,
        sink: &'a PoolSink<'a>,
    ) -> impl std::future::Future<Output = Option<(Option<String>, Option<Offence>)>> + Send + 'a
    {
        async move {
            let peer = env.peer;
            let Some((protocol, first)) = Box::pin(self.sniff(&mut stream)).await else {
                debug!(%peer, "closed before speaking");
                return None;
            };
            let ended = match (protocol, sv2) {
                // Boxed: V1 connections, the many, do not pay for the larger SV2 session.
                (Detected::V2, Some(sv2)) => {
                    let session = drive(
                        Box::new(PoolSession::new(
                            Arc::clone(session_config),
                            Arc::clone(sv2),
                            driver::now(),
                        )),
                        stream,
                        first,
                        env,
                        sink,
                    )
                    .await;
                    (session.worker().map(str::to_string), session.offence())
                }
                (Detected::V2, None) => {
                    debug!(%peer, "SV2 client turned away: no [sv2] authority key configured");
                    return None;
                }
                _ => {
                    let session = drive(
                        Session::new(Arc::clone(session_config), driver::now()),
                        stream,
                        first,
                        env,
                        sink,
                    )
                    .await;
                    (session.worker().map(str::to_string), session.offence())
                }
            };
            Some(ended)
        }
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
            // The session names its chain from a fixed set of keys; an unknown one would be a
            // bug here, and is not worth losing the share over.
            chain: Chain::new(share.chain).unwrap_or(Chain::BITCOIN),
            aux_payouts: share.aux_payouts.to_map(),
            hash: Some(quarry_work::hash::to_display_hex(&share.hash)),
        }
    }

    fn on_event(&self, event: Event, peer: SocketAddr) {
        let (metrics, events) = (&self.out.metrics, &self.out.events);
        match event {
            Event::BlockFound(block) => {
                metrics.blocks_found.fetch_add(1, Ordering::Relaxed);
                metrics
                    .last_block_height
                    .store(block.height, Ordering::Relaxed);
                metrics
                    .last_block_ms
                    .store(block.time_ms, Ordering::Relaxed);
                lock(&self.out.history).block_found(block.chain);
                if let Err(tokio::sync::mpsc::error::TrySendError::Full(block)) =
                    self.out.blocks.try_send(block)
                {
                    // Only a flood of blocks (regtest) fills the queue; wait there, never drop.
                    let blocks = self.out.blocks.clone();
                    tokio::spawn(async move { blocks.send(block).await });
                }
            }
            Event::AuxFound(found) => {
                if let Some(aux) = &self.out.aux_blocks {
                    if let Err(tokio::sync::mpsc::error::TrySendError::Full(found)) =
                        aux.try_send(*found)
                    {
                        let aux = aux.clone();
                        tokio::spawn(async move { aux.send(found).await });
                    }
                }
            }
            Event::ShareAccepted(share) => {
                metrics.accepted.fetch_add(1, Ordering::Relaxed);
                lock(&self.out.history).accepted(&HistoryShare {
                    chain: share.chain,
                    address: &share.address,
                    worker: &share.worker,
                    difficulty: share.difficulty.get(),
                    achieved: share.achieved,
                    time_ms: i64::try_from(share.time_ms).unwrap_or(i64::MAX),
                });
                metrics.difficulty.add(share.difficulty.get());
                events.publish_with("ShareSubmitted", || {
                    json!({"worker": share.worker, "address": share.address, "accepted": true,
                           "difficulty": share.difficulty.get(), "height": share.height, "block": share.is_block})
                });
                debug!(target: "quarry::share", worker = %share.worker, difficulty = share.difficulty.get(), achieved = share.achieved, height = share.height, block = share.is_block, "share accepted");
            }
            Event::ShareRejected { worker, reason } => {
                metrics.reject(reject_label(reason));
                // Usernames are `address[.worker]` in every dialect.
                let address = worker.split('.').next().unwrap_or_default();
                lock(&self.out.history).rejected(
                    self.protocol.chain(),
                    address,
                    &worker,
                    reject_label(reason),
                    i64::try_from(driver::unix_ms()).unwrap_or(i64::MAX),
                );
                self.bans.offend(peer, Offence::BadShare(reason));
                events.publish_with(
                    "ShareSubmitted",
                    || json!({"worker": worker, "accepted": false, "reason": reason.to_string()}),
                );
                debug!(target: "quarry::share", %worker, %reason, "share rejected");
            }
            Event::Authorized {
                worker,
                address,
                aux_payouts,
                lightning_offer,
                ..
            } => {
                if let (Some(offer), Some(registrar)) = (lightning_offer, &self.out.destinations) {
                    registrar.on_authorize(address.clone(), offer.into());
                }
                let aux: serde_json::Map<String, serde_json::Value> = aux_payouts
                    .iter()
                    .map(|(chain, address)| (chain.to_string(), json!(address)))
                    .collect();
                events.publish(
                    "MinerConnected",
                    json!({"worker": worker, "address": address, "peer": peer.to_string(),
                           "aux_payouts": aux}),
                );
                info!(%peer, %worker, %address, aux_payouts = ?aux, "worker authorized");
            }
            _ => {}
        }
    }
}

/// A pool connection's events: accepted shares to the share log, then metrics, events and
/// found blocks.
struct PoolSink<'a> {
    server: &'a Server,
    peer: SocketAddr,
}

impl Sink<Event> for PoolSink<'_> {
    fn handle(&self, event: Event) -> Recording<'_> {
        let server = self.server;
        let mut recording = Recording::Nothing;
        if let Event::CheckDeclaredBlock { request_id, block } = event {
            let nodes = server.out.nodes.clone();
            return Recording::Verdict(
                request_id,
                Box::pin(async move {
                    match nodes {
                        Some(nodes) => nodes.check_proposal(&block).await,
                        None => Verdict::Unavailable("no node to check declared jobs".into()),
                    }
                }),
            );
        }
        if let Event::ShareAccepted(share) = &event {
            let peer = self.peer;
            let settle = move |queued: Result<Receipt, RecordError>| match queued {
                Ok(receipt) => Recording::Queued(receipt),
                Err(e) => {
                    error!(%peer, error = %e, "share log unavailable: the share is not acknowledged");
                    Recording::Refused
                }
            };
            recording = match server.out.ledger.try_enqueue(server.share_record(share)) {
                Ok(queued) => settle(queued),
                // Only when the queue is full does the driver wait, on a boxed future.
                Err(record) => Recording::Waiting(Box::pin(async move {
                    settle(server.out.ledger.enqueue(record).await)
                })),
            };
        }
        server.on_event(event, self.peer);
        recording
    }

    fn keep_open(&self) -> bool {
        !self.server.bans.is_banned(self.peer.ip())
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

/// Writes the hashrate history to the ledger every `every` and rolls it up every minute; a
/// write the database refuses goes back into the book for the next one.
pub async fn write_history(
    store: quarry_ledger::Store,
    book: Arc<Mutex<HistoryBook>>,
    retention: quarry_ledger::Retention,
    every: Duration,
) {
    let mut last_roll_up = std::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        flush_history(&store, &book).await;
        if last_roll_up.elapsed() >= Duration::from_secs(60) {
            last_roll_up = std::time::Instant::now();
            let now = i64::try_from(driver::unix_ms()).unwrap_or(i64::MAX);
            match store.roll_up_history(now, retention).await {
                Ok(report) => debug!(?report, "history rolled up"),
                Err(e) => warn!(error = %e, "history roll-up failed; will retry"),
            }
        }
    }
}

/// One history write (also the last one, at shutdown).
pub async fn flush_history(store: &quarry_ledger::Store, book: &Mutex<HistoryBook>) {
    let batch = lock(book).take();
    if let Err(e) = store.write_history(&batch).await {
        warn!(error = %e, "history write failed; kept for the next one");
        let mut book = lock(book);
        book.restore(batch);
        if book.dropped() > 0 {
            warn!(
                dropped_minutes = book.dropped(),
                "history minutes dropped while the database was down"
            );
        }
    }
}

/// Logs a status line every `every` (target `quarry::status`, kept by `--quiet`).
pub async fn report(stats: Arc<Metrics>, every: Duration) {
    let mut last = (0u64, 0.0f64);
    loop {
        tokio::time::sleep(every).await;
        let accepted = stats.accepted.load(Ordering::Relaxed);
        let difficulty = stats.difficulty.get();
        let secs = every.as_secs_f64().max(1.0);
        let hashrate = (difficulty - last.1) * 4_294_967_296.0 / secs;
        let blocks = stats.blocks_found.load(Ordering::Relaxed);
        let last_block = match stats.last_block_ms.load(Ordering::Relaxed) {
            0 => "none yet".to_string(),
            ms => format!(
                "{} ({} s ago)",
                stats.last_block_height.load(Ordering::Relaxed),
                driver::unix_ms().saturating_sub(ms) / 1000
            ),
        };
        info!(
            target: "quarry::status",
            hashrate = %format_hashrate(hashrate),
            shares = accepted,
            shares_per_min = format!("{:.0}", (accepted - last.0) as f64 * 60.0 / secs),
            rejected = stats.rejected_total(),
            blocks,
            last_block = %last_block,
            connections = stats.connections.load(Ordering::Relaxed),
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

/// A QUIC or Iroh connection, as [`Server::serve_connection`] needs it: the bidirectional
/// streams its miner opens, each one SV2 connection.
trait StreamSource: Send + 'static {
    type Send: tokio::io::AsyncWrite + Unpin + Send + 'static;
    type Recv: tokio::io::AsyncRead + Unpin + Send + 'static;
    /// The next stream, or `None` once the connection ended.
    fn next_stream(
        &self,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = Option<(Self::Send, Self::Recv)>> + Send;
}

impl StreamSource for quinn::Connection {
    type Send = quinn::SendStream;
    type Recv = quinn::RecvStream;
    async fn next_stream(&self, peer: SocketAddr) -> Option<(Self::Send, Self::Recv)> {
        self.accept_bi()
            .await
            .map_err(|e| debug!(%peer, error = %e, "QUIC connection ended"))
            .ok()
    }
}

impl StreamSource for iroh::endpoint::Connection {
    type Send = iroh::endpoint::SendStream;
    type Recv = iroh::endpoint::RecvStream;
    async fn next_stream(&self, peer: SocketAddr) -> Option<(Self::Send, Self::Recv)> {
        self.accept_bi()
            .await
            .map_err(|e| debug!(%peer, error = %e, "Iroh connection ended"))
            .ok()
    }
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
