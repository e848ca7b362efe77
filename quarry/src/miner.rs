//! `quarry mine`: a multi-threaded SHA-256d CPU miner speaking Stratum V1 (with version rolling)
//! or Stratum V2 (a standard channel over Noise, pinned to the pool's authority key).
//!
//! The connection runs on tokio; hashing runs on plain threads that read the current work
//! through a generation counter and send found shares back over a channel.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use quarry_stratum::v1::{Client, ClientConfig, ClientEvent as V1Event, Notify};
use quarry_stratum::v2::client::{ClientEvent, HeaderWork, MinerClient};
use quarry_work::hash::{header_midstate, sha256d_header_tail};
use quarry_work::job::header_bytes;
use quarry_work::Target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::cli::MineArgs;

/// BIP320's general-purpose version bits.
const VERSION_ROLLING_MASK: u32 = 0x1fff_e000;

/// Work as the hashing threads see it.
#[derive(Debug, Clone)]
struct Work {
    job: WorkJob,
    share_target: Target,
    version_mask: u32,
}

#[derive(Debug, Clone)]
enum WorkJob {
    /// A V1 job: the thread rolls extranonce2 and rebuilds the merkle root.
    V1 {
        job: Notify,
        extranonce1: Vec<u8>,
        extranonce2_len: usize,
    },
    /// An SV2 standard-channel job: the merkle root is fixed; the thread rolls ntime.
    Header(HeaderWork),
}

/// A share found by a thread.
#[derive(Debug)]
struct Found {
    job_id: String,
    extranonce2: Vec<u8>,
    ntime: u32,
    nonce: u32,
    version: u32,
    is_block: bool,
}

struct Shared {
    work: RwLock<Option<Arc<Work>>>,
    generation: AtomicU64,
    /// Set after a block-level share: idle until new work (the tip is about to change).
    paused_generation: AtomicU64,
    stop: AtomicBool,
    hashes: AtomicU64,
}

