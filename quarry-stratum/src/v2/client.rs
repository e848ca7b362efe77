//! The miner side of SV2, sans-IO: Noise initiator pinned to the pool's authority key,
//! SetupConnection, one standard channel (header-only mining), jobs and share results.

use std::collections::{HashMap, VecDeque};

use super::message::{flags, Message, Protocol, SetupConnection};
use super::noise::{InitiatorHandshake, Transport, ACT2_LEN};
use super::pool_session::GROUP_CHANNEL_ID;

/// Largest frame accepted from a pool: jobs are small.
const MAX_FRAME: usize = 64 * 1024;
/// Future jobs remembered before their SetNewPrevHash.
const MAX_FUTURE_JOBS: usize = 64;

/// Header-only work for a standard channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderWork {
    /// Job to submit against.
    pub job_id: u32,
    /// Block version (the miner may roll BIP320 bits).
    pub version: u32,
    /// Previous block hash, header byte order.
    pub prev_hash: [u8; 32],
    /// Merkle root, header byte order.
    pub merkle_root: [u8; 32],
    /// Earliest header time.
    pub ntime: u32,
    /// Compact network target.
    pub nbits: u32,
}

/// What the pool told the miner.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The channel is open.
    ChannelOpened {
        /// Channel id.
        channel_id: u32,
        /// Share target, little-endian.
        target: [u8; 32],
    },
    /// Mine this now; earlier work is void.
    Work(HeaderWork),
    /// New share target, little-endian.
    Target([u8; 32]),
    /// Shares up to `last_sequence_number` accepted.
    Accepted {
        /// How many.
        count: u32,
        /// The last one.
        last_sequence_number: u32,
    },
    /// One share refused.
    Rejected {
        /// Its sequence number.
        sequence_number: u32,
        /// The spec's error code.
        code: String,
    },
    /// The pool asks the miner to go elsewhere.
    Reconnect {
        /// Host (empty: same host).
        host: String,
        /// Port.
        port: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshake,
    SetupSent,
    ChannelRequested,
    Mining,
}

/// One connection to an SV2 pool.
pub struct MinerClient {
    handshake: Option<InitiatorHandshake>,
    act2: Vec<u8>,
    transport: Option<Transport>,
    state: State,
    user: String,
    nominal_hash_rate: f32,
    endpoint: (String, u16),
    channel_id: Option<u32>,
    future_jobs: HashMap<u32, (u32, [u8; 32])>,
    current: Option<HeaderWork>,
    next_sequence: u32,
    outbox: Vec<u8>,
    events: VecDeque<ClientEvent>,
    closed: Option<String>,
}

impl std::fmt::Debug for MinerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MinerClient")
            .field("state", &self.state)
            .field("channel_id", &self.channel_id)
            .finish_non_exhaustive()
    }
}

impl MinerClient {
    /// Starts a connection: the act 1 bytes are ready in [`MinerClient::poll_transmit`].
    pub fn new(
        authority_public: &[u8; 32],
        user: &str,
        nominal_hash_rate: f32,
        endpoint: (String, u16),
    ) -> Result<Self, super::noise::NoiseError> {
        let mut handshake = InitiatorHandshake::new(authority_public, MAX_FRAME)?;
        let act1 = handshake.start()?;
        Ok(MinerClient {
            handshake: Some(handshake),
            act2: Vec::with_capacity(ACT2_LEN),
            transport: None,
            state: State::Handshake,
            user: user.to_string(),
            nominal_hash_rate,
            endpoint,
            channel_id: None,
            future_jobs: HashMap::new(),
            current: None,
            next_sequence: 0,
            outbox: act1.to_vec(),
            events: VecDeque::new(),
            closed: None,
        })
    }

