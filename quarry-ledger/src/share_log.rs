//! The durable share log: group commit, and a local spool when the database is away.
//!
//! [`ShareLog::record`] resolves only once the share is durable: committed (SQLite fsyncs the
//! WAL on commit) or appended and fsynced to the spool file. The pool answers the miner after
//! that, so an acknowledged share survives `kill -9`. Shares arriving while a commit runs wait
//! for the next one, which commits them all together (group commit): one fsync per batch, not
//! per share.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::store::{ShareRecord, Store};

/// Most shares in one commit.
const MAX_BATCH: usize = 8192;
/// Shares waiting for the writer before `record` waits for room (back-pressure, bounded memory).
const QUEUE: usize = 65_536;

/// Why a share could not be made durable (neither database nor spool).
#[derive(Debug, Clone, thiserror::Error)]
#[error("share not recorded: {0}")]
pub struct RecordError(pub String);

struct Pending {
    share: ShareRecord,
    done: oneshot::Sender<Result<(), RecordError>>,
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct ShareLogStats {
    /// Shares committed to the database.
    pub committed: AtomicU64,
    /// Shares written to the spool.
    pub spooled: AtomicU64,
    /// Commits (batches).
    pub commits: AtomicU64,
    /// Microseconds spent in commits.
    pub commit_micros: AtomicU64,
}

/// A queued share; [`Receipt::durable`] resolves once it is committed or spooled.
pub struct Receipt(oneshot::Receiver<Result<(), RecordError>>);

impl Receipt {
    /// Waits until the share is durable.
    ///
    /// # Errors
    /// When it could not be made durable.
    pub async fn durable(self) -> Result<(), RecordError> {
        self.0
            .await
            .map_err(|_| RecordError("share log stopped".into()))?
    }
}

/// Handle to the writer task.
#[derive(Clone)]
pub struct ShareLog {
    queue: mpsc::Sender<Pending>,
    stats: Arc<ShareLogStats>,
}

impl ShareLog {
    /// Starts the writer; `spool_dir` holds shares the database could not take. Spooled shares
    /// from an earlier run are replayed first.
    pub fn spawn(store: Store, spool_dir: PathBuf) -> ShareLog {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let stats = Arc::new(ShareLogStats::default());
        tokio::spawn(writer(store, spool_dir, receiver, Arc::clone(&stats)));
        ShareLog { queue, stats }
    }

    /// Records a share; returns once it is durable.
    ///
    /// # Errors
    /// When neither the database nor the spool could take it (the pool then rejects the share
    /// rather than acknowledging something it may lose).
    pub async fn record(&self, share: ShareRecord) -> Result<(), RecordError> {
        self.enqueue(share).await?.durable().await
    }

    /// Queues a share and returns a receipt to wait on: queue several, then wait, and they
    /// share one commit.
    ///
    /// # Errors
    /// When the writer has stopped.
    pub async fn enqueue(&self, share: ShareRecord) -> Result<Receipt, RecordError> {
        let (done, wait) = oneshot::channel();
        self.queue
            .send(Pending { share, done })
            .await
            .map_err(|_| RecordError("share log stopped".into()))?;
        Ok(Receipt(wait))
    }