/// Runs the miner until `--duration` passes (or forever), reconnecting on errors.
pub async fn run(args: MineArgs) -> Result<()> {
    let endpoint = parse_endpoint(&args.url, args.sv2, args.authority_pubkey.as_deref())?;
    let tls = endpoint.client_tls(args.tls_ca.as_deref())?;
    let transport = match (&endpoint.iroh, endpoint.quic) {
        (Some(iroh), _) => Transport::Iroh(iroh.clone()),
        (None, true) => Transport::Quic,
        (None, false) => Transport::Tcp,
    };
    let (address, authority) = (endpoint.address, endpoint.authority);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let shared = Arc::new(Shared {
        work: RwLock::new(None),
        generation: AtomicU64::new(0),
        paused_generation: AtomicU64::new(u64::MAX),
        stop: AtomicBool::new(false),
        hashes: AtomicU64::new(0),
    });
    let (found_tx, mut found_rx) = mpsc::channel::<Found>(1024);
    let mut handles = Vec::new();
    for index in 0..threads {
        let shared = Arc::clone(&shared);
        let found_tx = found_tx.clone();
        handles.push(std::thread::spawn(move || {
            hash_loop(index as u8, &shared, &found_tx)
        }));
    }
    info!(threads, pool = %address, user = %args.user, "mining");
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut totals = Totals::default();
    let mut target = address.clone();
    loop {
        let session = match &authority {
            Some(key) => {
                connect_and_mine_sv2(
                    &target,
                    &transport,
                    key,
                    &args,
                    threads,
                    &shared,
                    &mut found_rx,
                    &mut totals,
                    deadline,
                )
                .await
            }
            None => {
                connect_and_mine(
                    &target,
                    tls.as_ref(),
                    &args,
                    &shared,
                    &mut found_rx,
                    &mut totals,
                    deadline,
                )
                .await
            }
        };
        match session {
            Ok(Next::Done) => break,
            Ok(Next::Reconnect(to)) => {
                info!(to = %to, "pool asked to reconnect");
                target = to;
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "connection lost; reconnecting");
                *shared.work.write().unwrap_or_else(|p| p.into_inner()) = None;
                shared.generation.fetch_add(1, Ordering::SeqCst);
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    for handle in handles {
        let _ = handle.join();
    }
    info!(
        accepted = totals.accepted,
        rejected = totals.rejected,
        blocks = totals.blocks,
        hashes = shared.hashes.load(Ordering::Relaxed),
        "miner finished"
    );
    println!(
        "accepted={} rejected={} blocks={} submitted={}",
        totals.accepted, totals.rejected, totals.blocks, totals.submitted
    );
    Ok(())
}

#[derive(Default)]
struct Totals {
    submitted: u64,
    accepted: u64,
    rejected: u64,
    blocks: u64,
}

enum Next {
    Done,
    Reconnect(String),
}

async fn connect_and_mine(
    address: &str,
    tls: Option<&crate::tls::ClientTls>,
    args: &MineArgs,
    shared: &Arc<Shared>,
    found_rx: &mut mpsc::Receiver<Found>,
    totals: &mut Totals,
    deadline: Option<Instant>,
) -> Result<Next> {
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_nodelay(true)?;
    let mut stream = crate::tls::ClientStream::connect(stream, tls)
        .await
        .with_context(|| format!("TLS handshake with {address}"))?;
    let mut client = Client::new(ClientConfig {
        user: args.user.clone(),
        password: args.password.clone(),
        agent: "quarry-mine/0.1".into(),
        version_rolling: (!args.no_version_rolling).then_some(VERSION_ROLLING_MASK),
    });
    let mut buf = vec![0u8; 4096];
    let mut pending: std::collections::HashMap<u64, bool> = std::collections::HashMap::new();
    let mut status = tokio::time::interval(Duration::from_secs(10));
    let started = Instant::now();
    loop {
        let mut out = String::new();
        while let Some(line) = client.poll_transmit() {
            out.push_str(&line);
        }
        if !out.is_empty() {
            stream.write_all(out.as_bytes()).await?;
        }
        while let Some(event) = client.poll_event() {
            match event {
                V1Event::Work(work) => publish(
                    shared,
                    Work {
                        share_target: work.target,
                        version_mask: work.version_mask,
                        job: WorkJob::V1 {
                            job: work.job,
                            extranonce1: work.extranonce1,
                            extranonce2_len: work.extranonce2_len,
                        },
                    },
                ),
                V1Event::Answered { id, outcome } => {
                    let Some(is_block) = pending.remove(&id) else {
                        continue;
                    };
                    match outcome {
                        Ok(()) => {
                            totals.accepted += 1;
                            totals.blocks += u64::from(is_block);
                        }
                        Err(rejection) => {
                            totals.rejected += 1;
                            warn!(code = ?rejection.code, reason = %rejection.reason, "share rejected");
                        }
                    }
                }
                V1Event::Reconnect { host, port, .. } => {
                    let to = match host.is_empty() {
                        true => address.to_string(),
                        false => format!("{host}:{port}"),
                    };
                    return Ok(Next::Reconnect(to));
                }
                V1Event::Subscribed { .. } | V1Event::Authorized => {}
            }
        }
        if let Some(error) = client.close_reason() {
            bail!("{error}");
        }
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = stream.read(&mut buf) => match read? {
                0 => bail!("pool closed the connection"),
                n => client.handle_bytes(&buf[..n]),
            },
            Some(found) = found_rx.recv() => {
                let id = client.submit(&found.job_id, &found.extranonce2, found.ntime, found.nonce, Some(found.version));
                pending.insert(id, found.is_block);
                totals.submitted += 1;
                if pending.len() > 10_000 {
                    pending.clear();
                }
            }
            _ = status.tick() => {
                let hashes = shared.hashes.load(Ordering::Relaxed);
                let rate = hashes as f64 / started.elapsed().as_secs_f64().max(0.001);
                info!(accepted = totals.accepted, rejected = totals.rejected, blocks = totals.blocks, hashrate = %crate::server::format_hashrate(rate), "miner status");
            }
            _ = until_deadline => return Ok(Next::Done),
        }
    }
}

/// Where a miner connects.
pub(crate) struct Endpoint {
    /// `host:port`.
    pub address: String,
    /// SV2's pinned authority key.
    pub authority: Option<[u8; 32]>,
    /// Stratum V1 over TLS (`stratum+ssl://`).
    pub tls: bool,
    /// SV2 over QUIC (`stratum2+quic://`, see `quic.rs`).
    pub quic: bool,
    /// SV2 over Iroh (`iroh://<node id>[@host:port]/<key>`, see `iroh_endpoint.rs`).
    pub iroh: Option<crate::iroh_endpoint::IrohAddress>,
}

/// An SV2 connection: its halves, the peer, and what must outlive them (a QUIC or Iroh
/// endpoint).
type Connected = (
    Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    std::net::SocketAddr,
    Option<Box<dyn std::any::Any + Send>>,
);

/// How `quarry mine` reaches an SV2 pool.
#[derive(Debug, Clone)]
enum Transport {
    Tcp,
    Quic,
    Iroh(crate::iroh_endpoint::IrohAddress),
}

impl Endpoint {
    /// The TLS settings for a `stratum+ssl://` endpoint (trusting `ca`, or the web's roots).
    pub fn client_tls(
        &self,
        ca: Option<&std::path::Path>,
    ) -> Result<Option<crate::tls::ClientTls>> {
        self.tls
            .then(|| crate::tls::ClientTls::new(&self.address, ca))
            .transpose()
    }
}

/// `host:port`, TLS for a `stratum+ssl://` URL and, for SV2 (`sv2` or a `stratum2+tcp://`
/// URL), the pinned authority key, from `authority_pubkey` or the URL's path. Shared by
/// `quarry mine` and `quarry loadgen`.
pub(crate) fn parse_endpoint(
    url: &str,
    sv2: bool,
    authority_pubkey: Option<&str>,
) -> Result<Endpoint> {
    let url = url.trim_end_matches('/');
    if let Some(rest) = url.strip_prefix("iroh://") {
        let (node, key_in_url) = match rest.split_once('/') {
            Some((node, key)) => (node, Some(key)),
            None => (rest, None),
        };
        let key = authority_pubkey
            .or(key_in_url)
            .context("Stratum V2 over Iroh needs the pool's authority public key: iroh://<node id>[@host:port]/<key>")?;
        let key = quarry_stratum::v2::keys::decode_public(key)
            .map_err(|e| anyhow::anyhow!("authority public key: {e}"))?;
        let iroh = crate::iroh_endpoint::IrohAddress::parse(node)?;
        return Ok(Endpoint {
            address: node.to_string(),
            authority: Some(key),
            tls: false,
            quic: false,
            iroh: Some(iroh),
        });
    }
    let quic = url.starts_with("stratum2+quic://");
    let (sv2, tls, rest) = if let Some(rest) = url
        .strip_prefix("stratum2+tcp://")
        .or_else(|| url.strip_prefix("stratum2+quic://"))
    {
        (true, false, rest)
    } else if let Some(rest) = url
        .strip_prefix("stratum+ssl://")
        .or_else(|| url.strip_prefix("stratum+tls://"))
    {
        (sv2, true, rest)
    } else {
        (
            sv2,
            false,
            url.strip_prefix("stratum+tcp://").unwrap_or(url),
        )
    };
    if sv2 && tls {
        bail!("Stratum V2 brings its own encryption (Noise): use stratum2+tcp://, not TLS");
    }
    let (address, key_in_url) = match rest.split_once('/') {
        Some((address, key)) => (address, Some(key)),
        None => (rest, None),
    };
    if !sv2 {
        return Ok(Endpoint {
            address: address.to_string(),
            authority: None,
            tls,
            quic: false,
            iroh: None,
        });
    }
    let key = authority_pubkey
        .or(key_in_url)
        .context("Stratum V2 needs the pool's authority public key: stratum2+tcp://host:port/<key> or --authority-pubkey")?;
    let key = quarry_stratum::v2::keys::decode_public(key)
        .map_err(|e| anyhow::anyhow!("authority public key: {e}"))?;
    Ok(Endpoint {
        address: address.to_string(),
        authority: Some(key),
        tls: false,
        quic,
        iroh: None,
    })
}

pub(crate) fn now_secs() -> u32 {
    (crate::driver::unix_ms() / 1000).min(u64::from(u32::MAX)) as u32
}

/// One SV2 connection: handshake (refusing an unverified pool), a standard channel, shares.
#[allow(clippy::too_many_arguments)]
async fn connect_and_mine_sv2(
    address: &str,
    transport: &Transport,
    authority: &[u8; 32],
    args: &MineArgs,
    threads: usize,
    shared: &Arc<Shared>,
    found_rx: &mut mpsc::Receiver<Found>,
    totals: &mut Totals,
    deadline: Option<Instant>,
) -> Result<Next> {
    // Over QUIC the endpoint lives as long as the connection; over TCP there is none.
    let (mut read, mut write, peer, _endpoint): Connected = if let Transport::Iroh(iroh) = transport
    {
        let (stream, endpoint) = crate::iroh_endpoint::connect(iroh).await?;
        let (read, write) = tokio::io::split(stream);
        // The Noise prologue names an address; the first direct one, or none (relayed).
        let peer = iroh
            .direct
            .first()
            .copied()
            .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        (
            Box::new(read),
            Box::new(write),
            peer,
            Some(Box::new(endpoint)),
        )
    } else if matches!(transport, Transport::Quic) {
        let (stream, peer, endpoint) = crate::quic::connect(address).await?;
        let (read, write) = tokio::io::split(stream);
        (
            Box::new(read),
            Box::new(write),
            peer,
            Some(Box::new(endpoint)),
        )
    } else {
        let stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let (read, write) = stream.into_split();
        (Box::new(read), Box::new(write), peer, None)
    };
    // A nominal hashrate lets the pool pick a sensible first target; SHA-NI cores do ~5 MH/s.
    let nominal = args.hashrate.unwrap_or(threads as f32 * 5e6);
    let mut client = MinerClient::new(
        authority,
        &args.user,
        nominal,
        (peer.ip().to_string(), peer.port()),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let version_mask = if args.no_version_rolling {
        0
    } else {
        VERSION_ROLLING_MASK
    };
    let mut share_target = Target::MAX;
    let mut current: Option<HeaderWork> = None;
    // Sequence number → whether the share was a block.
    let mut pending: std::collections::BTreeMap<u32, bool> = std::collections::BTreeMap::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut status = tokio::time::interval(Duration::from_secs(10));
    let started = Instant::now();
    loop {
        if let Some(bytes) = client.poll_transmit() {
            write.write_all(&bytes).await?;
        }
        while let Some(event) = client.poll_event() {
            match event {
                ClientEvent::ChannelOpened { channel_id, target } => {
                    info!(channel_id, "SV2 channel open");
                    share_target = Target::from_le_bytes(target);
                }
                ClientEvent::Target(target) => {
                    share_target = Target::from_le_bytes(target);
                    if let Some(work) = &current {
                        publish_header(shared, work, share_target, version_mask);
                    }
                }
                ClientEvent::Work(work) => {
                    publish_header(shared, &work, share_target, version_mask);
                    current = Some(work);
                }
                ClientEvent::Accepted {
                    count,
                    last_sequence_number,
                } => {
                    totals.accepted += u64::from(count);
                    let rest = pending.split_off(&last_sequence_number.wrapping_add(1));
                    totals.blocks += pending.values().filter(|b| **b).count() as u64;
                    pending = rest;
                }
                ClientEvent::Rejected {
                    sequence_number,
                    code,
                } => {
                    totals.rejected += 1;
                    pending.remove(&sequence_number);
                    warn!(%code, "share rejected");
                }
                ClientEvent::Reconnect { host, port } => {
                    let host = if host.is_empty() {
                        peer.ip().to_string()
                    } else {
                        host
                    };
                    return Ok(Next::Reconnect(format!("{host}:{port}")));
                }
            }
        }
        if let Some(reason) = client.close_reason() {
            bail!("{reason}");
        }
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = read.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    bail!("pool closed the connection");
                }
                client.handle_bytes(&buf[..n], now_secs());
            }
            Some(found) = found_rx.recv() => {
                let Ok(job_id) = found.job_id.parse::<u32>() else { continue };
                if let Some(sequence) = client.submit(job_id, found.nonce, found.ntime, found.version) {
                    pending.insert(sequence, found.is_block);
                    totals.submitted += 1;
                    if pending.len() > 10_000 {
                        pending.clear();
                    }
                }
            }
            _ = status.tick() => {
                let hashes = shared.hashes.load(Ordering::Relaxed);
                let rate = hashes as f64 / started.elapsed().as_secs_f64().max(0.001);
                info!(accepted = totals.accepted, rejected = totals.rejected, blocks = totals.blocks, hashrate = %crate::server::format_hashrate(rate), "miner status");
            }
            _ = until_deadline => return Ok(Next::Done),
        }
    }
}

