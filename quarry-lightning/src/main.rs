//! Quarry's Lightning node: an `ldk-node` (LDK + BDK) on the pool's Bitcoin Core, driven over a
//! pipe. `quarry serve` and `quarry payout` start it as a child process with `[lightning]`
//! enabled; its data (seed, channels, payments) lives in `data_dir/lightning`.
//!
//! Why a child process and not a library: ldk-node 0.7.1 stores in SQLite through rusqlite 0.31
//! (libsqlite3-sys 0.28), the ledger through sqlx 0.8.6 (libsqlite3-sys 0.30); both link the C
//! library `sqlite3`, so cargo cannot put them in one lockfile. This crate has its own.
//!
//! The pipe: one JSON object per line.
//! - in (stdin): `{"id": 7, "method": "status", "params": {...}}`; stdin closed stops the node.
//! - out (stdout): `{"ready": {...}}` once started, then `{"id": 7, "result": ...}` or
//!   `{"id": 7, "error": "..."}` per request, in order, and `{"event": {...}}` whenever the node
//!   reports one (payments settled or failed, channels opened or closed).
//!
//! Logs go to stderr and to `data_dir/ldk_node.log`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use ldk_node::bitcoin::constants::ChainHash;
use ldk_node::bitcoin::secp256k1::PublicKey;
use ldk_node::bitcoin::Network;
use ldk_node::config::{AnchorChannelsConfig, Config};
use ldk_node::lightning::ln::msgs::SocketAddress;
use ldk_node::lightning::offers::offer::{Amount, Offer};
use ldk_node::lightning::routing::router::RouteParametersConfig;
use ldk_node::logger::LogLevel;
use ldk_node::payment::{PaymentDetails, PaymentDirection, PaymentKind, PaymentStatus};
use ldk_node::{Builder, Event, Node};
use serde_json::{json, Value};

/// Command line: everything the node needs, set by the pool from `[lightning]`.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Where the seed, the channel state and the payment store live.
    #[arg(long)]
    data_dir: PathBuf,
    /// `bitcoin` (mainnet), `testnet`, `testnet4`, `signet` or `regtest`.
    #[arg(long, default_value = "regtest")]
    network: String,
    /// Bitcoin Core RPC, `host:port`.
    #[arg(long)]
    rpc: String,
    /// RPC user (or `__cookie__`).
    #[arg(long, env = "QUARRY_LN_RPC_USER", default_value = "")]
    rpc_user: String,
    /// RPC password.
    #[arg(long, env = "QUARRY_LN_RPC_PASSWORD", default_value = "")]
    rpc_password: String,
    /// Bitcoin Core's cookie file, read instead of user and password when given.
    #[arg(long)]
    rpc_cookie: Option<PathBuf>,
    /// Lightning peer-to-peer listen address.
    #[arg(long)]
    listen: Option<String>,
    /// Node alias (announced only with announced channels).
    #[arg(long)]
    alias: Option<String>,
    /// On-chain reserve kept per anchor channel, sat; 0 opens legacy (non-anchor) channels.
    #[arg(long, default_value_t = 25_000)]
    anchor_reserve_sat: u64,
    /// Peers trusted to spend anchor outputs for us (no reserve kept for their channels).
    #[arg(long)]
    trusted_peer: Vec<String>,
}

/// How long a start waits for the previous node on the same data to stop.
const LOCK_WAIT_SECS: u64 = 30;

