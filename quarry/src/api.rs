//! HTTP: the JSON API, Prometheus `/metrics`, the SSE event stream and admin endpoints.
//!
//! Statistics come from the share log, so every frontend sharing one PostgreSQL shows the whole
//! pool. Errors are JSON `{"error": "..."}` with a matching status code.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use quarry_ledger::{BlockStatus, Chain, Sat, Store};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

use crate::driver::unix_ms;
use crate::events::{EventBus, Metrics};

/// Window for hashrates and active miners.
pub(crate) const WINDOW_MS: i64 = 10 * 60 * 1000;
/// How far back a miner's shares are read for the aux addresses they name.
const AUX_PAYOUTS_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;
/// 2^32: expected hashes per difficulty-1 share.
pub(crate) const HASHES_PER_DIFF1: f64 = 4_294_967_296.0;

/// What the handlers read.
pub struct ApiState {
    /// The ledger.
    pub store: Store,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Events.
    pub events: Arc<EventBus>,
    /// Admin bearer token; admin endpoints are off without one.
    pub admin_token: Option<String>,
    /// Scheme name and fee, for `/api/pool`.
    pub scheme: String,
    /// Pool fee, percent.
    pub fee_percent: f64,
    /// Payout threshold, satoshis.
    pub threshold_sat: u64,
    /// The chains the admin payout run pays.
    pub wallets: Vec<crate::wallet::ChainWallet>,
    /// Scores and bans per address.
    pub bans: Arc<crate::server::Bans>,
    /// The Kaspa port's counters, when `[kaspa]` is on.
    pub kaspa: Option<Arc<Metrics>>,
    /// What the dashboard tells miners to connect to.
    pub connect: crate::dashboard::Connect,
    /// The share log's commit counters.
    pub share_log: Arc<quarry_ledger::share_log::ShareLogStats>,
    /// Payouts in the coinbase, when the scheme is `coinbase-pplns`.
    pub coinbase: Option<CoinbaseApi>,
    /// The embedded Lightning node, with `[lightning]` on.
    pub lightning: Option<Arc<crate::lightning::Lightning>>,
    /// Payout destination registrations, with `[lightning]` on.
    pub destinations: Option<Arc<crate::payout_destination::Registrar>>,
}

/// What the `coinbase-pplns` endpoints read.
pub struct CoinbaseApi {
    /// The table in force.
    pub view: crate::coinbase_payouts::View,
    /// The pool's own output's address.
    pub pool_address: String,
    /// The network, for verifiers decoding the coinbase.
    pub network: String,
}

impl ApiState {
    /// The chains this instance's own ports mine, the first being the overview's default.
    pub fn chains(&self) -> Vec<Chain> {
        let mut chains = Vec::new();
        if self.connect.stratum.is_some() {
            chains.push(Chain::BITCOIN);
        }
        if self.kaspa.is_some() {
            chains.extend(Chain::new("kaspa").ok());
        }
        if chains.is_empty() {
            chains.push(Chain::BITCOIN);
        }
        chains
    }

    /// The counters of `chain`'s port (Bitcoin's also for its merge-mined chains).
    pub fn metrics_of(&self, chain: &Chain) -> &Metrics {
        match (&self.kaspa, chain.as_str()) {
            (Some(kaspa), "kaspa") => kaspa,
            _ => &self.metrics,
        }
    }
}

/// A chart window: how far back, in steps of what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// `1h`, `24h`, `7d`, `30d`, `1y`.
    pub name: &'static str,
    /// How far back.
    pub span_ms: i64,
    /// One point per step.
    pub step_ms: i64,
}

/// The windows `?window=` takes; the first is the default.
pub(crate) const WINDOWS: [Window; 5] = [
    Window {
        name: "1h",
        span_ms: 3_600_000,
        step_ms: 60_000,
    },
    Window {
        name: "24h",
        span_ms: 86_400_000,
        step_ms: 600_000,
    },
    Window {
        name: "7d",
        span_ms: 7 * 86_400_000,
        step_ms: 3_600_000,
    },
    Window {
        name: "30d",
        span_ms: 30 * 86_400_000,
        step_ms: 6 * 3_600_000,
    },
    Window {
        name: "1y",
        span_ms: 365 * 86_400_000,
        step_ms: 86_400_000,
    },
];

/// The window named, the default when none is.
pub(crate) fn window(name: Option<&str>) -> Option<Window> {
    match name {
        None | Some("") => Some(WINDOWS[0]),
        Some(name) => WINDOWS.iter().find(|w| w.name == name).copied(),
    }
}

/// A hashrate series: `(from, to, points)`, each point a complete step (the step in progress
/// is left out: it would read low).
pub(crate) async fn series(
    store: &Store,
    chain: &Chain,
    scope: quarry_ledger::Scope<'_>,
    window: Window,
) -> Result<(i64, i64, Vec<quarry_ledger::history::Bucket>), quarry_ledger::StoreError> {
    let now = unix_ms() as i64;
    let to = now - now.rem_euclid(window.step_ms);
    let from = to - window.span_ms;
    let buckets = store
        .history(chain, scope, from, to, window.step_ms)
        .await?;
    Ok((from, to, buckets))
}

/// A found block with its effort (the round's shares over the network difficulty; `None`
/// once its round's shares are pruned) and, while pending, its confirmations.
pub(crate) struct BlockView {
    pub record: quarry_ledger::BlockRecord,
    pub effort: Option<f64>,
    pub confirmations: Option<i64>,
}

