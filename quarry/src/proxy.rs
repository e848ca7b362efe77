//! `quarry proxy`: Stratum V1 miners downstream, a Stratum V2 pool upstream. The
//! [`Proxy`] state machine does the protocol work; this file owns the sockets: one task per
//! miner (reads in, writes out), one for the upstream, and one loop that owns the state
//! machine. Upstreams are tried in order; when one fails the next is used.
//!
//! With `--jd` the proxy builds its own jobs from its own node (`getblocktemplate`), declares
//! them to the pool's JDS (one more connection), and submits any block found on them to its
//! node as well as to the pool.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use quarry_stratum::proxy::{DownstreamId, Proxy, ProxyConfig, ProxyEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::NodeConfig;
use crate::driver::unix_ms;
use crate::node::Nodes;
use std::sync::Arc;

/// `quarry proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Where Stratum V1 miners connect.
    #[arg(long, env = "QUARRY_PROXY_LISTEN", default_value = "0.0.0.0:3334")]
    pub listen: SocketAddr,
    /// Upstream SV2 pool, `stratum2+tcp://host:port/<authority_pubkey>`; repeat for failover,
    /// in order of preference.
    #[arg(
        long = "upstream",
        env = "QUARRY_PROXY_UPSTREAMS",
        value_delimiter = ',',
        required = true
    )]
    pub upstreams: Vec<String>,
    /// The identity the pool credits (on Quarry: `address[.worker]`).
    #[arg(short, long, env = "QUARRY_PROXY_USER")]
    pub user: String,
    /// One upstream channel per miner instead of one for all.
    #[arg(long)]
    pub per_miner: bool,
    /// Hash rate announced per channel, H/s (sets the pool's first target).
    #[arg(long, default_value_t = 1e9)]
    pub hashrate: f32,
    /// Most miners at once.
    #[arg(long, default_value_t = 100_000)]
    pub max_miners: usize,
    /// Job Declaration: mine our own node's templates (its transactions), declared to the
    /// pool's JDS; the pool's jobs when the JDS refuses or goes away.
    #[arg(long, requires = "jd_node")]
    pub jd: bool,
    /// Our node for `--jd` (Bitcoin Core JSON-RPC URL).
    #[arg(long, env = "QUARRY_PROXY_JD_NODE")]
    pub jd_node: Option<String>,
    /// Its cookie file (or `--jd-node-user` and `QUARRY_PROXY_JD_NODE_PASSWORD`).
    #[arg(long, env = "QUARRY_PROXY_JD_NODE_COOKIE")]
    pub jd_node_cookie: Option<std::path::PathBuf>,
    /// Its RPC user.
    #[arg(long, env = "QUARRY_PROXY_JD_NODE_USER")]
    pub jd_node_user: Option<String>,
    /// Its RPC password (environment only: never on a command line).
    #[arg(skip = std::env::var("QUARRY_PROXY_JD_NODE_PASSWORD").ok())]
    pub jd_node_password: Option<String>,
    /// The JDS, `stratum2+tcp://host:port/<authority_pubkey>`: by default the first upstream
    /// (Quarry serves Job Declaration on its stratum port).
    #[arg(long, env = "QUARRY_PROXY_JDS")]
    pub jds: Option<String>,
    /// After a fallback, dial the JDS again this often (seconds), and go back to declared jobs
    /// once it answers.
    #[arg(long, default_value_t = 30)]
    pub jd_retry_secs: u64,
    /// `full-template`: declare every transaction (the pool checks the block).
    /// `coinbase-only`: the coinbase alone (the pool must allow it; our node publishes blocks).
    #[arg(long, value_enum, default_value = "full-template")]
    pub jd_mode: JdModeArg,
}

/// `--jd-mode`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum JdModeArg {
    /// Declare every transaction.
    FullTemplate,
    /// Declare the coinbase only.
    CoinbaseOnly,
}

struct Upstream {
    address: String,
    key: [u8; 32],
    /// `stratum2+quic://`: SV2 over a QUIC stream (see `quic.rs`).
    quic: bool,
}

