//! `quarry loadgen` against `quarry serve` on the regtest node pair: 1,000 miners for 10 s.
//! Every share sent gets an answer, and no valid share is rejected (stale answers after a block
//! moved the tip are counted apart). No timing assertions: the numbers are for BENCHMARKS.md.

mod support;

use serde_json::Value;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_simulated_miners_get_every_share_answered() {
    let nodes = Regtest::single();
    let dir = scratch_dir("loadgen");
    let port = free_port();
    let config = pool_config(&nodes, &dir, port, "");
    let pool = start_pool(&dir, &config, port).await;
    let pid = pool.child.id().to_string();
    let report = loadgen_report(
        &[
            "loadgen",
            &format!("127.0.0.1:{port}"),
            "--miners",
            "1000",
            "--user",
            "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn",
            "--rate",
            "0.2",
            "--duration",
            "10",
            "--pool-pid",
            &pid,
            "--json",
        ],
        &dir.join("loadgen.log"),
        || pool.log_text(),
    );
    let n = |key: &str| report[key].as_u64().unwrap_or(u64::MAX);
    assert_eq!(n("connections_established"), 1000, "{report}");
    assert_eq!(n("connect_failures"), 0, "{report}");
    assert!(n("shares_sent") > 0, "{report}");
    assert_eq!(n("unanswered"), 0, "every share got an answer: {report}");
    assert_eq!(n("rejected"), 0, "no valid share rejected: {report}");
    assert_eq!(
        n("accepted") + n("stale"),
        n("shares_sent"),
        "answers add up: {report}"
    );
    assert!(n("accepted") > 0, "{report}");
    assert_eq!(n("unauthorized"), 0, "{report}");
    assert_eq!(n("dropped"), 0, "no miner dropped: {report}");
    assert!(
        report["pool_rss_bytes_per_connection"].is_number(),
        "{report}"
    );

    // A user the pool refuses (not an address, in solo mode) is reported, not hidden.
    let report = loadgen_report(
        &[
            "loadgen",
            &format!("127.0.0.1:{port}"),
            "--miners",
            "5",
            "--user",
            "not-an-address",
            "--rate",
            "0",
            "--duration",
            "1",
            "--json",
        ],
        &dir.join("loadgen-refused.log"),
        String::new,
    );
    assert_eq!(report["unauthorized"], 5, "{report}");
}

/// 300 Stratum V2 miners (Noise, standard channels) for 8 s while two blocks are mined through
/// the node: every share answered, none rejected, and every miner gets work on each new block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_sv2_miners_get_every_share_answered_and_every_new_block() {
    sv2_miners_answered_and_notified(Via::Tcp).await;
}

/// The same with 100 standard channels on each of three SV2 connections (as a proxy
/// multiplexes its miners): the TCP side of the TCP-vs-QUIC benchmark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_sv2_channels_sharing_connections_get_every_share_answered() {
    sv2_miners_answered_and_notified(Via::TcpChannels).await;
}

/// The same over QUIC: 300 miners on three QUIC connections, 100 streams (SV2 connections, one
/// channel each) on every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_sv2_miners_over_quic_streams_get_every_share_answered() {
    sv2_miners_answered_and_notified(Via::Quic).await;
}

#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// A TCP connection per miner.
    Tcp,
    /// 100 channels per TCP connection.
    TcpChannels,
    /// 100 streams per QUIC connection.
    Quic,
}