/// The newest `limit` blocks (of `chain`, or all; found by `address`, or anyone), newest
/// first, and how many match (of the newest 10,000). Effort is looked up only for the blocks
/// returned.
pub(crate) async fn blocks_with_effort(
    state: &ApiState,
    chain: Option<&Chain>,
    address: Option<&str>,
    limit: usize,
) -> Result<(Vec<BlockView>, usize), quarry_ledger::StoreError> {
    let all = state.store.blocks_of(chain, 10_000).await?;
    let matching = all
        .iter()
        .filter(|b| address.is_none_or(|a| b.address == a))
        .count();
    let oldest_share = state.store.oldest_share_ms().await?.unwrap_or(i64::MAX);
    let mut views = Vec::with_capacity(limit.min(all.len()));
    let chosen = all
        .iter()
        .enumerate()
        .filter(|(_, b)| address.is_none_or(|a| b.address == a))
        .take(limit);
    for (i, block) in chosen {
        // Blocks come newest first: the round began at the same chain's next older block.
        let previous = all[i + 1..]
            .iter()
            .find(|b| b.chain == block.chain)
            .map(|b| b.found_ms);
        let effort = match previous {
            Some(start) if start < oldest_share => None,
            _ if block.network_difficulty <= 0.0 => None,
            start => Some(
                state
                    .store
                    .difficulty_between(&block.chain, start.unwrap_or(0), block.found_ms)
                    .await?
                    / block.network_difficulty,
            ),
        };
        let confirmations = (block.status == BlockStatus::Pending && block.chain == Chain::BITCOIN)
            .then(|| state.metrics.height.load(Ordering::Relaxed) as i64 - block.height)
            .filter(|c| *c >= 0);
        views.push(BlockView {
            record: block.clone(),
            effort,
            confirmations,
        });
    }
    Ok((views, matching))
}

type Shared = State<Arc<ApiState>>;

/// An error answer.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<quarry_ledger::StoreError> for ApiError {
    fn from(e: quarry_ledger::StoreError) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"))
    }
}

/// The router.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/pool", get(pool))
        .route("/api/network", get(network))
        .route("/api/history", get(pool_history))
        .route("/api/miners/{address}", get(miner))
        .route("/api/miners/{address}/history", get(miner_history))
        .route(
            "/api/miners/{address}/payout-destination",
            post(register_destination),
        )
        .route("/api/lightning", get(lightning_status))
        .route("/api/workers", get(workers))
        .route("/api/blocks", get(blocks))
        .route("/api/chains", get(chains))
        .route("/api/payments", get(payments))
        .route("/api/bans", get(bans))
        .route("/api/pplns/window", get(pplns_window))
        .route("/api/pplns/shares", get(pplns_shares))
        .route("/api/blocks/{hash}/coinbase", get(block_coinbase))
        .route("/api/events", get(events))
        .route("/api/openapi.json", get(openapi))
        .route("/api/admin/payouts/run", post(admin_payout))
        .route("/metrics", get(metrics))
        .merge(crate::dashboard::router())
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .with_state(state)
}

fn coinbase_api(state: &ApiState) -> Result<&CoinbaseApi, ApiError> {
    state.coinbase.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "this pool does not pay in the coinbase (payout.scheme is not coinbase-pplns)".into(),
        )
    })
}

/// The payout table in force: the window, each address's part of the current template's
/// value, and the outputs every job pays now.
async fn pplns_window(State(state): Shared) -> Result<Json<Value>, ApiError> {
    let api = coinbase_api(&state)?;
    let table = api.view.borrow().clone();
    Ok(Json(json!({
        "pool_address": api.pool_address,
        "network": api.network,
        "table": table.as_deref(),
        "remainder_sat": table.as_ref().map(|t| t.remainder_sat()),
        "shares": "/api/pplns/shares",
    })))
}

#[derive(Deserialize)]
struct SharesQuery {
    block: Option<String>,
    /// Newest share id of this page (the window's newest when unset).
    until: Option<i64>,
    /// Shares in this page (at most [`SHARES_PAGE`]).
    limit: Option<i64>,
}

/// Shares per page of `/api/pplns/shares`: a window may hold a million.
const SHARES_PAGE: i64 = 100_000;

/// The shares behind a block's table (`?block=<hash>`), or behind the table in force: newest
/// first, each with its header hash, so anyone can recompute the split (`quarry verify`). In
/// pages of at most 100,000: `next_until` names the next page's `until`, `null` on the last.
async fn pplns_shares(
    State(state): Shared,
    Query(query): Query<SharesQuery>,
) -> Result<Response, ApiError> {
    let api = coinbase_api(&state)?;
    let table = match &query.block {
        Some(hash) => {
            check_block_hash(hash)?;
            state
                .store
                .coinbase_table(hash)
                .await?
                .map(|(table, _)| table)
                .ok_or_else(|| {
                    ApiError(
                        StatusCode::NOT_FOUND,
                        "no payout table for that block".into(),
                    )
                })?
        }
        None => api
            .view
            .borrow()
            .as_deref()
            .cloned()
            .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "no table yet".into()))?,
    };
    let until = query
        .until
        .unwrap_or(table.window_end_id)
        .min(table.window_end_id);
    let limit = query.limit.unwrap_or(SHARES_PAGE).clamp(1, SHARES_PAGE);
    let mut shares = state
        .store
        .published_shares(&Chain::BITCOIN, until, limit)
        .await?;
    // The window's shares only: none older than its first.
    shares.retain(|s| s.id >= table.window_start_id);
    let next_until = match shares.last() {
        Some(last) if shares.len() as i64 == limit && last.id > table.window_start_id => {
            Some(last.id - 1)
        }
        _ => None,
    };
    let body = json!({
        "next_until": next_until,
        "block": query.block,
        "table": table.id,
        "window_start_id": table.window_start_id,
        "window_end_id": table.window_end_id,
        "window_difficulty": table.window_difficulty,
        "shares": shares,
    });
    Ok((
        [(
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"pplns-shares.json\"",
        )],
        Json(body),
    )
        .into_response())
}