fn publish_header(shared: &Shared, work: &HeaderWork, share_target: Target, version_mask: u32) {
    publish(
        shared,
        Work {
            job: WorkJob::Header(work.clone()),
            share_target,
            version_mask,
        },
    );
}

fn publish(shared: &Shared, work: Work) {
    *shared.work.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(work));
    shared.generation.fetch_add(1, Ordering::SeqCst);
}

fn hash_loop(thread: u8, shared: &Shared, found: &mpsc::Sender<Found>) {
    let mut counter = 0u64;
    // Passes over the current work: ntime rolls from the job's own time, not from the
    // thread's lifetime (blocks carrying the miner's ntime move the chain's median time, so
    // a roll that kept growing across jobs ran block times hours ahead on regtest).
    let mut passes = (u64::MAX, 0u32);
    let mut paused_since: Option<Instant> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let generation = shared.generation.load(Ordering::SeqCst);
        let work = shared
            .work
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(work) = work else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        if shared.paused_generation.load(Ordering::SeqCst) == generation {
            // A block was found on this work: wait for the new tip, but not forever.
            let since = *paused_since.get_or_insert_with(Instant::now);
            if since.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            shared.paused_generation.store(u64::MAX, Ordering::SeqCst);
        }
        paused_since = None;
        counter += 1;
        if passes.0 != generation {
            passes = (generation, 0);
        }
        let pass = passes.1;
        passes.1 = passes.1.saturating_add(1);
        let (job_id, root, prev_hash, ntime, bits, base_version, extranonce2) = match &work.job {
            WorkJob::V1 {
                job,
                extranonce1,
                extranonce2_len,
            } => {
                // extranonce2 = thread index ‖ counter, big-endian, so threads never overlap.
                let mut extranonce2 = vec![0u8; *extranonce2_len];
                let counter_bytes = counter.to_be_bytes();
                let n = extranonce2_len.min(&8);
                extranonce2[extranonce2_len - n..].copy_from_slice(&counter_bytes[8 - n..]);
                extranonce2[0] = thread;
                let root = job.merkle_root(extranonce1, &extranonce2);
                (
                    job.job_id.clone(),
                    root,
                    job.prev_hash,
                    job.ntime,
                    job.bits,
                    job.version,
                    extranonce2,
                )
            }
            WorkJob::Header(work) => {
                // No extranonce on a standard channel: threads take disjoint version bits
                // (below) and each pass moves ntime on by a second.
                let ntime = work.ntime.wrapping_add(pass);
                (
                    work.job_id.to_string(),
                    work.merkle_root,
                    work.prev_hash,
                    ntime,
                    work.nbits,
                    work.version,
                    Vec::new(),
                )
            }
        };
        let network = Target::from_compact(bits);
        // Roll the version first (cheap: no coinbase rehash), then extranonce2 or ntime; each
        // thread starts at its own offset in the version bits.
        let rolls: u32 = if work.version_mask == 0 { 1 } else { 16 };
        let rolling_unit = if work.version_mask == 0 {
            0
        } else {
            1u32 << work.version_mask.trailing_zeros()
        };
        let thread_offset = u32::from(thread).wrapping_mul(rolls);
        for roll in 0..rolls {
            let version = if rolling_unit == 0 {
                base_version
            } else {
                (base_version & !work.version_mask)
                    | ((base_version
                        .wrapping_add((thread_offset + roll).wrapping_mul(rolling_unit)))
                        & work.version_mask)
            };
            let header = header_bytes(version, &prev_hash, &root, ntime, bits, 0);
            let mut first = [0u8; 64];
            first.copy_from_slice(&header[..64]);
            let mid = header_midstate(&first);
            let mut tail = [0u8; 16];
            tail.copy_from_slice(&header[64..]);
            let mut nonce = 0u32;
            loop {
                tail[12..].copy_from_slice(&nonce.to_le_bytes());
                let hash = sha256d_header_tail(&mid, &tail);
                if work.share_target.is_met_by(&hash) {
                    let is_block = network.is_met_by(&hash);
                    let _ = found.blocking_send(Found {
                        job_id: job_id.clone(),
                        extranonce2: extranonce2.clone(),
                        ntime,
                        nonce,
                        version,
                        is_block,
                    });
                    if is_block {
                        shared.paused_generation.store(generation, Ordering::SeqCst);
                        break;
                    }
                }
                if nonce & 0xfff == 0xfff {
                    shared.hashes.fetch_add(0x1000, Ordering::Relaxed);
                    if shared.generation.load(Ordering::Relaxed) != generation
                        || shared.stop.load(Ordering::Relaxed)
                        || shared.paused_generation.load(Ordering::Relaxed) == generation
                    {
                        break;
                    }
                }
                if nonce == u32::MAX {
                    break;
                }
                nonce += 1;
            }
            if shared.generation.load(Ordering::Relaxed) != generation
                || shared.paused_generation.load(Ordering::Relaxed) == generation
            {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn shared() -> Arc<Shared> {
        Arc::new(Shared {
            work: RwLock::new(None),
            generation: AtomicU64::new(0),
            paused_generation: AtomicU64::new(u64::MAX),
            stop: AtomicBool::new(false),
            hashes: AtomicU64::new(0),
        })
    }

    fn args() -> MineArgs {
        MineArgs {
            url: String::new(),
            user: "x".into(),
            password: "x".into(),
            threads: Some(1),
            duration: Some(5),
            no_version_rolling: true,
            sv2: false,
            authority_pubkey: None,
            hashrate: None,
            tls_ca: None,
            coin: "bitcoin".into(),
            agent: None,
        }
    }

    /// A pool that answers the miner's hello with `reply` and keeps the socket open.
    async fn fake_pool(reply: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut hello = [0u8; 512];
            let _ = socket.read(&mut hello).await;
            let _ = socket.write_all(&reply).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        address
    }

    async fn mine_against(reply: Vec<u8>) -> Result<Next> {
        let address = fake_pool(reply).await;
        let (_tx, mut rx) = mpsc::channel(1);
        let deadline = Some(Instant::now() + Duration::from_secs(5));
        connect_and_mine(
            &address,
            None,
            &args(),
            &shared(),
            &mut rx,
            &mut Totals::default(),
            deadline,
        )
        .await
    }

    #[test]
    fn endpoints_name_the_transport() {
        let tls = parse_endpoint("stratum+ssl://pool.example:3334", false, None).expect("ssl");
        assert!(tls.tls && tls.authority.is_none());
        assert_eq!(tls.address, "pool.example:3334");
        let plain = parse_endpoint("stratum+tcp://pool.example:3333", false, None).expect("tcp");
        assert!(!plain.tls);
        assert!(parse_endpoint("stratum+ssl://pool:3334", true, None).is_err());
        let key = quarry_stratum::v2::AuthorityKeypair::generate().public_text();
        let quic =
            parse_endpoint(&format!("stratum2+quic://pool:3336/{key}"), false, None).expect("quic");
        assert!(quic.quic && quic.authority.is_some() && !quic.tls);
        assert_eq!(quic.address, "pool:3336");
        let tcp =
            parse_endpoint(&format!("stratum2+tcp://pool:3333/{key}"), false, None).expect("tcp");
        assert!(!tcp.quic);
        assert!(
            parse_endpoint("stratum2+quic://pool:3336", false, None).is_err(),
            "QUIC needs the key too"
        );
    }

    #[tokio::test]
    async fn refuses_extranonce_sizes_it_cannot_mine() {
        for size in [0, 1000] {
            let reply =
                format!("{{\"id\":2,\"result\":[[],\"00000001\",{size}],\"error\":null}}\n");
            let error = mine_against(reply.into_bytes())
                .await
                .err()
                .expect("refused");
            assert!(format!("{error:#}").contains("extranonce"), "{error:#}");
        }
    }

    #[tokio::test]
    async fn an_endless_line_is_an_error_not_a_buffer() {
        let error = mine_against(vec![
            b'x';
            quarry_stratum::v1::codec::MAX_POOL_LINE_LEN + 1024
        ])
        .await
        .err()
        .expect("refused");
        assert!(format!("{error:#}").contains("overlong"), "{error:#}");
    }
}
