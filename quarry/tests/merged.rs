//! Merged mining end to end: Bitcoin Core regtest, two AuxPoW chains played by RPC servers that
//! apply Namecoin Core's checks (`support/aux_node.rs`), `quarry serve` and `quarry mine`.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::aux_node::{AuxNode, RskNode, RSK_FEES_WEI};
use support::*;

/// Regtest bits: every other hash solves an aux block.
const EASY: u32 = 0x207f_ffff;

/// The pool's blocks of `chain` (newest first, up to 1,000).
async fn chain_blocks(api: u16, chain: &str) -> Vec<Value> {
    let url = format!("http://127.0.0.1:{api}/api/blocks?limit=1000&chain={chain}");
    let body: Value = reqwest::get(&url)
        .await
        .expect("GET /api/blocks")
        .json()
        .await
        .expect("JSON");
    body.as_array()
        .or_else(|| body["blocks"].as_array())
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_solve_aux_blocks_once_each_and_every_chain_is_credited() {
    let nodes = Regtest::single();
    // Chain ids 1 and 3 collide in a tree of 2 (both odd): the tree must grow to 4.
    let mut namecoin = AuxNode::start(1, EASY, "nc1").await;
    let other = AuxNode::start(3, EASY, "oc1").await;
    let rsk = RskNode::start(EASY).await;
    let dir = scratch_dir("merged");
    let port = free_port();
    let api = free_port();
    let miner_address = nodes.new_address().await;
    let mut config = pool_config(&nodes, &dir, port, "");
    config.push_str(&format!(
        r#"
[payout]
maturity = 2
interval_secs = 2

[api]
listen = "127.0.0.1:{api}"

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
kind = "auxpow"
name = "othercoin"
url = "{other}"
user = "u"
password = "p"
address = "o-pool-address"
chain_id = 3
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
fee_percentage = 1.0
contributor_id = "quarry-tests"
auto_distribute = false
commons.namecoin = "nc1commons"
commons.othercoin = "o-commons"
commons.rsk = "r-commons"
"#,
        namecoin = namecoin.url(),
        other = other.url(),
        rsk = rsk.url(),
    ));
    let pool = start_pool(&dir, &config, port).await;
    let url = format!("stratum+tcp://127.0.0.1:{port}");
    let user = format!("{miner_address}.aux");
    // Namecoin rewards go to the address the miner names; othercoin's stay on its Bitcoin
    // address, which othercoin's wallet cannot pay.
    let _miner = Process::spawn(
        &[
            "mine",
            &url,
            "--user",
            &user,
            "--password",
            "x,namecoin=nc1miner",
            "--threads",
            "1",
        ],
        &dir.join("miner.log"),
    );

    // Both chains get blocks.
    let accepted = |node: &AuxNode| node.ledger(|l| l.accepted.len());
    assert!(
        wait_until(Duration::from_secs(60), || async {
            accepted(&namecoin) >= 3 && accepted(&other) >= 3
        })
        .await,
        "aux blocks: namecoin {} other {}\n{}",
        accepted(&namecoin),
        accepted(&other),
        pool.log_text()
    );
    // RSK too, through its partial merkle proof, each work unit submitted once.
    assert!(
        wait_until(Duration::from_secs(20), || async {
            rsk.ledger(|l| l.imported.len()) >= 2
        })
        .await,
        "RSK blocks imported: {:?}",
        rsk.ledger(|l| (l.imported.len(), l.refused.clone()))
    );
    rsk.ledger(|l| {
        assert!(
            l.refused.is_empty(),
            "every RSK proof passes: {:?}",
            l.refused
        );
        assert_eq!(
            l.submissions.values().max().copied(),
            Some(1),
            "{:?}",
            l.submissions
        );
    });
    for node in [&namecoin, &other] {
        node.ledger(|l| {
            assert!(l.refused.is_empty(), "every proof passes: {:?}", l.refused);
            let most = l.submissions.values().max().copied().unwrap_or(0);
            assert_eq!(
                most, 1,
                "each aux block submitted once: {:?}",
                l.submissions
            );
        });
    }

    // The ledger has them per chain, credited to the finder after the merge-mining fee.
    assert!(
        wait_until(Duration::from_secs(20), || async {
            chain_blocks(api, "namecoin").await.len() >= 3
                && chain_blocks(api, "othercoin").await.len() >= 3
        })
        .await,
        "aux blocks in /api/blocks: {:?}",
        chain_blocks(api, "namecoin").await
    );
    // Every block the node took is credited (moved on from `submitted`) soon after: the pool
    // credits once its node's answer is in.
    let taken = namecoin.ledger(|l| {
        l.accepted
            .iter()
            .map(|(h, _)| h.clone())
            .collect::<Vec<_>>()
    });
    assert!(
        wait_until(Duration::from_secs(20), || async {
            let all = chain_blocks(api, "namecoin").await;
            taken.iter().all(|hash| {
                all.iter()
                    .any(|b| b["hash"] == hash.as_str() && b["status"] != "submitted")
            })
        })
        .await,
        "every accepted namecoin block credited: {:?}",
        chain_blocks(api, "namecoin").await
    );

    // Matured on their own chain: confirmations come from the aux node.
    namecoin.mine(3);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            chain_blocks(api, "namecoin")
                .await
                .iter()
                .any(|b| b["status"] == "confirmed")
        })
        .await,
        "a namecoin block matures: {:?}",
        chain_blocks(api, "namecoin").await
    );
    // Per chain in the API: the node is up, blocks by status, and the finder's credits (solo:
    // the whole aux reward after the 1 % merge-mining fee, which goes to the commons).
    let chains: Value = reqwest::get(format!("http://127.0.0.1:{api}/api/chains"))
        .await
        .expect("chains")
        .json()
        .await
        .expect("JSON");
    let namecoin_entry = chains
        .as_array()
        .and_then(|c| c.iter().find(|c| c["chain"] == "namecoin"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(namecoin_entry["up"], true, "{chains}");
    assert!(
        namecoin_entry["blocks"]["confirmed"].as_u64() >= Some(1),
        "{chains}"
    );
    let miner = miner_json(api, &miner_address).await;
    for (chain, payee) in [
        ("namecoin", "nc1miner"),
        ("othercoin", miner_address.as_str()),
    ] {
        let credited = credited(&miner, chain, payee);
        // 5,000,000,000 per block, less 1 %: a whole number of such blocks.
        assert!(
            credited > 0 && credited % 4_950_000_000_000 == 0,
            "{chain}: {miner}"
        );
    }

    // Paid from namecoin's wallet: the miner's namecoin address, a whole number of blocks (each
    // less the fee); the commons' fee is held (auto_distribute = false). Othercoin pays nobody:
    // the miner named no address there, and its wallet refuses the Bitcoin one.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            namecoin.ledger(|l| l.paid_to("nc1miner")) > 0
        })
        .await,
        "namecoin payouts: {:?}\n{}",
        namecoin.ledger(|l| l.sent.clone()),
        pool.log_text()
    );
    namecoin.ledger(|l| {
        let paid = l.paid_to("nc1miner");
        assert_eq!(paid % 4_950_000_000, 0, "{:?}", l.sent);
        assert_eq!(l.paid_to("nc1commons"), 0, "the commons' fee is held");
        // Each payout's comment is unique (the idempotency tag).
        let mut tags: Vec<_> = l.sent.iter().map(|(tag, _)| tag.clone()).collect();
        tags.dedup();
        assert_eq!(tags.len(), l.sent.len(), "{:?}", l.sent);
    });
    other.ledger(|l| {
        assert_eq!(l.sendmany_calls, 0, "othercoin paid: {:?}", l.sent);
    });
    let payouts: Value = reqwest::get(format!("http://127.0.0.1:{api}/api/payments"))
        .await
        .expect("payments")
        .json()
        .await
        .expect("JSON");
    assert!(
        payouts.to_string().contains("namecoin"),
        "payouts carry their chain: {payouts}"
    );

    // Every submission is kept with its node's answer.
    let kept: Vec<Value> = std::fs::read_dir(dir.join("data").join("aux"))
        .expect("data_dir/aux")
        .filter_map(|entry| std::fs::read(entry.ok()?.path()).ok())
        .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
        .collect();
    let kept_accepted = kept
        .iter()
        .filter(|k| k["method"] == "submitauxblock" && k["answer"] == "accepted")
        .count();
    assert!(
        kept_accepted >= taken.len(),
        "{kept_accepted} kept accepted submissions, {} namecoin blocks taken",
        taken.len()
    );

    // RSK blocks: credited the fees rskj offered (in 1e-8 RBTC, less 1 %), and matured on
    // RSK's own chain by hash and height, as rskj named the block on import.
    rsk.mine(2);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            chain_blocks(api, "rsk")
                .await
                .iter()
                .any(|b| b["status"] == "confirmed")
        })
        .await,
        "an RSK block matures: {:?}",
        chain_blocks(api, "rsk").await
    );
    let rsk_blocks = chain_blocks(api, "rsk").await;
    let built: Vec<String> = rsk.ledger(|l| l.blocks.iter().map(|(h, _)| hex::encode(h)).collect());
    assert!(
        rsk_blocks
            .iter()
            .filter(|b| b["status"] == "confirmed")
            .all(
                |b| built.iter().any(|h| b["hash"] == h.as_str()) && b["height"].as_u64() > Some(0)
            ),
        "RSK blocks recorded under the hash and height rskj gave: {rsk_blocks:?} {built:?}"
    );
    let miner = miner_json(api, &miner_address).await;
    let per_block_msat = {
        let units: u64 = (RSK_FEES_WEI.parse::<u128>().expect("wei") / 10_000_000_000) as u64;
        (units - units / 100) * 1000
    };
    let rsk_credit = credited(&miner, "rsk", &miner_address);
    assert!(
        rsk_credit > 0 && rsk_credit % per_block_msat as i64 == 0,
        "rsk: {miner}"
    );
    let namecoin_before = credited(&miner, "namecoin", "nc1miner");
    // Only their own chain settles aux blocks: the aux node never orphans one, so none is
    // orphaned (Bitcoin's tracker, whose heights mean nothing for them, leaves them alone).
    let orphaned = chain_blocks(api, "namecoin")
        .await
        .into_iter()
        .filter(|b| b["status"] == "orphaned")
        .count();
    assert_eq!(
        orphaned, 0,
        "namecoin blocks orphaned by another chain's tracker"
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{api}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("quarry_aux_blocks_total{chain=\"namecoin\",result=\"accepted\"}"),
        "{metrics}"
    );

    // Namecoin goes away: Bitcoin mining goes on, the other chain too.
    namecoin.stop();
    let (height, other_before) = (nodes.height().await, accepted(&other));
    assert!(
        wait_until(Duration::from_secs(30), || async {
            nodes.height().await > height + 2 && accepted(&other) > other_before
        })
        .await,
        "Bitcoin and the other chain keep going without namecoin\n{}",
        pool.log_text()
    );
    // And comes back: its blocks are found again.
    let before = accepted(&namecoin);
    namecoin.restart().await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            accepted(&namecoin) > before
        })
        .await,
        "namecoin is merge-mined again after it returns\n{}",
        pool.log_text()
    );
    namecoin.ledger(|l| assert!(l.refused.is_empty(), "{:?}", l.refused));
    // Nothing credited before it went away is lost.
    let miner = miner_json(api, &miner_address).await;
    assert!(
        credited(&miner, "namecoin", "nc1miner") >= namecoin_before,
        "namecoin credits after the outage: {miner}"
    );
}

async fn miner_json(api: u16, address: &str) -> Value {
    reqwest::get(format!("http://127.0.0.1:{api}/api/miners/{address}"))
        .await
        .expect("miner")
        .json()
        .await
        .expect("JSON")
}

/// What `/api/miners/{address}` shows credited on `chain` to `payee`, millisatoshis.
fn credited(miner: &Value, chain: &str, payee: &str) -> i64 {
    miner["merged"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|m| m["chain"] == chain && m["address"] == payee)
        })
        .map(|m| m["mature_msat"].as_i64().unwrap_or(0) + m["immature_msat"].as_i64().unwrap_or(0))
        .unwrap_or(0)
}
