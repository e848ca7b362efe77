//! SRI's binaries as test peers (`translator_sv2`, and `pool_sv2` fed by `quarry tp`), and the
//! small helpers the SV2 tests share.

use std::time::Duration;

use quarry_stratum::v2::AuthorityKeypair;

use super::*;

pub fn sv2_section(authority: &AuthorityKeypair) -> String {
    format!(
        "\n[sv2]\nauthority_secret_key = \"{}\"\nauthority_public_key = \"{}\"\n",
        authority.secret_text(),
        authority.public_text()
    )
}

/// A log without its ANSI colours.
pub fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `accepted=.. rejected=.. blocks=..` line `quarry mine` prints last.
pub fn tally(log: &str, key: &str) -> u64 {
    log.lines()
        .rev()
        .find(|l| l.starts_with("accepted="))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Whether something accepts connections on `port` within `limit`.
pub async fn listens(port: u16, limit: Duration) -> bool {
    wait_until(limit, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await
}

/// Starts one of SRI's binaries on `config`, logging to `log`.
pub fn spawn_sri(
    binary: &str,
    config: &std::path::Path,
    log: &std::path::Path,
) -> std::process::Child {
    let log_file = std::fs::File::create(log).expect("log");
    std::process::Command::new(binary)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(log_file.try_clone().expect("clone"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("start {binary}: {e}"))
}

pub fn translator_binary() -> String {
    std::env::var("QUARRY_TRANSLATOR_SV2").unwrap_or_else(|_| {
        let home = std::env::var("HOME").expect("HOME");
        format!("{home}/.cache/quarry/sri/bin/translator_sv2")
    })
}

/// SRI's `translator_sv2`: SV1 miners on `port`, one aggregated channel to an SV2 upstream.
pub struct Translator {
    pub child: std::process::Child,
    pub port: u16,
    pub log_path: std::path::PathBuf,
}

impl Translator {
    /// Starts it in `dir` against the SV2 pool on `upstream_port` (pinned to `key`), as
    /// `identity`, with a downstream difficulty set by `miner_hashrate`, and waits until it
    /// listens.
    pub async fn start(
        dir: &std::path::Path,
        upstream_port: u16,
        key: &str,
        identity: &str,
        miner_hashrate: f64,
    ) -> Translator {
        let binary = translator_binary();
        assert!(
            std::path::Path::new(&binary).exists(),
            "{binary} missing: scripts/test.sh installs SRI's translator_sv2 0.6.0 with cargo install"
        );
        let port = free_port();
        let config = format!(
            r#"
downstream_address = "127.0.0.1"
downstream_port = {port}
max_supported_version = 2
min_supported_version = 2
downstream_extranonce2_size = 4
aggregate_channels = true
supported_extensions = []
required_extensions = []

[downstream_difficulty_config]
min_individual_miner_hashrate = {miner_hashrate:?}
shares_per_minute = 60.0
enable_vardiff = false
job_keepalive_interval_secs = 60

[[upstreams]]
address = "127.0.0.1"
port = {upstream_port}
authority_pubkey = "{key}"
user_identity = "{identity}"
"#
        );
        let config_path = dir.join("translator.toml");
        std::fs::write(&config_path, config).expect("write translator config");
        let log_path = dir.join("translator.log");
        let child = spawn_sri(&binary, &config_path, &log_path);
        let translator = Translator {
            child,
            port,
            log_path,
        };
        let listening = listens(port, Duration::from_secs(30)).await;
        assert!(listening, "translator listens:\n{}", translator.log());
        translator
    }

    pub fn log(&self) -> String {
        plain(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Translator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `quarry tp` on node A, in `dir`: the process, its port and its authority key.
pub async fn start_tp(
    nodes: &Regtest,
    dir: &std::path::Path,
    extra_mining: &str,
) -> (Process, u16, AuthorityKeypair) {
    let tp_port = free_port();
    let tp_authority = AuthorityKeypair::generate();
    let mut config = pool_config(nodes, dir, free_port(), extra_mining);
    config.push_str(&sv2_section(&tp_authority));
    config.push_str(&format!("\n[tp]\nlisten = \"127.0.0.1:{tp_port}\"\n"));
    let config_path = dir.join("quarry-tp.toml");
    std::fs::write(&config_path, config).expect("write config");
    let mut tp = Process::spawn(
        &["tp", "--config", config_path.to_str().expect("utf-8")],
        &dir.join("tp.log"),
    );
    let listening = listens(tp_port, Duration::from_secs(20)).await;
    assert!(
        listening && tp.is_running(),
        "quarry tp listens:\n{}",
        tp.log_text()
    );
    (tp, tp_port, tp_authority)
}

pub fn jd_client_binary() -> String {
    std::env::var("QUARRY_JD_CLIENT_SV2").unwrap_or_else(|_| {
        let home = std::env::var("HOME").expect("HOME");
        format!("{home}/.cache/quarry/sri/bin/jd_client_sv2")
    })
}

/// SRI's `jd_client_sv2`: templates from `quarry tp`, jobs declared to a JDS, mined on the
/// pool's extended channel, SV2 miners on `port` (pinned to `authority`).
pub struct JdClient {
    pub child: std::process::Child,
    pub port: u16,
    pub authority: AuthorityKeypair,
    pub log_path: std::path::PathBuf,
}

impl JdClient {
    /// Starts it in `dir` against the pool (and its JDS) on `pool_port`, pinned to
    /// `pool_key`, as `identity`, in `mode` (FULLTEMPLATE or COINBASEONLY), with templates
    /// from the Template Provider on `tp_port`.
    pub async fn start(
        dir: &std::path::Path,
        pool_port: u16,
        pool_key: &str,
        identity: &str,
        tp_port: u16,
        tp_key: &str,
        mode: &str,
    ) -> JdClient {
        let binary = jd_client_binary();
        assert!(
            std::path::Path::new(&binary).exists(),
            "{binary} missing: scripts/test.sh installs SRI's jd_client_sv2 0.6.0 with cargo install"
        );
        let port = free_port();
        let authority = AuthorityKeypair::generate();
        let config = format!(
            r#"
listening_address = "127.0.0.1:{port}"
max_supported_version = 2
min_supported_version = 2
authority_public_key = "{public}"
authority_secret_key = "{secret}"
cert_validity_sec = 3600
shares_per_minute = 60.0
share_batch_size = 1
mode = "{mode}"
jdc_signature = "quarry-jd-test"
coinbase_reward_script = "raw(0014{zeros})"

[[upstreams]]
authority_pubkey = "{pool_key}"
pool_address = "127.0.0.1"
pool_port = {pool_port}
jds_address = "127.0.0.1"
jds_port = {pool_port}
user_identity = "{identity}"

[template_provider_type.Sv2Tp]
address = "127.0.0.1:{tp_port}"
public_key = "{tp_key}"
"#,
            public = authority.public_text(),
            secret = authority.secret_text(),
            zeros = "00".repeat(20),
        );
        let config_path = dir.join("jdc.toml");
        std::fs::write(&config_path, config).expect("write jdc config");
        let log_path = dir.join("jdc.log");
        let child = spawn_sri(&binary, &config_path, &log_path);
        let jdc = JdClient {
            child,
            port,
            authority,
            log_path,
        };
        let listening = listens(port, Duration::from_secs(60)).await;
        assert!(listening, "jd_client_sv2 listens:\n{}", jdc.log());
        jdc
    }

    pub fn log(&self) -> String {
        plain(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for JdClient {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn pool_sv2_binary() -> String {
    std::env::var("QUARRY_POOL_SV2").unwrap_or_else(|_| {
        let home = std::env::var("HOME").expect("HOME");
        format!("{home}/.cache/quarry/sri/bin/pool_sv2")
    })
}

/// SRI's `pool_sv2`, fed templates by `quarry tp` on the regtest node pair, paying `address`.
pub struct SriPool {
    pub tp: Process,
    pub pool: std::process::Child,
    pub port: u16,
    pub authority: AuthorityKeypair,
    pub log_path: std::path::PathBuf,
}

impl SriPool {
    pub async fn start(nodes: &Regtest, dir: &std::path::Path, address: &str) -> SriPool {
        SriPool::start_with(nodes, dir, address, "").await
    }

    /// As `start`, with `extra_mining` in `quarry tp`'s `[mining]` section.
    pub async fn start_with(
        nodes: &Regtest,
        dir: &std::path::Path,
        address: &str,
        extra_mining: &str,
    ) -> SriPool {
        let binary = pool_sv2_binary();
        assert!(
            std::path::Path::new(&binary).exists(),
            "{binary} missing: scripts/test.sh installs SRI's pool_sv2 0.7.0 with cargo install"
        );
        let (tp, tp_port, tp_authority) = start_tp(nodes, dir, extra_mining).await;

        let port = free_port();
        let authority = AuthorityKeypair::generate();
        let pool_config = format!(
            r#"
authority_public_key = "{pool_public}"
authority_secret_key = "{pool_secret}"
cert_validity_sec = 3600
listen_address = "127.0.0.1:{port}"
coinbase_reward_script = "addr({address})"
server_id = 1
pool_signature = "quarry-interop"
shares_per_minute = 60.0
share_batch_size = 1

[template_provider_type.Sv2Tp]
address = "127.0.0.1:{tp_port}"
public_key = "{tp_public}"
"#,
            pool_public = authority.public_text(),
            pool_secret = authority.secret_text(),
            tp_public = tp_authority.public_text(),
        );
        let pool_config_path = dir.join("pool_sv2.toml");
        std::fs::write(&pool_config_path, pool_config).expect("write pool config");
        let log_path = dir.join("pool_sv2.log");
        let pool = spawn_sri(&binary, &pool_config_path, &log_path);
        let sri = SriPool {
            tp,
            pool,
            port,
            authority,
            log_path,
        };
        let listening = listens(port, Duration::from_secs(30)).await;
        assert!(
            listening,
            "pool_sv2 listens:\n{}\ntp:\n{}",
            sri.log(),
            sri.tp.log_text()
        );
        sri
    }

    pub fn log(&self) -> String {
        plain(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    pub fn stop(&mut self) {
        let _ = self.pool.kill();
        let _ = self.pool.wait();
    }
}

impl Drop for SriPool {
    fn drop(&mut self) {
        self.stop();
    }
}