    /// Queues a share when the queue has room now, with no future to await: the common case,
    /// and one that keeps a connection's task small. Gives the share back when the queue is
    /// full, for [`ShareLog::enqueue`] to wait.
    ///
    /// # Errors
    /// The inner error when the writer has stopped.
    #[allow(clippy::result_large_err)]
    pub fn try_enqueue(
        &self,
        share: ShareRecord,
    ) -> Result<Result<Receipt, RecordError>, ShareRecord> {
        let (done, wait) = oneshot::channel();
        match self.queue.try_send(Pending { share, done }) {
            Ok(()) => Ok(Ok(Receipt(wait))),
            Err(mpsc::error::TrySendError::Full(pending)) => Err(pending.share),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Ok(Err(RecordError("share log stopped".into())))
            }
        }
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<ShareLogStats> {
        &self.stats
    }
}

async fn writer(
    store: Store,
    spool_dir: PathBuf,
    mut receiver: mpsc::Receiver<Pending>,
    stats: Arc<ShareLogStats>,
) {
    let mut spool = Spool::new(spool_dir);
    // While the database is down, batches go straight to the spool (no waiting on connection
    // timeouts per batch) and a probe task watches for the database to come back.
    let db_up = Arc::new(AtomicBool::new(true));
    let mut batch: Vec<Pending> = Vec::with_capacity(256);
    // An earlier run's spool goes in at start, not only when the first share arrives.
    if spool.has_data() {
        if let Err(e) = spool.replay(&store).await {
            warn!(error = %e, "spool replay failed");
            mark_down(&store, &db_up);
        }
    }
    loop {
        // With spooled shares waiting, an idle pool still replays them once the database is
        // back, instead of waiting for the next share.
        let first = tokio::select! {
            first = receiver.recv() => first,
            _ = tokio::time::sleep(Duration::from_secs(1)), if spool.has_data() => {
                if db_up.load(Ordering::Acquire) {
                    if let Err(e) = spool.replay(&store).await {
                        warn!(error = %e, "spool replay failed");
                        mark_down(&store, &db_up);
                    }
                }
                continue;
            }
        };
        let Some(first) = first else {
            return;
        };
        batch.push(first);
        // Everything that queued up while the last commit ran goes into this one.
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        if db_up.load(Ordering::Acquire) && spool.has_data() {
            if let Err(e) = spool.replay(&store).await {
                warn!(error = %e, "spool replay failed");
                mark_down(&store, &db_up);
            }
        }
        let shares: Vec<ShareRecord> = batch.iter().map(|p| p.share.clone()).collect();
        let started = Instant::now();
        let mut committed = false;
        if db_up.load(Ordering::Acquire) {
            match store.insert_shares(&shares).await {
                Ok(()) => {
                    stats
                        .committed
                        .fetch_add(shares.len() as u64, Ordering::Relaxed);
                    committed = true;
                }
                Err(e) => {
                    warn!(error = %e, shares = shares.len(), "database write failed; spooling until it is back");
                    mark_down(&store, &db_up);
                }
            }
        }
        let result = if committed {
            Ok(())
        } else {
            match spool.append(&shares).await {
                Ok(()) => {
                    stats
                        .spooled
                        .fetch_add(shares.len() as u64, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) => Err(RecordError(format!("database down and spool failed: {e}"))),
            }
        };
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats
            .commit_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        for pending in batch.drain(..) {
            let _ = pending.done.send(result.clone());
        }
    }
}

/// Marks the database down and starts a probe that marks it up again once it answers.
fn mark_down(store: &Store, db_up: &Arc<AtomicBool>) {
    if !db_up.swap(false, Ordering::AcqRel) {
        return; // a probe is already running
    }
    let store = store.clone();
    let db_up = Arc::clone(db_up);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if store.ping().await.is_ok() {
                info!("database is back; replaying the spool");
                db_up.store(true, Ordering::Release);
                return;
            }
        }
    });
}

/// Shares waiting for the database, one JSON line each, fsynced. Each file has a unique name
/// that is recorded in the same transaction as its shares, so a replay interrupted after its
/// commit cannot count them twice.
struct Spool {
    dir: PathBuf,
    pending: bool,
    current: Option<PathBuf>,
}

impl Spool {
    fn new(dir: PathBuf) -> Self {
        let pending = spool_files(&dir).map(|f| !f.is_empty()).unwrap_or(false);
        Spool {
            dir,
            pending,
            current: None,
        }
    }

    fn has_data(&self) -> bool {
        self.pending
    }

