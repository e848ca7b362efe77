//! Configuration: one TOML file, then environment and command-line overrides (see `cli.rs`).
//! `quarry.example.toml` at the repository root documents every key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use bitcoin::{Address, Network};
use quarry_ledger::schemes::{FeePolicy, SplitDestination};
use quarry_ledger::{Rewards, Scheme};
use quarry_stratum::v1::SessionConfig;
use quarry_stratum::PoolMode;
use quarry_work::coinbase::{CoinbaseLayout, MAX_SCRIPT_SIG_LEN};
use quarry_work::vardiff::VardiffConfig;
use quarry_work::Difficulty;
use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `mainnet`, `testnet`, `testnet4`, `signet` or `regtest`.
    pub network: String,
    /// Where found blocks (hex, written before submission) and other state go.
    pub data_dir: PathBuf,
    /// Bitcoin nodes, in order of preference.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeConfig>,
    /// Work and coinbase.
    pub mining: MiningConfig,
    /// The Stratum V1 listener.
    pub stratum: StratumConfig,
    /// Difficulty steering.
    pub vardiff: VardiffToml,
    /// The share log and accounting database.
    pub ledger: LedgerConfig,
    /// Reward scheme, fee and revenue split.
    pub payout: PayoutConfig,
    /// HTTP API, metrics and events.
    pub api: ApiConfig,
    /// Stratum V2 on the stratum port.
    pub sv2: Sv2Toml,
    /// `quarry tp`: the SV2 Template Provider.
    pub tp: TpToml,
    /// Merge-mined chains: AuxPoW (Namecoin and its kin) and RSK.
    #[serde(rename = "aux")]
    pub aux: Vec<AuxConfig>,
    /// The merge-mining fee for the commons.
    pub merge_mining_fee: MergeMiningFeeToml,
    /// Temporary bans for abusive peers.
    pub bans: BansConfig,
    /// The Kaspa pool, on its own port.
    pub kaspa: KaspaToml,
    /// Lightning payouts from an embedded node.
    pub lightning: LightningToml,
}

/// `[lightning]`: an embedded Lightning node (ldk-node, run as the `quarry-lightning` child
/// process on the first `[[node]]`) that pays miners who registered a BOLT12 offer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LightningToml {
    /// Run the node and pay over Lightning.
    pub enabled: bool,
    /// The `quarry-lightning` executable; unset: next to `quarry`, then on `PATH`.
    pub binary: Option<PathBuf>,
    /// Lightning peer-to-peer listen address.
    pub listen: String,
    /// Node alias.
    pub alias: String,
    /// Channel policy: keep a channel to each of these (`<node id>@<host>:<port>`), opened
    /// from the node's on-chain wallet once it holds `channel_sat` plus the anchor reserve.
    pub peers: Vec<String>,
    /// Size of each channel opened, sat.
    pub channel_sat: u64,
    /// Seconds between channel policy checks (and status reads for the API).
    pub channel_check_secs: u64,
    /// Smallest Lightning payout, sat: smaller balances wait.
    pub min_payout_sat: u64,
    /// Largest Lightning payout, sat: larger balances are paid on chain.
    pub max_payout_sat: u64,
    /// Who pays routing fees: `pool`, or `miner` (held back from the amount sent).
    pub routing_fee: String,
    /// Routing fee budget per payment: this many sat…
    pub max_fee_base_sat: u64,
    /// …plus this many millionths of the amount.
    pub max_fee_ppm: u64,
    /// Pay on chain (at or above `payout.threshold_btc`) what Lightning cannot carry: above
    /// the channels' capacity, or a failed payment. Off: it waits for Lightning.
    pub onchain_fallback: bool,
    /// How long a payout run waits for its payments to settle; unsettled ones are reconciled
    /// by the next run.
    pub payment_timeout_secs: u64,
    /// On-chain reserve kept per anchor channel, sat (0: legacy channels without anchors).
    pub anchor_reserve_sat: u64,
    /// Peers whose channels need no anchor reserve (they are trusted to get closes confirmed).
    pub trusted_peers: Vec<String>,
}

impl Default for LightningToml {
    fn default() -> Self {
        LightningToml {
            enabled: false,
            binary: None,
            listen: "0.0.0.0:9735".into(),
            alias: "quarry".into(),
            peers: Vec::new(),
            channel_sat: 1_000_000,
            channel_check_secs: 60,
            min_payout_sat: 1_000,
            max_payout_sat: 2_000_000,
            routing_fee: "pool".into(),
            max_fee_base_sat: 5,
            max_fee_ppm: 5_000,
            onchain_fallback: true,
            payment_timeout_secs: 60,
            anchor_reserve_sat: 25_000,
            trusted_peers: Vec::new(),
        }
    }
}

/// `[kaspa]`: a Kaspa stratum port (kHeavyHash ASICs and GPU miners) on work from kaspad, in
/// the same process as Bitcoin's or alone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KaspaToml {
    /// Serve Kaspa.
    pub enabled: bool,
    /// The Kaspa stratum listen address.
    pub listen: SocketAddr,
    /// `mainnet`, `testnet`, `devnet` or `simnet`: miners' addresses must be on it.
    pub network: String,
    /// kaspad wRPC (borsh) URLs, `ws://host:port` (`--rpclisten-borsh`), in order of preference.
    pub nodes: Vec<String>,
    /// `pool`: the coinbase pays `pool_address` and blocks are shared by `[payout].scheme`;
    /// `solo`: each miner mines a template paying its own address.
    pub mode: String,
    /// What the coinbase pays in pool mode: the pool's Kaspa address.
    pub pool_address: Option<String>,
    /// Coinbase payload after kaspad's version.
    pub extra_data: String,
    /// Milliseconds between template requests when no notification comes.
    pub poll_ms: u64,
    /// Confirmations (DAA score) a blue block needs before its credits are payable.
    pub maturity: u64,
    /// Pool fee in percent of each Kaspa block reward.
    pub fee_percent: f64,
    /// Where the fee goes (a Kaspa address); needed when `fee_percent` is above zero.
    pub fee_address: Option<String>,
    /// Difficulty of a new connection (stratum units: 1 = 2^32 hashes per share).
    pub start_difficulty: f64,
    /// Lowest difficulty.
    pub min_difficulty: f64,
    /// Highest difficulty.
    pub max_difficulty: f64,
    /// Shares per minute vardiff aims for.
    pub shares_per_minute: f64,
    /// Seconds between retargets.
    pub retarget_secs: f64,
    /// Round difficulties down to a power of two (some IceRiver and Bitmain firmware).
    pub pow2_clamp: bool,
    /// Extranonce bytes (0 to 3) for every miner but Bitmain's (0).
    pub extranonce_bytes: usize,
    /// Connections in total.
    pub max_connections: usize,
    /// Connections from one IP.
    pub max_connections_per_ip: usize,
}

