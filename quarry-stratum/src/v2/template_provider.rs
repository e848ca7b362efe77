//! The Template Provider side of the SV2 Template Distribution Protocol, sans-IO: one
//! connection from an SV2 pool (or job declarator), fed the node's templates.
//!
//! Noise responder → SetupConnection (protocol 2) → CoinbaseOutputConstraints → templates.
//! A new tip goes out as `NewTemplate { future_template: true }` followed by `SetNewPrevHash`;
//! a refresh on the same tip as `NewTemplate { future_template: false }`. The pool's
//! `SubmitSolution` comes back as a complete block for the runtime to submit.
//!
//! The templates come from `getblocktemplate`, which has already reserved room for the coinbase
//! (Bitcoin Core: 4,000 weight units and 400 sigops, `-blockreservedweight`). The pool's
//! constraints are checked against that reserve and reported when they do not fit, because a
//! block whose coinbase overflows the reserve is invalid.

use crate::clock::Now;
use std::collections::VecDeque;
use std::sync::Arc;

use bitcoin::consensus::encode::deserialize_partial;
use bitcoin::consensus::Encodable;
use bitcoin::hashes::Hash as _;
use bitcoin::script::Builder;
use bitcoin::Transaction;
use quarry_work::coinbase::{write_compact_size, write_output};
use quarry_work::hash::{sha256d_80, Hash32};
use quarry_work::job::header_bytes;
use quarry_work::merkle;
use quarry_work::template::WorkTemplate;

use super::keys::AuthorityKeypair;
use super::message::{DecodeError, Message, Protocol, SetupConnection};
use super::noise::{ResponderHandshake, ResponderLink};
use crate::event::FoundBlock;

/// Templates remembered for `RequestTransactionData` and late `SubmitSolution`s.
const KEPT_TEMPLATES: usize = 32;
/// Coinbase transaction version offered in templates.
const COINBASE_TX_VERSION: u32 = 2;
/// Weight of a coinbase before the pool's outputs: version, marker and flag, one null input with
/// a full 100-byte scriptSig, output count, lock time and the witness reserved value.
const COINBASE_BASE_WEIGHT: u32 = 4 * (4 + 1 + 36 + 1 + 100 + 4 + 3 + 4) + (2 + 1 + 1 + 32);

/// Settings for the Template Provider.
#[derive(Debug, Clone)]
pub struct TpConfig {
    /// Signs each connection's static key; pools pin its public half.
    pub authority: AuthorityKeypair,
    /// How long a certificate is valid from the handshake.
    pub certificate_validity_secs: u32,
    /// Largest frame accepted from a pool: `SubmitSolution` carries a coinbase of up to 64 KiB.
    pub max_frame: usize,
    /// Block weight the node keeps free for the coinbase (Core: `-blockreservedweight`, 4,000).
    pub reserved_weight: u32,
    /// Sigop cost the node keeps free for the coinbase (Core: 400).
    pub reserved_sigops: u16,
    /// How long a client has to finish SetupConnection.
    pub setup_timeout_ms: u64,
}

impl TpConfig {
    /// Defaults around an authority key.
    pub fn new(authority: AuthorityKeypair) -> Self {
        TpConfig {
            authority,
            certificate_validity_secs: 3600,
            max_frame: 64 * 1024 + 64,
            reserved_weight: 4000,
            reserved_sigops: 400,
            setup_timeout_ms: 10_000,
        }
    }
}

/// What the runtime must act on.
#[derive(Debug, Clone)]
pub enum TpEvent {
    /// The client stated its coinbase needs; `fits` is false when the node's reserve is short.
    Constraints {
        /// Bytes of outputs the pool adds.
        max_additional_size: u32,
        /// Sigop cost the pool adds.
        max_additional_sigops: u16,
        /// Whether the whole coinbase fits in the reserve.
        fits: bool,
    },
    /// A solution that meets the network target: submit `block` to the node.
    Block(FoundBlock),
    /// A solution refused before reaching the node.
    Refused {
        /// The template it named.
        template_id: u64,
        /// Why.
        reason: String,
    },
}

enum Phase {
    Handshake,
    Setup,
    /// Set up; waiting for CoinbaseOutputConstraints before sending any template.
    Constraints,
    Serving,
}