fn parse_upstream(url: &str) -> Result<Upstream> {
    let url = url.trim_end_matches('/');
    let (rest, quic) = match (
        url.strip_prefix("stratum2+tcp://"),
        url.strip_prefix("stratum2+quic://"),
    ) {
        (Some(rest), _) => (rest, false),
        (None, Some(rest)) => (rest, true),
        (None, None) => bail!(
            "upstream {url}: expected stratum2+tcp://host:port/<authority_pubkey> (or stratum2+quic://)"
        ),
    };
    let Some((address, key)) = rest.split_once('/') else {
        bail!(
            "upstream {url}: the authority public key is missing (stratum2+tcp://host:port/<key>)"
        );
    };
    let key = quarry_stratum::v2::keys::decode_public(key)
        .map_err(|e| anyhow::anyhow!("upstream {url}: authority public key: {e}"))?;
    Ok(Upstream {
        address: address.to_string(),
        key,
        quic,
    })
}

/// An upstream connection's halves, and the QUIC endpoint that must outlive them.
struct UpstreamStream {
    reader: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    writer: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    _quic: Option<quinn::Endpoint>,
}

async fn connect_upstream(upstream: &Upstream) -> Result<UpstreamStream> {
    if upstream.quic {
        let (stream, _, endpoint) = crate::quic::connect(&upstream.address).await?;
        let (reader, writer) = tokio::io::split(stream);
        return Ok(UpstreamStream {
            reader: Box::new(reader),
            writer: Box::new(writer),
            _quic: Some(endpoint),
        });
    }
    let stream = TcpStream::connect(&upstream.address).await?;
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    Ok(UpstreamStream {
        reader: Box::new(reader),
        writer: Box::new(writer),
        _quic: None,
    })
}

enum Input {
    Connected(DownstreamId, mpsc::Sender<Vec<u8>>),
    Bytes(DownstreamId, Vec<u8>),
    Closed(DownstreamId),
    UpstreamBytes(u64, Vec<u8>),
    UpstreamClosed(u64, String),
    JdBytes(u64, Vec<u8>),
    JdClosed(u64, String),
}

/// The proxy's own node, for `--jd`: templates in, blocks out.
fn jd_nodes(args: &ProxyArgs) -> Result<Option<Arc<Nodes>>> {
    if !args.jd {
        return Ok(None);
    }
    if args.per_miner {
        bail!("--jd mines one aggregated channel: it cannot be combined with --per-miner");
    }
    let Some(url) = &args.jd_node else {
        bail!("--jd needs --jd-node <url> (the node whose templates are declared)");
    };
    let node = NodeConfig {
        url: url.clone(),
        user: args.jd_node_user.clone(),
        password: args.jd_node_password.clone(),
        cookie_file: args.jd_node_cookie.clone(),
        zmq_hashblock: None,
    };
    let nodes = Nodes::new(
        &[node],
        std::env::temp_dir().join("quarry-proxy-blocks"),
        Duration::from_secs(30),
        Duration::from_secs(1),
        true,
    )?;
    tokio::spawn(Arc::clone(&nodes).run());
    Ok(Some(nodes))
}