impl Default for KaspaToml {
    fn default() -> Self {
        KaspaToml {
            enabled: false,
            listen: SocketAddr::from(([0, 0, 0, 0], 5555)),
            network: "mainnet".into(),
            nodes: vec!["ws://127.0.0.1:17110".into()],
            mode: "pool".into(),
            pool_address: None,
            extra_data: "Quarry".into(),
            poll_ms: 1000,
            maturity: 100,
            fee_percent: 0.0,
            fee_address: None,
            start_difficulty: 64.0,
            min_difficulty: 1e-6,
            max_difficulty: 1e15,
            shares_per_minute: 20.0,
            retarget_secs: 60.0,
            pow2_clamp: false,
            extranonce_bytes: 2,
            max_connections: 10_000,
            max_connections_per_ip: 256,
        }
    }
}

/// `[kaspa]`, checked.
#[derive(Debug)]
pub struct KaspaResolved {
    /// Session settings.
    pub session: quarry_kaspa::session::KaspaConfig,
    /// Who the coinbase pays.
    pub pay: crate::kaspa::PayTo,
    /// Kaspa's scheme and fee.
    pub rewards: Rewards,
}

impl KaspaToml {
    /// Checks `[kaspa]`; `scheme` and `pplns_n` come from `[payout]`.
    pub fn resolve(&self, payout: &PayoutConfig) -> Result<KaspaResolved> {
        use kaspa_addresses::{Address, Prefix};
        let network = match self.network.as_str() {
            "mainnet" => Prefix::Mainnet,
            "testnet" => Prefix::Testnet,
            "devnet" => Prefix::Devnet,
            "simnet" => Prefix::Simnet,
            other => {
                bail!("kaspa.network must be mainnet, testnet, devnet or simnet (got {other})")
            }
        };
        if self.nodes.is_empty() {
            bail!("kaspa.nodes needs at least one wRPC URL (ws://host:port)");
        }
        let kaspa_address = |key: &str, text: &str| -> Result<Address> {
            let address = Address::try_from(text)
                .map_err(|e| anyhow::anyhow!("{key}: invalid Kaspa address '{text}': {e}"))?;
            if address.prefix != network {
                bail!("{key}: '{text}' is not a {network} address");
            }
            Ok(address)
        };
        let solo = match self.mode.as_str() {
            "pool" => false,
            "solo" => true,
            other => bail!("kaspa.mode must be pool or solo (got {other})"),
        };
        let pay = match (solo, &self.pool_address) {
            (true, _) => crate::kaspa::PayTo::Solo,
            (false, Some(address)) => {
                crate::kaspa::PayTo::Pool(kaspa_address("kaspa.pool_address", address)?)
            }
            (false, None) => {
                bail!("kaspa.pool_address is required in pool mode: the coinbase pays it")
            }
        };
        if !(0.0..=100.0).contains(&self.fee_percent) {
            bail!("kaspa.fee_percent must be 0 to 100");
        }
        let split = match (&self.fee_address, self.fee_percent > 0.0) {
            (Some(address), _) => vec![SplitDestination {
                label: "pool-fee".into(),
                address: kaspa_address("kaspa.fee_address", address)?.to_string(),
                ppm: 1_000_000,
            }],
            (None, true) => bail!("kaspa.fee_address is required when kaspa.fee_percent > 0"),
            (None, false) => Vec::new(),
        };
        if !(1..=60_000).contains(&self.poll_ms) {
            bail!("kaspa.poll_ms must be 1 to 60000");
        }
        if self.extranonce_bytes > 3 {
            bail!("kaspa.extranonce_bytes must be 0 to 3");
        }
        if !(self.shares_per_minute.is_finite() && self.shares_per_minute > 0.0) {
            bail!("kaspa.shares_per_minute must be a positive number");
        }
        let difficulty = |key: &str, value: f64| {
            Difficulty::new(value).with_context(|| format!("kaspa.{key} must be a positive number"))
        };
        let (start, min, max) = (
            difficulty("start_difficulty", self.start_difficulty)?,
            difficulty("min_difficulty", self.min_difficulty)?,
            difficulty("max_difficulty", self.max_difficulty)?,
        );
        if min.get() > max.get() || start.get() < min.get() || start.get() > max.get() {
            bail!("kaspa difficulties need min_difficulty <= start_difficulty <= max_difficulty");
        }
        let scheme = match solo {
            // The coinbase pays the finder: nothing to share.
            true => Scheme::Solo,
            false => Scheme::parse(&payout.scheme, payout.pplns_n).with_context(|| {
                format!(
                    "payout.scheme must be pplns, coinbase-pplns, prop, pps or solo, not {}",
                    payout.scheme
                )
            })?,
        };
        if scheme == Scheme::Pps && (self.fee_percent - payout.fee_percent).abs() > 1e-9 {
            // One PPS accrual credits every chain's shares, at one fee.
            bail!("kaspa.fee_percent must equal payout.fee_percent under PPS");
        }
        let defaults = quarry_kaspa::session::KaspaConfig::default();
        let session = quarry_kaspa::session::KaspaConfig {
            network,
            vardiff: VardiffConfig {
                start,
                min,
                max,
                target_interval_secs: 60.0 / self.shares_per_minute,
                retarget_secs: self.retarget_secs.max(1.0),
                ..defaults.vardiff
            },
            pow2_clamp: self.pow2_clamp,
            extranonce_bytes: self.extranonce_bytes,
            solo,
            ..defaults
        };
        let policy = FeePolicy {
            fee_ppm: (self.fee_percent * 10_000.0).round() as u64,
            split,
        };
        Ok(KaspaResolved {
            session,
            pay,
            rewards: Rewards::new(scheme, policy),
        })
    }
}

/// `[bans]`: per-IP scores for invalid shares, garbage, floods and protocol violations, halving
/// over time; an address that reaches the threshold is refused for a while.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BansConfig {
    /// Bans are imposed when true (scores are kept either way).
    pub enabled: bool,
    /// Score at which an address is banned.
    pub threshold: f64,
    /// How long a ban lasts, seconds.
    pub ban_secs: u64,
    /// Scores halve every this many seconds.
    pub half_life_secs: u64,
}

impl Default for BansConfig {
    fn default() -> Self {
        BansConfig {
            enabled: true,
            threshold: 100.0,
            ban_secs: 600,
            half_life_secs: 300,
        }
    }
}

impl BansConfig {
    /// The policy, checked.
    pub fn policy(&self) -> Result<quarry_stratum::bans::BanPolicy> {
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            bail!("bans.threshold must be a positive number");
        }
        Ok(quarry_stratum::bans::BanPolicy {
            threshold: self.threshold,
            ban_ms: self.ban_secs.saturating_mul(1000),
            half_life_ms: self.half_life_secs.max(1).saturating_mul(1000),
            ..quarry_stratum::bans::BanPolicy::default()
        })
    }
}

