//! One Kaspa stratum connection, sans-IO: bytes, jobs and time in; lines and events out.
//!
//! The dialect is EthereumStratum/1.0.0 as the Kaspa bridges speak it (see [`crate::dialect`]).
//! Where the bridges stay silent (an unknown job id, malformed params) this session always
//! answers: 20 for anything else, 21 job not found, 22 duplicate, 23 low difficulty, 24
//! unauthorized, 25 not subscribed.
//!
//! Message order after `mining.authorize`: its `true`, `mining.set_extranonce`,
//! `mining.set_difficulty`, then the newest job, which is what IceRiver and Bitmain firmware
//! expect (rusty-kaspa's bridge sends the same order).

use std::collections::VecDeque;
use std::sync::Arc;

use kaspa_addresses::{Address, Prefix};
use kaspa_math::Uint256;
use quarry_stratum::accept::{accept_candidate, Candidate};
use quarry_stratum::ack::AckHold;
use quarry_stratum::bans::Offence;
use quarry_stratum::rate::{Bucket, Budget};
use quarry_stratum::tip::Tip;
use quarry_stratum::v1::codec::LineReader;
use quarry_stratum::{Event, FoundBlock, Now, Worker};
use quarry_work::share::ShareReject;
use quarry_work::vardiff::{Vardiff, VardiffConfig};
use quarry_work::Difficulty;
use serde_json::{json, Value};

use crate::dialect::{Dialect, JobEncoding};
use crate::pool::KaspaPool;
use crate::target::{difficulty_of, target_for};
use crate::work::{KaspaJob, KaspaWork};
use crate::KASPA;

/// Settings shared by every Kaspa connection.
#[derive(Debug, Clone)]
pub struct KaspaConfig {
    /// The network miners' addresses must be on.
    pub network: Prefix,
    /// Difficulty bounds and the share rate aimed for (`target_interval_secs` = 60 / shares
    /// per minute).
    pub vardiff: VardiffConfig,
    /// Round every difficulty down to a power of two (IceRiver and Bitmain firmware want it).
    pub pow2_clamp: bool,
    /// Extranonce bytes (0 to 3) for every miner but Bitmain's.
    pub extranonce_bytes: usize,
    /// Extranonce bytes for Bitmain firmware.
    pub bitmain_extranonce_bytes: usize,
    /// Jobs each connection keeps answerable.
    pub jobs_kept: usize,
    /// Earlier jobs tried when a share fails on the job it names (ASICs that submit the wrong
    /// id).
    pub walk_back: usize,
    /// Closed after this long without a line.
    pub idle_timeout_ms: u64,
    /// Closed when not authorized this long after connecting.
    pub auth_timeout_ms: u64,
    /// Requests other than shares.
    pub control_budget: Budget,
    /// Shares.
    pub submit_budget: Budget,
    /// Lines that are not requests, in a row, before the connection closes.
    pub max_invalid_lines: u32,
    /// Solo mode: each miner mines a template paying its own address.
    pub solo: bool,
}

impl Default for KaspaConfig {
    fn default() -> Self {
        KaspaConfig {
            network: Prefix::Mainnet,
            vardiff: VardiffConfig {
                // An IceRiver KS0's floor (64 × 2^32 hashes); vardiff moves from there, and a
                // miner may ask for its own with `d=` in the password.
                start: Difficulty::new(64.0).unwrap_or(Difficulty::ONE),
                min: Difficulty::new(1e-6).unwrap_or(Difficulty::ONE),
                max: Difficulty::new(1e15).unwrap_or(Difficulty::ONE),
                target_interval_secs: 3.0,
                retarget_secs: 60.0,
                variance: 0.3,
            },
            pow2_clamp: false,
            extranonce_bytes: 2,
            bitmain_extranonce_bytes: 0,
            jobs_kept: 64,
            walk_back: 16,
            idle_timeout_ms: 600_000,
            auth_timeout_ms: 30_000,
            control_budget: Budget {
                per_sec: 2,
                burst: 64,
            },
            submit_budget: Budget {
                per_sec: 500,
                burst: 5000,
            },
            max_invalid_lines: 10,
            solo: false,
        }
    }
}