async fn sv2_miners_answered_and_notified(via: Via) {
    let quic = via == Via::Quic;
    let nodes = Regtest::single();
    let dir = scratch_dir(match via {
        Via::Tcp => "loadgen-sv2",
        Via::TcpChannels => "loadgen-sv2-channels",
        Via::Quic => "loadgen-quic",
    });
    let port = free_port();
    let quic_port = free_port();
    let authority = quarry_stratum::v2::AuthorityKeypair::generate();
    let mut config = pool_config(&nodes, &dir, port, "");
    config.push_str(&format!(
        "\n[sv2]\nauthority_secret_key = \"{}\"\nquic_listen = \"127.0.0.1:{quic_port}\"\n",
        authority.secret_text()
    ));
    let pool = start_pool(&dir, &config, port).await;
    let address = nodes.var("MINING_ADDRESS");
    let url = match quic {
        true => format!("stratum2+quic://127.0.0.1:{quic_port}"),
        false => format!("127.0.0.1:{port}"),
    };
    let report = loadgen_report(
        &[
            "loadgen",
            &url,
            "--sv2",
            if quic {
                "--quic-streams"
            } else {
                "--channels-per-connection"
            },
            if via == Via::Tcp { "1" } else { "100" },
            "--authority-pubkey",
            &authority.public_text(),
            "--miners",
            "300",
            "--user",
            address,
            "--rate",
            "0.5",
            "--duration",
            "8",
            "--node-zmq",
            nodes.var("NODE_A_ZMQ"),
            "--node-rpc",
            &nodes.rpc_url('A'),
            "--node-cookie",
            nodes.var("NODE_A_COOKIE"),
            "--blocks",
            "2",
            "--block-address",
            address,
            "--json",
        ],
        &dir.join("loadgen.log"),
        || pool.log_text(),
    );
    let n = |key: &str| report[key].as_u64().unwrap_or(u64::MAX);
    assert_eq!(report["protocol"], "sv2", "{report}");
    let connections = if via == Via::TcpChannels { 3 } else { 300 };
    assert_eq!(n("connections_established"), connections, "{report}");
    assert_eq!(n("connect_failures"), 0, "{report}");
    assert!(n("shares_sent") > 0, "{report}");
    assert_eq!(n("unanswered"), 0, "every share got an answer: {report}");
    assert_eq!(n("rejected"), 0, "no valid share rejected: {report}");
    assert_eq!(n("unauthorized"), 0, "{report}");
    assert_eq!(n("dropped"), 0, "no miner dropped: {report}");
    assert_eq!(
        n("accepted") + n("stale"),
        n("shares_sent"),
        "answers add up: {report}"
    );
    // The two mined blocks (and any the miners found) reached every miner as new work.
    let blocks = report["fanout"]["per_block"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let everyone = blocks
        .iter()
        .filter(|b| b["miners_notified"].as_u64() == Some(300))
        .count();
    assert!(everyone >= 2, "new blocks reach all 300 miners: {report}");
}

/// A "pool" that accepts and hangs up at once: every miner is counted as dropped, not as held
/// and quiet.
#[test]
fn miners_a_pool_hangs_up_on_are_reported_dropped() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    let dir = scratch_dir("loadgen-hangup");
    let report = loadgen_report(
        &[
            "loadgen",
            &format!("127.0.0.1:{port}"),
            "--miners",
            "3",
            "--user",
            "anyone",
            "--duration",
            "2",
            "--json",
        ],
        &dir.join("loadgen.log"),
        String::new,
    );
    assert_eq!(report["connections_established"], 3, "{report}");
    assert_eq!(report["dropped"], 3, "{report}");
    assert_eq!(report["shares_sent"], 0, "{report}");
}

