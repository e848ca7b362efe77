//! Hashrate history: accepted difficulty per worker in time buckets, best shares and rejects.
//!
//! [`HistoryBook`] is the sans-IO half. The share path tells it of every accepted and refused
//! share and of every block, in memory and under one short lock. [`HistoryBook::take`] hands
//! over what accumulated as a [`HistoryBatch`], which [`Store::write_history`] *adds* to the
//! database, so several `quarry serve` on one PostgreSQL sum up. [`Store::roll_up_history`]
//! folds closed hours of minute buckets into hour buckets and prunes both (see [`Retention`]).
//!
//! The pool-wide series is stored as its own rows (address and worker `''`), summed from the
//! workers when a batch is taken: the overview chart reads one row per bucket, not one per
//! worker. History is derived data; the share log stays the record a payout is computed from.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use sqlx::Row;

use crate::chain::Chain;
use crate::store::{values_sql, Backend, Store, StoreError};

/// One minute, the finest bucket.
pub const MINUTE_MS: i64 = 60_000;
/// One hour, what minute buckets roll up into.
pub const HOUR_MS: i64 = 3_600_000;
/// An hour is rolled up this long after it ends, so that every instance's last write for it
/// (each writes every few seconds) has landed. A later write still reaches the hour bucket:
/// [`Store::write_history`] adds rolled-up minutes to their hour directly.
pub const ROLLUP_GRACE_MS: i64 = 2 * MINUTE_MS;
/// Minute buckets held in memory while the database refuses writes, at most; beyond, new
/// minutes are dropped (and counted), so an outage cannot exhaust memory.
pub const MAX_PENDING_MINUTES: usize = 1_000_000;

/// How long buckets are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Minute buckets (once rolled up).
    pub minutes_ms: i64,
    /// Hour buckets.
    pub hours_ms: i64,
}

impl Default for Retention {
    /// A day of minutes, a year of hours: at most 1,440 + 8,760 rows per worker.
    fn default() -> Self {
        Retention {
            minutes_ms: 24 * HOUR_MS,
            hours_ms: 365 * 24 * HOUR_MS,
        }
    }
}

/// One time bucket of a series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Bucket {
    /// Start of the bucket, Unix milliseconds.
    pub start_ms: i64,
    /// Sum of accepted share difficulty (credited: the difficulty each share was sent with).
    pub difficulty: f64,
    /// Accepted shares.
    pub shares: i64,
    /// Refused shares.
    pub rejected: i64,
}

impl Bucket {
    fn add(&mut self, other: &Bucket) {
        self.difficulty += other.difficulty;
        self.shares += other.shares;
        self.rejected += other.rejected;
    }
}

/// Whose series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// The whole pool.
    Pool,
    /// Every worker of one payout address.
    Miner(&'a str),
    /// One worker (its full username) of an address.
    Worker(&'a str, &'a str),
}

/// A worker's totals (or the pool's, with address and worker `''`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerSummary {
    /// The chain.
    pub chain: Chain,
    /// Payout address.
    pub address: String,
    /// Full username.
    pub worker: String,
    /// Best difficulty a share's hash achieved, ever.
    pub best_difficulty: f64,
    /// Best since the chain's last block found by the pool.
    pub round_best_difficulty: f64,
    /// Last accepted share, Unix ms (0: none).
    pub last_share_ms: i64,
    /// The difficulty the last accepted share was sent with.
    pub last_difficulty: f64,
    /// Accepted shares, ever.
    pub shares: i64,
    /// Refused shares, ever.
    pub rejected: i64,
    /// Refused shares by reason.
    pub rejects: BTreeMap<String, i64>,
}

/// What one [`HistoryBook::take`] hands to the database.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryBatch {
    /// Chains whose round ended (a block was found) before this batch's shares, in order.
    pub round_resets: Vec<Chain>,
    /// Minute buckets to add, per worker and pool-wide.
    pub buckets: Vec<BucketRow>,
    /// Worker totals to merge.
    pub summaries: Vec<SummaryRow>,
    /// Reject counts to add.
    pub rejects: Vec<RejectRow>,
}

impl HistoryBatch {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.round_resets.is_empty() && self.buckets.is_empty() && self.summaries.is_empty()
    }
}

/// A minute bucket of one worker (or of the pool).
#[derive(Debug, Clone, PartialEq)]
pub struct BucketRow {
    /// The chain.
    pub chain: Chain,
    /// Payout address (`''`: the pool).
    pub address: String,
    /// Full username (`''`: the pool).
    pub worker: String,
    /// The bucket.
    pub bucket: Bucket,
}