/// The table a block's coinbase committed to, with the coinbase's txid.
async fn block_coinbase(
    State(state): Shared,
    Path(hash): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let api = coinbase_api(&state)?;
    check_block_hash(&hash)?;
    let (table, txid) = state.store.coinbase_table(&hash).await?.ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "no payout table for that block".into(),
        )
    })?;
    Ok(Json(json!({
        "block": hash,
        "coinbase_txid": txid,
        "pool_address": api.pool_address,
        "network": api.network,
        "remainder_sat": table.remainder_sat(),
        "table": table,
    })))
}

fn check_block_hash(hash: &str) -> Result<(), ApiError> {
    match hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        true => Ok(()),
        false => Err(ApiError(
            StatusCode::BAD_REQUEST,
            "a block hash is 64 hex characters".into(),
        )),
    }
}

fn hashrate(difficulty: f64, window_ms: i64) -> f64 {
    difficulty * HASHES_PER_DIFF1 / (window_ms as f64 / 1000.0)
}

async fn pool(State(state): Shared) -> Result<Json<Value>, ApiError> {
    let now = unix_ms() as i64;
    let workers = state.store.worker_stats(now - WINDOW_MS).await?;
    let difficulty: f64 = workers.iter().map(|w| w.difficulty).sum();
    let shares: i64 = workers.iter().map(|w| w.shares).sum();
    let mut miners: Vec<&str> = workers.iter().map(|w| w.address.as_str()).collect();
    miners.dedup();
    // Bitcoin's: round effort and time to block are about the parent chain (/api/chains has
    // the merge-mined ones).
    let mut blocks = state.store.blocks(None, 10_000).await?;
    blocks.retain(|b| b.chain == Chain::BITCOIN);
    let found_24h = blocks
        .iter()
        .filter(|b| b.found_ms > now - 86_400_000)
        .count();
    let last_block_ms = blocks
        .iter()
        .filter(|b| !matches!(b.status, BlockStatus::Orphaned | BlockStatus::Rejected))
        .map(|b| b.found_ms)
        .max()
        .unwrap_or(0);
    let round_difficulty = state
        .store
        .difficulty_since(&Chain::BITCOIN, last_block_ms)
        .await?;
    let network_difficulty = state.metrics.network_difficulty();
    let rate = hashrate(difficulty, WINDOW_MS);
    let time_to_block = (rate > 0.0 && network_difficulty > 0.0)
        .then(|| network_difficulty * HASHES_PER_DIFF1 / rate);
    Ok(Json(json!({
        "hashrate": rate,
        "shares_per_minute": shares as f64 / (WINDOW_MS as f64 / 60_000.0),
        "active_miners": miners.len(),
        "active_workers": workers.len(),
        "blocks_found_24h": found_24h,
        "blocks_found": blocks.len(),
        "network_difficulty": network_difficulty,
        "height": state.metrics.height.load(Ordering::Relaxed),
        "estimated_time_to_block_secs": time_to_block,
        "round_effort": if network_difficulty > 0.0 { round_difficulty / network_difficulty } else { 0.0 },
        "scheme": state.scheme,
        "fee_percent": state.fee_percent,
        "payout_threshold_sat": state.threshold_sat,
    })))
}

async fn network(State(state): Shared) -> Json<Value> {
    let template_ms = state.metrics.template_ms.load(Ordering::Relaxed);
    Json(json!({
        "height": state.metrics.height.load(Ordering::Relaxed),
        "difficulty": state.metrics.network_difficulty(),
        "template_age_secs": (template_ms > 0).then(|| unix_ms().saturating_sub(template_ms) as f64 / 1000.0),
    }))
}