/// A request the session answers with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KaspaError {
    /// Anything else (20).
    #[error("{0}")]
    Other(String),
    /// Unknown job id (21).
    #[error("Job not found")]
    JobNotFound,
    /// The same nonce on the same job again (22).
    #[error("Duplicate share submitted")]
    Duplicate,
    /// The share does not meet the connection's difficulty (23).
    #[error("Invalid difficulty")]
    LowDifficulty,
    /// Not authorized, or a worker this connection did not authorize (24).
    #[error("Unauthorized worker")]
    Unauthorized,
    /// Not subscribed (25).
    #[error("Not subscribed")]
    NotSubscribed,
}

impl KaspaError {
    /// The number on the wire.
    pub fn code(&self) -> i64 {
        match self {
            KaspaError::Other(_) => 20,
            KaspaError::JobNotFound => 21,
            KaspaError::Duplicate => 22,
            KaspaError::LowDifficulty => 23,
            KaspaError::Unauthorized => 24,
            KaspaError::NotSubscribed => 25,
        }
    }
}

/// Longest user agent or worker name kept.
const MAX_NAME_LEN: usize = 256;

/// How long a share may still meet the difficulty before the last change.
const DIFFICULTY_GRACE_MS: u64 = 5_000;

/// One connection.
pub struct KaspaSession {
    config: Arc<KaspaConfig>,
    reader: LineReader,
    outbox: VecDeque<String>,
    hold: AckHold,
    events: VecDeque<Event>,
    dialect: Dialect,
    subscribed: bool,
    extranonce: Option<Vec<u8>>,
    /// Shared with each share's checks: cloning it per share would copy its strings.
    worker: Option<Arc<Worker>>,
    vardiff: Vardiff,
    /// The difficulty before the last change, honoured until the deadline.
    previous: Option<(Difficulty, u64)>,
    /// A difficulty change not sent yet (sent before the next job).
    difficulty_pending: bool,
    /// Jobs sent, oldest first, with their ids.
    jobs: VecDeque<(u64, Arc<KaspaJob>)>,
    next_job_id: u64,
    /// The newest job, sent once the miner is authorized.
    latest: Option<Arc<KaspaJob>>,
    /// The newest work the pool published: this miner's job is picked from it.
    work: Option<Arc<KaspaWork>>,
    /// Solo mode: the address registered with the pool for templates.
    payee: Option<String>,
    /// Kaspa has no stale rule by parent (the DAG takes blocks on older parents); a share is
    /// current while its job is kept. This tip never advances.
    tip: Tip,
    connected_ms: u64,
    last_line_ms: u64,
    invalid_lines: u32,
    control_bucket: Bucket,
    submit_bucket: Bucket,
    closed: Option<String>,
    offence: Option<Offence>,
}

impl std::fmt::Debug for KaspaSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KaspaSession")
            .field("worker", &self.worker.as_ref().map(|w| &w.name))
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// A parsed request.
enum Request {
    Subscribe { agent: String },
    ExtranonceSubscribe,
    Authorize { user: String, password: String },
    Submit(Submit),
}

struct Submit {
    worker: String,
    job_id: u64,
    nonce: String,
}

impl KaspaSession {
    /// A new connection.
    pub fn new(config: Arc<KaspaConfig>, now: Now) -> KaspaSession {
        let vardiff = Vardiff::new(config.vardiff, config.vardiff.start, now.mono_ms);
        let control_bucket = Bucket::new(config.control_budget, now.mono_ms);
        let submit_bucket = Bucket::new(config.submit_budget, now.mono_ms);
        KaspaSession {
            config,
            reader: LineReader::default(),
            outbox: VecDeque::new(),
            hold: AckHold::default(),
            events: VecDeque::new(),
            dialect: Dialect::GENERIC,
            subscribed: false,
            extranonce: None,
            worker: None,
            vardiff,
            previous: None,
            difficulty_pending: false,
            jobs: VecDeque::new(),
            next_job_id: 1,
            latest: None,
            work: None,
            payee: None,
            tip: Tip::new(now.mono_ms),
            connected_ms: now.mono_ms,
            last_line_ms: now.mono_ms,
            invalid_lines: 0,
            control_bucket,
            submit_bucket,
            closed: None,
            offence: None,
        }
    }