/// A worker's totals since the last batch.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    /// The chain.
    pub chain: Chain,
    /// Payout address.
    pub address: String,
    /// Full username.
    pub worker: String,
    /// Best achieved difficulty in the batch.
    pub best_difficulty: f64,
    /// Best achieved difficulty since the round's reset (0 when all of the batch's shares
    /// came before the last block).
    pub round_best_difficulty: f64,
    /// Last accepted share, Unix ms (0: none in the batch).
    pub last_share_ms: i64,
    /// Its difficulty.
    pub last_difficulty: f64,
    /// Accepted shares in the batch.
    pub shares: i64,
    /// Refused shares in the batch.
    pub rejected: i64,
}

/// Refused shares of one worker for one reason.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectRow {
    /// The chain.
    pub chain: Chain,
    /// Payout address.
    pub address: String,
    /// Full username.
    pub worker: String,
    /// The reason's metric label.
    pub reason: String,
    /// How many.
    pub count: i64,
}

/// One worker's activity since the last take.
#[derive(Debug, Default)]
struct Pending {
    address: String,
    /// Minute buckets touched: almost always one, two across a minute's end.
    minutes: Vec<Bucket>,
    best: f64,
    round_best: f64,
    last_share_ms: i64,
    last_difficulty: f64,
    shares: i64,
    rejected: i64,
    rejects: Vec<(String, i64)>,
}

impl Pending {
    fn minute(&mut self, time_ms: i64) -> &mut Bucket {
        let start_ms = time_ms - time_ms.rem_euclid(MINUTE_MS);
        match self.minutes.iter().rposition(|b| b.start_ms == start_ms) {
            Some(at) => &mut self.minutes[at],
            None => {
                self.minutes.push(Bucket {
                    start_ms,
                    ..Bucket::default()
                });
                let last = self.minutes.len() - 1;
                &mut self.minutes[last]
            }
        }
    }

    fn has_minute(&self, time_ms: i64) -> bool {
        let start_ms = time_ms - time_ms.rem_euclid(MINUTE_MS);
        self.minutes.iter().any(|b| b.start_ms == start_ms)
    }
}

/// An accepted share, as history counts it.
#[derive(Debug, Clone, Copy)]
pub struct HistoryShare<'a> {
    /// The chain's key (`bitcoin`, `kaspa`).
    pub chain: &'a str,
    /// Payout address.
    pub address: &'a str,
    /// Full username.
    pub worker: &'a str,
    /// Credited difficulty.
    pub difficulty: f64,
    /// What the hash achieved.
    pub achieved: f64,
    /// When, Unix ms.
    pub time_ms: i64,
}

/// In-memory accumulation between writes.
#[derive(Debug, Default)]
pub struct HistoryBook {
    /// Per chain (one or two of them: a scan beats hashing), per worker.
    chains: Vec<(Chain, HashMap<String, Pending>)>,
    round_resets: Vec<Chain>,
    minutes: usize,
    dropped: u64,
}

impl HistoryBook {
    /// An empty book.
    pub fn new() -> HistoryBook {
        HistoryBook::default()
    }

    fn pending(&mut self, chain: &str, address: &str, worker: &str) -> Option<&mut Pending> {
        let at = match self.chains.iter().position(|(c, _)| c.as_str() == chain) {
            Some(at) => at,
            None => {
                self.chains.push((Chain::new(chain).ok()?, HashMap::new()));
                self.chains.len() - 1
            }
        };
        let workers = &mut self.chains[at].1;
        if !workers.contains_key(worker) {
            workers.insert(
                worker.to_string(),
                Pending {
                    address: address.to_string(),
                    ..Pending::default()
                },
            );
        }
        workers.get_mut(worker)
    }

    /// Makes room for a new minute bucket, or says there is none.
    fn room_for(&mut self, chain: &str, worker: &str, time_ms: i64) -> bool {
        let known = self
            .chains
            .iter()
            .find(|(c, _)| c.as_str() == chain)
            .and_then(|(_, workers)| workers.get(worker))
            .is_some_and(|p| p.has_minute(time_ms));
        if known {
            return true;
        }
        if self.minutes >= MAX_PENDING_MINUTES {
            self.dropped += 1;
            return false;
        }
        self.minutes += 1;
        true
    }

