//! `quarry loadgen`: N simulated miners, Stratum V1 or V2, against any stratum endpoint.
//!
//! Each miner is one small task (a few hundred bytes of state and a 4 KiB read buffer, no
//! thread), bound to its own source address in 127.0.0.0/8 so that more than 64k connections
//! fit on loopback. Miners really hash: they submit shares that meet the share target and,
//! where the share target is easier than the network's, stay under the network target so that
//! the chain does not move under the measurement. Every share's answer is matched to its
//! request, timed, and counted; stale answers (a block moved the tip while the share was in
//! flight: V1 code 21 or "stale", SV2 `stale-share`, or a job-id error for a job a new tip had
//! replaced) are counted apart from rejections.
//!
//! New-block fan-out: with `--node-zmq` the load generator hears the node announce each new tip
//! (`hashblock`, the same feed the pool follows) and times how long until the last miner has
//! work on it (`mining.notify` / SetNewPrevHash). `--blocks` mines those blocks through the
//! node's RPC during the run.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use quarry_stratum::v1::{
    Client, ClientConfig, ClientError, ClientEvent as V1Event, Work as V1Work,
};
use quarry_stratum::v2::client::{ClientEvent, HeaderWork, MinerClient};
use quarry_work::hash::{sha256d_80, Hash32};
use quarry_work::job::header_bytes;
use quarry_work::Target;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tracing::warn;

use crate::config::NodeConfig;
use crate::node::Rpc;

/// `quarry loadgen`.
#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// Stratum endpoint, host:port (or stratum+tcp://, stratum+ssl:// for TLS,
    /// stratum2+tcp://host:port/<key>, stratum2+quic://host:port/<key>).
    pub url: String,
    /// For stratum+ssl://: trust only the certificates in this PEM file.
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Simulated miners.
    #[arg(short, long, default_value_t = 100)]
    pub miners: usize,
    /// Username each miner authorizes with (`.N` is appended).
    #[arg(short, long)]
    pub user: String,
    /// Usernames, one per line: miner N authorizes as line N (wrapping), so that many miners
    /// pay many addresses (`--user` is then unused).
    #[arg(long)]
    pub users_file: Option<PathBuf>,
    /// The usernames of `--users-file`, read at start.
    #[arg(skip)]
    pub users: Vec<String>,
    /// Password each miner authorizes with (may carry `d=<difficulty>`).
    #[arg(long, default_value = "x")]
    pub password: String,
    /// Shares per second per miner (0: connect, subscribe and stay idle).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Flood (Stratum V1): instead of `--rate`, keep this many submits outstanding per miner,
    /// with random nonces and no hashing, so the pool validates and answers as fast as it can.
    /// On a pool whose share difficulty is 1 or more, nearly every answer is a rejection.
    #[arg(long, default_value_t = 0)]
    pub in_flight: u32,
    /// Stop after this many seconds of submitting.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Stop once this many shares have been sent (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_shares: u64,
    /// Connections opened per second while ramping up.
    #[arg(long, default_value_t = 2000)]
    pub connect_rate: u64,
    /// The pool's pid, to report its RSS per connection from /proc.
    #[arg(long)]
    pub pool_pid: Option<u32>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Bind each miner to its own source address in 127.0.0.0/8 (loopback targets only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub spread_sources: bool,
    /// Speak Stratum V2 (the URL may also be stratum2+tcp://host:port/<authority key>).
    #[arg(long)]
    pub sv2: bool,
    /// The SV2 pool's authority public key.
    #[arg(long)]
    pub authority_pubkey: Option<String>,
    /// Over QUIC (stratum2+quic://): this many miners share one QUIC connection, each on its
    /// own stream (one SV2 connection and channel per stream).
    #[arg(long, default_value_t = 1)]
    pub quic_streams: usize,
    /// Over TCP (stratum2+tcp://): this many miners share one SV2 connection, each its own
    /// standard channel on it (as a proxy multiplexes its miners).
    #[arg(long, default_value_t = 1)]
    pub channels_per_connection: usize,
    /// Nominal hashrate each SV2 miner announces, H/s.
    #[arg(long, default_value_t = 1e6)]
    pub hashrate: f32,
    /// The node's ZMQ `hashblock` endpoint: times new block → last miner notified.
    #[arg(long)]
    pub node_zmq: Option<String>,
    /// The node's JSON-RPC URL, to mine `--blocks` during the run.
    #[arg(long)]
    pub node_rpc: Option<String>,
    /// RPC cookie file.
    #[arg(long)]
    pub node_cookie: Option<PathBuf>,
    /// RPC user (with --node-password).
    #[arg(long)]
    pub node_user: Option<String>,
    /// RPC password.
    #[arg(long)]
    pub node_password: Option<String>,
    /// Blocks to mine through the node's RPC, spread over the run (regtest).
    #[arg(long, default_value_t = 0)]
    pub blocks: u32,
    /// Address the `--blocks` pay to.
    #[arg(long)]
    pub block_address: Option<String>,
    /// Speak Kaspa's stratum dialect (kHeavyHash shares) instead of Bitcoin's.
    #[arg(long)]
    pub kaspa: bool,
    /// Kaspa: the user agent, which picks the job encoding (`IceRiverMiner`: hex strings,
    /// `GodMiner`: Bitmain's, others: arrays).
    #[arg(long, default_value = "quarry-loadgen")]
    pub agent: String,
}

/// The load generator's clock origin, for times kept in atomics.
static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

#[derive(Default)]
struct Stats {
    connected: AtomicU64,
    /// Miners that have their first job: submitting starts when every miner has one.
    ready: AtomicU64,
    failed_connects: AtomicU64,
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    stale: AtomicU64,
    unanswered: AtomicU64,
    /// Submit attempts that found no share within `HASH_BUDGET` hashes.
    hash_budget_misses: AtomicU64,
    /// Miners whose `mining.authorize` was refused.
    unauthorized: AtomicU64,
    /// Miners whose connection ended before the run did (closed by the pool, an error, a
    /// refused SV2 channel).
    dropped: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    notifies: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    /// When the last answer came, in µs from [`ORIGIN`].
    last_answer_us: AtomicU64,
    reject_reasons: Mutex<Vec<String>>,
    /// New tips as the node announced them.
    tips: Mutex<Vec<(Hash32, Instant)>>,
    /// When each miner first got work on each tip.
    arrivals: Mutex<HashMap<Hash32, Vec<Instant>>>,
}

impl Stats {
    /// An answer came `at`: the run lasts until the last one (a saturated pool answers the
    /// last shares after the submit window, and those count in its rate).
    fn answer_at(&self, at: Instant) {
        let origin = *ORIGIN.get_or_init(Instant::now);
        let micros = at.saturating_duration_since(origin).as_micros() as u64;
        self.last_answer_us.fetch_max(micros, Ordering::Relaxed);
    }

    fn answered(&self, sent: Instant) {
        self.answer_at(Instant::now());
        let micros = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        if let Ok(mut latencies) = self.latencies_us.lock() {
            latencies.push(micros);
        }
    }

    fn rejected(&self, reason: String) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.rejected_sample(reason);
    }

    fn rejected_sample(&self, reason: String) {
        if let Ok(mut reasons) = self.reject_reasons.lock() {
            if reasons.len() < 20 {
                reasons.push(reason);
            }
        }
    }

    /// A miner has its first work on `prev_hash`, read from its socket `at`.
    fn work_on(&self, prev_hash: Hash32, at: Instant) {
        if let Ok(mut arrivals) = self.arrivals.lock() {
            arrivals.entry(prev_hash).or_default().push(at);
        }
    }
}

impl LoadgenArgs {
    /// Miner `index`'s username.
    fn username(&self, index: usize) -> String {
        match self.users.is_empty() {
            true => format!("{}.{index}", self.user),
            false => self.users[index % self.users.len()].clone(),
        }
    }
}

