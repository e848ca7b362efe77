//! Payouts in the coinbase (`scheme = "coinbase-pplns"`) on Bitcoin Core regtest: every block the
//! pool finds pays the PPLNS window's miners in its own coinbase, Core accepts each one, the ledger
//! credits exactly what the coinbase committed to, and `quarry verify` recomputes every split from
//! the published shares and catches a tampered share file. With more miners than outputs, the
//! rest are carried as balances, paid by later coinbases, and an orphaned block neither loses nor
//! pays anything twice.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use bitcoin::{Address, Block, Network};
use quarry_ledger::coinbase::{CoinbaseTable, PublishedShare, WindowShare, WindowSnapshot};
use quarry_ledger::schemes::share_reward;
use quarry_ledger::{BlockStatus, Chain, Sat, Store};
use quarry_stratum::v2::AuthorityKeypair;
use serde_json::{json, Value};
use support::sri::{listens, sv2_section};
use support::*;

/// The pool's config: pool mode paying in the coinbase, with the API on `api_port`.
fn coinbase_config(
    nodes: &Regtest,
    dir: &Path,
    port: u16,
    api_port: u16,
    pool_address: &str,
    payout: &str,
) -> String {
    let mut config = pool_config(nodes, dir, port, "").replace(
        "mode = \"solo\"",
        &format!("mode = \"pool\"\npool_address = \"{pool_address}\""),
    );
    config.push_str(&format!(
        "\n[payout]\nscheme = \"coinbase-pplns\"\ncoinbase_refresh_secs = 0.5\n{payout}\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n"
    ));
    config
}

async fn open_store(dir: &Path) -> Store {
    Store::open(&format!(
        "sqlite://{}",
        dir.join("data/quarry.db").display()
    ))
    .await
    .expect("ledger")
}

/// Bitcoin blocks the ledger has, each with the table its coinbase committed to (if any).
async fn blocks_with_tables(
    store: &Store,
) -> Vec<(quarry_ledger::BlockRecord, Option<(CoinbaseTable, String)>)> {
    let mut out = Vec::new();
    for block in store.blocks(None, 10_000).await.expect("blocks") {
        if block.chain != Chain::BITCOIN {
            continue;
        }
        let table = store.coinbase_table(&block.hash).await.expect("table");
        out.push((block, table));
    }
    out
}

/// Core's copy of a block.
async fn core_block(nodes: &Regtest, hash: &str) -> Block {
    let raw = nodes.rpc_ok('A', "getblock", json!([hash, 0])).await;
    bitcoin::consensus::deserialize(&hex::decode(raw.as_str().expect("hex")).expect("hex"))
        .expect("block")
}

/// What a coinbase pays, per address (zero-value data outputs left out).
fn coinbase_outputs(block: &Block) -> BTreeMap<String, u64> {
    let mut outputs = BTreeMap::new();
    for output in &block.txdata[0].output {
        if let Ok(address) = Address::from_script(&output.script_pubkey, Network::Regtest) {
            *outputs.entry(address.to_string()).or_default() += output.value.to_sat();
        } else {
            assert_eq!(
                output.value.to_sat(),
                0,
                "only data outputs are not addresses"
            );
        }
    }
    outputs
}

/// The shares behind `table`, from the ledger.
async fn window_shares(store: &Store, table: &CoinbaseTable) -> Vec<PublishedShare> {
    store
        .published_shares(
            &Chain::BITCOIN,
            table.window_end_id,
            table.window_shares as i64,
        )
        .await
        .expect("shares")
}

/// `quarry verify` with `args`, against node A: (exit status, output).
fn verify(nodes: &Regtest, api_port: u16, args: &[&str], log: &Path) -> (bool, String) {
    let api = format!("http://127.0.0.1:{api_port}");
    let node_url = nodes.rpc_url('A');
    let mut all = vec![
        "verify",
        "--api",
        &api,
        "--node-url",
        &node_url,
        "--rpc-cookie",
        nodes.var("NODE_A_COOKIE"),
    ];
    all.extend_from_slice(args);
    let mut verify = Process::spawn(&all, log);
    assert!(verify.wait(Duration::from_secs(120)), "quarry verify stops");
    let ok = verify.child.wait().expect("status").success();
    (ok, verify.log_text())
}

