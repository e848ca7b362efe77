//! The database: SQLite (embedded, the default) or PostgreSQL, chosen by URL, one schema.
//!
//! Queries are written once with `$N` placeholders numbered in order of appearance, which
//! PostgreSQL reads natively and SQLite binds positionally. The one exception is the bulk share
//! insert: `?` placeholders and smaller statements on SQLite, for speed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::any::{install_default_drivers, AnyPoolOptions};
use sqlx::{AnyPool, Executor, Row};

use crate::amount::{Msat, Sat};
use crate::chain::Chain;

/// Which database is behind a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in WAL mode with `synchronous=FULL`: every commit is fsynced.
    Sqlite,
    /// PostgreSQL (synchronous commit, the server default).
    Postgres,
}

/// Database errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL names no supported database.
    #[error("ledger url must start with sqlite: or postgres:// (got {0})")]
    UnsupportedUrl(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// An accepted share as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareRecord {
    /// Unix milliseconds when the share was accepted.
    pub created_ms: i64,
    /// Payout address.
    pub address: String,
    /// Full username.
    pub worker: String,
    /// Credited difficulty (the job's).
    pub difficulty: f64,
    /// Network difficulty when the job was made.
    pub network_difficulty: f64,
    /// The job's coinbase value, satoshis (PPS's expected reward).
    pub block_reward: i64,
    /// Height the job builds.
    pub height: i64,
    /// Template id.
    pub template_id: i64,
    /// Whether this share was a block.
    pub is_block: bool,
    /// Which `quarry serve` accepted it.
    pub instance: String,
    /// The chain whose work it is (spool lines written before chains were recorded are
    /// Bitcoin's).
    #[serde(default)]
    pub chain: Chain,
    /// The worker's payout address per merge-mined chain (`<chain>=<address>` in its
    /// password): aux rewards this share earns go there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_payouts: BTreeMap<String, String>,
    /// The share's header hash, display-order hex: published with the PPLNS window so anyone
    /// can check the work behind a split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

impl ShareRecord {
    /// Who this share earns for on `chain`: the address the worker named for it, else its
    /// payout address (which another chain's wallet may not pay: the balance then waits).
    pub fn payee(&self, chain: &Chain) -> &str {
        self.aux_payouts
            .get(chain.as_str())
            .map_or(&self.address, String::as_str)
    }
}

/// Advisory lock key for payouts ("quarry" in ASCII, as an integer).
const PAYOUT_LOCK_KEY: i64 = 0x7175_6172_7279;
/// Advisory lock key for paying balances in coinbases.
const COINBASE_BALANCES_LOCK_KEY: i64 = PAYOUT_LOCK_KEY + 1;

/// Holds the payout lock; the PostgreSQL session (a connection taken out of the pool) keeps it
/// until dropped.
pub struct PayoutLock(#[allow(dead_code)] Option<sqlx::AnyConnection>);

/// Where a found block stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockStatus {
    /// Found and being submitted.
    Submitted,
    /// Accepted by a node, waiting for coinbase maturity.
    Pending,
    /// Matured on the best chain: its credits are payable.
    Confirmed,
    /// Replaced at its height: its credits are reversed.
    Orphaned,
    /// Refused by every node.
    Rejected,
}

impl BlockStatus {
    /// The word stored.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockStatus::Submitted => "submitted",
            BlockStatus::Pending => "pending",
            BlockStatus::Confirmed => "confirmed",
            BlockStatus::Orphaned => "orphaned",
            BlockStatus::Rejected => "rejected",
        }
    }

    /// From the word stored.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "submitted" => BlockStatus::Submitted,
            "pending" => BlockStatus::Pending,
            "confirmed" => BlockStatus::Confirmed,
            "orphaned" => BlockStatus::Orphaned,
            "rejected" => BlockStatus::Rejected,
            _ => return None,
        })
    }
}

/// Where a credit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditStatus {
    /// Its block is not mature yet.
    Immature,
    /// Payable.
    Mature,
    /// Its block was orphaned.
    Reversed,
}

impl CreditStatus {
    /// The word stored.
    pub fn as_str(self) -> &'static str {
        match self {
            CreditStatus::Immature => "immature",
            CreditStatus::Mature => "mature",
            CreditStatus::Reversed => "reversed",
        }
    }
}

/// A found block as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockRecord {
    /// Block hash, display order.
    pub hash: String,
    /// Height.
    pub height: i64,
    /// Where it stands.
    pub status: BlockStatus,
    /// Coinbase value, satoshis.
    pub reward: i64,
    /// Finder.
    pub worker: String,
    /// Finder's address.
    pub address: String,
    /// Unix milliseconds.
    pub found_ms: i64,
    /// Network difficulty.
    pub network_difficulty: f64,
    /// Which `quarry serve` found it.
    pub instance: String,
    /// Why every node refused it (the node's `submitblock` answer); `None` otherwise.
    #[serde(default)]
    pub reject_reason: Option<String>,
    /// The chain it is a block of.
    #[serde(default)]
    pub chain: Chain,
}

/// Money owed to an address for a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credit {
    /// Who.
    pub address: String,
    /// How much.
    pub amount_msat: Msat,
    /// `pplns`, `prop`, `pps` or `fee`.
    pub kind: String,
}

/// One worker's recent shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// The chain the shares were for: difficulties of different chains do not add up.
    pub chain: Chain,
    /// Payout address.
    pub address: String,
    /// Full username.
    pub worker: String,
    /// Shares in the window.
    pub shares: i64,
    /// Sum of their difficulty.
    pub difficulty: f64,
    /// Latest share, Unix ms.
    pub last_share_ms: i64,
}

/// A payout as listed by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutRecord {
    /// Id.
    pub id: i64,
    /// Tag (the wallet transaction's comment).
    pub tag: String,
    /// `intent` or `sent`.
    pub status: String,
    /// Transaction id once sent.
    pub txid: Option<String>,
    /// Unix ms.
    pub created_ms: i64,
    /// Unix ms.
    pub sent_ms: Option<i64>,
    /// Last wallet error, if pending.
    pub error: Option<String>,
    /// Satoshis debited in total.
    pub total_sat: i64,
    /// Number of recipients.
    pub recipients: i64,
    /// The chain it paid on.
    pub chain: Chain,
    /// `onchain` or `lightning`.
    pub method: String,
    /// A Lightning payment's routing fee, satoshis.
    pub fee_sat: Option<i64>,
}

