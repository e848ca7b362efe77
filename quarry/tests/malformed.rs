//! Bad input against a running `quarry serve`: every bad line gets an answer with the right code,
//! abusive connections are closed, and the server keeps serving.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// A pool whose node is unreachable: the Stratum side works without templates.
async fn pool_without_node(name: &str, stratum_extra: &str) -> (Process, u16) {
    let dir = scratch_dir(name);
    let port = free_port();
    let dead = free_port();
    let config = format!(
        r#"
network = "regtest"
data_dir = "{data}"

[[node]]
url = "http://127.0.0.1:{dead}"
user = "quarry"
password = "quarry"

[stratum]
listen = "127.0.0.1:{port}"
{stratum_extra}

[vardiff]
start = 0.001
min = 0.001
"#,
        data = dir.join("data").display(),
    );
    (start_pool(&dir, &config, port).await, port)
}

const REGTEST_ADDRESS: &str = "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn";
const MAINNET_ADDRESS: &str = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_of_bad_lines_gets_answers_and_the_server_lives() {
    let (mut pool, port) = pool_without_node("corpus", "").await;
    let mut client = V1Client::connect(port).await;
    let sub = r#"{"id":90,"method":"mining.extranonce.subscribe","params":[]}"#;
    // (line, expected error code, or None for success). A valid line separates bursts of
    // garbage so the garbage limit (5 in a row) is not what closes this connection.
    let corpus: Vec<(Vec<u8>, Option<i64>)> = vec![
        (b"this is not json".to_vec(), Some(20)),
        (b"{\"id\":1}".to_vec(), Some(20)),
        (b"[1,2,3]".to_vec(), Some(20)),
        (b"\xff\xfe\x00garbage".to_vec(), Some(20)),
        (sub.into(), None),
        (br#"{"id":2,"method":"mining.unknown","params":[]}"#.to_vec(), Some(20)),
        (br#"{"id":3,"method":42,"params":[]}"#.to_vec(), Some(20)),
        ("[".repeat(5000).into_bytes(), Some(20)),
        (sub.into(), None),
        (br#"{"id":4,"method":"mining.submit","params":"notarray"}"#.to_vec(), Some(20)),
        (br#"{"id":5,"method":"mining.submit","params":["a","1","zz","00000000","00000000"]}"#.to_vec(), Some(20)),
        (br#"{"id":6,"method":"mining.submit","params":["a","1","00000000","123456789","00000000"]}"#.to_vec(), Some(20)),
        (br#"{"id":7,"method":"mining.submit","params":["a"]}"#.to_vec(), Some(20)),
        (br#"{"id":8,"method":"mining.submit","params":["a","1","0000000000000000","00000000","00000000"]}"#.to_vec(), Some(25)),
        (br#"{"id":9,"method":"mining.authorize","params":[123,"x"]}"#.to_vec(), Some(20)),
        (br#"{"id":10,"method":"mining.suggest_difficulty","params":["abc"]}"#.to_vec(), Some(20)),
        (br#"{"id":11,"method":"mining.suggest_difficulty","params":[-5]}"#.to_vec(), Some(20)),
        (br#"{"id":12,"method":"mining.configure","params":["x"]}"#.to_vec(), Some(20)),
        (br#"{"id":13,"method":"mining.subscribe","params":[{"a":1}]}"#.to_vec(), Some(20)),
        (br#"{"id":14,"method":"mining.subscribe","params":["ok/1"]}"#.to_vec(), None),
        (br#"{"id":15,"method":"mining.submit","params":["a","1","0000000000000000","00000000","00000000"]}"#.to_vec(), Some(24)),
        (br#"{"id":16,"method":"mining.authorize","params":["notanaddress.w","x"]}"#.to_vec(), Some(24)),
        (format!(r#"{{"id":17,"method":"mining.authorize","params":["{MAINNET_ADDRESS}.w","x"]}}"#).into_bytes(), Some(24)),
        (format!(r#"{{"id":18,"method":"mining.authorize","params":["{}","x"]}}"#, "a".repeat(300)).into_bytes(), Some(20)),
        (format!(r#"{{"id":19,"method":"mining.authorize","params":["{REGTEST_ADDRESS}.w","x"]}}"#).into_bytes(), None),
        (format!(r#"{{"id":20,"method":"mining.submit","params":["{REGTEST_ADDRESS}.w","nojob","0000000000000000","00000000","00000000"]}}"#).into_bytes(), Some(21)),
        (format!(r#"{{"id":21,"method":"mining.submit","params":["{REGTEST_ADDRESS}.other","1","0000000000000000","00000000","00000000"]}}"#).into_bytes(), Some(24)),
        (format!(r#"{{"id":22,"method":"mining.submit","params":["{REGTEST_ADDRESS}.w","1","00","00000000","00000000",5]}}"#).into_bytes(), Some(20)),
    ];
    for (line, expected) in &corpus {
        let mut bytes = line.clone();
        bytes.push(b'\n');
        assert!(client.send_raw(&bytes).await, "write");
        let answer = client
            .answer(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("an answer to {}", String::from_utf8_lossy(line)));
        assert_eq!(
            code(&answer),
            *expected,
            "{} -> {answer}",
            String::from_utf8_lossy(&line[..line.len().min(120)])
        );
        if expected.is_some() {
            assert!(answer["result"].is_null(), "{answer}");
            assert!(
                answer["error"][1].is_string(),
                "error has a message: {answer}"
            );
        }
    }
    assert!(!client.closed);

    // Five garbage lines in a row close the connection. (Lines long enough to be told from an
    // SV2 handshake: a shorter first line is taken for one and meets the SV2 setup deadline.)
    let mut garbage = V1Client::connect(port).await;
    for _ in 0..5 {
        garbage.send_raw(b"garbage, not stratum\n").await;
    }
    let start = Instant::now();
    while !garbage.closed && start.elapsed() < Duration::from_secs(10) {
        garbage.read(Duration::from_millis(500)).await;
    }
    assert!(garbage.closed, "garbage closes the connection");

    // An overlong line closes the connection.
    let mut long = V1Client::connect(port).await;
    long.send_raw(&vec![b'x'; 20 * 1024]).await;
    let start = Instant::now();
    while !long.closed && start.elapsed() < Duration::from_secs(10) {
        long.read(Duration::from_millis(500)).await;
    }
    assert!(long.closed, "an overlong line closes the connection");

    // The server lives and serves a new connection.
    assert!(pool.is_running(), "server alive:\n{}", pool.log_text());
    let mut fresh = V1Client::connect(port).await;
    let answer = fresh.call("mining.subscribe", json!(["after/1"])).await;
    assert!(answer["result"][1].is_string(), "{answer}");
    assert!(!pool.log_text().contains("panicked"), "no panic in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_unauthenticated_connections_time_out_and_limits_hold() {
    let (mut pool, port) = pool_without_node(
        "limits",
        "auth_timeout_secs = 1\nmax_connections_per_ip = 3",
    )
    .await;
    // Silent connection: dropped after the auth timeout.
    let mut silent = V1Client::connect(port).await;
    let start = Instant::now();
    while !silent.closed && start.elapsed() < Duration::from_secs(10) {
        silent.read(Duration::from_millis(500)).await;
    }
    assert!(silent.closed, "unauthenticated connection timed out");

    // Per-IP limit: the fourth connection from 127.0.0.1 is refused.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut client = V1Client::connect(port).await;
        let answer = client.call("mining.subscribe", json!([])).await;
        assert!(answer["error"].is_null());
        held.push(client);
    }
    let mut fourth = V1Client::connect(port).await;
    fourth
        .send_raw(b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n")
        .await;
    let answer = fourth.read(Duration::from_secs(5)).await;
    assert!(
        answer.is_none() && fourth.closed,
        "fourth connection refused: {answer:?}"
    );
    drop(held);
    assert!(pool.is_running());
}

/// `GET /api/bans`.
async fn bans_json(api: u16) -> serde_json::Value {
    reqwest::get(format!("http://127.0.0.1:{api}/api/bans"))
        .await
        .expect("bans")
        .json()
        .await
        .expect("JSON")
}

/// Reads until the pool closes the connection (or `limit` passes); returns the lines read.
async fn until_closed(client: &mut V1Client, limit: Duration) -> usize {
    let start = Instant::now();
    let mut lines = 0;
    while !client.closed && start.elapsed() < limit {
        if client.read(Duration::from_millis(500)).await.is_some() {
            lines += 1;
        }
    }
    lines
}

/// A pipelined flood is cut off at the request budget; a flood and garbage connections
/// (50 + 25 each; three leave room for the scores' decay on a slow machine) ban the address: its next connection is refused, the API and metrics
/// show the ban, and it lifts after `ban_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_and_garbage_ban_the_address_for_a_while() {
    let api = free_port();
    let (mut pool, port) = pool_without_node(
        "bans",
        &format!("\n[bans]\nban_secs = 3\n\n[api]\nlisten = \"127.0.0.1:{api}\"\n"),
    )
    .await;

    // 10,000 subscribes in one write: at most the burst (64) answered, then closed.
    let mut flood = V1Client::connect(port).await;
    let lines: String = (0..10_000)
        .map(|i| format!("{{\"id\":{i},\"method\":\"mining.subscribe\",\"params\":[]}}\n"))
        .collect();
    flood.send_raw(lines.as_bytes()).await;
    let answered = until_closed(&mut flood, Duration::from_secs(10)).await;
    assert!(flood.closed, "the flood is closed");
    assert!(answered <= 64, "{answered} answers to a flood");

    for _ in 0..3 {
        let mut garbage = V1Client::connect(port).await;
        for _ in 0..5 {
            garbage.send_raw(b"garbage, not stratum\n").await;
        }
        until_closed(&mut garbage, Duration::from_secs(10)).await;
        assert!(garbage.closed);
    }

    // Banned: refused without an answer.
    let mut refused = V1Client::connect(port).await;
    refused
        .send_raw(b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n")
        .await;
    assert!(
        refused.read(Duration::from_secs(2)).await.is_none(),
        "{}",
        pool.log_text()
    );
    assert!(refused.closed, "a banned address is refused");

    let bans = bans_json(api).await;
    let entry = bans["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["ip"] == "127.0.0.1"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["banned"], true, "{bans}");
    assert!(entry["banned_until_ms"].as_u64().is_some(), "{bans}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{api}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("quarry_bans_active 1"), "{metrics}");
    assert!(metrics.contains("quarry_bans_total 1"), "{metrics}");
    assert!(
        !metrics.contains("quarry_ban_refusals_total 0"),
        "{metrics}"
    );

    // The ban lifts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut back = V1Client::connect(port).await;
    let answer = back.call("mining.subscribe", json!(["back/1"])).await;
    assert!(answer["result"][1].is_string(), "{answer}");
    assert!(pool.is_running());
}

/// A PROXY v2 header for a TCP over IPv4 connection from `client`.
fn proxy_v2(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    header.extend_from_slice(&client);
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&3333u16.to_be_bytes());
    header
}

/// Behind a trusted load balancer (here 127.0.0.1), the PROXY header's client is the peer:
/// per-IP limits and bans apply to it, v1 and v2 headers both work, and a trusted connection
/// without a header is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_headers_give_limits_and_bans_the_miners_address() {
    let api = free_port();
    let (mut pool, port) = pool_without_node(
        "proxy-protocol",
        &format!(
            "max_connections_per_ip = 2\nproxy_protocol_from = [\"127.0.0.1\"]\n\n[api]\nlisten = \"127.0.0.1:{api}\"\n"
        ),
    )
    .await;
    let subscribe = b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"lb/1\"]}\n";

    // Two miners from 203.0.113.9 (v1 and v2 headers) are served; a third from it is refused
    // by the per-IP limit, while one from 198.51.100.4 is served.
    let mut held = Vec::new();
    for header in [
        b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 3333\r\n".to_vec(),
        proxy_v2([203, 0, 113, 9], 5556),
    ] {
        let mut client = V1Client::connect(port).await;
        client
            .send_raw(&[header, subscribe.to_vec()].concat())
            .await;
        let answer = client.answer(Duration::from_secs(5)).await.expect("answer");
        assert!(answer["result"][1].is_string(), "{answer}");
        held.push(client);
    }
    let mut third = V1Client::connect(port).await;
    third
        .send_raw(&[proxy_v2([203, 0, 113, 9], 5557), subscribe.to_vec()].concat())
        .await;
    assert!(third.read(Duration::from_secs(2)).await.is_none() && third.closed);
    let mut other = V1Client::connect(port).await;
    other
        .send_raw(&[proxy_v2([198, 51, 100, 4], 6000), subscribe.to_vec()].concat())
        .await;
    assert!(other.answer(Duration::from_secs(5)).await.is_some());
    drop(held);

    // Garbage from 192.0.2.50 behind the balancer bans 192.0.2.50, not the balancer (five
    // connections: 125 points, room for decay).
    for _ in 0..5 {
        let mut garbage = V1Client::connect(port).await;
        garbage.send_raw(&proxy_v2([192, 0, 2, 50], 7000)).await;
        for _ in 0..5 {
            garbage.send_raw(b"garbage, not stratum\n").await;
        }
        until_closed(&mut garbage, Duration::from_secs(10)).await;
    }
    let bans = bans_json(api).await;
    let addresses = bans["addresses"].as_array().cloned().unwrap_or_default();
    assert!(
        addresses
            .iter()
            .any(|a| a["ip"] == "192.0.2.50" && a["banned"] == true),
        "{bans}"
    );
    assert!(
        !addresses.iter().any(|a| a["ip"] == "127.0.0.1"),
        "the balancer is never scored: {bans}"
    );
    let mut served = V1Client::connect(port).await;
    served
        .send_raw(&[proxy_v2([198, 51, 100, 4], 6001), subscribe.to_vec()].concat())
        .await;
    assert!(served.answer(Duration::from_secs(5)).await.is_some());

    // From a trusted balancer, no header is no service.
    let mut bare = V1Client::connect(port).await;
    bare.send_raw(subscribe).await;
    assert!(bare.read(Duration::from_secs(3)).await.is_none() && bare.closed);
    assert!(pool.is_running());
    assert!(
        pool.log_text().contains("no valid PROXY header"),
        "{}",
        pool.log_text()
    );
}
