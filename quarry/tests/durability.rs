//! A share the pool acknowledged is never lost, also under `kill -9`.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_shares_survive_kill_9() {
    let nodes = Regtest::single();
    let dir = scratch_dir("kill9");
    let port = free_port();
    let mut pool = start_pool(&dir, &pool_config(&nodes, &dir, port, ""), port).await;
    let address = nodes.var("MINING_ADDRESS").to_string();
    let mut miner = Process::spawn(
        &[
            "mine",
            &format!("stratum+tcp://127.0.0.1:{port}"),
            "--user",
            &format!("{address}.kill9"),
            "--threads",
            "1",
            "--duration",
            "8",
        ],
        &dir.join("mine.log"),
    );
    // Let shares flow, then kill the pool without warning (SIGKILL).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.child.kill().expect("SIGKILL the pool");
    let _ = pool.child.wait();
    assert!(miner.wait(Duration::from_secs(30)), "miner stops by itself");
    let summary = miner.log_text();
    let acknowledged: i64 = summary
        .lines()
        .find_map(|l| l.strip_prefix("accepted="))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("miner summary: {summary}"));
    assert!(acknowledged > 0, "shares were acknowledged before the kill");

    let url = format!("sqlite://{}", dir.join("data/quarry.db").display());
    let store = quarry_ledger::Store::open(&url)
        .await
        .expect("open the killed pool's ledger");
    let stored = store.share_count().await.expect("count");
    assert!(
        stored >= acknowledged,
        "every acknowledged share is stored: {stored} stored, {acknowledged} acknowledged"
    );
}

/// PostgreSQL goes away for 30 s while 200 simulated miners submit: the pool keeps answering
/// (shares go to the spool), and once the database is back every acknowledged share is in it,
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_30_s_under_load_keeps_every_acknowledged_share_once() {
    let nodes = Regtest::single();
    let pg = Postgres::start();
    let dir = scratch_dir("pg-outage");
    let port = free_port();
    let mut config = pool_config(&nodes, &dir, port, "");
    config.push_str(&format!("\n[ledger]\nurl = \"{}\"\n", pg.url));
    let pool = start_pool(&dir, &config, port).await;
    let address = nodes.var("MINING_ADDRESS").to_string();
    let mut loadgen = Process::spawn(
        &[
            "loadgen",
            &format!("127.0.0.1:{port}"),
            "--miners",
            "200",
            "--user",
            &address,
            "--rate",
            "2",
            "--duration",
            "45",
            "--json",
        ],
        &dir.join("loadgen.log"),
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    pg.stop();
    tokio::time::sleep(Duration::from_secs(30)).await;
    pg.restart();
    assert!(
        loadgen.wait(Duration::from_secs(120)),
        "loadgen stops by itself"
    );
    let report = loadgen_json(&loadgen, || pool.log_text());
    let accepted = report["accepted"].as_i64().expect("accepted");
    assert!(accepted > 5_000, "load ran through the outage: {report}");
    assert_eq!(report["dropped"], 0, "no miner dropped: {report}");
    assert_eq!(report["unanswered"], 0, "every share answered: {report}");
    assert!(
        pool.log_text().contains("spool"),
        "the outage went to the spool:\n{}",
        pool.log_text()
    );

    // The spool is replayed once the database is back: all of them, none twice.
    let store = quarry_ledger::Store::open(&pg.url).await.expect("open");
    let mut stored = 0;
    let settled = wait_until(Duration::from_secs(60), || {
        let store = store.clone();
        async move { store.share_count().await.is_ok_and(|n| n >= accepted) }
    })
    .await;
    if let Ok(n) = store.share_count().await {
        stored = n;
    }
    assert!(settled, "{stored} stored, {accepted} acknowledged");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stored = store.share_count().await.expect("count");
    assert_eq!(
        stored, accepted,
        "every acknowledged share stored exactly once"
    );
}

/// The pool's wall clock steps an hour forward, then an hour back (through its injectable
/// clock source; the machine's clock is left alone) while 100 simulated miners submit: nobody
/// is disconnected and no share a miner got right is refused for its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_step_under_load_disconnects_nobody_and_refuses_no_share() {
    let nodes = Regtest::single();
    let dir = scratch_dir("clock-step");
    let port = free_port();
    let clock = dir.join("clock-offset-ms");
    std::fs::write(&clock, "0").expect("write");
    let clock_path = clock.to_str().expect("utf-8").to_string();
    let pool = start_pool_env(
        &dir,
        &pool_config(&nodes, &dir, port, ""),
        port,
        &[("QUARRY_CLOCK_OFFSET_FILE", &clock_path)],
    )
    .await;
    let address = nodes.var("MINING_ADDRESS").to_string();
    let mut loadgen = Process::spawn(
        &[
            "loadgen",
            &format!("127.0.0.1:{port}"),
            "--miners",
            "100",
            "--user",
            &address,
            "--rate",
            "2",
            "--duration",
            "20",
            "--json",
        ],
        &dir.join("loadgen.log"),
    );
    for offset in ["3600000", "-3600000", "0"] {
        tokio::time::sleep(Duration::from_secs(5)).await;
        std::fs::write(&clock, offset).expect("step the clock");
    }
    assert!(
        loadgen.wait(Duration::from_secs(90)),
        "loadgen stops by itself"
    );
    let report = loadgen_json(&loadgen, || pool.log_text());
    let log = pool.log_text();
    assert!(
        log.matches("wall clock stepped").count() >= 3,
        "the pool saw each step:\n{log}"
    );
    assert_eq!(report["connections_established"], 100, "{report}");
    assert_eq!(report["dropped"], 0, "nobody disconnected: {report}");
    assert_eq!(report["rejected"], 0, "no share refused: {report}");
    assert_eq!(report["unanswered"], 0, "{report}");
    assert!(report["accepted"].as_u64() > Some(1_000), "{report}");
}

