//! Job Declaration, pool side (sv2-spec §6, the "JDS"): a miner declares the block it wants to
//! mine (its coinbase and its transactions), the pool checks it pays the pool and is a valid
//! block on the current tip, and hands back a token the miner names in `SetCustomMiningJob` on
//! its mining connection. Shares on that job then go through the same `validate_share` and
//! ledger as every other share, and a block found on it is built from the declared
//! transactions.
//!
//! Sans-IO like the rest: [`JdSession`] takes the Job Declaration messages of one connection
//! and answers with messages and [`Event`]s. The one check it cannot make alone, whether the
//! declared block is valid (its transactions, the coinbase value, the tip), is asked of the
//! node as an [`Event::CheckDeclaredBlock`] (Bitcoin Core's `getblocktemplate` proposal mode)
//! and answered through [`JdSession::handle_verdict`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bitcoin::consensus::{deserialize, serialize};
use bitcoin::{Transaction, TxOut};
use quarry_work::coinbase::{write_compact_size, CoinbaseParts};
use quarry_work::hash::{sha256d_80, Hash32};
use quarry_work::job::{header_bytes, Job};
use quarry_work::merkle;
use quarry_work::template::WorkTemplate;
use quarry_work::Target;

use super::message::Message;
use crate::clock::Now;
use crate::event::{Event, FoundBlock};
use crate::pool::{Pool, PoolMode};
use crate::worker::Worker;

/// Job Declaration settings.
#[derive(Debug, Clone)]
pub struct JdConfig {
    /// How long an allocated token may wait for its declaration.
    pub allocated_token_ms: u64,
    /// How long a declared job's token may wait for its `SetCustomMiningJob`.
    pub declared_token_ms: u64,
    /// Largest frame a Job Declaration connection may send: `ProvideMissingTransactions.Success`
    /// carries whole transactions, up to a block's worth.
    pub max_frame: usize,
    /// Most transactions one declaration may list.
    pub max_transactions: usize,
    /// Tokens one connection may hold unused.
    pub max_tokens_per_connection: usize,
    /// Take coinbase-only declarers (no DECLARE_TX_DATA): their custom jobs are checked for
    /// the tip, the bits, the BIP34 height and the outputs, but the pool never sees their
    /// transactions, so it cannot check or build their blocks: the miner's node publishes them.
    pub coinbase_only: bool,
    /// The first token handed out; `None`: a random one, so that a restarted pool never takes
    /// an old token for a new one. Fixed only where runs must repeat (fuzzing).
    pub first_token: Option<u64>,
}

impl Default for JdConfig {
    fn default() -> Self {
        JdConfig {
            allocated_token_ms: 10 * 60 * 1000,
            declared_token_ms: 60 * 1000,
            // A block's 4 MB of transactions and the framing around them.
            max_frame: 4 * 1024 * 1024 + 64 * 1024,
            // A full block of the smallest transactions (~60 vbytes) is under 20,000.
            max_transactions: 20_000,
            max_tokens_per_connection: 64,
            coinbase_only: false,
            first_token: None,
        }
    }
}

/// A transaction the pool knows (from its own templates) or was given.
#[derive(Debug, Clone)]
struct KnownTx {
    txid: Hash32,
    raw: Arc<[u8]>,
}

/// The coinbase a miner declared, taken apart where `SetCustomMiningJob` must match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredCoinbase {
    /// Transaction version.
    pub tx_version: u32,
    /// The scriptSig before the extranonce (`SetCustomMiningJob.coinbase_prefix`).
    pub script_prefix: Vec<u8>,
    /// Bytes of extranonce at the end of the scriptSig.
    pub extranonce_len: usize,
    /// The input's nSequence.
    pub sequence: u32,
    /// The outputs, serialized with their count (`SetCustomMiningJob.coinbase_tx_outputs`).
    pub outputs: Vec<u8>,
    /// nLockTime.
    pub locktime: u32,
    /// Whether it carries the witness reserved value (the block has a witness commitment).
    pub segwit: bool,
    /// Satoshis paid in all.
    pub value: u64,
}

/// Why a declared coinbase was refused: the spec's error code, and details for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// `DeclareMiningJob.Error` / `SetCustomMiningJob.Error` code.
    pub code: &'static str,
    /// What exactly was wrong.
    pub details: String,
}

fn refused(code: &'static str, details: impl Into<String>) -> Refused {
    Refused {
        code,
        details: details.into(),
    }
}

/// Offset of the scriptSig length in a coinbase serialized with witness: version, marker and
/// flag, input count, null outpoint.
const SCRIPT_LEN_AT_SEGWIT: usize = 4 + 2 + 1 + 36;
/// The same without witness.
const SCRIPT_LEN_AT_LEGACY: usize = 4 + 1 + 36;
/// Longest extranonce a coinbase may carry (`SubmitSharesExtended.extranonce` is a B032).
pub const MAX_EXTRANONCE: usize = 32;

/// The BIP34 height a coinbase scriptSig starts with, if it starts with a number.
pub fn bip34_height(script_sig: &[u8]) -> Option<u64> {
    let script = bitcoin::Script::from_bytes(script_sig);
    let first = script.instructions().next()?.ok()?;
    u64::try_from(first.script_num()?).ok()
}

impl DeclaredCoinbase {
    /// The BIP34 height its scriptSig starts with.
    pub fn bip34_height(&self) -> Option<u64> {
        bip34_height(&self.script_prefix)
    }

