//! `quarry verify`: recomputes a block's coinbase payout table from the shares the pool publishes
//! and checks it against the block as the verifier's own node has it. Anyone can run it: it needs
//! the pool's public API and a node, nothing of the pool's.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bitcoin::consensus::deserialize;
use bitcoin::{Address, Block};
use quarry_ledger::coinbase::{verify_table, CoinbaseTable, PublishedShare, MAX_WINDOW_SHARES};
use serde_json::{json, Value};

use crate::config::NodeConfig;
use crate::node::Rpc;

/// `quarry verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Block hashes to check (display hex).
    pub blocks: Vec<String>,
    /// Check every Bitcoin block the pool lists (its newest 1,000) that has a payout table.
    #[arg(long)]
    pub all: bool,
    /// The pool's API, e.g. http://pool.example:8080.
    #[arg(long)]
    pub api: String,
    /// Your node's JSON-RPC URL.
    #[arg(long, default_value = "http://127.0.0.1:8332")]
    pub node_url: String,
    /// Your node's cookie file.
    #[arg(long)]
    pub rpc_cookie: Option<PathBuf>,
    /// RPC user (with --rpc-password).
    #[arg(long)]
    pub rpc_user: Option<String>,
    /// RPC password.
    #[arg(long)]
    pub rpc_password: Option<String>,
    /// The shares to check against, as downloaded from /api/pplns/shares?block=<hash>, instead of
    /// fetching them now (one block only).
    #[arg(long)]
    pub shares: Option<PathBuf>,
}

/// Runs `quarry verify`; an error when any block disagrees.
pub async fn run(args: VerifyArgs) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .context("HTTP client")?;
    let rpc = Rpc::new(&NodeConfig {
        url: args.node_url.clone(),
        user: args.rpc_user.clone(),
        password: args.rpc_password.clone(),
        cookie_file: args.rpc_cookie.clone(),
        zmq_hashblock: None,
    })?;
    let api = args.api.trim_end_matches('/');
    let mut blocks = args.blocks.clone();
    if args.all {
        let listed = get(&http, &format!("{api}/api/blocks?limit=1000&chain=bitcoin")).await?;
        for block in listed.as_array().into_iter().flatten() {
            let chain = block["chain"].as_str().unwrap_or("bitcoin");
            let status = block["status"].as_str().unwrap_or_default();
            if chain == "bitcoin" && status != "rejected" {
                blocks.extend(block["hash"].as_str().map(str::to_string));
            }
        }
    }
    if blocks.is_empty() {
        bail!("name a block hash, or --all");
    }
    if args.shares.is_some() && blocks.len() != 1 {
        bail!("--shares goes with one block");
    }
    let mut failed = 0;
    let mut checked = 0;
    for hash in &blocks {
        let answer = http
            .get(format!("{api}/api/blocks/{hash}/coinbase"))
            .send()
            .await
            .with_context(|| format!("asking {api} for block {hash}'s table"))?;
        if answer.status() == reqwest::StatusCode::NOT_FOUND && args.all {
            // Found before the window had a share: it paid the pool alone, nothing to check.
            println!("{hash}: no payout table (the pool's output took the whole value)");
            continue;
        }
        let answer: Value = answer
            .error_for_status()
            .with_context(|| format!("block {hash}'s table"))?
            .json()
            .await?;
        let problems = match check(&http, &rpc, api, hash, &answer, args.shares.as_ref()).await {
            Ok(problems) => problems,
            Err(e) => vec![format!("{e:#}")],
        };
        checked += 1;
        if problems.is_empty() {
            println!("{hash}: OK: the coinbase pays exactly the table its shares give");
        } else {
            failed += 1;
            println!("{hash}: {} difference(s):", problems.len());
            for problem in problems {
                println!("  - {problem}");
            }
        }
    }
    println!(
        "{}",
        json!({"checked": checked, "agree": checked - failed, "disagree": failed})
    );
    if failed > 0 {
        bail!("{failed} of {checked} blocks disagree with their shares or coinbase");
    }
    Ok(())
}

async fn check(
    http: &reqwest::Client,
    rpc: &Rpc,
    api: &str,
    hash: &str,
    answer: &Value,
    shares_file: Option<&PathBuf>,
) -> Result<Vec<String>> {
    let table: CoinbaseTable =
        serde_json::from_value(answer["table"].clone()).context("the pool's table")?;
    let network = crate::config::parse_network(answer["network"].as_str().unwrap_or_default())
        .context("the pool's network")?;
    let pool_address = answer["pool_address"].as_str().map(str::to_string);
    let shares: Vec<PublishedShare> = match shares_file {
        Some(path) => {
            let file: Value = serde_json::from_slice(
                &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            )
            .with_context(|| format!("{} is not the JSON of /api/pplns/shares", path.display()))?;
            serde_json::from_value(file["shares"].clone()).context("the share list")?
        }
        None => shares_of(http, api, hash, table.window_shares).await?,
    };
    // The block as the verifier's node has it.
    let raw: String = rpc
        .call("getblock", json!([hash, 0]), Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("getblock {hash} on your node: {e}"))?;
    let block: Block = deserialize(&hex::decode(raw.trim()).context("block hex")?)
        .context("the node's block does not decode")?;
    let coinbase = block
        .txdata
        .first()
        .context("a block without transactions")?;
    let mut problems = Vec::new();
    let txid = coinbase.compute_txid().to_string();
    if answer["coinbase_txid"].as_str() != Some(txid.as_str()) {
        problems.push(format!(
            "the coinbase's txid is {txid}, the pool recorded {}",
            answer["coinbase_txid"]
        ));
    }
    let mut outputs: BTreeMap<String, u64> = BTreeMap::new();
    for output in &coinbase.output {
        let value = output.value.to_sat();
        match Address::from_script(&output.script_pubkey, network) {
            Ok(address) => *outputs.entry(address.to_string()).or_default() += value,
            // The witness commitment and other data outputs carry nothing.
            Err(_) if value == 0 => {}
            Err(_) => problems.push(format!(
                "an output of {value} sat to a script that is no address: {}",
                output.script_pubkey
            )),
        }
    }
    problems.extend(verify_table(
        &table,
        &shares,
        &outputs,
        pool_address.as_deref(),
    ));
    Ok(problems)
}

/// Every page of a block's window from `/api/pplns/shares`, newest first; at most the window's
/// share count (a pool that pages without end is cut off there).
async fn shares_of(
    http: &reqwest::Client,
    api: &str,
    hash: &str,
    window_shares: u64,
) -> Result<Vec<PublishedShare>> {
    let mut shares: Vec<PublishedShare> = Vec::new();
    let mut url = format!("{api}/api/pplns/shares?block={hash}");
    loop {
        let page = get(http, &url).await?;
        let batch: Vec<PublishedShare> =
            serde_json::from_value(page["shares"].clone()).context("the share list")?;
        shares.extend(batch);
        match page["next_until"].as_i64() {
            // A window never holds more than a million shares: a pool paging past that is cut
            // off (its table then disagrees with its shares).
            Some(until) if (shares.len() as u64) < window_shares.min(MAX_WINDOW_SHARES as u64) => {
                url = format!("{api}/api/pplns/shares?block={hash}&until={until}");
            }
            _ => return Ok(shares),
        }
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Result<Value> {
    http.get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()
        .with_context(|| format!("GET {url}"))?
        .json()
        .await
        .with_context(|| format!("GET {url}: not JSON"))
}
