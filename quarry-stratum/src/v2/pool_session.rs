//! One SV2 connection, pool side, as a state machine: Noise handshake → SetupConnection →
//! channels. Same inputs and outputs as the V1 [`Session`](crate::v1::Session): bytes, templates
//! and the time in; encrypted bytes, [`Event`]s and deadlines out. Shares go through
//! [`validate_share`] and the same [`Pool`] as V1.
//!
//! Every channel of a connection belongs to group channel 1 (as in SRI's pool); channel ids start
//! at 2. Jobs are sent per channel: a standard channel gets `NewMiningJob` with its own merkle
//! root, an extended channel `NewExtendedMiningJob` with the coinbase split around its
//! extranonce. A new tip is announced as a future job followed by `SetNewPrevHash`.

use crate::clock::Now;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use quarry_work::job::Job;
use quarry_work::merkle;
use quarry_work::share::{validate_share, ShareReject, ShareRules, Submission};
use quarry_work::template::WorkTemplate;
use quarry_work::vardiff::Vardiff;
use quarry_work::{Difficulty, Target};

use super::declaration::{
    bip34_height, coinbase_only_job, CustomJob, CustomToken, JdSession, Verdict, EARLY_WAIT_MS,
    MAX_EXTRANONCE,
};
use super::keys::AuthorityKeypair;
use super::message::{flags, DecodeError, Message, Protocol, SetupConnection};
use super::noise::{ResponderHandshake, ResponderLink};
use crate::accept::{accept, Validated};
use crate::bans::Offence;
use crate::event::Event;
use crate::pool::Pool;
use crate::rate::{Bucket, Budget};
use crate::tip::Tip;
use crate::v1::SessionConfig;
use crate::worker::{AuxPayouts, Worker};

/// The group channel every channel of a connection belongs to.
pub const GROUP_CHANNEL_ID: u32 = 1;

/// Settings for SV2 connections (the rest is shared with V1's [`SessionConfig`]).
#[derive(Debug, Clone)]
pub struct Sv2Config {
    /// Signs each connection's static key.
    pub authority: AuthorityKeypair,
    /// How long a certificate is valid from the handshake.
    pub certificate_validity_secs: u32,
    /// Largest frame payload accepted from a miner.
    pub max_frame: usize,
    /// Channels one connection may open.
    pub max_channels: usize,
}

impl Sv2Config {
    /// Defaults around an authority key.
    pub fn new(authority: AuthorityKeypair) -> Self {
        Sv2Config {
            authority,
            certificate_validity_secs: 3600,
            // Miners send small messages; the largest, SetupConnection, is under 1,300 bytes.
            max_frame: 16 * 1024,
            max_channels: 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelKind {
    Standard,
    Extended,
}

#[derive(Debug)]
struct ChannelJob {
    id: u32,
    /// The ntime the job (or its SetNewPrevHash) carried: shares may run up to 2 h past it,
    /// whatever the wall clock did since.
    ntime: u32,
    job: Arc<Job>,
}

#[derive(Debug)]
struct Channel {
    kind: ChannelKind,
    worker: Worker,
    extranonce1: Vec<u8>,
    /// The miner's part of the extranonce: the pool's layout, or wider on a connection that
    /// builds its own jobs (Job Declaration); such a channel mines only those.
    extranonce2_len: usize,
    vardiff: Vardiff,
    difficulty: Difficulty,
    /// The miner's limit: our target never exceeds it.
    max_target: Target,
    /// The target before the last SetTarget, honoured for shares in flight until the deadline.
    previous: Option<(Difficulty, u64)>,
    jobs: VecDeque<ChannelJob>,
    /// Ids of jobs this channel was sent and has dropped since (the tip moved on, or too many
    /// jobs), newest last: a share on one is stale, while an id never sent here is invalid.
    dropped: VecDeque<u32>,
}

/// What waits behind a share the share log has not confirmed, in plaintext: it is encrypted
/// only once it may go, so the share's answer can still become an error.
#[derive(Debug)]
enum Queued {
    Frame(Vec<u8>),
    Share {
        channel_id: u32,
        sequence_number: u32,
        credited: f64,
        record: Record,
    },
}

/// The driver's word on an accepted share.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Record {
    Awaiting,
    Durable,
    Lost,
}

/// The error code a share gets when the share log could not keep it: the miner may send it
/// again later (the pool never saw it recorded), and the connection stays.
pub const SHARE_NOT_RECORDED: &str = "share-not-recorded";

/// Dropped job ids remembered per channel, to tell a stale share from an invalid job id: four
/// times the 16 live jobs a channel keeps by default, which covers any share still in flight,
/// in 256 bytes per channel (an idle connection's whole budget is 4 KiB). An older id is
/// answered `invalid-job-id`.
const MAX_DROPPED_JOBS: usize = 64;

/// Why a submitted share was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// A share rule, the same as V1's.
    Share(ShareReject),
    /// No open channel has that id.
    UnknownChannel,
    /// SubmitSharesStandard on an extended channel, or the other way round.
    WrongChannelKind,
}

impl Refusal {
    /// The error code on the wire.
    fn code(&self) -> &'static str {
        match self {
            Refusal::Share(reject) => share_error_code(reject),
            Refusal::UnknownChannel | Refusal::WrongChannelKind => "invalid-channel-id",
        }
    }
}

/// The one mapping from a share rule to SubmitShares.Error's code (the spec's names where it
/// has one), as `v1::error` is for V1's numbers.
pub fn share_error_code(reject: &ShareReject) -> &'static str {
    match reject {
        ShareReject::JobNotFound => "invalid-job-id",
        ShareReject::Stale => "stale-share",
        ShareReject::Duplicate => "duplicate-share",
        ShareReject::LowDifficulty => "difficulty-too-low",
        ShareReject::Extranonce2Size { .. } => "bad-extranonce-size",
        ShareReject::VersionOutsideMask => "invalid-non-rollable-version-bit",
        ShareReject::NtimeTooOld | ShareReject::NtimeTooNew => "invalid-timestamp",
        _ => "invalid-share",
    }
}