    /// Takes apart `prefix ‖ extranonce ‖ suffix` as `DeclareMiningJob` carries it, with a
    /// zero extranonce (whose length the scriptSig length implies). Returns it and the whole
    /// coinbase as declared.
    ///
    /// # Errors
    /// `invalid-coinbase-tx` for bytes that are not a transaction, `invalid-coinbase-tx-input`
    /// for one that is not a coinbase.
    pub fn parse(prefix: &[u8], suffix: &[u8]) -> Result<(Self, Vec<u8>), Refused> {
        let segwit_marker = prefix.get(4..6) == Some(&[0x00, 0x01][..]);
        let at = match segwit_marker {
            true => SCRIPT_LEN_AT_SEGWIT,
            false => SCRIPT_LEN_AT_LEGACY,
        };
        let script_len = *prefix
            .get(at)
            .ok_or_else(|| refused("invalid-coinbase-tx", "prefix ends before the scriptSig"))?;
        // A coinbase scriptSig is 2 to 100 bytes: its length is always one byte.
        if !(2..=100).contains(&script_len) {
            return Err(refused(
                "invalid-coinbase-tx",
                format!("scriptSig of {script_len} bytes"),
            ));
        }
        let in_prefix = prefix.len() - at - 1;
        let extranonce_len = usize::from(script_len)
            .checked_sub(in_prefix)
            .filter(|n| *n <= MAX_EXTRANONCE)
            .ok_or_else(|| {
                refused(
                    "invalid-coinbase-tx",
                    "prefix and scriptSig length leave no room for an extranonce",
                )
            })?;
        let mut bytes = Vec::with_capacity(prefix.len() + extranonce_len + suffix.len());
        bytes.extend_from_slice(prefix);
        bytes.resize(prefix.len() + extranonce_len, 0);
        bytes.extend_from_slice(suffix);
        let tx: Transaction = deserialize(&bytes)
            .map_err(|e| refused("invalid-coinbase-tx", format!("not a transaction: {e}")))?;
        let [input] = tx.input.as_slice() else {
            return Err(refused(
                "invalid-coinbase-tx-input",
                format!("{} inputs", tx.input.len()),
            ));
        };
        if !input.previous_output.is_null() {
            return Err(refused(
                "invalid-coinbase-tx-input",
                "the input spends an outpoint",
            ));
        }
        let script = input.script_sig.as_bytes();
        let value = tx
            .output
            .iter()
            .try_fold(0u64, |sum, out| sum.checked_add(out.value.to_sat()))
            .ok_or_else(|| refused("invalid-coinbase-tx", "outputs overflow"))?;
        let coinbase = DeclaredCoinbase {
            tx_version: tx.version.0 as u32,
            script_prefix: script[..script.len() - extranonce_len].to_vec(),
            extranonce_len,
            sequence: input.sequence.0,
            outputs: serialize(&tx.output),
            locktime: tx.lock_time.to_consensus_u32(),
            segwit: !input.witness.is_empty(),
            value,
        };
        Ok((coinbase, bytes))
    }

    /// Checks every satoshi goes to `required` (zero-value outputs, such as the witness
    /// commitment, may be anything).
    ///
    /// # Errors
    /// `invalid-coinbase-tx` naming what else is paid.
    pub fn pays_only(&self, required: &[u8]) -> Result<(), Refused> {
        let outputs: Vec<TxOut> = deserialize(&self.outputs)
            .map_err(|e| refused("invalid-coinbase-tx", format!("outputs: {e}")))?;
        if !outputs
            .iter()
            .any(|o| o.script_pubkey.as_bytes() == required && o.value.to_sat() > 0)
        {
            return Err(refused(
                "invalid-coinbase-tx",
                "the coinbase does not pay the pool's output",
            ));
        }
        if let Some(other) = outputs
            .iter()
            .find(|o| o.script_pubkey.as_bytes() != required && o.value.to_sat() > 0)
        {
            return Err(refused(
                "invalid-coinbase-tx",
                format!(
                    "the coinbase pays {} sat to a script the pool does not require",
                    other.value.to_sat()
                ),
            ));
        }
        Ok(())
    }

    /// The coinbase split around the extranonce, as jobs carry it (without witness).
    pub fn parts(&self) -> CoinbaseParts {
        let mut coinb1 = Vec::with_capacity(42 + self.script_prefix.len());
        coinb1.extend_from_slice(&self.tx_version.to_le_bytes());
        coinb1.push(1);
        coinb1.extend_from_slice(&[0; 32]);
        coinb1.extend_from_slice(&u32::MAX.to_le_bytes());
        write_compact_size(
            (self.script_prefix.len() + self.extranonce_len) as u64,
            &mut coinb1,
        );
        coinb1.extend_from_slice(&self.script_prefix);
        let mut coinb2 = Vec::with_capacity(8 + self.outputs.len());
        coinb2.extend_from_slice(&self.sequence.to_le_bytes());
        coinb2.extend_from_slice(&self.outputs);
        coinb2.extend_from_slice(&self.locktime.to_le_bytes());
        CoinbaseParts {
            coinb1,
            coinb2,
            segwit: self.segwit,
        }
    }
}

/// A job a miner declared and the pool accepted: what `SetCustomMiningJob` must match, and a
/// template carrying its transactions, from which its blocks are built.
#[derive(Debug)]
pub struct DeclaredJob {
    /// Who declared it.
    pub user: String,
    /// Their payout address, when the user names one.
    pub address: String,
    /// Block version.
    pub version: u32,
    /// The coinbase.
    pub coinbase: DeclaredCoinbase,
    /// The tip, bits, merkle branch and transactions of the declared block.
    pub template: Arc<WorkTemplate>,
}

