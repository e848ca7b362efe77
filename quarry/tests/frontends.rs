//! Two `quarry serve` on one PostgreSQL: shares of both counted once, exactly one runs payouts,
//! and the API of either shows the whole pool.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

async fn get(url: &str) -> Value {
    reqwest::get(url)
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON")
}

/// One frontend: stratum and API ports, instance name, extranonce1 prefix.
struct Frontend<'a> {
    port: u16,
    api_port: u16,
    name: &'a str,
    prefix: &'a str,
}

fn frontend_config(
    nodes: &Regtest,
    dir: &Path,
    pg: &str,
    pool_address: &str,
    f: &Frontend,
) -> String {
    let Frontend {
        port,
        api_port,
        name,
        prefix,
    } = *f;
    let mut config = pool_config(nodes, dir, port, "")
        .replace(
            "mode = \"solo\"",
            &format!("mode = \"pool\"\npool_address = \"{pool_address}\""),
        )
        .replace(
            "[stratum]\n",
            &format!("[stratum]\nextranonce1_prefix = \"{prefix}\"\n"),
        );
    config.push_str(&format!(
        "\n[ledger]\nurl = \"{pg}\"\ninstance = \"{name}\"\n\n[payout]\nscheme = \"pplns\"\ninterval_secs = 1\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n"
    ));
    config
}

/// A number from the miner's closing `accepted=… rejected=… blocks=… submitted=…` line.
fn summary(log: &str, key: &str) -> i64 {
    log.lines()
        .find(|l| l.starts_with("accepted="))
        .and_then(|line| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("miner summary {key} in: {log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_frontends_share_one_postgres() {
    let nodes = Regtest::with_wallet();
    let pg = Postgres::start();
    let pool_address = nodes.rpc_ok('A', "getnewaddress", json!([])).await;
    let pool_address = pool_address.as_str().expect("address").to_string();
    let mut frontends = Vec::new();
    for (name, prefix) in [("east", "01"), ("west", "02")] {
        let dir = scratch_dir(name);
        let (port, api) = (free_port(), free_port());
        let config = frontend_config(
            &nodes,
            &dir,
            &pg.url,
            &pool_address,
            &Frontend {
                port,
                api_port: api,
                name,
                prefix,
            },
        );
        let process = start_pool(&dir, &config, port).await;
        frontends.push((name, dir, port, api, process));
    }
    // One miner on each frontend.
    let mut miners = Vec::new();
    for (name, dir, port, _, _) in &frontends {
        let address = nodes.rpc_ok('B', "getnewaddress", json!([])).await;
        let address = address.as_str().expect("address").to_string();
        miners.push(Process::spawn(
            &[
                "mine",
                &format!("stratum+tcp://127.0.0.1:{port}"),
                "--user",
                &format!("{address}.{name}"),
                "--threads",
                "1",
                "--duration",
                "4",
            ],
            &dir.join("mine.log"),
        ));
    }
    for miner in &mut miners {
        assert!(miner.wait(Duration::from_secs(30)), "miner stops");
    }
    let acknowledged: i64 = miners
        .iter()
        .map(|m| summary(&m.log_text(), "accepted"))
        .sum();
    let submitted: i64 = miners
        .iter()
        .map(|m| summary(&m.log_text(), "submitted"))
        .sum();

    // Every acknowledged share of both frontends is in the one log, and none twice (a share
    // whose answer was still on its way when the miner stopped is stored but not counted).
    let store = quarry_ledger::Store::open(&pg.url).await.expect("ledger");
    let stored = store.share_count().await.expect("count");
    assert!(
        acknowledged <= stored && stored <= submitted,
        "acknowledged {acknowledged} <= stored {stored} <= submitted {submitted}"
    );

    // Either API shows the whole pool.
    let views: Vec<Value> = futures_join(
        &frontends
            .iter()
            .map(|f| format!("http://127.0.0.1:{}/api/pool", f.3))
            .collect::<Vec<_>>(),
    )
    .await;
    for view in &views {
        assert_eq!(view["active_miners"], 2, "{view}");
        assert_eq!(view["blocks_found"], views[0]["blocks_found"], "{views:?}");
    }
    assert!(views[0]["blocks_found"].as_u64().expect("blocks") >= 2);

    // Exactly one frontend runs payouts; after maturity it pays, and both list the payment.
    let runners = frontends
        .iter()
        .filter(|f| f.4.log_text().contains("this instance runs payouts"))
        .count();
    assert_eq!(runners, 1, "exactly one payout runner");
    let b_address = nodes.rpc_ok('B', "getnewaddress", json!([])).await;
    nodes
        .rpc_ok('B', "generatetoaddress", json!([101, b_address]))
        .await;
    // Blocks mature one tracker pass at a time, so a balance can take more than one payout
    // round (every second here): wait until a payment is sent and no paid address is owed more.
    let paid = wait_until(Duration::from_secs(60), || async {
        let payments = get(&format!("http://127.0.0.1:{}/api/payments", frontends[0].3)).await;
        let sent = payments
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x["status"] == "sent"));
        let (Ok(paid), Ok(payable)) = (
            store.paid(&quarry_ledger::Chain::BITCOIN).await,
            store.payable(&quarry_ledger::Chain::BITCOIN).await,
        ) else {
            return false;
        };
        sent && paid
            .keys()
            .all(|a| payable.get(a).copied().unwrap_or_default().0 < 100_000)
    })
    .await;
    assert!(
        paid,
        "payouts ran:\n{}\n{}",
        frontends[0].4.log_text(),
        frontends[1].4.log_text()
    );
    let east = get(&format!("http://127.0.0.1:{}/api/payments", frontends[0].3)).await;
    let west = get(&format!("http://127.0.0.1:{}/api/payments", frontends[1].3)).await;
    assert_eq!(east, west, "both frontends see the same payments");
    // No recipient was paid twice: each address appears once per payout and every payout's
    // items sum to what was debited.
    let paid = store
        .paid(&quarry_ledger::Chain::BITCOIN)
        .await
        .expect("paid");
    let payable = store
        .payable(&quarry_ledger::Chain::BITCOIN)
        .await
        .expect("payable");
    for (address, (debited, _)) in &paid {
        assert!(
            payable.get(address).copied().unwrap_or_default().0 < 100_000,
            "{address} fully paid"
        );
        assert!(*debited > 0);
    }
}

async fn futures_join(urls: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for url in urls {
        out.push(get(url).await);
    }
    out
}