    /// Counts an accepted share. Unnamed workers and chain keys outside the ledger's rules
    /// are not counted (the sessions never produce them).
    pub fn accepted(&mut self, share: &HistoryShare<'_>) {
        if share.worker.is_empty() {
            return;
        }
        // The steady state, one hash lookup: a known worker in a minute it already has.
        let start_ms = share.time_ms - share.time_ms.rem_euclid(MINUTE_MS);
        let known = self
            .chains
            .iter_mut()
            .find(|(c, _)| c.as_str() == share.chain)
            .and_then(|(_, workers)| workers.get_mut(share.worker))
            .filter(|p| p.minutes.last().is_some_and(|b| b.start_ms == start_ms));
        if let Some(pending) = known {
            Self::count(pending, share);
            return;
        }
        if !self.room_for(share.chain, share.worker, share.time_ms) {
            return;
        }
        if let Some(pending) = self.pending(share.chain, share.address, share.worker) {
            Self::count(pending, share);
        }
    }

    fn count(pending: &mut Pending, share: &HistoryShare<'_>) {
        let bucket = pending.minute(share.time_ms);
        bucket.difficulty += share.difficulty;
        bucket.shares += 1;
        pending.best = pending.best.max(share.achieved);
        pending.round_best = pending.round_best.max(share.achieved);
        if share.time_ms >= pending.last_share_ms {
            pending.last_share_ms = share.time_ms;
            pending.last_difficulty = share.difficulty;
        }
        pending.shares += 1;
    }

    /// Counts a refused share of a named worker.
    pub fn rejected(
        &mut self,
        chain: &str,
        address: &str,
        worker: &str,
        reason: &str,
        time_ms: i64,
    ) {
        if worker.is_empty() || !self.room_for(chain, worker, time_ms) {
            return;
        }
        let Some(pending) = self.pending(chain, address, worker) else {
            return;
        };
        pending.minute(time_ms).rejected += 1;
        pending.rejected += 1;
        match pending.rejects.iter_mut().find(|(r, _)| r == reason) {
            Some((_, count)) => *count += 1,
            None => pending.rejects.push((reason.to_string(), 1)),
        }
    }

    /// The pool found a block on `chain`: every worker's best-since-the-last-block starts
    /// over, from the shares after this one.
    pub fn block_found(&mut self, chain: &str) {
        let Ok(key) = Chain::new(chain) else {
            return;
        };
        if let Some((_, workers)) = self.chains.iter_mut().find(|(c, _)| *c == key) {
            for pending in workers.values_mut() {
                pending.round_best = 0.0;
            }
        }
        self.round_resets.push(key);
    }

    /// Minute buckets dropped because writes were failing for long.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Everything since the last take, with the pool-wide rows summed from the workers.
    pub fn take(&mut self) -> HistoryBatch {
        let mut batch = HistoryBatch {
            round_resets: std::mem::take(&mut self.round_resets),
            ..HistoryBatch::default()
        };
        self.minutes = 0;
        for (chain, workers) in std::mem::take(&mut self.chains) {
            let mut pool_minutes: BTreeMap<i64, Bucket> = BTreeMap::new();
            let mut pool = SummaryRow {
                chain: chain.clone(),
                address: String::new(),
                worker: String::new(),
                best_difficulty: 0.0,
                round_best_difficulty: 0.0,
                last_share_ms: 0,
                last_difficulty: 0.0,
                shares: 0,
                rejected: 0,
            };
            let mut pool_rejects: BTreeMap<String, i64> = BTreeMap::new();
            for (worker, pending) in workers {
                for bucket in &pending.minutes {
                    pool_minutes
                        .entry(bucket.start_ms)
                        .or_insert(Bucket {
                            start_ms: bucket.start_ms,
                            ..Bucket::default()
                        })
                        .add(bucket);
                    batch.buckets.push(BucketRow {
                        chain: chain.clone(),
                        address: pending.address.clone(),
                        worker: worker.clone(),
                        bucket: *bucket,
                    });
                }
                for (reason, count) in &pending.rejects {
                    *pool_rejects.entry(reason.clone()).or_default() += count;
                    batch.rejects.push(RejectRow {
                        chain: chain.clone(),
                        address: pending.address.clone(),
                        worker: worker.clone(),
                        reason: reason.clone(),
                        count: *count,
                    });
                }
                pool.best_difficulty = pool.best_difficulty.max(pending.best);
                pool.round_best_difficulty = pool.round_best_difficulty.max(pending.round_best);
                if pending.last_share_ms >= pool.last_share_ms {
                    pool.last_share_ms = pending.last_share_ms;
                    pool.last_difficulty = pending.last_difficulty;
                }
                pool.shares += pending.shares;
                pool.rejected += pending.rejected;
                batch.summaries.push(SummaryRow {
                    chain: chain.clone(),
                    address: pending.address,
                    worker,
                    best_difficulty: pending.best,
                    round_best_difficulty: pending.round_best,
                    last_share_ms: pending.last_share_ms,
                    last_difficulty: pending.last_difficulty,
                    shares: pending.shares,
                    rejected: pending.rejected,
                });
            }
            batch
                .buckets
                .extend(pool_minutes.into_values().map(|bucket| BucketRow {
                    chain: chain.clone(),
                    address: String::new(),
                    worker: String::new(),
                    bucket,
                }));
            batch
                .rejects
                .extend(pool_rejects.into_iter().map(|(reason, count)| RejectRow {
                    chain: chain.clone(),
                    address: String::new(),
                    worker: String::new(),
                    reason,
                    count,
                }));
            batch.summaries.push(pool);
        }
        batch
    }