/// A tmpfs of `kib` KiB mounted at `at`, unmounted on drop. Needs root or password-less sudo
/// (CAP_SYS_ADMIN), as the test command has for apt on the machines it runs on.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path, kib: u64) -> SmallDisk {
        std::fs::create_dir_all(at).expect("mount point");
        // As root directly; otherwise through sudo, as the test command installs packages.
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
        let mut mount = match root {
            true => std::process::Command::new("mount"),
            false => {
                let mut sudo = std::process::Command::new("sudo");
                sudo.args(["-n", "mount"]);
                sudo
            }
        };
        let status = mount
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a {kib} KiB tmpfs at {} failed: this test needs root",
            at.display()
        );
        SmallDisk(at.to_path_buf())
    }

    /// Fills it with one file; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = std::process::Command::new("sudo")
                .args(["-n", "umount", "-l"])
                .arg(&self.0)
                .status();
        }
    }
}

/// PostgreSQL is down and the spool's disk fills up: the pool answers shares with an error
/// instead of acknowledging what it cannot keep, keeps the connection, and acknowledges again
/// once space returns. Every share acknowledged is in the database after the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_disk_gets_errors_not_acknowledgements_and_recovers() {
    let nodes = Regtest::single();
    let pg = Postgres::start();
    let dir = scratch_dir("disk-full");
    let disk = SmallDisk::mount(&dir.join("data").join("spool"), 256);
    let port = free_port();
    let mut config = pool_config(&nodes, &dir, port, "");
    config.push_str(&format!("\n[ledger]\nurl = \"{}\"\n", pg.url));
    let _pool = start_pool(&dir, &config, port).await;
    let user = format!("{}.disk", nodes.var("MINING_ADDRESS"));
    let mut client = V1Client::connect(port).await;
    client.handshake(&user).await;
    let mut acknowledged = 0i64;
    let mut en2_counter = 0u64;
    // One share on the newest job (on regtest every share is also a block: the node's own
    // disk is not the one filled).
    let mut submit = |client: &mut V1Client| {
        en2_counter += 1;
        let job = client.jobs.last().expect("job").clone();
        let mut en2 = en2_counter.to_be_bytes().to_vec();
        en2.resize(client.extranonce2_len, 0);
        let share = client.share_target();
        let nonce = client.find(&job, &en2, job.version, job.ntime, &share, true);
        (job, en2, nonce)
    };
    for _ in 0..5 {
        let (job, en2, nonce) = submit(&mut client);
        let answer = client
            .submit(&user, &job, &en2, job.ntime, nonce, None)
            .await;
        assert_eq!(answer["result"], true, "{answer}");
        acknowledged += 1;
    }

    // The database goes away and the spool's disk is full: errors, never true, on the same
    // connection.
    pg.stop();
    let filler = disk.fill();
    let mut refused = 0;
    for _ in 0..5 {
        let (job, en2, nonce) = submit(&mut client);
        let answer = client
            .submit(&user, &job, &en2, job.ntime, nonce, None)
            .await;
        if answer["result"] == true {
            // A batch the database took before its connection noticed it was gone.
            acknowledged += 1;
        } else {
            assert_eq!(code(&answer), Some(20), "{answer}");
            refused += 1;
        }
    }
    assert!(refused >= 3, "a full disk refuses acknowledgements");
    assert!(!client.closed, "the connection stays");

    // Space returns: acknowledged again.
    std::fs::remove_file(filler).expect("free the disk");
    let mut back = 0;
    for _ in 0..5 {
        let (job, en2, nonce) = submit(&mut client);
        let answer = client
            .submit(&user, &job, &en2, job.ntime, nonce, None)
            .await;
        if answer["result"] == true {
            back += 1;
            acknowledged += 1;
        }
    }
    assert!(back >= 4, "acknowledgements resume once there is space");

    pg.restart();
    let store = quarry_ledger::Store::open(&pg.url).await.expect("open");
    assert!(
        wait_until(Duration::from_secs(30), || {
            let store = store.clone();
            async move { store.share_count().await.is_ok_and(|n| n >= acknowledged) }
        })
        .await,
        "every acknowledged share is stored: {} of {acknowledged}",
        store.share_count().await.unwrap_or(-1)
    );
}