impl DeclaredJob {
    /// Checks a `SetCustomMiningJob` against this declaration, field by field, with the spec's
    /// error codes.
    ///
    /// # Errors
    /// The first field that differs.
    pub fn matches(&self, custom: &CustomJob<'_>) -> Result<(), Refused> {
        let template = &self.template;
        if custom.prev_hash != template.prev_hash {
            return Err(refused(
                "stale-chain-tip",
                "prev_hash is not the declared tip",
            ));
        }
        if custom.nbits != template.bits {
            return Err(refused(
                "invalid-nbits",
                "nbits differ from the declared tip's",
            ));
        }
        if custom.version != self.version {
            return Err(refused(
                "invalid-version",
                "version differs from the declared",
            ));
        }
        let coinbase = &self.coinbase;
        if custom.coinbase_tx_version != coinbase.tx_version {
            return Err(refused(
                "invalid-coinbase-tx-version",
                "coinbase version differs",
            ));
        }
        if custom.coinbase_prefix != coinbase.script_prefix.as_slice() {
            return Err(refused(
                "invalid-coinbase-prefix",
                "coinbase scriptSig prefix differs from the declared",
            ));
        }
        if custom.coinbase_tx_input_n_sequence != coinbase.sequence {
            return Err(refused(
                "invalid-coinbase-tx-input-n-sequence",
                "coinbase nSequence differs",
            ));
        }
        if custom.coinbase_tx_outputs != coinbase.outputs.as_slice() {
            return Err(refused(
                "invalid-coinbase-tx-outputs",
                "coinbase outputs differ from the declared",
            ));
        }
        if custom.coinbase_tx_locktime != coinbase.locktime {
            return Err(refused(
                "invalid-coinbase-tx-locktime",
                "coinbase locktime differs",
            ));
        }
        if custom.merkle_path != template.merkle_branch.as_slice() {
            return Err(refused(
                "invalid-merkle-path",
                "merkle path differs from the declared transactions'",
            ));
        }
        Ok(())
    }

    /// The job shares on this declaration are checked against.
    pub fn job(&self, payout_script: Vec<u8>) -> Job {
        Job::from_parts(
            Arc::clone(&self.template),
            self.coinbase.parts(),
            payout_script,
        )
    }
}

/// What a custom job's token stands for.
#[derive(Debug)]
pub enum CustomToken {
    /// A declared job, checked by the node.
    Declared(Arc<DeclaredJob>),
    /// A coinbase-only token: the job is the miner's word, checked here as far as the pool can.
    CoinbaseOnly {
        /// The script every satoshi must go to.
        required_script: Vec<u8>,
        /// Who it was allocated to.
        user: String,
        /// Their address.
        address: String,
    },
}

/// The job a coinbase-only `SetCustomMiningJob` describes, on the pool's current `template`,
/// with `extranonce_len` bytes of extranonce (the channel's).
///
/// # Errors
/// The spec's code for the first thing wrong: the tip, the bits, the coinbase prefix (the
/// BIP34 height, the scriptSig size), or outputs that do not decode or pay elsewhere.
pub fn coinbase_only_job(
    custom: &CustomJob<'_>,
    template: &WorkTemplate,
    required_script: &[u8],
    extranonce_len: usize,
    user: (String, String),
) -> Result<DeclaredJob, Refused> {
    if custom.prev_hash != template.prev_hash {
        return Err(refused(
            "stale-chain-tip",
            "prev_hash is not the pool's tip",
        ));
    }
    if custom.nbits != template.bits {
        return Err(refused(
            "invalid-nbits",
            "nbits differ from the pool's template",
        ));
    }
    let height = bitcoin::script::Builder::new()
        .push_int(i64::try_from(template.height).unwrap_or(i64::MAX))
        .into_script();
    if !custom.coinbase_prefix.starts_with(height.as_bytes())
        || custom.coinbase_prefix.len() + extranonce_len > 100
    {
        return Err(refused(
            "invalid-coinbase-prefix",
            "the scriptSig must start with the BIP34 height and fit 100 bytes with the extranonce",
        ));
    }
    let outputs: Vec<TxOut> = deserialize(custom.coinbase_tx_outputs).map_err(|e| {
        refused(
            "invalid-coinbase-tx-outputs",
            format!("outputs do not decode: {e}"),
        )
    })?;
    let value = outputs
        .iter()
        .try_fold(0u64, |sum, out| sum.checked_add(out.value.to_sat()))
        .ok_or_else(|| refused("invalid-coinbase-tx-outputs", "outputs overflow"))?;
    let segwit = outputs.iter().any(|o| {
        o.script_pubkey
            .as_bytes()
            .starts_with(&[0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed])
    });
    let coinbase = DeclaredCoinbase {
        tx_version: custom.coinbase_tx_version,
        script_prefix: custom.coinbase_prefix.to_vec(),
        extranonce_len,
        sequence: custom.coinbase_tx_input_n_sequence,
        outputs: custom.coinbase_tx_outputs.to_vec(),
        locktime: custom.coinbase_tx_locktime,
        segwit,
        value,
    };
    coinbase
        .pays_only(required_script)
        .map_err(|e| refused("invalid-coinbase-tx-outputs", e.details))?;
    let template = WorkTemplate {
        id: template.id,
        height: template.height,
        version: custom.version,
        prev_hash: template.prev_hash,
        bits: template.bits,
        network_target: template.network_target,
        curtime: template.curtime,
        mintime: template.mintime,
        coinbase_value: value,
        coinbase_aux: Vec::new(),
        witness_commitment: None,
        // The miner's transactions, which the pool never sees: no block is built here.
        merkle_branch: custom.merkle_path.to_vec(),
        tx_count: 0,
        transactions: Vec::new(),
        fees: 0,
        longpoll_id: None,
        merged: None,
        payouts: None,
    };
    Ok(DeclaredJob {
        user: user.0,
        address: user.1,
        version: custom.version,
        coinbase,
        template: Arc::new(template),
    })
}

/// The fields of a `SetCustomMiningJob` a declaration is checked against (named as on the
/// wire).
#[derive(Debug)]
#[allow(missing_docs)]
pub struct CustomJob<'a> {
    pub version: u32,
    pub prev_hash: Hash32,
    pub nbits: u32,
    pub coinbase_tx_version: u32,
    pub coinbase_prefix: &'a [u8],
    pub coinbase_tx_input_n_sequence: u32,
    pub coinbase_tx_outputs: &'a [u8],
    pub coinbase_tx_locktime: u32,
    pub merkle_path: &'a [Hash32],
}

