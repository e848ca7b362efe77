//! One Stratum V1 connection as a state machine.
//!
//! Inputs, in any order: [`Session::handle_bytes`] (what the miner sent),
//! [`Session::handle_template`] (new work from the node), [`Session::handle_timeout`] (when
//! [`Session::poll_timeout`] is due) and [`Session::handle_reconnect`]. Outputs:
//! [`Session::poll_transmit`] (lines to write, in order), [`Session::poll_event`] (shares and blocks
//! for the pool) and [`Session::close_reason`]. Time is Unix milliseconds passed by the caller.
//!
//! A miner goes through `AwaitingSubscribe` → `AwaitingAuthorize` → `Mining`. Authorize is also
//! accepted before subscribe (some proxies do that); work starts once both happened.

use crate::clock::Now;
use std::collections::VecDeque;
use std::sync::Arc;

use bitcoin::Network;
use quarry_work::job::Job;
use quarry_work::share::{validate_share, ShareReject, ShareRules, Submission};
use quarry_work::template::WorkTemplate;
use quarry_work::vardiff::{Vardiff, VardiffConfig};
use quarry_work::{Difficulty, Target};
use serde_json::{json, Value};

use super::codec::{LineReader, LineTooLong};
use super::error::{CloseReason, RequestError};
use super::message::{self, Incoming, Request, Submit};
use super::notify;
use crate::accept::{accept, Validated};
use crate::ack::AckHold;
use crate::bans::Offence;
use crate::event::Event;
use crate::pool::{Pool, PoolMode};
use crate::rate::{Bucket, Budget};
use crate::tip::Tip;
use crate::worker::{AuxPayouts, Worker};

/// Settings shared by every session of a listener.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Network that usernames' addresses must belong to.
    pub network: Network,
    /// Solo or pool payouts.
    pub mode: PoolMode,
    /// Bytes of extranonce2 the miner rolls.
    pub extranonce2_len: usize,
    /// Version bits the pool lets miners roll (BIP320: 0x1fffe000).
    pub version_mask: u32,
    /// Difficulty steering.
    pub vardiff: VardiffConfig,
    /// How long shares on the previous tip are still accepted after a new block (in flight).
    pub stale_grace_ms: u64,
    /// Time allowed from connect to a completed subscribe and authorize.
    pub auth_timeout_ms: u64,
    /// Time without any line before the connection is dropped.
    pub idle_timeout_ms: u64,
    /// Consecutive invalid lines tolerated.
    pub max_invalid_lines: u32,
    /// Workers one connection may authorize.
    pub max_workers: usize,
    /// Jobs remembered for late shares.
    pub max_jobs: usize,
    /// Requests other than `mining.submit` (subscribe, authorize, configure, ...).
    pub control_budget: Budget,
    /// `mining.submit` requests: far above any vardiff'd miner, even a proxy for a farm.
    pub submit_budget: Budget,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            network: Network::Regtest,
            mode: PoolMode::Solo,
            extranonce2_len: 8,
            version_mask: 0x1fff_e000,
            vardiff: VardiffConfig::default(),
            stale_grace_ms: 2_000,
            auth_timeout_ms: 30_000,
            idle_timeout_ms: 600_000,
            max_invalid_lines: 5,
            max_workers: 16,
            max_jobs: 16,
            control_budget: Budget {
                per_sec: 2,
                burst: 64,
            },
            submit_budget: Budget {
                per_sec: 500,
                burst: 5_000,
            },
        }
    }
}

/// A job as this connection received it: the difficulty is fixed when the job is sent.
#[derive(Debug)]
struct SentJob {
    /// Sent as lowercase hex.
    id: u64,
    /// The ntime it was sent with: shares may run up to 2 h past it, whatever the wall clock
    /// did since (a step back must not refuse what a miner got right).
    ntime: u32,
    job: Arc<Job>,
    difficulty: Difficulty,
    target: Target,
}

/// Where the handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for `mining.subscribe`.
    AwaitingSubscribe,
    /// Subscribed, waiting for `mining.authorize`.
    AwaitingAuthorize,
    /// Receiving jobs and submitting shares.
    Mining,
}