/// `quarry loadgen` against the pool on `port`, each miner authorizing as the next line of
/// `users`, with `args` (miners, rate, duration, …); its JSON report.
fn users_loadgen(port: u16, users: &Path, args: &[&str], log: &Path, pool: &Process) -> Value {
    let url = format!("stratum+tcp://127.0.0.1:{port}");
    let users = users.to_str().expect("path");
    let mut all = vec![
        "loadgen",
        &url,
        "--user",
        "unused",
        "--users-file",
        users,
        "--json",
    ];
    all.extend_from_slice(args);
    loadgen_report(&all, log, || pool.log_text())
}

async fn api_get(url: &str) -> Value {
    reqwest::get(url)
        .await
        .expect("API answers")
        .json()
        .await
        .expect("JSON")
}

/// Confirms every Bitcoin block (Core mines `blocks` more on top) and waits until the ledger has
/// none left `submitted` or `pending`.
async fn settle(nodes: &Regtest, store: &Store, pool: &Process, blocks: u64) {
    let burn = nodes.new_address().await;
    nodes
        .rpc_ok('A', "generatetoaddress", json!([blocks, burn]))
        .await;
    let settled = wait_until(Duration::from_secs(60), || async {
        store
            .blocks(None, 10_000)
            .await
            .unwrap_or_default()
            .iter()
            .filter(|b| b.chain == Chain::BITCOIN)
            .all(|b| !matches!(b.status, BlockStatus::Submitted | BlockStatus::Pending))
    })
    .await;
    assert!(
        settled,
        "every block confirmed or orphaned:\n{}",
        pool.log_text()
    );
}

