//! Job Declaration, miner side (the "JDC" of sv2-spec §6), sans-IO: one Noise connection to a
//! pool's JDS. It asks for tokens, builds a coinbase for each of the miner's own templates
//! (paying what the pool requires, with room for the mining channel's extranonce), declares
//! the template's transactions, sends any the pool is missing, and reports each accepted
//! declaration as a [`CustomWork`], ready for `SetCustomMiningJob` on the mining connection.
//! Any refusal other than a stale tip is reported as [`JdEvent::Failed`]: the caller falls
//! back to the pool's own jobs.
//!
//! Two modes, as SRI's JDC has them: full template (the transactions are declared, the pool
//! checks the block) and coinbase only (the allocated token goes straight into
//! `SetCustomMiningJob`; the pool never sees the transactions, and the miner's own node must
//! publish its blocks).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bitcoin::consensus::{deserialize, serialize};
use bitcoin::{Amount, ScriptBuf, TxOut};
use quarry_work::coinbase::write_compact_size;
use quarry_work::template::WorkTemplate;

use super::declaration::{template_transactions, DeclaredCoinbase};
use super::message::{DecodeError, Message, Protocol, SetupConnection};
use super::noise::{InitiatorHandshake, NoiseError, Transport, ACT2_LEN};

/// Largest frame accepted from a JDS (its answers are small).
const MAX_FRAME: usize = 1 << 20;
/// Tokens kept in hand, so that a new template never waits for one.
const TOKENS_AHEAD: usize = 2;
/// Declarations awaiting an answer.
const MAX_PENDING: usize = 16;
/// Tag in every coinbase this declarator builds.
const TAG: &[u8] = b"/quarry-jd/";
/// `DECLARE_TX_DATA`: the miner declares its transactions (full-template mode).
const DECLARE_TX_DATA: u32 = 1;

/// What the miner declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JdMode {
    /// The coinbase and every transaction (DECLARE_TX_DATA).
    FullTemplate,
    /// The coinbase only.
    CoinbaseOnly,
}

/// A declaration the pool accepted (coinbase only: a job the pool need not see first).
#[derive(Debug, Clone)]
pub struct CustomWork {
    /// The token for `SetCustomMiningJob`.
    pub token: Vec<u8>,
    /// The template it mines, with its transactions.
    pub template: Arc<WorkTemplate>,
    /// Its coinbase.
    pub coinbase: DeclaredCoinbase,
}

impl CustomWork {
    /// `SetCustomMiningJob` for this work on `channel_id`.
    pub fn set_custom_mining_job(&self, channel_id: u32, request_id: u32) -> Message {
        let t = &self.template;
        Message::SetCustomMiningJob {
            channel_id,
            request_id,
            token: self.token.clone(),
            version: t.version,
            prev_hash: t.prev_hash,
            min_ntime: t.curtime,
            nbits: t.bits,
            coinbase_tx_version: self.coinbase.tx_version,
            coinbase_prefix: self.coinbase.script_prefix.clone(),
            coinbase_tx_input_n_sequence: self.coinbase.sequence,
            coinbase_tx_outputs: self.coinbase.outputs.clone(),
            coinbase_tx_locktime: self.coinbase.locktime,
            merkle_path: t.merkle_branch.clone(),
        }
    }
}

/// What the declarator reports.
#[derive(Debug, Clone)]
pub enum JdEvent {
    /// Set up: declarations may start.
    Ready,
    /// Work to mine, under the request id of its declaration.
    Declared(u32, Box<CustomWork>),
    /// The JDS called a declaration stale (the tip moved on): routine, the next template is
    /// declared anew, but until then there is no declared work.
    Stale(u32),
    /// The JDS refused or failed: mine the pool's jobs instead.
    Failed(String),
}

enum Phase {
    Handshake(Option<InitiatorHandshake>, Vec<u8>),
    Setup,
    Ready,
    Failed,
}

struct Pending {
    work: CustomWork,
}

