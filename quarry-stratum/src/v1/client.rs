//! The miner side of Stratum V1, sans-IO: `quarry mine`, `quarry loadgen` and the tests speak V1
//! through this one state machine. Bytes from the pool go in; lines to send and events (work,
//! difficulty, answers, reconnects) come out.
//!
//! It is as strict with the pool as the pool is with miners: lines are bounded, extranonce sizes
//! are checked before anything hashes with them, and a refused subscribe or authorize ends it.

use std::collections::VecDeque;

use quarry_work::{Difficulty, Target};
use serde_json::{json, Value};

use super::codec::{LineReader, MAX_POOL_LINE_LEN};
use super::notify::Notify;

/// Longest extranonce1 or extranonce2 taken from a pool: hashers index and copy them per roll.
pub const MAX_EXTRANONCE_LEN: usize = 32;

/// Request ids of the handshake; submits count up from [`FIRST_SUBMIT_ID`].
const CONFIGURE_ID: u64 = 1;
const SUBSCRIBE_ID: u64 = 2;
const AUTHORIZE_ID: u64 = 3;
/// The first `mining.submit` id.
pub const FIRST_SUBMIT_ID: u64 = 10;

/// Who the client is.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `mining.authorize` username (`address[.worker]` for Quarry).
    pub user: String,
    /// `mining.authorize` password (`x`, or `d=<difficulty>`).
    pub password: String,
    /// The agent string in `mining.subscribe`.
    pub agent: String,
    /// The BIP310 version-rolling mask to ask for; `None` sends no `mining.configure`.
    pub version_rolling: Option<u32>,
}

/// Something the miner should act on.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// Subscribed: the extranonce the pool assigned.
    Subscribed {
        /// The connection's extranonce1.
        extranonce1: Vec<u8>,
        /// Bytes the miner rolls.
        extranonce2_len: usize,
    },
    /// The pool accepted the worker.
    Authorized,
    /// Work to mine at the current share target (`job.clean`: drop everything older).
    Work(Box<Work>),
    /// The answer to a `mining.submit`.
    Answered {
        /// The id [`Client::submit`] returned.
        id: u64,
        /// Accepted, or why not.
        outcome: Result<(), Rejection>,
    },
    /// `client.reconnect`: go to `host:port` (empty host: the same address) after `wait_secs`.
    Reconnect {
        /// Where; empty for the same host.
        host: String,
        /// Port; 0 for the same.
        port: u16,
        /// Seconds to wait first.
        wait_secs: u64,
    },
}

/// What to hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Work {
    /// The job as the pool sent it.
    pub job: Notify,
    /// The connection's extranonce1.
    pub extranonce1: Vec<u8>,
    /// Bytes the miner rolls.
    pub extranonce2_len: usize,
    /// The share target when the job arrived.
    pub target: Target,
    /// The version bits the miner may roll (0: none).
    pub version_mask: u32,
}

/// A refused share, in the pool's words.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The error code, if the pool gave one (`[code, message, data]` or `{code, message}`).
    pub code: Option<i64>,
    /// The message, or ckpool's `reject-reason`, or the raw error.
    pub reason: String,
}

impl Rejection {
    /// Whether the pool called the share stale: code 21 (Quarry, NOMP, Miningcore) or only in
    /// the text (ckpool's `Stale`, "job not found").
    pub fn is_stale(&self) -> bool {
        let text = self.reason.to_ascii_lowercase();
        self.code == Some(21) || text.contains("stale") || text.contains("job not found")
    }

    fn from_answer(value: &Value) -> Rejection {
        let error = &value["error"];
        let code = error[0].as_i64().or_else(|| error["code"].as_i64());
        let reason = [
            &error[1],
            &error["message"],
            &value["reject-reason"],
            &value["reject_reason"],
        ]
        .iter()
        .filter_map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(" ");
        let reason = match reason.is_empty() {
            true => error.to_string(),
            false => reason,
        };
        Rejection { code, reason }
    }
}

