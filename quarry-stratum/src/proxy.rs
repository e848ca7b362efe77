//! The SV1 → SV2 proxy, sans-IO: Stratum V1 miners downstream, one Stratum V2 pool upstream
//! over extended channels.
//!
//! One state machine owns both sides, like quinn-proto's `Endpoint`: the runtime feeds it bytes
//! from each downstream connection and from the upstream, and writes out what it returns.
//!
//! - **Aggregated** (the default): one upstream extended channel for every miner. Each miner's
//!   extranonce1 is the channel's prefix plus [`AGGREGATE_LOCAL_BYTES`] bytes of its own, so
//!   their search spaces never overlap.
//! - **Per miner**: one extended channel per miner (its own target and vardiff upstream); the
//!   miner's extranonce1 is its channel's prefix. The subscribe answer waits for the channel.
//!
//! With **Job Declaration** (`jd`, aggregated only) the proxy mines its own node's templates:
//! a [`JobDeclarator`] declares each to the pool's JDS, the accepted job goes upstream as
//! `SetCustomMiningJob`, and the pool's own jobs are held back, to be mined at once if the JDS
//! refuses or goes away. A block found on a declared job is also handed to the runtime, for
//! the proxy's own node, and pushed to the JDS.
//!
//! Shares are checked with the same [`validate_share`] as the pool before they go upstream, and
//! answered at once (as firmware expects); the pool's verdicts come back as events. When the
//! upstream is lost, miners are sent `client.reconnect` so that they come back to the proxy and
//! get an extranonce from the next upstream.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use quarry_work::coinbase::CoinbaseParts;
use quarry_work::job::Job;
use quarry_work::share::{validate_share, ShareRules, Submission};
use quarry_work::template::WorkTemplate;
use quarry_work::{Hash32, Target};
use serde_json::{json, Value};

use crate::v1::codec::LineReader;
use crate::v1::message::{self, Incoming, Request};
use crate::v1::notify;
use crate::v1::RequestError;
use crate::v2::jd_client::{CustomWork, JdEvent, JdMode, JobDeclarator};
use crate::v2::message::{flags, DecodeError, Message, Protocol, SetupConnection};
use crate::v2::noise::{InitiatorHandshake, NoiseError, Transport, ACT2_LEN};
use quarry_work::share::ShareReject;

/// Bytes of extranonce the proxy gives each miner on an aggregated channel: 65,536 miners.
pub const AGGREGATE_LOCAL_BYTES: usize = 2;
/// Largest frame accepted from the upstream pool.
const MAX_UPSTREAM_FRAME: usize = 1 << 20;
/// Jobs kept per channel since the last new tip.
const MAX_JOBS: usize = 16;
/// Invalid lines in a row before a miner is dropped.
const MAX_INVALID_LINES: u32 = 5;
/// Bytes of a miner's own extranonce2.
const DOWNSTREAM_EXTRANONCE2: u16 = 4;

/// A downstream connection, numbered by the runtime.
pub type DownstreamId = u64;

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The identity the upstream pool credits (`address[.worker]` on Quarry).
    pub user_identity: String,
    /// One upstream channel for all miners, or one per miner.
    pub aggregate: bool,
    /// Hash rate announced per channel (per miner, or in total when aggregated), H/s.
    pub nominal_hash_rate: f32,
    /// Version bits miners may roll (BIP320), when the pool allows rolling.
    pub version_mask: u32,
    /// Job Declaration: mine the proxy's own templates, declared to the pool's JDS.
    pub jd: bool,
    /// What is declared.
    pub jd_mode: JdMode,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            user_identity: String::new(),
            aggregate: true,
            nominal_hash_rate: 1e9,
            version_mask: 0x1fff_e000,
            jd: false,
            jd_mode: JdMode::FullTemplate,
        }
    }
}

/// What the runtime should know or do.
#[derive(Debug, Clone, PartialEq)]
pub enum ProxyEvent {
    /// The upstream is set up and its first channel is open.
    UpstreamReady,
    /// The upstream failed or refused us: connect to the next one.
    UpstreamFailed(String),
    /// Flush this miner's bytes, then close it.
    CloseDownstream(DownstreamId, String),
    /// A share went upstream.
    ShareForwarded {
        /// Worker name the miner gave.
        worker: String,
        /// Difficulty of the channel target it met.
        difficulty: f64,
    },
    /// A miner's share was refused locally.
    ShareRejected {
        /// Worker.
        worker: String,
        /// Why.
        reason: String,
    },
    /// The pool acknowledged shares.
    UpstreamAccepted {
        /// How many.
        count: u32,
    },
    /// The pool refused one share.
    UpstreamRejected {
        /// The spec's code.
        code: String,
    },
    /// Job Declaration is set up: declared jobs are mined from now on.
    JdReady,
    /// The pool took a declared job: miners are on it.
    CustomJobActive {
        /// The pool's job id.
        job_id: u32,
        /// Transactions in it.
        transactions: usize,
    },
    /// Job Declaration failed: miners are on the pool's jobs.
    JdFallback(String),
    /// A share on a declared job is a block: the serialized block, for the proxy's own node.
    BlockFound(Vec<u8>),
}

/// Job Declaration as the proxy runs it.
#[derive(Debug, Default)]
enum JdState {
    /// Not configured, or not connected yet.
    #[default]
    Off,
    /// Declared jobs are mined; the pool's are held back.
    Active,
    /// Fell back to the pool's jobs.
    FellBack,
}

