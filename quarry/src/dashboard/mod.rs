//! The web dashboard on `[api] listen`: a pool overview at `/`, a page per miner, blocks and
//! payments. Pages are rendered on the server (charts are SVG) so they read without
//! JavaScript; `live.js` only re-fetches the page's `<main>` when the event stream says
//! something changed. Every asset is compiled into the binary: no CDN, works offline.

mod chart;
mod format;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup, DOCTYPE};
use quarry_ledger::{BlockStatus, Chain, Scope};
use serde::Deserialize;

use crate::api::{self, ApiState, BlockView, Window, HASHES_PER_DIFF1, WINDOWS, WINDOW_MS};
use crate::driver::unix_ms;

const STYLE: &str = include_str!("assets/style.css");
const LIVE_JS: &str = include_str!("assets/live.js");
const ICON: &str = include_str!("assets/icon.svg");

/// What miners are told to connect to.
#[derive(Debug, Clone, Default)]
pub struct Connect {
    /// The Stratum port (V1 and SV2), when Bitcoin is served.
    pub stratum: Option<SocketAddr>,
    /// The stratum+ssl port.
    pub tls: Option<SocketAddr>,
    /// The SV2 authority public key miners pin.
    pub sv2_key: Option<String>,
    /// The Kaspa port.
    pub kaspa: Option<SocketAddr>,
    /// `regtest`, `mainnet`, ...
    pub network: String,
    /// `solo` or `pool`.
    pub mode: String,
}

type Shared = State<Arc<ApiState>>;

/// The dashboard's routes.
pub fn router() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/", get(overview))
        .route("/miners", get(find_miner))
        .route("/miners/{address}", get(miner))
        .route("/blocks", get(blocks))
        .route("/payments", get(payments))
        .route(
            "/assets/style.css",
            get(|| asset(STYLE, "text/css; charset=utf-8")),
        )
        .route(
            "/assets/live.js",
            get(|| asset(LIVE_JS, "text/javascript; charset=utf-8")),
        )
        .route("/assets/icon.svg", get(|| asset(ICON, "image/svg+xml")))
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// `?window=&chain=&address=`.
#[derive(Debug, Deserialize, Default)]
struct PageQuery {
    window: Option<String>,
    chain: Option<String>,
    address: Option<String>,
}

/// A page that could not be made: an error page with its status.
struct PageError(StatusCode, String);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = layout(
            "Error",
            "",
            None,
            html! { h1 { (self.0.canonical_reason().unwrap_or("Error")) } p { (self.1) } },
        );
        (self.0, body).into_response()
    }
}

impl From<quarry_ledger::StoreError> for PageError {
    fn from(e: quarry_ledger::StoreError) -> Self {
        PageError(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"))
    }
}

fn page_chain(state: &ApiState, q: &PageQuery) -> Result<Chain, PageError> {
    match q.chain.as_deref() {
        None | Some("") => Ok(state.chains()[0].clone()),
        Some(text) => {
            Chain::new(text).map_err(|e| PageError(StatusCode::BAD_REQUEST, e.to_string()))
        }
    }
}

fn page_window(q: &PageQuery) -> Result<Window, PageError> {
    api::window(q.window.as_deref()).ok_or_else(|| {
        PageError(
            StatusCode::BAD_REQUEST,
            "window must be one of 1h, 24h, 7d, 30d, 1y".into(),
        )
    })
}

/// The whole page around `main`.
fn layout(title: &str, current: &str, body_address: Option<&str>, main: Markup) -> Html<String> {
    let nav = [
        ("/", "Overview"),
        ("/blocks", "Blocks"),
        ("/payments", "Payments"),
    ];
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · Quarry" }
                    link rel="icon" href="/assets/icon.svg" type="image/svg+xml";
                    link rel="stylesheet" href="/assets/style.css";
                    // Without JavaScript the page still refreshes, once a minute.
                    noscript { meta http-equiv="refresh" content="60"; }
                    script src="/assets/live.js" defer {}
                }
                body data-address=[body_address] {
                    a.skip href="#main" { "Skip to content" }
                    header {
                        a.brand href="/" { "Quarry" }
                        nav aria-label="Main" {
                            @for (href, name) in nav {
                                a href=(href) aria-current=[(current == href).then_some("page")] { (name) }
                            }
                        }
                        form.find action="/miners" method="get" role="search" {
                            label for="find-address" { "Miner address" }
                            input #find-address name="address" type="search" placeholder="bc1q…" autocomplete="off" required;
                            button type="submit" { "Look up" }
                        }
                    }
                    main #main { (main) }
                    footer {
                        span #live role="status" { "Updates when the page is reloaded" }
                        " · "
                        a href="/api/openapi.json" { "API" }
                        " · "
                        a href="/metrics" { "Metrics" }
                    }
                }
            }
        }
        .into_string(),
    )
}