    /// Puts back a batch the database refused, to go with the next one. The pool-wide rows
    /// are left out: the next take sums them again from the workers.
    pub fn restore(&mut self, batch: HistoryBatch) {
        let resets = std::mem::replace(&mut self.round_resets, batch.round_resets);
        self.round_resets.extend(resets);
        for row in batch.buckets.iter().filter(|r| !r.worker.is_empty()) {
            let time_ms = row.bucket.start_ms;
            if !self.room_for(row.chain.as_str(), &row.worker, time_ms) {
                continue;
            }
            if let Some(pending) = self.pending(row.chain.as_str(), &row.address, &row.worker) {
                pending.minute(time_ms).add(&row.bucket);
            }
        }
        for row in batch.summaries.iter().filter(|r| !r.worker.is_empty()) {
            if let Some(pending) = self.pending(row.chain.as_str(), &row.address, &row.worker) {
                pending.best = pending.best.max(row.best_difficulty);
                pending.round_best = pending.round_best.max(row.round_best_difficulty);
                if row.last_share_ms > pending.last_share_ms {
                    pending.last_share_ms = row.last_share_ms;
                    pending.last_difficulty = row.last_difficulty;
                }
                pending.shares += row.shares;
                pending.rejected += row.rejected;
            }
        }
        for row in batch.rejects.iter().filter(|r| !r.worker.is_empty()) {
            if let Some(pending) = self.pending(row.chain.as_str(), &row.address, &row.worker) {
                match pending.rejects.iter_mut().find(|(r, _)| *r == row.reason) {
                    Some((_, count)) => *count += row.count,
                    None => pending.rejects.push((row.reason.clone(), row.count)),
                }
            }
        }
    }
}

/// What one roll-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RollUp {
    /// Every minute bucket before this is in its hour bucket, Unix ms.
    pub rolled_until_ms: i64,
    /// Hour buckets written or added to.
    pub hours_written: u64,
    /// Minute buckets deleted.
    pub minutes_pruned: u64,
    /// Hour buckets deleted.
    pub hours_pruned: u64,
}

/// Rows per upsert statement (each row 8 to 9 parameters).
const ROWS_PER_UPSERT: usize = 100;

/// The larger of two values, in the backend's dialect.
fn greatest(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "MAX",
        Backend::Postgres => "GREATEST",
    }
}

const BUCKET_UPSERT: &str =
    "ON CONFLICT (chain, resolution_s, address, worker, bucket_ms) DO UPDATE SET \
     difficulty = history_buckets.difficulty + excluded.difficulty, \
     shares = history_buckets.shares + excluded.shares, \
     rejected = history_buckets.rejected + excluded.rejected";