async fn miner(State(state): Shared, Path(address): Path<String>) -> Result<Json<Value>, ApiError> {
    if address.is_empty() || address.len() > 128 {
        return Err(ApiError(StatusCode::BAD_REQUEST, "invalid address".into()));
    }
    let now = unix_ms() as i64;
    let workers: Vec<_> = state
        .store
        .worker_stats(now - WINDOW_MS)
        .await?
        .into_iter()
        .filter(|w| w.chain == Chain::BITCOIN && w.address == address)
        .collect();
    let summaries = state
        .store
        .worker_summaries(&Chain::BITCOIN, &address)
        .await?;
    // On merge-mined chains the miner's shares may name other addresses (`<chain>=<address>`).
    let aux_payouts = state
        .store
        .aux_payouts_of(&address, now - AUX_PAYOUTS_WINDOW_MS)
        .await?;
    let balances: Vec<_> = state
        .store
        .balances()
        .await?
        .into_iter()
        .filter(|b| b.address == address || aux_payouts.get(b.chain.as_str()) == Some(&b.address))
        .collect();
    let balance = balances
        .iter()
        .find(|b| b.chain == Chain::BITCOIN && b.address == address)
        .cloned();
    // Merge-mined chains' credits, in each chain's own coin.
    let merged: Vec<Value> = balances
        .iter()
        .filter(|b| b.chain != Chain::BITCOIN)
        .map(|b| json!({"chain": b.chain, "address": b.address, "mature_msat": b.mature_msat, "immature_msat": b.immature_msat}))
        .collect();
    let paid = state
        .store
        .paid(&Chain::BITCOIN)
        .await?
        .get(&address)
        .copied();
    let destination = state.store.payout_destination(&address).await?;
    if workers.is_empty()
        && balances.is_empty()
        && paid.is_none()
        && summaries.is_empty()
        && destination.is_none()
    {
        return Err(ApiError(StatusCode::NOT_FOUND, "unknown miner".into()));
    }
    let difficulty: f64 = workers.iter().map(|w| w.difficulty).sum();
    // Best shares, last difficulty and rejects, kept by the hashrate history (workers seen
    // before the last 10 minutes are listed too, with no hashrate).
    let mut listed: Vec<Value> = workers
        .iter()
        .map(|w| {
            let s = summaries.iter().find(|s| s.worker == w.worker);
            worker_json(
                &w.worker,
                hashrate(w.difficulty, WINDOW_MS),
                w.shares,
                w.last_share_ms,
                s,
            )
        })
        .collect();
    for s in summaries
        .iter()
        .filter(|s| !workers.iter().any(|w| w.worker == s.worker))
    {
        listed.push(worker_json(&s.worker, 0.0, 0, s.last_share_ms, Some(s)));
    }
    let payable = state
        .store
        .payable(&Chain::BITCOIN)
        .await?
        .get(&address)
        .copied()
        .unwrap_or(Sat::ZERO);
    Ok(Json(json!({
        "address": address,
        "hashrate": hashrate(difficulty, WINDOW_MS),
        "workers": listed,
        "balance": {
            "mature_msat": balance.as_ref().map_or(0, |b| b.mature_msat),
            "immature_msat": balance.as_ref().map_or(0, |b| b.immature_msat),
            "payable_sat": payable,
        },
        "paid_sat": paid.map_or(0, |p| p.0),
        "received_sat": paid.map_or(0, |p| p.1),
        "merged": merged,
        "payout_destination": destination.filter(|d| d.method != "none").map(|d| json!({
            "method": d.method,
            "destination": d.destination,
            "source": d.source,
            "updated_ms": d.updated_ms,
        })),
    })))
}

fn worker_json(
    worker: &str,
    rate: f64,
    shares: i64,
    last_share_ms: i64,
    summary: Option<&quarry_ledger::history::WorkerSummary>,
) -> Value {
    json!({
        "worker": worker,
        "hashrate": rate,
        "shares": shares,
        "last_share_ms": last_share_ms,
        "difficulty": summary.map(|s| s.last_difficulty),
        "best_difficulty": summary.map(|s| s.best_difficulty),
        "round_best_difficulty": summary.map(|s| s.round_best_difficulty),
        "rejected": summary.map_or(0, |s| s.rejected),
        "rejects": summary.map(|s| json!(s.rejects)).unwrap_or(json!({})),
    })
}

async fn workers(State(state): Shared) -> Result<Json<Value>, ApiError> {
    let now = unix_ms() as i64;
    let workers = state.store.worker_stats(now - WINDOW_MS).await?;
    Ok(Json(json!(workers
        .iter()
        .map(|w| json!({
            "worker": w.worker,
            "address": w.address,
            "hashrate": hashrate(w.difficulty, WINDOW_MS),
            "shares": w.shares,
            "last_share_ms": w.last_share_ms,
        }))
        .collect::<Vec<_>>())))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<i64>,
}

async fn blocks(
    State(state): Shared,
    Query(q): Query<BlocksQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let chain = q.chain.as_deref().map(chain_param).transpose()?;
    let (views, _) = blocks_with_effort(&state, chain.as_ref(), None, limit as usize).await?;
    Ok(Json(json!(views
        .into_iter()
        .map(|v| {
            let mut block = json!(v.record);
            block["effort"] = json!(v.effort);
            block["confirmations"] = json!(v.confirmations);
            block
        })
        .collect::<Vec<_>>())))
}

/// A `?chain=` value.
fn chain_param(text: &str) -> Result<Chain, ApiError> {
    Chain::new(text).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

/// `?window=&chain=&worker=`.
#[derive(Debug, serde::Deserialize)]
struct HistoryQuery {
    window: Option<String>,
    chain: Option<String>,
    worker: Option<String>,
}

fn history_json(
    chain: &Chain,
    window: Window,
    from: i64,
    to: i64,
    buckets: &[quarry_ledger::history::Bucket],
) -> Value {
    let step_secs = window.step_ms as f64 / 1000.0;
    json!({
        "chain": chain,
        "window": window.name,
        "step_secs": step_secs,
        "from_ms": from,
        "to_ms": to,
        "points": buckets.iter().map(|b| json!({
            "t": b.start_ms,
            "hashrate": b.difficulty * HASHES_PER_DIFF1 / step_secs,
            "difficulty": b.difficulty,
            "shares": b.shares,
            "rejected": b.rejected,
        })).collect::<Vec<_>>(),
    })
}

fn window_param(q: &HistoryQuery) -> Result<Window, ApiError> {
    window(q.window.as_deref()).ok_or_else(|| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "window must be one of 1h, 24h, 7d, 30d, 1y".into(),
        )
    })
}

