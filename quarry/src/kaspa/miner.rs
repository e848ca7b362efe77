//! `quarry mine --coin kaspa`: a multi-threaded CPU kHeavyHash miner speaking the Kaspa stratum
//! dialect. Its user agent (`--agent`) picks the job encoding the pool sends, so tests can be
//! an IceRiver (one hex string), a Bitmain (`GodMiner`: array jobs, no extranonce) or anything
//! else (array jobs).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kaspa_math::Uint256;
use quarry_kaspa::target::target_for;
use quarry_kaspa::work::MinerJob;
use quarry_work::Difficulty;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::cli::MineArgs;

/// Longest line taken from the pool.
const MAX_LINE: u64 = 64 * 1024;

/// The job the threads hash.
struct Work {
    job_id: String,
    job: MinerJob,
    target: Uint256,
    /// This connection's extranonce: the nonce's high bytes.
    extranonce: Vec<u8>,
}

struct Shared {
    work: RwLock<Option<Arc<Work>>>,
    generation: AtomicU64,
    stop: AtomicBool,
    hashes: AtomicU64,
}

/// A nonce meeting the share target: the job, and the hex digits to send (after the
/// extranonce).
struct Found {
    job_id: String,
    nonce: String,
}

#[derive(Default)]
struct Totals {
    submitted: u64,
    accepted: u64,
    rejected: u64,
}

/// Mines until `--duration` passes (or forever), reconnecting on errors.
pub async fn run(args: MineArgs) -> Result<()> {
    let address = args
        .url
        .strip_prefix("stratum+tcp://")
        .or_else(|| args.url.strip_prefix("tcp://"))
        .unwrap_or(&args.url)
        .trim_end_matches('/')
        .to_string();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let shared = Arc::new(Shared {
        work: RwLock::new(None),
        generation: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        hashes: AtomicU64::new(0),
    });
    let (found_tx, mut found_rx) = mpsc::channel::<Found>(1024);
    let mut handles = Vec::new();
    for index in 0..threads {
        let shared = Arc::clone(&shared);
        let found_tx = found_tx.clone();
        handles.push(std::thread::spawn(move || {
            hash_loop(index, threads, &shared, &found_tx)
        }));
    }
    let agent = args
        .agent
        .clone()
        .unwrap_or_else(|| format!("quarry-miner/{}", env!("CARGO_PKG_VERSION")));
    info!(threads, pool = %address, user = %args.user, %agent, "mining kaspa");
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut totals = Totals::default();
    loop {
        match session(
            &address,
            &agent,
            &args,
            &shared,
            &mut found_rx,
            &mut totals,
            deadline,
        )
        .await
        {
            Ok(()) => break,
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
    let hashes = shared.hashes.load(Ordering::Relaxed);
    info!(
        accepted = totals.accepted,
        rejected = totals.rejected,
        hashes,
        "miner finished"
    );
    println!(
        "accepted={} rejected={} submitted={} hashes={}",
        totals.accepted, totals.rejected, totals.submitted, hashes
    );
    Ok(())
}

/// One connection: subscribe, authorize, then jobs in and shares out until the deadline.
async fn session(
    address: &str,
    agent: &str,
    args: &MineArgs,
    shared: &Shared,
    found: &mut mpsc::Receiver<Found>,
    totals: &mut Totals,
    deadline: Option<Instant>,
) -> Result<()> {
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    // Bounded per line: the limit is reset after each line.
    let mut reader = BufReader::new(reader).take(MAX_LINE);
    let send = |value: Value| {
        let mut line = value.to_string();
        line.push('\n');
        line
    };
    let hello = [
        send(json!({"id": 1, "method": "mining.subscribe", "params": [agent, "EthereumStratum/1.0.0"]})),
        send(json!({"id": 2, "method": "mining.authorize", "params": [args.user, args.password]})),
    ]
    .concat();
    writer.write_all(hello.as_bytes()).await?;
    let mut extranonce: Vec<u8> = Vec::new();
    let mut target = target_for(Difficulty::ONE);
    let mut next_id = 3u64;
    // Drain shares found on an earlier connection's work: they would only be refused.
    while found.try_recv().is_ok() {}
    let mut line = Vec::new();
    loop {
        let remaining = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(3600),
        };
        if remaining.is_zero() {
            return Ok(());
        }
        tokio::select! {
            // A line cut short by another branch stays in `line` and is read on next time.
            read = reader.read_until(b'\n', &mut line) => {
                if read? == 0 {
                    match reader.limit() {
                        0 => bail!("the pool sent a line over {MAX_LINE} bytes"),
                        _ => bail!("the pool closed the connection"),
                    }
                }
                if !line.ends_with(b"\n") {
                    continue;
                }
                reader.set_limit(MAX_LINE);
                let parsed = serde_json::from_slice::<Value>(&line);
                line.clear();
                let message: Value = match parsed {
                    Ok(message) => message,
                    Err(e) => {
                        warn!(error = %e, "unreadable line from the pool");
                        continue;
                    }
                };
                match message["method"].as_str() {
                    Some("mining.set_extranonce") | Some("set_extranonce") => {
                        extranonce = message["params"][0].as_str().and_then(|h| hex::decode(h).ok()).unwrap_or_default();
                    }
                    Some("mining.set_difficulty") => {
                        if let Some(d) = message["params"][0].as_f64().and_then(Difficulty::new) {
                            target = target_for(d);
                        }
                    }
                    Some("mining.notify") => match parse_job(&message["params"]) {
                        Some((job_id, pre_pow, timestamp)) => {
                            let work = Work { job_id, job: MinerJob::new(pre_pow, timestamp), target, extranonce: extranonce.clone() };
                            *shared.work.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(work));
                            shared.generation.fetch_add(1, Ordering::SeqCst);
                        }
                        None => warn!(params = %message["params"], "a job in neither encoding"),
                    },
                    Some(_) => {}
                    None => match message["id"].as_u64() {
                        Some(1) => {
                            // Bitmain's form: [null, extranonce, nonce bytes left].
                            if let Some(hex) = message["result"][1].as_str().filter(|_| message["result"][0].is_null()) {
                                extranonce = hex::decode(hex).unwrap_or_default();
                            }
                        }
                        Some(2) if message["result"] != json!(true) => {
                            bail!("authorization refused: {}", message["error"]);
                        }
                        Some(2) => {}
                        Some(_) => match message["result"] == json!(true) {
                            true => totals.accepted += 1,
                            false => {
                                totals.rejected += 1;
                                warn!(error = %message["error"], "share rejected");
                            }
                        },
                        None => {}
                    },
                }
            }
            share = found.recv() => {
                let Some(share) = share else { bail!("hashing threads stopped") };
                let submit = send(json!({"id": next_id, "method": "mining.submit",
                    "params": [args.user, share.job_id, share.nonce]}));
                next_id += 1;
                totals.submitted += 1;
                writer.write_all(submit.as_bytes()).await?;
            }
            _ = tokio::time::sleep(remaining) => return Ok(()),
        }
    }
}