/// A scripted V1 pool whose share difficulty (1,000) no simulated miner can meet: the load
/// generator says so (`hash_budget_misses`) instead of stalling or sending bad shares.
#[test]
fn a_share_difficulty_too_high_to_hash_is_reported() {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut out = stream.try_clone().expect("clone");
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    let Ok(request) = serde_json::from_str::<Value>(&line) else {
                        return;
                    };
                    let id = &request["id"];
                    let reply = match request["method"].as_str() {
                        Some("mining.subscribe") => format!(
                            "{{\"id\":{id},\"result\":[[],\"00000001\",4],\"error\":null}}\n"
                        ),
                        Some("mining.authorize") => format!(
                            "{{\"id\":{id},\"result\":true,\"error\":null}}\n\
                             {{\"id\":null,\"method\":\"mining.set_difficulty\",\"params\":[1000]}}\n\
                             {{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"1\",\"{prev}\",\"01\",\"02\",[],\"20000000\",\"207fffff\",\"6553f100\",true]}}\n",
                            prev = "00".repeat(32)
                        ),
                        _ => format!("{{\"id\":{id},\"result\":false,\"error\":[20,\"unexpected\",null]}}\n"),
                    };
                    if out.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let dir = scratch_dir("loadgen-too-hard");
    let report = loadgen_report(
        &[
            "loadgen",
            &format!("127.0.0.1:{port}"),
            "--miners",
            "2",
            "--user",
            "anyone",
            "--rate",
            "2",
            "--duration",
            "2",
            "--json",
        ],
        &dir.join("loadgen.log"),
        String::new,
    );
    assert_eq!(report["shares_sent"], 0, "{report}");
    assert_eq!(report["dropped"], 0, "{report}");
    assert!(
        report["hash_budget_misses"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
}

/// A pool set up for the flood: share difficulty `difficulty` (fixed), no submit budget to
/// close the connections, and bans that score but never trigger.
fn flood_config(nodes: &Regtest, dir: &std::path::Path, port: u16, difficulty: &str) -> String {
    let config = pool_config(nodes, dir, port, "");
    let config = config
        .replace(
            "start = 0.001\nmin = 0.001\nmax = 65536",
            &format!("start = {difficulty}\nmin = {difficulty}\nmax = {difficulty}"),
        )
        .replace(
            &format!("listen = \"127.0.0.1:{port}\"\n"),
            &format!(
                "listen = \"127.0.0.1:{port}\"\nsubmits_per_sec = 1000000\nsubmits_burst = 1000000\n"
            ),
        );
    assert!(config.contains(&format!("max = {difficulty}")), "{config}");
    format!("{config}\n[bans]\nthreshold = 1e15\n")
}

fn flood(port: u16, pid: &str, log: &std::path::Path, context: impl Fn() -> String) -> Value {
    loadgen_report(
        &[
            "loadgen",
            &format!("127.0.0.1:{port}"),
            "--miners",
            "20",
            "--in-flight",
            "4",
            "--user",
            "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn",
            "--duration",
            "3",
            "--pool-pid",
            pid,
            "--json",
        ],
        log,
        context,
    )
}

/// `--in-flight`: random nonces against difficulty 1 are all answered "low difficulty" (none
/// is a block: the load generator skips nonces under regtest's network target), and the
/// report gives the pool's CPU per answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_nonces_is_answered_share_by_share() {
    let nodes = Regtest::single();
    let dir = scratch_dir("loadgen-flood");
    let port = free_port();
    let pool = start_pool(&dir, &flood_config(&nodes, &dir, port, "1"), port).await;
    let pid = pool.child.id().to_string();
    let height = nodes.height().await;
    let report = flood(port, &pid, &dir.join("flood.log"), || pool.log_text());
    let n = |key: &str| report[key].as_u64().unwrap_or(u64::MAX);
    assert!(n("rejected") > 1000, "{report}");
    assert_eq!(n("rejected"), n("shares_sent"), "{report}");
    assert_eq!(n("accepted"), 0, "{report}");
    assert_eq!(n("unanswered"), 0, "{report}");
    assert_eq!(n("dropped"), 0, "{report}");
    assert!(
        report["reject_samples"][0]
            .as_str()
            .is_some_and(|s| s.contains("low difficulty")),
        "{report}"
    );
    assert!(
        report["pool_cpu_us_per_answer"]
            .as_f64()
            .is_some_and(|us| us > 0.0),
        "{report}"
    );
    assert_eq!(nodes.height().await, height, "no share was a block");
}

/// The same flood with every share accepted: each is recorded before its answer, and every
/// one is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_acceptable_shares_is_recorded_and_answered() {
    let nodes = Regtest::single();
    let dir = scratch_dir("loadgen-flood-durable");
    let port = free_port();
    let pool = start_pool(&dir, &flood_config(&nodes, &dir, port, "1e-12"), port).await;
    let pid = pool.child.id().to_string();
    let report = flood(port, &pid, &dir.join("flood.log"), || pool.log_text());
    let n = |key: &str| report[key].as_u64().unwrap_or(u64::MAX);
    assert!(n("accepted") > 1000, "{report}");
    // Random nonces may repeat one now and then: a duplicate is the only rejection.
    assert!(n("rejected") * 1000 < n("accepted"), "{report}");
    assert_eq!(n("accepted") + n("rejected"), n("shares_sent"), "{report}");
    assert_eq!(n("unanswered"), 0, "{report}");
}