/// One connection from an SV2 pool to the Template Provider.
pub struct TpSession {
    config: Arc<TpConfig>,
    phase: Phase,
    /// `None` only when the responder could not be built (the session is closed then).
    link: Option<ResponderLink>,
    client: String,
    /// Newest last.
    templates: VecDeque<Arc<WorkTemplate>>,
    /// The tip announced with the last SetNewPrevHash.
    announced_tip: Option<Hash32>,
    /// The newest template already sent.
    sent_id: Option<u64>,
    connected_ms: u64,
    outbox: Vec<u8>,
    events: VecDeque<TpEvent>,
    closed: Option<String>,
}

impl std::fmt::Debug for TpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpSession")
            .field("client", &self.client)
            .field("sent_id", &self.sent_id)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl TpSession {
    /// A connection whose first bytes will be the Noise act 1.
    pub fn new(config: Arc<TpConfig>, now: Now) -> Self {
        let (link, closed) = match ResponderHandshake::new(
            &config.authority,
            config.certificate_validity_secs,
            config.max_frame,
        ) {
            Ok(responder) => (Some(ResponderLink::new(responder)), None),
            Err(e) => (None, Some(e.to_string())),
        };
        TpSession {
            config,
            phase: Phase::Handshake,
            link,
            client: String::new(),
            templates: VecDeque::new(),
            announced_tip: None,
            sent_id: None,
            connected_ms: now.mono_ms,
            outbox: Vec::new(),
            events: VecDeque::new(),
            closed,
        }
    }

    /// Bytes to write, in order.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.outbox.is_empty()).then(|| std::mem::take(&mut self.outbox))
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<TpEvent> {
        self.events.pop_front()
    }

    /// Why the connection must close, once it must.
    pub fn close_reason(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// When [`TpSession::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.phase {
            Phase::Handshake | Phase::Setup if self.closed.is_none() => Some(
                self.connected_ms
                    .saturating_add(self.config.setup_timeout_ms),
            ),
            _ => None,
        }
    }

    /// The time has come: a client still not set up is dropped.
    pub fn handle_timeout(&mut self, now: Now) {
        if matches!(self.poll_timeout(), Some(due) if now.mono_ms >= due) {
            self.close("SetupConnection timed out".into());
        }
    }

    /// The server is going away: close after what is queued.
    pub fn shut_down(&mut self) {
        self.close("the template provider is shutting down".into());
    }

    fn close(&mut self, reason: String) {
        if self.closed.is_none() {
            self.closed = Some(reason);
        }
    }

    fn send(&mut self, message: &Message) {
        if let Some(link) = &mut self.link {
            link.encrypt(&message.to_frame_bytes(), &mut self.outbox);
        }
    }

    /// A template from the node (the newest one; older ones are remembered for a while).
    pub fn handle_template(&mut self, template: Arc<WorkTemplate>) {
        if self.templates.back().map(|t| t.id) == Some(template.id) {
            return;
        }
        if self.templates.len() == KEPT_TEMPLATES {
            self.templates.pop_front();
        }
        self.templates.push_back(template);
        if matches!(self.phase, Phase::Serving) {
            self.send_newest();
        }
    }

    fn send_newest(&mut self) {
        let Some(template) = self.templates.back().cloned() else {
            return;
        };
        if self.sent_id == Some(template.id) || self.closed.is_some() {
            return;
        }
        self.sent_id = Some(template.id);
        let new_tip = self.announced_tip != Some(template.prev_hash);
        self.send(&new_template_message(&template, new_tip));
        if new_tip {
            self.announced_tip = Some(template.prev_hash);
            self.send(&Message::TemplateSetNewPrevHash {
                template_id: template.id,
                prev_hash: template.prev_hash,
                header_timestamp: template.curtime.max(template.mintime),
                n_bits: template.bits,
                target: template.network_target.to_le_bytes(),
            });
        }
    }

    /// Bytes from the client.
    pub fn handle_bytes(&mut self, data: &[u8], now: Now) {
        if self.closed.is_some() {
            return;
        }
        let Some(link) = &mut self.link else {
            return;
        };
        if let Err(e) = link.push(data, now.unix_secs() as u32, &mut self.outbox) {
            return self.close(e.to_string());
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
                Ok(Some(frame)) => match Message::decode(&frame) {
                    Ok(message) => self.handle_message(message, now),
                    Err(DecodeError::UnknownExtension(_)) => {}
                    Err(e) => self.close(format!("bad frame: {e}")),
                },
                Ok(None) => break,
                Err(e) => self.close(e.to_string()),
            }
        }
    }

    fn handle_message(&mut self, message: Message, now: Now) {
        match (&self.phase, message) {
            (Phase::Setup, Message::SetupConnection(setup)) => self.on_setup(&setup),
            (
                Phase::Constraints | Phase::Serving,
                Message::CoinbaseOutputConstraints {
                    coinbase_output_max_additional_size,
                    coinbase_output_max_additional_sigops,
                },
            ) => {
                let weight = COINBASE_BASE_WEIGHT
                    .saturating_add(coinbase_output_max_additional_size.saturating_mul(4));
                let fits = weight <= self.config.reserved_weight
                    && coinbase_output_max_additional_sigops <= self.config.reserved_sigops;
                self.events.push_back(TpEvent::Constraints {
                    max_additional_size: coinbase_output_max_additional_size,
                    max_additional_sigops: coinbase_output_max_additional_sigops,
                    fits,
                });
                self.phase = Phase::Serving;
                self.send_newest();
            }
            (Phase::Serving, Message::RequestTransactionData { template_id }) => {
                self.on_request_transaction_data(template_id)
            }
            (
                Phase::Constraints | Phase::Serving,
                Message::SubmitSolution {
                    template_id,
                    version,
                    header_timestamp,
                    header_nonce,
                    coinbase_tx,
                },
            ) => self.on_solution(
                template_id,
                version,
                header_timestamp,
                header_nonce,
                &coinbase_tx,
                now,
            ),
            (_, other) => self.close(format!(
                "unexpected message type 0x{:02x} from a template client",
                other.msg_type()
            )),
        }
    }

    fn on_setup(&mut self, setup: &SetupConnection) {
        let error = |code: &str| Message::SetupConnectionError {
            flags: 0,
            error_code: code.to_string(),
        };
        if setup.protocol != Protocol::TemplateDistribution {
            self.send(&error("unsupported-protocol"));
            return self.close(format!("unsupported protocol {:?}", setup.protocol));
        }
        if !(setup.min_version..=setup.max_version).contains(&2) {
            self.send(&error("protocol-version-mismatch"));
            return self.close("protocol version mismatch".into());
        }
        // The Template Distribution Protocol defines no flags; unknown ones are not errors.
        self.client = format!("{}:{}", setup.endpoint_host, setup.endpoint_port);
        self.send(&Message::SetupConnectionSuccess {
            used_version: 2,
            flags: 0,
        });
        self.phase = Phase::Constraints;
    }

    fn find(&self, template_id: u64) -> Option<&Arc<WorkTemplate>> {
        self.templates.iter().rev().find(|t| t.id == template_id)
    }

    fn on_request_transaction_data(&mut self, template_id: u64) {
        let answer = match self.find(template_id) {
            None => Message::RequestTransactionDataError {
                template_id,
                error_code: "template-id-not-found".into(),
            },
            Some(t) if Some(t.prev_hash) != self.announced_tip => {
                Message::RequestTransactionDataError {
                    template_id,
                    error_code: "stale-template-id".into(),
                }
            }
            Some(t) => match split_transactions(&t.transactions, t.tx_count) {
                Some(transaction_list) => Message::RequestTransactionDataSuccess {
                    template_id,
                    // The witness reserved value: what a verifier needs beside the transactions.
                    excess_data: if t.witness_commitment.is_some() {
                        vec![0; 32]
                    } else {
                        Vec::new()
                    },
                    transaction_list,
                },
                None => Message::RequestTransactionDataError {
                    template_id,
                    error_code: "template-id-not-found".into(),
                },
            },
        };
        self.send(&answer);
    }

    fn on_solution(
        &mut self,
        template_id: u64,
        version: u32,
        ntime: u32,
        nonce: u32,
        coinbase_tx: &[u8],
        now: Now,
    ) {
        let refuse = |reason: String| TpEvent::Refused {
            template_id,
            reason,
        };
        let Some(template) = self.find(template_id).cloned() else {
            return self
                .events
                .push_back(refuse("unknown or expired template id".into()));
        };
        let coinbase = match parse_coinbase(coinbase_tx) {
            Ok(coinbase) => coinbase,
            Err(reason) => return self.events.push_back(refuse(reason)),
        };
        let txid = coinbase.compute_txid().to_byte_array();
        let merkle_root = merkle::root_from_branch(&txid, &template.merkle_branch);
        let header = header_bytes(
            version,
            &template.prev_hash,
            &merkle_root,
            ntime,
            template.bits,
            nonce,
        );
        let hash = sha256d_80(&header);
        if !template.network_target.is_met_by(&hash) {
            return self.events.push_back(refuse(format!(
                "block hash {} does not meet the network target",
                quarry_work::hash::to_display_hex(&hash)
            )));
        }
        let mut block =
            Vec::with_capacity(header.len() + 9 + coinbase_tx.len() + template.transactions.len());
        block.extend_from_slice(&header);
        write_compact_size(template.tx_count as u64 + 1, &mut block);
        // The witness goes in only where the block commits to it; a chain without segwit (or a
        // template without a commitment) needs the legacy serialization.
        let with_witness =
            template.witness_commitment.is_some() && !coinbase.input[0].witness.is_empty();
        let encoded = if with_witness {
            coinbase.consensus_encode(&mut block)
        } else {
            strip_witness(coinbase).consensus_encode(&mut block)
        };
        if let Err(e) = encoded {
            return self.events.push_back(refuse(e.to_string()));
        }
        block.extend_from_slice(&template.transactions);
        self.events.push_back(TpEvent::Block(FoundBlock {
            chain: crate::accept::BITCOIN,
            height: template.height,
            hash,
            block,
            worker: format!("sv2-tp-client {}", self.client),
            address: String::new(),
            reward: template.coinbase_value,
            network_difficulty: template.network_target.difficulty(),
            time_ms: now.unix_ms,
            payouts: None,
        }));
    }
}

