//! An AuxPoW chain's node for the tests, speaking Namecoin Core's mining RPC
//! (`createauxblock`, `submitauxblock`, `getblockheader`) and wallet RPC (`validateaddress`,
//! `sendmany`, `listtransactions`, `gettransaction`), and applying the checks Namecoin Core
//! applies to a submitted AuxPoW: `CAuxPow::check` (through `quarry_work::auxpow`, a port of
//! it) and the proof of work against the aux block's own bits. No Namecoin node is in the
//! registries; Quarry is also run against a real Namecoin Core (see the README).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use bitcoin::hashes::{sha256d, Hash};
use quarry_work::auxpow::{meets_target, AuxHash, AuxPow, ChainId};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// What the node has seen.
#[derive(Debug, Default)]
pub struct Ledger {
    /// The next block's height (the tip is `height - 1`).
    pub height: u64,
    /// Hashes handed out by `createauxblock`, with their heights.
    pub issued: HashMap<String, u64>,
    /// Blocks taken, in order: (hash, height).
    pub accepted: Vec<(String, u64)>,
    /// Submissions per hash, valid or not.
    pub submissions: HashMap<String, u32>,
    /// Why submissions failed the AuxPoW checks or the proof of work.
    pub refused: Vec<String>,
    /// Valid proofs for a block whose parent is no longer the tip.
    pub stale: u32,
    /// Wallet sends: (comment, what each address got in satoshis).
    pub sent: Vec<(String, BTreeMap<String, u64>)>,
    /// `sendmany` calls, whether or not they paid.
    pub sendmany_calls: u32,
}

impl Ledger {
    /// Satoshis the wallet sent to `address`, all payouts together.
    pub fn paid_to(&self, address: &str) -> u64 {
        self.sent
            .iter()
            .filter_map(|(_, outputs)| outputs.get(address))
            .sum()
    }
}

struct Node {
    chain_id: u32,
    bits: u32,
    /// What every address of this chain starts with (`validateaddress`).
    prefix: String,
    ledger: Mutex<Ledger>,
}

/// A running aux node; stopped on drop.
pub struct AuxNode {
    /// Its RPC address.
    pub addr: SocketAddr,
    node: Arc<Node>,
    task: Option<JoinHandle<()>>,
}

impl AuxNode {
    /// A node for chain `chain_id` whose blocks need `bits` and whose addresses start with
    /// `prefix`.
    pub async fn start(chain_id: u32, bits: u32, prefix: &str) -> AuxNode {
        let node = Arc::new(Node {
            chain_id,
            bits,
            prefix: prefix.to_string(),
            ledger: Mutex::new(Ledger {
                height: 100,
                ..Ledger::default()
            }),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut aux = AuxNode {
            addr,
            node,
            task: None,
        };
        aux.serve(listener);
        aux
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/", post(rpc))
            .with_state(Arc::clone(&self.node));
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    /// The URL for `[[aux]] url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Goes away: connections are refused until [`AuxNode::restart`].
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Comes back on the same port, with the same chain.
    pub async fn restart(&mut self) {
        self.stop();
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        self.serve(listener);
    }

    /// Mines `n` blocks on top (confirmations for what it accepted).
    pub fn mine(&self, n: u64) {
        self.node.ledger.lock().expect("lock").height += n;
    }

    /// A look at what it has seen.
    pub fn ledger<T>(&self, look: impl FnOnce(&Ledger) -> T) -> T {
        look(&self.node.ledger.lock().expect("lock"))
    }
}

impl Drop for AuxNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The block hash at `height`: a new one for every tip, as a real node's would be.
fn block_hash(chain_id: u32, height: u64) -> AuxHash {
    let mut seed = chain_id.to_le_bytes().to_vec();
    seed.extend_from_slice(&height.to_le_bytes());
    AuxHash::from_internal(sha256d::Hash::hash(&seed).to_byte_array())
}

fn error(code: i64, message: &str, id: &Value) -> (StatusCode, Json<Value>) {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"result": null, "error": {"code": code, "message": message}, "id": id})),
    )
}

