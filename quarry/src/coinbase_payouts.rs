//! Payouts in the coinbase (`scheme = "coinbase-pplns"`) at runtime: the PPLNS window read from
//! the share log, a payout table for each template, and the work stream that carries it to every
//! job.
//!
//! Jobs are rebuilt on new work, and between templates only when the window's split moved by more
//! than `coinbase_rebuild_tolerance` or the balances due changed: not on every share.
//!
//! Balances paid in a coinbase are reserved when its block is recorded. A block found and not yet
//! recorded holds the balances its table paid: until it is, tables pay no balances, so no balance
//! is committed to two coinbases. With several frontends on one PostgreSQL, only the one holding
//! an advisory lock pays balances (the others pay what their window earns, and carry the rest).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bitcoin::{Address, Network, ScriptBuf};
use quarry_ledger::coinbase::{
    plan, CoinbaseLimits, CoinbaseTable, OutputCost, Window, WindowSnapshot, MAX_WINDOW_SHARES,
};
use quarry_ledger::schemes::FeePolicy;
use quarry_ledger::{Chain, Sat, Store, StoreError};
use quarry_work::coinbase::{
    coinbase_weight, output_weight, write_compact_size, CoinbaseLayout, CoinbaseParts,
    CoinbaseSpec, CommittedPayouts, TxOutput,
};
use quarry_work::template::WorkTemplate;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Bitcoin Core's block assembler leaves this much sigop cost for the coinbase (not configurable).
const COINBASE_SIGOPS: u64 = 400;
/// Header weight: 80 bytes, all non-witness.
const HEADER_WEIGHT: u64 = 320;
/// Shares read from the log per query.
const READ_BATCH: i64 = 50_000;
/// A share younger than this may still be committing with a lower id (several frontends).
const SETTLE_MS: i64 = 2_000;
/// Balances due are read at least this often (and after every recorded block).
const CARRIED_REFRESH: Duration = Duration::from_secs(10);

/// Blocks found on a table, and blocks recorded: while they differ a block's reserved balances
/// are not in the database yet, and no table pays balances.
#[derive(Debug, Default)]
pub struct BlockEpochs {
    /// Incremented before a block on a table is recorded.
    pub found: AtomicU64,
    /// Incremented once it is (or its recording failed for good).
    pub recorded: AtomicU64,
}

/// Settings of `coinbase-pplns`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// PPLNS window in multiples of the network difficulty.
    pub n: f64,
    /// Pool fee and revenue split.
    pub policy: FeePolicy,
    /// Smallest output, satoshis.
    pub min_output_sat: u64,
    /// Payout outputs at most.
    pub max_outputs: usize,
    /// The node's `-blockreservedweight`: header, transaction count and coinbase fit in it.
    pub reserved_weight: u64,
    /// Rebuild jobs when the split moved by more than this (0..1).
    pub tolerance: f64,
    /// How often the share log is read.
    pub refresh: Duration,
    /// The pool's own output (the remainder).
    pub pool_script: Vec<u8>,
    /// The pool's address.
    pub pool_address: String,
    /// Addresses are checked against it.
    pub network: Network,
    /// The coinbase layout (its size counts against the weight).
    pub layout: CoinbaseLayout,
}

/// The table in force, for the API.
pub type View = watch::Receiver<Option<Arc<CoinbaseTable>>>;

/// The runtime of `coinbase-pplns`.
pub struct CoinbasePayouts {
    store: Store,
    settings: Settings,
    /// Shared with the block keeper.
    pub epochs: Arc<BlockEpochs>,
    view: watch::Sender<Option<Arc<CoinbaseTable>>>,
}