#[derive(Debug)]
struct Allocated {
    connection: u64,
    required_script: Vec<u8>,
    user: String,
    address: String,
    expires_ms: u64,
    /// Allocated on a coinbase-only connection: names a custom job directly, any number of
    /// times until it expires.
    coinbase_only: bool,
    /// A coinbase-only token has named a custom job: it no longer counts as unused.
    used: bool,
}

#[derive(Debug)]
struct Active {
    job: Arc<DeclaredJob>,
    expires_ms: u64,
}

#[derive(Debug, Default)]
struct State {
    next_token: u64,
    next_connection: u64,
    allocated: HashMap<u64, Allocated>,
    active: HashMap<u64, Active>,
    /// Transactions of the newest templates by wtxid: what a declaration may name without
    /// sending it. The previous template's set is kept, so a declaration made just before a
    /// new template still resolves.
    known: Arc<HashMap<Hash32, KnownTx>>,
    previous_known: Arc<HashMap<Hash32, KnownTx>>,
    known_template: Option<u64>,
}

/// The pool's Job Declaration state, shared by every connection: tokens, accepted
/// declarations and the transactions the pool already knows.
#[derive(Debug)]
pub struct Declarations {
    /// Settings.
    pub config: JdConfig,
    state: Mutex<State>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Single inserts and removals: a panic while held leaves nothing half-done.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Declarations {
    /// Empty, with tokens starting at a random point (a restarted pool never takes an old
    /// token for a new one).
    pub fn new(config: JdConfig) -> Self {
        let state = State {
            next_token: config
                .first_token
                .unwrap_or_else(|| rand::random::<u64>() >> 1),
            ..State::default()
        };
        Declarations {
            config,
            state: Mutex::new(state),
        }
    }

    /// Indexes a new template's transactions by wtxid.
    pub fn on_template(&self, template: &WorkTemplate) {
        let indexed = |state: &State| state.known_template >= Some(template.id);
        if indexed(&lock(&self.state)) {
            return;
        }
        let known = Arc::new(index_transactions(template));
        let mut state = lock(&self.state);
        // Connections index a template too (see `JdSession::handle_template`): whoever is
        // second keeps the first's index, and the one before it.
        if indexed(&state) {
            return;
        }
        state.previous_known = std::mem::replace(&mut state.known, known);
        state.known_template = Some(template.id);
    }

    /// A connection id for token ownership.
    fn connection_id(&self) -> u64 {
        let mut state = lock(&self.state);
        state.next_connection += 1;
        state.next_connection
    }

    fn allocate(&self, connection: u64, user: &Worker, coinbase_only: bool, now_ms: u64) -> u64 {
        let mut state = lock(&self.state);
        state.allocated.retain(|_, a| a.expires_ms > now_ms);
        state.active.retain(|_, a| a.expires_ms > now_ms);
        let token = state.next_token;
        state.next_token = state.next_token.wrapping_add(1);
        let expires_ms = now_ms.saturating_add(self.config.allocated_token_ms);
        state.allocated.insert(
            token,
            Allocated {
                connection,
                required_script: user.payout_script.clone(),
                user: user.name.clone(),
                address: user.address.clone(),
                expires_ms,
                coinbase_only,
                used: false,
            },
        );
        token
    }

    /// Which of `tokens` no longer count against a connection's unused tokens: gone (declared
    /// or expired), or coinbase-only and used in a custom job.
    fn spent(&self, tokens: &[u64]) -> Vec<u64> {
        let state = lock(&self.state);
        tokens
            .iter()
            .copied()
            .filter(|t| state.allocated.get(t).is_none_or(|a| a.used))
            .collect()
    }

    /// Takes an allocated token of `connection` (each is declared at most once).
    fn take_allocated(&self, connection: u64, token: u64, now_ms: u64) -> Option<Allocated> {
        let mut state = lock(&self.state);
        let owned = state
            .allocated
            .get(&token)
            .is_some_and(|a| a.connection == connection && a.expires_ms > now_ms);
        owned.then(|| state.allocated.remove(&token)).flatten()
    }

    fn activate(&self, job: Arc<DeclaredJob>, now_ms: u64) -> u64 {
        let mut state = lock(&self.state);
        let token = state.next_token;
        state.next_token = state.next_token.wrapping_add(1);
        let expires_ms = now_ms.saturating_add(self.config.declared_token_ms);
        state.active.insert(token, Active { job, expires_ms });
        token
    }

    /// What a `SetCustomMiningJob`'s token names: a declared job (each is used once), or a
    /// coinbase-only token (used until it expires).
    pub fn take_for_custom_job(&self, token: &[u8], now_ms: u64) -> Option<CustomToken> {
        let token = u64::from_le_bytes(token.try_into().ok()?);
        let mut state = lock(&self.state);
        if let Some(active) = state.active.remove(&token) {
            return (active.expires_ms > now_ms).then_some(CustomToken::Declared(active.job));
        }
        let allocated = state.allocated.get_mut(&token)?;
        if allocated.coinbase_only && allocated.expires_ms > now_ms {
            allocated.used = true;
        }
        (allocated.coinbase_only && allocated.expires_ms > now_ms).then(|| {
            CustomToken::CoinbaseOnly {
                required_script: allocated.required_script.clone(),
                user: allocated.user.clone(),
                address: allocated.address.clone(),
            }
        })
    }

    fn lookup(&self, wtxid: &Hash32) -> Option<KnownTx> {
        let state = lock(&self.state);
        state
            .known
            .get(wtxid)
            .or_else(|| state.previous_known.get(wtxid))
            .cloned()
    }

    /// Unused tokens held, declared jobs waiting for their `SetCustomMiningJob`.
    pub fn counts(&self) -> (usize, usize) {
        let state = lock(&self.state);
        (state.allocated.len(), state.active.len())
    }
}

/// A template's transaction: its wtxid, txid and bytes.
pub struct TemplateTx<'a> {
    /// Witness txid, internal byte order.
    pub wtxid: Hash32,
    /// Txid, internal byte order.
    pub txid: Hash32,
    /// As it goes into the block.
    pub raw: &'a [u8],
}