/// Runs the load and prints the report.
pub async fn run(mut args: LoadgenArgs) -> Result<()> {
    ORIGIN.get_or_init(Instant::now);
    if let Some(path) = &args.users_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --users-file {}", path.display()))?;
        args.users = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        anyhow::ensure!(
            !args.users.is_empty(),
            "--users-file {} names nobody",
            path.display()
        );
    }
    let endpoint =
        crate::miner::parse_endpoint(&args.url, args.sv2, args.authority_pubkey.as_deref())?;
    if endpoint.iroh.is_some() {
        anyhow::bail!("quarry loadgen speaks stratum2+tcp:// and stratum2+quic://, not iroh://");
    }
    let tls = endpoint.client_tls(args.tls_ca.as_deref())?;
    let (address, authority) = (endpoint.address, endpoint.authority);
    let quic = match endpoint.quic {
        true => Some(Arc::new(QuicConnections::new(
            args.miners.div_ceil(args.quic_streams.max(1)),
        )?)),
        false => None,
    };
    let target: SocketAddr = tokio::net::lookup_host(&address)
        .await
        .with_context(|| format!("resolving {address}"))?
        .next()
        .with_context(|| format!("{address} resolves to nothing"))?;
    let miner_blocks = block_miner(&args)?;
    let stats = Arc::new(Stats::default());
    if let Some(endpoint) = &args.node_zmq {
        tokio::spawn(follow_tips(endpoint.clone(), Arc::clone(&stats)));
    }
    let rss_before = args.pool_pid.and_then(rss_kib);
    let args = Arc::new(args);
    let mut handles = Vec::with_capacity(args.miners);
    let pause = Duration::from_secs_f64(1.0 / args.connect_rate.max(1) as f64);
    // When submitting ends: sent once every miner has its first job.
    let (go, start) = tokio::sync::watch::channel(None::<Instant>);
    let per_connection = args.channels_per_connection.max(1);
    if let (Some(key), None, true) = (authority, &quic, per_connection > 1) {
        for first in (0..args.miners).step_by(per_connection) {
            let count = per_connection.min(args.miners - first);
            let (stats, args, start) = (Arc::clone(&stats), Arc::clone(&args), start.clone());
            handles.push(tokio::spawn(async move {
                let result = channels_v2(first, count, target, &args, &stats, &key, start).await;
                if let Err(e) = result {
                    tracing::debug!(first, error = %e, "connection ended");
                    if e.downcast_ref::<ConnectFailed>().is_none() {
                        stats.dropped.fetch_add(count as u64, Ordering::Relaxed);
                        stats
                            .rejected_sample(format!("connection of miner {first} dropped: {e:#}"));
                    }
                }
            }));
            tokio::time::sleep(pause).await;
        }
    }
    // Otherwise a task per miner.
    let one_per_miner = if handles.is_empty() { args.miners } else { 0 };
    for index in 0..one_per_miner {
        let (stats, args, tls, start, quic) = (
            Arc::clone(&stats),
            Arc::clone(&args),
            tls.clone(),
            start.clone(),
            quic.clone(),
        );
        handles.push(tokio::spawn(async move {
            let result = match authority {
                _ if args.kaspa => miner_kaspa(index, target, &args, &stats, start).await,
                Some(key) => {
                    miner_v2(index, target, &args, &stats, &key, start, quic.as_deref()).await
                }
                None => miner_v1(index, target, tls.as_ref(), &args, &stats, start).await,
            };
            if let Err(e) = result {
                tracing::debug!(index, error = %e, "miner ended");
                if e.downcast_ref::<ConnectFailed>().is_none() {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    stats.rejected_sample(format!("miner {index} dropped: {e:#}"));
                }
            }
        }));
        tokio::time::sleep(pause).await;
    }
    wait_until_ready(&stats, args.miners as u64).await;
    let started = Instant::now();
    let submit_until = started + Duration::from_secs(args.duration);
    let _ = go.send(Some(submit_until));
    // CPU from the start of submitting to the last answer, the pool's and our own (both share
    // this machine's cores).
    let pool_pid = args.pool_pid;
    let cpu_start = (
        pool_pid.and_then(cpu_seconds),
        cpu_seconds(std::process::id()),
    );
    let ramped = started;
    let held = stats.connected.load(Ordering::Relaxed);
    // The last miners' handshakes settle before the pool's memory is read.
    if args.pool_pid.is_some() {
        let settle = submit_until.saturating_duration_since(Instant::now()) / 2;
        tokio::time::sleep(settle.min(Duration::from_secs(2))).await;
    }
    let rss_during = args.pool_pid.and_then(rss_kib);
    if let Some((rpc, address)) = miner_blocks {
        let left = submit_until.saturating_duration_since(Instant::now());
        let spacing = left / (args.blocks + 1);
        tokio::spawn(mine_blocks(rpc, address, args.blocks, spacing));
    }
    for handle in handles {
        let _ = handle.await;
    }
    // After the last answer, not at the window's end: a saturated pool is still working then.
    let cpu_end = (
        pool_pid.and_then(cpu_seconds),
        cpu_seconds(std::process::id()),
    );
    let usage = Usage {
        rss_before,
        rss_during,
        pool: cpu_end.0.zip(cpu_start.0).map(|(end, start)| end - start),
        loadgen: cpu_end.1.zip(cpu_start.1).map(|(end, start)| end - start),
    };
    // The submit window, or longer when answers kept coming after it: rates are answers over
    // the time the pool took to give them.
    let origin = *ORIGIN.get_or_init(Instant::now);
    let last_answer = origin + Duration::from_micros(stats.last_answer_us.load(Ordering::Relaxed));
    let elapsed = last_answer
        .saturating_duration_since(started)
        .as_secs_f64()
        .max(args.duration as f64)
        .min(started.elapsed().as_secs_f64())
        .max(0.001);
    let fanout = fanout(&stats, ramped, held);
    let protocol = match (args.kaspa, authority.is_some()) {
        (true, _) => "kaspa",
        (false, true) => "sv2",
        (false, false) => "v1",
    };
    report(&args, protocol, &stats, held, elapsed, fanout, usage);
    Ok(())
}