/// One merge-mined chain. Key names are `[[node]]`'s where they mean the same.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuxConfig {
    /// `auxpow` (`createauxblock` / `submitauxblock`, Namecoin Core's RPC) or `rsk`
    /// (`mnr_getWork` / `mnr_submitBitcoinBlockPartialMerkle`).
    pub kind: String,
    /// The chain's key in the ledger, API and metrics: `namecoin`, `rsk`, ...
    pub name: String,
    /// JSON-RPC URL.
    pub url: String,
    /// RPC user (with `password`).
    pub user: Option<String>,
    /// RPC password.
    pub password: Option<String>,
    /// Cookie file.
    pub cookie_file: Option<PathBuf>,
    /// What `createauxblock` pays: the pool's address on that chain (AuxPoW only).
    pub address: Option<String>,
    /// The chain id the node must report (AuxPoW only; Namecoin is 1 on every network).
    pub chain_id: Option<u32>,
    /// Polled when true.
    pub enabled: bool,
    /// How often to ask for new work, milliseconds (also on every new Bitcoin tip).
    pub poll_ms: u64,
    /// Pay this chain's mature balances from its node's wallet (`sendmany`) in each payout
    /// run (AuxPoW only; RSK balances are recorded, not paid).
    pub payouts: bool,
    /// Smallest payout, in the chain's coin.
    pub payout_threshold: f64,
    /// Confirmations on its own chain before an aux block's credits mature; unset: the
    /// coinbase maturity `[payout].maturity` for AuxPoW, 4000 for RSK (REMASC pays then).
    pub maturity: Option<u64>,
}

impl AuxConfig {
    /// Confirmations before this chain's credits mature (`coinbase_maturity`: Bitcoin's
    /// `[payout].maturity`).
    pub fn maturity(&self, coinbase_maturity: u64) -> u64 {
        self.maturity.unwrap_or(match self.kind.as_str() {
            "rsk" => 4000,
            _ => coinbase_maturity,
        })
    }

    /// The payout threshold in the chain's base unit (1e-8 coin).
    pub fn threshold_sat(&self) -> u64 {
        (self.payout_threshold * 100_000_000.0).round() as u64
    }

    /// Its node's RPC settings, as a `[[node]]` would have them.
    pub fn rpc(&self) -> NodeConfig {
        NodeConfig {
            url: self.url.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            cookie_file: self.cookie_file.clone(),
            zmq_hashblock: None,
        }
    }
}

/// A JSON-RPC endpoint's URL and credentials, checked; `key` names it in the error.
fn check_rpc(key: &str, node: &NodeConfig) -> Result<()> {
    if node.cookie_file.is_none() && (node.user.is_none() || node.password.is_none()) {
        bail!("{key}: set cookie_file, or user and password");
    }
    if !node.url.starts_with("http://") {
        bail!("{key}.url must start with http:// (got {:?})", node.url);
    }
    Ok(())
}

impl Default for AuxConfig {
    fn default() -> Self {
        AuxConfig {
            kind: "auxpow".into(),
            name: String::new(),
            url: String::new(),
            user: None,
            password: None,
            cookie_file: None,
            address: None,
            chain_id: None,
            enabled: true,
            poll_ms: 1000,
            payouts: true,
            payout_threshold: 0.01,
            maturity: None,
        }
    }
}

/// `[merge_mining_fee]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MergeMiningFeeToml {
    /// Taken from every merge-mined block when true.
    pub enabled: bool,
    /// Percent of each aux block's reward, before the pool's fee and split.
    pub fee_percentage: f64,
    /// The commons address per chain name (`commons.namecoin = "N..."`).
    pub commons: std::collections::BTreeMap<String, String>,
    /// This pool's contributor id, announced with each fee (the `MergeMiningReward` event).
    pub contributor_id: String,
    /// Pay the commons' balance out with each chain's payouts; when false it is kept (and
    /// shown) as the commons' balance for the operator to send.
    pub auto_distribute: bool,
}

impl Default for MergeMiningFeeToml {
    fn default() -> Self {
        MergeMiningFeeToml {
            enabled: true,
            fee_percentage: 1.0,
            commons: std::collections::BTreeMap::new(),
            contributor_id: String::new(),
            auto_distribute: true,
        }
    }
}

/// The Template Provider as written in TOML. It signs with the `[sv2]` authority key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TpToml {
    /// Where SV2 pools (SRI's `pool_sv2`, a job declarator) connect for templates.
    pub listen: SocketAddr,
    /// Block weight the node leaves for the coinbase (Bitcoin Core's `-blockreservedweight`).
    pub reserved_weight: u32,
    /// Sigop cost the node leaves for the coinbase (Bitcoin Core: 400).
    pub reserved_sigops: u16,
}

impl Default for TpToml {
    fn default() -> Self {
        TpToml {
            listen: SocketAddr::from(([127, 0, 0, 1], 8442)),
            reserved_weight: 4000,
            reserved_sigops: 400,
        }
    }
}

/// Stratum V2 as written in TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sv2Toml {
    /// Accept SV2 (Noise) connections on `stratum.listen`, told apart from V1 by the first bytes.
    pub enabled: bool,
    /// The authority secret key (base58check, as `quarry keygen` prints it). When unset, a key
    /// is created once in `data_dir/sv2-authority.key` and kept there.
    pub authority_secret_key: Option<String>,
    /// Optional: checked against the secret key, so a typo cannot start a pool under the wrong
    /// identity.
    pub authority_public_key: Option<String>,
    /// How long each connection's certificate is valid, from its handshake.
    pub certificate_validity_secs: u32,
    /// Also accept SV2 over QUIC (UDP) here: each bidirectional stream a session (a Quarry
    /// extension; miners use `stratum2+quic://host:port/<authority key>`).
    pub quic_listen: Option<SocketAddr>,
    /// Also accept SV2 over Iroh, bound here (UDP): miners dial the node id the pool logs at
    /// start (`iroh://<node id>[@host:port]/<authority key>`; its key is kept in
    /// `data_dir/iroh-secret.key`).
    pub iroh_listen: Option<SocketAddr>,
    /// Iroh through n0's public relays and discovery (NAT traversal); off: direct addresses
    /// only, nothing sent to third parties.
    pub iroh_relays: bool,
    /// Job Declaration: miners may build their own jobs (their own transactions) and declare
    /// them on the same port; declared coinbases must pay the pool (solo: the miner).
    pub job_declaration: bool,
    /// Most transactions one declared job may list.
    pub jd_max_transactions: usize,
    /// Also take coinbase-only declarers (no transactions declared): the pool checks their
    /// coinbase, tip and bits but never sees their blocks' transactions, and credits a block
    /// once its node has it from the miner.
    pub jd_coinbase_only: bool,
}

impl Default for Sv2Toml {
    fn default() -> Self {
        Sv2Toml {
            enabled: true,
            authority_secret_key: None,
            authority_public_key: None,
            certificate_validity_secs: 3600,
            quic_listen: None,
            iroh_listen: None,
            iroh_relays: false,
            job_declaration: false,
            jd_max_transactions: 20_000,
            jd_coinbase_only: false,
        }
    }
}

/// The HTTP listener.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address for the API, `/metrics` and `/api/events`; off when unset.
    pub listen: Option<SocketAddr>,
    /// Bearer token for `/api/admin/*`; admin endpoints are off when unset.
    pub admin_token: Option<String>,
}