/// The template's transactions in block order (as many as parse: the node's, so all).
pub fn template_transactions(template: &WorkTemplate) -> Vec<TemplateTx<'_>> {
    let mut out = Vec::with_capacity(template.tx_count);
    let mut rest = template.transactions.as_slice();
    while !rest.is_empty() {
        let Ok((tx, used)) = bitcoin::consensus::deserialize_partial::<Transaction>(rest) else {
            break;
        };
        let (raw, tail) = rest.split_at(used);
        out.push(TemplateTx {
            wtxid: tx.compute_wtxid().to_raw_hash().to_byte_array(),
            txid: tx.compute_txid().to_raw_hash().to_byte_array(),
            raw,
        });
        rest = tail;
    }
    out
}

/// The template's transactions by wtxid.
fn index_transactions(template: &WorkTemplate) -> HashMap<Hash32, KnownTx> {
    template_transactions(template)
        .into_iter()
        .map(|tx| {
            (
                tx.wtxid,
                KnownTx {
                    txid: tx.txid,
                    raw: tx.raw.into(),
                },
            )
        })
        .collect()
}

use bitcoin::hashes::Hash as _;

/// A declaration waiting for missing transactions or for the node's verdict.
#[derive(Debug)]
struct Pending {
    request_id: u32,
    user: String,
    address: String,
    version: u32,
    coinbase: DeclaredCoinbase,
    /// The coinbase as declared (zero extranonce), for the proposal.
    coinbase_tx: Vec<u8>,
    wtxids: Vec<Hash32>,
    txs: Vec<Option<KnownTx>>,
    /// The template the declaration builds on: its tip, bits and height.
    base: Arc<WorkTemplate>,
    /// Built and sent to the node; waiting for [`JdSession::handle_verdict`].
    checking: Option<Arc<DeclaredJob>>,
}

/// A declaration checked as far as it can be without its tip.
#[derive(Debug)]
struct Parsed {
    request_id: u32,
    allocated: Allocated,
    version: u32,
    coinbase: DeclaredCoinbase,
    coinbase_tx: Vec<u8>,
    wtxids: Vec<Hash32>,
}

/// A declaration for the block after the pool's tip, waiting for the pool's node to get there.
#[derive(Debug)]
struct Early {
    parsed: Parsed,
    until_ms: u64,
}

/// How long a declaration or custom job for the block after the pool's tip waits for the
/// pool's template on that tip. Nodes a block apart usually meet within a second or two.
pub const EARLY_WAIT_MS: u64 = 10_000;

/// Declared jobs one connection keeps for `PushSolution`.
const RECENT_JOBS: usize = 16;
/// Declarations one connection may have in progress.
const MAX_PENDING: usize = 8;

/// The node's answer to an [`Event::CheckDeclaredBlock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A valid block (but for its proof of work) on the node's tip.
    Valid,
    /// Refused, with the node's reason (`bad-txns-inputs-missingorspent`,
    /// `inconclusive-not-best-prevblk`, ...).
    Invalid(String),
    /// No node could be asked.
    Unavailable(String),
}

/// One connection's Job Declaration, pool side.
#[derive(Debug)]
pub struct JdSession {
    connection: u64,
    /// Set up without DECLARE_TX_DATA: its tokens name custom jobs directly.
    coinbase_only: bool,
    /// Tokens allocated here and not yet declared, oldest first, with when each expires
    /// (monotonic ms).
    tokens: VecDeque<(u64, u64)>,
    pending: Vec<Pending>,
    /// Declarations for the block after the pool's tip, oldest first.
    early: Vec<Early>,
    recent: VecDeque<Arc<DeclaredJob>>,
}

impl JdSession {
    /// A session for a connection that set up the Job Declaration protocol (`coinbase_only`:
    /// without DECLARE_TX_DATA).
    pub fn new(declarations: &Declarations, coinbase_only: bool) -> Self {
        JdSession {
            connection: declarations.connection_id(),
            coinbase_only,
            tokens: VecDeque::new(),
            pending: Vec::new(),
            early: Vec::new(),
            recent: VecDeque::new(),
        }
    }