/// Pool-wide hashrate history.
async fn pool_history(
    State(state): Shared,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    let window = window_param(&q)?;
    let chain = match q.chain.as_deref() {
        Some(c) => chain_param(c)?,
        None => state.chains()[0].clone(),
    };
    let (from, to, buckets) =
        series(&state.store, &chain, quarry_ledger::Scope::Pool, window).await?;
    Ok(Json(history_json(&chain, window, from, to, &buckets)))
}

/// One miner's (or, with `?worker=`, one worker's) hashrate history.
async fn miner_history(
    State(state): Shared,
    Path(address): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    if address.is_empty() || address.len() > 128 {
        return Err(ApiError(StatusCode::BAD_REQUEST, "invalid address".into()));
    }
    let window = window_param(&q)?;
    let chain = match q.chain.as_deref() {
        Some(c) => chain_param(c)?,
        None => state.chains()[0].clone(),
    };
    let scope = match q.worker.as_deref() {
        Some(worker) => quarry_ledger::Scope::Worker(&address, worker),
        None => quarry_ledger::Scope::Miner(&address),
    };
    let (from, to, buckets) = series(&state.store, &chain, scope, window).await?;
    Ok(Json(history_json(&chain, window, from, to, &buckets)))
}

/// `?limit=&chain=`.
#[derive(Debug, serde::Deserialize)]
struct BlocksQuery {
    limit: Option<i64>,
    chain: Option<String>,
}

/// Every chain the pool mines: Bitcoin, and each merge-mined chain with whether its node
/// answers, its blocks by status and what is credited in its coin.
async fn chains(State(state): Shared) -> Result<Json<Value>, ApiError> {
    use std::collections::BTreeMap;
    let mut chains: BTreeMap<String, Value> = BTreeMap::new();
    chains.insert(
        Chain::BITCOIN.to_string(),
        json!({"chain": "bitcoin", "kind": "parent", "up": true}),
    );
    let aux = state
        .metrics
        .aux
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for (name, counters) in &aux {
        chains.insert(
            name.clone(),
            json!({"chain": name, "kind": "merged", "up": counters.up,
                   "submitted": counters.submitted, "accepted": counters.accepted}),
        );
    }
    for block in state.store.blocks(None, 10_000).await? {
        let entry = chains
            .entry(block.chain.to_string())
            .or_insert_with(|| json!({"chain": block.chain.to_string(), "kind": "merged"}));
        let count = &mut entry["blocks"][block.status.as_str()];
        *count = json!(count.as_u64().unwrap_or(0) + 1);
    }
    for balance in state.store.balances().await? {
        let entry = chains
            .entry(balance.chain.to_string())
            .or_insert_with(|| json!({"chain": balance.chain.to_string(), "kind": "merged"}));
        for (key, value) in [
            ("mature_msat", balance.mature_msat),
            ("immature_msat", balance.immature_msat),
        ] {
            let total = &mut entry["credited"][key];
            *total = json!(total.as_i64().unwrap_or(0) + value);
        }
    }
    Ok(Json(json!(chains.into_values().collect::<Vec<_>>())))
}

async fn payments(State(state): Shared, Query(q): Query<Limit>) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(json!(state.store.payouts(limit).await?)))
}

/// Addresses with a score or a ban, highest first; `banned_until_ms` is Unix time.
async fn bans(State(state): Shared) -> Json<Value> {
    let (mono, unix) = {
        let now = crate::driver::now();
        (now.mono_ms, now.unix_ms)
    };
    let list: Vec<Value> = state
        .bans
        .standings()
        .into_iter()
        .map(|s| {
            json!({
                "ip": s.ip.to_string(),
                "score": s.score,
                "banned": state.bans.enabled && s.banned_until_ms.is_some(),
                "banned_until_ms": s.banned_until_ms.map(|until| unix + until.saturating_sub(mono)),
            })
        })
        .collect();
    Json(json!({"enabled": state.bans.enabled, "addresses": list}))
}

async fn events(State(state): Shared) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = BroadcastStream::new(state.events.subscribe()).filter_map(|event| {
        // A lagging subscriber skips what it missed.
        let event = event.ok()?;
        Some(Ok(Event::default()
            .event(event.name)
            .data(event.data.to_string())))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn admin_payout(State(state): Shared, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let Some(token) = &state.admin_token else {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "admin endpoints are disabled (set api.admin_token)".into(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given != Some(token.as_str()) {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "bad or missing bearer token".into(),
        ));
    }
    crate::wallet::payout_once(
        &state.store,
        &state.wallets,
        state.lightning.as_deref(),
        &state.events,
    )
    .await
    .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, format!("{e:#}")))?;
    Ok(Json(json!({"ok": true})))
}

