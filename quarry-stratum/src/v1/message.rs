//! Stratum V1 messages: typed requests from a miner, and the lines we send.

use serde_json::{json, Map, Value};

use super::error::RequestError;

/// Longest username (address plus worker) kept.
pub const MAX_USERNAME_LEN: usize = 256;
/// Longest authorize password kept: room for a BOLT12 offer (`ln=lno1…`, up to 2,000
/// characters) beside difficulty and aux addresses.
pub const MAX_PASSWORD_LEN: usize = 4096;

/// A request from a miner.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `mining.subscribe [user_agent, session_id]`.
    Subscribe {
        /// Miner software.
        user_agent: Option<String>,
        /// Extranonce1 (hex) of an earlier session to resume.
        session_id: Option<String>,
    },
    /// `mining.authorize [username, password]`.
    Authorize {
        /// `address[.worker]`.
        username: String,
        /// May carry `d=<difficulty>`.
        password: String,
    },
    /// `mining.configure [extensions, params]` (BIP310).
    Configure {
        /// Extension names.
        extensions: Vec<String>,
        /// Their parameters.
        params: Map<String, Value>,
    },
    /// `mining.suggest_difficulty [difficulty]`.
    SuggestDifficulty(f64),
    /// `mining.extranonce.subscribe []`.
    ExtranonceSubscribe,
    /// `mining.submit [worker, job_id, extranonce2, ntime, nonce, version_bits?]`.
    Submit(Submit),
}

/// The parameters of `mining.submit`, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submit {
    /// The worker name the share is for.
    pub worker: String,
    /// The job id as sent in `mining.notify`.
    pub job_id: String,
    /// Raw extranonce2 bytes.
    pub extranonce2: Vec<u8>,
    /// Header time.
    pub ntime: u32,
    /// Header nonce.
    pub nonce: u32,
    /// Rolled version bits (BIP310), if sent.
    pub version_bits: Option<u32>,
}

/// A decoded line.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A request; `request` is the error to answer when its method or params are bad.
    Request {
        /// The id to answer with.
        id: Value,
        /// The decoded request.
        request: Result<Request, RequestError>,
    },
    /// A response to something we sent (e.g. a reply to `client.show_message`): ignored.
    Response,
}

/// Decodes one line.
///
/// # Errors
/// [`RequestError::Parse`] when the line is not a JSON object with a method (a request) or a
/// result or error (a response).
pub fn parse_line(line: &[u8]) -> Result<Incoming, RequestError> {
    // Shares are nearly every line a pool reads: a well-formed submit is decoded in place.
    // Anything the fast path does not take whole, errors included, goes the general way, so
    // both give the same answer to every line (the round-trip tests and the fuzz target).
    if let Some((id, submit)) = parse_submit_in_place(line) {
        return Ok(Incoming::Request {
            id,
            request: Ok(Request::Submit(submit)),
        });
    }
    parse_line_value(line)
}

/// [`parse_line`] through a `serde_json::Value` tree: every method, every error.
pub fn parse_line_value(line: &[u8]) -> Result<Incoming, RequestError> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|_| RequestError::Parse("invalid JSON".to_string()))?;
    let Value::Object(mut object) = value else {
        return Err(RequestError::Parse("not a JSON-RPC object".to_string()));
    };
    let id = object.remove("id").unwrap_or(Value::Null);
    match object.remove("method") {
        Some(Value::String(method)) => {
            let params = object.remove("params").unwrap_or(Value::Null);
            Ok(Incoming::Request {
                request: parse_request(&method, &params),
                id,
            })
        }
        Some(_) => Err(RequestError::Parse("method must be a string".to_string())),
        None if object.contains_key("result") || object.contains_key("error") => {
            Ok(Incoming::Response)
        }
        None => Err(RequestError::Parse("no method".to_string())),
    }
}