    /// One Job Declaration message. Answers go to `out`, events to `events`; an error closes
    /// the connection (a message no JDS takes).
    ///
    /// # Errors
    /// A message of another protocol, or a user that cannot be paid.
    #[allow(clippy::too_many_arguments)]
    pub fn handle(
        &mut self,
        message: Message,
        template: Option<&Arc<WorkTemplate>>,
        mode: &PoolMode,
        network: bitcoin::Network,
        declarations: &Declarations,
        pool: &dyn Pool,
        now: Now,
        out: &mut Vec<Message>,
        events: &mut VecDeque<Event>,
    ) -> Result<(), String> {
        match message {
            Message::AllocateMiningJobToken {
                user_identifier,
                request_id,
            } => {
                // Pool mode: every declared coinbase pays the pool. Solo: the miner's address.
                let user = match (mode, Worker::parse(&user_identifier, network)) {
                    (PoolMode::Pool { payout_script }, parsed) => Worker {
                        payout_script: payout_script.clone(),
                        ..parsed.unwrap_or_else(|_| Worker {
                            name: user_identifier.clone(),
                            address: String::new(),
                            payout_script: Vec::new(),
                            aux_payouts: Default::default(),
                        })
                    },
                    (PoolMode::Solo, Ok(worker)) => worker,
                    (PoolMode::Solo, Err(e)) => {
                        return Err(format!("user identifier {user_identifier:?}: {e}"))
                    }
                };
                let required = user.payout_script.clone();
                // Expired tokens no longer count: coinbase-only tokens are never declared, so
                // they leave only by expiring.
                self.tokens
                    .retain(|&(_, expires_ms)| expires_ms > now.mono_ms);
                // Coinbase-only tokens used in a custom job no longer count either: such a
                // JDC asks for one per job.
                if self.tokens.len() >= declarations.config.max_tokens_per_connection {
                    let held: Vec<u64> = self.tokens.iter().map(|&(t, _)| t).collect();
                    let spent = declarations.spent(&held);
                    self.tokens.retain(|(t, _)| !spent.contains(t));
                }
                if self.tokens.len() >= declarations.config.max_tokens_per_connection {
                    return Err("too many unused job tokens".into());
                }
                let token =
                    declarations.allocate(self.connection, &user, self.coinbase_only, now.mono_ms);
                let expires_ms = now
                    .mono_ms
                    .saturating_add(declarations.config.allocated_token_ms);
                self.tokens.push_back((token, expires_ms));
                // One output of value 0: the miner puts the whole reward in it (sv2-spec 6.4.2).
                let mut coinbase_outputs = Vec::new();
                write_compact_size(1, &mut coinbase_outputs);
                coinbase_outputs.extend_from_slice(&0u64.to_le_bytes());
                write_compact_size(required.len() as u64, &mut coinbase_outputs);
                coinbase_outputs.extend_from_slice(&required);
                out.push(Message::AllocateMiningJobTokenSuccess {
                    request_id,
                    mining_job_token: token.to_le_bytes().to_vec(),
                    coinbase_outputs,
                });
                Ok(())
            }
            Message::DeclareMiningJob {
                request_id,
                mining_job_token,
                version,
                coinbase_tx_prefix,
                coinbase_tx_suffix,
                wtxid_list,
                excess_data: _,
            } => {
                let declared = Declared {
                    request_id,
                    token: &mining_job_token,
                    version,
                    prefix: &coinbase_tx_prefix,
                    suffix: &coinbase_tx_suffix,
                    wtxids: wtxid_list,
                };
                if let Err(e) = self.declare(declared, template, declarations, now, out, events) {
                    tracing_refusal(request_id, &e);
                    out.push(declare_error(request_id, e));
                }
                Ok(())
            }
            Message::ProvideMissingTransactionsSuccess {
                request_id,
                transaction_list,
            } => {
                let Some(at) = self.pending.iter().position(|p| p.request_id == request_id) else {
                    return Err(format!("transactions for unknown request {request_id}"));
                };
                let mut pending = self.pending.swap_remove(at);
                if let Err(e) = fill_missing(&mut pending, transaction_list) {
                    tracing_refusal(request_id, &e);
                    out.push(declare_error(request_id, e));
                    return Ok(());
                }
                self.check(pending, events);
                Ok(())
            }
            Message::PushSolution {
                extranonce,
                prev_hash,
                nonce,
                ntime,
                nbits,
                version,
            } => {
                let solution = Solution {
                    extranonce: &extranonce,
                    prev_hash,
                    nonce,
                    ntime,
                    nbits,
                    version,
                };
                self.push_solution(&solution, pool, now, events);
                Ok(())
            }
            other => Err(format!(
                "unexpected message type 0x{:02x} on a Job Declaration connection",
                other.msg_type()
            )),
        }
    }

    fn declare(
        &mut self,
        declared: Declared<'_>,
        template: Option<&Arc<WorkTemplate>>,
        declarations: &Declarations,
        now: Now,
        out: &mut Vec<Message>,
        events: &mut VecDeque<Event>,
    ) -> Result<(), Refused> {
        let token = <[u8; 8]>::try_from(declared.token)
            .map(u64::from_le_bytes)
            .map_err(|_| refused("invalid-mining-job-token", "tokens are 8 bytes"))?;
        // Used once: a second declaration on the same token finds it gone.
        let allocated = declarations
            .take_allocated(self.connection, token, now.mono_ms)
            .ok_or_else(|| {
                refused(
                    "invalid-mining-job-token",
                    "not a token allocated to this connection, or already used or expired",
                )
            })?;
        self.tokens.retain(|&(t, _)| t != token);
        let base = template
            .cloned()
            .ok_or_else(|| refused("internal-error", "the pool has no template yet"))?;
        if self.pending.len() + self.early.len() >= MAX_PENDING {
            return Err(refused(
                "internal-error",
                "too many declarations in progress",
            ));
        }
        if declared.wtxids.len() > declarations.config.max_transactions {
            return Err(refused(
                "invalid-job",
                format!(
                    "{} transactions; at most {} are taken",
                    declared.wtxids.len(),
                    declarations.config.max_transactions
                ),
            ));
        }
        let (coinbase, coinbase_tx) = DeclaredCoinbase::parse(declared.prefix, declared.suffix)?;
        coinbase.pays_only(&allocated.required_script)?;
        let mut seen = std::collections::HashSet::with_capacity(declared.wtxids.len());
        if let Some(twice) = declared.wtxids.iter().find(|w| !seen.insert(**w)) {
            return Err(refused(
                "invalid-job",
                format!("transaction {} listed twice", hex_hash(twice)),
            ));
        }
        let parsed = Parsed {
            request_id: declared.request_id,
            allocated,
            version: declared.version,
            coinbase,
            coinbase_tx,
            wtxids: declared.wtxids,
        };
        // DeclareMiningJob names no tip: its coinbase height says which one it builds on.
        match parsed.coinbase.bip34_height() {
            // The JDC's node heard of a new block before the pool's did, which on a real
            // network is most blocks for half the JDCs: wait a little for the pool's template
            // on that tip rather than lose the JDC's work until its next template.
            Some(height) if height == base.height + 1 => {
                self.early.push(Early {
                    parsed,
                    until_ms: now.mono_ms.saturating_add(EARLY_WAIT_MS),
                });
                Ok(())
            }
            // A JDC racing a new block the other way (or a pool far behind): the spec's
            // non-fatal stale-chain-tip, where Core would say bad-cb-height.
            Some(height) if height != base.height => Err(refused(
                "stale-chain-tip",
                format!(
                    "declared for height {height}, the pool's next block is {}",
                    base.height
                ),
            )),
            _ => {
                self.resolve(parsed, base, declarations, out, events);
                Ok(())
            }
        }
    }