fn strip_witness(mut tx: Transaction) -> Transaction {
    for input in &mut tx.input {
        input.witness.clear();
    }
    tx
}

/// A coinbase from the wire: one transaction, nothing after it, spending the null outpoint.
fn parse_coinbase(bytes: &[u8]) -> Result<Transaction, String> {
    let (tx, used): (Transaction, usize) =
        deserialize_partial(bytes).map_err(|e| format!("coinbase does not parse: {e}"))?;
    if used != bytes.len() {
        return Err(format!("{} bytes after the coinbase", bytes.len() - used));
    }
    if !tx.is_coinbase() {
        return Err("first transaction is not a coinbase".into());
    }
    Ok(tx)
}

/// The template's transactions one by one (the template keeps them back to back).
fn split_transactions(mut bytes: &[u8], count: usize) -> Option<Vec<Vec<u8>>> {
    let mut list = Vec::with_capacity(count);
    while !bytes.is_empty() {
        let (_, used): (Transaction, usize) = deserialize_partial(bytes).ok()?;
        list.push(bytes[..used].to_vec());
        bytes = &bytes[used..];
    }
    (list.len() == count).then_some(list)
}

/// `NewTemplate` for a template: the coinbase prefix is the BIP34 height (and the node's
/// `coinbaseaux`); the only output the template needs is the witness commitment.
pub fn new_template_message(template: &WorkTemplate, future: bool) -> Message {
    let height = i64::try_from(template.height).unwrap_or(i64::MAX);
    let mut coinbase_prefix = Builder::new().push_int(height).into_bytes();
    coinbase_prefix.extend_from_slice(&template.coinbase_aux);
    let mut outputs = Vec::new();
    if let Some(commitment) = &template.witness_commitment {
        write_output(0, commitment, &mut outputs);
    }
    Message::NewTemplate {
        template_id: template.id,
        future_template: future,
        version: template.version,
        coinbase_tx_version: COINBASE_TX_VERSION,
        coinbase_prefix,
        coinbase_tx_input_sequence: u32::MAX,
        coinbase_tx_value_remaining: template.coinbase_value,
        coinbase_tx_outputs_count: u32::from(template.witness_commitment.is_some()),
        coinbase_tx_outputs: outputs,
        coinbase_tx_locktime: 0,
        merkle_path: template.merkle_branch.clone(),
    }
}