async fn rpc(
    State(node): State<Arc<Node>>,
    Json(request): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let id = request["id"].clone();
    let params = &request["params"];
    let mut ledger = node.ledger.lock().expect("lock");
    let result = match request["method"].as_str().unwrap_or("") {
        "createauxblock" => {
            if params[0].as_str().is_none_or(str::is_empty) {
                return error(-5, "Invalid coinbase payout address", &id);
            }
            let height = ledger.height;
            let hash = block_hash(node.chain_id, height).to_string();
            ledger.issued.insert(hash.clone(), height);
            json!({
                "hash": hash,
                "chainid": node.chain_id,
                "previousblockhash": block_hash(node.chain_id, height - 1).to_string(),
                "coinbasevalue": 5_000_000_000u64,
                "bits": format!("{:08x}", node.bits),
                "height": height,
                "_target": "00",
            })
        }
        "submitauxblock" => {
            let (Some(hash), Some(auxpow)) = (params[0].as_str(), params[1].as_str()) else {
                return error(-1, "submitauxblock hash auxpow", &id);
            };
            *ledger.submissions.entry(hash.to_string()).or_default() += 1;
            let Some(&height) = ledger.issued.get(hash) else {
                return error(-8, "block hash unknown", &id);
            };
            let Ok(bytes) = hex::decode(auxpow) else {
                return error(-22, "AuxPow decode failed", &id);
            };
            let Ok(proof) = AuxPow::decode(&bytes) else {
                return error(-22, "AuxPow decode failed", &id);
            };
            let aux_hash: AuxHash = hash.parse().expect("a hash this node issued");
            let checked = proof
                .verify(aux_hash, ChainId(node.chain_id), true)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    meets_target(&proof.parent_block_hash(), node.bits)
                        .then_some(())
                        .ok_or_else(|| "high-hash".to_string())
                });
            match checked {
                Err(reason) => {
                    ledger.refused.push(reason);
                    json!(false)
                }
                Ok(()) if ledger.accepted.iter().any(|(h, _)| h == hash) => json!(false),
                // Only a block on the current tip extends the chain.
                Ok(()) if height != ledger.height => {
                    ledger.stale += 1;
                    json!(false)
                }
                Ok(()) => {
                    ledger.accepted.push((hash.to_string(), height));
                    ledger.height += 1;
                    json!(true)
                }
            }
        }
        "getblockheader" => {
            let hash = params[0].as_str().unwrap_or("");
            let Some(&(_, height)) = ledger.accepted.iter().find(|(h, _)| h == hash) else {
                return error(-5, "Block not found", &id);
            };
            json!({"hash": hash, "height": height, "confirmations": ledger.height - height})
        }
        "validateaddress" => {
            let address = params[0].as_str().unwrap_or("");
            json!({"isvalid": address.starts_with(&node.prefix), "address": address})
        }
        "sendmany" => {
            ledger.sendmany_calls += 1;
            let (Some(outputs), Some(comment)) = (params[1].as_object(), params[3].as_str()) else {
                return error(
                    -1,
                    "sendmany \"\" amounts minconf comment subtractfeefrom",
                    &id,
                );
            };
            let mut paid = BTreeMap::new();
            for (address, amount) in outputs {
                if !address.starts_with(&node.prefix) {
                    return error(-5, &format!("Invalid address: {address}"), &id);
                }
                // Amounts as the exact 8-decimal strings Core parses.
                let Some(sat) = amount.as_str().and_then(sat_from_coin_string) else {
                    return error(-3, "Invalid amount", &id);
                };
                paid.insert(address.clone(), sat);
            }
            let txid = hex::encode(sha256d::Hash::hash(comment.as_bytes()).to_byte_array());
            ledger.sent.push((comment.to_string(), paid));
            json!(txid)
        }
        "listtransactions" => {
            let list: Vec<Value> = ledger
                .sent
                .iter()
                .flat_map(|(comment, outputs)| {
                    let txid = hex::encode(sha256d::Hash::hash(comment.as_bytes()).to_byte_array());
                    outputs.iter().map(move |(address, sat)| {
                        json!({"txid": txid, "comment": comment, "category": "send",
                               "address": address, "amount": -(*sat as f64) / 1e8})
                    })
                })
                .collect();
            json!(list)
        }
        "gettransaction" => {
            let txid = params[0].as_str().unwrap_or("");
            let Some((_, outputs)) = ledger.sent.iter().find(|(comment, _)| {
                hex::encode(sha256d::Hash::hash(comment.as_bytes()).to_byte_array()) == txid
            }) else {
                return error(-5, "Invalid or non-wallet transaction id", &id);
            };
            let details: Vec<Value> = outputs
                .iter()
                .map(|(address, sat)| json!({"address": address, "category": "send", "amount": -(*sat as f64) / 1e8}))
                .collect();
            json!({"txid": txid, "details": details})
        }
        other => return error(-32601, &format!("Method not found: {other}"), &id),
    };
    (
        StatusCode::OK,
        Json(json!({"result": result, "error": null, "id": id})),
    )
}