    /// Looks up a declaration's transactions: asks for the missing ones, or checks the block.
    fn resolve(
        &mut self,
        parsed: Parsed,
        base: Arc<WorkTemplate>,
        declarations: &Declarations,
        out: &mut Vec<Message>,
        events: &mut VecDeque<Event>,
    ) {
        let txs: Vec<Option<KnownTx>> = parsed
            .wtxids
            .iter()
            .map(|w| declarations.lookup(w))
            .collect();
        let Parsed {
            request_id,
            allocated,
            version,
            coinbase,
            coinbase_tx,
            wtxids,
        } = parsed;
        let pending = Pending {
            request_id,
            user: allocated.user,
            address: allocated.address,
            version,
            coinbase,
            coinbase_tx,
            wtxids,
            txs,
            base,
            checking: None,
        };
        let missing: Vec<u16> = pending
            .txs
            .iter()
            .enumerate()
            .filter(|(_, tx)| tx.is_none())
            .map(|(i, _)| i as u16) // at most 20,000 entries (max_transactions)
            .collect();
        if missing.is_empty() {
            self.check(pending, events);
        } else {
            out.push(Message::ProvideMissingTransactions {
                request_id,
                unknown_tx_position_list: missing,
            });
            self.pending.push(pending);
        }
    }

    /// The pool's new template: declarations made on its tip before it came go on.
    pub fn handle_template(
        &mut self,
        template: &Arc<WorkTemplate>,
        declarations: &Declarations,
        out: &mut Vec<Message>,
        events: &mut VecDeque<Event>,
    ) {
        if self.early.is_empty() {
            return;
        }
        // Indexed here too: the driver may hand this connection the template before the
        // pool's own task indexes it, and the early declarations name its transactions.
        declarations.on_template(template);
        let (ready, waiting): (Vec<Early>, Vec<Early>) = std::mem::take(&mut self.early)
            .into_iter()
            .partition(|e| e.parsed.coinbase.bip34_height() == Some(template.height));
        self.early = waiting;
        for early in ready {
            self.resolve(
                early.parsed,
                Arc::clone(template),
                declarations,
                out,
                events,
            );
        }
    }

    /// When the oldest early declaration stops waiting for the pool's tip.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.early.iter().map(|e| e.until_ms).min()
    }

    /// Early declarations whose tip never came to the pool are stale.
    pub fn handle_timeout(&mut self, now: Now, out: &mut Vec<Message>) {
        let (expired, waiting): (Vec<Early>, Vec<Early>) = std::mem::take(&mut self.early)
            .into_iter()
            .partition(|e| e.until_ms <= now.mono_ms);
        self.early = waiting;
        for early in expired {
            let refusal = refused(
                "stale-chain-tip",
                "declared on a tip the pool's node has not reached",
            );
            tracing_refusal(early.parsed.request_id, &refusal);
            out.push(declare_error(early.parsed.request_id, refusal));
        }
    }

    /// Builds the declared block and asks the node whether it is valid.
    fn check(&mut self, mut pending: Pending, events: &mut VecDeque<Event>) {
        let txs: Vec<&KnownTx> = pending.txs.iter().flatten().collect();
        let txids: Vec<Hash32> = txs.iter().map(|t| t.txid).collect();
        let merkle_branch = merkle::coinbase_branch(&txids);
        let mut transactions = Vec::with_capacity(txs.iter().map(|t| t.raw.len()).sum());
        for tx in &txs {
            transactions.extend_from_slice(&tx.raw);
        }
        let base = &pending.base;
        let template = WorkTemplate {
            id: base.id,
            height: base.height,
            version: pending.version,
            prev_hash: base.prev_hash,
            bits: base.bits,
            network_target: base.network_target,
            curtime: base.curtime,
            mintime: base.mintime,
            coinbase_value: pending.coinbase.value,
            coinbase_aux: Vec::new(),
            witness_commitment: None,
            merkle_branch,
            tx_count: txs.len(),
            transactions,
            fees: 0,
            longpoll_id: None,
            merged: None,
            payouts: None,
        };
        let job = Arc::new(DeclaredJob {
            user: pending.user.clone(),
            address: pending.address.clone(),
            version: pending.version,
            coinbase: pending.coinbase.clone(),
            template: Arc::new(template),
        });
        let block = proposal(&job, &pending.coinbase_tx);
        pending.checking = Some(job);
        events.push_back(Event::CheckDeclaredBlock {
            request_id: pending.request_id,
            block,
        });
        self.pending.push(pending);
    }

    /// The node's word on the oldest declaration sent for checking.
    pub fn handle_verdict(
        &mut self,
        request_id: u32,
        verdict: Verdict,
        declarations: &Declarations,
        now: Now,
        out: &mut Vec<Message>,
    ) {
        let Some(at) = self
            .pending
            .iter()
            .position(|p| p.request_id == request_id && p.checking.is_some())
        else {
            return;
        };
        let pending = self.pending.swap_remove(at);
        let Some(job) = pending.checking else {
            return;
        };
        let refusal = match verdict {
            Verdict::Valid => {
                let token = declarations.activate(Arc::clone(&job), now.mono_ms);
                self.recent.push_back(job);
                if self.recent.len() > RECENT_JOBS {
                    self.recent.pop_front();
                }
                out.push(Message::DeclareMiningJobSuccess {
                    request_id,
                    new_mining_job_token: token.to_le_bytes().to_vec(),
                });
                return;
            }
            Verdict::Invalid(reason) if reason.starts_with("inconclusive-not-best-prevblk") => {
                refused("stale-chain-tip", reason)
            }
            Verdict::Invalid(reason) => refused("invalid-job", reason),
            Verdict::Unavailable(reason) => refused("internal-error", reason),
        };
        tracing_refusal(request_id, &refusal);
        out.push(declare_error(request_id, refusal));
    }

    /// A block the miner found on one of its declared jobs: rebuilt here from the declared
    /// transactions and submitted, in case its shares are slower to arrive.
    fn push_solution(
        &self,
        s: &Solution<'_>,
        pool: &dyn Pool,
        now: Now,
        events: &mut VecDeque<Event>,
    ) {
        for job in self.recent.iter().rev() {
            let template = &job.template;
            if template.prev_hash != s.prev_hash
                || template.bits != s.nbits
                || s.extranonce.len() != job.coinbase.extranonce_len
            {
                continue;
            }
            let parts = job.coinbase.parts();
            let leaf = parts.txid(s.extranonce, &[]);
            let root = merkle::root_from_branch(&leaf, &template.merkle_branch);
            let header = header_bytes(s.version, &s.prev_hash, &root, s.ntime, s.nbits, s.nonce);
            let hash = sha256d_80(&header);
            if !Target::from_compact(s.nbits).is_met_by(&hash) {
                continue;
            }
            if !pool.claim_block(&s.prev_hash) {
                return; // the share path already has the pool's block on this parent
            }
            let full = job.job(Vec::new());
            let block = full.block(&header, s.extranonce, &[]);
            events.push_back(Event::BlockFound(FoundBlock {
                chain: "bitcoin",
                height: template.height,
                hash,
                block,
                worker: job.user.clone(),
                address: job.address.clone(),
                reward: job.coinbase.value,
                network_difficulty: template.network_target.difficulty(),
                time_ms: now.unix_ms,
                payouts: None,
            }));
            return;
        }
        // A coinbase-only miner's solution: the pool has no transactions to build it from (the
        // miner's node publishes it).
        match self.coinbase_only {
            true => tracing::debug!(
                "PushSolution on a coinbase-only connection: the miner publishes the block"
            ),
            false => tracing::warn!(
                "PushSolution matches no declared job of this connection, or misses the target"
            ),
        }
    }
}