/// Nothing lost, nothing paid twice: for every address, what Core's confirmed coinbases paid it
/// plus what the ledger still owes it is exactly what it was credited, and the pool's own outputs
/// hold exactly what is owed. Returns what each address was paid on chain.
async fn assert_conserved(
    nodes: &Regtest,
    store: &Store,
    pool_address: &str,
) -> BTreeMap<String, u64> {
    let mut on_chain_paid: BTreeMap<String, u64> = BTreeMap::new();
    let (mut pool_kept, mut rewards) = (0u64, 0u64);
    for block in store
        .blocks(Some(BlockStatus::Confirmed), 10_000)
        .await
        .expect("blocks")
    {
        if block.chain != Chain::BITCOIN {
            continue;
        }
        let outputs = coinbase_outputs(&core_block(nodes, &block.hash).await);
        rewards += block.reward as u64;
        for (address, sat) in outputs {
            match address == pool_address {
                true => pool_kept += sat,
                false => *on_chain_paid.entry(address).or_default() += sat,
            }
        }
    }
    let credited: BTreeMap<String, i64> = store
        .balances()
        .await
        .expect("balances")
        .into_iter()
        .filter(|b| b.chain == Chain::BITCOIN)
        .map(|b| (b.address, b.mature_msat))
        .collect();
    let owed = store.payable(&Chain::BITCOIN).await.expect("payable");
    assert_eq!(
        credited.values().sum::<i64>(),
        rewards as i64 * 1000,
        "every confirmed satoshi is credited"
    );
    for (address, msat) in &credited {
        let paid = on_chain_paid.get(address).copied().unwrap_or(0);
        let due = owed.get(address).map_or(0, |s| s.0);
        assert_eq!(
            (paid + due) * 1000,
            *msat as u64,
            "{address}: paid {paid} + owed {due} sat = credited {msat} msat"
        );
    }
    assert!(
        on_chain_paid.keys().all(|a| credited.contains_key(a)),
        "nobody is paid what they were not credited"
    );
    assert_eq!(
        pool_kept,
        owed.values().map(|s| s.0).sum::<u64>(),
        "the pool's outputs hold exactly the balances owed"
    );
    on_chain_paid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miners_on_v1_and_sv2_are_paid_in_every_coinbase_and_verify_agrees() {
    let nodes = Regtest::single();
    let dir = scratch_dir("coinbase-pplns");
    let (port, api_port, proxy_port) = (free_port(), free_port(), free_port());
    let authority = AuthorityKeypair::generate();
    let pool_address = nodes.new_address().await;
    let split = [nodes.new_address().await, nodes.new_address().await];
    let miners = [
        nodes.new_address().await,
        nodes.new_address().await,
        nodes.new_address().await,
    ];
    let payout = format!(
        r#"pplns_n = 1000.0
fee_percent = 1.0
maturity = 2
threshold_btc = 0.00001
[[payout.split]]
label = "core-development"
address = "{}"
percent = 60
[[payout.split]]
label = "operations"
address = "{}"
percent = 40
"#,
        split[0], split[1]
    );
    let mut config = coinbase_config(&nodes, &dir, port, api_port, &pool_address, &payout);
    config.push_str(&sv2_section(&authority));
    let pool = start_pool(&dir, &config, port).await;
    let store = open_store(&dir).await;

    // A V1 miner, an SV2 miner (a standard channel) and a V1 miner behind `quarry proxy` (an
    // extended channel upstream), all at once.
    let sv2_url = format!(
        "stratum2+tcp://127.0.0.1:{port}/{}",
        authority.public_text()
    );
    let mut proxy = Process::spawn(
        &[
            "proxy",
            "--listen",
            &format!("127.0.0.1:{proxy_port}"),
            "--upstream",
            &sv2_url,
            "--user",
            &format!("{}.viaproxy", miners[2]),
        ],
        &dir.join("proxy.log"),
    );
    assert!(
        listens(proxy_port, Duration::from_secs(20)).await,
        "proxy listens:\n{}",
        proxy.log_text()
    );
    let v1_url = format!("stratum+tcp://127.0.0.1:{port}");
    let proxied_url = format!("stratum+tcp://127.0.0.1:{proxy_port}");
    let mut rounds = 0;
    loop {
        rounds += 1;
        let spawned = [
            (v1_url.as_str(), format!("{}.v1", miners[0])),
            (sv2_url.as_str(), format!("{}.sv2", miners[1])),
            (proxied_url.as_str(), "rig".to_string()),
        ]
        .map(|(url, user)| {
            Process::spawn(
                &[
                    "mine",
                    url,
                    "--user",
                    &user,
                    "--threads",
                    "1",
                    "--duration",
                    "5",
                ],
                &dir.join(format!("mine-{rounds}-{}.log", user.len())),
            )
        });
        for mut miner in spawned {
            assert!(miner.wait(Duration::from_secs(60)), "miner stops");
        }
        // Enough blocks whose coinbase pays all three miners.
        let mut paying_all = 0;
        for (_, table) in blocks_with_tables(&store).await {
            let Some((table, _)) = table else { continue };
            let paid: BTreeSet<&str> = table.outputs().map(|(a, _)| a).collect();
            paying_all += usize::from(miners.iter().all(|m| paid.contains(m.as_str())));
        }
        if paying_all >= 3 || rounds == 4 {
            assert!(
                paying_all >= 3,
                "3 blocks pay all three miners in {rounds} rounds:\n{}",
                pool.log_text()
            );
            break;
        }
    }
    proxy.child.kill().ok();
    settle(&nodes, &store, &pool, 3).await;

    let mut tables = 0;
    for (block, table) in blocks_with_tables(&store).await {
        assert_ne!(
            block.status,
            BlockStatus::Rejected,
            "Core took every block: {block:?}"
        );
        if block.status != BlockStatus::Confirmed {
            continue;
        }
        let header = nodes
            .rpc_ok('A', "getblockheader", json!([block.hash]))
            .await;
        assert!(
            header["confirmations"].as_i64() > Some(0),
            "{} is on Core's chain",
            block.hash
        );
        let Some((table, txid)) = table else { continue };
        tables += 1;
        let core = core_block(&nodes, &block.hash).await;
        assert_eq!(core.txdata[0].compute_txid().to_string(), txid);
        let outputs = coinbase_outputs(&core);
        assert_eq!(
            outputs.values().sum::<u64>(),
            table.coinbase_value,
            "{}",
            block.hash
        );
        assert_eq!(table.coinbase_value as i64, block.reward);
        assert_eq!(
            outputs.get(&pool_address).copied().unwrap_or(0),
            table.remainder_sat()
        );

        // The window's split, recomputed from the shares in the share log: exact.
        let shares = window_shares(&store, &table).await;
        let window: Vec<WindowShare> = shares.iter().map(PublishedShare::window_share).collect();
        let snapshot = WindowSnapshot::from_newest_first(&window, table.window_difficulty);
        assert_eq!(
            (snapshot.start_id, snapshot.end_id),
            (table.window_start_id, table.window_end_id)
        );
        let expected = share_reward(
            Sat(table.coinbase_value),
            &snapshot.weights,
            &table.policy(),
        );
        // The fee by hand: 1 %, 60/40.
        let fee = table.coinbase_value / 100;
        assert_eq!(expected.fees.values().map(|s| s.0).sum::<u64>(), fee);
        assert!(expected.fees[&split[0]].0.abs_diff(fee * 60 / 100) <= 1);
        for entry in &table.entries {
            let earned = expected.miners.get(&entry.address).map_or(0, |s| s.0);
            let fee = expected.fees.get(&entry.address).map_or(0, |s| s.0);
            assert_eq!(
                (entry.earned_sat, entry.fee_sat),
                (earned, fee),
                "{} in {}",
                entry.address,
                block.hash
            );
            // Every amount is over the threshold: each gets its output, with any balance the
            // block paid.
            assert_eq!(entry.output_sat, earned + fee + entry.carried_sat);
            assert_eq!(
                outputs.get(&entry.address),
                Some(&entry.output_sat),
                "{}",
                entry.address
            );
        }
        assert_eq!(
            table
                .entries
                .iter()
                .filter(|e| e.earned_sat + e.fee_sat > 0)
                .count(),
            expected
                .miners
                .keys()
                .chain(expected.fees.keys())
                .collect::<BTreeSet<_>>()
                .len()
        );
        // The split follows the difficulty each miner put in the window.
        let mut difficulty: BTreeMap<&str, f64> = BTreeMap::new();
        for share in &shares {
            *difficulty.entry(share.address.as_str()).or_default() += share.difficulty;
        }
        let total: f64 = difficulty.values().sum();
        let net = (table.coinbase_value - fee) as f64;
        for (address, sat) in &expected.miners {
            let share = difficulty[address.as_str()] / total;
            // The window's oldest share may count in part: at most one share's worth off.
            assert!(
                (sat.0 as f64 - net * share).abs() <= net / table.window_shares as f64 + 1.0,
                "{address}: {} sat for {share} of the window",
                sat.0
            );
        }
    }
    assert!(tables >= 3, "confirmed blocks with tables: {tables}");

    // The ledger credits what the coinbases committed to, and counts their outputs as paid.
    let paid_on_chain = assert_conserved(&nodes, &store, &pool_address).await;
    let paid = store.paid(&Chain::BITCOIN).await.expect("paid");
    for (address, sat) in &paid_on_chain {
        assert_eq!(
            paid.get(address).map(|p| p.0),
            Some(*sat as i64),
            "paid to {address}"
        );
    }
    assert!(
        miners.iter().all(|m| paid_on_chain.contains_key(m)),
        "{paid_on_chain:?}"
    );
    let payments = api_get(&format!(
        "http://127.0.0.1:{api_port}/api/payments?limit=1000"
    ))
    .await;
    let coinbase_payouts = payments
        .as_array()
        .expect("payments")
        .iter()
        .filter(|p| {
            p["tag"]
                .as_str()
                .is_some_and(|t| t.starts_with("coinbase-"))
                && p["status"] == "sent"
        })
        .count();
    assert_eq!(
        coinbase_payouts, tables,
        "each confirmed coinbase is a payment"
    );
    let window = api_get(&format!("http://127.0.0.1:{api_port}/api/pplns/window")).await;
    assert!(
        window["table"]["window_shares"].as_u64() > Some(0),
        "{window}"
    );
    // A miner's page says what the block being mined pays it.
    let page = reqwest::get(format!("http://127.0.0.1:{api_port}/miners/{}", miners[0]))
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(
        page.contains("data-testid=\"next-coinbase\"") && page.contains("in its coinbase"),
        "{page}"
    );

    // Anyone can check every block: quarry verify recomputes each split from the shares.
    let (ok, out) = verify(&nodes, api_port, &["--all"], &dir.join("verify.log"));
    assert!(ok, "verify agrees:\n{out}");
    assert!(out.contains("\"disagree\":0"), "{out}");
    assert!(
        out.lines().filter(|l| l.contains(": OK:")).count() >= tables,
        "{out}"
    );

    // A share file with one share moved to another miner is caught.
    let (block, _) = blocks_with_tables(&store)
        .await
        .into_iter()
        .find(|(b, t)| b.status == BlockStatus::Confirmed && t.is_some())
        .expect("a confirmed block with a table");
    let mut file = api_get(&format!(
        "http://127.0.0.1:{api_port}/api/pplns/shares?block={}",
        block.hash
    ))
    .await;
    // In pages, the same shares.
    let mut paged = Vec::new();
    let mut until = None::<i64>;
    loop {
        let page = api_get(&format!(
            "http://127.0.0.1:{api_port}/api/pplns/shares?block={}&limit=100{}",
            block.hash,
            until.map(|u| format!("&until={u}")).unwrap_or_default()
        ))
        .await;
        paged.extend(page["shares"].as_array().expect("shares").iter().cloned());
        match page["next_until"].as_i64() {
            Some(next) => until = Some(next),
            None => break,
        }
    }
    assert_eq!(&paged, file["shares"].as_array().expect("shares"));
    assert!(paged.len() > 100, "more than one page: {}", paged.len());
    let shares = file["shares"].as_array_mut().expect("shares");
    let victim = shares
        .iter()
        .position(|s| s["address"] == miners[0].as_str())
        .expect("a share of the first miner in the window");
    let intact = dir.join("shares.json");
    std::fs::write(&intact, file.to_string()).expect("write");
    let (ok, out) = verify(
        &nodes,
        api_port,
        &[&block.hash, "--shares", intact.to_str().expect("path")],
        &dir.join("verify-intact.log"),
    );
    assert!(ok, "the downloaded file verifies:\n{out}");
    file["shares"][victim]["address"] = json!(miners[1]);
    let tampered = dir.join("shares-tampered.json");
    std::fs::write(&tampered, file.to_string()).expect("write");
    let (ok, out) = verify(
        &nodes,
        api_port,
        &[&block.hash, "--shares", tampered.to_str().expect("path")],
        &dir.join("verify-tampered.log"),
    );
    assert!(!ok, "a tampered share file fails:\n{out}");
    assert!(
        out.contains(&miners[0]) && out.contains("the shares earn"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_miners_over_a_hundred_outputs_are_carried_paid_later_and_survive_an_orphan() {
    let nodes = Regtest::single();
    let dir = scratch_dir("coinbase-cap");
    let (port, api_port) = (free_port(), free_port());
    let pool_address = nodes.new_address().await;
    let mut users = String::new();
    for _ in 0..500 {
        users.push_str(&format!("{}.rig\n", nodes.new_address().await));
    }
    let users_file = dir.join("users.txt");
    std::fs::write(&users_file, users).expect("users file");
    // Room for the pool's output, the witness commitment and 100 P2WPKH outputs (124 WU each).
    let reserved_weight = 16_000u64;
    let payout = format!(
        "pplns_n = 3000.0\nmaturity = 3\nthreshold_btc = 0.00001\ncoinbase_max_outputs = 100\ncoinbase_reserved_weight = {reserved_weight}\n"
    );
    let config = coinbase_config(&nodes, &dir, port, api_port, &pool_address, &payout);
    let pool = start_pool(&dir, &config, port).await;
    let store = open_store(&dir).await;
    let loadgen = |secs: u64, log: &str| {
        let duration = secs.to_string();
        users_loadgen(
            port,
            &users_file,
            &["--miners", "500", "--rate", "1", "--duration", &duration],
            &dir.join(log),
            &pool,
        )
    };
    // Mine until nearly all 500 miners are in one block's window, and a block paid a carried
    // balance.
    let (mut carried_paid, mut most_in_window) = (false, 0);
    for round in 0..8 {
        let report = loadgen(15, &format!("loadgen-{round}.log"));
        assert!(report["accepted"].as_u64() > Some(0), "{report}");
        for (_, table) in blocks_with_tables(&store).await {
            if let Some((table, _)) = table {
                carried_paid |= table
                    .entries
                    .iter()
                    .any(|e| e.carried_sat > 0 && e.output_sat > 0);
                most_in_window = most_in_window.max(table.entries.len());
            }
        }
        if carried_paid && most_in_window >= 480 {
            break;
        }
    }
    assert!(
        carried_paid,
        "a later coinbase paid a carried balance:\n{}",
        pool.log_text()
    );
    assert!(
        most_in_window >= 480,
        "at most {most_in_window} miners in a window"
    );

    // Orphan the chain's newest block, once it is one that paid a carried balance: it is still
    // pending (3 confirmations make a block final in the ledger; it has 1). Blocks come so fast
    // on regtest that most tables are built while the block before is being recorded, and pay
    // no balance then; a block after a quiet moment pays them. The pool then mines a longer
    // branch.
    let mut orphan = None;
    for round in 0..20 {
        // Quiet for a moment: the balances owed are read again once the last block is recorded.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let settled = wait_until(Duration::from_secs(10), || async {
            let tip = nodes
                .rpc_ok('A', "getbestblockhash", json!([]))
                .await
                .as_str()
                .map(str::to_string);
            store
                .blocks(None, 1)
                .await
                .unwrap_or_default()
                .first()
                .is_some_and(|b| Some(&b.hash) == tip.as_ref())
        })
        .await;
        assert!(
            settled,
            "the ledger has the chain's tip:\n{}",
            pool.log_text()
        );
        let (newest, table) = blocks_with_tables(&store)
            .await
            .into_iter()
            .filter(|(b, _)| b.chain == Chain::BITCOIN)
            .max_by_key(|(b, _)| b.height)
            .expect("blocks");
        let paid_a_balance = table.is_some_and(|(t, _)| {
            t.entries
                .iter()
                .any(|e| e.carried_sat > 0 && e.output_sat > 0)
        });
        if paid_a_balance && newest.status != BlockStatus::Confirmed {
            orphan = Some(newest);
            break;
        }
        // One share, so at most one block: found on a table that pays the balances owed.
        users_loadgen(
            port,
            &users_file,
            &["--miners", "1", "--max-shares", "1", "--duration", "3"],
            &dir.join(format!("loadgen-to-orphan-{round}.log")),
            &pool,
        );
    }
    let orphan = orphan.expect("the tip paid a carried balance");
    nodes
        .rpc_ok('A', "invalidateblock", json!([orphan.hash]))
        .await;
    // The pool already has a block on the orphan's parent: Core extends the new branch, the
    // pool mines on top of it.
    let burn = nodes.new_address().await;
    nodes
        .rpc_ok('A', "generatetoaddress", json!([2, burn]))
        .await;
    let report = loadgen(15, "loadgen-after-orphan.log");
    assert!(report["accepted"].as_u64() > Some(0), "{report}");
    let orphaned = wait_until(Duration::from_secs(30), || async {
        store
            .blocks(Some(BlockStatus::Orphaned), 10_000)
            .await
            .unwrap_or_default()
            .iter()
            .any(|b| b.hash == orphan.hash)
    })
    .await;
    assert!(orphaned, "the tracker saw the orphan:\n{}", pool.log_text());
    settle(&nodes, &store, &pool, 2).await;

    // Every confirmed coinbase fits the reserved weight, with at most 100 payout outputs; the
    // cap bound while more than 100 addresses were owed.
    let mut capped = 0;
    for (block, table) in blocks_with_tables(&store).await {
        if block.status != BlockStatus::Confirmed {
            continue;
        }
        let core = core_block(&nodes, &block.hash).await;
        let tx_count = core.txdata.len() as u64;
        let weight = 320 + 4 * if tx_count < 253 { 1 } else { 3 } + core.txdata[0].weight().to_wu();
        assert!(
            weight <= reserved_weight,
            "{}: coinbase weight {weight}",
            block.hash
        );
        if let Some((table, _)) = table {
            let count = table.outputs().count();
            assert!(count <= 100, "{count} payout outputs");
            assert_eq!(
                core.txdata[0].output.len(),
                count + 2,
                "pool + payouts + witness commitment"
            );
            if count == 100 && table.entries.len() > 100 {
                capped += 1;
            }
        }
    }
    assert!(capped > 0, "the output cap bound");

    // Nothing lost or paid twice across the orphan, and its coinbase payout paid nothing.
    let paid = assert_conserved(&nodes, &store, &pool_address).await;
    assert!(
        paid.len() > 100,
        "more than one coinbase's worth of miners paid: {}",
        paid.len()
    );
    let payments = store.payouts(10_000).await.expect("payouts");
    let void = payments
        .iter()
        .find(|p| p.tag == format!("coinbase-{}", orphan.hash))
        .expect("the orphan's coinbase payout");
    assert_eq!(void.status, "void");
    // quarry verify agrees with every block, the orphan's included (Core keeps its copy).
    let (ok, out) = verify(&nodes, api_port, &["--all"], &dir.join("verify.log"));
    assert!(
        ok && out.contains("\"disagree\":0"),
        "verify agrees:\n{out}"
    );
    let (table, _) = store
        .coinbase_table(&orphan.hash)
        .await
        .expect("table")
        .expect("kept");
    assert!(
        table.entries.iter().any(|e| e.carried_sat > 0),
        "the orphan had paid a balance"
    );
}

/// With merged mining, each coinbase carries the payouts next to the AuxPoW commitment and RSK's
/// tag: Core, the AuxPoW chain's checks and RSK's all take their blocks, and the split verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_mining_keeps_its_commitments_next_to_the_payouts() {
    use support::aux_node::{AuxNode, RskNode};
    const EASY: u32 = 0x207f_ffff;
    let nodes = Regtest::single();
    let namecoin = AuxNode::start(1, EASY, "nc1").await;
    let rsk = RskNode::start(EASY).await;
    let dir = scratch_dir("coinbase-merged");
    let (port, api_port) = (free_port(), free_port());
    let pool_address = nodes.new_address().await;
    let miners = [nodes.new_address().await, nodes.new_address().await];
    let mut config = coinbase_config(
        &nodes,
        &dir,
        port,
        api_port,
        &pool_address,
        "pplns_n = 1000.0\nmaturity = 2\nthreshold_btc = 0.00001\n",
    );
    config.push_str(&format!(
        r#"
[[aux]]
kind = "auxpow"
name = "namecoin"
url = "{namecoin}"
user = "u"
password = "p"
address = "n-pool-address"
chain_id = 1
poll_ms = 200

[[aux]]
kind = "rsk"
name = "rsk"
url = "{rsk}"
user = "u"
password = "p"
poll_ms = 200
maturity = 2

[merge_mining_fee]
enabled = false
"#,
        namecoin = namecoin.url(),
        rsk = rsk.url(),
    ));
    let pool = start_pool(&dir, &config, port).await;
    let store = open_store(&dir).await;
    let url = format!("stratum+tcp://127.0.0.1:{port}");
    let mut rounds = 0;
    loop {
        rounds += 1;
        let spawned = [0, 1].map(|i| {
            Process::spawn(
                &[
                    "mine",
                    &url,
                    "--user",
                    &format!("{}.rig", miners[i]),
                    "--threads",
                    "1",
                    "--duration",
                    "5",
                ],
                &dir.join(format!("mine-{rounds}-{i}.log")),
            )
        });
        for mut miner in spawned {
            assert!(miner.wait(Duration::from_secs(60)), "miner stops");
        }
        let aux_taken =
            namecoin.ledger(|l| l.accepted.len()) >= 2 && rsk.ledger(|l| l.imported.len()) >= 1;
        if aux_taken || rounds == 4 {
            assert!(
                aux_taken,
                "aux blocks: {:?} {:?}\n{}",
                namecoin.ledger(|l| l.accepted.len()),
                rsk.ledger(|l| l.imported.len()),
                pool.log_text()
            );
            break;
        }
    }
    namecoin.ledger(|l| assert!(l.refused.is_empty(), "every AuxPoW passes: {:?}", l.refused));
    rsk.ledger(|l| {
        assert!(
            l.refused.is_empty(),
            "every RSK proof passes: {:?}",
            l.refused
        )
    });
    settle(&nodes, &store, &pool, 3).await;

    let mut paying_both = 0;
    for (block, table) in blocks_with_tables(&store).await {
        assert_ne!(
            block.status,
            BlockStatus::Rejected,
            "Core took every block: {block:?}"
        );
        let Some((table, _)) = table else { continue };
        if block.status != BlockStatus::Confirmed {
            continue;
        }
        let core = core_block(&nodes, &block.hash).await;
        let coinbase = &core.txdata[0];
        let outputs = coinbase_outputs(&core);
        for (address, sat) in table.outputs() {
            assert_eq!(
                outputs.get(address),
                Some(&sat),
                "{address} in {}",
                block.hash
            );
        }
        paying_both += usize::from(miners.iter().all(|m| outputs.contains_key(m)));
        // The AuxPoW commitment in the scriptSig, RSK's tag among the outputs.
        let script_sig = coinbase.input[0].script_sig.as_bytes();
        assert!(
            script_sig.windows(4).any(|w| w == [0xfa, 0xbe, 0x6d, 0x6d]),
            "{}",
            block.hash
        );
        assert!(
            coinbase.output.iter().any(|o| o
                .script_pubkey
                .as_bytes()
                .windows(9)
                .any(|w| w == b"RSKBLOCK:")),
            "{}",
            block.hash
        );
    }
    assert!(paying_both >= 2, "blocks paying both miners: {paying_both}");
    assert_conserved(&nodes, &store, &pool_address).await;
    let (ok, out) = verify(&nodes, api_port, &["--all"], &dir.join("verify.log"));
    assert!(
        ok && out.contains("\"disagree\":0"),
        "verify agrees:\n{out}"
    );
}

/// Jobs are rebuilt when the window's split moves past the tolerance, not on every share: two
/// miners' shares come in one after the other while the table in force is watched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_rebuilt_when_the_split_moves_not_on_every_share() {
    let nodes = Regtest::single();
    let dir = scratch_dir("coinbase-tolerance");
    let (port, api_port) = (free_port(), free_port());
    let pool_address = nodes.new_address().await;
    let (a, b) = (nodes.new_address().await, nodes.new_address().await);
    // Shares far below the network's difficulty: about one in 470 is a block.
    let config = coinbase_config(
        &nodes,
        &dir,
        port,
        api_port,
        &pool_address,
        "pplns_n = 1000.0\nthreshold_btc = 0.00001\ncoinbase_rebuild_tolerance = 0.25\n",
    )
    .replace("start = 0.001\nmin = 0.001", "start = 1e-12\nmin = 1e-12")
    .replace("max = 65536", "max = 1e-12");
    let pool = start_pool(&dir, &config, port).await;
    let tables = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, Value)>::new()));
    let watcher = {
        let tables = std::sync::Arc::clone(&tables);
        tokio::spawn(async move {
            loop {
                let window =
                    api_get(&format!("http://127.0.0.1:{api_port}/api/pplns/window")).await;
                if let Some(id) = window["table"]["id"].as_u64() {
                    let mut seen = tables.lock().expect("lock");
                    if seen.last().map(|(last, _)| *last) != Some(id) {
                        seen.push((id, window["table"]["entries"].clone()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut accepted = 0;
    for (round, address) in [&a, &b].into_iter().enumerate() {
        let users = dir.join(format!("users-{round}.txt"));
        std::fs::write(&users, format!("{address}.rig\n")).expect("users");
        let report = users_loadgen(
            port,
            &users,
            &["--miners", "4", "--rate", "3", "--duration", "8"],
            &dir.join(format!("loadgen-{round}.log")),
            &pool,
        );
        accepted += report["accepted"].as_u64().unwrap_or(0);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    watcher.abort();
    let tables = tables.lock().expect("lock").clone();
    let blocks = blocks_with_tables(&open_store(&dir).await).await.len();
    eprintln!(
        "{} tables for {accepted} shares and {blocks} blocks",
        tables.len()
    );
    assert!(accepted >= 150, "{accepted} shares accepted");
    // A table per share would be ~190; one per template and per move past 25 % is a handful.
    assert!(
        !tables.is_empty() && tables.len() <= 6 + 2 * blocks,
        "{} tables for {accepted} shares and {blocks} blocks: {:?}",
        tables.len(),
        tables.iter().map(|(id, _)| id).collect::<Vec<_>>()
    );
    // The move mattered: the last table pays b.
    let (_, last) = tables.last().expect("a table");
    assert!(
        last.as_array()
            .expect("entries")
            .iter()
            .any(|e| e["address"] == b.as_str() && e["earned_sat"].as_u64() > Some(0)),
        "{last}"
    );
}