enum Phase {
    Handshake,
    Setup,
    Ready,
}

/// One SV2 connection, pool side.
pub struct PoolSession {
    config: Arc<SessionConfig>,
    sv2: Arc<Sv2Config>,
    phase: Phase,
    /// `None` only when the responder could not be built (the session is closed then).
    link: Option<ResponderLink>,
    channels: BTreeMap<u32, Channel>,
    next_channel_id: u32,
    next_job_id: u32,
    template: Option<Arc<WorkTemplate>>,
    tip: Tip,
    /// The extranonce2 of every standard channel (zeros: each channel's extranonce1 is unique),
    /// built once instead of per share.
    standard_extranonce2: Vec<u8>,
    connected_ms: u64,
    last_frame_ms: u64,
    next_retarget_ms: u64,
    /// Encrypted bytes ready to go.
    outbox: Vec<u8>,
    /// Accepted shares waiting for the share log ([`PoolSession::share_recorded`]), and every
    /// message queued after the oldest of them. Empty (no allocation) on an idle connection.
    queue: VecDeque<Queued>,
    /// `Record::Awaiting` shares in `queue`.
    awaiting: u32,
    events: VecDeque<Event>,
    closed: Option<String>,
    /// What the peer did that closed the session, for the ban book.
    offence: Option<Offence>,
    control_bucket: Bucket,
    submit_bucket: Bucket,
    /// The miner set REQUIRES_WORK_SELECTION: it builds its own jobs (Job Declaration).
    work_selection: Option<Box<WorkSelection>>,
    /// A Job Declaration connection (boxed: mining connections, the many, keep 8 bytes).
    jd: Option<Box<JdSession>>,
}