struct Declared<'a> {
    request_id: u32,
    token: &'a [u8],
    version: u32,
    prefix: &'a [u8],
    suffix: &'a [u8],
    wtxids: Vec<Hash32>,
}

struct Solution<'a> {
    extranonce: &'a [u8],
    prev_hash: Hash32,
    nonce: u32,
    ntime: u32,
    nbits: u32,
    version: u32,
}

fn declare_error(request_id: u32, refusal: Refused) -> Message {
    Message::DeclareMiningJobError {
        request_id,
        error_code: refusal.code.to_string(),
        error_details: refusal.details.into_bytes(),
    }
}

fn tracing_refusal(request_id: u32, refusal: &Refused) {
    tracing::info!(request_id, code = refusal.code, details = %refusal.details, "declared job refused");
}

fn hex_hash(hash: &Hash32) -> String {
    quarry_work::hash::to_display_hex(hash)
}

/// Fills the declaration's gaps with the transactions the miner sent, each checked against the
/// wtxid it was declared with.
fn fill_missing(pending: &mut Pending, provided: Vec<Vec<u8>>) -> Result<(), Refused> {
    let missing: Vec<usize> = (0..pending.txs.len())
        .filter(|i| pending.txs[*i].is_none())
        .collect();
    if provided.len() != missing.len() {
        return Err(refused(
            "missing-txs",
            format!(
                "{} transactions asked for, {} sent",
                missing.len(),
                provided.len()
            ),
        ));
    }
    for (at, raw) in missing.into_iter().zip(provided) {
        let tx: Transaction = deserialize(&raw).map_err(|e| {
            refused(
                "invalid-job",
                format!("transaction at position {at} does not parse: {e}"),
            )
        })?;
        if tx.is_coinbase() {
            return Err(refused(
                "invalid-job",
                format!("position {at} is a coinbase"),
            ));
        }
        let wtxid = tx.compute_wtxid().to_raw_hash().to_byte_array();
        if wtxid != pending.wtxids[at] {
            return Err(refused(
                "invalid-job",
                format!("transaction at position {at} is not the one declared there"),
            ));
        }
        pending.txs[at] = Some(KnownTx {
            txid: tx.compute_txid().to_raw_hash().to_byte_array(),
            raw: raw.into(),
        });
    }
    Ok(())
}

/// The declared block with a zero extranonce and nonce, for the node's proposal check (which
/// skips proof of work and checks everything else, the merkle root included).
fn proposal(job: &DeclaredJob, coinbase_tx: &[u8]) -> Vec<u8> {
    let template = &job.template;
    let parts = job.coinbase.parts();
    let zeros = vec![0u8; job.coinbase.extranonce_len];
    let leaf = parts.txid(&zeros, &[]);
    let root = merkle::root_from_branch(&leaf, &template.merkle_branch);
    let header = header_bytes(
        job.version,
        &template.prev_hash,
        &root,
        template.curtime,
        template.bits,
        0,
    );
    let mut block = Vec::with_capacity(100 + coinbase_tx.len() + template.transactions.len());
    block.extend_from_slice(&header);
    write_compact_size(template.tx_count as u64 + 1, &mut block);
    block.extend_from_slice(coinbase_tx);
    block.extend_from_slice(&template.transactions);
    block
}