/// The stage's memory between templates.
struct State {
    window: Window,
    /// The last snapshot, and the newest share and window size it was taken at: it is only
    /// taken again when either changed.
    snapshot: Option<(Option<i64>, u64, WindowSnapshot)>,
    loaded: bool,
    /// The newest template, as it came in.
    template: Option<Arc<WorkTemplate>>,
    /// The split the current jobs pay.
    basis: Option<WindowSnapshot>,
    /// Balances due, as last read.
    carried: BTreeMap<String, Sat>,
    /// Held by the one frontend that pays balances (always, on SQLite).
    balances_lock: Option<quarry_ledger::store::PayoutLock>,
    /// When the balances were last read, and at which `found` epoch.
    carried_read: Option<(u64, std::time::Instant)>,
    /// The balances the current jobs pay.
    carried_in_force: BTreeMap<String, Sat>,
    scripts: HashMap<String, Option<ScriptBuf>>,
    next_template_id: u64,
    next_table_id: u64,
}

impl State {
    /// The window of `difficulty` as it stands.
    fn snapshot(&mut self, difficulty: f64) -> WindowSnapshot {
        let key = (self.window.last_id(), difficulty.to_bits());
        match &self.snapshot {
            Some((last, bits, snapshot)) if (*last, *bits) == key => snapshot.clone(),
            _ => {
                let snapshot = self.window.snapshot(difficulty);
                self.snapshot = Some((key.0, key.1, snapshot.clone()));
                snapshot
            }
        }
    }
}

impl CoinbasePayouts {
    /// The runtime over `store`.
    pub fn new(store: Store, settings: Settings) -> (Arc<CoinbasePayouts>, View) {
        let (view, receiver) = watch::channel(None);
        let payouts = Arc::new(CoinbasePayouts {
            store,
            settings,
            epochs: Arc::new(BlockEpochs::default()),
            view,
        });
        (payouts, receiver)
    }