#[derive(Debug, Clone)]
struct ActiveJob {
    upstream_id: u32,
    job: Arc<Job>,
    /// Built from the proxy's own template (Job Declaration): its blocks can be assembled here.
    declared: bool,
}

#[derive(Debug)]
struct FutureJob {
    job_id: u32,
    version: u32,
    version_rolling_allowed: bool,
    merkle_path: Vec<Hash32>,
    prefix: Vec<u8>,
    suffix: Vec<u8>,
}

#[derive(Debug)]
struct Channel {
    group_id: u32,
    extranonce_prefix: Vec<u8>,
    extranonce_size: usize,
    target: Target,
    previous_target: Option<Target>,
    future: Vec<FutureJob>,
    /// Jobs since the last new tip, newest last.
    jobs: VecDeque<ActiveJob>,
    /// Tip, time and bits of the last SetNewPrevHash.
    tip: Option<(Hash32, u32, u32)>,
    version_rolling_allowed: bool,
    next_sequence: u32,
}

impl Channel {
    fn build_job(&self, future: &FutureJob, min_ntime: u32) -> Option<ActiveJob> {
        let (prev_hash, _, bits) = self.tip?;
        let template = WorkTemplate {
            id: u64::from(future.job_id),
            height: 0,
            version: future.version,
            prev_hash,
            bits,
            network_target: Target::from_compact(bits),
            curtime: min_ntime,
            mintime: min_ntime,
            coinbase_value: 0,
            coinbase_aux: Vec::new(),
            witness_commitment: None,
            merkle_branch: future.merkle_path.clone(),
            tx_count: 0,
            transactions: Vec::new(),
            fees: 0,
            longpoll_id: None,
            // The upstream pool does its own merged mining, if any.
            merged: None,
            payouts: None,
        };
        let job = Job::from_parts(
            Arc::new(template),
            CoinbaseParts {
                coinb1: future.prefix.clone(),
                coinb2: future.suffix.clone(),
                segwit: false,
            },
            Vec::new(),
        );
        Some(ActiveJob {
            upstream_id: future.job_id,
            job: Arc::new(job),
            declared: false,
        })
    }
}

#[derive(Debug)]
struct Downstream {
    lines: LineReader,
    outbox: Vec<u8>,
    invalid_lines: u32,
    /// The subscribe request waiting for a channel.
    pending_subscribe: Option<Value>,
    worker: Option<String>,
    /// Set once the subscribe is answered.
    channel: Option<u32>,
    /// Channel prefix plus this miner's own bytes, built once at subscribe.
    extranonce1: Vec<u8>,
    /// How many trailing bytes of `extranonce1` are this miner's (aggregated channels only).
    local_len: usize,
    version_mask: u32,
    sent_difficulty: Option<f64>,
    /// V1 job id → upstream job id, newest last.
    jobs: VecDeque<(String, u32)>,
    next_job: u32,
    closing: bool,
}

enum UpstreamPhase {
    Disconnected,
    Handshake(Option<InitiatorHandshake>, Vec<u8>),
    Setup,
    Ready,
}

/// The proxy: every downstream miner and the upstream connection.
pub struct Proxy {
    config: ProxyConfig,
    upstream: UpstreamPhase,
    transport: Option<Transport>,
    upstream_out: Vec<u8>,
    endpoint: (String, u16),
    channels: BTreeMap<u32, Channel>,
    /// Open requests: request id → the miner it is for (`None`: the aggregate channel).
    opening: HashMap<u32, Option<DownstreamId>>,
    next_request_id: u32,
    aggregate_channel: Option<u32>,
    downstreams: BTreeMap<DownstreamId, Downstream>,
    next_local: u32,
    events: VecDeque<ProxyEvent>,
    /// Job Declaration: the connection to the JDS, when configured.
    declarator: Option<JobDeclarator>,
    jd_state: JdState,
    /// The proxy's own newest template.
    template: Option<Arc<WorkTemplate>>,
    /// Declared work waiting for the pool's SetCustomMiningJob answer, by request id.
    custom: HashMap<u32, CustomWork>,
    /// The pool's own jobs (and tips), held back while declared jobs are mined.
    pool_backlog: Vec<Message>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("channels", &self.channels.len())
            .field("downstreams", &self.downstreams.len())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy with no upstream yet.
    pub fn new(config: ProxyConfig) -> Self {
        Proxy {
            config,
            upstream: UpstreamPhase::Disconnected,
            transport: None,
            upstream_out: Vec::new(),
            endpoint: (String::new(), 0),
            channels: BTreeMap::new(),
            opening: HashMap::new(),
            next_request_id: 1,
            aggregate_channel: None,
            downstreams: BTreeMap::new(),
            next_local: 0,
            events: VecDeque::new(),
            declarator: None,
            jd_state: JdState::Off,
            template: None,
            custom: HashMap::new(),
            pool_backlog: Vec::new(),
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ProxyEvent> {
        self.events.pop_front()
    }

    /// Bytes for the upstream.
    pub fn poll_upstream_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.upstream_out.is_empty()).then(|| std::mem::take(&mut self.upstream_out))
    }

    /// Bytes for one miner.
    pub fn poll_downstream_transmit(&mut self, id: DownstreamId) -> Option<Vec<u8>> {
        let downstream = self.downstreams.get_mut(&id)?;
        (!downstream.outbox.is_empty()).then(|| std::mem::take(&mut downstream.outbox))
    }