fn stat(label: &str, value: &str, testid: &str, raw: Option<f64>) -> Markup {
    html! {
        div.stat data-testid=(testid) data-value=[raw] {
            dt { (label) }
            dd { (value) }
        }
    }
}

fn window_links(base: &str, current: Window, extra: &str) -> Markup {
    html! {
        nav.windows aria-label="Chart window" {
            @for w in WINDOWS.iter().take(3) {
                a href=(format!("{base}?window={}{extra}", w.name)) aria-current=[(w.name == current.name).then_some("true")] { (w.name) }
            }
        }
    }
}

fn chain_tabs(state: &ApiState, chain: &Chain, base: &str) -> Markup {
    let chains = state.chains();
    html! {
        @if chains.len() > 1 {
            nav.windows aria-label="Coin" {
                @for c in &chains {
                    a href=(format!("{base}?chain={c}")) aria-current=[(c == chain).then_some("true")] { (c) }
                }
            }
        }
    }
}

fn chart_points(buckets: &[quarry_ledger::history::Bucket], window: Window) -> Vec<chart::Point> {
    let step_secs = window.step_ms as f64 / 1000.0;
    buckets
        .iter()
        .map(|b| (b.start_ms, b.difficulty * HASHES_PER_DIFF1 / step_secs))
        .collect()
}

fn time(now: i64, ms: i64) -> Markup {
    html! { time datetime=(format::iso(ms)) title=(format::utc(ms)) { (format::ago(now, ms)) } }
}

fn status_badge(view: &BlockView) -> Markup {
    let status = view.record.status;
    let text = match (status, view.confirmations) {
        (BlockStatus::Pending, Some(c)) => format!("pending · {c} conf."),
        _ => status.as_str().to_string(),
    };
    html! { span class=(format!("badge {}", status.as_str())) { (text) } }
}

/// `0123456789…abcdefgh` for a long hash or address. By characters: the miner page's address
/// comes from the URL, and slicing a multi-byte character would panic.
fn short_hash(hash: &str) -> String {
    let count = hash.chars().count();
    match count > 20 {
        true => {
            let head: String = hash.chars().take(10).collect();
            let tail: String = hash.chars().skip(count - 8).collect();
            format!("{head}…{tail}")
        }
        false => hash.to_string(),
    }
}

fn miner_link(address: &str) -> Markup {
    html! { a.mono href=(format!("/miners/{}", format::path_segment(address))) { (short_hash(address)) } }
}