fn network(name: &str) -> Result<Network> {
    Ok(match name {
        "mainnet" | "bitcoin" => Network::Bitcoin,
        "testnet" => Network::Testnet,
        "testnet4" => Network::Testnet4,
        "signet" => Network::Signet,
        "regtest" => Network::Regtest,
        other => bail!("unknown network {other:?}"),
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let network = network(&args.network)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    // Two processes on one channel state would broadcast revoked states: refuse the second. A
    // node whose pool was just killed is still persisting and stopping: wait for it a while.
    let lock = std::fs::File::create(args.data_dir.join("lock"))?;
    let waited = std::time::Instant::now();
    while lock.try_lock().is_err() {
        if waited.elapsed() > std::time::Duration::from_secs(LOCK_WAIT_SECS) {
            bail!(
                "{} is in use by another Lightning node (is `quarry serve` running?)",
                args.data_dir.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let node = build(&args, network)?;
    node.start().context("starting the Lightning node")?;
    let out = Arc::new(Mutex::new(std::io::stdout()));
    emit(
        &out,
        &json!({"ready": {
            "node_id": node.node_id().to_string(),
            "network": args.network,
            "listening": node.listening_addresses().unwrap_or_default()
                .iter().map(ToString::to_string).collect::<Vec<_>>(),
        }}),
    );

    let events = {
        let (node, out) = (Arc::clone(&node), Arc::clone(&out));
        std::thread::spawn(move || loop {
            let event = node.wait_next_event();
            emit(&out, &json!({ "event": event_json(&event) }));
            if node.event_handled().is_err() {
                break; // the node stopped
            }
        })
    };

    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let (id, answer) = match serde_json::from_str::<Value>(&line) {
            Ok(request) => {
                let id = request.get("id").cloned().unwrap_or(Value::Null);
                let method = request["method"].as_str().unwrap_or_default().to_string();
                let stop = method == "stop";
                let answer = handle(&node, network, &method, &request["params"]);
                if stop {
                    emit(&out, &answer_json(id, answer));
                    break;
                }
                (id, answer)
            }
            Err(e) => (Value::Null, Err(anyhow!("bad request: {e}"))),
        };
        emit(&out, &answer_json(id, answer));
    }
    node.stop().ok();
    drop(events); // the event thread ends with the node; nothing to join on
    Ok(())
}

fn build(args: &Args, network: Network) -> Result<Arc<Node>> {
    let mut config = Config {
        storage_dir_path: args.data_dir.display().to_string(),
        network,
        ..Config::default()
    };
    config.anchor_channels_config = match args.anchor_reserve_sat {
        0 => None,
        reserve => Some(AnchorChannelsConfig {
            trusted_peers_no_reserve: args
                .trusted_peer
                .iter()
                .map(|k| PublicKey::from_str(k).context("--trusted-peer"))
                .collect::<Result<_>>()?,
            per_channel_reserve_sats: reserve,
        }),
    };
    let mut builder = Builder::from_config(config);
    builder.set_entropy_seed_path(args.data_dir.join("keys_seed").display().to_string());
    let (host, port) = args
        .rpc
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("--rpc must be host:port"))?;
    let port: u16 = port.parse().context("--rpc port")?;
    let (user, password) = match &args.rpc_cookie {
        Some(path) => {
            let cookie = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let (user, password) = cookie
                .trim()
                .split_once(':')
                .ok_or_else(|| anyhow!("{} is not a cookie file", path.display()))?;
            (user.to_string(), password.to_string())
        }
        None => (args.rpc_user.clone(), args.rpc_password.clone()),
    };
    builder.set_chain_source_bitcoind_rpc(host.to_string(), port, user, password);
    builder.set_filesystem_logger(None, Some(LogLevel::Debug));
    if let Some(listen) = &args.listen {
        let address =
            SocketAddress::from_str(listen).map_err(|e| anyhow!("--listen {listen}: {e:?}"))?;
        builder
            .set_listening_addresses(vec![address])
            .map_err(|e| anyhow!("--listen: {e}"))?;
    }
    if let Some(alias) = &args.alias {
        builder
            .set_node_alias(alias.clone())
            .map_err(|e| anyhow!("--alias: {e}"))?;
    }
    Ok(Arc::new(
        builder.build().context("building the Lightning node")?,
    ))
}

fn emit(out: &Mutex<std::io::Stdout>, value: &Value) {
    if let Ok(mut out) = out.lock() {
        // A closed stdout means the pool is gone; stdin's end stops us.
        let _ = writeln!(out, "{value}").and_then(|()| out.flush());
    }
}

fn answer_json(id: Value, answer: Result<Value>) -> Value {
    match answer {
        Ok(result) => json!({"id": id, "result": result}),
        Err(e) => json!({"id": id, "error": format!("{e:#}")}),
    }
}

fn str_param<'a>(params: &'a Value, name: &str) -> Result<&'a str> {
    params[name]
        .as_str()
        .ok_or_else(|| anyhow!("missing string parameter {name:?}"))
}

fn u64_param(params: &Value, name: &str) -> Result<u64> {
    params[name]
        .as_u64()
        .ok_or_else(|| anyhow!("missing integer parameter {name:?}"))
}

fn node_address(params: &Value) -> Result<(PublicKey, SocketAddress)> {
    let node_id = PublicKey::from_str(str_param(params, "node_id")?).context("node_id")?;
    let address = str_param(params, "address")?;
    let address =
        SocketAddress::from_str(address).map_err(|e| anyhow!("address {address}: {e:?}"))?;
    Ok((node_id, address))
}

/// An offer, parsed and checked for this node's network.
fn offer_for(network: Network, text: &str) -> Result<Offer> {
    let offer = Offer::from_str(text.trim()).map_err(|e| anyhow!("not a BOLT12 offer: {e:?}"))?;
    if !offer.supports_chain(ChainHash::using_genesis_block(network)) {
        bail!("the offer is for another network (this node is on {network})");
    }
    if offer.is_expired() {
        bail!("the offer has expired");
    }
    Ok(offer)
}

fn handle(node: &Node, network: Network, method: &str, params: &Value) -> Result<Value> {
    match method {
        "status" => Ok(status(node)),
        "sync" => {
            node.sync_wallets()?;
            Ok(status(node))
        }
        "new_address" => Ok(json!({"address": node.onchain_payment().new_address()?.to_string()})),
        "connect" => {
            let (node_id, address) = node_address(params)?;
            node.connect(node_id, address, true)?;
            Ok(Value::Null)
        }
        "open_channel" => {
            let (node_id, address) = node_address(params)?;
            let amount = u64_param(params, "amount_sat")?;
            let push = params["push_msat"].as_u64();
            let channel = match params["announce"].as_bool() {
                Some(true) => node.open_announced_channel(node_id, address, amount, push, None)?,
                _ => node.open_channel(node_id, address, amount, push, None)?,
            };
            Ok(json!({"user_channel_id": channel.0.to_string()}))
        }
        "decode_offer" => {
            let offer = offer_for(network, str_param(params, "offer")?)?;
            Ok(json!({
                "offer_id": offer.id().to_string(),
                "amount_msat": match offer.amount() {
                    Some(Amount::Bitcoin { amount_msats }) => Some(amount_msats),
                    _ => None,
                },
                "description": offer.description().map(|d| d.to_string()),
                "issuer": offer.issuer().map(|d| d.to_string()),
            }))
        }
        "create_offer" => {
            let description = params["description"].as_str().unwrap_or("quarry");
            let offer = node
                .bolt12_payment()
                .receive_variable_amount(description, None)?;
            Ok(json!({"offer": offer.to_string()}))
        }
        "pay_offer" => {
            let offer = offer_for(network, str_param(params, "offer")?)?;
            let amount_msat = u64_param(params, "amount_msat")?;
            let note = str_param(params, "payer_note")?.to_string();
            let route = RouteParametersConfig {
                max_total_routing_fee_msat: params["max_fee_msat"].as_u64(),
                ..RouteParametersConfig::default()
            };
            let id = node.bolt12_payment().send_using_amount(
                &offer,
                amount_msat,
                None,
                Some(note),
                Some(route),
            )?;
            Ok(json!({"payment_id": hex(&id.0)}))
        }
        "find_payment" => {
            // The payout's tag travels as the payer note: the one durable link between a
            // ledger intent and the node's payment store.
            let note = str_param(params, "payer_note")?;
            let found = node
                .list_payments_with_filter(|p| {
                    p.direction == PaymentDirection::Outbound && payer_note(p) == Some(note)
                })
                .into_iter()
                .max_by_key(|p| p.latest_update_timestamp);
            Ok(found.map_or(Value::Null, |p| payment_json(&p)))
        }
        "payments" => Ok(Value::Array(
            node.list_payments().iter().map(payment_json).collect(),
        )),
        "stop" => Ok(Value::Null),
        other => bail!("unknown method {other:?}"),
    }
}

fn status(node: &Node) -> Value {
    let balances = node.list_balances();
    let channels = node.list_channels();
    // What one payment can carry now: LDK splits a payment over every usable channel.
    let sendable_msat: u64 = channels
        .iter()
        .filter(|c| c.is_usable)
        .map(|c| c.next_outbound_htlc_limit_msat)
        .sum();
    let status = node.status();
    json!({
        "node_id": node.node_id().to_string(),
        "height": status.current_best_block.height,
        "running": status.is_running,
        "onchain_total_sat": balances.total_onchain_balance_sats,
        "onchain_spendable_sat": balances.spendable_onchain_balance_sats,
        "anchor_reserve_sat": balances.total_anchor_channels_reserve_sats,
        "lightning_sat": balances.total_lightning_balance_sats,
        "sendable_msat": sendable_msat,
        "peers": node.list_peers().iter().filter(|p| p.is_connected)
            .map(|p| p.node_id.to_string()).collect::<Vec<_>>(),
        "channels": channels.iter().map(|c| json!({
            "channel_id": c.channel_id.to_string(),
            "counterparty": c.counterparty_node_id.to_string(),
            "value_sat": c.channel_value_sats,
            "outbound_msat": c.outbound_capacity_msat,
            "inbound_msat": c.inbound_capacity_msat,
            "sendable_msat": c.next_outbound_htlc_limit_msat,
            "confirmations": c.confirmations,
            "confirmations_required": c.confirmations_required,
            "ready": c.is_channel_ready,
            "usable": c.is_usable,
            "outbound": c.is_outbound,
        })).collect::<Vec<_>>(),
    })
}

fn payer_note(payment: &PaymentDetails) -> Option<&str> {
    match &payment.kind {
        PaymentKind::Bolt12Offer { payer_note, .. }
        | PaymentKind::Bolt12Refund { payer_note, .. } => payer_note.as_ref().map(|n| n.0.as_str()),
        _ => None,
    }
}

fn payment_json(payment: &PaymentDetails) -> Value {
    let kind = match &payment.kind {
        PaymentKind::Onchain { .. } => "onchain",
        PaymentKind::Bolt11 { .. } | PaymentKind::Bolt11Jit { .. } => "bolt11",
        PaymentKind::Bolt12Offer { .. } => "bolt12_offer",
        PaymentKind::Bolt12Refund { .. } => "bolt12_refund",
        PaymentKind::Spontaneous { .. } => "spontaneous",
    };
    json!({
        "payment_id": hex(&payment.id.0),
        "kind": kind,
        "direction": match payment.direction {
            PaymentDirection::Inbound => "inbound",
            PaymentDirection::Outbound => "outbound",
        },
        "status": status_str(payment.status),
        "amount_msat": payment.amount_msat,
        "fee_paid_msat": payment.fee_paid_msat,
        "payer_note": payer_note(payment),
        "updated": payment.latest_update_timestamp,
    })
}

fn status_str(status: PaymentStatus) -> &'static str {
    match status {
        PaymentStatus::Pending => "pending",
        PaymentStatus::Succeeded => "succeeded",
        PaymentStatus::Failed => "failed",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn event_json(event: &Event) -> Value {
    match event {
        Event::PaymentSuccessful {
            payment_id,
            fee_paid_msat,
            ..
        } => json!({
            "type": "PaymentSuccessful",
            "payment_id": payment_id.map(|id| hex(&id.0)),
            "fee_paid_msat": fee_paid_msat,
        }),
        Event::PaymentFailed {
            payment_id, reason, ..
        } => json!({
            "type": "PaymentFailed",
            "payment_id": payment_id.map(|id| hex(&id.0)),
            "reason": reason.map(|r| format!("{r:?}")),
        }),
        Event::PaymentReceived {
            payment_id,
            amount_msat,
            ..
        } => json!({
            "type": "PaymentReceived",
            "payment_id": payment_id.map(|id| hex(&id.0)),
            "amount_msat": amount_msat,
        }),
        Event::ChannelPending {
            channel_id,
            counterparty_node_id,
            ..
        } => json!({
            "type": "ChannelPending",
            "channel_id": channel_id.to_string(),
            "counterparty": counterparty_node_id.to_string(),
        }),
        Event::ChannelReady {
            channel_id,
            counterparty_node_id,
            ..
        } => json!({
            "type": "ChannelReady",
            "channel_id": channel_id.to_string(),
            "counterparty": counterparty_node_id.map(|k| k.to_string()),
        }),
        Event::ChannelClosed {
            channel_id,
            counterparty_node_id,
            reason,
            ..
        } => json!({
            "type": "ChannelClosed",
            "channel_id": channel_id.to_string(),
            "counterparty": counterparty_node_id.map(|k| k.to_string()),
            "reason": reason.as_ref().map(ToString::to_string),
        }),
        other => {
            json!({"type": format!("{other:?}").split([' ', '{', '(']).next().unwrap_or("Other")})
        }
    }
}