/// One connection to a JDS.
pub struct JobDeclarator {
    mode: JdMode,
    user_identity: String,
    endpoint: (String, u16),
    phase: Phase,
    transport: Option<Transport>,
    out: Vec<u8>,
    /// Tokens and the outputs each requires, oldest first.
    tokens: VecDeque<(Vec<u8>, Vec<u8>)>,
    tokens_asked: usize,
    next_request_id: u32,
    pending: HashMap<u32, Pending>,
    /// A template that came while no token was in hand, with its extranonce size.
    waiting: Option<(Arc<WorkTemplate>, usize)>,
    events: VecDeque<JdEvent>,
}

impl std::fmt::Debug for JobDeclarator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobDeclarator")
            .field("mode", &self.mode)
            .field("tokens", &self.tokens.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl JobDeclarator {
    /// A declarator on a new connection to a JDS whose authority key is `authority_public`.
    ///
    /// # Errors
    /// The Noise initiator could not start.
    pub fn connect(
        authority_public: &[u8; 32],
        endpoint: (String, u16),
        user_identity: String,
        mode: JdMode,
    ) -> Result<Self, NoiseError> {
        let mut handshake = InitiatorHandshake::new(authority_public, MAX_FRAME)?;
        let out = handshake.start()?.to_vec();
        Ok(JobDeclarator {
            mode,
            user_identity,
            endpoint,
            phase: Phase::Handshake(Some(handshake), Vec::with_capacity(ACT2_LEN)),
            transport: None,
            out,
            tokens: VecDeque::new(),
            tokens_asked: 0,
            next_request_id: 1,
            pending: HashMap::new(),
            waiting: None,
            events: VecDeque::new(),
        })
    }

    /// Whether a declaration of template `template_id` is waiting for a token or the JDS.
    pub fn declaring(&self, template_id: u64) -> bool {
        self.pending
            .values()
            .any(|p| p.work.template.id == template_id)
            || self
                .waiting
                .as_ref()
                .is_some_and(|(t, _)| t.id == template_id)
    }

    /// Whether declarations are being made (set up, not failed).
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<JdEvent> {
        self.events.pop_front()
    }

    /// Bytes for the JDS.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.out.is_empty()).then(|| std::mem::take(&mut self.out))
    }

    fn send(&mut self, message: &Message) {
        if let Some(transport) = &mut self.transport {
            transport.encrypt(&message.to_frame_bytes(), &mut self.out);
        }
    }

    fn fail(&mut self, reason: String) {
        if !matches!(self.phase, Phase::Failed) {
            self.phase = Phase::Failed;
            self.events.push_back(JdEvent::Failed(reason));
        }
    }

    /// A block found on declared work (`PushSolution`), so the pool has it even before the
    /// share arrives.
    pub fn push_solution(&mut self, solution: &Message) {
        if self.is_ready() {
            self.send(solution);
        }
    }

    /// The connection is gone.
    pub fn lost(&mut self, reason: &str) {
        self.fail(format!("JDS connection lost: {reason}"));
    }

    /// Bytes from the JDS; `now_secs` checks its certificate.
    pub fn handle_bytes(&mut self, mut data: &[u8], now_secs: u32) {
        if let Phase::Handshake(handshake, act2) = &mut self.phase {
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
                Err(e) => return self.fail(format!("JDS handshake: {e}")),
            }
            self.phase = Phase::Setup;
            let (host, port) = self.endpoint.clone();
            let flags = match self.mode {
                JdMode::FullTemplate => DECLARE_TX_DATA,
                JdMode::CoinbaseOnly => 0,
            };
            self.send(&Message::SetupConnection(SetupConnection {
                protocol: Protocol::JobDeclaration,
                min_version: 2,
                max_version: 2,
                flags,
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
        while !matches!(self.phase, Phase::Failed) {
            let next = match &mut self.transport {
                Some(transport) => transport.next_frame(),
                None => return,
            };
            match next {
                Ok(Some(frame)) => match Message::decode(&frame) {
                    Ok(message) => self.on_message(message),
                    Err(DecodeError::UnknownExtension(_)) => {}
                    Err(e) => return self.fail(format!("bad frame from the JDS: {e}")),
                },
                Ok(None) => return,
                Err(e) => return self.fail(e.to_string()),
            }
        }
    }

    fn ask_tokens(&mut self) {
        while self.tokens.len() + self.tokens_asked < TOKENS_AHEAD {
            let request_id = self.request_id();
            self.tokens_asked += 1;
            let user_identifier = self.user_identity.clone();
            self.send(&Message::AllocateMiningJobToken {
                user_identifier,
                request_id,
            });
        }
    }

    fn request_id(&mut self) -> u32 {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        id
    }

    fn on_message(&mut self, message: Message) {
        match message {
            Message::SetupConnectionSuccess { .. } if matches!(self.phase, Phase::Setup) => {
                self.phase = Phase::Ready;
                self.events.push_back(JdEvent::Ready);
                self.ask_tokens();
            }
            Message::SetupConnectionError { error_code, .. } => {
                self.fail(format!("the JDS refused the connection: {error_code}"))
            }
            Message::AllocateMiningJobTokenSuccess {
                mining_job_token,
                coinbase_outputs,
                ..
            } => {
                self.tokens_asked = self.tokens_asked.saturating_sub(1);
                self.tokens.push_back((mining_job_token, coinbase_outputs));
                if let Some((template, extranonce_len)) = self.waiting.take() {
                    self.declare(template, extranonce_len);
                }
            }
            Message::ProvideMissingTransactions {
                request_id,
                unknown_tx_position_list,
            } => {
                let Some(pending) = self.pending.get(&request_id) else {
                    return;
                };
                let txs = template_transactions(&pending.work.template);
                let transaction_list = unknown_tx_position_list
                    .iter()
                    .filter_map(|at| txs.get(usize::from(*at)).map(|tx| tx.raw.to_vec()))
                    .collect();
                self.send(&Message::ProvideMissingTransactionsSuccess {
                    request_id,
                    transaction_list,
                });
            }
            Message::DeclareMiningJobSuccess {
                request_id,
                new_mining_job_token,
            } => {
                if let Some(mut pending) = self.pending.remove(&request_id) {
                    pending.work.token = new_mining_job_token;
                    self.events
                        .push_back(JdEvent::Declared(request_id, Box::new(pending.work)));
                }
            }
            Message::DeclareMiningJobError {
                request_id,
                error_code,
                error_details,
            } => {
                self.pending.remove(&request_id);
                // A tip that moved on is routine: the next template is declared anew.
                if error_code == "stale-chain-tip" {
                    self.events.push_back(JdEvent::Stale(request_id));
                } else {
                    self.fail(format!(
                        "the JDS refused a declared job: {error_code} ({})",
                        String::from_utf8_lossy(&error_details)
                    ));
                }
            }
            other => self.fail(format!(
                "unexpected message type 0x{:02x} from the JDS",
                other.msg_type()
            )),
        }
    }

    /// Declares a job on `template` whose coinbase leaves `extranonce_len` bytes of extranonce
    /// (the mining channel's prefix and the miner's part).
    pub fn declare(&mut self, template: Arc<WorkTemplate>, extranonce_len: usize) {
        if !self.is_ready() {
            return;
        }
        let Some((token, required)) = self.tokens.pop_front() else {
            self.waiting = Some((template, extranonce_len));
            return self.ask_tokens();
        };
        self.ask_tokens();
        let coinbase = match build_coinbase(&template, &required, extranonce_len) {
            Ok(coinbase) => coinbase,
            Err(e) => return self.fail(e),
        };
        let request_id = self.request_id();
        let work = CustomWork {
            token: token.clone(),
            template: Arc::clone(&template),
            coinbase,
        };
        if self.mode == JdMode::CoinbaseOnly {
            self.events
                .push_back(JdEvent::Declared(request_id, Box::new(work)));
            return;
        }
        let (prefix, suffix) = declared_bytes(&work.coinbase);
        let wtxid_list = template_transactions(&template)
            .iter()
            .map(|tx| tx.wtxid)
            .collect();
        self.send(&Message::DeclareMiningJob {
            request_id,
            mining_job_token: token,
            version: template.version,
            coinbase_tx_prefix: prefix,
            coinbase_tx_suffix: suffix,
            wtxid_list,
            excess_data: Vec::new(),
        });
        if self.pending.len() >= MAX_PENDING {
            // The JDS answers in order: the oldest unanswered is not coming.
            if let Some(oldest) = self.pending.keys().min().copied() {
                self.pending.remove(&oldest);
            }
        }
        self.pending.insert(request_id, Pending { work });
    }
}

/// The coinbase of a declared job: the BIP34 height, our tag and room for the extranonce in
/// the scriptSig; the pool's outputs with the whole value in the first; the witness commitment.
///
/// # Errors
/// Outputs from the pool that do not decode, or none at all.
pub fn build_coinbase(
    template: &WorkTemplate,
    required: &[u8],
    extranonce_len: usize,
) -> Result<DeclaredCoinbase, String> {
    let mut outputs: Vec<TxOut> = deserialize(required)
        .map_err(|e| format!("the pool's required coinbase outputs do not decode: {e}"))?;
    let Some(first) = outputs.first_mut() else {
        return Err("the pool requires no coinbase output".into());
    };
    first.value = Amount::from_sat(template.coinbase_value);
    if let Some(commitment) = &template.witness_commitment {
        outputs.push(TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::from_bytes(commitment.clone()),
        });
    }
    let height = bitcoin::script::Builder::new()
        .push_int(i64::try_from(template.height).unwrap_or(i64::MAX))
        .into_script();
    let mut script_prefix = height.into_bytes();
    script_prefix.push(TAG.len() as u8);
    script_prefix.extend_from_slice(TAG);
    script_prefix.push(extranonce_len as u8); // the push opcode of the extranonce
    Ok(DeclaredCoinbase {
        tx_version: 2,
        script_prefix,
        extranonce_len,
        sequence: u32::MAX,
        outputs: serialize(&outputs),
        locktime: 0,
        segwit: template.witness_commitment.is_some(),
        value: template.coinbase_value,
    })
}

/// The coinbase as DeclareMiningJob carries it: serialized with its witness, split around the
/// extranonce.
pub fn declared_bytes(coinbase: &DeclaredCoinbase) -> (Vec<u8>, Vec<u8>) {
    let mut prefix = Vec::with_capacity(48 + coinbase.script_prefix.len());
    prefix.extend_from_slice(&coinbase.tx_version.to_le_bytes());
    if coinbase.segwit {
        prefix.extend_from_slice(&[0x00, 0x01]);
    }
    prefix.push(1);
    prefix.extend_from_slice(&[0; 32]);
    prefix.extend_from_slice(&u32::MAX.to_le_bytes());
    write_compact_size(
        (coinbase.script_prefix.len() + coinbase.extranonce_len) as u64,
        &mut prefix,
    );
    prefix.extend_from_slice(&coinbase.script_prefix);
    let mut suffix = Vec::with_capacity(48 + coinbase.outputs.len());
    suffix.extend_from_slice(&coinbase.sequence.to_le_bytes());
    suffix.extend_from_slice(&coinbase.outputs);
    if coinbase.segwit {
        suffix.extend_from_slice(&[1, 32]);
        suffix.extend_from_slice(&[0; 32]);
    }
    suffix.extend_from_slice(&coinbase.locktime.to_le_bytes());
    (prefix, suffix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{template, REGTEST_BITS};

    #[test]
    fn the_declared_coinbase_is_what_the_jds_takes_apart_and_pays_only_the_pool() {
        let template = template(1, 7, REGTEST_BITS);
        let pool_script = vec![
            0x00, 0x14, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
        ];
        let required = serialize(&vec![TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::from_bytes(pool_script.clone()),
        }]);
        let coinbase = build_coinbase(&template, &required, 12).expect("coinbase");
        let (prefix, suffix) = declared_bytes(&coinbase);
        let (parsed, _) = DeclaredCoinbase::parse(&prefix, &suffix).expect("the JDS parses it");
        assert_eq!(parsed, coinbase);
        parsed
            .pays_only(&pool_script)
            .expect("everything to the pool");
        assert_eq!(parsed.value, template.coinbase_value);
        assert!(parsed.pays_only(&[0x51]).is_err());
        // No output required is no coinbase at all.
        assert!(build_coinbase(&template, &serialize(&Vec::<TxOut>::new()), 12).is_err());
        assert!(build_coinbase(&template, b"garbage", 12).is_err());
    }
}
