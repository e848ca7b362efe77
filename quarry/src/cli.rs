//! Command line. Every `serve` flag also reads an environment variable, and overrides the
//! config file: file < environment < flag.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;

/// Quarry: a Bitcoin mining pool server and mining toolkit.
#[derive(Debug, Parser)]
#[command(name = "quarry", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Log warnings and errors only (RUST_LOG, when set, still decides).
    #[arg(short, long, global = true, env = "QUARRY_QUIET")]
    pub quiet: bool,
    /// `text` (for people) or `json` (one object per line, for log collectors).
    #[arg(long, global = true, env = "QUARRY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// `quarry serve`'s status line (hashrate, shares, blocks, last block) every this many
    /// seconds; 0 = never.
    #[arg(long, global = true, env = "QUARRY_STATUS_SECS", default_value_t = 10)]
    pub status_secs: u64,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pool: Stratum V1 server on work from Bitcoin nodes.
    Serve(Box<ServeArgs>),
    /// CPU miner speaking Stratum V1 (version rolling), for tests and demos.
    Mine(Box<MineArgs>),
    /// One payout run: pay every mature balance at or above the threshold from the node wallet.
    Payout(Box<ServeArgs>),
    /// Print a new Stratum V2 authority key pair (for `[sv2]`; miners pin the public key).
    Keygen,
    /// Stratum V2 Template Provider: serves the nodes' templates to SV2 pools (`[tp]`).
    Tp(Box<TpArgs>),
    /// Stratum V1 miners in, one Stratum V2 pool out (extended channels, failover).
    Proxy(Box<crate::proxy::ProxyArgs>),
    /// Simulate many Stratum V1 or V2 miners against any pool and report throughput and latency.
    Loadgen(Box<crate::loadgen::LoadgenArgs>),
    /// Recompute a block's coinbase payouts (coinbase-pplns) from the pool's published shares and
    /// check them against the block on your own node.
    Verify(Box<crate::verify::VerifyArgs>),
}

/// `quarry serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see quarry.example.toml).
    #[arg(short, long, env = "QUARRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Stratum listen address, e.g. 0.0.0.0:3333.
    #[arg(long, env = "QUARRY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// mainnet, testnet, testnet4, signet or regtest.
    #[arg(long, env = "QUARRY_NETWORK")]
    pub network: Option<String>,
    /// Directory for found blocks and state.
    #[arg(long, env = "QUARRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// RPC URL of the first node.
    #[arg(long, env = "QUARRY_NODE_URL")]
    pub node_url: Option<String>,
    /// RPC user of the first node.
    #[arg(long, env = "QUARRY_RPC_USER")]
    pub rpc_user: Option<String>,
    /// RPC password of the first node.
    #[arg(long, env = "QUARRY_RPC_PASSWORD", hide_env_values = true)]
    pub rpc_password: Option<String>,
    /// Cookie file of the first node.
    #[arg(long, env = "QUARRY_RPC_COOKIE")]
    pub rpc_cookie: Option<PathBuf>,
    /// ZMQ hashblock endpoint of the first node.
    #[arg(long, env = "QUARRY_ZMQ_HASHBLOCK")]
    pub zmq_hashblock: Option<String>,
    /// solo or pool.
    #[arg(long, env = "QUARRY_MODE")]
    pub mode: Option<String>,
    /// Pool payout address (pool mode).
    #[arg(long, env = "QUARRY_POOL_ADDRESS")]
    pub pool_address: Option<String>,
    /// Coinbase tag.
    #[arg(long, env = "QUARRY_COINBASE_TAG")]
    pub coinbase_tag: Option<String>,
    /// Start difficulty.
    #[arg(long, env = "QUARRY_START_DIFFICULTY")]
    pub start_difficulty: Option<f64>,
    /// Minimum difficulty.
    #[arg(long, env = "QUARRY_MIN_DIFFICULTY")]
    pub min_difficulty: Option<f64>,
    /// Maximum difficulty.
    #[arg(long, env = "QUARRY_MAX_DIFFICULTY")]
    pub max_difficulty: Option<f64>,
    /// HTTP API and dashboard listen address, e.g. 0.0.0.0:8080 (off unless set here or in
    /// `[api] listen`).
    #[arg(long, env = "QUARRY_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// Ledger database URL (sqlite://… or postgres://…).
    #[arg(long, env = "QUARRY_LEDGER_URL", hide_env_values = true)]
    pub ledger_url: Option<String>,
}

