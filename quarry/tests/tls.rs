//! Stratum V1 over TLS on Bitcoin Core regtest: `quarry mine` and `quarry loadgen` mine through
//! `stratum+ssl://`, a SIGHUP swaps the certificate for new connections without dropping the
//! ones open, and a bad certificate file on reload keeps the old one.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A self-signed certificate for localhost and 127.0.0.1, written as `<name>.pem` and
/// `<name>.key`.
fn certificate(dir: &Path, name: &str) -> std::path::PathBuf {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    let cert = dir.join(format!("{name}.pem"));
    std::fs::write(&cert, made.cert.pem()).expect("write cert");
    std::fs::write(
        dir.join(format!("{name}.key")),
        made.signing_key.serialize_pem(),
    )
    .expect("write key");
    cert
}

/// Whether a TLS handshake with the pool succeeds when only `trusted` is trusted.
async fn handshake_trusting(port: u16, trusted: &Path) -> bool {
    let mut roots = RootCertStore::empty();
    let cert = CertificateDer::from_pem_file(trusted).expect("PEM");
    roots.add(cert).expect("root");
    let config = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    connector.connect(name, stream).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miners_mine_over_tls_and_a_sighup_swaps_the_certificate() {
    let nodes = Regtest::single();
    let dir = scratch_dir("tls");
    let (port, tls_port) = (free_port(), free_port());
    let first = certificate(&dir, "first");
    let mut config = pool_config(&nodes, &dir, port, "");
    // [stratum] is the last table pool_config writes before [vardiff]: add to it there.
    config = config.replace(
        &format!("listen = \"127.0.0.1:{port}\"\n"),
        &format!(
            "listen = \"127.0.0.1:{port}\"\ntls_listen = \"127.0.0.1:{tls_port}\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n",
            cert = dir.join("live.pem").display(),
            key = dir.join("live.key").display(),
        ),
    );
    std::fs::copy(&first, dir.join("live.pem")).expect("copy");
    std::fs::copy(dir.join("first.key"), dir.join("live.key")).expect("copy");
    let mut pool = start_pool(&dir, &config, port).await;
    let address = nodes.new_address().await;

    // quarry mine over TLS finds blocks.
    let url = format!("stratum+ssl://localhost:{tls_port}");
    let first_ca = first.to_str().expect("utf-8");
    let _miner = Process::spawn(
        &[
            "mine",
            &url,
            "--user",
            &address,
            "--tls-ca",
            first_ca,
            "--threads",
            "1",
        ],
        &dir.join("miner.log"),
    );
    let start = nodes.height().await;
    assert!(
        wait_until(Duration::from_secs(60), || async {
            nodes.height().await >= start + 2
        })
        .await,
        "blocks mined over TLS\n{}",
        pool.log_text()
    );

    // quarry loadgen over TLS: every share answered.
    let report = loadgen_report(
        &[
            "loadgen",
            &url,
            "--tls-ca",
            first_ca,
            "--miners",
            "20",
            "--user",
            &address,
            "--rate",
            "2",
            "--duration",
            "3",
            "--json",
        ],
        &dir.join("loadgen.log"),
        || pool.log_text(),
    );
    assert_eq!(report["connections_established"], 20, "{report}");
    assert_eq!(report["dropped"], 0, "{report}");
    assert!(report["accepted"].as_u64() > Some(0), "{report}");

    // A plain client on the TLS port gets no Stratum answer (at most a TLS alert).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
            .await
            .expect("connect");
        plain
            .write_all(b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), plain.read_to_end(&mut answer)).await;
        assert!(!answer.contains(&b'{'), "{answer:?}");
    }

    // SIGHUP with a new certificate: new connections get it, the open miner keeps mining.
    let second = certificate(&dir, "second");
    std::fs::copy(&second, dir.join("live.pem")).expect("copy");
    std::fs::copy(dir.join("second.key"), dir.join("live.key")).expect("copy");
    let hup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pool.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    hup();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            handshake_trusting(tls_port, &second).await
        })
        .await,
        "the new certificate is served\n{}",
        pool.log_text()
    );
    assert!(
        !handshake_trusting(tls_port, &first).await,
        "the old one is gone"
    );
    let height = nodes.height().await;
    assert!(
        wait_until(Duration::from_secs(60), || async {
            nodes.height().await > height
        })
        .await,
        "the miner connected before the reload mines on"
    );

    // A broken file on reload: logged, and the current certificate stays.
    std::fs::write(dir.join("live.pem"), "not a certificate").expect("write");
    hup();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            pool.log_text().contains("TLS reload failed")
        })
        .await,
        "{}",
        pool.log_text()
    );
    assert!(handshake_trusting(tls_port, &second).await);
    assert!(pool.is_running());
}
