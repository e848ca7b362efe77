//! `quarry loadgen`: N simulated Stratum V1 miners against any stratum endpoint.
//!
//! Each miner is one small task (a few hundred bytes of state and a 4 KiB read buffer, no
//! thread), bound to its own source address in 127.0.0.0/8 so that more than 64k connections
//! fit on loopback. Miners really hash: they submit shares that meet the share target and,
//! where the share target is easier than the network's, stay under the network target so that
//! the chain does not move under the measurement. Every share's answer is matched to its
//! request, timed, and counted; stale answers (code 21, a block moved the tip while the share
//! was in flight) are counted apart from rejections.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use quarry_stratum::v1::codec::LineReader;
use quarry_stratum::v1::Notify;
use quarry_work::{Difficulty, Target};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// Largest extranonce2 a pool may ask for (Stratum firmware handles up to 8).
const MAX_EXTRANONCE2: usize = 32;

/// `quarry loadgen`.
#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// Stratum endpoint, host:port (or stratum+tcp://host:port).
    pub url: String,
    /// Simulated miners.
    #[arg(short, long, default_value_t = 100)]
    pub miners: usize,
    /// Username each miner authorizes with (`.N` is appended).
    #[arg(short, long)]
    pub user: String,
    /// Shares per second per miner.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
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
}

#[derive(Default)]
struct Stats {
    connected: AtomicU64,
    failed_connects: AtomicU64,
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    stale: AtomicU64,
    unanswered: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    notifies: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    reject_reasons: Mutex<Vec<String>>,
}

/// Runs the load and prints the report.
pub async fn run(args: LoadgenArgs) -> Result<()> {
    let address = args
        .url
        .trim_start_matches("stratum+tcp://")
        .trim_end_matches('/')
        .to_string();
    let target: SocketAddr = tokio::net::lookup_host(&address)
        .await
        .with_context(|| format!("resolving {address}"))?
        .next()
        .with_context(|| format!("{address} resolves to nothing"))?;
    let stats = Arc::new(Stats::default());
    let rss_before = args.pool_pid.and_then(rss_kib);
    let started = Instant::now();
    let submit_until = started + Duration::from_secs(args.duration);
    let args = Arc::new(args);
    let mut handles = Vec::with_capacity(args.miners);
    let pause = Duration::from_secs_f64(1.0 / args.connect_rate.max(1) as f64);
    for index in 0..args.miners {
        let (stats, args) = (Arc::clone(&stats), Arc::clone(&args));
        handles.push(tokio::spawn(async move {
            if let Err(e) = miner(index, target, &args, &stats, submit_until).await {
                tracing::debug!(index, error = %e, "miner ended");
            }
        }));
        tokio::time::sleep(pause).await;
    }
    let held = stats.connected.load(Ordering::Relaxed);
    let rss_during = args.pool_pid.and_then(rss_kib);
    for handle in handles {
        let _ = handle.await;
    }
    let elapsed = started
        .elapsed()
        .as_secs_f64()
        .min(args.duration as f64)
        .max(0.001);
    report(&args, &stats, held, elapsed, rss_before, rss_during);
    Ok(())
}

/// A source address in 127.0.0.0/8 for miner `index` (127.0.0.1 upward, skipping .0 and .255).
fn source_address(index: usize) -> IpAddr {
    let n = index as u32;
    let (a, b, c) = ((n / (254 * 256)) % 254, (n / 254) % 256, n % 254 + 1);
    IpAddr::V4(Ipv4Addr::new(127, a as u8, b as u8, c as u8))
}

struct Pending {
    id: u64,
    sent: Instant,
}

/// What one simulated miner knows from the pool.
struct Work {
    extranonce1: Vec<u8>,
    extranonce2_len: usize,
    job: Option<Notify>,
    share_target: Target,
    /// Submits not answered yet.
    pending: Vec<Pending>,
}

impl Work {
    /// One message from the pool: a job, a difficulty, or an answer.
    fn on_message(&mut self, value: &Value, stats: &Stats) -> Result<()> {
        match value["method"].as_str() {
            Some("mining.notify") => {
                if let Ok(notify) = Notify::from_params(&value["params"]) {
                    stats.notifies.fetch_add(1, Ordering::Relaxed);
                    self.job = Some(notify);
                }
            }
            Some("mining.set_difficulty") => {
                if let Some(d) = value["params"][0].as_f64().and_then(Difficulty::new) {
                    self.share_target = Target::from_difficulty(d);
                }
            }
            Some(_) => {}
            None => self.on_answer(value, stats)?,
        }
        Ok(())
    }

    fn on_answer(&mut self, value: &Value, stats: &Stats) -> Result<()> {
        let id = value["id"].as_u64().unwrap_or(0);
        if id == 1 {
            self.extranonce1 = value["result"][1]
                .as_str()
                .and_then(|s| hex::decode(s).ok())
                .unwrap_or_default();
            self.extranonce2_len = value["result"][2].as_u64().unwrap_or(4) as usize;
            if self.extranonce2_len > MAX_EXTRANONCE2 {
                anyhow::bail!("pool asks for a {}-byte extranonce2", self.extranonce2_len);
            }
            return Ok(());
        }
        let Some(at) = self.pending.iter().position(|p| p.id == id) else {
            return Ok(());
        };
        let sent = self.pending.swap_remove(at).sent;
        let micros = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        if let Ok(mut latencies) = stats.latencies_us.lock() {
            latencies.push(micros);
        }
        if value["result"] == json!(true) {
            stats.accepted.fetch_add(1, Ordering::Relaxed);
        } else if value["error"][0] == json!(21) {
            stats.stale.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut reasons) = stats.reject_reasons.lock() {
                if reasons.len() < 20 {
                    reasons.push(value["error"].to_string());
                }
            }
        }
        Ok(())
    }
}