impl Store {
    async fn rolled_until(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<i64, StoreError> {
        // On PostgreSQL the row lock orders writers and the roll-up: a write sees either the
        // hour not yet rolled (its minutes will be) or rolled (it adds to the hour itself).
        let sql = match self.backend() {
            Backend::Sqlite => "SELECT rolled_until_ms FROM history_rollup WHERE id = 1",
            Backend::Postgres => {
                "SELECT rolled_until_ms FROM history_rollup WHERE id = 1 FOR UPDATE"
            }
        };
        Ok(sqlx::query(sql)
            .fetch_one(&mut **tx)
            .await?
            .try_get::<i64, _>(0)?)
    }

    async fn add_buckets(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        resolution_s: i64,
        rows: &[BucketRow],
    ) -> Result<(), StoreError> {
        for chunk in rows.chunks(ROWS_PER_UPSERT) {
            let sql = format!(
                "INSERT INTO history_buckets (chain, resolution_s, bucket_ms, address, worker, \
                 difficulty, shares, rejected) VALUES {} {BUCKET_UPSERT}",
                values_sql(chunk.len(), 8, self.backend())
            );
            let mut query = sqlx::query(&sql);
            for row in chunk {
                query = query
                    .bind(row.chain.as_str().to_string())
                    .bind(resolution_s)
                    .bind(row.bucket.start_ms)
                    .bind(row.address.clone())
                    .bind(row.worker.clone())
                    .bind(row.bucket.difficulty)
                    .bind(row.bucket.shares)
                    .bind(row.bucket.rejected);
            }
            query.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Adds a batch from [`HistoryBook::take`], in one transaction: all or nothing (on an
    /// error, [`HistoryBook::restore`] it). Minute buckets of hours already rolled up are
    /// added to their hour bucket too.
    ///
    /// # Errors
    /// Any database error; nothing is written then.
    pub async fn write_history(&self, batch: &HistoryBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let backend = self.backend();
        let mut tx = self.pool().begin().await?;
        let rolled_until = self.rolled_until(&mut tx).await?;
        for chain in &batch.round_resets {
            sqlx::query("UPDATE worker_summary SET round_best_difficulty = 0 WHERE chain = $1")
                .bind(chain.as_str().to_string())
                .execute(&mut *tx)
                .await?;
        }
        self.add_buckets(&mut tx, 60, &batch.buckets).await?;
        // Late minutes (an outage, a slow instance): straight into their closed hour.
        let mut late: BTreeMap<(Chain, String, String, i64), Bucket> = BTreeMap::new();
        for row in batch
            .buckets
            .iter()
            .filter(|r| r.bucket.start_ms < rolled_until)
        {
            let hour = row.bucket.start_ms - row.bucket.start_ms.rem_euclid(HOUR_MS);
            late.entry((
                row.chain.clone(),
                row.address.clone(),
                row.worker.clone(),
                hour,
            ))
            .or_insert(Bucket {
                start_ms: hour,
                ..Bucket::default()
            })
            .add(&row.bucket);
        }
        let late: Vec<BucketRow> = late
            .into_iter()
            .map(|((chain, address, worker, _), bucket)| BucketRow {
                chain,
                address,
                worker,
                bucket,
            })
            .collect();
        self.add_buckets(&mut tx, 3600, &late).await?;
        let max = greatest(backend);
        for chunk in batch.summaries.chunks(ROWS_PER_UPSERT) {
            let sql = format!(
                "INSERT INTO worker_summary (chain, address, worker, best_difficulty, \
                 round_best_difficulty, last_share_ms, last_difficulty, shares, rejected) VALUES {} \
                 ON CONFLICT (chain, address, worker) DO UPDATE SET \
                 best_difficulty = {max}(worker_summary.best_difficulty, excluded.best_difficulty), \
                 round_best_difficulty = {max}(worker_summary.round_best_difficulty, excluded.round_best_difficulty), \
                 last_difficulty = CASE WHEN excluded.last_share_ms >= worker_summary.last_share_ms \
                   AND excluded.last_share_ms > 0 THEN excluded.last_difficulty ELSE worker_summary.last_difficulty END, \
                 last_share_ms = {max}(worker_summary.last_share_ms, excluded.last_share_ms), \
                 shares = worker_summary.shares + excluded.shares, \
                 rejected = worker_summary.rejected + excluded.rejected",
                values_sql(chunk.len(), 9, backend)
            );
            let mut query = sqlx::query(&sql);
            for row in chunk {
                query = query
                    .bind(row.chain.as_str().to_string())
                    .bind(row.address.clone())
                    .bind(row.worker.clone())
                    .bind(row.best_difficulty)
                    .bind(row.round_best_difficulty)
                    .bind(row.last_share_ms)
                    .bind(row.last_difficulty)
                    .bind(row.shares)
                    .bind(row.rejected);
            }
            query.execute(&mut *tx).await?;
        }
        for chunk in batch.rejects.chunks(ROWS_PER_UPSERT) {
            let sql = format!(
                "INSERT INTO worker_rejects (chain, address, worker, reason, count) VALUES {} \
                 ON CONFLICT (chain, address, worker, reason) DO UPDATE SET \
                 count = worker_rejects.count + excluded.count",
                values_sql(chunk.len(), 5, backend)
            );
            let mut query = sqlx::query(&sql);
            for row in chunk {
                query = query
                    .bind(row.chain.as_str().to_string())
                    .bind(row.address.clone())
                    .bind(row.worker.clone())
                    .bind(row.reason.clone())
                    .bind(row.count);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Rolls every hour that closed [`ROLLUP_GRACE_MS`] before `now_ms` up from its minute
    /// buckets, then prunes minute buckets (only rolled-up ones) and hour buckets past
    /// `retention`. One transaction; safe to run from several instances (the roll-up mark
    /// is updated with the sums, so no hour is added twice).
    ///
    /// # Errors
    /// Any database error; nothing changes then.
    pub async fn roll_up_history(
        &self,
        now_ms: i64,
        retention: Retention,
    ) -> Result<RollUp, StoreError> {
        let mut tx = self.pool().begin().await?;
        let mut rolled_until = self.rolled_until(&mut tx).await?;
        let closed = now_ms - ROLLUP_GRACE_MS;
        let target = closed - closed.rem_euclid(HOUR_MS);
        if rolled_until == 0 {
            // First run: start at the oldest minute there is.
            let oldest: Option<i64> =
                sqlx::query("SELECT MIN(bucket_ms) FROM history_buckets WHERE resolution_s = 60")
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?;
            rolled_until = oldest.map_or(target, |ms| (ms - ms.rem_euclid(HOUR_MS)).min(target));
        }
        let mut report = RollUp {
            rolled_until_ms: rolled_until.max(target),
            ..RollUp::default()
        };
        if target > rolled_until {
            let hour = format!("(bucket_ms / {HOUR_MS}) * {HOUR_MS}");
            let sql = format!(
                "INSERT INTO history_buckets (chain, resolution_s, bucket_ms, address, worker, \
                 difficulty, shares, rejected) \
                 SELECT chain, 3600, {hour}, address, worker, SUM(difficulty), SUM(shares), SUM(rejected) \
                 FROM history_buckets WHERE resolution_s = 60 AND bucket_ms >= $1 AND bucket_ms < $2 \
                 GROUP BY chain, address, worker, {hour} {BUCKET_UPSERT}"
            );
            report.hours_written = sqlx::query(&sql)
                .bind(rolled_until)
                .bind(target)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        sqlx::query("UPDATE history_rollup SET rolled_until_ms = $1 WHERE id = 1")
            .bind(report.rolled_until_ms)
            .execute(&mut *tx)
            .await?;
        let minutes_before = (now_ms - retention.minutes_ms).min(report.rolled_until_ms);
        report.minutes_pruned =
            sqlx::query("DELETE FROM history_buckets WHERE resolution_s = 60 AND bucket_ms < $1")
                .bind(minutes_before)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        report.hours_pruned =
            sqlx::query("DELETE FROM history_buckets WHERE resolution_s = 3600 AND bucket_ms < $1")
                .bind(now_ms - retention.hours_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        tx.commit().await?;
        Ok(report)
    }

    /// A series from `from_ms` (inclusive) to `to_ms` (exclusive) in steps of `step_ms` (a
    /// multiple of a minute), every step present (zero where nothing was mined). Steps of an
    /// hour or more read hour buckets, and minute buckets where the hour is not rolled up yet.
    ///
    /// # Errors
    /// Any database error.
    pub async fn history(
        &self,
        chain: &Chain,
        scope: Scope<'_>,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<Bucket>, StoreError> {
        let step_ms = step_ms.max(MINUTE_MS) - step_ms.max(MINUTE_MS) % MINUTE_MS;
        let from_ms = from_ms - from_ms.rem_euclid(step_ms);
        let (filter, names): (&str, Vec<String>) = match scope {
            Scope::Pool => ("address = '' AND worker = ''", vec![]),
            Scope::Miner(address) => ("address = $5 AND worker <> ''", vec![address.into()]),
            Scope::Worker(address, worker) => (
                "address = $5 AND worker = $6",
                vec![address.into(), worker.into()],
            ),
        };
        let mut sums: BTreeMap<i64, Bucket> = BTreeMap::new();
        let read = |resolution_s: i64, from: i64, to: i64| {
            let sql = format!(
                "SELECT bucket_ms, difficulty, shares, rejected FROM history_buckets \
                 WHERE chain = $1 AND resolution_s = $2 AND bucket_ms >= $3 AND bucket_ms < $4 AND {filter}"
            );
            let names = names.clone();
            let chain = chain.as_str().to_string();
            let pool = self.pool().clone();
            async move {
                let mut query = sqlx::query(&sql)
                    .bind(chain)
                    .bind(resolution_s)
                    .bind(from)
                    .bind(to);
                for name in names {
                    query = query.bind(name);
                }
                query.fetch_all(&pool).await
            }
        };
        let mut rows = Vec::new();
        if step_ms >= HOUR_MS && step_ms % HOUR_MS == 0 {
            let rolled_until =
                sqlx::query("SELECT rolled_until_ms FROM history_rollup WHERE id = 1")
                    .fetch_one(self.pool())
                    .await?
                    .try_get::<i64, _>(0)?
                    .clamp(from_ms, to_ms.max(from_ms));
            rows.extend(read(3600, from_ms, rolled_until).await?);
            rows.extend(read(60, rolled_until, to_ms).await?);
        } else {
            rows.extend(read(60, from_ms, to_ms).await?);
        }
        for row in &rows {
            let start: i64 = row.try_get(0)?;
            let step = start - (start - from_ms).rem_euclid(step_ms);
            sums.entry(step)
                .or_insert(Bucket {
                    start_ms: step,
                    ..Bucket::default()
                })
                .add(&Bucket {
                    start_ms: start,
                    difficulty: row.try_get(1)?,
                    shares: row.try_get(2)?,
                    rejected: row.try_get(3)?,
                });
        }
        let mut series = Vec::new();
        let mut at = from_ms;
        while at < to_ms && series.len() < 100_000 {
            series.push(sums.get(&at).copied().unwrap_or(Bucket {
                start_ms: at,
                ..Bucket::default()
            }));
            at += step_ms;
        }
        Ok(series)
    }

    /// Stored buckets of a resolution (60 or 3600): for tests and operators checking sizes.
    ///
    /// # Errors
    /// Any database error.
    pub async fn history_rows(&self, resolution_s: i64) -> Result<Vec<BucketRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT chain, address, worker, bucket_ms, difficulty, shares, rejected \
             FROM history_buckets WHERE resolution_s = $1 ORDER BY chain, address, worker, bucket_ms",
        )
        .bind(resolution_s)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let chain: String = row.try_get(0)?;
                Ok(BucketRow {
                    chain: Chain::new(&chain).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                    address: row.try_get(1)?,
                    worker: row.try_get(2)?,
                    bucket: Bucket {
                        start_ms: row.try_get(3)?,
                        difficulty: row.try_get(4)?,
                        shares: row.try_get(5)?,
                        rejected: row.try_get(6)?,
                    },
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Totals of every worker of `address` on `chain` (`''`: the pool's own row), busiest
    /// last-share first, with rejects by reason.
    ///
    /// # Errors
    /// Any database error.
    pub async fn worker_summaries(
        &self,
        chain: &Chain,
        address: &str,
    ) -> Result<Vec<WorkerSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT address, worker, best_difficulty, round_best_difficulty, last_share_ms, \
             last_difficulty, shares, rejected FROM worker_summary \
             WHERE chain = $1 AND address = $2 ORDER BY last_share_ms DESC, worker",
        )
        .bind(chain.as_str().to_string())
        .bind(address.to_string())
        .fetch_all(self.pool())
        .await?;
        let rejects = sqlx::query(
            "SELECT worker, reason, count FROM worker_rejects WHERE chain = $1 AND address = $2",
        )
        .bind(chain.as_str().to_string())
        .bind(address.to_string())
        .fetch_all(self.pool())
        .await?;
        let mut by_worker: HashMap<String, BTreeMap<String, i64>> = HashMap::new();
        for row in &rejects {
            by_worker
                .entry(row.try_get(0)?)
                .or_default()
                .insert(row.try_get(1)?, row.try_get(2)?);
        }
        rows.iter()
            .map(|row| {
                let worker: String = row.try_get(1)?;
                Ok(WorkerSummary {
                    chain: chain.clone(),
                    address: row.try_get(0)?,
                    rejects: by_worker.remove(&worker).unwrap_or_default(),
                    worker,
                    best_difficulty: row.try_get(2)?,
                    round_best_difficulty: row.try_get(3)?,
                    last_share_ms: row.try_get(4)?,
                    last_difficulty: row.try_get(5)?,
                    shares: row.try_get(6)?,
                    rejected: row.try_get(7)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share<'a>(
        worker: &'a str,
        difficulty: f64,
        achieved: f64,
        time_ms: i64,
    ) -> HistoryShare<'a> {
        HistoryShare {
            chain: "bitcoin",
            address: worker.split('.').next().unwrap_or(worker),
            worker,
            difficulty,
            achieved,
            time_ms,
        }
    }

    #[test]
    fn a_take_sums_the_pool_from_its_workers_minute_by_minute() {
        let mut book = HistoryBook::new();
        book.accepted(&share("a.1", 2.0, 5.0, 1_000));
        book.accepted(&share("a.1", 2.0, 3.0, 59_999));
        book.accepted(&share("a.1", 4.0, 1.0, 60_000));
        book.accepted(&share("b.1", 1.0, 9.0, 30_000));
        book.rejected("bitcoin", "b", "b.1", "stale", 30_001);
        let batch = book.take();
        let pool: Vec<_> = batch
            .buckets
            .iter()
            .filter(|r| r.worker.is_empty())
            .collect();
        assert_eq!(pool.len(), 2);
        assert_eq!(
            (pool[0].bucket.start_ms, pool[0].bucket.difficulty),
            (0, 5.0)
        );
        assert_eq!(pool[0].bucket.rejected, 1);
        assert_eq!(
            (pool[1].bucket.start_ms, pool[1].bucket.difficulty),
            (60_000, 4.0)
        );
        let summary = |w: &str| batch.summaries.iter().find(|s| s.worker == w).cloned();
        let a = summary("a.1").expect("a.1");
        assert_eq!(
            (a.best_difficulty, a.shares, a.last_difficulty),
            (5.0, 3, 4.0)
        );
        let whole = summary("").expect("pool row");
        assert_eq!(
            (whole.best_difficulty, whole.shares, whole.rejected),
            (9.0, 4, 1)
        );
        assert!(book.take().is_empty(), "a take empties the book");
    }

    #[test]
    fn a_block_starts_the_round_best_over() {
        let mut book = HistoryBook::new();
        book.accepted(&share("a.1", 1.0, 50.0, 1_000));
        book.block_found("bitcoin");
        book.accepted(&share("a.1", 1.0, 7.0, 2_000));
        let batch = book.take();
        assert_eq!(batch.round_resets, vec![Chain::BITCOIN]);
        let a = batch
            .summaries
            .iter()
            .find(|s| s.worker == "a.1")
            .expect("a.1");
        assert_eq!((a.best_difficulty, a.round_best_difficulty), (50.0, 7.0));
    }

    #[test]
    fn a_refused_batch_comes_back_whole_without_doubling_the_pool() {
        let mut book = HistoryBook::new();
        book.accepted(&share("a.1", 2.0, 5.0, 1_000));
        book.rejected("bitcoin", "a", "a.1", "duplicate", 1_500);
        let first = book.take();
        book.restore(first.clone());
        book.accepted(&share("a.1", 1.0, 1.0, 2_000));
        let second = book.take();
        let pool = second
            .buckets
            .iter()
            .find(|r| r.worker.is_empty())
            .expect("pool");
        assert_eq!(
            (
                pool.bucket.difficulty,
                pool.bucket.shares,
                pool.bucket.rejected
            ),
            (3.0, 2, 1)
        );
        let rejects: i64 = second
            .rejects
            .iter()
            .filter(|r| r.worker.is_empty())
            .map(|r| r.count)
            .sum();
        assert_eq!(rejects, 1);
    }

    #[test]
    fn unnamed_workers_and_bad_chain_keys_are_not_counted() {
        let mut book = HistoryBook::new();
        book.accepted(&share("", 1.0, 1.0, 0));
        book.accepted(&HistoryShare {
            chain: "Not A Chain",
            ..share("a.1", 1.0, 1.0, 0)
        });
        assert!(book.take().is_empty());
    }

    #[test]
    fn values_sql_numbers_postgres_placeholders_in_order() {
        assert_eq!(values_sql(2, 2, Backend::Postgres), "($1,$2),($3,$4)");
        assert_eq!(values_sql(1, 3, Backend::Sqlite), "(?,?,?)");
    }
}