fn parse_request(method: &str, params: &Value) -> Result<Request, RequestError> {
    let empty = Vec::new();
    let params = match params {
        Value::Array(items) => items,
        Value::Null => &empty,
        _ => return Err(invalid("params must be an array")),
    };
    match method {
        "mining.subscribe" => Ok(Request::Subscribe {
            user_agent: optional_string(params, 0)?,
            session_id: optional_string(params, 1)?,
        }),
        "mining.authorize" => {
            let username = required_string(params, 0, "username")?;
            if username.is_empty() || username.len() > MAX_USERNAME_LEN {
                return Err(invalid("username must be 1 to 256 characters"));
            }
            Ok(Request::Authorize {
                username,
                password: optional_string_max(params, 1, MAX_PASSWORD_LEN)?.unwrap_or_default(),
            })
        }
        "mining.configure" => {
            let extensions = match params.first() {
                Some(Value::Array(names)) => names
                    .iter()
                    .map(|n| n.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| invalid("extension names must be strings"))?,
                _ => return Err(invalid("first param must be a list of extensions")),
            };
            let params = match params.get(1) {
                Some(Value::Object(map)) => map.clone(),
                None | Some(Value::Null) => Map::new(),
                _ => return Err(invalid("second param must be an object")),
            };
            Ok(Request::Configure { extensions, params })
        }
        "mining.suggest_difficulty" => {
            let difficulty = params
                .first()
                .and_then(number)
                .filter(|d| d.is_finite() && *d > 0.0)
                .ok_or_else(|| invalid("difficulty must be a positive number"))?;
            Ok(Request::SuggestDifficulty(difficulty))
        }
        "mining.extranonce.subscribe" => Ok(Request::ExtranonceSubscribe),
        "mining.submit" => parse_submit(params).map(Request::Submit),
        other => Err(RequestError::UnknownMethod(truncate(other, 64))),
    }
}

fn parse_submit(params: &[Value]) -> Result<Submit, RequestError> {
    if params.len() < 5 {
        return Err(invalid("submit takes 5 or 6 params"));
    }
    let param = |index: usize, name: &str| match params.get(index) {
        Some(Value::String(s)) => Ok(s.as_str()),
        _ => Err(invalid(&format!("{name} must be a string"))),
    };
    let version_bits = || match params.get(5) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.as_str())),
        Some(_) => Err(invalid("version_bits must be a hex string")),
    };
    submit_from_params(param, version_bits)
}

/// A submit from its params, each checked where it is first used so that errors come in one
/// order: `param(index, name)` is a string param, `version_bits()` the sixth.
fn submit_from_params<'a>(
    param: impl Fn(usize, &str) -> Result<&'a str, RequestError>,
    version_bits: impl FnOnce() -> Result<Option<&'a str>, RequestError>,
) -> Result<Submit, RequestError> {
    let worker = param(0, "worker")?;
    if worker.len() > MAX_USERNAME_LEN {
        return Err(invalid("worker name too long"));
    }
    let job_id = param(1, "job_id")?;
    if job_id.len() > 64 {
        return Err(invalid("job_id too long"));
    }
    let extranonce2_hex = param(2, "extranonce2")?;
    let extranonce2 = (extranonce2_hex.len() <= 64)
        .then(|| hex::decode(extranonce2_hex).ok())
        .flatten()
        .ok_or_else(|| invalid("extranonce2 is not hex"))?;
    let ntime = hex_u32(param(3, "ntime")?, "ntime")?;
    let nonce = hex_u32(param(4, "nonce")?, "nonce")?;
    let version_bits = version_bits()?
        .map(|text| hex_u32(text, "version_bits"))
        .transpose()?;
    Ok(Submit {
        worker: worker.to_string(),
        job_id: job_id.to_string(),
        extranonce2,
        ntime,
        nonce,
        version_bits,
    })
}