    /// Follows `templates` and returns the work sessions follow: each template with its payout
    /// table, and the same work again under a new id when the table in force changes.
    pub fn run(
        self: &Arc<Self>,
        mut templates: watch::Receiver<Option<Arc<WorkTemplate>>>,
    ) -> watch::Receiver<Option<Arc<WorkTemplate>>> {
        let (publish, work) = watch::channel(None);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut state = State {
                window: Window::new(),
                snapshot: None,
                loaded: false,
                template: None,
                basis: None,
                carried: BTreeMap::new(),
                carried_read: None,
                balances_lock: None,
                carried_in_force: BTreeMap::new(),
                scripts: HashMap::new(),
                next_template_id: 1,
                next_table_id: 1,
            };
            let mut tick = tokio::time::interval(this.settings.refresh);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let fresh_template = tokio::select! {
                    changed = templates.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        state.template = templates.borrow_and_update().clone();
                        true
                    }
                    _ = tick.tick() => false,
                };
                // New work goes out at once, on the window as it stands: the share log is read
                // on the ticks, never between a new block and its jobs.
                if !fresh_template {
                    if let Err(e) = this.refresh(&mut state).await {
                        warn!(error = %e, "coinbase payouts: reading the share log failed; the table in force stays");
                    }
                }
                let Some(template) = state.template.clone() else {
                    continue;
                };
                let snapshot = state.snapshot(this.window_difficulty(&template));
                let carried = this.usable_carried(&state);
                let moved = match &state.basis {
                    None => true,
                    Some(basis) => {
                        snapshot.distance(basis) > this.settings.tolerance
                            || carried != state.carried_in_force
                    }
                };
                if !fresh_template && !moved {
                    continue;
                }
                state.basis = Some(snapshot);
                state.carried_in_force = carried;
                let combined = this.with_table(&mut state, &template);
                let _ = publish.send(Some(Arc::new(combined)));
            }
        });
        work
    }

    /// `n` × the template's network difficulty.
    fn window_difficulty(&self, template: &WorkTemplate) -> f64 {
        self.settings.n * template.network_target.difficulty()
    }

    /// The balances a table may pay now: none while a found block is not recorded, or when
    /// they were read before the last block was.
    fn usable_carried(&self, state: &State) -> BTreeMap<String, Sat> {
        let found = self.epochs.found.load(Ordering::SeqCst);
        let recorded = self.epochs.recorded.load(Ordering::SeqCst);
        match state.carried_read {
            Some((epoch, _)) if epoch == found && found == recorded => state.carried.clone(),
            _ => BTreeMap::new(),
        }
    }

    /// New shares into the window; the balances due.
    async fn refresh(&self, state: &mut State) -> Result<(), StoreError> {
        let chain = Chain::BITCOIN;
        let difficulty = state
            .template
            .as_ref()
            .map_or(0.0, |t| self.window_difficulty(t));
        if !state.loaded || state.window.needs_reload(difficulty) {
            state.window = self.load_window(&chain, difficulty).await?;
            state.snapshot = None;
            state.loaded = true;
        }
        // SQLite has one writer, whose ids follow its commits: nothing is in flight behind them.
        let settled = match self.store.backend() {
            quarry_ledger::Backend::Sqlite => i64::MAX,
            quarry_ledger::Backend::Postgres => {
                i64::try_from(crate::driver::unix_ms()).unwrap_or(i64::MAX) - SETTLE_MS
            }
        };
        loop {
            let after = state.window.last_id().unwrap_or(0);
            let shares = self
                .store
                .window_shares_after(&chain, after, settled, READ_BATCH)
                .await?;
            let full = shares.len() as i64 >= READ_BATCH;
            for share in shares {
                state.window.push(share);
            }
            if !full {
                break;
            }
        }
        // Room for the difficulty to double before the log must be read again.
        state.window.trim(2.0 * difficulty);
        // With several frontends on one PostgreSQL, one pays balances: the one holding the lock.
        if state.balances_lock.is_none() {
            state.balances_lock = self.store.try_coinbase_balances_lock().await?;
            if state.balances_lock.is_some() {
                info!("coinbase payouts: this instance pays carried balances");
            }
        }
        let found = self.epochs.found.load(Ordering::SeqCst);
        // Balances change when a block is recorded, matures or leaves the chain: read them
        // after each recorded block, and otherwise now and then (the query scans every credit,
        // on the connection the share log commits through).
        let stale = state
            .carried_read
            .is_none_or(|(epoch, at)| epoch != found || at.elapsed() >= CARRIED_REFRESH);
        if stale
            && state.balances_lock.is_some()
            && found == self.epochs.recorded.load(Ordering::SeqCst)
        {
            let carried = self.store.payable(&chain).await?;
            // A block found while reading: the balances it reserved may be missing.
            let after = self.epochs.found.load(Ordering::SeqCst);
            if after == found && after == self.epochs.recorded.load(Ordering::SeqCst) {
                state.carried = carried;
                state.carried_read = Some((found, std::time::Instant::now()));
            }
        }
        Ok(())
    }

    /// The newest shares filling `difficulty` twice over, from the share log.
    async fn load_window(&self, chain: &Chain, difficulty: f64) -> Result<Window, StoreError> {
        let mut newest_first = Vec::new();
        let mut held = 0.0;
        let mut until = i64::MAX;
        while held < 2.0 * difficulty && newest_first.len() < MAX_WINDOW_SHARES {
            let batch = self
                .store
                .published_shares(chain, until, READ_BATCH)
                .await?;
            let Some(last) = batch.last() else { break };
            until = last.id - 1;
            let full = batch.len() as i64 >= READ_BATCH;
            for share in batch {
                held += share.difficulty.max(0.0);
                newest_first.push(share.window_share());
            }
            if !full {
                break;
            }
        }
        let mut window = Window::new();
        let count = newest_first.len();
        for share in newest_first.into_iter().rev() {
            window.push(share);
        }
        info!(
            shares = count,
            "coinbase payouts: PPLNS window read from the share log"
        );
        Ok(window)
    }

    /// `template` under a new id with the table of the window in force.
    fn with_table(&self, state: &mut State, template: &WorkTemplate) -> WorkTemplate {
        let mut combined = template.clone();
        combined.id = state.next_template_id;
        state.next_template_id += 1;
        combined.payouts = None;
        let Some(basis) = &state.basis else {
            return combined;
        };
        let Some((base_weight, base_sigops)) = self.base_cost(template) else {
            return combined;
        };
        // The transaction count's CompactSize grows past 252 transactions.
        let mut count = Vec::new();
        write_compact_size(template.tx_count as u64 + 1, &mut count);
        let output_count_growth = match self.settings.max_outputs + 3 >= 253 {
            true => 8,
            false => 0,
        };
        let limits = CoinbaseLimits {
            min_output_sat: self.settings.min_output_sat,
            max_outputs: self.settings.max_outputs,
            weight_budget: self
                .settings
                .reserved_weight
                .saturating_sub(HEADER_WEIGHT + 4 * count.len() as u64)
                .saturating_sub(base_weight + output_count_growth),
            sigops_budget: COINBASE_SIGOPS.saturating_sub(base_sigops),
        };
        let network = self.settings.network;
        let scripts = &mut state.scripts;
        let mut script_of = |address: &str| -> Option<ScriptBuf> {
            if scripts.len() > 100_000 {
                scripts.clear();
            }
            scripts
                .entry(address.to_string())
                .or_insert_with(|| {
                    Address::from_str(address)
                        .ok()
                        .and_then(|a| a.require_network(network).ok())
                        .map(|a| a.script_pubkey())
                })
                .clone()
        };
        let id = state.next_table_id;
        state.next_table_id += 1;
        let table = plan(
            id,
            Sat(template.coinbase_value),
            basis,
            &state.carried_in_force,
            &self.settings.policy,
            &limits,
            |address| {
                script_of(address).map(|script| OutputCost {
                    weight: output_weight(script.len()),
                    sigops: 4 * script.count_sigops_legacy() as u64,
                })
            },
        );
        let _ = self.view.send(Some(Arc::new(table.clone())));
        if table.is_empty() {
            return combined;
        }
        let outputs: Vec<TxOutput> = table
            .outputs()
            .filter_map(|(address, sat)| {
                script_of(address).map(|script| TxOutput::new(sat, script.into_bytes()))
            })
            .collect();
        let record = match serde_json::to_string(&table) {
            Ok(record) => record,
            Err(e) => {
                warn!(error = %e, "coinbase payouts: the table does not encode; paying the pool alone");
                return combined;
            }
        };
        debug!(
            table = id,
            outputs = outputs.len(),
            entries = table.entries.len(),
            window_shares = table.window_shares,
            "coinbase payout table"
        );
        combined.payouts = Some(Arc::new(CommittedPayouts {
            id,
            outputs,
            record,
        }));
        combined
    }

    /// Weight and sigops of the coinbase before payout outputs (the pool's output, merged
    /// mining's outputs and commitments, the witness commitment).
    fn base_cost(&self, template: &WorkTemplate) -> Option<(u64, u64)> {
        let mut spec = CoinbaseSpec::single(
            self.settings.layout.clone(),
            self.settings.pool_script.clone(),
        );
        if let Some(merged) = &template.merged {
            spec.commitments = merged.commitments();
            spec.extra_outputs = merged.extra_outputs();
        }
        let parts = match CoinbaseParts::from_spec(template, &spec) {
            Ok(parts) => parts,
            Err(e) => {
                warn!(error = %e, "coinbase payouts: the coinbase does not build");
                return None;
            }
        };
        let sigops: u64 = spec
            .extra_outputs
            .iter()
            .map(|o| &o.script_pubkey)
            .chain(std::iter::once(&spec.payouts.remainder_script))
            .chain(template.witness_commitment.iter())
            .map(|s| 4 * bitcoin::Script::from_bytes(s).count_sigops_legacy() as u64)
            .sum();
        Some((
            coinbase_weight(&parts, self.settings.layout.extranonce_len()),
            sigops,
        ))
    }

    /// The pool's address and network, for the API.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}