    async fn append(&mut self, shares: &[ShareRecord]) -> std::io::Result<()> {
        tokio::fs::create_dir_all(&self.dir).await?;
        let path = match &self.current {
            Some(path) => path.clone(),
            None => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let path = self
                    .dir
                    .join(format!("shares-{nanos}-{}.spool", std::process::id()));
                self.current = Some(path.clone());
                path
            }
        };
        let mut text = String::new();
        for share in shares {
            text.push_str(&serde_json::to_string(share).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await?;
        let before = file.metadata().await?.len();
        let written = async {
            file.write_all(text.as_bytes()).await?;
            // tokio hands the write to a blocking thread and reports its error only on the
            // next operation: without this flush a full disk's ENOSPC was lost, sync_all
            // succeeded, and shares that never reached the file were acknowledged.
            file.flush().await?;
            file.sync_all().await
        };
        if let Err(e) = written.await {
            // A full disk can leave part of the batch behind: cut it off, so the file holds
            // only whole lines of acknowledged shares. Failing that, later batches go to a new
            // file rather than after the torn one.
            if file.set_len(before).await.is_err() || file.sync_all().await.is_err() {
                self.current = None;
            }
            return Err(e);
        }
        if let Ok(dir) = tokio::fs::File::open(&self.dir).await {
            // The new file's directory entry must be durable too.
            let _ = dir.sync_all().await;
        }
        self.pending = true;
        Ok(())
    }

    /// Moves spooled shares into the database, one transaction per file.
    async fn replay(&mut self, store: &Store) -> Result<(), String> {
        // New spooling goes to a fresh file; the ones below are closed.
        self.current = None;
        let files = spool_files(&self.dir).map_err(|e| e.to_string())?;
        for file in files {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let text = tokio::fs::read_to_string(&file)
                .await
                .map_err(|e| e.to_string())?;
            let parsed = parse_spool(&text);
            if let Some(torn) = &parsed.torn {
                warn!(file = %file.display(), bytes = torn.len(), "spool file ends in a torn line (a crash mid-append; that share was never acknowledged): skipped");
            }
            if !parsed.corrupt.is_empty() {
                // Acknowledged shares that no longer parse: never dropped silently. They go
                // aside, next to the spool, for the operator to inspect and re-enter.
                let aside = self.keep_aside(&name, &parsed.corrupt).await?;
                error!(
                    file = %file.display(),
                    lines = parsed.corrupt.len(),
                    kept_in = %aside.display(),
                    "corrupt lines in a spool file: acknowledged shares that cannot be read were kept aside, not replayed"
                );
            }
            let shares = parsed.shares;
            let inserted = store
                .insert_spooled(&name, &shares)
                .await
                .map_err(|e| e.to_string())?;
            tokio::fs::remove_file(&file)
                .await
                .map_err(|e| e.to_string())?;
            info!(shares = shares.len(), inserted, file = %file.display(), "spool replayed");
        }
        self.pending = false;
        Ok(())
    }

    /// Writes `lines` (line number, text) to `<spool>/corrupt/<file>.corrupt`, fsynced, and
    /// returns its path.
    async fn keep_aside(&self, file: &str, lines: &[(usize, String)]) -> Result<PathBuf, String> {
        let dir = self.dir.join("corrupt");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let path = dir.join(format!("{file}.corrupt"));
        let mut text = String::new();
        for (number, line) in lines {
            text.push_str(&format!("{number}\t{line}\n"));
        }
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        out.write_all(text.as_bytes())
            .await
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        out.sync_all()
            .await
            .map_err(|e| format!("syncing {}: {e}", path.display()))?;
        Ok(path)
    }
}

/// What a spool file holds.
#[derive(Debug, Default, PartialEq)]
struct ParsedSpool {
    shares: Vec<ShareRecord>,
    /// Complete lines (newline-terminated, so fsynced and acknowledged) that do not parse,
    /// with their 1-based line numbers.
    corrupt: Vec<(usize, String)>,
    /// An unterminated last line that does not parse: a crash mid-append, never acknowledged.
    torn: Option<String>,
}

/// Splits a spool file into shares, corrupt lines and a torn tail. Every append ends its lines
/// with a newline before the fsync that acknowledges them, so only an unterminated last line
/// can be a torn write; anything else that fails to parse is damage to acknowledged shares.
fn parse_spool(text: &str) -> ParsedSpool {
    let mut parsed = ParsedSpool::default();
    let mut rest = text;
    let mut number = 0;
    while !rest.is_empty() {
        number += 1;
        let (line, terminated, next) = match rest.find('\n') {
            Some(end) => (&rest[..end], true, &rest[end + 1..]),
            None => (rest, false, ""),
        };
        rest = next;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<ShareRecord>(line) {
            Ok(share) => parsed.shares.push(share),
            Err(_) if !terminated => parsed.torn = Some(line.to_string()),
            Err(_) => parsed.corrupt.push((number, line.to_string())),
        }
    }
    parsed
}

fn spool_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "spool"))
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Chain;

    fn share(i: i64) -> ShareRecord {
        ShareRecord {
            created_ms: i,
            address: "a".into(),
            worker: "a.w".into(),
            difficulty: 1.0,
            network_difficulty: 2.0,
            block_reward: 3,
            height: 4,
            template_id: 5,
            is_block: false,
            instance: "t".into(),
            chain: Chain::BITCOIN,
            aux_payouts: Default::default(),
            hash: None,
        }
    }

    fn line(i: i64) -> String {
        serde_json::to_string(&share(i)).expect("serializes")
    }

    #[test]
    fn only_an_unterminated_last_line_counts_as_torn() {
        let text = format!(
            "{}\n{{\"created_ms\":\n{}\n{}",
            line(1),
            line(2),
            &line(3)[..20]
        );
        let parsed = parse_spool(&text);
        assert_eq!(parsed.shares, vec![share(1), share(2)]);
        assert_eq!(parsed.corrupt, vec![(2, "{\"created_ms\":".to_string())]);
        assert_eq!(parsed.torn.as_deref(), Some(&line(3)[..20]));
    }

    #[test]
    fn a_clean_file_has_no_damage() {
        let text = format!("{}\n{}\n", line(1), line(2));
        let parsed = parse_spool(&text);
        assert_eq!(parsed.shares.len(), 2);
        assert!(parsed.corrupt.is_empty() && parsed.torn.is_none());
        // A complete last line without its newline (cut just before it) still parses.
        assert_eq!(parse_spool(&line(7)).shares, vec![share(7)]);
    }
}