impl std::fmt::Debug for PoolSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolSession")
            .field("channels", &self.channels.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// The budget for messages other than shares: a proxy opens one channel per miner behind it,
/// so the burst covers a full set of channels on top of the V1 budget.
fn control_budget(config: &SessionConfig, sv2: &Sv2Config) -> Budget {
    let channels = u32::try_from(sv2.max_channels).unwrap_or(u32::MAX);
    Budget {
        per_sec: config.control_budget.per_sec,
        burst: config.control_budget.burst.saturating_add(channels),
    }
}

/// What a connection that selects its own work keeps.
#[derive(Debug, Default)]
struct WorkSelection {
    /// SetCustomMiningJobs for the block after the pool's tip (the miner's node heard of a
    /// block first), each with when it stops waiting for the pool's template on that tip.
    early: Vec<(Message, u64)>,
}

/// Custom jobs one connection may have waiting for the pool's tip.
const MAX_EARLY_CUSTOM_JOBS: usize = 8;

/// How long shares meeting the previous target still count after a SetTarget.
const TARGET_GRACE_MS: u64 = 5_000;

impl PoolSession {
    /// A connection whose first bytes will be the Noise act 1.
    pub fn new(config: Arc<SessionConfig>, sv2: Arc<Sv2Config>, now: Now) -> Self {
        let (link, closed) = match ResponderHandshake::new(
            &sv2.authority,
            sv2.certificate_validity_secs,
            sv2.max_frame,
        ) {
            Ok(responder) => (Some(ResponderLink::new(responder)), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let standard_extranonce2 = vec![0; config.extranonce2_len];
        let control_bucket = Bucket::new(control_budget(&config, &sv2), now.mono_ms);
        let submit_bucket = Bucket::new(config.submit_budget, now.mono_ms);
        PoolSession {
            config,
            sv2,
            phase: Phase::Handshake,
            link,
            channels: BTreeMap::new(),
            next_channel_id: GROUP_CHANNEL_ID + 1,
            next_job_id: 1,
            template: None,
            tip: Tip::new(now.mono_ms),
            standard_extranonce2,
            connected_ms: now.mono_ms,
            last_frame_ms: now.mono_ms,
            next_retarget_ms: now.mono_ms,
            outbox: Vec::new(),
            queue: VecDeque::new(),
            awaiting: 0,
            events: VecDeque::new(),
            closed,
            offence: None,
            control_bucket,
            submit_bucket,
            work_selection: None,
            jd: None,
        }
    }

    /// Bytes to write, in order. A SubmitShares.Success, and whatever follows it, waits until
    /// the driver reports its shares recorded.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.release_queued();
        if self.outbox.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.outbox))
    }

    /// Accepted shares waiting for [`PoolSession::share_recorded`].
    pub fn awaiting_record(&self) -> u32 {
        self.awaiting
    }

    /// The driver's word on the oldest unreported [`Event::ShareAccepted`], once per such
    /// event and in order: `true` once the share log has it durably. `false`: that share gets
    /// a SubmitShares.Error (`share-not-recorded`) instead of its place in a Success, and the
    /// session goes on.
    pub fn share_recorded(&mut self, durable: bool) {
        let oldest = self.queue.iter_mut().find_map(|queued| match queued {
            Queued::Share { record, .. } if *record == Record::Awaiting => Some(record),
            _ => None,
        });
        if let Some(record) = oldest {
            *record = if durable {
                Record::Durable
            } else {
                Record::Lost
            };
            self.awaiting -= 1;
        }
    }

    /// Encrypts what may go from the front of the queue: frames, one Success for each run of
    /// recorded shares on a channel, an Error for each lost one; up to the first share still
    /// awaiting its record.
    fn release_queued(&mut self) {
        let Some(link) = &mut self.link else {
            return;
        };
        while let Some(front) = self.queue.front() {
            match *front {
                Queued::Frame(_) => {
                    if let Some(Queued::Frame(frame)) = self.queue.pop_front() {
                        link.encrypt(&frame, &mut self.outbox);
                    }
                }
                Queued::Share {
                    record: Record::Awaiting,
                    ..
                } => break,
                Queued::Share {
                    channel_id,
                    sequence_number,
                    record: Record::Lost,
                    ..
                } => {
                    self.queue.pop_front();
                    let error = Message::SubmitSharesError {
                        channel_id,
                        sequence_number,
                        error_code: SHARE_NOT_RECORDED.into(),
                    };
                    link.encrypt(&error.to_frame_bytes(), &mut self.outbox);
                }
                Queued::Share {
                    channel_id: batch, ..
                } => {
                    let (mut last, mut count, mut sum) = (0, 0u32, 0.0);
                    while let Some(&Queued::Share {
                        channel_id,
                        sequence_number,
                        credited,
                        record: Record::Durable,
                    }) = self.queue.front()
                    {
                        if channel_id != batch {
                            break;
                        }
                        self.queue.pop_front();
                        (last, count, sum) = (sequence_number, count + 1, sum + credited);
                    }
                    let success = Message::SubmitSharesSuccess {
                        channel_id: batch,
                        last_sequence_number: last,
                        new_submits_accepted_count: count,
                        new_shares_sum: sum.round() as u64,
                    };
                    link.encrypt(&success.to_frame_bytes(), &mut self.outbox);
                }
            }
        }
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            self.queue = VecDeque::new();
        }
    }

    /// The next event for the pool.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Why the connection must close, once it must.
    pub fn close_reason(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// The first channel's worker.
    pub fn worker(&self) -> Option<&str> {
        self.channels
            .values()
            .next()
            .map(|c| c.worker.name.as_str())
    }

    /// Open channels.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// When [`PoolSession::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.closed.is_some() {
            return None;
        }
        let idle = self
            .last_frame_ms
            .saturating_add(self.config.idle_timeout_ms);
        if self.channels.is_empty() && self.jd.is_none() {
            return Some(
                idle.min(
                    self.connected_ms
                        .saturating_add(self.config.auth_timeout_ms),
                ),
            );
        }
        let early_declaration = self.jd.as_ref().and_then(|jd| jd.poll_timeout());
        let early_custom = self
            .work_selection
            .as_ref()
            .and_then(|s| s.early.iter().map(|(_, until)| *until).min());
        [early_declaration, early_custom]
            .into_iter()
            .flatten()
            .chain([idle, self.next_retarget_ms])
            .min()
    }

    /// Releases every channel's extranonce1; call once the connection is gone.
    pub fn release(&mut self, pool: &dyn Pool) {
        for channel in std::mem::take(&mut self.channels).into_values() {
            pool.release_extranonce1(&channel.extranonce1);
        }
    }

    /// Bytes from the miner.
    pub fn handle_bytes(&mut self, data: &[u8], now: Now, pool: &dyn Pool) {
        if self.closed.is_some() {
            return;
        }
        let Some(link) = &mut self.link else {
            return;
        };
        if let Err(e) = link.push(data, now.unix_secs() as u32, &mut self.outbox) {
            return self.close_for(Offence::ProtocolViolation, e.to_string());
        }
        if matches!(self.phase, Phase::Handshake) && link.is_open() {
            self.phase = Phase::Setup;
        }
        while self.closed.is_none() {
            let next = match &mut self.link {
                Some(link) => link.next_frame(),
                None => Ok(None),
            };
            match next {
                Ok(Some(frame)) => {
                    self.last_frame_ms = now.mono_ms;
                    match Message::decode(&frame) {
                        Ok(message) => self.handle_message(message, now, pool),
                        // Extensions we never negotiated: the spec says to ignore them.
                        Err(DecodeError::UnknownExtension(_)) => {}
                        Err(e) => {
                            self.close_for(Offence::ProtocolViolation, format!("bad frame: {e}"))
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => self.close_for(Offence::ProtocolViolation, e.to_string()),
            }
        }
    }

    /// Encrypts `message` into the outbox, or queues it behind shares awaiting the share log.
    fn send(&mut self, message: Message) {
        if !self.queue.is_empty() {
            self.queue
                .push_back(Queued::Frame(message.to_frame_bytes()));
        } else if let Some(link) = &mut self.link {
            link.encrypt(&message.to_frame_bytes(), &mut self.outbox);
        }
    }

    fn close(&mut self, reason: String) {
        if self.closed.is_none() {
            self.closed = Some(reason);
        }
    }

    /// Closes for something the peer did wrong.
    fn close_for(&mut self, offence: Offence, reason: String) {
        if self.closed.is_none() {
            self.offence = Some(offence);
        }
        self.close(reason);
    }

    /// What the peer did that closed the session, if that is why it closed.
    pub fn offence(&self) -> Option<Offence> {
        self.offence
    }

    fn handle_message(&mut self, message: Message, now: Now, pool: &dyn Pool) {
        // Channel updates come with the shares (a proxy sends them per miner behind it).
        let within_budget = match &message {
            Message::SubmitSharesStandard { .. }
            | Message::SubmitSharesExtended { .. }
            | Message::UpdateChannel { .. } => self
                .submit_bucket
                .take(self.config.submit_budget, now.mono_ms),
            _ => self
                .control_bucket
                .take(control_budget(&self.config, &self.sv2), now.mono_ms),
        };
        if !within_budget {
            return self.close_for(Offence::Flood, "request flood".into());
        }
        if self.jd.is_some() && matches!(self.phase, Phase::Ready) {
            return self.on_declaration(message, now, pool);
        }
        match (&self.phase, message) {
            (Phase::Setup, Message::SetupConnection(setup)) => self.on_setup(&setup, pool),
            (Phase::Setup, other) => self.close_for(
                Offence::ProtocolViolation,
                format!(
                    "expected SetupConnection, got type 0x{:02x}",
                    other.msg_type()
                ),
            ),
            (
                Phase::Ready,
                Message::OpenStandardMiningChannel {
                    request_id,
                    user_identity,
                    nominal_hash_rate,
                    max_target,
                },
            ) => self.open_channel(
                request_id,
                &user_identity,
                nominal_hash_rate,
                max_target,
                None,
                now,
                pool,
            ),
            (
                Phase::Ready,
                Message::OpenExtendedMiningChannel {
                    request_id,
                    user_identity,
                    nominal_hash_rate,
                    max_target,
                    min_extranonce_size,
                },
            ) => self.open_channel(
                request_id,
                &user_identity,
                nominal_hash_rate,
                max_target,
                Some(min_extranonce_size),
                now,
                pool,
            ),
            (
                Phase::Ready,
                Message::SubmitSharesStandard {
                    channel_id,
                    sequence_number,
                    job_id,
                    nonce,
                    ntime,
                    version,
                },
            ) => {
                let share = Share {
                    channel_id,
                    sequence_number,
                    job_id,
                    nonce,
                    ntime,
                    version,
                    extranonce: None,
                };
                self.on_submit(&share, now, pool)
            }
            (
                Phase::Ready,
                Message::SubmitSharesExtended {
                    channel_id,
                    sequence_number,
                    job_id,
                    nonce,
                    ntime,
                    version,
                    extranonce,
                },
            ) => {
                let share = Share {
                    channel_id,
                    sequence_number,
                    job_id,
                    nonce,
                    ntime,
                    version,
                    extranonce: Some(extranonce),
                };
                self.on_submit(&share, now, pool)
            }
            (
                Phase::Ready,
                Message::UpdateChannel {
                    channel_id,
                    maximum_target,
                    ..
                },
            ) => self.on_update_channel(channel_id, maximum_target, now),
            (Phase::Ready, custom @ Message::SetCustomMiningJob { .. }) => {
                self.on_custom_job_message(custom, true, now, pool)
            }
            (Phase::Ready, Message::CloseChannel { channel_id, .. }) => {
                if let Some(channel) = self.channels.remove(&channel_id) {
                    pool.release_extranonce1(&channel.extranonce1);
                }
            }
            (_, other) => self.close_for(
                Offence::ProtocolViolation,
                format!(
                    "unexpected message type 0x{:02x} from a miner",
                    other.msg_type()
                ),
            ),
        }
    }

    fn on_setup(&mut self, setup: &SetupConnection, pool: &dyn Pool) {
        let error = |flags: u32, code: &str| Message::SetupConnectionError {
            flags,
            error_code: code.to_string(),
        };
        let declarations = pool.declarations();
        if let (Protocol::JobDeclaration, Some(declarations)) = (setup.protocol, declarations) {
            if !(setup.min_version..=setup.max_version).contains(&2) {
                self.send(error(0, "protocol-version-mismatch"));
                return self.close("protocol version mismatch".into());
            }
            // A coinbase-only declarer (no DECLARE_TX_DATA) only when the operator takes them:
            // the pool never sees their transactions. Otherwise refused, as SRI's JDS does.
            let coinbase_only = setup.flags & 1 == 0;
            if coinbase_only && !declarations.config.coinbase_only {
                self.send(error(1, "missing-declare-tx-data-flag"));
                return self.close("Job Declaration without DECLARE_TX_DATA".into());
            }
            self.send(Message::SetupConnectionSuccess {
                used_version: 2,
                flags: 0,
            });
            if let Some(link) = &mut self.link {
                link.set_max_payload(declarations.config.max_frame);
            }
            self.jd = Some(Box::new(JdSession::new(declarations, coinbase_only)));
            self.phase = Phase::Ready;
            return;
        }
        if setup.protocol != Protocol::Mining {
            self.send(error(0, "unsupported-protocol"));
            return self.close(format!("unsupported protocol {:?}", setup.protocol));
        }
        if !(setup.min_version..=setup.max_version).contains(&2) {
            self.send(error(0, "protocol-version-mismatch"));
            return self.close("protocol version mismatch".into());
        }
        let mut supported = flags::REQUIRES_STANDARD_JOBS | flags::REQUIRES_VERSION_ROLLING;
        if declarations.is_some() {
            supported |= flags::REQUIRES_WORK_SELECTION;
        }
        let unsupported = setup.flags & !supported;
        if unsupported != 0 {
            self.send(error(unsupported, "unsupported-feature-flags"));
            return self.close(format!("unsupported feature flags {unsupported:#x}"));
        }
        if setup.flags & flags::REQUIRES_WORK_SELECTION != 0 {
            self.work_selection = Some(Box::default());
        }
        self.send(Message::SetupConnectionSuccess {
            used_version: 2,
            flags: 0,
        });
        self.phase = Phase::Ready;
    }

    /// A Job Declaration message.
    fn on_declaration(&mut self, message: Message, now: Now, pool: &dyn Pool) {
        let (Some(jd), Some(declarations)) = (&mut self.jd, pool.declarations()) else {
            return;
        };
        let mut out = Vec::new();
        let result = jd.handle(
            message,
            self.template.as_ref(),
            &self.config.mode,
            self.config.network,
            declarations,
            pool,
            now,
            &mut out,
            &mut self.events,
        );
        for message in out {
            self.send(message);
        }
        if let Err(reason) = result {
            self.close_for(Offence::ProtocolViolation, reason);
        }
    }

    /// The node's word on a declared block.
    pub fn handle_verdict(&mut self, request_id: u32, verdict: Verdict, now: Now, pool: &dyn Pool) {
        let (Some(jd), Some(declarations)) = (&mut self.jd, pool.declarations()) else {
            return;
        };
        let mut out = Vec::new();
        jd.handle_verdict(request_id, verdict, declarations, now, &mut out);
        for message in out {
            self.send(message);
        }
    }

    /// A SetCustomMiningJob. One for the block after the pool's tip waits for the pool's
    /// template on that tip (`may_wait`), where it would otherwise be stale.
    fn on_custom_job_message(
        &mut self,
        message: Message,
        may_wait: bool,
        now: Now,
        pool: &dyn Pool,
    ) {
        let Message::SetCustomMiningJob {
            channel_id,
            request_id,
            token,
            version,
            prev_hash,
            min_ntime,
            nbits,
            coinbase_tx_version,
            coinbase_prefix,
            coinbase_tx_input_n_sequence,
            coinbase_tx_outputs,
            coinbase_tx_locktime,
            merkle_path,
        } = &message
        else {
            return;
        };
        let next_block = self.template.as_ref().is_some_and(|t| {
            t.prev_hash != *prev_hash && bip34_height(coinbase_prefix) == Some(t.height + 1)
        });
        let custom = CustomJob {
            version: *version,
            prev_hash: *prev_hash,
            nbits: *nbits,
            coinbase_tx_version: *coinbase_tx_version,
            coinbase_prefix,
            coinbase_tx_input_n_sequence: *coinbase_tx_input_n_sequence,
            coinbase_tx_outputs,
            coinbase_tx_locktime: *coinbase_tx_locktime,
            merkle_path,
        };
        match &mut self.work_selection {
            Some(selection)
                if may_wait && next_block && selection.early.len() < MAX_EARLY_CUSTOM_JOBS =>
            {
                let until = now.mono_ms.saturating_add(EARLY_WAIT_MS);
                selection.early.push((message, until));
            }
            _ => self.on_custom_job(
                *channel_id,
                *request_id,
                token,
                *min_ntime,
                &custom,
                now,
                pool,
            ),
        }
    }

    /// Custom jobs waiting for the pool's tip: those on the new template's go on, those for a
    /// later block keep waiting until their time is up, the rest are stale.
    fn resume_custom_jobs(&mut self, now: Now, pool: &dyn Pool) {
        let (Some(selection), Some(template)) = (&mut self.work_selection, &self.template) else {
            return;
        };
        if selection.early.is_empty() {
            return;
        }
        let height = template.height;
        let mut go = Vec::new();
        let mut stale = Vec::new();
        for (message, until) in std::mem::take(&mut selection.early) {
            let for_height = match &message {
                Message::SetCustomMiningJob {
                    coinbase_prefix, ..
                } => bip34_height(coinbase_prefix),
                _ => None,
            };
            if for_height == Some(height) {
                go.push(message);
            } else if for_height > Some(height) && until > now.mono_ms {
                selection.early.push((message, until));
            } else {
                stale.push(message);
            }
        }
        for message in go {
            self.on_custom_job_message(message, false, now, pool);
        }
        for message in stale {
            if let Message::SetCustomMiningJob {
                channel_id,
                request_id,
                ..
            } = message
            {
                tracing::info!(
                    channel_id,
                    request_id,
                    "custom job refused: its tip never came to the pool"
                );
                self.send(Message::SetCustomMiningJobError {
                    channel_id,
                    request_id,
                    error_code: "stale-chain-tip".into(),
                });
            }
        }
    }

    /// A job the miner declared, to mine on one of its extended channels.
    #[allow(clippy::too_many_arguments)]
    fn on_custom_job(
        &mut self,
        channel_id: u32,
        request_id: u32,
        token: &[u8],
        min_ntime: u32,
        custom: &CustomJob<'_>,
        now: Now,
        pool: &dyn Pool,
    ) {
        let refuse = |code: &str| Message::SetCustomMiningJobError {
            channel_id,
            request_id,
            error_code: code.to_string(),
        };
        let Some(declarations) = pool.declarations() else {
            return self.send(refuse("jd-not-supported"));
        };
        let Some(channel) = self.channels.get(&channel_id) else {
            return self.send(refuse("invalid-channel-id"));
        };
        if channel.kind != ChannelKind::Extended {
            return self.send(refuse("invalid-channel-id"));
        }
        let extranonce_len = channel.extranonce1.len() + channel.extranonce2_len;
        let declared = match declarations.take_for_custom_job(token, now.mono_ms) {
            None => return self.send(refuse("invalid-mining-job-token")),
            Some(CustomToken::Declared(declared)) => declared.matches(custom).map(|()| declared),
            Some(CustomToken::CoinbaseOnly {
                required_script,
                user,
                address,
            }) => match &self.template {
                Some(template) => coinbase_only_job(
                    custom,
                    template,
                    &required_script,
                    extranonce_len,
                    (user, address),
                )
                .map(Arc::new),
                None => return self.send(refuse("stale-chain-tip")),
            },
        };
        let declared = match declared {
            Ok(declared) => declared,
            Err(e) => {
                tracing::info!(channel_id, request_id, code = e.code, details = %e.details, "custom job refused");
                return self.send(refuse(e.code));
            }
        };
        // The job must build on the pool's tip, not only on the one it was declared on.
        if self
            .template
            .as_ref()
            .is_some_and(|t| t.prev_hash != custom.prev_hash)
        {
            return self.send(refuse("stale-chain-tip"));
        }
        if declared.coinbase.extranonce_len != extranonce_len {
            return self.send(refuse("invalid-coinbase-prefix"));
        }
        let job =
            Arc::new(declared.job(channel.worker.coinbase_script(&self.config.mode).to_vec()));
        let job_id = self.next_job_id;
        self.next_job_id = self.next_job_id.wrapping_add(1).max(1);
        let max_jobs = self.config.max_jobs;
        if let Some(channel) = self.channels.get_mut(&channel_id) {
            channel.jobs.push_back(ChannelJob {
                id: job_id,
                ntime: min_ntime.max(declared.template.curtime),
                job,
            });
            while channel.jobs.len() > max_jobs {
                if let Some(old) = channel.jobs.pop_front() {
                    channel.dropped.push_back(old.id);
                }
            }
            while channel.dropped.len() > MAX_DROPPED_JOBS {
                channel.dropped.pop_front();
            }
        }
        self.send(Message::SetCustomMiningJobSuccess {
            channel_id,
            request_id,
            job_id,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn open_channel(
        &mut self,
        request_id: u32,
        user_identity: &str,
        nominal_hash_rate: f32,
        max_target: [u8; 32],
        min_extranonce_size: Option<u16>,
        now: Now,
        pool: &dyn Pool,
    ) {
        let refuse = |code: &str| Message::OpenMiningChannelError {
            request_id,
            error_code: code.to_string(),
        };
        if self.channels.len() >= self.sv2.max_channels {
            return self.send(refuse("channel-capacity-exhausted"));
        }
        // `address.rig`, then optionally `,<chain>=<address>...` as in a V1 password: SV2
        // has no password, and a channel is where a miner says who it is.
        let (identity, options) = user_identity.split_once(',').unwrap_or((user_identity, ""));
        let Ok(mut worker) = Worker::parse(identity, self.config.network) else {
            return self.send(refuse("invalid-user-identity"));
        };
        match AuxPayouts::from_password(options) {
            Ok(payouts) => worker.aux_payouts = payouts,
            Err(_) => return self.send(refuse("invalid-user-identity")),
        }
        if !nominal_hash_rate.is_finite() || nominal_hash_rate < 0.0 {
            return self.send(refuse("invalid-nominal-hashrate"));
        }
        // A connection building its own jobs may ask for a wider extranonce than the pool's
        // layout (SRI's JDC asks for 10 bytes): its channels mine only their own jobs.
        let extranonce2_len = match min_extranonce_size.map(usize::from) {
            Some(n) if self.work_selection.is_some() && n > self.config.extranonce2_len => n,
            _ => self.config.extranonce2_len,
        };
        if min_extranonce_size.is_some_and(|n| usize::from(n) > extranonce2_len) {
            return self.send(refuse("min-extranonce-size-too-large"));
        }
        let max_target = Target::from_le_bytes(max_target);
        let Some(floor) = Difficulty::new(max_target.difficulty()) else {
            return self.send(refuse("max-target-out-of-range"));
        };
        let config = Arc::clone(&self.config);
        let vardiff_config = &config.vardiff;
        // Aim for the configured share interval at the announced hashrate.
        let announced =
            f64::from(nominal_hash_rate) * vardiff_config.target_interval_secs / 4_294_967_296.0;
        let start = Difficulty::new(announced)
            .map(|d| d.clamp(vardiff_config.min, vardiff_config.max))
            .unwrap_or(vardiff_config.start);
        let difficulty = start.min(self.network_difficulty()).max(floor);
        // Every extranonce1 of the server in use: the channel is refused, the connection stays.
        let Some(extranonce1) = pool.allocate_extranonce1() else {
            return self.send(refuse("extranonce-space-exhausted"));
        };
        if extranonce1.len() + extranonce2_len > MAX_EXTRANONCE {
            pool.release_extranonce1(&extranonce1);
            return self.send(refuse("min-extranonce-size-too-large"));
        }
        // Ids wrap after 2^32 opens on one connection; never reuse a live one (or 0xffffffff,
        // which SRI treats as reserved).
        let following = |id: u32| {
            if id >= u32::MAX - 1 {
                GROUP_CHANNEL_ID + 1
            } else {
                id + 1
            }
        };
        let mut channel_id = self.next_channel_id;
        while self.channels.contains_key(&channel_id) {
            channel_id = following(channel_id);
        }
        self.next_channel_id = following(channel_id);
        let target = Target::from_difficulty(difficulty).to_le_bytes();
        let kind = if min_extranonce_size.is_some() {
            self.send(Message::OpenExtendedMiningChannelSuccess {
                request_id,
                channel_id,
                target,
                extranonce_size: extranonce2_len as u16,
                extranonce_prefix: extranonce1.clone(),
                group_channel_id: GROUP_CHANNEL_ID,
            });
            ChannelKind::Extended
        } else {
            let mut prefix = extranonce1.clone();
            prefix.resize(extranonce1.len() + self.config.extranonce2_len, 0);
            self.send(Message::OpenStandardMiningChannelSuccess {
                request_id,
                channel_id,
                target,
                extranonce_prefix: prefix,
                group_channel_id: GROUP_CHANNEL_ID,
            });
            ChannelKind::Standard
        };
        self.events.push_back(Event::Authorized {
            worker: worker.name.clone(),
            address: worker.address.clone(),
            aux_payouts: worker.aux_payouts.clone(),
            lightning_offer: None, // SV2 has no password
        });
        self.channels.insert(
            channel_id,
            Channel {
                kind,
                worker,
                extranonce1,
                extranonce2_len,
                vardiff: Vardiff::new(self.config.vardiff, difficulty, now.mono_ms),
                difficulty,
                max_target,
                previous: None,
                jobs: VecDeque::new(),
                dropped: VecDeque::new(),
            },
        );
        self.next_retarget_ms = now
            .mono_ms
            .saturating_add(vardiff_config.retarget_period_ms());
        if self.template.is_some() {
            self.send_job(channel_id, true, now, pool);
        }
    }

    fn on_update_channel(&mut self, channel_id: u32, maximum_target: [u8; 32], now: Now) {
        let max_target = Target::from_le_bytes(maximum_target);
        let Some(channel) = self.channels.get_mut(&channel_id) else {
            return self.send(Message::UpdateChannelError {
                channel_id,
                error_code: "invalid-channel-id".into(),
            });
        };
        let Some(floor) = Difficulty::new(max_target.difficulty()) else {
            return self.send(Message::UpdateChannelError {
                channel_id,
                error_code: "max-target-out-of-range".into(),
            });
        };
        channel.max_target = max_target;
        if channel.difficulty.get() < floor.get() {
            self.set_difficulty(channel_id, floor, now);
        }
    }

    fn set_difficulty(&mut self, channel_id: u32, difficulty: Difficulty, now: Now) {
        let Some(channel) = self.channels.get_mut(&channel_id) else {
            return;
        };
        if channel.difficulty == difficulty {
            return;
        }
        channel.previous = Some((
            channel.difficulty,
            now.mono_ms.saturating_add(TARGET_GRACE_MS),
        ));
        channel.difficulty = difficulty;
        channel.vardiff.set(difficulty, now.mono_ms);
        let maximum_target = Target::from_difficulty(difficulty).to_le_bytes();
        self.send(Message::SetTarget {
            channel_id,
            maximum_target,
        });
    }

    /// The ceiling for share difficulty: the easiest chain's block difficulty (Bitcoin's, or a
    /// merged-mined chain's).
    fn network_difficulty(&self) -> Difficulty {
        self.template
            .as_ref()
            .and_then(|t| Difficulty::new(t.easiest_target().difficulty()))
            .unwrap_or(self.config.vardiff.max)
    }

    fn on_submit(&mut self, share: &Share, now: Now, pool: &dyn Pool) {
        let sequence_number = share.sequence_number;
        let channel_id = share.channel_id;
        match self.check_share(share, now, pool) {
            Ok(credited) => {
                let Some(channel) = self.channels.get_mut(&channel_id) else {
                    return;
                };
                channel.vardiff.record_share(credited, now.mono_ms);
                let network = self.network_difficulty();
                if let Some(channel) = self.channels.get_mut(&channel_id) {
                    if let Some(next) = channel.vardiff.retarget(now.mono_ms, network) {
                        let floor = Difficulty::new(channel.max_target.difficulty());
                        let next = floor.map_or(next, |f| next.max(f));
                        self.set_difficulty(channel_id, next, now);
                    }
                }
            }
            Err(refusal) => {
                // Only a share that broke a share rule counts as a rejected share; a channel
                // mistake is the client's protocol error.
                if let (Some(channel), Refusal::Share(reason)) =
                    (self.channels.get(&channel_id), &refusal)
                {
                    self.events.push_back(Event::ShareRejected {
                        worker: channel.worker.name.clone(),
                        reason: *reason,
                    });
                }
                // Queued behind earlier acceptances, so the miner's counts stay in order.
                self.send(Message::SubmitSharesError {
                    channel_id,
                    sequence_number,
                    error_code: refusal.code().to_string(),
                });
            }
        }
    }

    /// Validates a share; the credited difficulty, or why not.
    fn check_share(
        &mut self,
        share: &Share,
        now: Now,
        pool: &dyn Pool,
    ) -> Result<Difficulty, Refusal> {
        let channel = self
            .channels
            .get(&share.channel_id)
            .ok_or(Refusal::UnknownChannel)?;
        let extranonce2: &[u8] = match (channel.kind, &share.extranonce) {
            (ChannelKind::Standard, None) => &self.standard_extranonce2,
            (ChannelKind::Extended, Some(extranonce)) => extranonce,
            _ => return Err(Refusal::WrongChannelKind),
        };
        // A job this channel was sent and has since dropped (the tip moved on) makes the share
        // stale, as V1's "job not found" does; an id never sent on this channel is invalid.
        let sent = channel
            .jobs
            .iter()
            .find(|j| j.id == share.job_id)
            .ok_or(Refusal::Share(
                match channel.dropped.contains(&share.job_id) {
                    true => ShareReject::Stale,
                    false => ShareReject::JobNotFound,
                },
            ))?;
        // In-flight shares may still meet the target from before the last SetTarget.
        let easiest = match channel.previous {
            Some((previous, until)) if now.mono_ms <= until => previous.min(channel.difficulty),
            _ => channel.difficulty,
        };
        let rules = ShareRules {
            target: Target::from_difficulty(easiest),
            version_mask: self.config.version_mask,
            extranonce2_len: channel.extranonce2_len,
            now_unix: now.unix_secs().max(u64::from(sent.ntime)),
        };
        let submission = Submission {
            extranonce1: &channel.extranonce1,
            extranonce2,
            version: share.version,
            ntime: share.ntime,
            nonce: share.nonce,
        };
        let valid = validate_share(&sent.job, &submission, &rules).map_err(Refusal::Share)?;
        // Credited at the current target when the hash meets it, else at the one in flight.
        let credited = if Target::from_difficulty(channel.difficulty).is_met_by(valid.hash()) {
            channel.difficulty
        } else {
            easiest
        };
        let validated = Validated {
            job: &sent.job,
            share: &valid,
            extranonce1: &channel.extranonce1,
            extranonce2,
            worker: &channel.worker,
            credit: credited,
        };
        accept(
            validated,
            &self.tip,
            self.config.stale_grace_ms,
            now,
            pool,
            &mut self.events,
        )
        .map_err(Refusal::Share)?;
        // Its SubmitShares.Success waits for the share log.
        self.queue.push_back(Queued::Share {
            channel_id: share.channel_id,
            sequence_number: share.sequence_number,
            credited: credited.get(),
            record: Record::Awaiting,
        });
        self.awaiting += 1;
        Ok(credited)
    }

    /// New work from the node.
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
        if let (Some(jd), Some(declarations)) = (&mut self.jd, pool.declarations()) {
            let mut out = Vec::new();
            jd.handle_template(&template, declarations, &mut out, &mut self.events);
            for message in out {
                self.send(message);
            }
        }
        self.template = Some(template);
        let ids: Vec<u32> = self.channels.keys().copied().collect();
        for id in ids {
            self.send_job(id, new_tip, now, pool);
        }
        self.resume_custom_jobs(now, pool);
    }

    fn send_job(&mut self, channel_id: u32, new_tip: bool, now: Now, pool: &dyn Pool) {
        let Some(template) = self.template.clone() else {
            return;
        };
        let Some(channel) = self.channels.get(&channel_id) else {
            return;
        };
        if channel.extranonce2_len != self.config.extranonce2_len {
            return; // a wider extranonce than the pool's coinbase has room for
        }
        let Some(job) = pool.job_for(&template, channel.worker.coinbase_script(&self.config.mode))
        else {
            return;
        };
        let job_id = self.next_job_id;
        self.next_job_id = self.next_job_id.wrapping_add(1).max(1);
        let ntime = template
            .curtime
            .max(now.unix_secs().min(u64::from(u32::MAX)) as u32);
        // A new tip starts with a future job that SetNewPrevHash then activates.
        let min_ntime = (!new_tip).then_some(ntime);
        let message = match channel.kind {
            ChannelKind::Standard => {
                let leaf = job
                    .coinbase
                    .txid(&channel.extranonce1, &self.standard_extranonce2);
                Message::NewMiningJob {
                    channel_id,
                    job_id,
                    min_ntime,
                    version: template.version,
                    merkle_root: merkle::root_from_branch(&leaf, &template.merkle_branch),
                }
            }
            ChannelKind::Extended => Message::NewExtendedMiningJob {
                channel_id,
                job_id,
                min_ntime,
                version: template.version,
                // SRI's translator drops every share of a job that forbids rolling.
                version_rolling_allowed: true,
                merkle_path: template.merkle_branch.clone(),
                coinbase_tx_prefix: job.coinbase.coinb1.clone(),
                coinbase_tx_suffix: job.coinbase.coinb2.clone(),
            },
        };
        self.send(message);
        if new_tip {
            self.send(Message::SetNewPrevHash {
                channel_id,
                job_id,
                prev_hash: template.prev_hash,
                min_ntime: ntime,
                nbits: template.bits,
            });
        }
        let max_jobs = self.config.max_jobs;
        if let Some(channel) = self.channels.get_mut(&channel_id) {
            if new_tip {
                let tip = &self.tip;
                let dropped = &mut channel.dropped;
                channel.jobs.retain(|j| {
                    let keep = tip.keeps(&j.job.template.prev_hash);
                    if !keep {
                        dropped.push_back(j.id);
                    }
                    keep
                });
            }
            channel.jobs.push_back(ChannelJob {
                id: job_id,
                ntime,
                job,
            });
            while channel.jobs.len() > max_jobs {
                if let Some(old) = channel.jobs.pop_front() {
                    channel.dropped.push_back(old.id);
                }
            }
            while channel.dropped.len() > MAX_DROPPED_JOBS {
                channel.dropped.pop_front();
            }
        }
    }

    /// Deadlines: setup and idle timeouts, and vardiff for channels gone quiet.
    pub fn handle_timeout(&mut self, now: Now, pool: &dyn Pool) {
        if self.closed.is_some() {
            return;
        }
        if now.mono_ms
            >= self
                .last_frame_ms
                .saturating_add(self.config.idle_timeout_ms)
        {
            return self.close("idle timeout".into());
        }
        if self.channels.is_empty()
            && self.jd.is_none()
            && now.mono_ms
                >= self
                    .connected_ms
                    .saturating_add(self.config.auth_timeout_ms)
        {
            return self.close_for(Offence::AuthTimeout, "no channel opened in time".into());
        }
        self.resume_custom_jobs(now, pool);
        if let Some(jd) = &mut self.jd {
            let mut out = Vec::new();
            jd.handle_timeout(now, &mut out);
            for message in out {
                self.send(message);
            }
        }
        if now.mono_ms >= self.next_retarget_ms {
            self.next_retarget_ms = now
                .mono_ms
                .saturating_add(self.config.vardiff.retarget_period_ms());
            let network = self.network_difficulty();
            let changes: Vec<(u32, Difficulty)> = self
                .channels
                .iter_mut()
                .filter_map(|(id, c)| {
                    let next = c.vardiff.retarget(now.mono_ms, network)?;
                    let floor = Difficulty::new(c.max_target.difficulty());
                    Some((*id, floor.map_or(next, |f| next.max(f))))
                })
                .collect();
            for (id, difficulty) in changes {
                self.set_difficulty(id, difficulty, now);
            }
        }
    }

    /// Asks the miner to reconnect (graceful restart), then closes.
    pub fn handle_reconnect(&mut self, host: &str, port: u16) {
        if matches!(self.phase, Phase::Ready) {
            self.send(Message::Reconnect {
                new_host: host.to_string(),
                new_port: port,
            });
        }
        self.close("reconnect requested".into());
    }
}

struct Share {
    channel_id: u32,
    sequence_number: u32,
    job_id: u32,
    nonce: u32,
    ntime: u32,
    version: u32,
    extranonce: Option<Vec<u8>>,
}