/// A `mining.submit` line whose params are all valid, decoded without building a tree: the
/// strings are borrowed from the line and only the id becomes a `Value`. `None` for anything
/// else (another method, escapes, a duplicate key, a bad param): the caller parses it the
/// general way, which gives the error.
fn parse_submit_in_place(line: &[u8]) -> Option<(Value, Submit)> {
    // A JSON array would otherwise fill the fields by position; requests are objects.
    if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let request: SubmitRequest<'_> = serde_json::from_slice(line).ok()?;
    let strings = request.params.strings;
    let submit = submit_from_params(
        |index, _| Ok(strings[index]),
        || Ok(request.params.version_bits),
    )
    .ok()?;
    Some((request.id, submit))
}

/// `{"id":…,"method":"mining.submit","params":[…]}`, keys in any order, others ignored.
struct SubmitRequest<'a> {
    id: Value,
    params: SubmitParams<'a>,
}

/// The five strings of a submit and the optional version bits (`null` or absent: none).
struct SubmitParams<'a> {
    strings: [&'a str; 5],
    version_bits: Option<&'a str>,
}

impl<'de> serde::Deserialize<'de> for SubmitRequest<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = SubmitRequest<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mining.submit request")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                use serde::de::Error;
                let (mut id, mut method, mut params) = (None, false, None);
                while let Some(key) = map.next_key::<&'de str>()? {
                    let repeated = match key {
                        "id" => id.is_some(),
                        "method" => method,
                        "params" => params.is_some(),
                        _ => false,
                    };
                    if repeated {
                        // The general parser keeps the last one: leave such lines to it.
                        return Err(A::Error::custom("repeated key"));
                    }
                    match key {
                        "id" => id = Some(map.next_value::<Value>()?),
                        "method" => {
                            if map.next_value::<&'de str>()? != "mining.submit" {
                                return Err(A::Error::custom("not a submit"));
                            }
                            method = true;
                        }
                        "params" => params = Some(map.next_value::<SubmitParams<'de>>()?),
                        // Decoded as a tree, as the general parser does: same depth limit.
                        _ => drop(map.next_value::<Value>()?),
                    }
                }
                match (method, params) {
                    (true, Some(params)) => Ok(SubmitRequest {
                        id: id.unwrap_or(Value::Null),
                        params,
                    }),
                    _ => Err(A::Error::custom("not a submit")),
                }
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

impl<'de> serde::Deserialize<'de> for SubmitParams<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = SubmitParams<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("submit params")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                use serde::de::Error;
                let mut strings = [""; 5];
                for slot in &mut strings {
                    *slot = seq
                        .next_element::<&'de str>()?
                        .ok_or_else(|| A::Error::custom("too few params"))?;
                }
                let version_bits = seq.next_element::<Option<&'de str>>()?.flatten();
                while seq.next_element::<Value>()?.is_some() {}
                Ok(SubmitParams {
                    strings,
                    version_bits,
                })
            }
        }
        deserializer.deserialize_seq(Visit)
    }
}

/// An 8-digit (or shorter) big-endian hex number, as Stratum writes ntime, nonce and versions.
fn hex_u32(text: &str, field: &str) -> Result<u32, RequestError> {
    if text.is_empty() || text.len() > 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(&format!("{field} must be up to 8 hex digits")));
    }
    u32::from_str_radix(text, 16).map_err(|_| invalid(&format!("{field} is not hex")))
}

fn required_string(params: &[Value], index: usize, name: &str) -> Result<String, RequestError> {
    match params.get(index) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(invalid(&format!("{name} must be a string"))),
    }
}

fn optional_string(params: &[Value], index: usize) -> Result<Option<String>, RequestError> {
    optional_string_max(params, index, MAX_USERNAME_LEN)
}

fn optional_string_max(
    params: &[Value],
    index: usize,
    max: usize,
) -> Result<Option<String>, RequestError> {
    match params.get(index) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(truncate(s, max))),
        Some(_) => Err(invalid(&format!("param {index} must be a string"))),
    }
}