fn blocks_table(now: i64, views: &[BlockView], show_chain: bool, testid: &str) -> Markup {
    html! {
        @if views.is_empty() {
            p.muted { "No blocks found yet." }
        } @else {
            div.scroll tabindex="0" role="region" aria-label="Block table" {
                table data-testid=(testid) {
                    thead { tr {
                        @if show_chain { th scope="col" { "Chain" } }
                        th scope="col" { "Height" }
                        th scope="col" { "Hash" }
                        th scope="col" { "Status" }
                        th scope="col" { "Effort" }
                        th scope="col" { "Reward" }
                        th scope="col" { "Found by" }
                        th scope="col" { "Found" }
                    } }
                    tbody {
                        @for v in views {
                            tr data-hash=(v.record.hash) {
                                @if show_chain { td { (v.record.chain) } }
                                td.num { (v.record.height) }
                                td.mono title=(v.record.hash) { (short_hash(&v.record.hash)) }
                                td { (status_badge(v)) }
                                td.num { (v.effort.map_or("–".to_string(), |e| format!("{:.1} %", e * 100.0))) }
                                td.num { (format::coins(v.record.reward)) }
                                td { (miner_link(&v.record.address)) }
                                td { (time(now, v.record.found_ms)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `host` of the request, without its port: where the pool's ports are reached from.
fn request_host(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    match host.strip_prefix('[') {
        Some(v6) => format!("[{}]", v6.split(']').next().unwrap_or(v6)),
        None => host.split(':').next().unwrap_or(host).to_string(),
    }
}

/// The address miners dial: the listen address, or the page's own host when it listens on
/// every interface.
fn dial(listen: SocketAddr, headers: &HeaderMap) -> String {
    match listen.ip().is_unspecified() {
        true => format!("{}:{}", request_host(headers), listen.port()),
        false => listen.to_string(),
    }
}

fn connect_box(state: &ApiState, headers: &HeaderMap) -> Markup {
    let c = &state.connect;
    html! {
        section aria-labelledby="connect" {
            h2 #connect { "Connect" }
            dl.connect {
                @if let Some(listen) = c.stratum {
                    dt { "Stratum V1" }
                    dd { code data-testid="connect-v1" { "stratum+tcp://" (dial(listen, headers)) } }
                    @if let Some(key) = &c.sv2_key {
                        dt { "Stratum V2" }
                        dd { code data-testid="connect-sv2" { "stratum2+tcp://" (dial(listen, headers)) "/" (key) } }
                    }
                }
                @if let Some(listen) = c.tls {
                    dt { "Stratum V1 over TLS" }
                    dd { code { "stratum+ssl://" (dial(listen, headers)) } }
                }
                @if let Some(listen) = c.kaspa {
                    dt { "Kaspa" }
                    dd { code { "stratum+tcp://" (dial(listen, headers)) } }
                }
                dt { "Username" }
                dd { code { "<your " (c.network) " address>.<worker name>" } }
                dt { "Password" }
                dd { code { "x" } " (or " code { "d=<difficulty>" } ")" }
            }
        }
    }
}

fn nodes_box(state: &ApiState, chain: &Chain) -> Markup {
    let nodes = state
        .metrics_of(chain)
        .nodes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let now = unix_ms() as i64;
    html! {
        @if !nodes.is_empty() {
            section aria-labelledby="nodes" {
                h2 #nodes { "Nodes" }
                div.scroll tabindex="0" role="region" aria-label="Node table" {
                    table {
                        thead { tr { th scope="col" { "Node" } th scope="col" { "State" } th scope="col" { "Round trip" } th scope="col" { "Last answer" } } }
                        tbody {
                            @for n in &nodes {
                                tr {
                                    td.mono { (n.name) }
                                    td {
                                        @if n.active { span.badge.confirmed { "serving work" } }
                                        @else if n.up { span.badge.pending { "standby" } }
                                        @else { span.badge.orphaned title=[n.error.as_deref()] { "down" } }
                                    }
                                    td.num { (format!("{:.1} ms", n.rpc_ms)) }
                                    td { (time(now, n.last_ok_ms as i64)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn overview(
    State(state): Shared,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Result<Html<String>, PageError> {
    let chain = page_chain(&state, &q)?;
    let window = page_window(&q)?;
    let now = unix_ms() as i64;
    let workers: Vec<_> = state
        .store
        .worker_stats(now - WINDOW_MS)
        .await?
        .into_iter()
        .filter(|w| w.chain == chain)
        .collect();
    let difficulty: f64 = workers.iter().map(|w| w.difficulty).sum();
    let shares: i64 = workers.iter().map(|w| w.shares).sum();
    let mut miners: Vec<&str> = workers.iter().map(|w| w.address.as_str()).collect();
    miners.sort_unstable();
    miners.dedup();
    let rate = difficulty * HASHES_PER_DIFF1 / (WINDOW_MS as f64 / 1000.0);
    let metrics = state.metrics_of(&chain);
    let network_difficulty = metrics.network_difficulty();
    let height = metrics.height.load(Ordering::Relaxed);
    let pool_row = state.store.worker_summaries(&chain, "").await?;
    let round_best = pool_row.first().map_or(0.0, |p| p.round_best_difficulty);
    let (views, _) = api::blocks_with_effort(&state, Some(&chain), None, 10).await?;
    let last_block_ms = views
        .iter()
        .filter(|v| {
            !matches!(
                v.record.status,
                BlockStatus::Orphaned | BlockStatus::Rejected
            )
        })
        .map(|v| v.record.found_ms)
        .max()
        .unwrap_or(0);
    let round = state.store.difficulty_since(&chain, last_block_ms).await?;
    let effort = (network_difficulty > 0.0).then(|| round / network_difficulty);
    let (from, to, buckets) = api::series(&state.store, &chain, Scope::Pool, window).await?;
    let chain_query = if chain == state.chains()[0] {
        String::new()
    } else {
        format!("&chain={chain}")
    };
    let title = format!("{} pool", capitalised(chain.as_str()));
    Ok(layout(
        &title,
        "/",
        None,
        html! {
            h1 { (title) span.muted { " · " (state.connect.network) " · " (state.connect.mode) " mode" } }
            (chain_tabs(&state, &chain, "/"))
            dl.stats {
                (stat("Hashrate (10 min)", &format::hashrate(rate), "pool-hashrate", Some(rate)))
                (stat("Miners online", &miners.len().to_string(), "miners-online", Some(miners.len() as f64)))
                (stat("Workers online", &workers.len().to_string(), "workers-online", Some(workers.len() as f64)))
                (stat("Shares / s", &format!("{:.2}", shares as f64 / (WINDOW_MS as f64 / 1000.0)), "shares-per-second", None))
                (stat("Network difficulty", &format::difficulty(network_difficulty), "network-difficulty", Some(network_difficulty)))
                (stat(if chain.as_str() == "kaspa" { "DAA score" } else { "Height" }, &height.to_string(), "height", Some(height as f64)))
                (stat("Round effort", &effort.map_or("–".into(), |e| format!("{:.1} %", e * 100.0)), "round-effort", effort))
                (stat("Best share this round", &format::difficulty(round_best), "round-best", Some(round_best)))
            }
            section aria-labelledby="hashrate" {
                h2 #hashrate { "Hashrate" }
                (window_links("/", window, &chain_query))
                (chart::hashrate("Pool hashrate", &chart_points(&buckets, window), from, to))
            }
            section aria-labelledby="recent-blocks" {
                h2 #recent-blocks { "Blocks found" }
                (blocks_table(now, &views, false, "overview-blocks"))
                p { a href="/blocks" { "All blocks" } }
            }
            (connect_box(&state, &headers))
            (nodes_box(&state, &chain))
        },
    ))
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

async fn find_miner(Query(q): Query<PageQuery>) -> Result<Redirect, PageError> {
    let address = q.address.unwrap_or_default();
    let address = address.trim();
    if address.is_empty() || address.len() > 128 {
        return Err(PageError(
            StatusCode::BAD_REQUEST,
            "Enter a payout address.".into(),
        ));
    }
    Ok(Redirect::to(&format!(
        "/miners/{}",
        format::path_segment(address)
    )))
}

/// One row of a miner's workers table: the last 10 minutes joined with the stored totals.
struct WorkerRow {
    worker: String,
    hashrate: f64,
    online: bool,
    summary: Option<quarry_ledger::history::WorkerSummary>,
}

async fn miner(
    State(state): Shared,
    Path(address): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Html<String>, PageError> {
    if address.is_empty() || address.len() > 128 {
        return Err(PageError(
            StatusCode::BAD_REQUEST,
            "That is not an address.".into(),
        ));
    }
    let chain = page_chain(&state, &q)?;
    let window = page_window(&q)?;
    let now = unix_ms() as i64;
    let recent: Vec<_> = state
        .store
        .worker_stats(now - WINDOW_MS)
        .await?
        .into_iter()
        .filter(|w| w.chain == chain && w.address == address)
        .collect();
    let summaries = state.store.worker_summaries(&chain, &address).await?;
    let mut rows: BTreeMap<String, WorkerRow> = BTreeMap::new();
    for s in summaries {
        rows.insert(
            s.worker.clone(),
            WorkerRow {
                worker: s.worker.clone(),
                hashrate: 0.0,
                online: false,
                summary: Some(s),
            },
        );
    }
    for w in &recent {
        let row = rows.entry(w.worker.clone()).or_insert(WorkerRow {
            worker: w.worker.clone(),
            hashrate: 0.0,
            online: false,
            summary: None,
        });
        row.hashrate = w.difficulty * HASHES_PER_DIFF1 / (WINDOW_MS as f64 / 1000.0);
        row.online = true;
    }
    let balances: Vec<_> = state
        .store
        .balances()
        .await?
        .into_iter()
        .filter(|b| b.address == address)
        .collect();
    let payouts = state.store.payouts_to(&address, 20).await?;
    let (found, found_count) = api::blocks_with_effort(&state, None, Some(&address), 20).await?;
    if rows.is_empty() && balances.is_empty() && payouts.is_empty() && found.is_empty() {
        return Err(PageError(
            StatusCode::NOT_FOUND,
            format!("No shares, balance or payouts are known for {address}."),
        ));
    }
    let payable = state.store.payable(&chain).await?.get(&address).copied();
    let destination = match chain == Chain::BITCOIN {
        true => state
            .store
            .payout_destination(&address)
            .await?
            .filter(|d| d.method == "bolt12"),
        false => None,
    };
    // Payouts in the coinbase: what the block the pool is mining now pays this address.
    let next_coinbase = match (&state.coinbase, chain == Chain::BITCOIN) {
        (Some(coinbase), true) => coinbase
            .view
            .borrow()
            .as_ref()
            .and_then(|t| t.entries.iter().find(|e| e.address == address).cloned()),
        _ => None,
    };
    let rate: f64 = rows.values().map(|r| r.hashrate).sum();
    let online = rows.values().filter(|r| r.online).count();
    let best = rows
        .values()
        .filter_map(|r| r.summary.as_ref())
        .map(|s| s.best_difficulty)
        .fold(0.0_f64, f64::max);
    let (from, to, buckets) =
        api::series(&state.store, &chain, Scope::Miner(&address), window).await?;
    let base = format!("/miners/{}", format::path_segment(&address));
    let chain_query = if chain == state.chains()[0] {
        String::new()
    } else {
        format!("&chain={chain}")
    };
    Ok(layout(
        &format!("Miner {}", short_hash(&address)),
        "",
        Some(&address),
        html! {
            h1 { "Miner " span.mono.wrap { (address) } }
            (chain_tabs(&state, &chain, &base))
            dl.stats {
                (stat("Hashrate (10 min)", &format::hashrate(rate), "miner-hashrate", Some(rate)))
                (stat("Workers online", &format!("{online} of {}", rows.len()), "miner-workers", Some(online as f64)))
                (stat("Best share", &format::difficulty(best), "miner-best", Some(best)))
                (stat("Blocks found", &found_count.to_string(), "miner-blocks", Some(found_count as f64)))
            }
            section aria-labelledby="hashrate" {
                h2 #hashrate { "Hashrate" }
                (window_links(&base, window, &chain_query))
                (chart::hashrate("Miner hashrate", &chart_points(&buckets, window), from, to))
            }
            section aria-labelledby="workers" {
                h2 #workers { "Workers" }
                div.scroll tabindex="0" role="region" aria-label="Worker table" {
                    table data-testid="workers" {
                        thead { tr {
                            th scope="col" { "Worker" }
                            th scope="col" { "Hashrate" }
                            th scope="col" { "Difficulty" }
                            th scope="col" { "Best share" }
                            th scope="col" { "Best this round" }
                            th scope="col" { "Last share" }
                            th scope="col" { "Rejected" }
                        } }
                        tbody {
                            @for r in rows.values() {
                                @let s = r.summary.as_ref();
                                tr data-worker=(r.worker) {
                                    td {
                                        span class=(if r.online { "dot on" } else { "dot off" }) aria-hidden="true" {}
                                        span.visually-hidden { (if r.online { "online: " } else { "offline: " }) }
                                        (r.worker.split_once('.').map_or("(default)", |(_, w)| w))
                                    }
                                    td.num { (format::hashrate(r.hashrate)) }
                                    td.num { (format::difficulty(s.map_or(0.0, |s| s.last_difficulty))) }
                                    td.num data-testid="best-share" data-value=(s.map_or(0.0, |s| s.best_difficulty)) {
                                        (format::difficulty(s.map_or(0.0, |s| s.best_difficulty)))
                                    }
                                    td.num { (format::difficulty(s.map_or(0.0, |s| s.round_best_difficulty))) }
                                    td { (time(now, s.map_or(0, |s| s.last_share_ms))) }
                                    td.num title=(s.map(|s| s.rejects.iter().map(|(r, n)| format!("{r}: {n}")).collect::<Vec<_>>().join(", ")).unwrap_or_default()) {
                                        (s.map_or(0, |s| s.rejected))
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="balance" {
                h2 #balance { "Balance" }
                @if let Some(d) = &destination {
                    p data-testid="payout-destination" {
                        "Paid over Lightning (within the pool's Lightning limits) to the BOLT12 offer "
                        span.mono title=(d.destination) { (short_hash(&d.destination)) }
                        ", registered "
                        (if d.source == "signed" { "with a signed request" } else { "by its first authorize password" })
                        " " (time(now, d.updated_ms)) "."
                    }
                }
                @if let Some(next) = &next_coinbase {
                    p data-testid="next-coinbase" {
                        @if next.output_sat > 0 {
                            "The block the pool is mining pays this address "
                            strong { (format::coins(i64::try_from(next.output_sat).unwrap_or(i64::MAX))) }
                            " in its coinbase"
                            @if next.carried_sat > 0 {
                                " (" (format::coins(i64::try_from(next.carried_sat).unwrap_or(i64::MAX))) " of it from the balance)"
                            }
                            "."
                        } @else {
                            "The block the pool is mining credits this address "
                            strong { (format::coins(i64::try_from(next.earned_sat.saturating_add(next.fee_sat)).unwrap_or(i64::MAX))) }
                            ", carried as a balance into a later coinbase (below the smallest output, or past the output cap)."
                        }
                    }
                }
                @if state.coinbase.is_some() {
                    @if let Some(owed) = payable {
                        p { "Carried into a later coinbase: " (format::coins(owed.to_db())) "." }
                    }
                }
                @if balances.is_empty() && payable.is_none() {
                    p.muted {
                        @if state.connect.mode == "solo" { "Solo mode: each block pays its finder in the coinbase." }
                        @else { "Nothing credited yet." }
                    }
                } @else {
                    div.scroll tabindex="0" role="region" aria-label="Balance table" {
                        table {
                            thead { tr { th scope="col" { "Chain" } th scope="col" { "Immature" } th scope="col" { "Mature" } } }
                            tbody {
                                @for b in &balances {
                                    tr {
                                        td { (b.chain) }
                                        td.num { (format::coins(b.immature_msat / 1000)) }
                                        td.num { (format::coins(b.mature_msat / 1000)) }
                                    }
                                }
                            }
                        }
                    }
                }
                h3 { "Payouts" }
                @if payouts.is_empty() {
                    p.muted { "No payouts yet." }
                } @else {
                    div.scroll tabindex="0" role="region" aria-label="Payout table" {
                        table {
                            thead { tr { th scope="col" { "Chain" } th scope="col" { "Method" } th scope="col" { "Amount" } th scope="col" { "Status" } th scope="col" { "Transaction or payment" } th scope="col" { "When" } } }
                            tbody {
                                @for (p, _) in &payouts {
                                    tr {
                                        td { (p.chain) }
                                        td { (if p.method == "lightning" { "Lightning" } else { "on chain" }) }
                                        td.num { (format::coins(p.total_sat)) }
                                        td { (p.status) }
                                        td.mono { (p.txid.as_deref().map_or("–".into(), short_hash)) }
                                        td { (time(now, p.sent_ms.unwrap_or(p.created_ms))) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="found" {
                h2 #found { "Blocks this address found" @if found_count > found.len() { span.muted { " (the newest " (found.len()) ")" } } }
                (blocks_table(now, &found, true, "miner-blocks-table"))
            }
        },
    ))
}

async fn blocks(State(state): Shared) -> Result<Html<String>, PageError> {
    let now = unix_ms() as i64;
    let (views, _) = api::blocks_with_effort(&state, None, None, 200).await?;
    Ok(layout(
        "Blocks",
        "/blocks",
        None,
        html! {
            h1 { "Blocks" }
            p.muted { "Effort: the round's accepted difficulty over the block's network difficulty (100 % is par)." }
            (blocks_table(now, &views, true, "blocks"))
        },
    ))
}

async fn payments(State(state): Shared) -> Result<Html<String>, PageError> {
    let now = unix_ms() as i64;
    let payouts = state.store.payouts(200).await?;
    Ok(layout(
        "Payments",
        "/payments",
        None,
        html! {
            h1 { "Payments" }
            @if payouts.is_empty() {
                p.muted { "No payouts yet." }
            } @else {
                div.scroll tabindex="0" role="region" aria-label="Payment table" {
                    table data-testid="payments" {
                        thead { tr {
                            th scope="col" { "Chain" }
                            th scope="col" { "Method" }
                            th scope="col" { "Total" }
                            th scope="col" { "Recipients" }
                            th scope="col" { "Status" }
                            th scope="col" { "Transaction" }
                            th scope="col" { "When" }
                        } }
                        tbody {
                            @for p in &payouts {
                                tr {
                                    td { (p.chain) }
                                    td { (if p.method == "lightning" { "Lightning" } else { "on chain" }) }
                                    td.num { (format::coins(p.total_sat)) }
                                    td.num { (p.recipients) }
                                    td { (p.status) @if let Some(e) = &p.error { " · " span.muted { (e) } } }
                                    td.mono { (p.txid.as_deref().map_or("–".into(), short_hash)) }
                                    td { (time(now, p.sent_ms.unwrap_or(p.created_ms))) }
                                }
                            }
                        }
                    }
                }
            }
        },
    ))
}

/// The dashboard URL for a listen address, for the start-up line.
pub fn url(listen: SocketAddr) -> String {
    let host = match listen.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}/", listen.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_shorten_by_characters_not_bytes() {
        assert_eq!(
            short_hash("0123456789abcdefghijklmnop"),
            "0123456789…ijklmnop"
        );
        assert_eq!(short_hash("bc1q"), "bc1q");
        // A miner page's address comes from the URL: multi-byte text must not panic.
        assert_eq!(
            short_hash(&"é".repeat(30)),
            format!("{}…{}", "é".repeat(10), "é".repeat(8))
        );
    }
}