/// How block rewards are shared.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PayoutConfig {
    /// `pplns`, `prop`, `pps` or `solo` (solo mode always uses `solo`).
    pub scheme: String,
    /// PPLNS window in multiples of the network difficulty.
    pub pplns_n: f64,
    /// Pool fee in percent of each block reward.
    pub fee_percent: f64,
    /// Where fee income goes; percentages sum to 100.
    pub split: Vec<SplitConfig>,
    /// Confirmations before a coinbase is spendable and its credits payable.
    pub maturity: u64,
    /// Smallest payout, in BTC.
    pub threshold_btc: f64,
    /// Seconds between payout runs inside `serve` (pool mode); 0 turns them off.
    pub interval_secs: u64,
    /// `coinbase-pplns`: payout outputs per coinbase at most, besides the pool's own.
    pub coinbase_max_outputs: usize,
    /// `coinbase-pplns`: the node's `-blockreservedweight` (Bitcoin Core's default 8000): header,
    /// transaction count and coinbase must fit in it.
    pub coinbase_reserved_weight: u64,
    /// `coinbase-pplns`: rebuild jobs between templates when the window's split moved by more
    /// than this fraction (0.01 = 1 % of the reward changes hands).
    pub coinbase_rebuild_tolerance: f64,
    /// `coinbase-pplns`: seconds between reads of the share log into the window.
    pub coinbase_refresh_secs: f64,
}

impl Default for PayoutConfig {
    fn default() -> Self {
        PayoutConfig {
            scheme: "pplns".into(),
            pplns_n: 2.0,
            fee_percent: 0.0,
            split: Vec::new(),
            maturity: 100,
            threshold_btc: 0.001,
            interval_secs: 600,
            coinbase_max_outputs: 100,
            coinbase_reserved_weight: 8000,
            coinbase_rebuild_tolerance: 0.01,
            coinbase_refresh_secs: 2.0,
        }
    }
}

/// One destination of fee income.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Label, e.g. `core-development`.
    pub label: String,
    /// Address.
    pub address: String,
    /// Percent of fee income.
    pub percent: f64,
}

/// Where accepted shares are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// `sqlite://path` (embedded, default `<data_dir>/quarry.db`) or `postgres://user:pw@host/db`.
    pub url: Option<String>,
    /// Name of this `quarry serve` in the share log (several may share one PostgreSQL).
    pub instance: Option<String>,
    /// Days raw shares are kept (shares still inside the window of an uncredited block, or not
    /// yet credited by PPS, are kept longer).
    pub retention_days: Option<f64>,
    /// Hours minute buckets of the hashrate history are kept.
    pub history_minutes_hours: f64,
    /// Days hour buckets of the hashrate history are kept.
    pub history_hours_days: f64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        let retention = quarry_ledger::Retention::default();
        LedgerConfig {
            url: None,
            instance: None,
            retention_days: None,
            history_minutes_hours: retention.minutes_ms as f64 / 3_600_000.0,
            history_hours_days: retention.hours_ms as f64 / 86_400_000.0,
        }
    }
}

impl LedgerConfig {
    /// How long the hashrate history keeps each resolution (an hour and a day at least).
    pub fn history_retention(&self) -> quarry_ledger::Retention {
        quarry_ledger::Retention {
            minutes_ms: (self.history_minutes_hours.max(1.0) * 3_600_000.0) as i64,
            hours_ms: (self.history_hours_days.max(1.0) * 86_400_000.0) as i64,
        }
    }
}

impl Config {
    /// The ledger URL, defaulting to SQLite in the data directory.
    pub fn ledger_url(&self) -> String {
        self.ledger
            .url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("quarry.db").display()))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            network: "regtest".into(),
            data_dir: PathBuf::from("quarry-data"),
            nodes: vec![NodeConfig::default()],
            mining: MiningConfig::default(),
            stratum: StratumConfig::default(),
            vardiff: VardiffToml::default(),
            ledger: LedgerConfig::default(),
            payout: PayoutConfig::default(),
            api: ApiConfig::default(),
            bans: BansConfig::default(),
            sv2: Sv2Toml::default(),
            tp: TpToml::default(),
            aux: Vec::new(),
            merge_mining_fee: MergeMiningFeeToml::default(),
            kaspa: KaspaToml::default(),
            lightning: LightningToml::default(),
        }
    }
}

/// One bitcoind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// JSON-RPC URL.
    pub url: String,
    /// RPC user (with `password`).
    pub user: Option<String>,
    /// RPC password.
    pub password: Option<String>,
    /// Cookie file, read on every request so that a node restart's new cookie is picked up.
    pub cookie_file: Option<PathBuf>,
    /// ZMQ `hashblock` endpoint (`-zmqpubhashblock`), for instant new-block detection.
    pub zmq_hashblock: Option<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            url: "http://127.0.0.1:18443".into(),
            user: None,
            password: None,
            cookie_file: None,
            zmq_hashblock: None,
        }
    }
}

/// How work is built.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MiningConfig {
    /// `solo`: each miner's coinbase pays its own address. `pool`: coinbases pay `pool_address`.
    pub mode: String,
    /// The pool's payout address (pool mode).
    pub pool_address: Option<String>,
    /// Pushed in every coinbase scriptSig.
    pub coinbase_tag: String,
    /// Per-connection extranonce bytes.
    pub extranonce1_size: usize,
    /// Miner-rolled extranonce bytes (4 to 8).
    pub extranonce2_size: usize,
    /// Version bits miners may roll, hex (BIP320).
    pub version_mask: String,
    /// Seconds between template refreshes for new fees (jobs sent without clean_jobs).
    pub template_refresh_secs: u64,
    /// Seconds between best-block polls, the fallback when longpoll and ZMQ miss a block.
    pub poll_interval_secs: u64,
    /// Use BIP22 long polling.
    pub longpoll: bool,
    /// Milliseconds that shares on the previous tip are still accepted after a new block.
    pub stale_grace_ms: u64,
}

impl Default for MiningConfig {
    fn default() -> Self {
        MiningConfig {
            mode: "solo".into(),
            pool_address: None,
            coinbase_tag: "/quarry/".into(),
            extranonce1_size: 4,
            extranonce2_size: 8,
            version_mask: "1fffe000".into(),
            template_refresh_secs: 30,
            poll_interval_secs: 2,
            longpoll: true,
            stale_grace_ms: 2000,
        }
    }
}

/// The listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StratumConfig {
    /// Serve Bitcoin. False runs only `[kaspa]`, with no Bitcoin node.
    pub enabled: bool,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Bind `listen` (and `tls_listen`) with SO_REUSEPORT, so that several `quarry serve`
    /// frontends on one machine share the port; the kernel spreads connections across them.
    /// Each needs its own `extranonce1_prefix` and API address, and all one PostgreSQL.
    pub reuse_port: bool,
    /// Connections in total.
    pub max_connections: usize,
    /// Connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Seconds from connect to subscribe + authorize.
    pub auth_timeout_secs: u64,
    /// Seconds without a line before disconnect.
    pub idle_timeout_secs: u64,
    /// Consecutive invalid lines before disconnect.
    pub max_invalid_lines: u32,
    /// Seconds a write to a miner may block before the miner is dropped.
    pub write_timeout_secs: u64,
    /// Requests other than shares (subscribe, authorize, ...) per second per connection, on
    /// average; a connection over its budget is closed.
    pub control_requests_per_sec: u32,
    /// ... and back to back.
    pub control_requests_burst: u32,
    /// Shares per second per connection, on average.
    pub submits_per_sec: u32,
    /// ... and back to back.
    pub submits_burst: u32,
    /// Hex bytes every extranonce1 of this frontend starts with; frontends sharing a database
    /// must use different ones (e.g. "01", "02").
    pub extranonce1_prefix: String,
    /// Load balancers (addresses or CIDR ranges) whose connections start with a PROXY protocol
    /// header, v1 or v2, naming the miner; empty: none. Only these are read for one.
    pub proxy_protocol_from: Vec<String>,
    /// A second listener for Stratum V1 over TLS (`stratum+ssl://`); unset: none.
    pub tls_listen: Option<SocketAddr>,
    /// Its certificate chain, PEM (leaf first); reloaded on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// Its private key, PEM.
    pub tls_key: Option<PathBuf>,
}