/// One Stratum V1 connection.
#[derive(Debug)]
pub struct Session {
    config: Arc<SessionConfig>,
    /// Allocated from the pool at `mining.subscribe`; empty before.
    extranonce1: Vec<u8>,
    reader: LineReader,
    subscribed: bool,
    workers: Vec<Worker>,
    version_mask: u32,
    min_difficulty: Difficulty,
    vardiff: Vardiff,
    sent_difficulty: Option<Difficulty>,
    jobs: VecDeque<SentJob>,
    next_job_id: u64,
    template: Option<Arc<WorkTemplate>>,
    tip: Tip,
    connected_ms: u64,
    last_line_ms: u64,
    invalid_lines: u32,
    control_bucket: Bucket,
    submit_bucket: Bucket,
    outbox: VecDeque<String>,
    /// Lines of `outbox` that wait for the share log ([`Session::share_recorded`]).
    hold: AckHold,
    events: VecDeque<Event>,
    closed: Option<CloseReason>,
}

impl Session {
    /// A new connection. Its extranonce1 comes from the pool at `mining.subscribe`, so a
    /// connection that never subscribes holds none.
    pub fn new(config: Arc<SessionConfig>, now: Now) -> Self {
        let vardiff = Vardiff::new(config.vardiff, config.vardiff.start, now.mono_ms);
        let control_bucket = Bucket::new(config.control_budget, now.mono_ms);
        let submit_bucket = Bucket::new(config.submit_budget, now.mono_ms);
        Session {
            min_difficulty: config.vardiff.min,
            config,
            extranonce1: Vec::new(),
            reader: LineReader::default(),
            subscribed: false,
            workers: Vec::new(),
            version_mask: 0,
            vardiff,
            sent_difficulty: None,
            jobs: VecDeque::new(),
            next_job_id: 1,
            template: None,
            tip: Tip::new(now.mono_ms),
            connected_ms: now.mono_ms,
            last_line_ms: now.mono_ms,
            invalid_lines: 0,
            control_bucket,
            submit_bucket,
            outbox: VecDeque::new(),
            hold: AckHold::default(),
            events: VecDeque::new(),
            closed: None,
        }
    }

    /// The connection's extranonce1, once subscribed: the driver releases it to the pool when
    /// the connection ends.
    pub fn extranonce1(&self) -> Option<&[u8]> {
        (!self.extranonce1.is_empty()).then_some(self.extranonce1.as_slice())
    }

    /// Where the handshake stands.
    pub fn phase(&self) -> Phase {
        match (self.subscribed, self.workers.is_empty()) {
            (false, _) => Phase::AwaitingSubscribe,
            (true, true) => Phase::AwaitingAuthorize,
            (true, false) => Phase::Mining,
        }
    }

    /// The difficulty of the latest job sent.
    pub fn difficulty(&self) -> Difficulty {
        self.sent_difficulty.unwrap_or(self.vardiff.current())
    }

    /// The first authorized worker's name.
    pub fn worker(&self) -> Option<&str> {
        self.workers.first().map(|w| w.name.as_str())
    }

