//! Pool mode on the regtest pair: blocks are credited by PPLNS with a fee split, orphans are
//! reversed, and the rest become payable at coinbase maturity, to the millisatoshi.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use quarry_ledger::{BlockStatus, Store};
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_blocks_are_credited_matured_and_orphans_reversed() {
    let nodes = Regtest::with_wallet();
    let dir = scratch_dir("accounting");
    let port = free_port();
    let pool_address = nodes.rpc_ok('A', "getnewaddress", json!([])).await;
    let pool_address = pool_address.as_str().expect("address").to_string();
    let mut split = Vec::new();
    for _ in 0..4 {
        let address = nodes.rpc_ok('A', "getnewaddress", json!([])).await;
        split.push(address.as_str().expect("address").to_string());
    }
    let miner_address = nodes.rpc_ok('B', "getnewaddress", json!([])).await;
    let miner_address = miner_address.as_str().expect("address").to_string();
    let mut config = pool_config(&nodes, &dir, port, "").replace(
        "mode = \"solo\"",
        &format!("mode = \"pool\"\npool_address = \"{pool_address}\""),
    );
    config.push_str(&format!(
        r#"
[payout]
scheme = "pplns"
pplns_n = 2.0
fee_percent = 1.0
maturity = 100
[[payout.split]]
label = "core-development"
address = "{}"
percent = 60
[[payout.split]]
label = "grants"
address = "{}"
percent = 25
[[payout.split]]
label = "audits"
address = "{}"
percent = 10
[[payout.split]]
label = "operations"
address = "{}"
percent = 5
"#,
        split[0], split[1], split[2], split[3]
    ));
    let pool = start_pool(&dir, &config, port).await;
    let store = Store::open(&format!(
        "sqlite://{}",
        dir.join("data/quarry.db").display()
    ))
    .await
    .expect("ledger");

    let mut miner = Process::spawn(
        &[
            "mine",
            &format!("stratum+tcp://127.0.0.1:{port}"),
            "--user",
            &format!("{miner_address}.rig"),
            "--threads",
            "1",
            "--duration",
            "2",
        ],
        &dir.join("mine.log"),
    );
    assert!(miner.wait(Duration::from_secs(30)), "miner stops");
    // Every accepted pool block gets credited (immature). Two seconds of regtest mining stays
    // well under the 100 blocks that would mature the first ones.
    let credited = wait_until(Duration::from_secs(30), || async {
        let blocks = store.blocks(None, 1000).await.unwrap_or_default();
        blocks.len() >= 3 && blocks.iter().all(|b| b.status == BlockStatus::Pending)
    })
    .await;
    let blocks = store.blocks(None, 1000).await.expect("blocks");
    assert!(
        credited,
        "3+ pending blocks: {blocks:?}\n{}",
        pool.log_text()
    );

    // Orphan the newest: both nodes invalidate it and node B mines a longer branch.
    let orphan = blocks[0].clone();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            nodes
                .rpc('B', "getblockheader", json!([orphan.hash]))
                .await
                .is_ok()
        })
        .await,
        "node B has the block before it is invalidated"
    );
    for node in ['A', 'B'] {
        nodes
            .rpc_ok(node, "invalidateblock", json!([orphan.hash]))
            .await;
    }
    let b_address = nodes.rpc_ok('B', "getnewaddress", json!([])).await;
    nodes
        .rpc_ok('B', "generatetoaddress", json!([2, b_address]))
        .await;
    let orphaned = wait_until(Duration::from_secs(30), || async {
        store
            .blocks(Some(BlockStatus::Orphaned), 10)
            .await
            .unwrap_or_default()
            .len()
            == 1
    })
    .await;
    assert!(orphaned, "the tracker saw the orphan:\n{}", pool.log_text());

    // Mature the rest.
    nodes
        .rpc_ok('B', "generatetoaddress", json!([101, b_address]))
        .await;
    let survivors = blocks.len() - 1;
    let confirmed = wait_until(Duration::from_secs(60), || async {
        store
            .blocks(Some(BlockStatus::Confirmed), 1000)
            .await
            .unwrap_or_default()
            .len()
            == survivors
    })
    .await;
    assert!(
        confirmed,
        "all other blocks confirmed:\n{}",
        pool.log_text()
    );

    // Every confirmed reward is credited to the millisatoshi: 99 % to the only miner,
    // 1 % split 60/25/10/5, nothing for the orphan.
    let confirmed = store
        .blocks(Some(BlockStatus::Confirmed), 1000)
        .await
        .expect("blocks");
    let balances: BTreeMap<String, (i64, i64)> = store
        .balances()
        .await
        .expect("balances")
        .into_iter()
        .map(|b| (b.address, (b.mature_msat, b.immature_msat)))
        .collect();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for block in &confirmed {
        let fee = block.reward / 100;
        *expected.entry(miner_address.clone()).or_default() += (block.reward - fee) * 1000;
        // 60/25/10/5 of the fee, largest remainder.
        let parts = [
            fee * 60 / 100,
            fee * 25 / 100,
            fee * 10 / 100,
            fee * 5 / 100,
        ];
        assert_eq!(
            parts.iter().sum::<i64>(),
            fee,
            "fees divide evenly at 50 BTC rewards"
        );
        for (address, part) in split.iter().zip(parts) {
            *expected.entry(address.clone()).or_default() += part * 1000;
        }
    }
    for (address, msat) in &expected {
        assert_eq!(
            balances.get(address).map(|b| b.0),
            Some(*msat),
            "mature balance of {address}"
        );
        assert_eq!(
            balances.get(address).map(|b| b.1),
            Some(0),
            "nothing left immature"
        );
    }
    let total_mature: i64 = balances.values().map(|b| b.0).sum();
    let total_reward: i64 = confirmed.iter().map(|b| b.reward * 1000).sum();
    assert_eq!(total_mature, total_reward, "no satoshi lost or invented");

    // The pool's coinbases pay the pool, not the miner.
    let raw = nodes
        .rpc_ok('A', "getblock", json!([confirmed[0].hash, 0]))
        .await;
    let block: bitcoin::Block =
        bitcoin::consensus::deserialize(&hex::decode(raw.as_str().expect("hex")).expect("hex"))
            .expect("block");
    let pool_script = pool_address
        .parse::<bitcoin::Address<_>>()
        .expect("address")
        .assume_checked()
        .script_pubkey();
    assert_eq!(block.txdata[0].output[0].script_pubkey, pool_script);

    // Payouts from the pool's wallet (node A), the process killed after every step in turn,
    // then once more to finish. Exactly one transaction, everyone paid, nothing twice.
    let config_path = dir.join("quarry.toml");
    for crash in ["after_intent", "after_send", "after_record", ""] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"));
        command
            .args(["payout", "--config", config_path.to_str().expect("utf-8")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if !crash.is_empty() {
            command.env("QUARRY_PAYOUT_CRASH_AT", crash);
        }
        let status = command.status().expect("run quarry payout");
        assert_eq!(
            status.success(),
            crash.is_empty(),
            "payout run crashing at '{crash}': {status}"
        );
    }
    let paid = store
        .paid(&quarry_ledger::Chain::BITCOIN)
        .await
        .expect("paid");
    for (address, msat) in &expected {
        let (debited, _) = paid.get(address).copied().unwrap_or_default();
        assert_eq!(debited * 1000, *msat, "{address} paid its whole balance");
    }
    // Confirm the payout and let node B see it.
    let a_address = nodes.rpc_ok('A', "getnewaddress", json!([])).await;
    nodes
        .rpc_ok('A', "generatetoaddress", json!([1, a_address]))
        .await;
    let tip = nodes.rpc_ok('A', "getbestblockhash", json!([])).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            nodes.rpc('B', "getbestblockhash", json!([])).await.ok() == Some(tip.clone())
        })
        .await,
        "node B has the payout block"
    );
    let on_chain = |node: char, address: String| {
        let nodes = &nodes;
        async move {
            let btc = nodes
                .rpc_ok(node, "getreceivedbyaddress", json!([address, 1]))
                .await;
            (btc.as_f64().expect("amount") * 1e8).round() as i64
        }
    };
    let miner_received = paid[&miner_address].1;
    assert!(miner_received > 0);
    assert_eq!(
        on_chain('B', miner_address.clone()).await,
        miner_received,
        "miner, to the satoshi"
    );
    for address in &split {
        assert_eq!(
            on_chain('A', address.clone()).await,
            paid[address].1,
            "{address}, to the satoshi"
        );
    }
    let sends: Vec<serde_json::Value> = serde_json::from_value(
        nodes
            .rpc_ok('A', "listtransactions", json!(["*", 10_000, 0]))
            .await,
    )
    .expect("list");
    let mut payout_txids: Vec<&str> = sends
        .iter()
        .filter(|t| {
            t["category"] == "send"
                && t["comment"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("quarry-payout-"))
        })
        .filter_map(|t| t["txid"].as_str())
        .collect();
    payout_txids.dedup();
    assert_eq!(
        payout_txids.len(),
        1,
        "exactly one payout transaction: {payout_txids:?}"
    );
}