    /// Bytes from the miner.
    pub fn handle_bytes(&mut self, data: &[u8], now: Now, pool: &KaspaPool) {
        if self.closed.is_some() {
            return;
        }
        if self.reader.push(data).is_err() {
            return self.close_for(Offence::Garbage, "line too long".into());
        }
        let mut reader = std::mem::take(&mut self.reader);
        while let Some(line) = reader.next_line() {
            let Ok(line) = line else {
                self.close_for(Offence::Garbage, "line too long".into());
                break;
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.last_line_ms = now.mono_ms;
            self.handle_line(line, now, pool);
            if self.closed.is_some() {
                break;
            }
        }
        self.reader = reader;
    }

    fn handle_line(&mut self, line: &[u8], now: Now, pool: &KaspaPool) {
        let Ok(value) = serde_json::from_slice::<Value>(line) else {
            return self.garbage(&Value::Null, "parse error: invalid JSON");
        };
        let id = value.get("id").cloned().unwrap_or(Value::Null);
        let Some(method) = value.get("method").and_then(Value::as_str) else {
            // A response to something we sent, or nothing we know: not answered.
            if value.get("result").is_some() || value.get("error").is_some() {
                return;
            }
            return self.garbage(&id, "parse error: no method");
        };
        let params = match value.get("params") {
            Some(Value::Array(params)) => params.as_slice(),
            None | Some(Value::Null) => &[],
            Some(_) => return self.answer_error(&id, &invalid("params must be an array")),
        };
        let request = match parse_request(method, params) {
            Ok(Some(request)) => request,
            Ok(None) => return self.garbage(&id, &format!("unknown method '{method}'")),
            Err(error) => return self.answer_error(&id, &error),
        };
        self.invalid_lines = 0;
        let within = match request {
            Request::Submit(_) => self
                .submit_bucket
                .take(self.config.submit_budget, now.mono_ms),
            _ => self
                .control_bucket
                .take(self.config.control_budget, now.mono_ms),
        };
        if !within {
            return self.close_for(Offence::Flood, "request budget exceeded".into());
        }
        match request {
            Request::Subscribe { agent } => self.on_subscribe(&id, &agent, pool),
            Request::ExtranonceSubscribe => self.answer(&id, Value::Bool(true)),
            Request::Authorize { user, password } => {
                self.on_authorize(&id, &user, &password, now, pool)
            }
            Request::Submit(submit) => self.on_submit(&id, submit, now, pool),
        }
    }

    fn on_subscribe(&mut self, id: &Value, agent: &str, pool: &KaspaPool) {
        if self.subscribed {
            return self.answer_error(id, &KaspaError::Other("already subscribed".into()));
        }
        self.dialect = Dialect::from_user_agent(agent);
        let bytes = match self.dialect.bitmain {
            true => self.config.bitmain_extranonce_bytes,
            false => self.config.extranonce_bytes,
        };
        let Some(extranonce) = pool.allocate_extranonce(bytes) else {
            return self.close("no extranonce left".into());
        };
        self.subscribed = true;
        let result = match self.dialect.bitmain {
            true => json!([null, hex::encode(&extranonce), 8 - extranonce.len()]),
            false => json!([true, "EthereumStratum/1.0.0"]),
        };
        self.extranonce = Some(extranonce);
        self.answer(id, result);
    }

    fn on_authorize(&mut self, id: &Value, user: &str, password: &str, now: Now, pool: &KaspaPool) {
        if !self.subscribed {
            return self.answer_error(id, &KaspaError::NotSubscribed);
        }
        let worker = match parse_worker(user, self.config.network) {
            Ok(worker) => worker,
            Err(reason) => return self.answer_error(id, &KaspaError::Other(reason)),
        };
        let first = self.worker.is_none();
        if first && self.config.solo {
            if !pool.add_payee(&worker.address) {
                return self.answer_error(
                    id,
                    &KaspaError::Other("solo pool full: too many addresses mined for".into()),
                );
            }
            self.payee = Some(worker.address.clone());
        }
        // `d=<difficulty>` in the password: the miner's own starting difficulty.
        if first {
            let asked = password
                .split(',')
                .find_map(|part| part.trim().strip_prefix("d="))
                .and_then(|d| d.parse::<f64>().ok())
                .and_then(Difficulty::new);
            if let Some(asked) = asked {
                self.vardiff.set(asked, now.mono_ms);
            }
        }
        self.events.push_back(Event::Authorized {
            worker: worker.name.clone(),
            address: worker.address.clone(),
            aux_payouts: Default::default(),
            lightning_offer: None, // Lightning pays Bitcoin balances only
        });
        self.worker = Some(Arc::new(worker));
        self.answer(id, Value::Bool(true));
        if !first {
            return;
        }
        let extranonce = hex::encode(self.extranonce.as_deref().unwrap_or_default());
        let params = match self.dialect.bitmain {
            true => json!([extranonce, 8 - extranonce.len() / 2]),
            false => json!([extranonce]),
        };
        self.notify("mining.set_extranonce", params);
        self.send_difficulty();
        let address = self
            .worker
            .as_ref()
            .map(|w| w.address.clone())
            .unwrap_or_default();
        let mine = self
            .work
            .as_ref()
            .and_then(|work| work.job_for(&address).cloned());
        if let Some(job) = mine.or_else(|| self.latest.take()) {
            self.send_job(job, now);
        }
    }

    fn on_submit(&mut self, id: &Value, submit: Submit, now: Now, pool: &KaspaPool) {
        let Some(worker) = self.worker.clone() else {
            return self.answer_error(id, &KaspaError::Unauthorized);
        };
        // The worker named must be the one authorized here, or a rig named only by its
        // worker part (many firmwares send just that).
        let named = submit.worker.as_str();
        let rig_only = worker
            .name
            .strip_suffix(named)
            .is_some_and(|address| address.ends_with('.'));
        if !(named == worker.name || named.is_empty() || rig_only) {
            return self.answer_error(id, &KaspaError::Unauthorized);
        }
        let nonce = match self.full_nonce(&submit.nonce) {
            Ok(nonce) => nonce,
            Err(error) => return self.answer_error(id, &error),
        };
        let Some(named_at) = self.jobs.iter().position(|(i, _)| *i == submit.job_id) else {
            self.reject(&worker, ShareReject::JobNotFound);
            return self.answer_error(id, &KaspaError::JobNotFound);
        };
        let easiest = match self.previous {
            Some((previous, until)) if now.mono_ms <= until => previous.min(self.vardiff.current()),
            _ => self.vardiff.current(),
        };
        let share_target = target_for(easiest);
        // The named job first, then earlier ones (firmware that submits a wrong id): the first
        // on which the nonce meets the share target, or the block target.
        let tried = (0..=named_at.min(self.config.walk_back)).map(|back| named_at - back);
        let mut found = None;
        for at in tried {
            let job = &self.jobs[at].1;
            let pow = job.pow(nonce);
            if pow <= share_target || pow <= job.network_target {
                found = Some((Arc::clone(job), pow));
                break;
            }
        }
        let Some((job, pow)) = found else {
            self.reject(&worker, ShareReject::LowDifficulty);
            return self.answer_error(id, &KaspaError::LowDifficulty);
        };
        let current = self.vardiff.current();
        let credit = if pow <= target_for(current) {
            current
        } else {
            easiest
        };
        let hash = pow.to_le_bytes();
        let achieved = difficulty_of(&pow);
        let template = &job.template;
        let candidate = Candidate {
            chain: KASPA,
            hash: &hash,
            parent: &job.pre_pow_hash,
            is_block: pow <= job.network_target,
            one_block_per_parent: false,
            worker: &worker,
            credit,
            achieved,
            network_difficulty: job.network_difficulty(),
            template_id: template.id,
            height: template.header.daa_score,
            block_reward: template.reward,
        };
        let block = || FoundBlock {
            chain: KASPA,
            height: template.header.daa_score,
            hash: job.block_hash(nonce),
            // The nonce and the template id: the submitter holds the template.
            block: [nonce.to_le_bytes(), template.id.to_le_bytes()].concat(),
            worker: worker.name.clone(),
            address: worker.address.clone(),
            reward: template.reward,
            network_difficulty: job.network_difficulty(),
            time_ms: now.unix_ms,
            payouts: None,
        };
        let accepted = accept_candidate(
            candidate,
            |_| {},
            block,
            &self.tip,
            0,
            now,
            pool,
            &mut self.events,
        );
        match accepted {
            Ok(_) => {
                self.hold.accepted(self.outbox.len());
                self.answer(id, Value::Bool(true));
                self.vardiff.record_share(credit, now.mono_ms);
                self.retarget(now, Difficulty::new(job.network_difficulty()));
            }
            Err(reason) => {
                self.reject(&worker, reason);
                let error = match reason {
                    ShareReject::Duplicate => KaspaError::Duplicate,
                    ShareReject::Stale | ShareReject::JobNotFound => KaspaError::JobNotFound,
                    ShareReject::LowDifficulty => KaspaError::LowDifficulty,
                    other => KaspaError::Other(other.to_string()),
                };
                self.answer_error(id, &error);
            }
        }
    }

    /// The submitted nonce with this connection's extranonce in its high bytes: the miner
    /// sends the remaining `16 - 2 × extranonce bytes` hex digits (or all 16).
    fn full_nonce(&self, text: &str) -> Result<u64, KaspaError> {
        let text = text
            .strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .unwrap_or(text);
        if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("nonce must be 1 to 16 hex digits"));
        }
        let extranonce = hex::encode(self.extranonce.as_deref().unwrap_or_default());
        let full = match text.len() <= 16 - extranonce.len() {
            true => format!("{extranonce}{text:0>width$}", width = 16 - extranonce.len()),
            false => text.to_string(),
        };
        u64::from_str_radix(&full, 16).map_err(|_| invalid("nonce must be hex"))
    }

    /// What the pool published: this miner's job from it (the pool's, or in solo mode its
    /// address's), sent when it is new.
    pub fn handle_work(&mut self, work: Arc<KaspaWork>, now: Now) {
        if self.closed.is_some() {
            return;
        }
        let job = self
            .worker
            .as_ref()
            .and_then(|w| work.job_for(&w.address).cloned());
        self.work = Some(work);
        if let Some(job) = job {
            let sent = self
                .jobs
                .back()
                .is_some_and(|(_, last)| Arc::ptr_eq(last, &job));
            if !sent {
                self.handle_job(job, now);
            }
        }
    }

    /// New work: a job for this connection, sent when the miner is authorized.
    pub fn handle_job(&mut self, job: Arc<KaspaJob>, now: Now) {
        if self.closed.is_some() {
            return;
        }
        if self.worker.is_none() {
            self.latest = Some(job);
            return;
        }
        if let Some(network) = Difficulty::new(job.network_difficulty()) {
            self.retarget(now, Some(network));
        }
        self.send_job(job, now);
    }

    fn send_job(&mut self, job: Arc<KaspaJob>, _now: Now) {
        if self.difficulty_pending {
            self.send_difficulty();
        }
        let id = self.next_job_id;
        self.next_job_id += 1;
        let params = match self.dialect.encoding {
            JobEncoding::Words => json!([id.to_string(), job.words(), job.timestamp]),
            JobEncoding::Hex => json!([id.to_string(), job.hex()]),
        };
        self.notify("mining.notify", params);
        if self.jobs.len() >= self.config.jobs_kept.max(1) {
            self.jobs.pop_front();
        }
        self.jobs.push_back((id, job));
    }

    /// A deadline passed: idle and authorization timeouts, the vardiff period.
    pub fn handle_timeout(&mut self, now: Now) {
        if self.closed.is_some() {
            return;
        }
        if now.mono_ms
            >= self
                .last_line_ms
                .saturating_add(self.config.idle_timeout_ms)
        {
            return self.close("idle".into());
        }
        if self.worker.is_none() {
            if now.mono_ms
                >= self
                    .connected_ms
                    .saturating_add(self.config.auth_timeout_ms)
            {
                self.close_for(Offence::AuthTimeout, "not authorized in time".into());
            }
            return;
        }
        let network = self
            .jobs
            .back()
            .and_then(|(_, job)| Difficulty::new(job.network_difficulty()));
        self.retarget(now, network);
        if self.difficulty_pending {
            self.send_difficulty();
        }
    }

    /// When [`KaspaSession::handle_timeout`] is next due (monotonic ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.closed.is_some() {
            return None;
        }
        let idle = self
            .last_line_ms
            .saturating_add(self.config.idle_timeout_ms);
        match self.worker {
            None => Some(
                idle.min(
                    self.connected_ms
                        .saturating_add(self.config.auth_timeout_ms),
                ),
            ),
            Some(_) => Some(idle.min(self.vardiff.next_retarget_ms())),
        }
    }

    fn retarget(&mut self, now: Now, network: Option<Difficulty>) {
        let cap = network.unwrap_or(self.config.vardiff.max);
        let before = self.vardiff.current();
        let Some(mut next) = self.vardiff.retarget(now.mono_ms, cap) else {
            return;
        };
        if self.config.pow2_clamp {
            next = pow2_floor(next).max(self.config.vardiff.min);
            next = self.vardiff.set(next, now.mono_ms);
        }
        if next != before {
            self.previous = Some((before, now.mono_ms + DIFFICULTY_GRACE_MS));
            self.difficulty_pending = true;
        }
    }

    fn send_difficulty(&mut self) {
        self.difficulty_pending = false;
        let difficulty = self.vardiff.current().get();
        self.notify("mining.set_difficulty", json!([difficulty]));
    }

    /// The driver's word on the oldest accepted share not reported yet: `false` turns its
    /// `true` into error 20, and the connection goes on.
    pub fn share_recorded(&mut self, durable: bool) {
        if let Some(at) = self.hold.recorded(durable) {
            if let Some(line) = self.outbox.get_mut(at) {
                let id = serde_json::from_str::<Value>(line)
                    .map(|answer| answer["id"].clone())
                    .unwrap_or(Value::Null);
                *line = error_line(
                    &id,
                    &KaspaError::Other(
                        "share not recorded: the pool cannot store shares now".into(),
                    ),
                );
            }
        }
    }

    /// Accepted shares waiting for [`KaspaSession::share_recorded`].
    pub fn awaiting_record(&self) -> u32 {
        self.hold.awaiting()
    }

    /// Lines to send, in order, up to the first answer still waiting for the share log.
    pub fn poll_transmit(&mut self) -> Option<String> {
        let ready = self.hold.releasable(self.outbox.len());
        if ready == 0 {
            return None;
        }
        self.hold.sent(ready);
        let out: String = self.outbox.drain(..ready).collect();
        if self.outbox.is_empty() {
            self.outbox = VecDeque::new();
        }
        Some(out)
    }

    /// The next event for the pool.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Why the connection must close, once it must.
    pub fn close_reason(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// What the miner did that closed the connection, for the ban book.
    pub fn offence(&self) -> Option<Offence> {
        self.offence
    }

    /// The authorized worker.
    pub fn worker(&self) -> Option<&str> {
        self.worker.as_ref().map(|w| w.name.as_str())
    }

    /// The connection is over: its extranonce goes back to the pool.
    pub fn release(&mut self, pool: &KaspaPool) {
        if let Some(extranonce) = self.extranonce.take() {
            pool.release_extranonce(&extranonce);
        }
        if let Some(address) = self.payee.take() {
            pool.remove_payee(&address);
        }
    }

    fn reject(&mut self, worker: &Worker, reason: ShareReject) {
        self.events.push_back(Event::ShareRejected {
            worker: worker.name.clone(),
            reason,
        });
    }

    fn garbage(&mut self, id: &Value, reason: &str) {
        self.answer_error(id, &KaspaError::Other(reason.to_string()));
        self.invalid_lines += 1;
        if self.invalid_lines >= self.config.max_invalid_lines {
            self.close_for(Offence::Garbage, "too many invalid lines".into());
        }
    }

    fn answer(&mut self, id: &Value, result: Value) {
        let mut line = json!({"id": id, "result": result, "error": null}).to_string();
        line.push('\n');
        self.outbox.push_back(line);
    }

    fn answer_error(&mut self, id: &Value, error: &KaspaError) {
        self.outbox.push_back(error_line(id, error));
    }

    fn notify(&mut self, method: &str, params: Value) {
        let mut line = match self.dialect.bare_notifications {
            true => json!({"method": method, "params": params}),
            false => json!({"id": null, "jsonrpc": "2.0", "method": method, "params": params}),
        }
        .to_string();
        line.push('\n');
        self.outbox.push_back(line);
    }

    fn close(&mut self, reason: String) {
        if self.closed.is_none() {
            self.closed = Some(reason);
        }
    }

    fn close_for(&mut self, offence: Offence, reason: String) {
        if self.closed.is_none() {
            self.offence = Some(offence);
        }
        self.close(reason);
    }
}