/// `[id, [w0, w1, w2, w3], timestamp]` or `[id, "<64 hex pre-PoW hash><16 hex LE timestamp>"]`.
pub(crate) fn parse_job(params: &Value) -> Option<(String, [u8; 32], u64)> {
    let job_id = match &params[0] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let mut pre_pow = [0u8; 32];
    let timestamp = match &params[1] {
        Value::Array(words) if words.len() == 4 => {
            for (chunk, word) in pre_pow.chunks_exact_mut(8).zip(words) {
                chunk.copy_from_slice(&word.as_u64()?.to_le_bytes());
            }
            params[2].as_u64()?
        }
        Value::String(text) if text.len() == 80 => {
            let bytes = hex::decode(text).ok()?;
            pre_pow.copy_from_slice(&bytes[..32]);
            u64::from_le_bytes(bytes[32..].try_into().ok()?)
        }
        _ => return None,
    };
    Some((job_id, pre_pow, timestamp))
}

/// Hashes the current work: thread `index` of `threads` takes every `threads`-th nonce below
/// the extranonce, sending each share's digits without the extranonce, as ASICs do.
fn hash_loop(index: usize, threads: usize, shared: &Shared, found: &mpsc::Sender<Found>) {
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
        let free_bits = 64 - 8 * work.extranonce.len().min(3) as u32;
        let prefix = work
            .extranonce
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
            .checked_shl(free_bits)
            .unwrap_or(0);
        let digits = (free_bits / 4) as usize;
        // A random start, as ASICs have: a rig without an extranonce (Bitmain's) that
        // reconnects to the same template must not send its earlier shares again.
        let mut low = random_start().wrapping_add(index as u64);
        let mut counted = 0u64;
        while shared.generation.load(Ordering::Relaxed) == generation
            && !shared.stop.load(Ordering::Relaxed)
        {
            for _ in 0..64 {
                let nonce = prefix | (low & mask(free_bits));
                if work.job.pow(nonce) <= work.target {
                    let share = Found {
                        job_id: work.job_id.clone(),
                        nonce: format!("{:0digits$x}", nonce & mask(free_bits)),
                    };
                    if found.blocking_send(share).is_err() {
                        return;
                    }
                }
                low = low.wrapping_add(threads as u64);
                counted += 1;
            }
            shared.hashes.fetch_add(64, Ordering::Relaxed);
        }
        let _ = counted;
    }
}

/// A start in the nonce space, different on every call (the clock, mixed by splitmix64).
fn random_start() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = nanos ^ CALLS.fetch_add(1, Ordering::Relaxed).rotate_left(32);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn mask(bits: u32) -> u64 {
    match bits {
        64 => u64::MAX,
        b => (1u64 << b) - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_job_encodings_parse_to_the_same_work() {
        // The testnet genesis job in both encodings (from the Kaspa note's vectors).
        let array = json!([
            "7",
            [
                6609771454773699064u64,
                13556611415092893196u64,
                16473918277081561826u64,
                4461614803248817874u64
            ],
            1633687894966u64
        ]);
        let hex = json!([
            "7",
            "f8a14d381ea0ba5b0c169e8a41c222bce2fa42f4631d9fe4d226456006d7ea3db6fb625f7c010000"
        ]);
        let a = parse_job(&array).expect("array job");
        let h = parse_job(&hex).expect("hex job");
        assert_eq!(a, h);
        assert_eq!(a.0, "7");
        assert_eq!(a.2, 1633687894966);
        assert_eq!(
            hex::encode(a.1),
            "f8a14d381ea0ba5b0c169e8a41c222bce2fa42f4631d9fe4d226456006d7ea3d"
        );
        assert!(parse_job(&json!(["7", "abcd"])).is_none());
        assert!(parse_job(&json!(["7", [1, 2, 3], 5])).is_none());
    }
}