impl Default for StratumConfig {
    fn default() -> Self {
        StratumConfig {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 3333)),
            reuse_port: false,
            max_connections: 100_000,
            max_connections_per_ip: 2_000,
            auth_timeout_secs: 30,
            idle_timeout_secs: 600,
            max_invalid_lines: 5,
            write_timeout_secs: 10,
            control_requests_per_sec: 2,
            control_requests_burst: 64,
            submits_per_sec: 500,
            submits_burst: 5_000,
            extranonce1_prefix: String::new(),
            proxy_protocol_from: Vec::new(),
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Vardiff as written in TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VardiffToml {
    /// Difficulty of a new connection.
    pub start: f64,
    /// Lowest difficulty.
    pub min: f64,
    /// Highest difficulty.
    pub max: f64,
    /// Seconds between shares wanted.
    pub target_interval_secs: f64,
    /// Seconds between retargets.
    pub retarget_secs: f64,
    /// Tolerated deviation, as a fraction (0.3 = 30 %).
    pub variance: f64,
}

impl Default for VardiffToml {
    fn default() -> Self {
        VardiffToml {
            start: 1.0,
            min: 1.0,
            max: 65536.0,
            target_interval_secs: 10.0,
            retarget_secs: 90.0,
            variance: 0.3,
        }
    }
}

impl Config {
    /// Reads a TOML file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
    }

    /// The network.
    pub fn network(&self) -> Result<Network> {
        parse_network(&self.network)
    }

    /// Checks everything and builds what the runtime needs; errors name the key.
    pub fn resolve(&self) -> Result<Resolved> {
        let network = self.network()?;
        if self.nodes.is_empty() {
            bail!("at least one [[node]] is required");
        }
        for (i, node) in self.nodes.iter().enumerate() {
            check_rpc(&format!("node[{i}]"), node)?;
        }
        let mining = &self.mining;
        if !(1..=8).contains(&mining.extranonce1_size) {
            bail!("mining.extranonce1_size must be 1 to 8");
        }
        if !(4..=8).contains(&mining.extranonce2_size) {
            bail!("mining.extranonce2_size must be 4 to 8");
        }
        let prefix = hex::decode(&self.stratum.extranonce1_prefix)
            .context("stratum.extranonce1_prefix must be hex")?;
        if prefix.len() >= mining.extranonce1_size {
            bail!("stratum.extranonce1_prefix must be shorter than mining.extranonce1_size");
        }
        // Every live connection holds one extranonce1: the limit must fit the id space.
        let ids = quarry_stratum::pool::extranonce_space(mining.extranonce1_size - prefix.len());
        if self.stratum.max_connections as u64 > ids {
            bail!(
                "stratum.max_connections = {} exceeds the {ids} extranonce1 values that \
                 mining.extranonce1_size = {} leaves after stratum.extranonce1_prefix ({} bytes); \
                 raise the size, shorten the prefix or lower the limit",
                self.stratum.max_connections,
                mining.extranonce1_size,
                prefix.len()
            );
        }
        let version_mask = u32::from_str_radix(&mining.version_mask, 16)
            .context("mining.version_mask must be hex")?;
        let mode = match mining.mode.as_str() {
            "solo" => PoolMode::Solo,
            "pool" => {
                let text = mining
                    .pool_address
                    .as_deref()
                    .context("mining.pool_address is required in pool mode")?;
                let address = parse_address(text, network)
                    .with_context(|| format!("mining.pool_address {text}"))?;
                PoolMode::Pool {
                    payout_script: address.script_pubkey().into_bytes(),
                }
            }
            other => bail!("mining.mode must be solo or pool, not {other}"),
        };
        let layout = CoinbaseLayout {
            extranonce1_len: mining.extranonce1_size,
            extranonce2_len: mining.extranonce2_size,
            tag: mining.coinbase_tag.as_bytes().to_vec(),
        };
        let aux = self.aux_chains()?;
        // Height push (up to 5 bytes) + the merged-mining commitment (a 44-byte push, with
        // AuxPoW chains) + extranonce push + tag push must fit in 100 bytes.
        let commitment = match aux.iter().any(|a| a.kind == "auxpow") {
            true => 1 + quarry_work::auxpow::COMMITMENT_LEN,
            false => 0,
        };
        let worst = 5 + commitment + 1 + layout.extranonce_len() + 2 + layout.tag.len();
        if worst > MAX_SCRIPT_SIG_LEN {
            bail!(
                "mining.coinbase_tag is too long: the coinbase scriptSig could reach {worst} bytes \
                 ({commitment} of them the merged-mining commitment), the limit is {MAX_SCRIPT_SIG_LEN}"
            );
        }
        let vardiff = self.vardiff_config()?;
        let stratum = &self.stratum;
        let session = SessionConfig {
            network,
            mode,
            extranonce2_len: mining.extranonce2_size,
            version_mask,
            vardiff,
            stale_grace_ms: mining.stale_grace_ms,
            auth_timeout_ms: stratum.auth_timeout_secs.saturating_mul(1000),
            idle_timeout_ms: stratum.idle_timeout_secs.saturating_mul(1000),
            max_invalid_lines: stratum.max_invalid_lines.max(1),
            control_budget: quarry_stratum::rate::Budget {
                per_sec: stratum.control_requests_per_sec,
                burst: stratum.control_requests_burst.max(1),
            },
            submit_budget: quarry_stratum::rate::Budget {
                per_sec: stratum.submits_per_sec,
                burst: stratum.submits_burst.max(1),
            },
            ..SessionConfig::default()
        };
        let mut rewards = self.rewards(network)?;
        for chain in &aux {
            let key = quarry_ledger::Chain::new(&chain.name)?;
            rewards.parents.insert(key, quarry_ledger::Chain::BITCOIN);
        }
        rewards.merge_mining_fee = self.merge_mining_fee(&aux)?;
        let coinbase = match (&rewards.scheme, &session.mode) {
            (Scheme::CoinbasePplns { n }, PoolMode::Pool { payout_script }) => {
                Some(self.coinbase_settings(*n, &rewards, payout_script, network, &layout)?)
            }
            _ => None,
        };
        Ok(Resolved {
            layout,
            session,
            rewards,
            extranonce1_prefix: prefix,
            aux,
            coinbase,
        })
    }