impl ServeArgs {
    /// The config file (or defaults) with overrides applied.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            config.stratum.listen = v;
        }
        if let Some(v) = &self.network {
            config.network = v.clone();
        }
        if let Some(v) = &self.data_dir {
            config.data_dir = v.clone();
        }
        if config.nodes.is_empty() {
            config.nodes.push(Default::default());
        }
        let node = &mut config.nodes[0];
        if let Some(v) = &self.node_url {
            node.url = v.clone();
        }
        if let Some(v) = &self.rpc_user {
            node.user = Some(v.clone());
        }
        if let Some(v) = &self.rpc_password {
            node.password = Some(v.clone());
        }
        if let Some(v) = &self.rpc_cookie {
            node.cookie_file = Some(v.clone());
        }
        if let Some(v) = &self.zmq_hashblock {
            node.zmq_hashblock = Some(v.clone());
        }
        if let Some(v) = &self.mode {
            config.mining.mode = v.clone();
        }
        if let Some(v) = &self.pool_address {
            config.mining.pool_address = Some(v.clone());
        }
        if let Some(v) = &self.coinbase_tag {
            config.mining.coinbase_tag = v.clone();
        }
        if let Some(v) = self.start_difficulty {
            config.vardiff.start = v;
        }
        if let Some(v) = self.min_difficulty {
            config.vardiff.min = v;
        }
        if let Some(v) = self.max_difficulty {
            config.vardiff.max = v;
        }
        if let Some(v) = &self.ledger_url {
            config.ledger.url = Some(v.clone());
        }
        if let Some(v) = self.api_listen {
            config.api.listen = Some(v);
        }
        Ok(config)
    }
}

/// `quarry tp`: the same configuration as `serve` (nodes, data_dir, `[sv2]` key, `[tp]`).
#[derive(Debug, Args)]
pub struct TpArgs {
    /// Configuration and node overrides, as for `serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Template Provider listen address, e.g. 127.0.0.1:8442.
    #[arg(long, env = "QUARRY_TP_LISTEN")]
    pub tp_listen: Option<SocketAddr>,
}

impl TpArgs {
    /// The config file (or defaults) with overrides applied.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut config = self.serve.config()?;
        if let Some(v) = self.tp_listen {
            config.tp.listen = v;
        }
        Ok(config)
    }
}

/// `quarry mine`.
#[derive(Debug, Args)]
pub struct MineArgs {
    /// Pool URL: stratum+tcp://host:port, stratum+ssl://host:port (TLS), or
    /// stratum2+tcp://host:port/<authority key>.
    pub url: String,
    /// For stratum+ssl://: trust only the certificates in this PEM file (a pool's own CA or
    /// self-signed certificate) instead of the web's roots.
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Username: payout address, optionally `.worker`.
    #[arg(short, long)]
    pub user: String,
    /// Password (may carry d=<difficulty>).
    #[arg(short, long, default_value = "x")]
    pub password: String,
    /// Hashing threads (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Do not negotiate version rolling.
    #[arg(long)]
    pub no_version_rolling: bool,
    /// Speak Stratum V2 (also implied by a `stratum2+tcp://host:port/<authority_pubkey>` URL).
    #[arg(long)]
    pub sv2: bool,
    /// The pool's SV2 authority public key (or put it in the URL's path).
    #[arg(long)]
    pub authority_pubkey: Option<String>,
    /// Hash rate announced to an SV2 pool, H/s (its first share target); default 5 MH/s per
    /// thread.
    #[arg(long)]
    pub hashrate: Option<f32>,
    /// `bitcoin` (SHA-256d, Stratum V1 or V2) or `kaspa` (kHeavyHash, the Kaspa dialect).
    #[arg(long, default_value = "bitcoin")]
    pub coin: String,
    /// Kaspa: the user agent sent with `mining.subscribe`; it picks the job encoding
    /// (`IceRiverMiner/...`: one hex string; `GodMiner/...`: Bitmain's; others: arrays).
    #[arg(long)]
    pub agent: Option<String>,
}