async fn metrics(State(state): Shared) -> impl IntoResponse {
    let m = &state.metrics;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "quarry_connections",
        "gauge",
        "Open Stratum connections.",
        m.connections.load(Ordering::Relaxed).to_string(),
    );
    let (banned_now, banned_total) = state.bans.counts();
    metric(
        "quarry_bans_active",
        "gauge",
        "Addresses banned now.",
        banned_now.to_string(),
    );
    metric(
        "quarry_bans_total",
        "counter",
        "Bans imposed since start.",
        banned_total.to_string(),
    );
    metric(
        "quarry_ban_refusals_total",
        "counter",
        "Connections refused because their address was banned.",
        state.bans.refused.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "quarry_shares_accepted_total",
        "counter",
        "Accepted shares.",
        m.accepted.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "quarry_share_difficulty_total",
        "counter",
        "Sum of accepted share difficulty.",
        m.difficulty.get().to_string(),
    );
    metric(
        "quarry_blocks_found_total",
        "counter",
        "Blocks found.",
        m.blocks_found.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "quarry_blocks_accepted_total",
        "counter",
        "Blocks accepted by a node.",
        m.blocks_accepted.load(Ordering::Relaxed).to_string(),
    );
    let template_ms = m.template_ms.load(Ordering::Relaxed);
    metric(
        "quarry_template_age_seconds",
        "gauge",
        "Age of the current block template.",
        if template_ms == 0 {
            "NaN".into()
        } else {
            (unix_ms().saturating_sub(template_ms) as f64 / 1000.0).to_string()
        },
    );
    metric(
        "quarry_node_rpc_seconds",
        "gauge",
        "Latest getblocktemplate round trip.",
        (m.rpc_micros.load(Ordering::Relaxed) as f64 / 1e6).to_string(),
    );
    metric(
        "quarry_network_difficulty",
        "gauge",
        "Network difficulty.",
        m.network_difficulty().to_string(),
    );
    metric(
        "quarry_height",
        "gauge",
        "Height of the block being mined.",
        m.height.load(Ordering::Relaxed).to_string(),
    );
    if let Ok(workers) = state.store.worker_stats(unix_ms() as i64 - WINDOW_MS).await {
        let difficulty: f64 = workers.iter().map(|w| w.difficulty).sum();
        metric(
            "quarry_hashrate",
            "gauge",
            "Pool hashrate over 10 minutes, H/s.",
            hashrate(difficulty, WINDOW_MS).to_string(),
        );
    }
    let log = &state.share_log;
    for (name, help, value) in [
        (
            "quarry_share_log_committed_total",
            "Shares committed to the database.",
            log.committed.load(Ordering::Relaxed).to_string(),
        ),
        (
            "quarry_share_log_spooled_total",
            "Shares written to the disk spool while the database was down.",
            log.spooled.load(Ordering::Relaxed).to_string(),
        ),
        (
            "quarry_share_log_commits_total",
            "Share log commits (each a batch of shares).",
            log.commits.load(Ordering::Relaxed).to_string(),
        ),
        (
            "quarry_share_log_commit_seconds_total",
            "Time spent in share log commits.",
            (log.commit_micros.load(Ordering::Relaxed) as f64 / 1e6).to_string(),
        ),
    ] {
        metric(name, "counter", help, value);
    }
    let _ = writeln!(out, "# HELP quarry_shares_rejected_total Rejected shares by reason.\n# TYPE quarry_shares_rejected_total counter");
    for (reason, count) in m.rejected.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(
            out,
            "quarry_shares_rejected_total{{reason=\"{reason}\"}} {count}"
        );
    }
    crate::aux::render_metrics(m, &mut out);
    if let Some(kaspa) = &state.kaspa {
        render_kaspa(kaspa, &mut out);
    }
    render_payouts(state.lightning.as_deref(), &mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// Payouts by method and outcome, and the Lightning node's balances and channels.
fn render_payouts(lightning: Option<&crate::lightning::Lightning>, out: &mut String) {
    let stats = &crate::wallet::PAYOUT_STATS;
    let _ = writeln!(out, "# HELP quarry_payouts_total Payouts by method (onchain, lightning) and outcome (sent, or why not).\n# TYPE quarry_payouts_total counter");
    for ((method, outcome), count) in stats
        .counts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "quarry_payouts_total{{method=\"{method}\",outcome=\"{outcome}\"}} {count}"
        );
    }
    let _ = writeln!(out, "# HELP quarry_payouts_sent_sat_total Satoshis paid out, by method.\n# TYPE quarry_payouts_sent_sat_total counter");
    for (method, sat) in stats
        .sent_sat
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "quarry_payouts_sent_sat_total{{method=\"{method}\"}} {sat}"
        );
    }
    let Some(lightning) = lightning else {
        return;
    };
    let status = lightning
        .status
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for (name, key, help) in [
        (
            "quarry_lightning_onchain_sat",
            "onchain_total_sat",
            "The Lightning node's on-chain wallet.",
        ),
        (
            "quarry_lightning_channels_sat",
            "lightning_sat",
            "The Lightning node's balance in channels.",
        ),
        (
            "quarry_lightning_sendable_msat",
            "sendable_msat",
            "What one payment can carry now.",
        ),
    ] {
        let value = status[key].as_u64().unwrap_or(0);
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    let _ = writeln!(out, "# HELP quarry_lightning_channel_outbound_msat Outbound capacity per channel.\n# TYPE quarry_lightning_channel_outbound_msat gauge");
    for channel in status["channels"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "quarry_lightning_channel_outbound_msat{{peer=\"{}\",usable=\"{}\"}} {}",
            channel["counterparty"].as_str().unwrap_or_default(),
            channel["usable"].as_bool().unwrap_or(false),
            channel["outbound_msat"].as_u64().unwrap_or(0)
        );
    }
}