    /// `coinbase-pplns`, checked.
    fn coinbase_settings(
        &self,
        n: f64,
        rewards: &Rewards,
        pool_script: &[u8],
        network: Network,
        layout: &CoinbaseLayout,
    ) -> Result<crate::coinbase_payouts::Settings> {
        let payout = &self.payout;
        // An SV2 extended job carries the coinbase's end in at most 64 KiB: 1000 outputs of the
        // longest address script (51 bytes) leave room for the rest.
        if !(1..=1000).contains(&payout.coinbase_max_outputs) {
            bail!("payout.coinbase_max_outputs must be 1 to 1000");
        }
        if !(1000..=4_000_000).contains(&payout.coinbase_reserved_weight) {
            bail!("payout.coinbase_reserved_weight must be the node's -blockreservedweight (1000 to 4000000)");
        }
        if !(0.0..1.0).contains(&payout.coinbase_rebuild_tolerance) {
            bail!("payout.coinbase_rebuild_tolerance must be in [0, 1)");
        }
        if !positive(payout.coinbase_refresh_secs) {
            bail!("payout.coinbase_refresh_secs must be a positive number");
        }
        Ok(crate::coinbase_payouts::Settings {
            n,
            policy: rewards.policy.clone(),
            min_output_sat: self.threshold_sat(),
            max_outputs: payout.coinbase_max_outputs,
            reserved_weight: payout.coinbase_reserved_weight,
            tolerance: payout.coinbase_rebuild_tolerance,
            refresh: std::time::Duration::from_secs_f64(payout.coinbase_refresh_secs),
            pool_script: pool_script.to_vec(),
            pool_address: self.mining.pool_address.clone().unwrap_or_default(),
            network,
            layout: layout.clone(),
        })
    }

    /// The enabled `[[aux]]` chains, checked.
    fn aux_chains(&self) -> Result<Vec<AuxConfig>> {
        let mut chosen: Vec<AuxConfig> = Vec::new();
        for (i, aux) in self.aux.iter().enumerate() {
            if !aux.enabled {
                continue;
            }
            quarry_ledger::Chain::new(&aux.name).with_context(|| format!("aux[{i}].name"))?;
            if aux.name == quarry_ledger::Chain::BITCOIN.as_str() {
                bail!("aux[{i}].name must not be bitcoin: that is the parent chain");
            }
            check_rpc(&format!("aux[{i}]"), &aux.rpc())?;
            match aux.kind.as_str() {
                "auxpow" => {
                    if aux.address.as_deref().is_none_or(str::is_empty) {
                        bail!(
                            "aux[{i}] ({}).address is required: what createauxblock pays",
                            aux.name
                        );
                    }
                    if let Some(other) = chosen.iter().find(|c| {
                        c.kind == "auxpow" && c.chain_id.is_some() && c.chain_id == aux.chain_id
                    }) {
                        bail!(
                            "aux[{i}] ({}) has chain_id {:?} like {}: two chains with one id can never share a merged-mining tree",
                            aux.name, aux.chain_id, other.name
                        );
                    }
                }
                "rsk" => {
                    if chosen.iter().any(|c| c.kind == "rsk") {
                        bail!("aux[{i}]: only one rsk chain can be merge-mined (its tag is the coinbase's last output)");
                    }
                }
                other => bail!("aux[{i}].kind must be auxpow or rsk, not {other}"),
            }
            if chosen.iter().any(|c| c.name == aux.name) {
                bail!("aux[{i}].name {} is used twice", aux.name);
            }
            if !(aux.payout_threshold.is_finite() && aux.payout_threshold >= 0.0) {
                bail!("aux[{i}].payout_threshold must be a non-negative amount");
            }
            if aux.poll_ms == 0 {
                bail!("aux[{i}].poll_ms must be positive");
            }
            chosen.push(aux.clone());
        }
        Ok(chosen)
    }

    fn merge_mining_fee(&self, aux: &[AuxConfig]) -> Result<Option<quarry_ledger::MergeMiningFee>> {
        let fee = &self.merge_mining_fee;
        if !fee.enabled || aux.is_empty() {
            return Ok(None);
        }
        if !(0.0..=100.0).contains(&fee.fee_percentage) {
            bail!(
                "merge_mining_fee.fee_percentage must be between 0 and 100 (got {})",
                fee.fee_percentage
            );
        }
        let mut commons = std::collections::BTreeMap::new();
        for chain in aux {
            let Some(address) = fee.commons.get(&chain.name).filter(|a| !a.is_empty()) else {
                bail!(
                    "merge_mining_fee.commons.{0} is required while merge_mining_fee.enabled: \
                     the commons address on {0} (or set enabled = false)",
                    chain.name
                );
            };
            commons.insert(quarry_ledger::Chain::new(&chain.name)?, address.clone());
        }
        Ok(Some(quarry_ledger::MergeMiningFee {
            fee_ppm: (fee.fee_percentage * 10_000.0).round() as u64,
            commons,
            contributor_id: fee.contributor_id.clone(),
        }))
    }

    fn rewards(&self, network: Network) -> Result<Rewards> {
        let payout = &self.payout;
        let scheme = if self.mining.mode == "solo" {
            Scheme::Solo
        } else {
            if !(payout.pplns_n.is_finite() && payout.pplns_n > 0.0) {
                bail!("payout.pplns_n must be a positive number");
            }
            Scheme::parse(&payout.scheme, payout.pplns_n).with_context(|| {
                format!(
                    "payout.scheme must be pplns, coinbase-pplns, prop, pps or solo, not {}",
                    payout.scheme
                )
            })?
        };
        if !(payout.threshold_btc.is_finite() && payout.threshold_btc > 0.0) {
            bail!("payout.threshold_btc must be a positive number of BTC");
        }
        if !(0.0..=100.0).contains(&payout.fee_percent) {
            bail!(
                "payout.fee_percent must be between 0 and 100 (got {})",
                payout.fee_percent
            );
        }
        let mut split = Vec::new();
        for (i, destination) in payout.split.iter().enumerate() {
            parse_address(&destination.address, network)
                .with_context(|| format!("payout.split[{i}].address {}", destination.address))?;
            if !(destination.percent.is_finite() && destination.percent >= 0.0) {
                bail!("payout.split[{i}].percent must not be negative");
            }
            split.push(SplitDestination {
                label: destination.label.clone(),
                address: destination.address.clone(),
                ppm: (destination.percent * 10_000.0).round() as u64,
            });
        }
        let policy = FeePolicy {
            fee_ppm: (payout.fee_percent * 10_000.0).round() as u64,
            split,
        };
        if policy.fee_ppm > 0 && policy.split.is_empty() {
            bail!("payout.split: a fee needs at least one destination (e.g. the 60/25/10/5 split in quarry.example.toml)");
        }
        policy
            .validate()
            .map_err(|e| anyhow::anyhow!("payout.split: {e}"))?;
        Ok(Rewards::new(scheme, policy))
    }