/// `{"id":…,"result":null,"error":[code,"message",null]}` and a newline.
fn error_line(id: &Value, error: &KaspaError) -> String {
    let mut line = json!({
        "id": id,
        "result": null,
        "error": [error.code(), error.to_string(), null],
    })
    .to_string();
    line.push('\n');
    line
}

fn invalid(reason: &str) -> KaspaError {
    KaspaError::Other(format!("invalid params: {reason}"))
}

/// A request by method; `Ok(None)` for a method this pool does not know.
fn parse_request(method: &str, params: &[Value]) -> Result<Option<Request>, KaspaError> {
    let string = |at: usize| -> Result<String, KaspaError> {
        match params.get(at) {
            Some(Value::String(s)) => Ok(truncate(s)),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => Err(invalid(&format!("param {at} must be a string"))),
        }
    };
    Ok(Some(match method {
        "mining.subscribe" => Request::Subscribe {
            agent: string(0).unwrap_or_default(),
        },
        "mining.extranonce.subscribe" => Request::ExtranonceSubscribe,
        "mining.authorize" => Request::Authorize {
            user: string(0)?,
            password: string(1).unwrap_or_default(),
        },
        "mining.submit" => {
            // [worker, job, nonce], or lolMiner's [worker, job, extranonce2, ntime, nonce].
            let nonce_at = match params.len() {
                3 => 2,
                5 => 4,
                _ => return Err(invalid("mining.submit takes 3 or 5 params")),
            };
            let job_id = string(1)?
                .trim()
                .parse::<u64>()
                .map_err(|_| KaspaError::JobNotFound)?;
            Request::Submit(Submit {
                worker: string(0)?,
                job_id,
                nonce: string(nonce_at)?,
            })
        }
        _ => return Ok(None),
    }))
}