    /// Why the session ended, once it has. Flush [`Session::poll_transmit`] then close.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.closed.as_ref()
    }

    /// The next line to write. An accepted share's answer, and whatever follows it, waits until
    /// the driver reports the share recorded.
    pub fn poll_transmit(&mut self) -> Option<String> {
        if self.hold.releasable(self.outbox.len()) == 0 {
            // Held lines stay; only a drained queue gives its memory back.
            if self.outbox.is_empty() {
                release(&mut self.outbox);
            }
            return None;
        }
        self.hold.sent(1);
        self.outbox.pop_front()
    }

    /// Accepted shares waiting for [`Session::share_recorded`].
    pub fn awaiting_record(&self) -> u32 {
        self.hold.awaiting()
    }

    /// The driver's word on the oldest unreported [`Event::ShareAccepted`], once per such
    /// event and in order: `true` once the share log has it durably. Answers go out only when
    /// every share before them is recorded. `false`: that share is answered with an error
    /// instead of `true`, and the session goes on.
    pub fn share_recorded(&mut self, durable: bool) {
        if let Some(at) = self.hold.recorded(durable) {
            // The share's "true" never goes out: the same request gets an error instead, and
            // the connection stays, so the miner carries on once the pool can store again.
            let Some(line) = self.outbox.get_mut(at) else {
                return self.close(CloseReason::ShareNotRecorded);
            };
            let id = serde_json::from_str::<Value>(line)
                .map(|answer| answer["id"].clone())
                .unwrap_or(Value::Null);
            *line = message::error_line(&id, &RequestError::NotRecorded);
        }
    }

    /// The next event for the pool.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        if event.is_none() {
            release(&mut self.events);
        }
        event
    }

    /// When [`Session::handle_timeout`] must be called next (Unix ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.closed.is_some() {
            return None;
        }
        let idle = self
            .last_line_ms
            .saturating_add(self.config.idle_timeout_ms);
        if self.phase() != Phase::Mining {
            let auth = self
                .connected_ms
                .saturating_add(self.config.auth_timeout_ms);
            return Some(auth.min(idle));
        }
        // From the last retarget, not the last line: a quiet miner's deadline must move on once
        // handled, or its task would wake in a loop until the miner speaks.
        Some(idle.min(self.vardiff.next_retarget_ms()))
    }

    /// Bytes received from the miner.
    pub fn handle_bytes(&mut self, data: &[u8], now: Now, pool: &dyn Pool) {
        if self.closed.is_some() {
            return;
        }
        if let Err(LineTooLong) = self.reader.push(data) {
            self.close(CloseReason::LineTooLong);
            return;
        }
        // Taken out for the loop so lines are handled in place, without a copy each.
        let mut reader = std::mem::take(&mut self.reader);
        while let Some(line) = reader.next_line() {
            let Ok(line) = line else {
                self.close(CloseReason::LineTooLong);
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

    fn handle_line(&mut self, line: &[u8], now: Now, pool: &dyn Pool) {
        let (id, request) = match message::parse_line(line) {
            Ok(Incoming::Response) => return,
            Ok(Incoming::Request { id, request }) => (id, request),
            Err(error) => (Value::Null, Err(error)),
        };
        let request = match request {
            Ok(request) => {
                self.invalid_lines = 0;
                request
            }
            Err(error) => {
                self.answer_error(&id, &error);
                if matches!(
                    error,
                    RequestError::Parse(_) | RequestError::UnknownMethod(_)
                ) {
                    self.invalid_lines += 1;
                    if self.invalid_lines >= self.config.max_invalid_lines {
                        self.close(CloseReason::Garbage);
                    }
                }
                return;
            }
        };
        let within_budget = match request {
            Request::Submit(_) => self
                .submit_bucket
                .take(self.config.submit_budget, now.mono_ms),
            _ => self
                .control_bucket
                .take(self.config.control_budget, now.mono_ms),
        };
        if !within_budget {
            return self.close(CloseReason::Flood);
        }
        match request {
            Request::Subscribe { session_id, .. } => self.on_subscribe(&id, session_id, pool),
            Request::Authorize { username, password } => {
                self.on_authorize(&id, &username, &password, now, pool)
            }
            Request::Configure { extensions, params } => {
                self.on_configure(&id, &extensions, &params, now)
            }
            Request::SuggestDifficulty(difficulty) => {
                self.outbox
                    .push_back(message::result_line(&id, json!(true)));
                self.on_suggest_difficulty(difficulty, now, pool);
            }
            Request::ExtranonceSubscribe => {
                self.outbox
                    .push_back(message::result_line(&id, json!(true)));
            }
            Request::Submit(submit) => match self.on_submit(&submit, now, pool) {
                Ok(()) => {
                    self.outbox
                        .push_back(message::result_line(&id, json!(true)));
                    self.after_accepted_share(now, pool);
                }
                Err(error) => {
                    if let RequestError::Share(reason) = error {
                        self.events.push_back(Event::ShareRejected {
                            worker: submit.worker.clone(),
                            reason,
                        });
                    }
                    self.answer_error(&id, &error);
                }
            },
        }
    }

    fn on_subscribe(&mut self, id: &Value, session_id: Option<String>, pool: &dyn Pool) {
        // A session id is an extranonce1 handed out before: take it back when it is free.
        let requested = session_id.and_then(|s| hex::decode(s).ok());
        match requested {
            Some(requested)
                if requested != self.extranonce1 && pool.resume_extranonce1(&requested) =>
            {
                if !self.extranonce1.is_empty() {
                    pool.release_extranonce1(&self.extranonce1);
                }
                self.extranonce1 = requested;
            }
            _ if self.extranonce1.is_empty() => match pool.allocate_extranonce1() {
                Some(extranonce1) => self.extranonce1 = extranonce1,
                None => {
                    self.answer_error(id, &RequestError::ServerFull);
                    return self.close(CloseReason::ServerFull);
                }
            },
            _ => {}
        }
        self.subscribed = true;
        let session_id = hex::encode(&self.extranonce1);
        let result = json!([
            [
                ["mining.set_difficulty", session_id],
                ["mining.notify", session_id]
            ],
            session_id,
            self.config.extranonce2_len,
        ]);
        self.outbox.push_back(message::result_line(id, result));
    }

    fn on_authorize(
        &mut self,
        id: &Value,
        username: &str,
        password: &str,
        now: Now,
        pool: &dyn Pool,
    ) {
        if self.workers.iter().any(|w| w.name == username) {
            self.outbox.push_back(message::result_line(id, json!(true)));
            return;
        }
        if self.workers.len() >= self.config.max_workers {
            self.answer_error(id, &RequestError::TooManyWorkers);
            return;
        }
        let mut worker = match Worker::parse(username, self.config.network) {
            Ok(worker) => worker,
            Err(reason) => {
                self.answer_error(
                    id,
                    &RequestError::BadAddress {
                        user: username.to_string(),
                        reason,
                    },
                );
                return;
            }
        };
        worker.aux_payouts = match AuxPayouts::from_password(password) {
            Ok(payouts) => payouts,
            Err(reason) => {
                self.answer_error(id, &RequestError::BadAuxPayout(reason));
                return;
            }
        };
        let first = self.workers.is_empty();
        self.events.push_back(Event::Authorized {
            worker: worker.name.clone(),
            address: worker.address.clone(),
            aux_payouts: worker.aux_payouts.clone(),
            lightning_offer: crate::worker::lightning_offer(password).map(Box::from),
        });
        self.workers.push(worker);
        self.outbox.push_back(message::result_line(id, json!(true)));
        if first {
            if let Some(requested) = password_difficulty(password) {
                self.vardiff
                    .set(requested.max(self.min_difficulty), now.mono_ms);
            }
            self.send_current_job(true, now, pool);
        }
    }

    fn on_configure(
        &mut self,
        id: &Value,
        extensions: &[String],
        params: &serde_json::Map<String, Value>,
        now: Now,
    ) {
        let mut result = serde_json::Map::new();
        for extension in extensions {
            match extension.as_str() {
                "version-rolling" => {
                    let requested = params
                        .get("version-rolling.mask")
                        .and_then(Value::as_str)
                        .and_then(|m| u32::from_str_radix(m, 16).ok())
                        .unwrap_or(u32::MAX);
                    self.version_mask = requested & self.config.version_mask;
                    result.insert("version-rolling".into(), json!(true));
                    result.insert(
                        "version-rolling.mask".into(),
                        json!(format!("{:08x}", self.version_mask)),
                    );
                }
                "minimum-difficulty" => {
                    let value = params
                        .get("minimum-difficulty.value")
                        .and_then(message::number)
                        .and_then(Difficulty::new);
                    if let Some(value) = value {
                        self.min_difficulty = value
                            .max(self.config.vardiff.min)
                            .min(self.config.vardiff.max);
                        if self.vardiff.current() < self.min_difficulty {
                            self.vardiff.set(self.min_difficulty, now.mono_ms);
                        }
                    }
                    result.insert("minimum-difficulty".into(), json!(value.is_some()));
                }
                "subscribe-extranonce" => {
                    result.insert("subscribe-extranonce".into(), json!(true));
                }
                other => {
                    if result.len() < 16 {
                        result.insert(other.chars().take(64).collect(), json!(false));
                    }
                }
            }
        }
        self.outbox
            .push_back(message::result_line(id, Value::Object(result)));
    }

    fn on_suggest_difficulty(&mut self, difficulty: f64, now: Now, pool: &dyn Pool) {
        let Some(wanted) = Difficulty::new(difficulty) else {
            return;
        };
        self.vardiff
            .set(wanted.max(self.min_difficulty), now.mono_ms);
        if self.phase() == Phase::Mining && Some(self.vardiff.current()) != self.sent_difficulty {
            self.send_current_job(false, now, pool);
        }
    }

    fn on_submit(
        &mut self,
        submit: &Submit,
        now: Now,
        pool: &dyn Pool,
    ) -> Result<(), RequestError> {
        if !self.subscribed {
            return Err(RequestError::NotSubscribed);
        }
        let worker = self
            .workers
            .iter()
            .find(|w| w.name == submit.worker)
            .ok_or(RequestError::Unauthorized)?;
        let wanted = u64::from_str_radix(&submit.job_id, 16).ok();
        let sent = self
            .jobs
            .iter()
            .find(|j| Some(j.id) == wanted)
            .ok_or(RequestError::Share(ShareReject::JobNotFound))?;
        let template = &sent.job.template;
        let version = match submit.version_bits {
            None => template.version,
            Some(bits) if bits & !self.version_mask != 0 => {
                return Err(RequestError::Share(ShareReject::VersionOutsideMask))
            }
            Some(bits) => (template.version & !self.version_mask) | bits,
        };
        let rules = ShareRules {
            target: sent.target,
            version_mask: self.version_mask,
            extranonce2_len: self.config.extranonce2_len,
            now_unix: now.unix_secs().max(u64::from(sent.ntime)),
        };
        let submission = Submission {
            extranonce1: &self.extranonce1,
            extranonce2: &submit.extranonce2,
            version,
            ntime: submit.ntime,
            nonce: submit.nonce,
        };
        let share = validate_share(&sent.job, &submission, &rules).map_err(RequestError::Share)?;
        let validated = Validated {
            job: &sent.job,
            share: &share,
            extranonce1: &self.extranonce1,
            extranonce2: &submit.extranonce2,
            worker,
            credit: sent.difficulty,
        };
        accept(
            validated,
            &self.tip,
            self.config.stale_grace_ms,
            now,
            pool,
            &mut self.events,
        )
        .map_err(RequestError::Share)?;
        // Its answer (queued next) waits for the share log.
        self.hold.accepted(self.outbox.len());
        let credited = sent.difficulty;
        self.vardiff.record_share(credited, now.mono_ms);
        Ok(())
    }

    fn after_accepted_share(&mut self, now: Now, pool: &dyn Pool) {
        let network = self.network_difficulty();
        if self.vardiff.retarget(now.mono_ms, network).is_some() {
            self.send_current_job(false, now, pool);
        }
    }

    /// The ceiling for share difficulty: the easiest chain's block difficulty (Bitcoin's, or a
    /// merged-mined chain's).
    fn network_difficulty(&self) -> Difficulty {
        self.template
            .as_ref()
            .and_then(|t| Difficulty::new(t.easiest_target().difficulty()))
            .unwrap_or(self.config.vardiff.max)
    }

    /// New work from the node. `clean` is derived here: a new previous block hash means every
    /// older job is stale.
    pub fn handle_template(&mut self, template: Arc<WorkTemplate>, now: Now, pool: &dyn Pool) {
        if self.closed.is_some() {
            return;
        }
        if self
            .template
            .as_ref()
            .is_some_and(|old| old.id >= template.id)
        {
            return;
        }
        let new_tip = self.tip.advance(template.prev_hash, now.mono_ms);
        self.template = Some(template);
        if self.phase() == Phase::Mining {
            self.send_current_job(new_tip, now, pool);
        }
    }

    /// Time passed: timeouts and vardiff for a miner that stopped sending shares.
    pub fn handle_timeout(&mut self, now: Now, pool: &dyn Pool) {
        if self.closed.is_some() {
            return;
        }
        if self.phase() != Phase::Mining
            && now.mono_ms
                >= self
                    .connected_ms
                    .saturating_add(self.config.auth_timeout_ms)
        {
            self.close(CloseReason::AuthTimeout);
            return;
        }
        if now.mono_ms
            >= self
                .last_line_ms
                .saturating_add(self.config.idle_timeout_ms)
        {
            self.close(CloseReason::Idle);
            return;
        }
        if self.phase() == Phase::Mining {
            let network = self.network_difficulty();
            if self.vardiff.retarget(now.mono_ms, network).is_some() {
                self.send_current_job(false, now, pool);
            }
        }
    }

    /// Asks the miner to reconnect (to `host:port` after `wait_secs`), then ends the session.
    pub fn handle_reconnect(&mut self, host: &str, port: u16, wait_secs: u32) {
        self.outbox.push_back(message::notification_line(
            "client.reconnect",
            json!([host, port, wait_secs]),
        ));
        self.close(CloseReason::Reconnect);
    }

    /// Tells the miner of a new version-rolling mask (BIP310 `mining.set_version_mask`).
    pub fn handle_version_mask(&mut self, pool_mask: u32) {
        if self.version_mask == 0 {
            return;
        }
        self.version_mask &= pool_mask;
        self.outbox.push_back(message::notification_line(
            "mining.set_version_mask",
            json!([format!("{:08x}", self.version_mask)]),
        ));
    }

    /// Sends the latest template as a new job, preceded by `set_difficulty` when it changed.
    fn send_current_job(&mut self, clean: bool, now: Now, pool: &dyn Pool) {
        let Some(template) = self.template.clone() else {
            return;
        };
        let Some(worker) = self.workers.first() else {
            return;
        };
        let Some(job) = pool.job_for(&template, worker.coinbase_script(&self.config.mode)) else {
            return;
        };
        let network = self.network_difficulty();
        let difficulty = self.vardiff.current().min(network);
        if self.sent_difficulty != Some(difficulty) {
            self.outbox.push_back(message::notification_line(
                "mining.set_difficulty",
                json!([difficulty.get()]),
            ));
            self.sent_difficulty = Some(difficulty);
        }
        let id = self.next_job_id;
        self.next_job_id += 1;
        let ntime = template
            .curtime
            .max(now.unix_secs().min(u64::from(u32::MAX)) as u32);
        let fields = job.encoded(notify::job_fields);
        self.outbox.push_back(notify::notify_line(
            &format!("{id:x}"),
            fields,
            ntime,
            clean,
        ));
        if clean {
            let tip = &self.tip;
            self.jobs.retain(|j| tip.keeps(&j.job.template.prev_hash));
        }
        self.jobs.push_back(SentJob {
            ntime,
            id,
            job,
            difficulty,
            target: Target::from_difficulty(difficulty),
        });
        while self.jobs.len() > self.config.max_jobs {
            self.jobs.pop_front();
        }
    }

    fn answer_error(&mut self, id: &Value, error: &RequestError) {
        self.outbox.push_back(message::error_line(id, error));
    }

    /// What the miner did that closed the session, if that is why it closed.
    pub fn offence(&self) -> Option<Offence> {
        match self.closed.as_ref()? {
            CloseReason::Garbage | CloseReason::LineTooLong => Some(Offence::Garbage),
            CloseReason::Flood => Some(Offence::Flood),
            CloseReason::AuthTimeout => Some(Offence::AuthTimeout),
            _ => None,
        }
    }

    fn close(&mut self, reason: CloseReason) {
        if self.closed.is_none() {
            self.closed = Some(reason);
        }
    }
}

/// Frees a drained queue's memory: most connections sit idle between messages, and a few
/// hundred bytes each is what decides how many fit in RAM.
fn release<T>(queue: &mut VecDeque<T>) {
    if queue.capacity() > 0 {
        *queue = VecDeque::new();
    }
}

/// `d=<difficulty>` in a comma-separated password.
fn password_difficulty(password: &str) -> Option<Difficulty> {
    password
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("d="))
        .find_map(|value| value.trim().parse().ok().and_then(Difficulty::new))
}