    fn vardiff_config(&self) -> Result<VardiffConfig> {
        let v = &self.vardiff;
        let difficulty = |value: f64, key: &str| {
            Difficulty::new(value)
                .with_context(|| format!("vardiff.{key} must be a positive number"))
        };
        let (start, min, max) = (
            difficulty(v.start, "start")?,
            difficulty(v.min, "min")?,
            difficulty(v.max, "max")?,
        );
        if min > max {
            bail!("vardiff.min ({}) is above vardiff.max ({})", v.min, v.max);
        }
        if !positive(v.target_interval_secs) || !positive(v.retarget_secs) {
            bail!("vardiff.target_interval_secs and vardiff.retarget_secs must be positive");
        }
        if !(0.0..1.0).contains(&v.variance) {
            bail!("vardiff.variance must be in [0, 1)");
        }
        Ok(VardiffConfig {
            start: start.clamp(min, max),
            min,
            max,
            target_interval_secs: v.target_interval_secs,
            retarget_secs: v.retarget_secs,
            variance: v.variance,
        })
    }
}

/// True for finite numbers above zero (false for NaN).
fn positive(value: f64) -> bool {
    value.is_finite() && value > 0.0
}

/// Checked configuration, ready for the runtime.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Coinbase layout.
    pub layout: CoinbaseLayout,
    /// Per-session settings.
    pub session: SessionConfig,
    /// Reward scheme and fee policy.
    pub rewards: Rewards,
    /// Leading bytes of every extranonce1.
    pub extranonce1_prefix: Vec<u8>,
    /// The merge-mined chains.
    pub aux: Vec<AuxConfig>,
    /// Payouts in the coinbase (`coinbase-pplns` in pool mode).
    pub coinbase: Option<crate::coinbase_payouts::Settings>,
}

impl Config {
    /// The payout threshold in satoshis.
    pub fn threshold_sat(&self) -> u64 {
        (self.payout.threshold_btc * 100_000_000.0).round() as u64
    }
}

impl Config {
    /// The SV2 settings: the configured authority key, or the one kept in `data_dir` (created on
    /// first start). `None` when SV2 is disabled.
    pub fn sv2(&self) -> Result<Option<quarry_stratum::v2::Sv2Config>> {
        if !self.sv2.enabled {
            return Ok(None);
        }
        let mut sv2 = quarry_stratum::v2::Sv2Config::new(self.authority()?);
        sv2.certificate_validity_secs = self.sv2.certificate_validity_secs.max(60);
        Ok(Some(sv2))
    }

    /// The Template Provider's settings, signed by the same authority key as `[sv2]`.
    pub fn tp(&self) -> Result<quarry_stratum::v2::template_provider::TpConfig> {
        let mut tp = quarry_stratum::v2::template_provider::TpConfig::new(self.authority()?);
        tp.certificate_validity_secs = self.sv2.certificate_validity_secs.max(60);
        tp.reserved_weight = self.tp.reserved_weight;
        tp.reserved_sigops = self.tp.reserved_sigops;
        Ok(tp)
    }

    /// The configured authority key, or the one kept in `data_dir` (created on first start).
    fn authority(&self) -> Result<quarry_stratum::v2::AuthorityKeypair> {
        use quarry_stratum::v2::AuthorityKeypair;
        let public = self.sv2.authority_public_key.as_deref();
        let authority = match &self.sv2.authority_secret_key {
            Some(secret) => AuthorityKeypair::from_text(secret, public)
                .map_err(|e| anyhow::anyhow!("sv2.authority_secret_key: {e}"))?,
            None => {
                let path = self.data_dir.join("sv2-authority.key");
                let text = match std::fs::read_to_string(&path) {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let fresh = AuthorityKeypair::generate();
                        std::fs::create_dir_all(&self.data_dir).with_context(|| {
                            format!("creating data_dir {}", self.data_dir.display())
                        })?;
                        std::fs::write(&path, format!("{}\n", fresh.secret_text()))
                            .with_context(|| format!("writing {}", path.display()))?;
                        fresh.secret_text()
                    }
                    Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
                };
                AuthorityKeypair::from_text(&text, public)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
        };
        Ok(authority)
    }
}

/// Parses a network name.
pub fn parse_network(name: &str) -> Result<Network> {
    Ok(match name {
        "mainnet" | "bitcoin" | "main" => Network::Bitcoin,
        "testnet" | "testnet3" | "test" => Network::Testnet,
        // testnet4 shares testnet's address formats.
        "testnet4" => Network::Testnet,
        "signet" => Network::Signet,
        "regtest" => Network::Regtest,
        other => {
            bail!("network must be mainnet, testnet, testnet4, signet or regtest, not {other}")
        }
    })
}