async fn miner(
    index: usize,
    target: SocketAddr,
    args: &LoadgenArgs,
    stats: &Stats,
    submit_until: Instant,
) -> Result<()> {
    let socket = TcpSocket::new_v4()?;
    if args.spread_sources && target.ip().is_loopback() {
        socket.bind(SocketAddr::new(source_address(index), 0))?;
    }
    let stream = match socket.connect(target).await {
        Ok(stream) => stream,
        Err(e) => {
            stats.failed_connects.fetch_add(1, Ordering::Relaxed);
            return Err(e.into());
        }
    };
    stats.connected.fetch_add(1, Ordering::Relaxed);
    stream.set_nodelay(true)?;
    let (mut read, mut write) = stream.into_split();
    // Bounded like the pool's own reader: a peer cannot make us buffer without end.
    let mut lines = LineReader::default();
    let mut buf = vec![0u8; 4096];
    let user = format!("{}.{index}", args.user);
    let hello = format!(
        "{}\n{}\n",
        json!({"id": 1, "method": "mining.subscribe", "params": ["quarry-loadgen"]}),
        json!({"id": 2, "method": "mining.authorize", "params": [user, "x"]})
    );
    write.write_all(hello.as_bytes()).await?;
    stats
        .bytes_out
        .fetch_add(hello.len() as u64, Ordering::Relaxed);

    let mut work = Work {
        extranonce1: Vec::new(),
        extranonce2_len: 4,
        job: None,
        share_target: Target::from_difficulty(Difficulty::ONE),
        pending: Vec::new(),
    };
    let mut next_id = 10u64;
    let mut counter = index as u64 * 1_000_003;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    // Spread the miners' submissions over the interval.
    let mut next_submit =
        tokio::time::Instant::now() + interval.mul_f64((index % 997) as f64 / 997.0);
    let submit_until = tokio::time::Instant::from_std(submit_until);
    let answer_until = submit_until + Duration::from_secs(5);
    loop {
        let now = tokio::time::Instant::now();
        if now >= submit_until && work.pending.is_empty() {
            break;
        }
        if now >= answer_until {
            break;
        }
        let wake = if now < submit_until {
            next_submit.min(submit_until)
        } else {
            answer_until
        };
        tokio::select! {
            read_result = read.read(&mut buf) => {
                let n = read_result?;
                if n == 0 {
                    break;
                }
                stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                lines.push(&buf[..n]).map_err(|e| anyhow::anyhow!("{e}"))?;
                while let Some(line) = lines.next_line() {
                    let line = line.map_err(|e| anyhow::anyhow!("{e}"))?;
                    if let Ok(value) = serde_json::from_slice::<Value>(line) {
                        work.on_message(&value, stats)?;
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= submit_until {
                    continue;
                }
                next_submit += interval;
                let Some(job) = &work.job else { continue };
                if args.max_shares > 0 && stats.sent.load(Ordering::Relaxed) >= args.max_shares {
                    continue;
                }
                counter += 1;
                let mut extranonce2 = counter.to_le_bytes()[..work.extranonce2_len.min(8)].to_vec();
                extranonce2.resize(work.extranonce2_len, 0);
                let network = Target::from_compact(job.bits);
                // Skip block-level hashes where the share target allows it, so the chain stays
                // still; on regtest the pool caps shares at the network target and every share
                // is a block candidate.
                let avoid_blocks = network.difficulty() > work.share_target.difficulty();
                let Some(nonce) = (0u32..4_000_000).find(|n| {
                    let hash = job.hash(&work.extranonce1, &extranonce2, job.version, job.ntime, *n);
                    work.share_target.is_met_by(&hash) && !(avoid_blocks && network.is_met_by(&hash))
                }) else { continue };
                let id = next_id;
                next_id += 1;
                let line = format!("{}\n", json!({"id": id, "method": "mining.submit", "params": [
                    user, job.job_id, hex::encode(&extranonce2), format!("{:08x}", job.ntime), format!("{nonce:08x}")]}));
                work.pending.push(Pending { id, sent: Instant::now() });
                write.write_all(line.as_bytes()).await?;
                stats.sent.fetch_add(1, Ordering::Relaxed);
                stats.bytes_out.fetch_add(line.len() as u64, Ordering::Relaxed);
            }
        }
    }
    stats
        .unanswered
        .fetch_add(work.pending.len() as u64, Ordering::Relaxed);
    Ok(())
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

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[at]) / 1000.0
}

fn report(
    args: &LoadgenArgs,
    stats: &Stats,
    held: u64,
    elapsed: f64,
    rss_before: Option<u64>,
    rss_during: Option<u64>,
) {
    let mut latencies = stats
        .latencies_us
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    latencies.sort_unstable();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let sent = load(&stats.sent);
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
        "reject_samples": reasons,
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
    println!(
        "submit latency ms: p50 {} p99 {} max {}",
        out["latency_ms"]["p50"], out["latency_ms"]["p99"], out["latency_ms"]["max"]
    );
    println!(
        "bytes per share: {:.0} sent, {:.0} received",
        out["bytes_sent_per_share"].as_f64().unwrap_or(0.0),
        out["bytes_received_per_share"].as_f64().unwrap_or(0.0)
    );
    if let Some(rss) = rss_per_connection {
        println!("pool RSS per connection: {rss:.0} bytes");
    }
}