/// Why the client stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A line over the bound.
    #[error("the pool sent an overlong line")]
    LineTooLong,
    /// `mining.subscribe` was refused or its answer was unusable.
    #[error("subscribe refused: {0}")]
    Subscribe(String),
    /// `mining.authorize` was refused.
    #[error("authorize refused: {0}")]
    Authorize(String),
}

/// One V1 connection, miner side.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    reader: LineReader<MAX_POOL_LINE_LEN>,
    outbox: VecDeque<String>,
    events: VecDeque<ClientEvent>,
    extranonce1: Vec<u8>,
    extranonce2_len: usize,
    subscribed: bool,
    target: Target,
    version_mask: u32,
    next_id: u64,
    /// Lines that were not JSON: counted, not fatal (some pools send banners).
    unparsed: u64,
    closed: Option<ClientError>,
}

impl Client {
    /// A client whose handshake (configure, subscribe, authorize) is queued to send.
    pub fn new(config: ClientConfig) -> Client {
        let mut client = Client {
            reader: LineReader::default(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            extranonce1: Vec::new(),
            extranonce2_len: 0,
            subscribed: false,
            target: Target::from_difficulty(Difficulty::ONE),
            version_mask: 0,
            next_id: FIRST_SUBMIT_ID,
            unparsed: 0,
            closed: None,
            config,
        };
        if let Some(mask) = client.config.version_rolling {
            client.request(
                CONFIGURE_ID,
                "mining.configure",
                json!([["version-rolling"], {"version-rolling.mask": format!("{mask:08x}"), "version-rolling.min-bit-count": 2}]),
            );
        }
        let agent = client.config.agent.clone();
        client.request(SUBSCRIBE_ID, "mining.subscribe", json!([agent]));
        let (user, password) = (client.config.user.clone(), client.config.password.clone());
        client.request(AUTHORIZE_ID, "mining.authorize", json!([user, password]));
        client
    }

    fn request(&mut self, id: u64, method: &str, params: Value) {
        let mut line = json!({"id": id, "method": method, "params": params}).to_string();
        line.push('\n');
        self.outbox.push_back(line);
    }

    /// Bytes from the pool.
    pub fn handle_bytes(&mut self, data: &[u8]) {
        if self.closed.is_some() {
            return;
        }
        if self.reader.push(data).is_err() {
            self.closed = Some(ClientError::LineTooLong);
            return;
        }
        let mut reader = std::mem::take(&mut self.reader);
        while let Some(line) = reader.next_line() {
            let Ok(line) = line else {
                self.closed = Some(ClientError::LineTooLong);
                break;
            };
            match serde_json::from_slice::<Value>(line) {
                Ok(message) => self.handle_message(&message),
                Err(_) if line.iter().all(u8::is_ascii_whitespace) => {}
                Err(_) => self.unparsed += 1,
            }
            if self.closed.is_some() {
                break;
            }
        }
        self.reader = reader;
    }

    fn handle_message(&mut self, message: &Value) {
        match message["method"].as_str() {
            Some("mining.notify") => {
                // A malformed job is skipped: the next one replaces it anyway.
                if let (true, Ok(job)) = (self.subscribed, Notify::from_params(&message["params"]))
                {
                    self.events.push_back(ClientEvent::Work(Box::new(Work {
                        job,
                        extranonce1: self.extranonce1.clone(),
                        extranonce2_len: self.extranonce2_len,
                        target: self.target,
                        version_mask: self.version_mask,
                    })));
                }
            }
            Some("mining.set_difficulty") => {
                if let Some(d) = message["params"][0].as_f64().and_then(Difficulty::new) {
                    self.target = Target::from_difficulty(d);
                }
            }
            Some("mining.set_version_mask") => {
                if let Some(mask) = message["params"][0]
                    .as_str()
                    .and_then(|m| u32::from_str_radix(m, 16).ok())
                {
                    self.version_mask = mask;
                }
            }
            Some("client.reconnect") => {
                let params = &message["params"];
                self.events.push_back(ClientEvent::Reconnect {
                    host: params[0].as_str().unwrap_or("").to_string(),
                    port: params[1]
                        .as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .unwrap_or(0),
                    wait_secs: params[2].as_u64().unwrap_or(0),
                });
            }
            Some(_) => {}
            None => self.handle_answer(message),
        }
    }

    fn handle_answer(&mut self, message: &Value) {
        let accepted = message["error"].is_null() && message["result"] != Value::Bool(false);
        match message["id"].as_u64() {
            Some(CONFIGURE_ID) => {
                if let Some(mask) = message["result"]["version-rolling.mask"].as_str() {
                    self.version_mask = u32::from_str_radix(mask, 16).unwrap_or(0);
                }
            }
            Some(SUBSCRIBE_ID) => {
                if !accepted {
                    self.closed = Some(ClientError::Subscribe(message["error"].to_string()));
                    return;
                }
                let extranonce1 = message["result"][1]
                    .as_str()
                    .and_then(|s| hex::decode(s).ok());
                let extranonce2_len = message["result"][2]
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok());
                match (extranonce1, extranonce2_len) {
                    (Some(extranonce1), Some(extranonce2_len))
                        if extranonce1.len() <= MAX_EXTRANONCE_LEN
                            && (1..=MAX_EXTRANONCE_LEN).contains(&extranonce2_len) =>
                    {
                        self.extranonce1 = extranonce1;
                        self.extranonce2_len = extranonce2_len;
                        self.subscribed = true;
                        self.events.push_back(ClientEvent::Subscribed {
                            extranonce1: self.extranonce1.clone(),
                            extranonce2_len,
                        });
                    }
                    _ => {
                        self.closed = Some(ClientError::Subscribe(format!(
                            "unusable extranonce in {}",
                            message["result"]
                        )))
                    }
                }
            }
            Some(AUTHORIZE_ID) => match accepted {
                true => self.events.push_back(ClientEvent::Authorized),
                false => self.closed = Some(ClientError::Authorize(message["error"].to_string())),
            },
            Some(id) if id >= FIRST_SUBMIT_ID && id < self.next_id => {
                // Only `true` accepts a share: an answer without a result is no acceptance.
                let accepted = message["error"].is_null() && message["result"] == Value::Bool(true);
                self.events.push_back(ClientEvent::Answered {
                    id,
                    outcome: match accepted {
                        true => Ok(()),
                        false => Err(Rejection::from_answer(message)),
                    },
                });
            }
            _ => {}
        }
    }