    /// Bytes to write.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.outbox.is_empty()).then(|| std::mem::take(&mut self.outbox))
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Why the connection is over.
    pub fn close_reason(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    fn close(&mut self, reason: String) {
        if self.closed.is_none() {
            self.closed = Some(reason);
        }
    }

    fn send(&mut self, message: Message) {
        if let Some(transport) = &mut self.transport {
            transport.encrypt(&message.to_frame_bytes(), &mut self.outbox);
        }
    }

    /// Bytes from the pool; `now_secs` checks the certificate's validity window.
    pub fn handle_bytes(&mut self, mut data: &[u8], now_secs: u32) {
        if self.closed.is_some() {
            return;
        }
        if self.state == State::Handshake {
            let take = (ACT2_LEN - self.act2.len()).min(data.len());
            self.act2.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.act2.len() < ACT2_LEN {
                return;
            }
            let mut act2 = [0u8; ACT2_LEN];
            act2.copy_from_slice(&self.act2);
            let Some(handshake) = self.handshake.take() else {
                return;
            };
            match handshake.finish(&act2, now_secs) {
                Ok(transport) => self.transport = Some(transport),
                Err(e) => return self.close(e.to_string()),
            }
            self.state = State::SetupSent;
            let (host, port) = self.endpoint.clone();
            self.send(Message::SetupConnection(SetupConnection {
                protocol: Protocol::Mining,
                min_version: 2,
                max_version: 2,
                flags: flags::REQUIRES_STANDARD_JOBS | flags::REQUIRES_VERSION_ROLLING,
                endpoint_host: host,
                endpoint_port: port,
                vendor: "quarry".into(),
                hardware_version: "cpu".into(),
                firmware: env!("CARGO_PKG_VERSION").into(),
                device_id: String::new(),
            }));
        }
        let Some(transport) = &mut self.transport else {
            return;
        };
        transport.push(data);
        while self.closed.is_none() {
            let next = match &mut self.transport {
                Some(transport) => transport.next_frame(),
                None => Ok(None),
            };
            match next {
                Ok(Some(frame)) => match Message::decode(&frame) {
                    Ok(message) => self.handle_message(message),
                    Err(super::message::DecodeError::UnknownExtension(_)) => {}
                    Err(e) => self.close(format!("bad frame from pool: {e}")),
                },
                Ok(None) => break,
                Err(e) => self.close(e.to_string()),
            }
        }
    }

    fn ours(&self, channel_id: u32) -> bool {
        Some(channel_id) == self.channel_id || channel_id == GROUP_CHANNEL_ID
    }

    fn handle_message(&mut self, message: Message) {
        match message {
            Message::SetupConnectionSuccess { .. } if self.state == State::SetupSent => {
                self.state = State::ChannelRequested;
                let user = self.user.clone();
                self.send(Message::OpenStandardMiningChannel {
                    request_id: 1,
                    user_identity: user,
                    nominal_hash_rate: self.nominal_hash_rate,
                    max_target: [0xff; 32],
                });
            }
            Message::SetupConnectionError { error_code, flags } => self.close(format!(
                "pool refused the connection: {error_code} (flags {flags:#x})"
            )),
            Message::OpenStandardMiningChannelSuccess {
                channel_id, target, ..
            } if self.state == State::ChannelRequested => {
                self.state = State::Mining;
                self.channel_id = Some(channel_id);
                self.events
                    .push_back(ClientEvent::ChannelOpened { channel_id, target });
            }
            Message::OpenMiningChannelError { error_code, .. } => {
                self.close(format!("pool refused the channel: {error_code}"))
            }
            Message::NewMiningJob {
                channel_id,
                job_id,
                min_ntime,
                version,
                merkle_root,
            } if self.ours(channel_id) => match (min_ntime, &self.current) {
                (Some(ntime), Some(current)) => {
                    let work = HeaderWork {
                        job_id,
                        version,
                        merkle_root,
                        ntime,
                        ..current.clone()
                    };
                    self.current = Some(work.clone());
                    self.events.push_back(ClientEvent::Work(work));
                }
                _ => {
                    if self.future_jobs.len() >= MAX_FUTURE_JOBS {
                        self.future_jobs.clear();
                    }
                    self.future_jobs.insert(job_id, (version, merkle_root));
                }
            },
            Message::SetNewPrevHash {
                channel_id,
                job_id,
                prev_hash,
                min_ntime,
                nbits,
            } if self.ours(channel_id) => {
                let Some((version, merkle_root)) = self.future_jobs.remove(&job_id) else {
                    return self.close(format!("SetNewPrevHash for unknown job {job_id}"));
                };
                self.future_jobs.clear();
                let work = HeaderWork {
                    job_id,
                    version,
                    prev_hash,
                    merkle_root,
                    ntime: min_ntime,
                    nbits,
                };
                self.current = Some(work.clone());
                self.events.push_back(ClientEvent::Work(work));
            }
            Message::SetTarget {
                channel_id,
                maximum_target,
            } if self.ours(channel_id) => {
                self.events.push_back(ClientEvent::Target(maximum_target))
            }
            Message::SubmitSharesSuccess {
                new_submits_accepted_count,
                last_sequence_number,
                ..
            } => self.events.push_back(ClientEvent::Accepted {
                count: new_submits_accepted_count,
                last_sequence_number,
            }),
            Message::SubmitSharesError {
                sequence_number,
                error_code,
                ..
            } => self.events.push_back(ClientEvent::Rejected {
                sequence_number,
                code: error_code,
            }),
            Message::Reconnect { new_host, new_port } => {
                self.events.push_back(ClientEvent::Reconnect {
                    host: new_host,
                    port: new_port,
                })
            }
            Message::CloseChannel { reason_code, .. } => {
                self.close(format!("pool closed the channel: {reason_code}"))
            }
            // Group membership, endpoint changes and the like need nothing from a CPU miner.
            _ => {}
        }
    }

    /// Submits a share on the open channel; returns its sequence number.
    pub fn submit(&mut self, job_id: u32, nonce: u32, ntime: u32, version: u32) -> Option<u32> {
        let channel_id = self.channel_id?;
        let sequence_number = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        self.send(Message::SubmitSharesStandard {
            channel_id,
            sequence_number,
            job_id,
            nonce,
            ntime,
            version,
        });
        Some(sequence_number)
    }
}