/// How a payout is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayoutMethod {
    /// A wallet transaction.
    Onchain,
    /// A Lightning payment, one per miner.
    Lightning,
}

impl PayoutMethod {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PayoutMethod::Onchain => "onchain",
            PayoutMethod::Lightning => "lightning",
        }
    }
}

/// Where a miner wants its Bitcoin paid, besides its address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutDestination {
    /// The miner's Bitcoin address (what it mines to).
    pub address: String,
    /// `bolt12`.
    pub method: String,
    /// The BOLT12 offer.
    pub destination: String,
    /// `signed` or `authorize`.
    pub source: String,
    /// The signed registration's timestamp (Unix seconds).
    pub signed_at: Option<i64>,
    /// Unix ms.
    pub updated_ms: i64,
}

/// An address's credits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    /// In which chain's coin.
    pub chain: Chain,
    /// Who.
    pub address: String,
    /// Payable, millisatoshis.
    pub mature_msat: i64,
    /// Waiting for maturity, millisatoshis.
    pub immature_msat: i64,
}

const SHARE_COLUMNS: &str = "created_ms, address, worker, difficulty, network_difficulty, \
                             block_reward, height, template_id, is_block, instance, chain, aux_payouts, hash";
const SHARE_COLUMN_COUNT: usize = 13;
/// Rows per INSERT statement on PostgreSQL (65,535 bound values at most).
const ROWS_PER_STATEMENT: usize = 1000;
/// Rows per INSERT statement on SQLite: sqlx binds SQLite parameters slowly in large
/// statements, 100 rows was the fastest measured.
const SQLITE_ROWS_PER_STATEMENT: usize = 100;

/// A connection pool plus what it is.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// PostgreSQL only: a native pool for the share log's inserts, which bind each column as
    /// one array (`UNNEST`); sqlx's `Any` driver cannot bind arrays.
    postgres: Option<sqlx::PgPool>,
}