    /// Miners with bytes waiting.
    pub fn downstreams_with_output(&self) -> Vec<DownstreamId> {
        self.downstreams
            .iter()
            .filter(|(_, d)| !d.outbox.is_empty())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Connected miners.
    pub fn downstream_count(&self) -> usize {
        self.downstreams.len()
    }

    /// Whether the upstream is set up.
    pub fn upstream_ready(&self) -> bool {
        matches!(self.upstream, UpstreamPhase::Ready)
    }

    // ----- upstream -----

    /// A new TCP connection to an upstream pool whose authority key is `authority_public`.
    ///
    /// # Errors
    /// The Noise initiator could not start.
    pub fn upstream_connected(
        &mut self,
        authority_public: &[u8; 32],
        endpoint: (String, u16),
    ) -> Result<(), NoiseError> {
        self.reset_upstream();
        let mut handshake = InitiatorHandshake::new(authority_public, MAX_UPSTREAM_FRAME)?;
        self.upstream_out = handshake.start()?.to_vec();
        self.upstream = UpstreamPhase::Handshake(Some(handshake), Vec::with_capacity(ACT2_LEN));
        self.endpoint = endpoint;
        Ok(())
    }

    /// The upstream connection is gone: miners are told to reconnect (to us), so that they pick
    /// up an extranonce from the next upstream.
    pub fn upstream_lost(&mut self, reason: &str) {
        self.reset_upstream();
        let ids: Vec<DownstreamId> = self.downstreams.keys().copied().collect();
        for id in ids {
            let Some(downstream) = self.downstreams.get_mut(&id) else {
                continue;
            };
            if downstream.channel.is_some() || downstream.pending_subscribe.is_some() {
                downstream.outbox.extend_from_slice(
                    message::notification_line("client.reconnect", json!([])).as_bytes(),
                );
                self.close_downstream(id, format!("upstream lost: {reason}"));
            }
        }
    }

    fn reset_upstream(&mut self) {
        self.upstream = UpstreamPhase::Disconnected;
        self.transport = None;
        self.upstream_out.clear();
        self.channels.clear();
        self.opening.clear();
        self.aggregate_channel = None;
        self.custom.clear();
        self.pool_backlog.clear();
    }

    fn fail_upstream(&mut self, reason: String) {
        self.events
            .push_back(ProxyEvent::UpstreamFailed(reason.clone()));
        self.upstream_lost(&reason);
    }

    fn send_upstream(&mut self, message: &Message) {
        if let Some(transport) = &mut self.transport {
            transport.encrypt(&message.to_frame_bytes(), &mut self.upstream_out);
        }
    }

    /// Bytes from the upstream; `now_secs` checks its certificate.
    pub fn upstream_bytes(&mut self, mut data: &[u8], now_secs: u32) {
        if let UpstreamPhase::Handshake(handshake, act2) = &mut self.upstream {
            let take = (ACT2_LEN - act2.len()).min(data.len());
            act2.extend_from_slice(&data[..take]);
            data = &data[take..];
            if act2.len() < ACT2_LEN {
                return;
            }
            let mut bytes = [0u8; ACT2_LEN];
            bytes.copy_from_slice(act2);
            let Some(handshake) = handshake.take() else {
                return;
            };
            match handshake.finish(&bytes, now_secs) {
                Ok(transport) => self.transport = Some(transport),
                Err(e) => return self.fail_upstream(e.to_string()),
            }
            self.upstream = UpstreamPhase::Setup;
            let (host, port) = self.endpoint.clone();
            let setup_flags = match self.config.jd {
                true => flags::REQUIRES_WORK_SELECTION,
                false => 0,
            };
            self.send_upstream(&Message::SetupConnection(SetupConnection {
                protocol: Protocol::Mining,
                min_version: 2,
                max_version: 2,
                flags: setup_flags,
                endpoint_host: host,
                endpoint_port: port,
                vendor: "quarry-proxy".into(),
                hardware_version: String::new(),
                firmware: env!("CARGO_PKG_VERSION").into(),
                device_id: String::new(),
            }));
        }
        let Some(transport) = &mut self.transport else {
            return;
        };
        transport.push(data);
        loop {
            let next = match &mut self.transport {
                Some(transport) => transport.next_frame(),
                None => return,
            };
            match next {
                Ok(Some(frame)) => match Message::decode(&frame) {
                    Ok(message) => self.on_upstream_message(message),
                    Err(DecodeError::UnknownExtension(_)) => {}
                    Err(e) => return self.fail_upstream(format!("bad frame from upstream: {e}")),
                },
                Ok(None) => return,
                Err(e) => return self.fail_upstream(e.to_string()),
            }
        }
    }

    fn open_channel(&mut self, for_miner: Option<DownstreamId>) {
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        self.opening.insert(request_id, for_miner);
        let local = if for_miner.is_some() {
            0
        } else {
            AGGREGATE_LOCAL_BYTES as u16
        };
        let user_identity = self.config.user_identity.clone();
        self.send_upstream(&Message::OpenExtendedMiningChannel {
            request_id,
            user_identity,
            nominal_hash_rate: self.config.nominal_hash_rate,
            max_target: [0xff; 32],
            min_extranonce_size: DOWNSTREAM_EXTRANONCE2 + local,
        });
    }

    fn on_upstream_message(&mut self, message: Message) {
        // Only the pool's jobs can be held back: share answers skip the check.
        let pool_job = matches!(
            message,
            Message::NewExtendedMiningJob { .. } | Message::SetNewPrevHash { .. }
        );
        if pool_job && self.holds_pool_jobs() {
            match message {
                Message::NewExtendedMiningJob { .. } => return self.pool_backlog.push(message),
                Message::SetNewPrevHash { job_id, .. } => {
                    // Only the job it activates, and what follows, are worth keeping.
                    self.pool_backlog.retain(|m| {
                        matches!(m, Message::NewExtendedMiningJob { job_id: j, .. } if *j == job_id)
                    });
                    return self.pool_backlog.push(message);
                }
                _ => {}
            }
        }
        match message {
            Message::SetCustomMiningJobSuccess {
                request_id, job_id, ..
            } => self.on_custom_job(request_id, job_id),
            Message::SetCustomMiningJobError {
                request_id,
                error_code,
                ..
            } => {
                self.custom.remove(&request_id);
                if error_code == "stale-chain-tip" {
                    self.release_pool_jobs();
                } else {
                    self.jd_fall_back(format!("the pool refused a declared job: {error_code}"));
                }
            }
            Message::SetupConnectionSuccess { .. } => {
                self.upstream = UpstreamPhase::Ready;
                if self.config.aggregate {
                    self.open_channel(None);
                } else {
                    let waiting: Vec<DownstreamId> = self
                        .downstreams
                        .iter()
                        .filter(|(_, d)| d.pending_subscribe.is_some())
                        .map(|(id, _)| *id)
                        .collect();
                    for id in waiting {
                        self.open_channel(Some(id));
                    }
                    self.events.push_back(ProxyEvent::UpstreamReady);
                }
            }
            Message::SetupConnectionError { error_code, flags } => self.fail_upstream(format!(
                "upstream refused the connection: {error_code} (flags {flags:#x})"
            )),
            Message::OpenExtendedMiningChannelSuccess {
                request_id,
                channel_id,
                target,
                extranonce_size,
                extranonce_prefix,
                group_channel_id,
            } => self.on_channel_opened(
                request_id,
                channel_id,
                Target::from_le_bytes(target),
                usize::from(extranonce_size),
                extranonce_prefix,
                group_channel_id,
            ),
            Message::OpenMiningChannelError {
                request_id,
                error_code,
            } => match self.opening.remove(&request_id) {
                Some(Some(id)) => {
                    if let Some(d) = self.downstreams.get_mut(&id) {
                        if let Some(req) = d.pending_subscribe.take() {
                            let line = message::error_line(
                                &req,
                                &RequestError::InvalidParams(format!(
                                    "upstream refused the channel: {error_code}"
                                )),
                            );
                            d.outbox.extend_from_slice(line.as_bytes());
                        }
                    }
                    self.close_downstream(
                        id,
                        format!("upstream refused the channel: {error_code}"),
                    );
                }
                _ => self.fail_upstream(format!("upstream refused the channel: {error_code}")),
            },
            Message::NewExtendedMiningJob {
                channel_id,
                job_id,
                min_ntime,
                version,
                version_rolling_allowed,
                merkle_path,
                coinbase_tx_prefix,
                coinbase_tx_suffix,
            } => {
                let ids = self.addressed(channel_id);
                for id in ids {
                    let future = FutureJob {
                        job_id,
                        version,
                        version_rolling_allowed,
                        merkle_path: merkle_path.clone(),
                        prefix: coinbase_tx_prefix.clone(),
                        suffix: coinbase_tx_suffix.clone(),
                    };
                    self.on_job(id, future, min_ntime);
                }
            }
            Message::SetNewPrevHash {
                channel_id,
                job_id,
                prev_hash,
                min_ntime,
                nbits,
            } => {
                for id in self.addressed(channel_id) {
                    self.on_prev_hash(id, job_id, prev_hash, min_ntime, nbits);
                }
            }
            Message::SetTarget {
                channel_id,
                maximum_target,
            } => {
                if let Some(channel) = self.channels.get_mut(&channel_id) {
                    channel.previous_target = Some(channel.target);
                    channel.target = Target::from_le_bytes(maximum_target);
                    self.resend_jobs(channel_id, false);
                }
            }
            Message::SubmitSharesSuccess {
                new_submits_accepted_count,
                ..
            } => self.events.push_back(ProxyEvent::UpstreamAccepted {
                count: new_submits_accepted_count,
            }),
            Message::SubmitSharesError { error_code, .. } => self
                .events
                .push_back(ProxyEvent::UpstreamRejected { code: error_code }),
            Message::Reconnect { .. } => {
                self.fail_upstream("upstream asked us to reconnect".into())
            }
            Message::CloseChannel {
                channel_id,
                reason_code,
            } if self.channels.remove(&channel_id).is_some() => {
                let members = self.members(channel_id);
                for id in members {
                    self.close_downstream(
                        id,
                        format!("upstream closed the channel: {reason_code}"),
                    );
                }
                if self.aggregate_channel == Some(channel_id) {
                    self.fail_upstream(format!("upstream closed our channel: {reason_code}"));
                }
            }
            Message::SetExtranoncePrefix {
                channel_id,
                extranonce_prefix,
            } => {
                // Miners cannot change extranonce1 mid-connection without set_extranonce support;
                // reconnecting them is the reliable way.
                if let Some(channel) = self.channels.get_mut(&channel_id) {
                    channel.extranonce_prefix = extranonce_prefix;
                    for id in self.members(channel_id) {
                        if let Some(d) = self.downstreams.get_mut(&id) {
                            d.outbox.extend_from_slice(
                                message::notification_line("client.reconnect", json!([]))
                                    .as_bytes(),
                            );
                        }
                        self.close_downstream(id, "extranonce prefix changed".into());
                    }
                }
            }
            // Group membership and the like need nothing from a proxy.
            _ => {}
        }
    }

    /// Channels a message for `channel_id` applies to (a channel, or every member of a group).
    fn addressed(&self, channel_id: u32) -> Vec<u32> {
        if self.channels.contains_key(&channel_id) {
            return vec![channel_id];
        }
        self.channels
            .iter()
            .filter(|(_, c)| c.group_id == channel_id)
            .map(|(id, _)| *id)
            .collect()
    }

    fn members(&self, channel_id: u32) -> Vec<DownstreamId> {
        self.downstreams
            .iter()
            .filter(|(_, d)| d.channel == Some(channel_id))
            .map(|(id, _)| *id)
            .collect()
    }

    fn on_channel_opened(
        &mut self,
        request_id: u32,
        channel_id: u32,
        target: Target,
        extranonce_size: usize,
        extranonce_prefix: Vec<u8>,
        group_id: u32,
    ) {
        let Some(for_miner) = self.opening.remove(&request_id) else {
            return;
        };
        let local = if for_miner.is_some() {
            0
        } else {
            AGGREGATE_LOCAL_BYTES
        };
        if extranonce_size < local + 1 || extranonce_prefix.len() + extranonce_size > 32 {
            return self.fail_upstream(format!(
                "unusable extranonce from upstream: size {extranonce_size}, prefix {} bytes",
                extranonce_prefix.len()
            ));
        }
        self.channels.insert(
            channel_id,
            Channel {
                group_id,
                extranonce_prefix,
                extranonce_size,
                target,
                previous_target: None,
                future: Vec::new(),
                jobs: VecDeque::new(),
                tip: None,
                version_rolling_allowed: true,
                next_sequence: 0,
            },
        );
        match for_miner {
            None => {
                self.aggregate_channel = Some(channel_id);
                self.events.push_back(ProxyEvent::UpstreamReady);
                self.declare_current();
                let waiting: Vec<DownstreamId> = self
                    .downstreams
                    .iter()
                    .filter(|(_, d)| d.pending_subscribe.is_some())
                    .map(|(id, _)| *id)
                    .collect();
                for id in waiting {
                    self.join_channel(id, channel_id);
                }
            }
            Some(id) => self.join_channel(id, channel_id),
        }
    }

    /// Puts a subscribed miner on a channel and answers its subscribe.
    fn join_channel(&mut self, id: DownstreamId, channel_id: u32) {
        let Some(channel) = self.channels.get(&channel_id) else {
            return;
        };
        let local = if Some(channel_id) == self.aggregate_channel {
            let n = self.next_local;
            self.next_local = self.next_local.wrapping_add(1);
            n.to_be_bytes()[4 - AGGREGATE_LOCAL_BYTES..].to_vec()
        } else {
            Vec::new()
        };
        let mut extranonce1 = channel.extranonce_prefix.clone();
        extranonce1.extend_from_slice(&local);
        let extranonce2_len = channel.extranonce_size - local.len();
        let Some(downstream) = self.downstreams.get_mut(&id) else {
            return;
        };
        let Some(request) = downstream.pending_subscribe.take() else {
            return;
        };
        downstream.channel = Some(channel_id);
        downstream.local_len = local.len();
        let session = hex::encode(&extranonce1);
        downstream.extranonce1 = extranonce1;
        let result = json!([
            [
                ["mining.set_difficulty", session],
                ["mining.notify", session]
            ],
            session,
            extranonce2_len,
        ]);
        downstream
            .outbox
            .extend_from_slice(message::result_line(&request, result).as_bytes());
        self.send_job_to(id, true);
    }

    fn on_job(&mut self, channel_id: u32, future: FutureJob, min_ntime: Option<u32>) {
        let Some(channel) = self.channels.get_mut(&channel_id) else {
            return;
        };
        channel.version_rolling_allowed = future.version_rolling_allowed;
        match min_ntime {
            Some(ntime) => {
                let Some(active) = channel.build_job(&future, ntime) else {
                    return;
                };
                if channel.jobs.len() == MAX_JOBS {
                    channel.jobs.pop_front();
                }
                channel.jobs.push_back(active);
                self.resend_jobs(channel_id, false);
            }
            None => {
                if channel.future.len() == MAX_JOBS {
                    channel.future.remove(0);
                }
                channel.future.push(future);
            }
        }
    }

    fn on_prev_hash(&mut self, channel_id: u32, job_id: u32, prev: Hash32, ntime: u32, bits: u32) {
        let Some(channel) = self.channels.get_mut(&channel_id) else {
            return;
        };
        channel.tip = Some((prev, ntime, bits));
        let Some(at) = channel.future.iter().position(|f| f.job_id == job_id) else {
            return;
        };
        let future = channel.future.remove(at);
        channel.future.clear();
        let Some(active) = channel.build_job(&future, ntime) else {
            return;
        };
        channel.jobs.clear();
        channel.jobs.push_back(active);
        self.resend_jobs(channel_id, true);
    }

    fn resend_jobs(&mut self, channel_id: u32, clean: bool) {
        for id in self.members(channel_id) {
            self.send_job_to(id, clean);
        }
    }

    /// The channel's newest job as `mining.notify`, after `set_difficulty` when it changed.
    fn send_job_to(&mut self, id: DownstreamId, clean: bool) {
        let Some(downstream) = self.downstreams.get_mut(&id) else {
            return;
        };
        let Some(channel) = downstream.channel.and_then(|c| self.channels.get(&c)) else {
            return;
        };
        let Some(active) = channel.jobs.back() else {
            return;
        };
        let difficulty = channel.target.difficulty();
        if downstream.sent_difficulty != Some(difficulty) {
            downstream.sent_difficulty = Some(difficulty);
            downstream.outbox.extend_from_slice(
                message::notification_line("mining.set_difficulty", json!([difficulty])).as_bytes(),
            );
        }
        let template = &active.job.template;
        let job_id = format!("{:x}", downstream.next_job);
        downstream.next_job = downstream.next_job.wrapping_add(1);
        // The job's text is built once for every miner on the channel.
        let fields = active.job.encoded(notify::job_fields);
        downstream.outbox.extend_from_slice(
            notify::notify_line(&job_id, fields, template.curtime, clean).as_bytes(),
        );
        if clean {
            downstream.jobs.clear();
        }
        if downstream.jobs.len() == MAX_JOBS {
            downstream.jobs.pop_front();
        }
        downstream.jobs.push_back((job_id, active.upstream_id));
    }

    // ----- Job Declaration -----

    /// A new connection to the pool's JDS (`authority_public` signs it).
    ///
    /// # Errors
    /// The Noise initiator could not start.
    pub fn jd_connected(
        &mut self,
        authority_public: &[u8; 32],
        endpoint: (String, u16),
    ) -> Result<(), NoiseError> {
        let user = self.config.user_identity.clone();
        let mode = self.config.jd_mode;
        self.declarator = Some(JobDeclarator::connect(
            authority_public,
            endpoint,
            user,
            mode,
        )?);
        Ok(())
    }

    /// Bytes from the JDS.
    pub fn jd_bytes(&mut self, data: &[u8], now_secs: u32) {
        if let Some(declarator) = &mut self.declarator {
            declarator.handle_bytes(data, now_secs);
        }
        self.on_jd_events();
    }

    /// Bytes for the JDS.
    pub fn poll_jd_transmit(&mut self) -> Option<Vec<u8>> {
        self.declarator.as_mut()?.poll_transmit()
    }

    /// The JDS connection is gone: miners go on with the pool's jobs.
    pub fn jd_lost(&mut self, reason: &str) {
        if let Some(declarator) = &mut self.declarator {
            declarator.lost(reason);
        }
        self.on_jd_events();
    }

    /// A new template from the proxy's own node.
    pub fn handle_template(&mut self, template: Arc<WorkTemplate>) {
        self.template = Some(template);
        self.declare_current();
    }

    /// Declares the newest template, when Job Declaration is on and the channel is open.
    fn declare_current(&mut self) {
        let (Some(template), Some(channel_id)) = (&self.template, self.aggregate_channel) else {
            return;
        };
        let Some(channel) = self.channels.get(&channel_id) else {
            return;
        };
        let extranonce_len = channel.extranonce_prefix.len() + channel.extranonce_size;
        if let Some(declarator) = &mut self.declarator {
            declarator.declare(Arc::clone(template), extranonce_len);
        }
        self.on_jd_events();
    }

    fn on_jd_events(&mut self) {
        while let Some(event) = self.declarator.as_mut().and_then(|d| d.poll_event()) {
            match event {
                // First set up, or back after a fallback (the runtime redials): declared jobs
                // again, the pool's held back from here on.
                JdEvent::Ready => {
                    if !matches!(self.jd_state, JdState::Active) {
                        self.jd_state = JdState::Active;
                        self.events.push_back(ProxyEvent::JdReady);
                    }
                    self.declare_current();
                }
                JdEvent::Declared(_, work) => {
                    let Some(channel_id) = self.aggregate_channel else {
                        continue;
                    };
                    let request_id = self.next_request_id;
                    self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
                    self.send_upstream(&work.set_custom_mining_job(channel_id, request_id));
                    self.custom.insert(request_id, *work);
                }
                JdEvent::Stale(_) => self.release_pool_jobs(),
                JdEvent::Failed(reason) => self.jd_fall_back(reason),
            }
        }
    }

    /// Whether the pool's jobs are held back: while the miners are on a declared job on the
    /// proxy's newest template, or one is on its way. Otherwise (a declaration called stale,
    /// none yet) the pool's jobs go through, so miners are never left on a stale job.
    fn holds_pool_jobs(&self) -> bool {
        if !matches!(self.jd_state, JdState::Active) {
            return false;
        }
        let Some(template) = &self.template else {
            return false;
        };
        let mining_declared = self
            .aggregate_channel
            .and_then(|id| self.channels.get(&id))
            .is_some_and(|channel| {
                channel.jobs.back().is_some_and(|job| job.declared)
                    && channel.tip.map(|(prev, _, _)| prev) == Some(template.prev_hash)
            });
        mining_declared
            || self.custom.values().any(|w| w.template.id == template.id)
            || self
                .declarator
                .as_ref()
                .is_some_and(|d| d.declaring(template.id))
    }

    /// The pool's held-back jobs go to the miners, unless declared work is still due.
    fn release_pool_jobs(&mut self) {
        if self.holds_pool_jobs() {
            return;
        }
        for message in std::mem::take(&mut self.pool_backlog) {
            self.on_upstream_message(message);
        }
    }

    /// Declared jobs are over until the JDS is back: the pool's held-back jobs go to the miners
    /// at once.
    fn jd_fall_back(&mut self, reason: String) {
        if matches!(self.jd_state, JdState::FellBack) {
            return;
        }
        self.jd_state = JdState::FellBack;
        self.declarator = None;
        self.custom.clear();
        self.events.push_back(ProxyEvent::JdFallback(reason));
        for message in std::mem::take(&mut self.pool_backlog) {
            self.on_upstream_message(message);
        }
    }

    /// The pool took declared work: it becomes the channel's job.
    fn on_custom_job(&mut self, request_id: u32, job_id: u32) {
        let Some(work) = self.custom.remove(&request_id) else {
            return;
        };
        let Some(channel_id) = self.aggregate_channel else {
            return;
        };
        let Some(channel) = self.channels.get_mut(&channel_id) else {
            return;
        };
        let template = Arc::clone(&work.template);
        let new_tip = channel.tip.map(|(prev, _, _)| prev) != Some(template.prev_hash);
        channel.tip = Some((template.prev_hash, template.curtime, template.bits));
        let job = Job::from_parts(Arc::clone(&template), work.coinbase.parts(), Vec::new());
        if new_tip {
            channel.jobs.clear();
        }
        if channel.jobs.len() == MAX_JOBS {
            channel.jobs.pop_front();
        }
        channel.jobs.push_back(ActiveJob {
            upstream_id: job_id,
            job: Arc::new(job),
            declared: true,
        });
        self.events.push_back(ProxyEvent::CustomJobActive {
            job_id,
            transactions: template.tx_count,
        });
        self.resend_jobs(channel_id, new_tip);
    }

    // ----- downstream -----

    /// A miner connected.
    pub fn downstream_connected(&mut self, id: DownstreamId) {
        self.downstreams.insert(
            id,
            Downstream {
                lines: LineReader::default(),
                outbox: Vec::new(),
                invalid_lines: 0,
                pending_subscribe: None,
                worker: None,
                channel: None,
                extranonce1: Vec::new(),
                local_len: 0,
                version_mask: 0,
                sent_difficulty: None,
                jobs: VecDeque::new(),
                next_job: 1,
                closing: false,
            },
        );
    }

    /// A miner is gone; a per-miner channel is closed upstream.
    pub fn downstream_closed(&mut self, id: DownstreamId) {
        let Some(downstream) = self.downstreams.remove(&id) else {
            return;
        };
        if let Some(channel_id) = downstream.channel {
            if Some(channel_id) != self.aggregate_channel
                && self.channels.remove(&channel_id).is_some()
            {
                self.send_upstream(&Message::CloseChannel {
                    channel_id,
                    reason_code: "downstream-disconnected".into(),
                });
            }
        }
        self.opening.retain(|_, miner| *miner != Some(id));
    }

    fn close_downstream(&mut self, id: DownstreamId, reason: String) {
        if let Some(downstream) = self.downstreams.get_mut(&id) {
            if !downstream.closing {
                downstream.closing = true;
                self.events
                    .push_back(ProxyEvent::CloseDownstream(id, reason));
            }
        }
    }

    /// Bytes from a miner; `now_secs` bounds ntime.
    pub fn downstream_bytes(&mut self, id: DownstreamId, data: &[u8], now_secs: u64) {
        let Some(downstream) = self.downstreams.get_mut(&id) else {
            return;
        };
        if downstream.closing {
            return;
        }
        if downstream.lines.push(data).is_err() {
            return self.close_downstream(id, "line too long".into());
        }
        let mut lines = Vec::new();
        while let Some(line) = downstream.lines.next_line() {
            match line {
                Ok(line) => lines.push(message::parse_line(line)),
                Err(_) => {
                    return self.close_downstream(id, "line too long".into());
                }
            }
        }
        for parsed in lines {
            match parsed {
                Ok(Incoming::Response) => {}
                Ok(Incoming::Request { id: rid, request }) => match request {
                    Ok(request) => {
                        if let Some(d) = self.downstreams.get_mut(&id) {
                            d.invalid_lines = 0;
                        }
                        self.on_request(id, rid, request, now_secs);
                    }
                    Err(error) => self.answer_invalid(id, &rid, &error),
                },
                Err(error) => self.answer_invalid(id, &Value::Null, &error),
            }
        }
    }

    fn answer_invalid(&mut self, id: DownstreamId, rid: &Value, error: &RequestError) {
        let Some(d) = self.downstreams.get_mut(&id) else {
            return;
        };
        d.outbox
            .extend_from_slice(message::error_line(rid, error).as_bytes());
        d.invalid_lines += 1;
        if d.invalid_lines >= MAX_INVALID_LINES {
            self.close_downstream(id, "too many invalid lines".into());
        }
    }

    fn answer(&mut self, id: DownstreamId, rid: &Value, result: Value) {
        if let Some(d) = self.downstreams.get_mut(&id) {
            d.outbox
                .extend_from_slice(message::result_line(rid, result).as_bytes());
        }
    }

    fn on_request(&mut self, id: DownstreamId, rid: Value, request: Request, now_secs: u64) {
        match request {
            Request::Subscribe { .. } => {
                let Some(d) = self.downstreams.get_mut(&id) else {
                    return;
                };
                if d.channel.is_some() || d.pending_subscribe.is_some() {
                    return self.answer_invalid(
                        id,
                        &rid,
                        &RequestError::InvalidParams("already subscribed".into()),
                    );
                }
                d.pending_subscribe = Some(rid);
                match (self.config.aggregate, self.aggregate_channel) {
                    (true, Some(channel_id)) => self.join_channel(id, channel_id),
                    // Answered once the aggregate channel opens.
                    (true, None) => {}
                    (false, _) => {
                        if self.upstream_ready() {
                            self.open_channel(Some(id));
                        }
                    }
                }
            }
            Request::Authorize { username, .. } => {
                if let Some(d) = self.downstreams.get_mut(&id) {
                    d.worker = Some(username);
                }
                self.answer(id, &rid, json!(true));
            }
            Request::Configure { extensions, params } => {
                let mut result = serde_json::Map::new();
                for extension in &extensions {
                    if extension == "version-rolling" {
                        let requested = params
                            .get("version-rolling.mask")
                            .and_then(Value::as_str)
                            .and_then(|m| u32::from_str_radix(m, 16).ok())
                            .unwrap_or(u32::MAX);
                        let mask = requested & self.config.version_mask;
                        if let Some(d) = self.downstreams.get_mut(&id) {
                            d.version_mask = mask;
                        }
                        result.insert("version-rolling".into(), json!(true));
                        result.insert("version-rolling.mask".into(), json!(format!("{mask:08x}")));
                    } else if result.len() < 16 {
                        result.insert(extension.chars().take(64).collect(), json!(false));
                    }
                }
                self.answer(id, &rid, Value::Object(result));
            }
            // The upstream channel sets the difficulty.
            Request::SuggestDifficulty(_) | Request::ExtranonceSubscribe => {
                self.answer(id, &rid, json!(true))
            }
            Request::Submit(submit) => self.on_submit(id, &rid, &submit, now_secs),
        }
    }

    fn on_submit(
        &mut self,
        id: DownstreamId,
        rid: &Value,
        submit: &crate::v1::message::Submit,
        now_secs: u64,
    ) {
        let Some(d) = self.downstreams.get(&id) else {
            return;
        };
        let Some(worker) = d.worker.clone() else {
            return self.answer_invalid(id, rid, &RequestError::Unauthorized);
        };
        let reject = |proxy: &mut Proxy, reason: ShareReject| {
            proxy.events.push_back(ProxyEvent::ShareRejected {
                worker: worker.clone(),
                reason: reason.to_string(),
            });
            if let Some(d) = proxy.downstreams.get_mut(&id) {
                d.outbox.extend_from_slice(
                    message::error_line(rid, &RequestError::Share(reason)).as_bytes(),
                );
            }
        };
        let Some(channel_id) = d.channel else {
            return reject(self, ShareReject::JobNotFound);
        };
        let Some(channel) = self.channels.get(&channel_id) else {
            return reject(self, ShareReject::JobNotFound);
        };
        let Some(&(_, upstream_job)) = d.jobs.iter().find(|(v1, _)| *v1 == submit.job_id) else {
            return reject(self, ShareReject::JobNotFound);
        };
        let Some(active) = channel.jobs.iter().find(|j| j.upstream_id == upstream_job) else {
            return reject(self, ShareReject::Stale);
        };
        let version_mask = if channel.version_rolling_allowed {
            d.version_mask
        } else {
            0
        };
        let version = match submit.version_bits {
            Some(bits) => (active.job.template.version & !version_mask) | (bits & version_mask),
            None => active.job.template.version,
        };
        let local = &d.extranonce1[d.extranonce1.len() - d.local_len..];
        // The easier of the current and the previous target: shares in flight at a SetTarget.
        let target = match channel.previous_target {
            Some(previous) if previous.difficulty() < channel.target.difficulty() => previous,
            _ => channel.target,
        };
        let rules = ShareRules {
            target,
            version_mask,
            extranonce2_len: channel.extranonce_size - d.local_len,
            now_unix: now_secs,
        };
        let submission = Submission {
            extranonce1: &d.extranonce1,
            extranonce2: &submit.extranonce2,
            version,
            ntime: submit.ntime,
            nonce: submit.nonce,
        };
        let valid = match validate_share(&active.job, &submission, &rules) {
            Ok(valid) => valid,
            Err(reason) => return reject(self, reason),
        };
        // A block on a declared job: the proxy has the whole block, for its own node, and the
        // JDS gets the solution too (the pool gets the share as well).
        if valid.is_block() && active.declared {
            let block = active
                .job
                .block(valid.header(), &d.extranonce1, &submit.extranonce2);
            let mut full_extranonce = d.extranonce1.clone();
            full_extranonce.extend_from_slice(&submit.extranonce2);
            let template = &active.job.template;
            let solution = Message::PushSolution {
                extranonce: full_extranonce,
                prev_hash: template.prev_hash,
                nonce: submit.nonce,
                ntime: submit.ntime,
                nbits: template.bits,
                version,
            };
            self.events.push_back(ProxyEvent::BlockFound(block));
            if let Some(declarator) = &mut self.declarator {
                declarator.push_solution(&solution);
            }
        }
        let mut extranonce = Vec::with_capacity(local.len() + submit.extranonce2.len());
        extranonce.extend_from_slice(local);
        extranonce.extend_from_slice(&submit.extranonce2);
        let difficulty = channel.target.difficulty();
        let Some(channel) = self.channels.get_mut(&channel_id) else {
            return;
        };
        let sequence_number = channel.next_sequence;
        channel.next_sequence = channel.next_sequence.wrapping_add(1);
        self.send_upstream(&Message::SubmitSharesExtended {
            channel_id,
            sequence_number,
            job_id: upstream_job,
            nonce: submit.nonce,
            ntime: submit.ntime,
            version,
            extranonce,
        });
        self.events
            .push_back(ProxyEvent::ShareForwarded { worker, difficulty });
        self.answer(id, rid, json!(true));
    }
}