/// Parses an address for `network`.
pub fn parse_address(text: &str, network: Network) -> Result<Address> {
    Address::from_str(text)
        .context("not a valid address")?
        .require_network(network)
        .with_context(|| format!("not an address for {network}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_resolves() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../quarry.example.toml");
        let config = Config::load(&path).expect("example parses");
        config.resolve().expect("example is valid");
    }

    /// quarry.example.toml says its values are the defaults: an operator who leaves a key out
    /// gets exactly what the example shows. Only what it marks "example, not a default" differs.
    #[test]
    fn the_example_shows_the_real_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../quarry.example.toml");
        let mut example = Config::load(&path).expect("example parses");
        let defaults = Config::default();
        example.nodes.clone_from(&defaults.nodes);
        example.payout.split.clone_from(&defaults.payout.split);
        example.api.listen = defaults.api.listen;
        example.aux.clone_from(&defaults.aux);
        example.kaspa.pool_address = None;
        example
            .merge_mining_fee
            .commons
            .clone_from(&defaults.merge_mining_fee.commons);
        assert_eq!(format!("{example:#?}"), format!("{defaults:#?}"));
    }

    /// `[kaspa]` as the example has it, with a pool address: resolves to the session defaults;
    /// an address of another network, or none, is refused with the key named.
    #[test]
    fn kaspa_is_checked_at_start() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../quarry.example.toml");
        let mut config = Config::load(&path).expect("example parses");
        let error = format!(
            "{:#}",
            config
                .kaspa
                .resolve(&config.payout)
                .expect_err("no address")
        );
        assert!(error.contains("kaspa.pool_address"), "{error}");
        let address = kaspa_addresses::Address::new(
            kaspa_addresses::Prefix::Mainnet,
            kaspa_addresses::Version::PubKey,
            &[3; 32],
        );
        config.kaspa.pool_address = Some(address.to_string());
        let resolved = config.kaspa.resolve(&config.payout).expect("resolves");
        assert!(matches!(&resolved.pay, crate::kaspa::PayTo::Pool(a) if *a == address));
        assert!(!resolved.session.solo);
        let mut solo = config.kaspa.clone();
        solo.mode = "solo".into();
        solo.pool_address = None;
        let resolved_solo = solo
            .resolve(&config.payout)
            .expect("solo needs no pool address");
        assert!(matches!(resolved_solo.pay, crate::kaspa::PayTo::Solo));
        assert!(resolved_solo.session.solo);
        assert_eq!(resolved_solo.rewards.scheme, Scheme::Solo);
        assert_eq!(resolved.session.extranonce_bytes, 2);
        assert_eq!(resolved.session.vardiff.start.get(), 64.0);
        assert!((resolved.session.vardiff.target_interval_secs - 3.0).abs() < 1e-9);
        config.kaspa.network = "devnet".into();
        let error = format!(
            "{:#}",
            config
                .kaspa
                .resolve(&config.payout)
                .expect_err("mainnet address")
        );
        assert!(error.contains("not a kaspadev address"), "{error}");
        config.kaspa.network = "mainnet".into();
        config.kaspa.fee_percent = 1.0;
        let error = format!(
            "{:#}",
            config
                .kaspa
                .resolve(&config.payout)
                .expect_err("no fee address")
        );
        assert!(error.contains("kaspa.fee_address"), "{error}");
    }

    /// The example's [[aux]] entries, enabled: two AuxPoW chains and RSK resolve, and what
    /// cannot work together is refused with the key named.
    #[test]
    fn aux_chains_are_checked_at_start() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../quarry.example.toml");
        let mut config = Config::load(&path).expect("example parses");
        for aux in &mut config.aux {
            aux.enabled = true;
        }
        let resolved = config.resolve().expect("two AuxPoW chains and RSK");
        assert_eq!(resolved.aux.len(), 3);
        assert_eq!(resolved.rewards.parents.len(), 3);
        let fee = resolved
            .rewards
            .merge_mining_fee
            .expect("the fee is on by default");
        assert_eq!(fee.fee_ppm, 10_000);

        let mut same_id = config.clone();
        same_id.aux[1].chain_id = Some(1);
        let error = format!("{:#}", same_id.resolve().expect_err("one id twice"));
        assert!(
            error.contains("chain_id") && error.contains("namecoin"),
            "{error}"
        );

        let mut no_commons = config.clone();
        no_commons.merge_mining_fee.commons.remove("rsk");
        let error = format!(
            "{:#}",
            no_commons.resolve().expect_err("no commons address")
        );
        assert!(error.contains("merge_mining_fee.commons.rsk"), "{error}");
        no_commons.merge_mining_fee.enabled = false;
        no_commons.resolve().expect("no fee, no commons needed");

        let mut long_tag = config.clone();
        long_tag.mining.coinbase_tag = "x".repeat(40);
        let error = format!(
            "{:#}",
            long_tag.resolve().expect_err("no room with the commitment")
        );
        assert!(error.contains("merged-mining commitment"), "{error}");
        long_tag.aux.retain(|a| a.kind == "rsk");
        long_tag
            .resolve()
            .expect("RSK alone takes no scriptSig room");
    }

    #[test]
    fn max_connections_must_fit_the_extranonce_space() {
        let mut config = Config::default();
        config.nodes[0].user = Some("u".into());
        config.nodes[0].password = Some("p".into());
        config.mining.extranonce1_size = 2;
        config.stratum.extranonce1_prefix = "01".into();
        config.stratum.max_connections = 257;
        let error = format!("{:#}", config.resolve().expect_err("257 > 256 ids"));
        assert!(error.contains("stratum.max_connections"), "{error}");
        config.stratum.max_connections = 256;
        config.resolve().expect("256 fit in one byte");
    }

    #[test]
    fn errors_name_the_key() {
        let mut config = Config::default();
        config.nodes[0].user = Some("u".into());
        config.nodes[0].password = Some("p".into());
        config.mining.mode = "pool".into();
        config.mining.pool_address = Some("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa".into());
        let error = format!(
            "{:#}",
            config.resolve().expect_err("mainnet address on regtest")
        );
        assert!(error.contains("mining.pool_address"), "{error}");
        config.mining.mode = "solo".into();
        config.mining.coinbase_tag = "x".repeat(90);
        let error = format!("{:#}", config.resolve().expect_err("tag too long"));
        assert!(error.contains("coinbase_tag"), "{error}");
        config.mining.coinbase_tag = "/q/".into();
        config.vardiff.min = 10.0;
        config.vardiff.max = 1.0;
        let error = format!("{:#}", config.resolve().expect_err("min above max"));
        assert!(error.contains("vardiff.min"), "{error}");
        config.vardiff.min = 1.0;
        config.vardiff.max = 10.0;
        config.mining.mode = "pool".into();
        config.mining.pool_address = Some("mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn".into());
        config.payout.fee_percent = 150.0;
        let error = format!("{:#}", config.resolve().expect_err("fee over 100 %"));
        assert!(error.contains("payout.fee_percent"), "{error}");
        config.payout.fee_percent = 2.0;
        config.payout.split = vec![
            SplitConfig {
                label: "a".into(),
                address: "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn".into(),
                percent: 60.0,
            },
            SplitConfig {
                label: "b".into(),
                address: "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn".into(),
                percent: 30.0,
            },
        ];
        let error = format!("{:#}", config.resolve().expect_err("split sums to 90"));
        assert!(error.contains("payout.split"), "{error}");
        config.payout.split[1].address = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa".into();
        let error = format!("{:#}", config.resolve().expect_err("mainnet split address"));
        assert!(error.contains("payout.split[1].address"), "{error}");
    }

    /// `coinbase-pplns` in pool mode resolves to its settings (the payout threshold is the
    /// smallest output); in solo mode it is solo; bad limits are refused with the key named.
    #[test]
    fn coinbase_pplns_is_checked_at_start() {
        let mut config = Config::default();
        config.nodes[0].user = Some("u".into());
        config.nodes[0].password = Some("p".into());
        config.payout.scheme = "coinbase-pplns".into();
        let solo = config.resolve().expect("solo");
        assert!(solo.coinbase.is_none());
        assert_eq!(solo.rewards.scheme, Scheme::Solo);
        config.mining.mode = "pool".into();
        config.mining.pool_address = Some("mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn".into());
        let pool = config.resolve().expect("pool");
        assert_eq!(pool.rewards.scheme, Scheme::CoinbasePplns { n: 2.0 });
        let settings = pool.coinbase.expect("coinbase settings");
        assert_eq!(
            (
                settings.min_output_sat,
                settings.max_outputs,
                settings.reserved_weight
            ),
            (100_000, 100, 8000)
        );
        for (key, bad) in [
            ("coinbase_max_outputs", "0"),
            ("coinbase_reserved_weight", "500"),
            ("coinbase_rebuild_tolerance", "1.5"),
            ("coinbase_refresh_secs", "0"),
        ] {
            let mut bad_config = config.clone();
            match key {
                "coinbase_max_outputs" => bad_config.payout.coinbase_max_outputs = 0,
                "coinbase_reserved_weight" => bad_config.payout.coinbase_reserved_weight = 500,
                "coinbase_rebuild_tolerance" => bad_config.payout.coinbase_rebuild_tolerance = 1.5,
                _ => bad_config.payout.coinbase_refresh_secs = 0.0,
            }
            let error = format!("{:#}", bad_config.resolve().expect_err(bad));
            assert!(error.contains(&format!("payout.{key}")), "{error}");
        }
        config.payout.scheme = "coinbase".into();
        let error = format!("{:#}", config.resolve().expect_err("unknown scheme"));
        assert!(error.contains("coinbase-pplns"), "{error}");
    }
}