/// Connects to the JDS and feeds its bytes in; the writer half is returned.
async fn connect_jds(
    jds: &Upstream,
    proxy: &mut Proxy,
    input: mpsc::Sender<Input>,
    generation: u64,
) -> Result<mpsc::Sender<Vec<u8>>> {
    let stream = connect_upstream(jds).await?;
    proxy.jd_connected(&jds.key, split_host_port(&jds.address))?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
    let UpstreamStream {
        mut reader,
        mut writer,
        _quic,
    } = stream;
    tokio::spawn(async move {
        let _quic = _quic;
        let mut buf = vec![0u8; 64 * 1024];
        let reason = loop {
            tokio::select! {
                read = reader.read(&mut buf) => match read {
                    Ok(0) => break "the JDS closed the connection".to_string(),
                    Ok(n) => {
                        if input.send(Input::JdBytes(generation, buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => break e.to_string(),
                },
                out = rx.recv() => match out {
                    Some(bytes) => {
                        if let Err(e) = writer.write_all(&bytes).await {
                            break e.to_string();
                        }
                    }
                    None => return,
                },
            }
        };
        let _ = input.send(Input::JdClosed(generation, reason)).await;
    });
    Ok(tx)
}

/// Runs the proxy until interrupted.
pub async fn run(args: ProxyArgs) -> Result<()> {
    let upstreams = args
        .upstreams
        .iter()
        .map(|u| parse_upstream(u))
        .collect::<Result<Vec<_>>>()?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    info!(listen = %listener.local_addr()?, upstreams = upstreams.len(), aggregate = !args.per_miner, "proxy listening");
    let nodes = jd_nodes(&args)?;
    let jds = match (&nodes, &args.jds) {
        (None, _) => None,
        (Some(_), Some(url)) => Some(parse_upstream(url)?),
        (Some(_), None) => Some(parse_upstream(&args.upstreams[0])?),
    };
    let mut proxy = Proxy::new(ProxyConfig {
        user_identity: args.user.clone(),
        aggregate: !args.per_miner,
        nominal_hash_rate: args.hashrate,
        jd: nodes.is_some(),
        jd_mode: match args.jd_mode {
            JdModeArg::FullTemplate => quarry_stratum::v2::jd_client::JdMode::FullTemplate,
            JdModeArg::CoinbaseOnly => quarry_stratum::v2::jd_client::JdMode::CoinbaseOnly,
        },
        ..ProxyConfig::default()
    });
    let (input_tx, mut input) = mpsc::channel::<Input>(4096);
    tokio::spawn(accept_loop(listener, input_tx.clone(), args.max_miners));
    let mut templates = nodes.as_ref().map(|n| n.subscribe());
    let mut jd_writer = None;
    // When to dial the JDS: now, at start; again after a fallback.
    let mut jd_retry_at = jds.as_ref().map(|_| tokio::time::Instant::now());
    // Which JDS connection is current: bytes from an earlier one are ignored.
    let mut jd_generation = 0u64;

    let mut writers: HashMap<DownstreamId, mpsc::Sender<Vec<u8>>> = HashMap::new();
    // The current upstream: its generation (so late bytes from an old one are ignored) and writer.
    let mut generation = 0u64;
    let mut upstream_writer: Option<mpsc::Sender<Vec<u8>>> = None;
    let mut next_upstream = 0usize;
    let mut failures_in_a_row = 0u32;
    let mut reconnect_at: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
    loop {
        // Dial the JDS when due.
        if let (Some(jds), Some(at)) = (&jds, jd_retry_at) {
            if at <= tokio::time::Instant::now() {
                jd_retry_at = None;
                jd_generation += 1;
                match connect_jds(jds, &mut proxy, input_tx.clone(), jd_generation).await {
                    Ok(writer) => {
                        info!(jds = %jds.address, "connected to the JDS: declaring our own jobs");
                        jd_writer = Some(writer);
                    }
                    Err(e) => {
                        warn!(jds = %jds.address, error = %e, "JDS unreachable: mining the pool's jobs");
                        jd_retry_at = Some(at + Duration::from_secs(args.jd_retry_secs.max(1)));
                    }
                }
            }
        }
        // Connect (or fail over) when due.
        if upstream_writer.is_none()
            && reconnect_at.is_some_and(|at| at <= tokio::time::Instant::now())
        {
            reconnect_at = None;
            let upstream = &upstreams[next_upstream % upstreams.len()];
            generation += 1;
            match connect_upstream(upstream).await {
                Ok(stream) => {
                    let (host, port) = split_host_port(&upstream.address);
                    if let Err(e) = proxy.upstream_connected(&upstream.key, (host, port)) {
                        warn!(error = %e, "noise initiator");
                    }
                    info!(upstream = %upstream.address, "connected upstream");
                    let (tx, rx) = mpsc::channel(1024);
                    upstream_writer = Some(tx);
                    tokio::spawn(upstream_io(stream, rx, input_tx.clone(), generation));
                }
                Err(e) => {
                    warn!(upstream = %upstream.address, error = %e, "upstream unreachable; trying the next");
                    next_upstream += 1;
                    failures_in_a_row += 1;
                    reconnect_at = Some(
                        tokio::time::Instant::now() + backoff(failures_in_a_row, upstreams.len()),
                    );
                }
            }
        }

        // Flush everything the state machine has to say.
        while let Some(event) = proxy.poll_event() {
            match event {
                ProxyEvent::UpstreamReady => {
                    failures_in_a_row = 0;
                    info!("upstream ready: channel open");
                }
                ProxyEvent::UpstreamFailed(reason) => {
                    warn!(%reason, "upstream failed; failing over");
                    upstream_writer = None;
                    next_upstream += 1;
                    failures_in_a_row += 1;
                    reconnect_at = Some(
                        tokio::time::Instant::now() + backoff(failures_in_a_row, upstreams.len()),
                    );
                }
                ProxyEvent::CloseDownstream(id, reason) => {
                    debug!(miner = id, %reason, "closing miner");
                    if let Some(bytes) = proxy.poll_downstream_transmit(id) {
                        if let Some(w) = writers.get(&id) {
                            let _ = w.try_send(bytes);
                        }
                    }
                    // Dropping the writer flushes what is queued and then closes the socket.
                    writers.remove(&id);
                    proxy.downstream_closed(id);
                }
                ProxyEvent::ShareForwarded { worker, difficulty } => {
                    debug!(target: "quarry::share", %worker, difficulty, "share forwarded")
                }
                ProxyEvent::ShareRejected { worker, reason } => {
                    debug!(target: "quarry::share", %worker, %reason, "share rejected")
                }
                ProxyEvent::UpstreamAccepted { count } => {
                    debug!(target: "quarry::share", count, "upstream accepted shares")
                }
                ProxyEvent::UpstreamRejected { code } => warn!(%code, "upstream rejected a share"),
                ProxyEvent::JdReady => info!("Job Declaration set up"),
                ProxyEvent::CustomJobActive {
                    job_id,
                    transactions,
                } => info!(job_id, transactions, "mining our declared job"),
                ProxyEvent::JdFallback(reason) => {
                    warn!(%reason, retry_secs = args.jd_retry_secs, "Job Declaration over: mining the pool's jobs until the JDS is back");
                    jd_writer = None;
                    jd_retry_at = Some(
                        tokio::time::Instant::now()
                            + Duration::from_secs(args.jd_retry_secs.max(1)),
                    );
                }
                ProxyEvent::BlockFound(block) => {
                    if let Some(nodes) = &nodes {
                        let nodes = Arc::clone(nodes);
                        tokio::spawn(async move {
                            let hex = hex::encode(&block);
                            match nodes
                                .call_any::<serde_json::Value>(
                                    "submitblock",
                                    serde_json::json!([hex]),
                                )
                                .await
                            {
                                Ok(serde_json::Value::Null) => {
                                    info!("block found on our declared job: our node took it")
                                }
                                Ok(other) => {
                                    warn!(answer = %other, "block found on our declared job: our node refused it")
                                }
                                Err(e) => {
                                    warn!(error = %e, "block found on our declared job: our node unreachable")
                                }
                            }
                        });
                    }
                }
            }
        }
        if let Some(bytes) = proxy.poll_jd_transmit() {
            if let Some(w) = &jd_writer {
                if w.send(bytes).await.is_err() {
                    jd_writer = None;
                }
            }
        }
        if let Some(bytes) = proxy.poll_upstream_transmit() {
            if let Some(w) = &upstream_writer {
                if w.send(bytes).await.is_err() {
                    upstream_writer = None;
                }
            }
        }
        for id in proxy.downstreams_with_output() {
            let Some(bytes) = proxy.poll_downstream_transmit(id) else {
                continue;
            };
            let slow = match writers.get(&id) {
                Some(w) => w.try_send(bytes).is_err(),
                None => false,
            };
            if slow {
                // A miner that does not read its jobs is dropped rather than buffered without end.
                writers.remove(&id);
                proxy.downstream_closed(id);
            }
        }

        let sleep_until = [reconnect_at, jd_retry_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        let template_changed = async {
            match &mut templates {
                Some(t) => t.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = template_changed => {
                if changed {
                    let template = templates.as_mut().and_then(|t| t.borrow_and_update().clone());
                    if let Some(template) = template {
                        proxy.handle_template(template);
                    }
                } else {
                    templates = None;
                }
            }
            received = input.recv() => {
                let Some(received) = received else { return Ok(()) };
                match received {
                    Input::Connected(id, writer) => {
                        writers.insert(id, writer);
                        proxy.downstream_connected(id);
                    }
                    Input::Bytes(id, bytes) => proxy.downstream_bytes(id, &bytes, unix_ms() / 1000),
                    Input::Closed(id) => {
                        writers.remove(&id);
                        proxy.downstream_closed(id);
                    }
                    Input::UpstreamBytes(g, bytes) if g == generation => {
                        proxy.upstream_bytes(&bytes, (unix_ms() / 1000) as u32)
                    }
                    Input::UpstreamClosed(g, reason) if g == generation && upstream_writer.is_some() => {
                        warn!(%reason, "upstream connection lost; failing over");
                        upstream_writer = None;
                        proxy.upstream_lost(&reason);
                        next_upstream += 1;
                        failures_in_a_row += 1;
                        reconnect_at = Some(tokio::time::Instant::now() + backoff(failures_in_a_row, upstreams.len()));
                    }
                    Input::JdBytes(g, bytes) if g == jd_generation => proxy.jd_bytes(&bytes, (unix_ms() / 1000) as u32),
                    Input::JdClosed(g, reason) if g == jd_generation => {
                        jd_writer = None;
                        proxy.jd_lost(&reason);
                    }
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until(sleep_until) => {}
            _ = tokio::signal::ctrl_c() => {
                info!("shutting down");
                return Ok(());
            }
        }
    }
}

/// No wait while other upstreams are untried; then 1 s, 2 s … up to 30 s between rounds.
fn backoff(failures: u32, upstreams: usize) -> Duration {
    if (failures as usize) < upstreams {
        return Duration::from_millis(100);
    }
    Duration::from_secs(1u64 << (failures as usize / upstreams.max(1)).min(5))
        .min(Duration::from_secs(30))
}

fn split_host_port(address: &str) -> (String, u16) {
    match address.rsplit_once(':') {
        Some((host, port)) => (host.to_string(), port.parse().unwrap_or(0)),
        None => (address.to_string(), 0),
    }
}

async fn accept_loop(listener: TcpListener, input: mpsc::Sender<Input>, max_miners: usize) {
    let mut next_id: DownstreamId = 1;
    let live = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if live.load(std::sync::atomic::Ordering::Relaxed) >= max_miners {
            debug!(%peer, "too many miners");
            continue;
        }
        let id = next_id;
        next_id += 1;
        let (input, live) = (input.clone(), std::sync::Arc::clone(&live));
        live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            miner_io(stream, id, input).await;
            live.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
}

async fn miner_io(stream: TcpStream, id: DownstreamId, input: mpsc::Sender<Input>) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
    if input.send(Input::Connected(id, tx)).await.is_err() {
        return;
    }
    let write = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    let mut buf = vec![0u8; 4096];
    loop {
        // Idle miners are dropped after 10 minutes without a line.
        match tokio::time::timeout(Duration::from_secs(600), reader.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                if input
                    .send(Input::Bytes(id, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            _ => break,
        }
        if write.is_finished() {
            break;
        }
    }
    let _ = input.send(Input::Closed(id)).await;
}

async fn upstream_io(
    stream: UpstreamStream,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    input: mpsc::Sender<Input>,
    generation: u64,
) {
    let UpstreamStream {
        mut reader,
        mut writer,
        _quic,
    } = stream;
    let mut write = tokio::spawn(async move {
        while let Some(bytes) = outgoing.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    let reason = loop {
        tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) => break "upstream closed the connection".to_string(),
                Ok(n) => {
                    if input.send(Input::UpstreamBytes(generation, buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
                Err(e) => break e.to_string(),
            },
            // The writer ends when a write fails or the proxy drops this upstream.
            _ = &mut write => break "upstream write failed or the proxy replaced it".to_string(),
        }
    };
    write.abort();
    let _ = input.send(Input::UpstreamClosed(generation, reason)).await;
}