impl Store {
    /// Opens (creating the SQLite file if needed) and migrates.
    ///
    /// # Errors
    /// An unsupported URL, an unreachable database or a failed migration.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        install_default_drivers();
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let with_mode = if rest.contains("mode=") {
                url.to_string()
            } else if rest.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            };
            (Backend::Sqlite, with_mode)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let pool = AnyPoolOptions::new()
            // SQLite has one writer anyway; more connections only add lock waits.
            .max_connections(if backend == Backend::Sqlite { 1 } else { 8 })
            .acquire_timeout(Duration::from_secs(2))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode=WAL").await?;
                        conn.execute("PRAGMA synchronous=FULL").await?;
                        conn.execute("PRAGMA busy_timeout=5000").await?;
                        conn.execute("PRAGMA cache_size=-65536").await?;
                        // Multi-row INSERTs inside a transaction keep a statement journal; on
                        // disk that cost a pwrite per row (ingest 53k → see BENCHMARKS.md).
                        conn.execute("PRAGMA temp_store=MEMORY").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        let postgres = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(2))
                    .connect(&url)
                    .await?,
            ),
        };
        Ok(Store {
            pool,
            backend,
            postgres,
        })
    }

    /// The database kind.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Inserts shares in one transaction: all or none.
    ///
    /// # Errors
    /// Any database error; nothing is written then.
    pub async fn insert_shares(&self, shares: &[ShareRecord]) -> Result<(), StoreError> {
        if shares.is_empty() {
            return Ok(());
        }
        if let Some(postgres) = &self.postgres {
            return insert_shares_unnest(postgres, shares).await;
        }
        let mut tx = self.pool.begin().await?;
        insert_shares_in(&mut tx, shares, self.backend).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Inserts the shares of spool file `name` unless that file was inserted before; one
    /// transaction, so a file counts exactly once. Returns whether it inserted.
    ///
    /// # Errors
    /// Any database error; nothing is written then.
    pub async fn insert_spooled(
        &self,
        name: &str,
        shares: &[ShareRecord],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let seen = sqlx::query("SELECT COUNT(*) FROM spool_replays WHERE name = $1")
            .bind(name.to_string())
            .fetch_one(&mut *tx)
            .await?
            .try_get::<i64, _>(0)?;
        if seen > 0 {
            return Ok(false);
        }
        insert_shares_in(&mut tx, shares, self.backend).await?;
        sqlx::query("INSERT INTO spool_replays (name, shares) VALUES ($1, $2)")
            .bind(name.to_string())
            .bind(shares.len() as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Whether the database answers.
    ///
    /// # Errors
    /// Any database error.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Number of shares stored.
    ///
    /// # Errors
    /// Any database error.
    pub async fn share_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM shares")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    /// Shares of `chain` accepted at or before `until_ms`, newest first, at most `limit`.
    ///
    /// # Errors
    /// Any database error.
    pub async fn shares_newest_first(
        &self,
        chain: &Chain,
        until_ms: i64,
        limit: i64,
    ) -> Result<Vec<ShareRecord>, StoreError> {
        let sql = format!(
            "SELECT {SHARE_COLUMNS} FROM shares WHERE chain = $1 AND created_ms <= $2 \
             ORDER BY created_ms DESC, id DESC LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(chain.as_str().to_string())
            .bind(until_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(ShareRecord {
                    created_ms: row.try_get(0)?,
                    address: row.try_get(1)?,
                    worker: row.try_get(2)?,
                    difficulty: row.try_get(3)?,
                    network_difficulty: row.try_get(4)?,
                    block_reward: row.try_get(5)?,
                    height: row.try_get(6)?,
                    template_id: row.try_get(7)?,
                    is_block: row.try_get::<i64, _>(8)? != 0,
                    instance: row.try_get(9)?,
                    chain: stored_chain(row, 10)?,
                    aux_payouts: stored_aux_payouts(row, 11)?,
                    hash: row.try_get(12)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Records a found block (status `submitted`); a second call for the same hash is a no-op.
    ///
    /// # Errors
    /// Any database error.
    pub async fn insert_block(&self, block: &BlockRecord) -> Result<(), StoreError> {
        insert_block_row(&self.pool, block).await
    }

    /// Found blocks of `chain` (every chain when `None`), newest first, at most `limit`.
    ///
    /// # Errors
    /// Any database error.
    pub async fn blocks_of(
        &self,
        chain: Option<&Chain>,
        limit: i64,
    ) -> Result<Vec<BlockRecord>, StoreError> {
        let Some(chain) = chain else {
            return self.blocks(None, limit).await;
        };
        let rows = sqlx::query(
            "SELECT hash, height, status, reward, worker, address, found_ms, network_difficulty, \
             instance, reject_reason, chain FROM blocks WHERE chain = $1 \
             ORDER BY height DESC, found_ms DESC LIMIT $2",
        )
        .bind(chain.as_str().to_string())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(block_from_row)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Blocks, newest first, optionally only those with `status`.
    ///
    /// # Errors
    /// Any database error.
    pub async fn blocks(
        &self,
        status: Option<BlockStatus>,
        limit: i64,
    ) -> Result<Vec<BlockRecord>, StoreError> {
        let columns =
            "hash, height, status, reward, worker, address, found_ms, network_difficulty, instance, reject_reason, chain";
        let rows = match status {
            Some(status) => {
                sqlx::query(&format!(
                    "SELECT {columns} FROM blocks WHERE status = $1 ORDER BY height DESC, found_ms DESC LIMIT $2"
                ))
                .bind(status.as_str().to_string())
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {columns} FROM blocks ORDER BY height DESC, found_ms DESC LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(block_from_row)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Marks a submitted block rejected, keeping the node's reason. Returns false when the block
    /// was not `submitted` (already accepted by another route, or unknown).
    ///
    /// # Errors
    /// Any database error.
    pub async fn reject_block(&self, hash: &str, reason: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE blocks SET status = $1, reject_reason = $2 WHERE hash = $3 AND status = $4",
        )
        .bind(BlockStatus::Rejected.as_str().to_string())
        .bind(reason.to_string())
        .bind(hash.to_string())
        .bind(BlockStatus::Submitted.as_str().to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved > 0 {
            settle_coinbase_payout(&mut tx, hash, BlockStatus::Rejected, 0).await?;
        }
        tx.commit().await?;
        Ok(moved > 0)
    }

    /// Moves a block to `status` and its credits from `from` to `to`, in one transaction.
    /// Returns false when the block was not in `expected` (someone else moved it).
    ///
    /// # Errors
    /// Any database error.
    pub async fn transition_block(
        &self,
        hash: &str,
        expected: BlockStatus,
        status: BlockStatus,
        credits: Option<(CreditStatus, CreditStatus)>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query("UPDATE blocks SET status = $1 WHERE hash = $2 AND status = $3")
            .bind(status.as_str().to_string())
            .bind(hash.to_string())
            .bind(expected.as_str().to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if moved == 0 {
            return Ok(false);
        }
        if let Some((from, to)) = credits {
            sqlx::query("UPDATE credits SET status = $1 WHERE block_hash = $2 AND status = $3")
                .bind(to.as_str().to_string())
                .bind(hash.to_string())
                .bind(from.as_str().to_string())
                .execute(&mut *tx)
                .await?;
        }
        settle_coinbase_payout(&mut tx, hash, status, now_unix_ms()).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Writes a block's credits (immature) and moves it from `submitted` to `pending`, once.
    /// Returns false if the block was already credited.
    ///
    /// # Errors
    /// Any database error.
    pub async fn credit_block(
        &self,
        hash: &str,
        credits: &[Credit],
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query("UPDATE blocks SET status = $1 WHERE hash = $2 AND status = $3")
            .bind(BlockStatus::Pending.as_str().to_string())
            .bind(hash.to_string())
            .bind(BlockStatus::Submitted.as_str().to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if moved == 0 {
            return Ok(false);
        }
        for credit in credits {
            sqlx::query(
                // In the block's chain's coin.
                "INSERT INTO credits (block_hash, address, amount_msat, kind, status, created_ms, chain) \
                 SELECT $1, $2, $3, $4, $5, $6, chain FROM blocks WHERE hash = $7",
            )
            .bind(hash.to_string())
            .bind(credit.address.clone())
            .bind(credit.amount_msat.to_db())
            .bind(credit.kind.clone())
            .bind(CreditStatus::Immature.as_str().to_string())
            .bind(now_ms)
            .bind(hash.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Per chain and address: mature and immature credits, in millisatoshis.
    ///
    /// # Errors
    /// Any database error.
    pub async fn balances(&self) -> Result<Vec<Balance>, StoreError> {
        let rows = sqlx::query(
            "SELECT address, \
             CAST(SUM(CASE WHEN status = 'mature' THEN amount_msat ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN status = 'immature' THEN amount_msat ELSE 0 END) AS BIGINT), chain \
             FROM credits GROUP BY chain, address ORDER BY chain, address",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Balance {
                    chain: stored_chain(row, 3)?,
                    address: row.try_get(0)?,
                    mature_msat: row.try_get::<i64, _>(1)?,
                    immature_msat: row.try_get::<i64, _>(2)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Shares of `chain` accepted in `(after_ms, until_ms]`, oldest first (a PROP round), as
    /// (payee on `paid_on`, difficulty): see [`ShareRecord::payee`].
    ///
    /// # Errors
    /// Any database error.
    pub async fn shares_between(
        &self,
        chain: &Chain,
        paid_on: &Chain,
        after_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<(String, f64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT address, difficulty, aux_payouts FROM shares WHERE chain = $1 AND created_ms > $2 AND created_ms <= $3 ORDER BY id",
        )
        .bind(chain.as_str().to_string())
        .bind(after_ms)
        .bind(until_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let address: String = row.try_get(0)?;
                let mut aux = stored_aux_payouts(row, 2)?;
                let payee = aux.remove(paid_on.as_str()).unwrap_or(address);
                Ok((payee, row.try_get(1)?))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The aux payout addresses (chain → address) named by `address`'s shares since
    /// `since_ms`, the newest naming of each chain winning.
    ///
    /// # Errors
    /// Any database error.
    pub async fn aux_payouts_of(
        &self,
        address: &str,
        since_ms: i64,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        let rows = sqlx::query(
            "SELECT aux_payouts, MAX(id) FROM shares WHERE created_ms >= $1 AND address = $2 \
             AND aux_payouts IS NOT NULL GROUP BY aux_payouts ORDER BY MAX(id)",
        )
        .bind(since_ms)
        .bind(address.to_string())
        .fetch_all(&self.pool)
        .await?;
        let mut named = BTreeMap::new();
        for row in &rows {
            named.extend(stored_aux_payouts(row, 0)?);
        }
        Ok(named)
    }

    /// Gives a submitted block the identity its chain gave it on acceptance (RSK names the
    /// block it built from the merged-mining hash, and its height); a no-op once settled.
    ///
    /// # Errors
    /// Any database error.
    pub async fn identify_block(
        &self,
        chain: &Chain,
        hash: &str,
        real_hash: &str,
        height: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE blocks SET hash = $1, height = $2 WHERE chain = $3 AND hash = $4 AND status = 'submitted'",
        )
        .bind(real_hash.to_string())
        .bind(height)
        .bind(chain.as_str().to_string())
        .bind(hash.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Satoshis (the chain's base unit) payable per address on `chain`: mature credits
    /// (rounded down) less everything already in a payout, sent or intended.
    ///
    /// # Errors
    /// Any database error.
    pub async fn payable(&self, chain: &Chain) -> Result<BTreeMap<String, Sat>, StoreError> {
        let credited = sqlx::query(
            "SELECT address, CAST(SUM(amount_msat) AS BIGINT) FROM credits \
             WHERE chain = $1 AND status = 'mature' GROUP BY address",
        )
        .bind(chain.as_str().to_string())
        .fetch_all(&self.pool)
        .await?;
        // Everything in a payout counts, sent or intended or in an immature coinbase; a coinbase
        // that left the chain ('void') and a Lightning payment that failed paid nothing.
        let paid = sqlx::query(
            "SELECT i.address, CAST(SUM(i.amount_sat) AS BIGINT) FROM payout_items i \
             JOIN payouts p ON p.id = i.payout_id WHERE i.chain = $1 AND p.status NOT IN ('void', 'failed') \
             GROUP BY i.address",
        )
        .bind(chain.as_str().to_string())
        .fetch_all(&self.pool)
        .await?;
        let mut paid_by: BTreeMap<String, i64> = BTreeMap::new();
        for row in &paid {
            paid_by.insert(row.try_get(0)?, row.try_get(1)?);
        }
        let mut payable = BTreeMap::new();
        for row in &credited {
            let address: String = row.try_get(0)?;
            let msat: i64 = row.try_get(1)?;
            let credited = Msat::from_db(msat).floor_sat();
            let paid = Sat::from_db(paid_by.get(&address).copied().unwrap_or(0));
            if let Some(due) = credited.checked_sub(paid).filter(|due| *due > Sat::ZERO) {
                payable.insert(address, due);
            }
        }
        Ok(payable)
    }

    /// Writes a payout intent and its items in one transaction; returns its id.
    ///
    /// # Errors
    /// Any database error (a reused tag included); nothing is written then.
    pub async fn create_payout(
        &self,
        chain: &Chain,
        tag: &str,
        items: &BTreeMap<String, Sat>,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        self.create_payout_by(chain, PayoutMethod::Onchain, tag, items, now_ms)
            .await
    }

    /// [`Store::create_payout`] for a payout sent by `method`.
    ///
    /// # Errors
    /// Any database error (a reused tag included); nothing is written then.
    pub async fn create_payout_by(
        &self,
        chain: &Chain,
        method: PayoutMethod,
        tag: &str,
        items: &BTreeMap<String, Sat>,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO payouts (tag, status, created_ms, chain, method) VALUES ($1, 'intent', $2, $3, $4) RETURNING id",
        )
        .bind(tag.to_string())
        .bind(now_ms)
        .bind(chain.as_str().to_string())
        .bind(method.as_str())
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        for (address, amount) in items {
            sqlx::query(
                "INSERT INTO payout_items (payout_id, address, amount_sat, chain) VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(address.clone())
            .bind(amount.to_db())
            .bind(chain.as_str().to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// On-chain payouts on `chain` whose send is not recorded yet: (id, tag), oldest first.
    ///
    /// # Errors
    /// Any database error.
    pub async fn pending_payouts(&self, chain: &Chain) -> Result<Vec<(i64, String)>, StoreError> {
        self.pending_payouts_by(chain, PayoutMethod::Onchain).await
    }

    /// Payouts on `chain` sent by `method` whose send is not recorded yet: (id, tag), oldest
    /// first.
    ///
    /// # Errors
    /// Any database error.
    pub async fn pending_payouts_by(
        &self,
        chain: &Chain,
        method: PayoutMethod,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tag FROM payouts WHERE chain = $1 AND status = 'intent' AND method = $2 ORDER BY id",
        )
        .bind(chain.as_str().to_string())
        .bind(method.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// A payout's items: address → satoshis debited.
    ///
    /// # Errors
    /// Any database error.
    pub async fn payout_items(&self, id: i64) -> Result<BTreeMap<String, Sat>, StoreError> {
        let rows = sqlx::query("SELECT address, amount_sat FROM payout_items WHERE payout_id = $1")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        let mut items = BTreeMap::new();
        for row in &rows {
            let amount: i64 = row.try_get(1)?;
            items.insert(row.try_get(0)?, Sat::from_db(amount));
        }
        Ok(items)
    }

    /// Notes why a payout could not be sent (it stays pending).
    ///
    /// # Errors
    /// Any database error.
    pub async fn payout_error(&self, id: i64, error: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE payouts SET error = $1 WHERE id = $2")
            .bind(error.chars().take(500).collect::<String>())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a payout as sent with what each recipient received.
    ///
    /// # Errors
    /// Any database error; nothing is written then.
    pub async fn mark_payout_sent(
        &self,
        id: i64,
        txid: &str,
        received: &BTreeMap<String, Sat>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE payouts SET status = 'sent', txid = $1, sent_ms = $2, error = NULL WHERE id = $3 AND status = 'intent'")
            .bind(txid.to_string())
            .bind(now_ms)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for (address, amount) in received {
            sqlx::query(
                "UPDATE payout_items SET received_sat = $1 WHERE payout_id = $2 AND address = $3",
            )
            .bind(amount.to_db())
            .bind(id)
            .bind(address.clone())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Sent payouts on `chain` per address: (satoshis debited, satoshis received on chain).
    ///
    /// # Errors
    /// Any database error.
    pub async fn paid(&self, chain: &Chain) -> Result<BTreeMap<String, (i64, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT i.address, CAST(SUM(i.amount_sat) AS BIGINT), CAST(SUM(COALESCE(i.received_sat, 0)) AS BIGINT) \
             FROM payout_items i JOIN payouts p ON p.id = i.payout_id WHERE p.chain = $1 AND p.status = 'sent' GROUP BY i.address",
        )
        .bind(chain.as_str().to_string())
        .fetch_all(&self.pool)
        .await?;
        let mut paid = BTreeMap::new();
        for row in &rows {
            paid.insert(row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?));
        }
        Ok(paid)
    }

    /// A Lightning payout that failed: its amount is owed again, `error` says why.
    ///
    /// # Errors
    /// Any database error.
    pub async fn mark_payout_failed(&self, id: i64, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE payouts SET status = 'failed', error = $1 WHERE id = $2 AND status = 'intent'",
        )
        .bind(error.chars().take(500).collect::<String>())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a Lightning payout as paid: `payment_id` (the node's), what `address` was
    /// debited (the amount, plus the routing fee when the miner pays it), what it received, and
    /// the routing fee.
    ///
    /// # Errors
    /// Any database error; nothing is written then.
    pub async fn mark_lightning_paid(
        &self,
        id: i64,
        payment_id: &str,
        debited: Sat,
        received: Sat,
        fee: Sat,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE payouts SET status = 'sent', txid = $1, sent_ms = $2, fee_sat = $3, error = NULL WHERE id = $4 AND status = 'intent'")
            .bind(payment_id.to_string())
            .bind(now_ms)
            .bind(fee.to_db())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE payout_items SET amount_sat = $1, received_sat = $2 WHERE payout_id = $3",
        )
        .bind(debited.to_db())
        .bind(received.to_db())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets (or replaces) `address`'s payout destination.
    ///
    /// # Errors
    /// Any database error.
    pub async fn set_payout_destination(
        &self,
        destination: &PayoutDestination,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO payout_destinations (address, method, destination, source, signed_at, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (address) DO UPDATE SET method = excluded.method, \
             destination = excluded.destination, source = excluded.source, signed_at = excluded.signed_at, \
             updated_ms = excluded.updated_ms",
        )
        .bind(destination.address.clone())
        .bind(destination.method.clone())
        .bind(destination.destination.clone())
        .bind(destination.source.clone())
        .bind(destination.signed_at)
        .bind(destination.updated_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `address`'s payout destination, if it registered one.
    ///
    /// # Errors
    /// Any database error.
    pub async fn payout_destination(
        &self,
        address: &str,
    ) -> Result<Option<PayoutDestination>, StoreError> {
        let row = sqlx::query(
            "SELECT address, method, destination, source, signed_at, updated_ms FROM payout_destinations WHERE address = $1",
        )
        .bind(address.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(destination_from_row).transpose()?)
    }

    /// Every registered payout destination, by address.
    ///
    /// # Errors
    /// Any database error.
    pub async fn payout_destinations(
        &self,
    ) -> Result<BTreeMap<String, PayoutDestination>, StoreError> {
        let rows = sqlx::query(
            "SELECT address, method, destination, source, signed_at, updated_ms FROM payout_destinations",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| destination_from_row(row).map(|d| (d.address.clone(), d)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Per worker: shares and difficulty accepted since `since_ms` (the whole pool, whichever
    /// frontend accepted them).
    ///
    /// # Errors
    /// Any database error.
    pub async fn worker_stats(&self, since_ms: i64) -> Result<Vec<WorkerStats>, StoreError> {
        let rows = sqlx::query(
            "SELECT address, worker, COUNT(*), SUM(difficulty), MAX(created_ms), chain FROM shares \
             WHERE created_ms > $1 GROUP BY chain, address, worker ORDER BY chain, address, worker",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(WorkerStats {
                    chain: stored_chain(row, 5)?,
                    address: row.try_get(0)?,
                    worker: row.try_get(1)?,
                    shares: row.try_get(2)?,
                    difficulty: row.try_get(3)?,
                    last_share_ms: row.try_get(4)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Sum of `chain`'s share difficulty accepted after `since_ms` (round effort: since the
    /// last block).
    ///
    /// # Errors
    /// Any database error.
    pub async fn difficulty_since(&self, chain: &Chain, since_ms: i64) -> Result<f64, StoreError> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(difficulty), 0.0) FROM shares WHERE chain = $1 AND created_ms > $2",
        )
        .bind(chain.as_str().to_string())
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<f64, _>(0)?)
    }

    /// Sum of `chain`'s share difficulty accepted after `from_ms` and up to `to_ms` (a
    /// block's effort: the shares between the block before it and it).
    ///
    /// # Errors
    /// Any database error.
    pub async fn difficulty_between(
        &self,
        chain: &Chain,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<f64, StoreError> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(difficulty), 0.0) FROM shares \
             WHERE chain = $1 AND created_ms > $2 AND created_ms <= $3",
        )
        .bind(chain.as_str().to_string())
        .bind(from_ms)
        .bind(to_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<f64, _>(0)?)
    }

    /// The oldest share still stored, Unix ms (older blocks' effort cannot be known).
    ///
    /// # Errors
    /// Any database error.
    pub async fn oldest_share_ms(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MIN(created_ms) FROM shares")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    /// Payouts that paid `address`, newest first, each with `total_sat` this address's amount
    /// and `recipients` 1, and what it received on chain once sent.
    ///
    /// # Errors
    /// Any database error.
    pub async fn payouts_to(
        &self,
        address: &str,
        limit: i64,
    ) -> Result<Vec<(PayoutRecord, Option<i64>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.id, p.tag, p.status, p.txid, p.created_ms, p.sent_ms, p.error, \
             i.amount_sat, CAST(1 AS BIGINT), p.chain, p.method, p.fee_sat, i.received_sat FROM payouts p \
             JOIN payout_items i ON i.payout_id = p.id WHERE i.address = $1 \
             ORDER BY p.id DESC LIMIT $2",
        )
        .bind(address.to_string())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((payout_from_row(row)?, row.try_get(12)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Payouts, newest first.
    ///
    /// # Errors
    /// Any database error.
    pub async fn payouts(&self, limit: i64) -> Result<Vec<PayoutRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.id, p.tag, p.status, p.txid, p.created_ms, p.sent_ms, p.error, \
             CAST(COALESCE(SUM(i.amount_sat), 0) AS BIGINT), COUNT(i.address), p.chain, p.method, p.fee_sat \
             FROM payouts p LEFT JOIN payout_items i ON i.payout_id = p.id \
             GROUP BY p.id, p.tag, p.status, p.txid, p.created_ms, p.sent_ms, p.error, p.chain, p.method, p.fee_sat \
             ORDER BY p.id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(payout_from_row)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Takes the payout lock: with several `quarry serve` on one PostgreSQL exactly one runs
    /// payouts (a session advisory lock, held as long as the returned guard lives). SQLite is
    /// single-process: always granted.
    ///
    /// # Errors
    /// Any database error.
    pub async fn try_payout_lock(&self) -> Result<Option<PayoutLock>, StoreError> {
        self.try_lock(PAYOUT_LOCK_KEY).await
    }

    /// Takes the lock that lets one frontend pay balances in its coinbases (`coinbase-pplns`):
    /// a balance reserved by one frontend's block must not be in another's coinbase meanwhile.
    /// Held as long as the guard lives; SQLite is single-process: always granted.
    ///
    /// # Errors
    /// Any database error.
    pub async fn try_coinbase_balances_lock(&self) -> Result<Option<PayoutLock>, StoreError> {
        self.try_lock(COINBASE_BALANCES_LOCK_KEY).await
    }

    async fn try_lock(&self, key: i64) -> Result<Option<PayoutLock>, StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(Some(PayoutLock(None)));
        }
        let mut conn = self.pool.acquire().await?;
        let granted: bool = sqlx::query("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
        Ok(granted.then(|| PayoutLock(Some(conn.detach()))))
    }

    /// Credits PPS for up to `max_shares` shares not credited yet: each is worth
    /// [`pps_credit_msat`](crate::schemes::pps_credit_msat), payable at once (the pool carries
    /// the variance). Returns how many shares it credited; 0 when another frontend got there
    /// first or nothing is new.
    ///
    /// # Errors
    /// Any database error; nothing is written then.
    ///
    /// Only the id-ordered prefix of shares accepted before `settled_before_ms` is taken, so a
    /// commit still in flight with a lower id is not skipped.
    pub async fn accrue_pps(
        &self,
        fee_ppm: u64,
        max_shares: i64,
        settled_before_ms: i64,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let last: i64 = sqlx::query("SELECT last_share_id FROM pps_progress WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let rows = sqlx::query(
            "SELECT id, address, difficulty, network_difficulty, block_reward, created_ms, chain FROM shares \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(last)
        .bind(max_shares)
        .fetch_all(&self.pool)
        .await?;
        let settled = rows
            .iter()
            .take_while(|row| {
                row.try_get::<i64, _>(5)
                    .is_ok_and(|t| t < settled_before_ms)
            })
            .count();
        let rows = &rows[..settled];
        let Some(new_last) = rows.last().map(|r| r.try_get::<i64, _>(0)).transpose()? else {
            return Ok(0);
        };
        // Each share is paid in its own chain's coin, at its own chain's reward and difficulty.
        let mut owed: BTreeMap<(Chain, String), Msat> = BTreeMap::new();
        for row in rows {
            let credit = crate::schemes::pps_credit_msat(
                row.try_get(2)?,
                row.try_get(3)?,
                Sat::from_db(row.try_get::<i64, _>(4)?),
                fee_ppm,
            );
            *owed
                .entry((stored_chain(row, 6)?, row.try_get(1)?))
                .or_default() += credit;
        }
        let mut tx = self.pool.begin().await?;
        let claimed = sqlx::query(
            "UPDATE pps_progress SET last_share_id = $1 WHERE id = 1 AND last_share_id = $2",
        )
        .bind(new_last)
        .bind(last)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            return Ok(0);
        }
        for ((chain, address), msat) in owed.iter().filter(|(_, m)| **m > Msat::ZERO) {
            sqlx::query(
                "INSERT INTO credits (block_hash, address, amount_msat, kind, status, created_ms, chain) \
                 VALUES (NULL, $1, $2, 'pps', 'mature', $3, $4)",
            )
            .bind(address.clone())
            .bind(msat.to_db())
            .bind(now_ms)
            .bind(chain.as_str().to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Deletes shares accepted before `before_ms` whose id is at most `max_id` (shares PPS has
    /// not credited yet are kept). Returns how many went.
    ///
    /// # Errors
    /// Any database error.
    pub async fn prune_shares(&self, before_ms: i64, max_id: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM shares WHERE created_ms < $1 AND id <= $2")
            .bind(before_ms)
            .bind(max_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// The last share id PPS has credited.
    ///
    /// # Errors
    /// Any database error.
    pub async fn pps_progress(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query("SELECT last_share_id FROM pps_progress WHERE id = 1")
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?,
        )
    }

    /// Records a block found on a coinbase payout table, in one transaction: the block
    /// (`submitted`), its table, and its outputs as a payout (tag [`coinbase_payout_tag`],
    /// status `coinbase`, txid the coinbase's), so the balances it pays are reserved at once.
    /// A second call for the same block changes nothing.
    ///
    /// # Errors
    /// Any database error; nothing is written then.
    pub async fn insert_coinbase_block(
        &self,
        block: &BlockRecord,
        table: &crate::coinbase::CoinbaseTable,
        coinbase_txid: &str,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(table).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let mut tx = self.pool.begin().await?;
        let fresh = sqlx::query(
            "INSERT INTO coinbase_tables (block_hash, chain, coinbase_txid, table_json) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (block_hash) DO NOTHING",
        )
        .bind(block.hash.clone())
        .bind(block.chain.as_str().to_string())
        .bind(coinbase_txid.to_string())
        .bind(json)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if !fresh {
            return Ok(());
        }
        insert_block_row(&mut *tx, block).await?;
        let mut outputs: BTreeMap<&str, u64> = BTreeMap::new();
        for (address, sat) in table.outputs() {
            *outputs.entry(address).or_default() += sat;
        }
        if !outputs.is_empty() {
            let id: i64 = sqlx::query(
                "INSERT INTO payouts (tag, status, txid, created_ms, chain) \
                 VALUES ($1, 'coinbase', $2, $3, $4) RETURNING id",
            )
            .bind(coinbase_payout_tag(&block.hash))
            .bind(coinbase_txid.to_string())
            .bind(block.found_ms)
            .bind(block.chain.as_str().to_string())
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            for (address, sat) in outputs {
                let sat = Sat(sat).to_db();
                sqlx::query(
                    "INSERT INTO payout_items (payout_id, address, amount_sat, received_sat, chain) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(id)
                .bind(address.to_string())
                .bind(sat)
                .bind(sat)
                .bind(block.chain.as_str().to_string())
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The payout table a block's coinbase committed to, and the coinbase's txid.
    ///
    /// # Errors
    /// Any database error, or a stored table that does not decode.
    pub async fn coinbase_table(
        &self,
        block_hash: &str,
    ) -> Result<Option<(crate::coinbase::CoinbaseTable, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT table_json, coinbase_txid FROM coinbase_tables WHERE block_hash = $1",
        )
        .bind(block_hash.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let json: String = row.try_get(0)?;
        let table = serde_json::from_str(&json).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        Ok(Some((table, row.try_get(1)?)))
    }

    /// Shares of `chain` after `after_id`, oldest first, at most `limit`: the id-ordered prefix
    /// of those accepted before `settled_before_ms`, so that a commit still in flight with a
    /// lower id is not passed over (as PPS reads them).
    ///
    /// # Errors
    /// Any database error.
    pub async fn window_shares_after(
        &self,
        chain: &Chain,
        after_id: i64,
        settled_before_ms: i64,
        limit: i64,
    ) -> Result<Vec<crate::coinbase::WindowShare>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, address, difficulty, created_ms FROM shares WHERE chain = $1 AND id > $2 \
             ORDER BY id LIMIT $3",
        )
        .bind(chain.as_str().to_string())
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut shares = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<i64, _>(3)? >= settled_before_ms {
                break;
            }
            shares.push(crate::coinbase::WindowShare {
                id: row.try_get(0)?,
                address: row.try_get(1)?,
                difficulty: row.try_get(2)?,
            });
        }
        Ok(shares)
    }

    /// Shares of `chain` up to id `until_id`, newest first, at most `limit`, as published for
    /// verification.
    ///
    /// # Errors
    /// Any database error.
    pub async fn published_shares(
        &self,
        chain: &Chain,
        until_id: i64,
        limit: i64,
    ) -> Result<Vec<crate::coinbase::PublishedShare>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, created_ms, address, worker, difficulty, hash FROM shares \
             WHERE chain = $1 AND id <= $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(chain.as_str().to_string())
        .bind(until_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(crate::coinbase::PublishedShare {
                    id: row.try_get(0)?,
                    created_ms: row.try_get(1)?,
                    address: row.try_get(2)?,
                    worker: row.try_get(3)?,
                    difficulty: row.try_get(4)?,
                    hash: row.try_get(5)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Inserts a found block (a no-op when its hash is known), on the pool or in a transaction.
async fn insert_block_row<'e, E>(executor: E, block: &BlockRecord) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO blocks (hash, height, status, reward, worker, address, found_ms, share_id, \
         network_difficulty, instance, chain) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8, $9, $10) \
         ON CONFLICT (hash) DO NOTHING",
    )
    .bind(block.hash.clone())
    .bind(block.height)
    .bind(block.status.as_str().to_string())
    .bind(block.reward)
    .bind(block.worker.clone())
    .bind(block.address.clone())
    .bind(block.found_ms)
    .bind(block.network_difficulty)
    .bind(block.instance.clone())
    .bind(block.chain.as_str().to_string())
    .execute(executor)
    .await?;
    Ok(())
}

/// The tag of the payout a block's coinbase makes (scheme `coinbase-pplns`).
pub fn coinbase_payout_tag(block_hash: &str) -> String {
    format!("coinbase-{block_hash}")
}

/// Moves the payout a block's coinbase made (if it made one) with the block: paid once the
/// block is confirmed, void once it left the chain or was never taken (what it paid from
/// balances is owed again).
async fn settle_coinbase_payout(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    hash: &str,
    status: BlockStatus,
    now_ms: i64,
) -> Result<(), StoreError> {
    let (to, sent_ms) = match status {
        BlockStatus::Confirmed => ("sent", Some(now_ms)),
        BlockStatus::Orphaned | BlockStatus::Rejected => ("void", None),
        BlockStatus::Submitted | BlockStatus::Pending => return Ok(()),
    };
    sqlx::query(
        "UPDATE payouts SET status = $1, sent_ms = COALESCE($2, sent_ms) WHERE tag = $3 AND status = 'coinbase'",
    )
    .bind(to.to_string())
    .bind(sent_ms)
    .bind(coinbase_payout_tag(hash))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A payout row: id, tag, status, txid, created_ms, sent_ms, error, total_sat, recipients,
/// chain, in that order.
fn payout_from_row(row: &sqlx::any::AnyRow) -> Result<PayoutRecord, sqlx::Error> {
    Ok(PayoutRecord {
        id: row.try_get(0)?,
        tag: row.try_get(1)?,
        status: row.try_get(2)?,
        txid: row.try_get(3)?,
        created_ms: row.try_get(4)?,
        sent_ms: row.try_get(5)?,
        error: row.try_get(6)?,
        total_sat: row.try_get(7)?,
        recipients: row.try_get(8)?,
        chain: stored_chain(row, 9)?,
        method: row.try_get(10)?,
        fee_sat: row.try_get(11)?,
    })
}

fn destination_from_row(row: &sqlx::any::AnyRow) -> Result<PayoutDestination, sqlx::Error> {
    Ok(PayoutDestination {
        address: row.try_get(0)?,
        method: row.try_get(1)?,
        destination: row.try_get(2)?,
        source: row.try_get(3)?,
        signed_at: row.try_get(4)?,
        updated_ms: row.try_get(5)?,
    })
}

/// A `blocks` row, columns in the order the block queries select them.
fn block_from_row(row: &sqlx::any::AnyRow) -> Result<BlockRecord, sqlx::Error> {
    let status: String = row.try_get(2)?;
    Ok(BlockRecord {
        hash: row.try_get(0)?,
        height: row.try_get(1)?,
        status: BlockStatus::parse(&status).unwrap_or(BlockStatus::Submitted),
        reward: row.try_get(3)?,
        worker: row.try_get(4)?,
        address: row.try_get(5)?,
        found_ms: row.try_get(6)?,
        network_difficulty: row.try_get(7)?,
        instance: row.try_get(8)?,
        reject_reason: row.try_get(9)?,
        chain: stored_chain(row, 10)?,
    })
}

/// A stored chain key; one that breaks the rules (written by hand) is a decode error, not a
/// panic.
fn stored_chain(row: &sqlx::any::AnyRow, index: usize) -> Result<Chain, sqlx::Error> {
    let key: String = row.try_get(index)?;
    Chain::new(&key).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// The `aux_payouts` column: NULL, or a JSON object of chain → address.
fn stored_aux_payouts(
    row: &sqlx::any::AnyRow,
    index: usize,
) -> Result<BTreeMap<String, String>, sqlx::Error> {
    match row.try_get::<Option<String>, _>(index)? {
        None => Ok(BTreeMap::new()),
        Some(json) => serde_json::from_str(&json).map_err(|e| sqlx::Error::Decode(Box::new(e))),
    }
}

async fn insert_shares_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    shares: &[ShareRecord],
    backend: Backend,
) -> Result<(), StoreError> {
    let rows_per_statement = match backend {
        Backend::Sqlite => SQLITE_ROWS_PER_STATEMENT,
        Backend::Postgres => ROWS_PER_STATEMENT,
    };
    for chunk in shares.chunks(rows_per_statement) {
        let sql = insert_sql(chunk.len(), backend);
        let mut query = sqlx::query(&sql);
        for share in chunk {
            query = query
                .bind(share.created_ms)
                .bind(share.address.clone())
                .bind(share.worker.clone())
                .bind(share.difficulty)
                .bind(share.network_difficulty)
                .bind(share.block_reward)
                .bind(share.height)
                .bind(share.template_id)
                .bind(i64::from(share.is_block))
                .bind(share.instance.clone())
                .bind(share.chain.as_str().to_string())
                .bind(
                    (!share.aux_payouts.is_empty())
                        .then(|| serde_json::to_string(&share.aux_payouts).unwrap_or_default()),
                )
                .bind(share.hash.clone());
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// PostgreSQL: a whole batch as one INSERT of thirteen arrays, in order. The server parses and
/// plans one statement with 13 parameters instead of 13 per row (79k → see BENCHMARKS.md).
async fn insert_shares_unnest(
    pool: &sqlx::PgPool,
    shares: &[ShareRecord],
) -> Result<(), StoreError> {
    fn column<T>(shares: &[ShareRecord], field: impl Fn(&ShareRecord) -> T) -> Vec<T> {
        shares.iter().map(field).collect()
    }
    let sql = format!(
        "INSERT INTO shares ({SHARE_COLUMNS}) SELECT * FROM UNNEST($1::bigint[], $2::text[], \
         $3::text[], $4::float8[], $5::float8[], $6::bigint[], $7::bigint[], $8::bigint[], \
         $9::bigint[], $10::text[], $11::text[], $12::text[], $13::text[])"
    );
    sqlx::query(&sql)
        .bind(column(shares, |s| s.created_ms))
        .bind(column(shares, |s| s.address.clone()))
        .bind(column(shares, |s| s.worker.clone()))
        .bind(column(shares, |s| s.difficulty))
        .bind(column(shares, |s| s.network_difficulty))
        .bind(column(shares, |s| s.block_reward))
        .bind(column(shares, |s| s.height))
        .bind(column(shares, |s| s.template_id))
        .bind(column(shares, |s| i64::from(s.is_block)))
        .bind(column(shares, |s| s.instance.clone()))
        .bind(column(shares, |s| s.chain.as_str().to_string()))
        .bind(column(shares, |s| {
            (!s.aux_payouts.is_empty())
                .then(|| serde_json::to_string(&s.aux_payouts).unwrap_or_default())
        }))
        .bind(column(shares, |s| s.hash.clone()))
        .execute(pool)
        .await?;
    Ok(())
}

/// A multi-row INSERT. SQLite gets anonymous `?` placeholders: sqlx resolves named `$N` ones
/// per parameter, which made a 10,000-parameter statement cost 180 ms.
fn insert_sql(rows: usize, backend: Backend) -> String {
    format!(
        "INSERT INTO shares ({SHARE_COLUMNS}) VALUES {}",
        values_sql(rows, SHARE_COLUMN_COUNT, backend)
    )
}

/// `(?,?,…),(…)` for SQLite, `($1,$2,…),(…)` for PostgreSQL: a multi-row VALUES list.
pub(crate) fn values_sql(rows: usize, columns: usize, backend: Backend) -> String {
    let mut sql = String::with_capacity(rows * columns * 4);
    let mut n = 1;
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push('(');
        for column in 0..columns {
            if column > 0 {
                sql.push(',');
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    let _ = write!(sql, "${n}");
                }
            }
            n += 1;
        }
        sql.push(')');
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_numbers_placeholders_in_order() {
        let sql = insert_sql(2, Backend::Postgres);
        assert!(sql.ends_with(
            "($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13),($14,$15,$16,$17,$18,$19,$20,$21,$22,$23,$24,$25,$26)"
        ));
        let sql = insert_sql(1, Backend::Sqlite);
        assert!(sql.ends_with("(?,?,?,?,?,?,?,?,?,?,?,?,?)"));
    }
}