/// `"12.34500000"` → 1,234,500,000.
fn sat_from_coin_string(text: &str) -> Option<u64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 8 {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let fraction: u64 = format!("{fraction:0<8}").parse().ok()?;
    whole.checked_mul(100_000_000)?.checked_add(fraction)
}

/// An RSK node for the tests: `mnr_getWork` and `mnr_submitBitcoinBlockPartialMerkle`, with
/// rskj's checks on a submission (the last `RSKBLOCK:` tag carries the work's hash, at most
/// 128 bytes follow it, the coinbase txid and branch fold to the header's merkle root, and the
/// header's hash meets the target).
pub struct RskNode {
    /// Its RPC address.
    pub addr: SocketAddr,
    state: Arc<Mutex<RskLedger>>,
    task: Option<JoinHandle<()>>,
}

/// What the RSK node has seen.
#[derive(Debug, Default)]
pub struct RskLedger {
    /// Work units handed out (the last 20 are kept, as rskj does).
    pub issued: Vec<[u8; 32]>,
    /// Blocks imported, by merged-mining hash.
    pub imported: Vec<[u8; 32]>,
    /// The blocks built from them: (RSK block hash, height).
    pub blocks: Vec<([u8; 32], u64)>,
    /// Submissions per RSK hash.
    pub submissions: HashMap<[u8; 32], u32>,
    /// Why submissions were refused.
    pub refused: Vec<String>,
    /// The tip's height: one more after every import, or [`RskNode::mine`].
    pub number: u64,
}

/// What the RSK test node offers the miner per block, 1e-18 RBTC: 0.123 RBTC.
pub const RSK_FEES_WEI: &str = "123000000000000000";