/// `GET /api/lightning`: the node, its funding address, balances and channels.
async fn lightning_status(State(state): Shared) -> Result<Json<Value>, ApiError> {
    let Some(lightning) = &state.lightning else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "Lightning payouts are not enabled on this pool".into(),
        ));
    };
    let status = match lightning.refresh().await {
        Ok(status) => status,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "Lightning node status");
            lightning
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        }
    };
    let policy = &lightning.config;
    Ok(Json(json!({
        "node": status,
        "policy": {
            "min_payout_sat": policy.min_payout_sat,
            "max_payout_sat": policy.max_payout_sat,
            "routing_fee": policy.routing_fee,
            "onchain_fallback": policy.onchain_fallback,
            "peers": policy.peers,
            "channel_sat": policy.channel_sat,
        },
    })))
}

/// `POST /api/miners/{address}/payout-destination`: a BOLT12 offer for `address`, signed with
/// its key (`{"destination", "timestamp", "signature"}`; see `payout_destination.rs`).
async fn register_destination(
    State(state): Shared,
    Path(address): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    use crate::payout_destination::RegistrationError as E;
    let Some(registrar) = &state.destinations else {
        return Err(ApiError(StatusCode::NOT_FOUND, E::Disabled.to_string()));
    };
    if body.len() > 8192 {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request over 8 KiB".into(),
        ));
    }
    let request: crate::payout_destination::SignedRegistration = serde_json::from_slice(&body)
        .map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"destination\", \"timestamp\", \"signature\"}}: {e}"),
            )
        })?;
    let now_secs = (unix_ms() / 1000) as i64;
    match registrar
        .register_signed(&address, &request, now_secs)
        .await
    {
        Ok(registered) => Ok(Json(json!(registered))),
        Err(e) => {
            let status = match e {
                E::Invalid(_) => StatusCode::BAD_REQUEST,
                E::Signature(_) => StatusCode::FORBIDDEN,
                E::Stale(_) => StatusCode::CONFLICT,
                E::Disabled => StatusCode::NOT_FOUND,
                E::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            tracing::info!(%address, error = %e, "payout destination refused");
            Err(ApiError(status, e.to_string()))
        }
    }
}

/// The Kaspa port's series, each named `quarry_kaspa_*`: Kaspa's difficulty, DAA score and
/// blocks never add up with Bitcoin's.
fn render_kaspa(m: &Metrics, out: &mut String) {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed).to_string();
    let series = [
        (
            "quarry_kaspa_connections",
            "gauge",
            "Open Kaspa stratum connections.",
            load(&m.connections),
        ),
        (
            "quarry_kaspa_shares_accepted_total",
            "counter",
            "Accepted Kaspa shares.",
            load(&m.accepted),
        ),
        (
            "quarry_kaspa_share_difficulty_total",
            "counter",
            "Sum of accepted Kaspa share difficulty (1 = 2^32 hashes).",
            m.difficulty.get().to_string(),
        ),
        (
            "quarry_kaspa_blocks_found_total",
            "counter",
            "Kaspa blocks found.",
            load(&m.blocks_found),
        ),
        (
            "quarry_kaspa_blocks_accepted_total",
            "counter",
            "Kaspa blocks kaspad accepted.",
            load(&m.blocks_accepted),
        ),
        (
            "quarry_kaspa_daa_score",
            "gauge",
            "DAA score of the Kaspa template being mined.",
            load(&m.height),
        ),
        (
            "quarry_kaspa_network_difficulty",
            "gauge",
            "Kaspa network difficulty (stratum units).",
            m.network_difficulty().to_string(),
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    let _ = writeln!(out, "# HELP quarry_kaspa_shares_rejected_total Rejected Kaspa shares by reason.\n# TYPE quarry_kaspa_shares_rejected_total counter");
    for (reason, count) in m.rejected.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(
            out,
            "quarry_kaspa_shares_rejected_total{{reason=\"{reason}\"}} {count}"
        );
    }
}