/// A number sent as a JSON number or as a string.
pub fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn invalid(reason: &str) -> RequestError {
    RequestError::InvalidParams(reason.to_string())
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// `{"error":null,"id":…,"result":…}` and a newline: the keys in the order a JSON object
/// here always had them (sorted), written directly instead of through a map.
pub fn result_line(id: &Value, result: Value) -> String {
    use std::fmt::Write;
    let mut line = String::with_capacity(48);
    let _ = writeln!(line, "{{\"error\":null,\"id\":{id},\"result\":{result}}}");
    line
}

/// `{"error":[code,"message",null],"id":…,"result":null}` and a newline.
pub fn error_line(id: &Value, error: &RequestError) -> String {
    use std::fmt::Write;
    let message = Value::String(error.to_string());
    let mut line = String::with_capacity(80);
    let _ = writeln!(
        line,
        "{{\"error\":[{},{message},null],\"id\":{id},\"result\":null}}",
        error.code().code()
    );
    line
}

/// A server-to-client notification and a newline.
pub fn notification_line(method: &str, params: Value) -> String {
    let mut line = json!({"id": null, "method": method, "params": params}).to_string();
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(line: &str) -> Result<Request, RequestError> {
        match parse_line(line.as_bytes()).expect("valid JSON") {
            Incoming::Request { request, .. } => request,
            Incoming::Response => panic!("expected a request"),
        }
    }

    #[test]
    fn parses_submit_with_version_bits() {
        let submit = request(
            r#"{"id":4,"method":"mining.submit","params":["addr.w","1a","00000000deadbeef","6500a1b2","0000ffff","1fffe000"]}"#,
        );
        assert_eq!(
            submit,
            Ok(Request::Submit(Submit {
                worker: "addr.w".into(),
                job_id: "1a".into(),
                extranonce2: vec![0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef],
                ntime: 0x6500a1b2,
                nonce: 0xffff,
                version_bits: Some(0x1fffe000),
            }))
        );
    }

    #[test]
    fn rejects_bad_params() {
        assert!(matches!(
            request(r#"{"id":1,"method":"mining.submit","params":["w","1","zz","00","00"]}"#),
            Err(RequestError::InvalidParams(_))
        ));
        assert!(matches!(
            request(
                r#"{"id":1,"method":"mining.submit","params":["w","1","00","123456789","00"]}"#
            ),
            Err(RequestError::InvalidParams(_))
        ));
        assert!(matches!(
            request(r#"{"id":1,"method":"mining.authorize","params":[5]}"#),
            Err(RequestError::InvalidParams(_))
        ));
        assert!(matches!(
            request(r#"{"id":1,"method":"mining.suggest_difficulty","params":[-1]}"#),
            Err(RequestError::InvalidParams(_))
        ));
        assert_eq!(
            request(r#"{"id":1,"method":"mining.nope","params":[]}"#),
            Err(RequestError::UnknownMethod("mining.nope".into()))
        );
        assert!(matches!(parse_line(b"{nope"), Err(RequestError::Parse(_))));
        assert!(matches!(parse_line(b"[1,2]"), Err(RequestError::Parse(_))));
        assert!(matches!(
            parse_line(b"{\"id\":1}"),
            Err(RequestError::Parse(_))
        ));
        assert_eq!(
            parse_line(b"{\"id\":1,\"result\":true}"),
            Ok(Incoming::Response)
        );
    }

    #[test]
    fn suggest_difficulty_accepts_strings_and_fractions() {
        assert_eq!(
            request(r#"{"id":1,"method":"mining.suggest_difficulty","params":["0.001"]}"#),
            Ok(Request::SuggestDifficulty(0.001))
        );
    }

    #[test]
    fn error_lines_carry_codes() {
        let line = error_line(&json!(7), &RequestError::NotSubscribed);
        assert_eq!(
            line,
            "{\"error\":[25,\"not subscribed\",null],\"id\":7,\"result\":null}\n"
        );
    }
}
