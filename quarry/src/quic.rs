//! Stratum V2 over QUIC (quinn), a Quarry extension: the SV2 specification defines TCP.
//!
//! Wire layout: QUIC v1 (RFC 9000) with TLS 1.3, ALPN `sv2`. Every client-initiated
//! bidirectional stream carries exactly the bytes one TCP connection would: the Noise NX
//! handshake, then SV2 frames. Streams are independent sessions, so a miner (or a proxy) can run
//! each channel on its own stream and one slow channel never blocks another; QUIC itself
//! multiplexes them over one UDP flow with one congestion controller.
//!
//! Identity: the pool's TLS certificate is self-signed and created at each start; the miner does
//! not check it. The pool is authenticated exactly as over TCP, by the Noise handshake's
//! certificate signed with the authority key the miner pins (`stratum2+quic://host:port/<key>`).
//! TLS still encrypts the QUIC packets and its handshake signatures are verified; only the
//! certificate's name and issuer are not.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::DigitallySignedStruct;

/// The ALPN protocol id both sides require.
pub const ALPN: &[u8] = b"sv2";

/// A QUIC bidirectional stream as one byte stream (read half, write half).
pub type Stream = tokio::io::Join<quinn::RecvStream, quinn::SendStream>;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    // Miners are long-lived and mostly quiet between jobs: keep NAT bindings open, and notice
    // a vanished peer within a minute.
    transport.keep_alive_interval(Some(Duration::from_secs(15)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(60)) {
        transport.max_idle_timeout(Some(idle));
    }
    transport.max_concurrent_bidi_streams(1024u32.into());
    Arc::new(transport)
}

/// A server endpoint on `listen`, with a fresh self-signed certificate.
///
/// # Errors
/// The certificate cannot be made or the socket bound.
pub fn server(listen: SocketAddr) -> Result<quinn::Endpoint> {
    let certified = rcgen::generate_simple_self_signed(vec!["quarry".to_string()])
        .context("making the QUIC certificate")?;
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| anyhow!("QUIC TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| anyhow!("QUIC TLS: {e}"))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| anyhow!("QUIC TLS: {e}"))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport());
    quinn::Endpoint::server(config, listen).with_context(|| format!("binding QUIC on {listen}"))
}

/// Connects to `address` (`host:port`) and opens one bidirectional stream.
///
/// # Errors
/// Resolution, the QUIC handshake or the stream failed.
pub async fn connect(address: &str) -> Result<(Stream, SocketAddr, quinn::Endpoint)> {
    let peer = tokio::net::lookup_host(address)
        .await
        .with_context(|| format!("resolving {address}"))?
        .next()
        .ok_or_else(|| anyhow!("{address} resolves to nothing"))?;
    let bind: SocketAddr = match peer {
        SocketAddr::V4(_) => "0.0.0.0:0",
        SocketAddr::V6(_) => "[::]:0",
    }
    .parse()
    .context("bind address")?;
    let endpoint = client_endpoint_on(bind)?;
    let connection = endpoint
        .connect(peer, "quarry")
        .map_err(|e| anyhow!("QUIC connect to {address}: {e}"))?
        .await
        .with_context(|| format!("QUIC handshake with {address}"))?;
    let (send, recv) = connection
        .open_bi()
        .await
        .context("opening a QUIC stream")?;
    Ok((tokio::io::join(recv, send), peer, endpoint))
}

/// A client endpoint on an ephemeral IPv4 port, ready to connect to pools.
///
/// # Errors
/// The socket cannot be bound.
pub fn client_endpoint() -> Result<quinn::Endpoint> {
    client_endpoint_on(SocketAddr::from(([0, 0, 0, 0], 0)))
}

fn client_endpoint_on(bind: SocketAddr) -> Result<quinn::Endpoint> {
    let mut endpoint = quinn::Endpoint::client(bind).context("QUIC client socket")?;
    endpoint.set_default_client_config(client_config()?);
    Ok(endpoint)
}

fn client_config() -> Result<quinn::ClientConfig> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| anyhow!("QUIC TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoisePinned(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| anyhow!("QUIC TLS: {e}"))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport());
    Ok(config)
}

/// Takes any certificate (the pool's identity is proven inside, by Noise and the pinned
/// authority key) but still verifies the TLS handshake's signatures with the certificate's key.
#[derive(Debug)]
struct NoisePinned(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoisePinned {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