async fn openapi() -> Json<Value> {
    let get = |summary: &str| json!({"get": {"summary": summary, "responses": {"200": {"description": "OK"}}}});
    Json(json!({
        "openapi": "3.0.3",
        "info": {"title": "Quarry pool API", "version": env!("CARGO_PKG_VERSION")},
        "paths": {
            "/api/pool": get("Pool hashrate, miners, blocks, effort, time to block"),
            "/api/network": get("Height, network difficulty, template age"),
            "/api/miners/{address}": {"get": {
                "summary": "One miner: hashrate, workers (hashrate, difficulty, best share ever and since the last block, last share, rejects by reason), balance, payments, and merged: its balance on each merge-mined chain (with the address credited)",
                "parameters": [{"name": "address", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}, "404": {"description": "Unknown miner"}}
            }},
            "/api/history": {"get": {
                "summary": "Pool-wide hashrate history: one point per complete step (1h: 1 min, 24h: 10 min, 7d: 1 h, 30d: 6 h, 1y: 1 day), each with hashrate (H/s), accepted difficulty, shares and rejected shares",
                "parameters": [
                    {"name": "window", "in": "query", "required": false, "schema": {"type": "string", "enum": ["1h", "24h", "7d", "30d", "1y"], "default": "1h"}},
                    {"name": "chain", "in": "query", "required": false, "schema": {"type": "string", "example": "bitcoin"}}
                ],
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/History"}}}}, "400": {"description": "Unknown window or chain"}}
            }},
            "/api/miners/{address}/history": {"get": {
                "summary": "One miner's hashrate history (every worker of the address), or one worker's with ?worker=<full username>",
                "parameters": [
                    {"name": "address", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "window", "in": "query", "required": false, "schema": {"type": "string", "enum": ["1h", "24h", "7d", "30d", "1y"], "default": "1h"}},
                    {"name": "chain", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "worker", "in": "query", "required": false, "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/History"}}}}, "400": {"description": "Unknown window, chain or bad address"}}
            }},
            "/api/workers": get("Active workers"),
            "/api/blocks": get("Found blocks of every chain, newest first, with effort (the round's difficulty over the network's) and, while pending, confirmations (?limit=&chain=)"),
            "/api/chains": get("Bitcoin and each merge-mined chain: node up, blocks by status, credits"),
            "/api/bans": get("Addresses with an abuse score or a ban (invalid shares, garbage, floods, protocol violations)"),
            "/api/payments": get("Payouts of every chain (each with its chain), newest first (?limit=); under coinbase-pplns each found block's coinbase outputs are a payout (tag coinbase-<block>, txid the coinbase's): status coinbase while immature, sent once confirmed, void if the block left the chain"),
            "/api/pplns/window": get("coinbase-pplns: the payout table in force (window share ids and difficulty, fee policy, limits, per address earned, carried and output satoshis) and the pool's remainder"),
            "/api/pplns/shares": {"get": {
                "summary": "coinbase-pplns: the shares behind a block's payout table (?block=<hash>) or the table in force, newest first, each with id, time, address, worker, difficulty and header hash: enough to recompute the split (quarry verify). Pages of at most 100,000 shares: next_until is the next page's until, null on the last",
                "parameters": [
                    {"name": "block", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "until", "in": "query", "required": false, "schema": {"type": "integer"}},
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "maximum": 100000}}
                ],
                "responses": {"200": {"description": "OK"}, "400": {"description": "Bad block hash"}, "404": {"description": "No table for that block, or not coinbase-pplns"}}
            }},
            "/api/blocks/{hash}/coinbase": {"get": {
                "summary": "coinbase-pplns: the payout table a block's coinbase committed to, the coinbase txid, the pool's address and network",
                "parameters": [{"name": "hash", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}, "400": {"description": "Bad block hash"}, "404": {"description": "No table for that block, or not coinbase-pplns"}}
            }},
            "/api/miners/{address}/payout-destination": {"post": {
                "summary": "Register (or, with an empty destination, remove) the BOLT12 offer an address is paid to over Lightning. The body is {destination, timestamp, signature}: signature is BIP322 (simple or full) or legacy signmessage (base64) by the address's key over the one line `quarry payout-destination <address> <offer or none> <timestamp>`; timestamp (Unix seconds) within a day of now and later than the registration in force",
                "parameters": [{"name": "address", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "Registered"}, "400": {"description": "Bad address or offer (not BOLT12, another network, expired)"}, "403": {"description": "Bad signature"}, "404": {"description": "Lightning payouts are off"}, "409": {"description": "Not newer than the registration in force, or older than a day"}}
            }},
            "/api/lightning": get("The embedded Lightning node ([lightning]): node id, funding address, on-chain and channel balances, what one payment can carry (sendable_msat), channels, and the payout policy; 404 when off"),
            "/api/events": get("Server-Sent Events: MiningJobCreated, ShareSubmitted, BlockFound, BlockConfirmed, BlockOrphaned, PayoutSent (with method onchain or lightning), PayoutFailed (Lightning, with the reason), PayoutDestinationSet, LightningEvent (payments and channels), MinerConnected, MinerDisconnected, MergeMiningReward"),
            "/api/admin/payouts/run": {"post": {
                "summary": "Run payouts now on every paid chain (Authorization: Bearer <api.admin_token>)",
                "responses": {"200": {"description": "OK"}, "401": {"description": "Bad token"}, "403": {"description": "Admin disabled"}}
            }},
            "/metrics": get("Prometheus metrics (names and meaning: docs/metrics.md)"),
        },
        "components": {"schemas": {"History": {
            "type": "object",
            "required": ["chain", "window", "step_secs", "from_ms", "to_ms", "points"],
            "properties": {
                "chain": {"type": "string"},
                "window": {"type": "string"},
                "step_secs": {"type": "number"},
                "from_ms": {"type": "integer", "description": "Unix ms, inclusive"},
                "to_ms": {"type": "integer", "description": "Unix ms, exclusive: the step in progress is left out"},
                "points": {"type": "array", "items": {"type": "object", "properties": {
                    "t": {"type": "integer", "description": "Step start, Unix ms"},
                    "hashrate": {"type": "number", "description": "H/s: difficulty x 2^32 / step"},
                    "difficulty": {"type": "number", "description": "Sum of accepted share difficulty"},
                    "shares": {"type": "integer"},
                    "rejected": {"type": "integer"}
                }}}
            }
        }}}
    }))
}