impl RskNode {
    /// A node whose blocks need the Bitcoin hash to meet `bits`.
    pub async fn start(bits: u32) -> RskNode {
        let state = Arc::new(Mutex::new(RskLedger::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let target = quarry_work::Target::from_compact(bits);
        let app = Router::new()
            .route("/", post(rsk_rpc))
            .with_state((Arc::clone(&state), target));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        RskNode {
            addr,
            state,
            task: Some(task),
        }
    }

    /// The URL for `[[aux]] url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `n` blocks on top, from other miners.
    pub fn mine(&self, n: u64) {
        self.state.lock().expect("lock").number += n;
    }

    /// A look at what it has seen.
    pub fn ledger<T>(&self, look: impl FnOnce(&RskLedger) -> T) -> T {
        look(&self.state.lock().expect("lock"))
    }
}

impl Drop for RskNode {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn rsk_hash(number: u64) -> [u8; 32] {
    let mut seed = b"rsk".to_vec();
    seed.extend_from_slice(&number.to_le_bytes());
    sha256d::Hash::hash(&seed).to_byte_array()
}

async fn rsk_rpc(
    State((state, target)): State<(Arc<Mutex<RskLedger>>, quarry_work::Target)>,
    Json(request): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let id = request["id"].clone();
    let params = &request["params"];
    let mut ledger = state.lock().expect("lock");
    let result = match request["method"].as_str().unwrap_or("") {
        "mnr_getWork" => {
            let hash = rsk_hash(ledger.number);
            if !ledger.issued.contains(&hash) {
                ledger.issued.push(hash);
                if ledger.issued.len() > 20 {
                    ledger.issued.remove(0);
                }
            }
            let mut be = target.to_le_bytes();
            be.reverse();
            json!({
                "blockHashForMergedMining": format!("0x{}", hex::encode(hash)),
                "target": format!("0x{}", hex::encode(be)),
                "feesPaidToMiner": RSK_FEES_WEI,
                "notify": true,
                "parentBlockHash": format!("0x{}", hex::encode(rsk_hash(ledger.number.wrapping_sub(1)))),
            })
        }
        "mnr_submitBitcoinBlockPartialMerkle" => {
            let text = |i: usize| params[i].as_str().unwrap_or("").to_string();
            let (header, coinbase, hashes) = (text(1), text(2), text(3));
            let (Ok(header), Ok(coinbase)) = (hex::decode(&header), hex::decode(&coinbase)) else {
                return error(-32602, "bad hex", &id);
            };
            // Which work: the hash after the last tag, as rskj finds it.
            let tag = quarry_work::rsk::RSK_TAG;
            let Some(at) = coinbase.windows(tag.len()).rposition(|w| w == tag) else {
                ledger.refused.push("no RSKBLOCK: tag".into());
                return error(-33000, "Invalid block supplied by miner", &id);
            };
            let Some(hash) = coinbase
                .get(at + tag.len()..at + tag.len() + 32)
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
            else {
                return error(-33000, "Invalid block supplied by miner", &id);
            };
            *ledger.submissions.entry(hash).or_default() += 1;
            if !ledger.issued.contains(&hash) {
                return error(-33000, "could not find hash in the cache", &id);
            }
            let checks = (|| {
                quarry_work::rsk::check_coinbase(&coinbase, &hash).map_err(|e| e.to_string())?;
                let leaves: Vec<[u8; 32]> = hashes
                    .split(' ')
                    .map(|h| hex::decode(h).ok().and_then(|b| b.try_into().ok()))
                    .collect::<Option<_>>()
                    .ok_or("merkle hashes")?;
                // rskj skips the first entry and folds the coinbase txid with the rest.
                let mut root = sha256d::Hash::hash(&coinbase).to_byte_array();
                for branch in leaves.iter().skip(1) {
                    let mut pair = root.to_vec();
                    pair.extend_from_slice(branch);
                    root = sha256d::Hash::hash(&pair).to_byte_array();
                }
                if header.get(36..68) != Some(&root[..]) {
                    return Err("merkle root".to_string());
                }
                let header: [u8; 80] = header.as_slice().try_into().map_err(|_| "header")?;
                if !target.is_met_by(&quarry_work::hash::sha256d_80(&header)) {
                    return Err("difficulty".to_string());
                }
                Ok(())
            })();
            match checks {
                Err(reason) => {
                    ledger.refused.push(reason);
                    return error(-33000, "Invalid block supplied by miner", &id);
                }
                Ok(()) if ledger.imported.contains(&hash) => json!({
                    "blockImportedResult": hex::encode("EXIST"), "blockHash": format!("0x{}", hex::encode(hash)),
                    "blockIncludedHeight": 0}),
                Ok(()) => {
                    ledger.imported.push(hash);
                    ledger.number += 1;
                    // The block's own hash covers the Bitcoin proof: not the merged-mining hash.
                    let block =
                        sha256d::Hash::hash(&[&b"block"[..], &hash].concat()).to_byte_array();
                    let height = ledger.number;
                    ledger.blocks.push((block, height));
                    json!({"blockImportedResult": hex::encode("IMPORTED_BEST"),
                           "blockHash": format!("0x{}", hex::encode(block)),
                           "blockIncludedHeight": format!("0x{height:x}")})
                }
            }
        }
        "eth_blockNumber" => json!(format!("0x{:x}", ledger.number)),
        "eth_getBlockByNumber" => {
            let height = params[0]
                .as_str()
                .and_then(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok())
                .unwrap_or(u64::MAX);
            match ledger.blocks.iter().find(|(_, h)| *h == height) {
                Some((block, _)) => json!({"hash": format!("0x{}", hex::encode(block)),
                                           "number": format!("0x{height:x}")}),
                None if height <= ledger.number => json!({
                    "hash": format!("0x{}", hex::encode(rsk_hash(height ^ 0xffff))),
                    "number": format!("0x{height:x}")}),
                None => Value::Null,
            }
        }
        other => return error(-32601, &format!("Method not found: {other}"), &id),
    };
    (
        StatusCode::OK,
        Json(json!({"result": result, "error": null, "id": id})),
    )
}