/// Waits until every miner has its first job or has ended, for at most `READY_WAIT` (a miner
/// still without work then simply starts late). A load test measures the steady state, and
/// some pools cannot take a block while channels are still opening: SRI's `pool_sv2` 0.7.0 shuts
/// down when a connection arrives between a block's future template and its prevhash.
async fn wait_until_ready(stats: &Stats, miners: u64) {
    const READY_WAIT: Duration = Duration::from_secs(30);
    let deadline = Instant::now() + READY_WAIT;
    while Instant::now() < deadline {
        let settled = stats.ready.load(Ordering::Relaxed)
            + stats.failed_connects.load(Ordering::Relaxed)
            + stats.dropped.load(Ordering::Relaxed);
        if settled >= miners {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    warn!(
        ready = stats.ready.load(Ordering::Relaxed),
        miners, "not every miner had work after {READY_WAIT:?}; submitting anyway"
    );
}

/// The node client and payout address for `--blocks`, checked before any miner starts.
fn block_miner(args: &LoadgenArgs) -> Result<Option<(Rpc, String)>> {
    if args.blocks == 0 {
        return Ok(None);
    }
    let url = args.node_rpc.clone().context("--blocks needs --node-rpc")?;
    let address = args
        .block_address
        .clone()
        .context("--blocks needs --block-address")?;
    let rpc = Rpc::new(&NodeConfig {
        url,
        user: args.node_user.clone(),
        password: args.node_password.clone(),
        cookie_file: args.node_cookie.clone(),
        ..NodeConfig::default()
    })?;
    Ok(Some((rpc, address)))
}

/// Records each new tip the node announces on ZMQ `hashblock`.
async fn follow_tips(endpoint: String, stats: Arc<Stats>) {
    use zeromq::{Socket, SocketRecv};
    let mut socket = zeromq::SubSocket::new();
    let connected = async {
        socket.connect(&endpoint).await?;
        socket.subscribe("hashblock").await
    };
    if let Err(e) = connected.await {
        warn!(%endpoint, error = %e, "zmq connect failed: no fan-out timing");
        return;
    }
    while let Ok(message) = socket.recv().await {
        let at = Instant::now();
        // The body is the hash in display order.
        let Some(Ok(mut hash)) = message.get(1).map(|b| Hash32::try_from(&b[..])) else {
            continue;
        };
        hash.reverse();
        if let Ok(mut tips) = stats.tips.lock() {
            tips.push((hash, at));
        }
    }
}

async fn mine_blocks(rpc: Rpc, address: String, count: u32, spacing: Duration) {
    for _ in 0..count {
        tokio::time::sleep(spacing).await;
        let mined: Result<Vec<String>, _> = rpc
            .call(
                "generatetoaddress",
                json!([1, address]),
                Duration::from_secs(30),
            )
            .await;
        if let Err(e) = mined {
            warn!(error = %e, "generatetoaddress failed");
        }
    }
}

/// A source address in 127.0.0.0/8 for miner `index` (127.0.0.1 upward, skipping .0 and .255).
fn source_address(index: usize) -> IpAddr {
    let n = index as u32;
    let (a, b, c) = ((n / (254 * 256)) % 254, (n / 254) % 256, n % 254 + 1);
    IpAddr::V4(Ipv4Addr::new(127, a as u8, b as u8, c as u8))
}

/// The connection itself failed (counted in `connect_failures`), as opposed to a miner that
/// connected and was dropped later.
#[derive(Debug, thiserror::Error)]
#[error("connect: {0}")]
struct ConnectFailed(std::io::Error);

async fn connect(
    index: usize,
    target: SocketAddr,
    args: &LoadgenArgs,
    stats: &Stats,
) -> Result<TcpStream> {
    let attempt = async {
        // Out of descriptors shows up here, before any packet: still a failed connection.
        let socket = TcpSocket::new_v4()?;
        if args.spread_sources && target.ip().is_loopback() {
            socket.bind(SocketAddr::new(source_address(index), 0))?;
        }
        socket.connect(target).await
    };
    let stream = match attempt.await {
        Ok(stream) => stream,
        Err(e) => {
            stats.failed_connects.fetch_add(1, Ordering::Relaxed);
            return Err(ConnectFailed(e).into());
        }
    };
    stats.connected.fetch_add(1, Ordering::Relaxed);
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// QUIC connections shared by groups of SV2 miners (`--quic-streams` each), opened on first use.
struct QuicConnections {
    endpoint: quinn::Endpoint,
    connections: Vec<tokio::sync::OnceCell<quinn::Connection>>,
}

impl QuicConnections {
    fn new(count: usize) -> Result<QuicConnections> {
        Ok(QuicConnections {
            endpoint: crate::quic::client_endpoint()?,
            connections: (0..count).map(|_| tokio::sync::OnceCell::new()).collect(),
        })
    }

    /// A new stream on connection `group` (connecting it first if needed).
    async fn open_stream(
        &self,
        group: usize,
        target: SocketAddr,
        stats: &Stats,
    ) -> Result<(quinn::SendStream, quinn::RecvStream)> {
        let cell = self
            .connections
            .get(group)
            .ok_or_else(|| anyhow::anyhow!("no QUIC connection {group}"))?;
        let connection = cell
            .get_or_try_init(|| async {
                let connecting = self
                    .endpoint
                    .connect(target, "quarry")
                    .map_err(|e| ConnectFailed(std::io::Error::other(e)))?;
                connecting
                    .await
                    .map_err(|e| ConnectFailed(std::io::Error::other(e)))
            })
            .await;
        let connection = match connection {
            Ok(connection) => connection,
            Err(e) => {
                stats.failed_connects.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        let pair = connection.open_bi().await?;
        stats.connected.fetch_add(1, Ordering::Relaxed);
        Ok(pair)
    }
}

/// When a miner submits: `rate` per second, spread over the interval across miners, from the
/// start signal until the end of the run; then it waits up to 5 s for its last answers.
struct Pacer {
    interval: Option<Duration>,
    offset: Duration,
    /// The run's end, once every miner has work (`None` until then: nothing is submitted).
    start: tokio::sync::watch::Receiver<Option<Instant>>,
    window: Option<Window>,
}

struct Window {
    next: tokio::time::Instant,
    submit_until: tokio::time::Instant,
    answer_until: tokio::time::Instant,
}

impl Pacer {
    fn new(index: usize, rate: f64, start: tokio::sync::watch::Receiver<Option<Instant>>) -> Self {
        let interval = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
        let offset = interval.map_or(Duration::ZERO, |i| i.mul_f64((index % 997) as f64 / 997.0));
        Pacer {
            interval,
            offset,
            start,
            window: None,
        }
    }

    /// Opens the submit window once the start signal has come; call before each wait.
    fn poll_start(&mut self) {
        if self.window.is_some() {
            return;
        }
        if let Some(until) = *self.start.borrow_and_update() {
            let submit_until = tokio::time::Instant::from_std(until);
            self.window = Some(Window {
                next: tokio::time::Instant::now() + self.offset,
                submit_until,
                answer_until: submit_until + Duration::from_secs(5),
            });
        }
    }

    /// The start signal, to wait on while the window is not open.
    fn signal(&self) -> Option<tokio::sync::watch::Receiver<Option<Instant>>> {
        self.window.is_none().then(|| self.start.clone())
    }

    /// Whether the miner is done, given whether answers are still outstanding.
    fn done(&self, waiting: bool) -> bool {
        let Some(window) = &self.window else {
            return false;
        };
        let now = tokio::time::Instant::now();
        (now >= window.submit_until && !waiting) || now >= window.answer_until
    }

    /// Stops waiting for answers (the pool asked the miner to reconnect).
    fn stop(&mut self) {
        if let Some(window) = &mut self.window {
            window.answer_until = tokio::time::Instant::now();
        }
    }

    fn wake(&self) -> tokio::time::Instant {
        let Some(window) = &self.window else {
            return tokio::time::Instant::now() + Duration::from_secs(3600);
        };
        if tokio::time::Instant::now() >= window.submit_until {
            return window.answer_until;
        }
        match self.interval {
            Some(_) => window.next.min(window.submit_until),
            None => window.submit_until,
        }
    }

    /// Called on waking: whether a share is due now.
    fn due(&mut self) -> bool {
        let (Some(interval), Some(window)) = (self.interval, &mut self.window) else {
            return false;
        };
        if tokio::time::Instant::now() >= window.submit_until {
            return false;
        }
        window.next += interval;
        true
    }
}

/// The start signal's next change (never, when there is none to wait for).
async fn changed(
    signal: &mut Option<tokio::sync::watch::Receiver<Option<Instant>>>,
) -> Option<Result<(), tokio::sync::watch::error::RecvError>> {
    match signal {
        Some(receiver) => Some(receiver.changed().await),
        None => std::future::pending().await,
    }
}

/// Whether another share may go out under `--max-shares`.
fn under_cap(args: &LoadgenArgs, stats: &Stats) -> bool {
    args.max_shares == 0 || stats.sent.load(Ordering::Relaxed) < args.max_shares
}

/// Headers hashed per submit attempt. The search runs on the runtime's threads, so it is kept
/// short (about a quarter second in a release build): a pool whose share difficulty is too
/// high for that shows up as `hash_budget_misses`, not as a stalled load generator.
const HASH_BUDGET: u32 = 1 << 20;

/// A nonce from `start` whose header meets the share target, and not the network target
/// when the share target is easier (so the chain stays still under the measurement).
fn find_nonce(
    start: u32,
    share: &Target,
    network: &Target,
    hash: impl Fn(u32) -> Hash32,
) -> Option<u32> {
    let avoid_blocks = network.difficulty() > share.difficulty();
    (start..start.saturating_add(HASH_BUDGET)).find(|n| {
        let h = hash(*n);
        share.is_met_by(&h) && !(avoid_blocks && network.is_met_by(&h))
    })
}

struct Pending {
    id: u64,
    sent: Instant,
    /// The tip the share's job built on.
    prev_hash: Hash32,
}

/// What one simulated V1 miner knows: the library's client, the job it mines and its shares
/// in flight.
struct V1Miner {
    client: Client,
    work: Option<Box<V1Work>>,
    /// Submits not answered yet.
    pending: Vec<Pending>,
}

impl V1Miner {
    /// Acts on what the client heard from the pool.
    fn on_events(&mut self, stats: &Stats, read_at: Instant) -> Result<()> {
        while let Some(event) = self.client.poll_event() {
            match event {
                V1Event::Work(work) => {
                    stats.notifies.fetch_add(1, Ordering::Relaxed);
                    if self.work.as_ref().map(|w| w.job.prev_hash) != Some(work.job.prev_hash) {
                        stats.work_on(work.job.prev_hash, read_at);
                    }
                    if self.work.is_none() {
                        stats.ready.fetch_add(1, Ordering::Relaxed);
                    }
                    self.work = Some(work);
                }
                V1Event::Answered { id, outcome } => {
                    let Some(at) = self.pending.iter().position(|p| p.id == id) else {
                        continue;
                    };
                    let share = self.pending.swap_remove(at);
                    stats.answered(share.sent);
                    let tip = self.work.as_ref().map(|w| w.job.prev_hash);
                    let answer = match outcome {
                        Ok(()) => Answer::Accepted,
                        Err(rejection) if rejection.is_stale() => Answer::Stale,
                        Err(rejection) => Answer::Rejected(rejection.reason),
                    };
                    match answer.superseded(tip != Some(share.prev_hash)) {
                        Answer::Accepted => {
                            stats.accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Answer::Stale => {
                            stats.stale.fetch_add(1, Ordering::Relaxed);
                        }
                        Answer::Rejected(reason) => stats.rejected(reason),
                    }
                }
                V1Event::Subscribed { .. } | V1Event::Authorized | V1Event::Reconnect { .. } => {}
            }
        }
        match self.client.close_reason() {
            Some(error @ ClientError::Authorize(_)) => {
                stats.unauthorized.fetch_add(1, Ordering::Relaxed);
                stats.rejected_sample(error.to_string());
                anyhow::bail!("{error}")
            }
            Some(error) => anyhow::bail!("{error}"),
            None => Ok(()),
        }
    }
}

/// What a pool said to one `mining.submit`.
#[derive(Debug, PartialEq)]
enum Answer {
    Accepted,
    /// The job was gone: a new block moved the tip while the share was in flight.
    Stale,
    Rejected(String),
}

impl Answer {
    /// A rejection naming the job, for a share whose job a new tip replaced before the answer
    /// came: the job was gone, so the share was stale. Pools that drop old jobs outright
    /// (SRI's `pool_sv2` answers `invalid-job-id`) say it this way.
    fn superseded(self, tip_moved: bool) -> Answer {
        match self {
            Answer::Rejected(reason)
                if tip_moved && reason.to_ascii_lowercase().contains("job") =>
            {
                Answer::Stale
            }
            other => other,
        }
    }
}

async fn miner_v1(
    index: usize,
    target: SocketAddr,
    tls: Option<&crate::tls::ClientTls>,
    args: &LoadgenArgs,
    stats: &Stats,
    start: tokio::sync::watch::Receiver<Option<Instant>>,
) -> Result<()> {
    let stream = connect(index, target, args, stats).await?;
    let mut stream = crate::tls::ClientStream::connect(stream, tls)
        .await
        .context("TLS handshake")?;
    let mut buf = vec![0u8; 4096];
    let mut miner = V1Miner {
        client: Client::new(ClientConfig {
            user: args.username(index),
            password: args.password.clone(),
            agent: "quarry-loadgen".into(),
            version_rolling: None,
        }),
        work: None,
        pending: Vec::new(),
    };
    let mut counter = index as u64 * 1_000_003;
    let mut pacer = Pacer::new(index, args.rate, start);
    let mut ended = None;
    loop {
        let mut out = String::new();
        while let Some(line) = miner.client.poll_transmit() {
            out.push_str(&line);
        }
        if !out.is_empty() {
            stream.write_all(out.as_bytes()).await?;
            stats
                .bytes_out
                .fetch_add(out.len() as u64, Ordering::Relaxed);
        }
        pacer.poll_start();
        if pacer.done(!miner.pending.is_empty()) {
            break;
        }
        let flood_until = match args.in_flight {
            0 => None,
            _ => *pacer.start.borrow(),
        };
        if let Some(until) = flood_until {
            return flood_v1(index, &mut stream, &mut miner, args, stats, until).await;
        }
        let mut signal = pacer.signal();
        tokio::select! {
            Some(Ok(())) = changed(&mut signal) => {}
            read_result = stream.read(&mut buf) => {
                let n = match read_result {
                    Ok(0) => {
                        ended = Some(anyhow::anyhow!("the pool closed the connection"));
                        break;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        ended = Some(e.into());
                        break;
                    }
                };
                // Timestamped before parsing, so our own parsing does not count as fan-out.
                let read_at = Instant::now();
                stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                miner.client.handle_bytes(&buf[..n]);
                miner.on_events(stats, read_at)?;
            }
            _ = tokio::time::sleep_until(pacer.wake()) => {
                if !pacer.due() || !under_cap(args, stats) {
                    continue;
                }
                let Some(work) = &miner.work else { continue };
                let job = &work.job;
                counter += 1;
                let mut extranonce2 = counter.to_le_bytes()[..work.extranonce2_len.min(8)].to_vec();
                extranonce2.resize(work.extranonce2_len, 0);
                let root = job.merkle_root(&work.extranonce1, &extranonce2);
                let Some(nonce) = find_nonce(0, &work.target, &Target::from_compact(job.bits), |n| {
                    sha256d_80(&header_bytes(job.version, &job.prev_hash, &root, job.ntime, job.bits, n))
                }) else {
                    stats.hash_budget_misses.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let (job_id, ntime, prev_hash) = (job.job_id.clone(), job.ntime, job.prev_hash);
                let id = miner.client.submit(&job_id, &extranonce2, ntime, nonce, None);
                miner.pending.push(Pending { id, sent: Instant::now(), prev_hash });
                stats.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    stats
        .unanswered
        .fetch_add(miner.pending.len() as u64, Ordering::Relaxed);
    ended.map_or(Ok(()), Err)
}

/// `--in-flight`: keeps that many submits with random nonces outstanding until `until`, then
/// waits up to 5 s for the last answers. Lines are written and answers read without the
/// library client's JSON (the load generator shares the pool's cores): an answer is matched by
/// its `"id"` and is accepted when it says `"result":true`; notifications still go through the
/// client, so the miner follows new jobs.
async fn flood_v1(
    index: usize,
    stream: &mut crate::tls::ClientStream,
    miner: &mut V1Miner,
    args: &LoadgenArgs,
    stats: &Stats,
    until: Instant,
) -> Result<()> {
    use std::fmt::Write as _;
    let user = args.username(index);
    let mut reader = quarry_stratum::v1::codec::LineReader::<
        { quarry_stratum::v1::codec::MAX_POOL_LINE_LEN },
    >::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = String::new();
    let mut outstanding: Vec<(u64, Instant)> = Vec::new();
    let mut latencies = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (index as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let (mut next_id, mut counter) = (1u64 << 32, 0u64);
    let mut header: Option<(String, String, [u8; 80])> = None;
    let mut last_answer = None;
    let (mut sent, mut accepted, mut rejected, mut stale) = (0u64, 0u64, 0u64, 0u64);
    let answer_until = until + Duration::from_secs(5);
    let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(until));
    tokio::pin!(sleep);
    let result = loop {
        let now = Instant::now();
        if now < until {
            if let Some(work) = &miner.work {
                let job = &work.job;
                if header.as_ref().map(|h| &h.0) != Some(&job.job_id) {
                    // One extranonce2 per job: shares differ by their random nonce.
                    counter += 1;
                    let mut extranonce2 = counter.to_le_bytes().to_vec();
                    extranonce2.resize(work.extranonce2_len, 0);
                    let root = job.merkle_root(&work.extranonce1, &extranonce2);
                    let bytes =
                        header_bytes(job.version, &job.prev_hash, &root, job.ntime, job.bits, 0);
                    header = Some((job.job_id.clone(), hex::encode(&extranonce2), bytes));
                }
                let Some((job_id, extranonce2, bytes)) = &mut header else {
                    continue;
                };
                let network = Target::from_compact(job.bits);
                while outstanding.len() < args.in_flight as usize {
                    // A nonce whose header misses the network target: on regtest about half of
                    // them meet it, and those would be blocks, not rejections.
                    let nonce = loop {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let nonce = rng as u32;
                        bytes[76..80].copy_from_slice(&nonce.to_le_bytes());
                        if !network.is_met_by(&sha256d_80(bytes)) {
                            break nonce;
                        }
                    };
                    let _ = writeln!(
                        out,
                        "{{\"id\":{next_id},\"method\":\"mining.submit\",\"params\":[\"{user}\",\"{job_id}\",\"{extranonce2}\",\"{:08x}\",\"{nonce:08x}\"]}}",
                        job.ntime,
                    );
                    outstanding.push((next_id, now));
                    next_id += 1;
                    sent += 1;
                }
            }
        } else if outstanding.is_empty() || now >= answer_until {
            break Ok(());
        }
        if !out.is_empty() {
            if let Err(e) = stream.write_all(out.as_bytes()).await {
                break Err(e.into());
            }
            stats
                .bytes_out
                .fetch_add(out.len() as u64, Ordering::Relaxed);
            out.clear();
        }
        let wake = tokio::time::Instant::from_std(if now < until { until } else { answer_until });
        if sleep.deadline() != wake {
            // One timer for the whole run, moved once: not a timer entry per read.
            sleep.as_mut().reset(wake);
        }
        let n = tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) => break Err(anyhow::anyhow!("the pool closed the connection")),
                Ok(n) => n,
                Err(e) => break Err(e.into()),
            },
            _ = sleep.as_mut() => continue,
        };
        let read_at = Instant::now();
        stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        if reader.push(&buf[..n]).is_err() {
            break Err(anyhow::anyhow!("line too long from the pool"));
        }
        let mut notifications = Vec::new();
        while let Some(line) = reader.next_line() {
            let Ok(line) = line else {
                break;
            };
            if contains(line, b"\"method\"") {
                notifications.extend_from_slice(line);
                notifications.push(b'\n');
                continue;
            }
            let Some(id) = answer_id(line) else { continue };
            let Some(at) = outstanding.iter().position(|(sent, _)| *sent == id) else {
                continue;
            };
            let (_, sent_at) = outstanding.swap_remove(at);
            last_answer = Some(read_at);
            latencies.push(
                read_at
                    .duration_since(sent_at)
                    .as_micros()
                    .min(u128::from(u32::MAX)) as u32,
            );
            if contains(line, b"\"result\":true") {
                accepted += 1;
            } else if contains(line, b"\"error\":[21,") {
                stale += 1;
            } else {
                rejected += 1;
                if rejected == 1 {
                    stats.rejected_sample(String::from_utf8_lossy(line).into_owned());
                }
            }
        }
        if !notifications.is_empty() {
            miner.client.handle_bytes(&notifications);
            if let Err(e) = miner.on_events(stats, read_at) {
                break Err(e);
            }
        }
    };
    if let Some(at) = last_answer {
        stats.answer_at(at);
    }
    stats.sent.fetch_add(sent, Ordering::Relaxed);
    stats.accepted.fetch_add(accepted, Ordering::Relaxed);
    stats.rejected.fetch_add(rejected, Ordering::Relaxed);
    stats.stale.fetch_add(stale, Ordering::Relaxed);
    stats
        .unanswered
        .fetch_add(outstanding.len() as u64, Ordering::Relaxed);
    if let Ok(mut all) = stats.latencies_us.lock() {
        all.extend_from_slice(&latencies);
    }
    result
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The integer id of an answer line, found without parsing the JSON.
fn answer_id(line: &[u8]) -> Option<u64> {
    let at = line.windows(5).position(|w| w == b"\"id\":")? + 5;
    let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&line[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// One SV2 miner: Noise handshake pinned to the authority key, a standard channel, shares.
async fn miner_v2(
    index: usize,
    target: SocketAddr,
    args: &LoadgenArgs,
    stats: &Stats,
    authority: &[u8; 32],
    start: tokio::sync::watch::Receiver<Option<Instant>>,
    quic: Option<&QuicConnections>,
) -> Result<()> {
    let (mut read, mut write): (
        Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    ) = match quic {
        Some(quic) => {
            let group = index / args.quic_streams.max(1);
            let (send, recv) = quic.open_stream(group, target, stats).await?;
            (Box::new(recv), Box::new(send))
        }
        None => {
            let (read, write) = connect(index, target, args, stats).await?.into_split();
            (Box::new(read), Box::new(write))
        }
    };
    let user = args.username(index);
    let mut client = MinerClient::new(
        authority,
        &user,
        args.hashrate,
        (target.ip().to_string(), target.port()),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut share_target = Target::MAX;
    let mut work: Option<HeaderWork> = None;
    let mut next_nonce = 0u32;
    let mut pending: PendingShares = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut read_at = Instant::now();
    let mut pacer = Pacer::new(index, args.rate, start);
    let mut ended = None;
    loop {
        if let Some(bytes) = client.poll_transmit() {
            write.write_all(&bytes).await?;
            stats
                .bytes_out
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        while let Some(event) = client.poll_event() {
            match event {
                ClientEvent::ChannelOpened { target, .. } | ClientEvent::Target(target) => {
                    share_target = Target::from_le_bytes(target);
                }
                ClientEvent::Work(new) => {
                    stats.notifies.fetch_add(1, Ordering::Relaxed);
                    if work.as_ref().map(|w| w.prev_hash) != Some(new.prev_hash) {
                        stats.work_on(new.prev_hash, read_at);
                    }
                    next_nonce = 0;
                    if work.is_none() {
                        stats.ready.fetch_add(1, Ordering::Relaxed);
                    }
                    work = Some(new);
                }
                ClientEvent::Accepted {
                    last_sequence_number,
                    ..
                } => sv2_accepted(&mut pending, last_sequence_number, stats),
                ClientEvent::Rejected {
                    sequence_number,
                    code,
                } => sv2_rejected(&mut pending, sequence_number, code, work.as_ref(), stats),
                ClientEvent::Reconnect { .. } => pacer.stop(),
            }
        }
        if let Some(reason) = client.close_reason() {
            stats
                .unanswered
                .fetch_add(pending.len() as u64, Ordering::Relaxed);
            anyhow::bail!("{reason}");
        }
        pacer.poll_start();
        if pacer.done(!pending.is_empty()) {
            break;
        }
        let mut signal = pacer.signal();
        tokio::select! {
            Some(Ok(())) = changed(&mut signal) => {}
            read_result = read.read(&mut buf) => {
                let n = match read_result {
                    Ok(0) => {
                        ended = Some(anyhow::anyhow!("the pool closed the connection"));
                        break;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        ended = Some(e.into());
                        break;
                    }
                };
                read_at = Instant::now();
                stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                client.handle_bytes(&buf[..n], crate::miner::now_secs());
            }
            _ = tokio::time::sleep_until(pacer.wake()) => {
                if !pacer.due() || !under_cap(args, stats) {
                    continue;
                }
                let Some(job) = &work else { continue };
                let Some(nonce) = find_nonce(next_nonce, &share_target, &Target::from_compact(job.nbits), |n| {
                    sha256d_80(&header_bytes(job.version, &job.prev_hash, &job.merkle_root, job.ntime, job.nbits, n))
                }) else {
                    // The next attempt searches on from here.
                    next_nonce = next_nonce.wrapping_add(HASH_BUDGET);
                    stats.hash_budget_misses.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                // Each header once: the next search starts past this nonce.
                next_nonce = nonce.wrapping_add(1);
                if let Some(sequence) = client.submit(job.job_id, nonce, job.ntime, job.version) {
                    pending.push((sequence, Instant::now(), job.prev_hash));
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    stats
        .unanswered
        .fetch_add(pending.len() as u64, Ordering::Relaxed);
    ended.map_or(Ok(()), Err)
}

/// SV2 shares waiting for an answer: sequence number, when it was sent, the tip its job built on.
type PendingShares = Vec<(u32, Instant, Hash32)>;

/// SubmitShares.Success: every pending share up to `last_sequence_number` is accepted.
fn sv2_accepted(pending: &mut PendingShares, last_sequence_number: u32, stats: &Stats) {
    pending.retain(|&(sequence, sent, _)| {
        if sequence > last_sequence_number {
            return true;
        }
        stats.answered(sent);
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        false
    });
}

/// SubmitShares.Error for one share: stale (also a job error after the tip moved) or rejected.
fn sv2_rejected(
    pending: &mut PendingShares,
    sequence_number: u32,
    code: String,
    work: Option<&HeaderWork>,
    stats: &Stats,
) {
    let Some(at) = pending.iter().position(|p| p.0 == sequence_number) else {
        return;
    };
    let (_, sent, prev_hash) = pending.swap_remove(at);
    stats.answered(sent);
    let answer = match code == "stale-share" {
        true => Answer::Stale,
        false => Answer::Rejected(code),
    };
    let tip = work.map(|w| w.prev_hash);
    match answer.superseded(tip != Some(prev_hash)) {
        Answer::Stale => {
            stats.stale.fetch_add(1, Ordering::Relaxed);
        }
        Answer::Rejected(code) => stats.rejected(code),
        Answer::Accepted => {}
    }
}

/// One channel of [`channels_v2`].
struct Lane {
    channel_id: u32,
    target: Target,
    /// Jobs sent for a tip not announced yet, by id.
    future: HashMap<u32, (u32, [u8; 32])>,
    work: Option<HeaderWork>,
    next_nonce: u32,
    next_sequence: u32,
    pending: PendingShares,
}

/// `count` miners as standard channels on one SV2 connection over TCP: one Noise session, one
/// SetupConnection, then a channel each. Shares go out round-robin at `count × --rate`.
#[allow(clippy::too_many_lines)]
async fn channels_v2(
    first: usize,
    count: usize,
    target: SocketAddr,
    args: &LoadgenArgs,
    stats: &Stats,
    authority: &[u8; 32],
    start: tokio::sync::watch::Receiver<Option<Instant>>,
) -> Result<()> {
    use quarry_stratum::v2::message::{flags, Message, Protocol, SetupConnection};
    use quarry_stratum::v2::noise::{InitiatorHandshake, ACT2_LEN};

    let stream = connect(first, target, args, stats).await?;
    let (mut read, mut write) = stream.into_split();
    let mut handshake =
        InitiatorHandshake::new(authority, 1 << 20).map_err(|e| anyhow::anyhow!("{e}"))?;
    let act1 = handshake.start().map_err(|e| anyhow::anyhow!("{e}"))?;
    write.write_all(&act1).await?;
    let mut act2 = [0u8; ACT2_LEN];
    read.read_exact(&mut act2).await?;
    let mut transport = handshake
        .finish(&act2, crate::miner::now_secs())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = Vec::new();
    let mut send = |message: &Message, out: &mut Vec<u8>| {
        transport.encrypt(&message.to_frame_bytes(), out);
    };
    send(
        &Message::SetupConnection(SetupConnection {
            protocol: Protocol::Mining,
            min_version: 2,
            max_version: 2,
            flags: flags::REQUIRES_STANDARD_JOBS,
            endpoint_host: target.ip().to_string(),
            endpoint_port: target.port(),
            vendor: "quarry-loadgen".into(),
            hardware_version: String::new(),
            firmware: String::new(),
            device_id: String::new(),
        }),
        &mut out,
    );
    for i in 0..count {
        send(
            &Message::OpenStandardMiningChannel {
                request_id: i as u32,
                user_identity: args.username(first + i),
                nominal_hash_rate: args.hashrate,
                max_target: [0xff; 32],
            },
            &mut out,
        );
    }
    write.write_all(&out).await?;
    let mut lanes: Vec<Option<Lane>> = (0..count).map(|_| None).collect();
    let mut by_channel: HashMap<u32, usize> = HashMap::new();
    let mut pacer = Pacer::new(first, args.rate * count as f64, start);
    let mut turn = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let mut read_at = Instant::now();
    let mut ended = None;
    drop(out);
    loop {
        while let Some(frame) = transport.next_frame().map_err(|e| anyhow::anyhow!("{e}"))? {
            let message = Message::decode(&frame).map_err(|e| anyhow::anyhow!("{e}"))?;
            match message {
                Message::OpenStandardMiningChannelSuccess {
                    request_id,
                    channel_id,
                    target,
                    ..
                } => {
                    let i = request_id as usize;
                    if i < count {
                        by_channel.insert(channel_id, i);
                        lanes[i] = Some(Lane {
                            channel_id,
                            target: Target::from_le_bytes(target),
                            future: HashMap::new(),
                            work: None,
                            next_nonce: 0,
                            next_sequence: 0,
                            pending: Vec::new(),
                        });
                    }
                }
                Message::OpenMiningChannelError { error_code, .. } => {
                    anyhow::bail!("channel refused: {error_code}")
                }
                Message::NewMiningJob {
                    channel_id,
                    job_id,
                    min_ntime,
                    version,
                    merkle_root,
                } => {
                    let Some(l) = by_channel.get(&channel_id).and_then(|&i| lanes[i].as_mut())
                    else {
                        continue;
                    };
                    match (min_ntime, &l.work) {
                        (Some(ntime), Some(work)) => {
                            stats.notifies.fetch_add(1, Ordering::Relaxed);
                            l.work = Some(HeaderWork {
                                job_id,
                                version,
                                merkle_root,
                                ntime,
                                ..*work
                            });
                            l.next_nonce = 0;
                        }
                        _ => {
                            l.future.insert(job_id, (version, merkle_root));
                        }
                    }
                }
                Message::SetNewPrevHash {
                    channel_id,
                    job_id,
                    prev_hash,
                    min_ntime,
                    nbits,
                } => {
                    let Some(l) = by_channel.get(&channel_id).and_then(|&i| lanes[i].as_mut())
                    else {
                        continue;
                    };
                    let Some((version, merkle_root)) = l.future.remove(&job_id) else {
                        continue;
                    };
                    l.future.clear();
                    stats.notifies.fetch_add(1, Ordering::Relaxed);
                    if l.work.as_ref().map(|w| w.prev_hash) != Some(prev_hash) {
                        stats.work_on(prev_hash, read_at);
                    }
                    if l.work.is_none() {
                        stats.ready.fetch_add(1, Ordering::Relaxed);
                    }
                    l.work = Some(HeaderWork {
                        job_id,
                        version,
                        prev_hash,
                        merkle_root,
                        ntime: min_ntime,
                        nbits,
                    });
                    l.next_nonce = 0;
                }
                Message::SetTarget {
                    channel_id,
                    maximum_target,
                } => {
                    if let Some(l) = by_channel.get(&channel_id).and_then(|&i| lanes[i].as_mut()) {
                        l.target = Target::from_le_bytes(maximum_target);
                    }
                }
                Message::SubmitSharesSuccess {
                    channel_id,
                    last_sequence_number,
                    ..
                } => {
                    if let Some(l) = by_channel.get(&channel_id).and_then(|&i| lanes[i].as_mut()) {
                        sv2_accepted(&mut l.pending, last_sequence_number, stats);
                    }
                }
                Message::SubmitSharesError {
                    channel_id,
                    sequence_number,
                    error_code,
                } => {
                    if let Some(l) = by_channel.get(&channel_id).and_then(|&i| lanes[i].as_mut()) {
                        sv2_rejected(
                            &mut l.pending,
                            sequence_number,
                            error_code,
                            l.work.as_ref(),
                            stats,
                        );
                    }
                }
                Message::SetupConnectionError { error_code, .. } => {
                    anyhow::bail!("setup refused: {error_code}")
                }
                Message::Reconnect { .. } => pacer.stop(),
                _ => {}
            }
        }
        let waiting = lanes.iter().flatten().any(|l| !l.pending.is_empty());
        pacer.poll_start();
        if pacer.done(waiting) {
            break;
        }
        let mut signal = pacer.signal();
        tokio::select! {
            Some(Ok(())) = changed(&mut signal) => {}
            read_result = read.read(&mut buf) => {
                let n = match read_result {
                    Ok(0) => {
                        ended = Some(anyhow::anyhow!("the pool closed the connection"));
                        break;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        ended = Some(e.into());
                        break;
                    }
                };
                read_at = Instant::now();
                stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                transport.push(&buf[..n]);
            }
            _ = tokio::time::sleep_until(pacer.wake()) => {
                if !pacer.due() || !under_cap(args, stats) {
                    continue;
                }
                turn = (turn + 1) % count;
                let Some(l) = lanes[turn].as_mut() else { continue };
                let Some(job) = &l.work else { continue };
                let Some(nonce) = find_nonce(l.next_nonce, &l.target, &Target::from_compact(job.nbits), |n| {
                    sha256d_80(&header_bytes(job.version, &job.prev_hash, &job.merkle_root, job.ntime, job.nbits, n))
                }) else {
                    l.next_nonce = l.next_nonce.wrapping_add(HASH_BUDGET);
                    stats.hash_budget_misses.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                l.next_nonce = nonce.wrapping_add(1);
                let sequence_number = l.next_sequence;
                l.next_sequence = l.next_sequence.wrapping_add(1);
                let submit = Message::SubmitSharesStandard {
                    channel_id: l.channel_id,
                    sequence_number,
                    job_id: job.job_id,
                    nonce,
                    ntime: job.ntime,
                    version: job.version,
                };
                l.pending.push((sequence_number, Instant::now(), job.prev_hash));
                stats.sent.fetch_add(1, Ordering::Relaxed);
                let mut bytes = Vec::new();
                transport.encrypt(&submit.to_frame_bytes(), &mut bytes);
                stats.bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                write.write_all(&bytes).await?;
            }
        }
    }
    let unanswered: usize = lanes.iter().flatten().map(|l| l.pending.len()).sum();
    stats
        .unanswered
        .fetch_add(unanswered as u64, Ordering::Relaxed);
    ended.map_or(Ok(()), Err)
}

/// kHeavyHash nonces tried per Kaspa submit attempt: a hash costs microseconds, so far fewer
/// than `HASH_BUDGET` keep each search to a few milliseconds on the runtime's threads.
const KASPA_HASH_BUDGET: u64 = 1 << 14;

/// One Kaspa miner: subscribe with `--agent`, authorize, shares in the dialect's 3-param form
/// with the nonce's extranonce bytes left for the pool to add, as ASICs send them.
async fn miner_kaspa(
    index: usize,
    target: SocketAddr,
    args: &LoadgenArgs,
    stats: &Stats,
    start: tokio::sync::watch::Receiver<Option<Instant>>,
) -> Result<()> {
    use kaspa_math::Uint256;
    use quarry_kaspa::work::MinerJob;
    use tokio::io::AsyncBufReadExt;
    const MAX_LINE: u64 = 64 * 1024;
    let stream = connect(index, target, args, stats).await?;
    let (read, mut write) = stream.into_split();
    // Bounded per line: the limit is reset after each line.
    let mut reader = tokio::io::BufReader::new(read).take(MAX_LINE);
    let user = args.username(index);
    let line = |value: Value| format!("{value}\n");
    let hello = [
        line(json!({"id": 1, "method": "mining.subscribe", "params": [args.agent, "EthereumStratum/1.0.0"]})),
        line(json!({"id": 2, "method": "mining.authorize", "params": [user, args.password]})),
    ]
    .concat();
    write.write_all(hello.as_bytes()).await?;
    stats
        .bytes_out
        .fetch_add(hello.len() as u64, Ordering::Relaxed);
    let mut extranonce: Vec<u8> = Vec::new();
    let mut share_target = Uint256::MAX;
    let mut work: Option<(String, MinerJob)> = None;
    let mut pending: Vec<Pending> = Vec::new();
    let mut next_id = 3u64;
    let mut counter = index as u64 * 1_000_003;
    let mut pacer = Pacer::new(index, args.rate, start);
    let mut buf = Vec::new();
    let mut ended = None;
    loop {
        pacer.poll_start();
        if pacer.done(!pending.is_empty()) {
            break;
        }
        let mut signal = pacer.signal();
        tokio::select! {
            Some(Ok(())) = changed(&mut signal) => {}
            // A line cut short by another branch stays in `buf` and is read on next time.
            read_result = reader.read_until(b'\n', &mut buf) => {
                match read_result {
                    Ok(0) => {
                        ended = Some(match reader.limit() {
                            0 => anyhow::anyhow!("the pool sent a line over {MAX_LINE} bytes"),
                            _ => anyhow::anyhow!("the pool closed the connection"),
                        });
                        break;
                    }
                    Ok(n) => stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed),
                    Err(e) => {
                        ended = Some(e.into());
                        break;
                    }
                };
                if !buf.ends_with(b"\n") {
                    continue;
                }
                reader.set_limit(MAX_LINE);
                let parsed = serde_json::from_slice::<Value>(&buf);
                buf.clear();
                let Ok(message) = parsed else {
                    stats.rejected_sample("unreadable line from the pool".into());
                    continue;
                };
                match message["method"].as_str() {
                    Some("mining.set_extranonce") => {
                        extranonce = message["params"][0].as_str().and_then(|h| hex::decode(h).ok()).unwrap_or_default();
                    }
                    Some("mining.set_difficulty") => {
                        if let Some(d) = message["params"][0].as_f64().and_then(quarry_work::Difficulty::new) {
                            share_target = quarry_kaspa::target::target_for(d);
                        }
                    }
                    Some("mining.notify") => {
                        if let Some((job_id, pre_pow, timestamp)) = crate::kaspa::miner::parse_job(&message["params"]) {
                            stats.notifies.fetch_add(1, Ordering::Relaxed);
                            if work.is_none() {
                                stats.ready.fetch_add(1, Ordering::Relaxed);
                            }
                            work = Some((job_id, MinerJob::new(pre_pow, timestamp)));
                        }
                    }
                    Some(_) => {}
                    None => {
                        let id = message["id"].as_u64().unwrap_or(0);
                        if id == 1 && message["result"][0].is_null() {
                            // Bitmain's subscribe answer carries the extranonce.
                            if let Some(hex) = message["result"][1].as_str() {
                                extranonce = hex::decode(hex).unwrap_or_default();
                            }
                        }
                        if id == 2 && message["result"] != json!(true) {
                            stats.unauthorized.fetch_add(1, Ordering::Relaxed);
                            anyhow::bail!("authorization refused: {}", message["error"]);
                        }
                        let Some(at) = pending.iter().position(|p| p.id == id) else { continue };
                        let share = pending.swap_remove(at);
                        stats.answered(share.sent);
                        match (message["result"] == json!(true), message["error"][0].as_i64()) {
                            (true, _) => {
                                stats.accepted.fetch_add(1, Ordering::Relaxed);
                            }
                            (false, Some(21)) => {
                                stats.stale.fetch_add(1, Ordering::Relaxed);
                            }
                            (false, _) => stats.rejected(message["error"].to_string()),
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(pacer.wake()) => {
                if !pacer.due() || !under_cap(args, stats) {
                    continue;
                }
                let Some((job_id, job)) = &work else { continue };
                let free_bits = 64 - 8 * extranonce.len().min(3) as u32;
                let prefix = extranonce
                    .iter()
                    .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
                    .checked_shl(free_bits)
                    .unwrap_or(0);
                let mask = u64::MAX.checked_shr(64 - free_bits).unwrap_or(u64::MAX);
                let found = (counter..counter + KASPA_HASH_BUDGET)
                    .find(|low| job.pow(prefix | (low & mask)) <= share_target);
                let Some(low) = found else {
                    counter += KASPA_HASH_BUDGET;
                    stats.hash_budget_misses.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                counter = low + 1;
                let digits = (free_bits / 4) as usize;
                let submit = line(json!({"id": next_id, "method": "mining.submit",
                    "params": [user, job_id, format!("{:0digits$x}", low & mask)]}));
                write.write_all(submit.as_bytes()).await?;
                stats.bytes_out.fetch_add(submit.len() as u64, Ordering::Relaxed);
                pending.push(Pending { id: next_id, sent: Instant::now(), prev_hash: [0; 32] });
                next_id += 1;
                stats.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    stats
        .unanswered
        .fetch_add(pending.len() as u64, Ordering::Relaxed);
    ended.map_or(Ok(()), Err)
}

/// VmRSS of a process, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU seconds (user + system, every thread) a process has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here; USER_HZ is 100 on Linux.
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// What the run cost: the pool's RSS (KiB) before the miners and while they were connected,
/// and CPU seconds from the start of submitting to the last answer.
struct Usage {
    rss_before: Option<u64>,
    rss_during: Option<u64>,
    pool: Option<f64>,
    loadgen: Option<f64>,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[at]) / 1000.0
}

/// New block → work fan-out, over the tips the node announced after every miner connected.
fn fanout(stats: &Stats, ramped: Instant, held: u64) -> Value {
    let tips = stats.tips.lock().map(|t| t.clone()).unwrap_or_default();
    let arrivals = stats.arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    let mut per_tip = Vec::new();
    for (hash, announced) in tips.iter().filter(|(_, at)| *at > ramped) {
        let mut delays: Vec<u32> = arrivals
            .get(hash)
            .map(|a| {
                a.iter()
                    .map(|at| {
                        let delay = at.saturating_duration_since(*announced).as_micros();
                        delay.min(u128::from(u32::MAX)) as u32
                    })
                    .collect()
            })
            .unwrap_or_default();
        delays.sort_unstable();
        per_tip.push(json!({
            "block": quarry_work::hash::to_display_hex(hash),
            "miners_notified": delays.len(),
            "p50_ms": percentile(&delays, 0.5),
            "last_ms": delays.last().map_or(0.0, |d| f64::from(*d) / 1000.0),
        }));
    }
    let lasts: Vec<f64> = per_tip
        .iter()
        .filter_map(|t| t["last_ms"].as_f64())
        .collect();
    json!({
        "blocks": per_tip.len(),
        "miners_held": held,
        "last_ms_max": lasts.iter().copied().fold(0.0, f64::max),
        "last_ms_mean": if lasts.is_empty() { 0.0 } else { lasts.iter().sum::<f64>() / lasts.len() as f64 },
        "per_block": per_tip,
    })
}

fn report(
    args: &LoadgenArgs,
    protocol: &str,
    stats: &Stats,
    held: u64,
    elapsed: f64,
    fanout: Value,
    cpu: Usage,
) {
    let (rss_before, rss_during) = (cpu.rss_before, cpu.rss_during);
    let mut latencies = stats
        .latencies_us
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    latencies.sort_unstable();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let sent = load(&stats.sent);
    let answered = load(&stats.accepted) + load(&stats.rejected) + load(&stats.stale);
    let per_share = |bytes: u64| {
        if sent == 0 {
            0.0
        } else {
            bytes as f64 / sent as f64
        }
    };
    let rss_per_connection = match (rss_before, rss_during) {
        (Some(before), Some(during)) if held > 0 => {
            Some(during.saturating_sub(before) as f64 * 1024.0 / held as f64)
        }
        _ => None,
    };
    let reasons = stats
        .reject_reasons
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    let out = json!({
        "protocol": protocol,
        "miners": args.miners,
        "connections_established": load(&stats.connected),
        "connections_held_at_ramp_end": held,
        "connect_failures": load(&stats.failed_connects),
        "seconds": elapsed,
        "shares_sent": sent,
        "accepted": load(&stats.accepted),
        "rejected": load(&stats.rejected),
        "stale": load(&stats.stale),
        "unanswered": load(&stats.unanswered),
        "unauthorized": load(&stats.unauthorized),
        "dropped": load(&stats.dropped),
        "hash_budget_misses": load(&stats.hash_budget_misses),
        "accepted_per_sec": load(&stats.accepted) as f64 / elapsed,
        "rejected_per_sec": load(&stats.rejected) as f64 / elapsed,
        "latency_ms": {
            "p50": percentile(&latencies, 0.5),
            "p99": percentile(&latencies, 0.99),
            "max": latencies.last().map(|v| f64::from(*v) / 1000.0).unwrap_or(0.0),
        },
        "bytes_sent_per_share": per_share(load(&stats.bytes_out)),
        "bytes_received_per_share": per_share(load(&stats.bytes_in)),
        "notifies": load(&stats.notifies),
        "pool_rss_kib_before": rss_before,
        "pool_rss_kib_during": rss_during,
        "pool_rss_bytes_per_connection": rss_per_connection,
        "pool_cpu_seconds": cpu.pool,
        "loadgen_cpu_seconds": cpu.loadgen,
        "pool_cpu_us_per_answer": cpu.pool.filter(|_| answered > 0).map(|s| s * 1e6 / answered as f64),
        "loadgen_cpu_us_per_answer": cpu.loadgen.filter(|_| answered > 0).map(|s| s * 1e6 / answered as f64),
        "reject_samples": reasons,
        "fanout": fanout,
    });
    if args.json {
        println!("{out}");
        return;
    }
    println!(
        "connections: {} established, {} held, {} failed",
        out["connections_established"], held, out["connect_failures"]
    );
    println!(
        "shares: {sent} sent, {} accepted ({:.1}/s), {} rejected ({:.1}/s), {} stale, {} unanswered",
        out["accepted"],
        out["accepted_per_sec"].as_f64().unwrap_or(0.0),
        out["rejected"],
        out["rejected_per_sec"].as_f64().unwrap_or(0.0),
        out["stale"],
        out["unanswered"]
    );
    let misses = load(&stats.hash_budget_misses);
    if misses > 0 {
        println!(
            "{misses} submit attempts found no share within {HASH_BUDGET} hashes: the pool's share \
             difficulty is too high for simulated miners; lower its minimum difficulty"
        );
    }
    if load(&stats.dropped) > 0 {
        println!(
            "{} miners dropped before the end of the run (see reject_samples in --json)",
            out["dropped"]
        );
    }
    if load(&stats.unauthorized) > 0 {
        println!(
            "authorization refused for {} miners (see reject_samples in --json)",
            out["unauthorized"]
        );
    }
    println!(
        "submit latency ms: p50 {} p99 {} max {}",
        out["latency_ms"]["p50"], out["latency_ms"]["p99"], out["latency_ms"]["max"]
    );
    println!(
        "bytes per share: {:.0} sent, {:.0} received",
        out["bytes_sent_per_share"].as_f64().unwrap_or(0.0),
        out["bytes_received_per_share"].as_f64().unwrap_or(0.0)
    );
    if let (Some(pool), Some(own)) = (
        out["pool_cpu_us_per_answer"].as_f64(),
        out["loadgen_cpu_us_per_answer"].as_f64(),
    ) {
        println!(
            "CPU per answer: pool {pool:.2} us, load generator {own:.2} us ({:.2} s and {:.2} s over the run)",
            cpu.pool.unwrap_or(0.0),
            cpu.loadgen.unwrap_or(0.0)
        );
    }
    if let Some(rss) = rss_per_connection {
        println!("pool RSS per connection: {rss:.0} bytes");
    }
    let fanout = &out["fanout"];
    if fanout["blocks"].as_u64().unwrap_or(0) > 0 {
        println!(
            "new block -> last miner notified: {} blocks, last after {:.1} ms on average, {:.1} ms at worst",
            fanout["blocks"],
            fanout["last_ms_mean"].as_f64().unwrap_or(0.0),
            fanout["last_ms_max"].as_f64().unwrap_or(0.0)
        );
        for block in fanout["per_block"].as_array().into_iter().flatten() {
            println!(
                "  {}: {} miners notified, p50 {} ms, last {} ms",
                block["block"], block["miners_notified"], block["p50_ms"], block["last_ms"]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_error_after_the_tip_moved_is_stale_and_otherwise_a_rejection() {
        let invalid_job = || Answer::Rejected("invalid-job-id".into());
        assert_eq!(invalid_job().superseded(true), Answer::Stale);
        assert_eq!(invalid_job().superseded(false), invalid_job());
        // Only job errors: a bad share stays bad even if a block came meanwhile.
        let low = Answer::Rejected("difficulty-too-low".into());
        assert_eq!(
            low.superseded(true),
            Answer::Rejected("difficulty-too-low".into())
        );
        assert_eq!(Answer::Accepted.superseded(true), Answer::Accepted);
    }
}
