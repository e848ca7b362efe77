//! Stratum V1 over TLS (`stratum+ssl://`): the server's certificate and key from PEM files,
//! reloaded on SIGHUP without dropping a connection, and the client side for `quarry mine` and
//! `quarry loadgen`. rustls with the ring provider.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context, Result};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{info, warn};

/// The server side: the current certificate, swapped on reload.
pub struct Acceptor {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<TlsAcceptor>,
}

impl Acceptor {
    /// Loads `cert` (a PEM chain, leaf first) and `key` (PEM, PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    /// Unreadable files, or a certificate and key rustls refuses.
    pub fn load(cert: &Path, key: &Path) -> Result<Acceptor> {
        let acceptor = build(cert, key)?;
        Ok(Acceptor {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(acceptor),
        })
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reads the files again; on an error the old certificate stays in use.
    pub fn reload(&self) {
        match build(&self.cert, &self.key) {
            Ok(acceptor) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = acceptor;
                info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "TLS reload failed: keeping the current certificate")
            }
        }
    }

    /// Reloads on every SIGHUP, for as long as the process runs.
    pub fn reload_on_sighup(self: &Arc<Self>) -> Result<()> {
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("listening for SIGHUP")?;
        let this = Arc::clone(self);
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                this.reload();
            }
        });
        Ok(())
    }
}

fn build(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading stratum.tls_cert {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing stratum.tls_cert {}", cert.display()))?;
    if chain.is_empty() {
        bail!("stratum.tls_cert {} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading stratum.tls_key {}", key.display()))?;
    let config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("the TLS certificate and key do not match, or are unsupported")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The client side: the web's roots (webpki-roots), or only the certificates in `ca` (PEM)
/// for a pool with its own CA or a self-signed certificate.
///
/// # Errors
/// An unreadable or empty `ca` file.
pub fn connector(ca: Option<&Path>) -> Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading {}", path.display()))?
            {
                roots
                    .add(cert.with_context(|| format!("parsing {}", path.display()))?)
                    .with_context(|| format!("{}: not a usable CA certificate", path.display()))?;
            }
            if roots.is_empty() {
                bail!("{} holds no certificate", path.display());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name to check the pool's certificate against.
///
/// # Errors
/// A host that is neither a DNS name nor an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_string()).with_context(|| format!("{host}: not a TLS server name"))
}

/// A miner's connection to the pool: plain TCP or TLS over it.
pub enum ClientStream {
    /// `stratum+tcp://`.
    Plain(tokio::net::TcpStream),
    /// `stratum+ssl://`.
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

/// How a miner reaches the pool over TLS: the connector and the name to verify.
#[derive(Clone)]
pub struct ClientTls {
    /// The client configuration (roots).
    pub connector: TlsConnector,
    /// The pool's name, as its certificate must show it.
    pub name: ServerName<'static>,
}

impl ClientTls {
    /// For `host` (the endpoint's host part), trusting `ca` or the web's roots.
    ///
    /// # Errors
    /// A bad `ca` file or host name.
    pub fn new(address: &str, ca: Option<&Path>) -> Result<ClientTls> {
        let host = match address.rsplit_once(':') {
            Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => address,
        };
        Ok(ClientTls {
            connector: connector(ca)?,
            name: server_name(host)?,
        })
    }
}

impl ClientStream {
    /// Wraps `stream`, doing the TLS handshake when `tls` is set.
    ///
    /// # Errors
    /// A failed handshake (an untrusted certificate included).
    pub async fn connect(
        stream: tokio::net::TcpStream,
        tls: Option<&ClientTls>,
    ) -> std::io::Result<ClientStream> {
        match tls {
            None => Ok(ClientStream::Plain(stream)),
            Some(tls) => Ok(ClientStream::Tls(Box::new(
                tls.connector.connect(tls.name.clone(), stream).await?,
            ))),
        }
    }
}

impl tokio::io::AsyncRead for ClientStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for ClientStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