fn truncate(text: &str) -> String {
    let mut end = text.len().min(MAX_NAME_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// `<address>[.<worker>]` on `network`; the address may leave out its `kaspa:` prefix.
fn parse_worker(user: &str, network: Prefix) -> Result<Worker, String> {
    let (address_text, _) = user.split_once('.').unwrap_or((user, ""));
    let address = Address::try_from(address_text)
        .or_else(|_| Address::try_from(format!("{network}:{address_text}").as_str()))
        .map_err(|e| format!("invalid address '{address_text}': {e}"))?;
    if address.prefix != network {
        return Err(format!(
            "address '{address_text}' is for {}, this pool mines {network}",
            address.prefix
        ));
    }
    let address = address.to_string();
    let name = match user.split_once('.') {
        Some((_, rig)) if !rig.is_empty() => format!("{address}.{rig}"),
        _ => address.clone(),
    };
    Ok(Worker {
        name,
        address,
        payout_script: Vec::new(),
        aux_payouts: Default::default(),
    })
}

/// `2^floor(log2 d)`.
fn pow2_floor(difficulty: Difficulty) -> Difficulty {
    let rounded = 2f64.powi(difficulty.get().log2().floor() as i32);
    Difficulty::new(rounded).unwrap_or(difficulty)
}

/// The share target of `difficulty`, for tests and the miner.
pub fn share_target(difficulty: Difficulty) -> Uint256 {
    target_for(difficulty)
}

/// The one connection driver runs Kaspa sessions like every other.
impl quarry_stratum::Connection for KaspaSession {
    type Shared = KaspaPool;
    type Event = Event;
    type Work = KaspaWork;

    fn protocol(&self) -> &'static str {
        "kaspa-stratum"
    }
    fn handle_bytes(&mut self, data: &[u8], now: Now, pool: &KaspaPool) {
        KaspaSession::handle_bytes(self, data, now, pool)
    }
    fn handle_template(&mut self, work: Arc<KaspaWork>, now: Now, _pool: &KaspaPool) {
        self.handle_work(work, now)
    }
    fn handle_timeout(&mut self, now: Now, _pool: &KaspaPool) {
        KaspaSession::handle_timeout(self, now)
    }
    fn handle_shutdown(&mut self, _host: &str, _port: u16) {
        // The dialect has no reconnect message: miners redial on their own.
        self.close("server shutting down".into())
    }
    fn poll_event(&mut self) -> Option<Event> {
        KaspaSession::poll_event(self)
    }
    fn share_recorded(&mut self, durable: bool) {
        KaspaSession::share_recorded(self, durable)
    }
    fn transmit(&mut self, out: &mut Vec<u8>) {
        while let Some(lines) = self.poll_transmit() {
            out.extend_from_slice(lines.as_bytes());
        }
    }
    fn close_reason(&self) -> Option<String> {
        KaspaSession::close_reason(self).map(ToString::to_string)
    }
    fn poll_timeout(&self) -> Option<u64> {
        KaspaSession::poll_timeout(self)
    }
    fn worker(&self) -> Option<&str> {
        KaspaSession::worker(self)
    }
    fn offence(&self) -> Option<Offence> {
        KaspaSession::offence(self)
    }
    fn release(&mut self, pool: &KaspaPool) {
        KaspaSession::release(self, pool)
    }
}