    /// Queues a `mining.submit`; returns its id, which the [`ClientEvent::Answered`] carries.
    /// `version` is the header's whole version: only the rolled bits are sent.
    pub fn submit(
        &mut self,
        job_id: &str,
        extranonce2: &[u8],
        ntime: u32,
        nonce: u32,
        version: Option<u32>,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut params = vec![
            json!(self.config.user),
            json!(job_id),
            json!(hex::encode(extranonce2)),
            json!(format!("{ntime:08x}")),
            json!(format!("{nonce:08x}")),
        ];
        if let (Some(version), true) = (version, self.version_mask != 0) {
            params.push(json!(format!("{:08x}", version & self.version_mask)));
        }
        self.request(id, "mining.submit", Value::Array(params));
        id
    }

    /// The next line to send.
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.outbox.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Why the connection must end, once it must.
    pub fn close_reason(&self) -> Option<&ClientError> {
        self.closed.as_ref()
    }

    /// The current share target.
    pub fn target(&self) -> Target {
        self.target
    }

    /// The negotiated version-rolling mask (0: none).
    pub fn version_mask(&self) -> u32 {
        self.version_mask
    }

    /// Lines from the pool that were not JSON.
    pub fn unparsed_lines(&self) -> u64 {
        self.unparsed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testkit::{config, template, test_pool, ADDRESS, HARD_BITS, START};
    use crate::v1::Session;

    fn client() -> Client {
        Client::new(ClientConfig {
            user: format!("{ADDRESS}.rig"),
            password: "x".into(),
            agent: "test/1".into(),
            version_rolling: Some(0x1fff_e000),
        })
    }

    /// The client against the pool's own session, bytes both ways: the handshake, a job, a
    /// share the session accepts, and its answer matched to the submit.
    #[test]
    fn mines_a_share_against_the_pool_session() {
        let pool = test_pool();
        let mut session = Session::new(Arc::new(config()), START);
        session.handle_template(template(1, 7, HARD_BITS), START, &pool);
        let mut client = client();
        let pump = |client: &mut Client, session: &mut Session| loop {
            let mut moved = false;
            while let Some(line) = client.poll_transmit() {
                session.handle_bytes(line.as_bytes(), START, &pool);
                while session.awaiting_record() > 0 {
                    session.share_recorded(true);
                }
                moved = true;
            }
            while let Some(line) = session.poll_transmit() {
                client.handle_bytes(line.as_bytes());
                moved = true;
            }
            if !moved {
                return;
            }
        };
        pump(&mut client, &mut session);
        let events: Vec<ClientEvent> = std::iter::from_fn(|| client.poll_event()).collect();
        assert!(matches!(
            events[0],
            ClientEvent::Subscribed {
                extranonce2_len: 8,
                ..
            }
        ));
        assert_eq!(events[1], ClientEvent::Authorized);
        let Some(ClientEvent::Work(work)) = events.last() else {
            panic!("work after authorize: {events:?}");
        };
        assert_eq!(client.version_mask(), 0x1fff_e000);
        assert_eq!(work.target, Target::from_difficulty(config().vardiff.start));
        let en2 = [0u8; 8];
        let job = &work.job;
        let nonce = (0u32..)
            .find(|n| {
                work.target.is_met_by(&job.hash(
                    &work.extranonce1,
                    &en2,
                    job.version,
                    job.ntime,
                    *n,
                ))
            })
            .expect("a nonce");
        let id = client.submit(&job.job_id, &en2, job.ntime, nonce, Some(job.version));
        let again = client.submit(&job.job_id, &en2, job.ntime, nonce, Some(job.version));
        pump(&mut client, &mut session);
        let answers: Vec<ClientEvent> = std::iter::from_fn(|| client.poll_event()).collect();
        assert_eq!(
            answers[0],
            ClientEvent::Answered {
                id,
                outcome: Ok(())
            }
        );
        let ClientEvent::Answered {
            id: second,
            outcome: Err(rejection),
        } = &answers[1]
        else {
            panic!("a duplicate is refused: {answers:?}");
        };
        assert_eq!((*second, rejection.code), (again, Some(22)));
        assert!(!rejection.is_stale());
    }

    #[test]
    fn a_pool_that_breaks_the_rules_ends_the_client_cleanly() {
        let mut long = client();
        long.handle_bytes(&vec![b'x'; MAX_POOL_LINE_LEN + 10]);
        assert_eq!(long.close_reason(), Some(&ClientError::LineTooLong));

        let mut huge = client();
        huge.handle_bytes(b"{\"id\":2,\"result\":[[],\"00\",4096],\"error\":null}\n");
        assert!(matches!(
            huge.close_reason(),
            Some(ClientError::Subscribe(_))
        ));

        let mut refused = client();
        refused.handle_bytes(
            b"{\"id\":2,\"result\":[[],\"00000001\",8],\"error\":null}\nnot json\n{\"id\":3,\"result\":false,\"error\":[24,\"unauthorized\",null]}\n",
        );
        assert!(matches!(
            refused.close_reason(),
            Some(ClientError::Authorize(_))
        ));
        assert_eq!(refused.unparsed_lines(), 1);
    }

    #[test]
    fn stale_answers_are_told_apart_in_each_pools_wording() {
        let rejection =
            |text: &str| Rejection::from_answer(&serde_json::from_str(text).expect("json"));
        assert!(rejection(r#"{"id":10,"result":null,"error":[21,"Stale",null]}"#).is_stale());
        assert!(
            rejection(r#"{"id":10,"result":false,"error":null,"reject-reason":"Stale"}"#)
                .is_stale()
        );
        assert!(rejection(
            r#"{"id":10,"result":null,"error":{"code":20,"message":"job not found"}}"#
        )
        .is_stale());
        let low = rejection(r#"{"id":10,"result":null,"error":[23,"Low difficulty share",null]}"#);
        assert!(!low.is_stale());
        assert_eq!(
            (low.code, low.reason.as_str()),
            (Some(23), "Low difficulty share")
        );
    }
}
