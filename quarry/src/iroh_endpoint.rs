//! Stratum V2 over Iroh, a Quarry extension: the pool is dialed by its node id
//! (`iroh://<node id>[@host:port,…]/<authority key>`) instead of a host name, and Iroh finds the
//! way (direct addresses first; its relays and hole punching when `sv2.iroh_relays` is on).
//!
//! Inside, the same as over QUIC (`quic.rs`): ALPN `sv2`, every bidirectional stream one SV2
//! connection with its own Noise handshake and the pinned authority key. Iroh's TLS already
//! authenticates the node id; Noise still authenticates the pool's authority, so a miner pins
//! both.
//!
//! Iroh is 0.91.0: the newest release that resolves in one lockfile with the kaspa 2.1.0 crates
//! (they pin `js-sys =0.3.77`; iroh 0.93 and later need a newer one).

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use iroh::{Endpoint, NodeAddr, NodeId, RelayMode, SecretKey};

use crate::quic::ALPN;

/// Where an `iroh://` URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrohAddress {
    /// The pool's node id (its Iroh public key).
    pub node_id: NodeId,
    /// Addresses to try directly; empty: found through Iroh's discovery and relays.
    pub direct: Vec<SocketAddr>,
}

impl IrohAddress {
    /// Parses `<node id>[@host:port[,host:port…]]` (the part of the URL before the key).
    ///
    /// # Errors
    /// A malformed node id or address.
    pub fn parse(text: &str) -> Result<IrohAddress> {
        let (id, addresses) = match text.split_once('@') {
            Some((id, addresses)) => (id, Some(addresses)),
            None => (text, None),
        };
        let node_id = NodeId::from_str(id).map_err(|e| anyhow!("iroh node id {id:?}: {e}"))?;
        let direct = addresses
            .into_iter()
            .flat_map(|a| a.split(','))
            .map(|a| SocketAddr::from_str(a).map_err(|e| anyhow!("iroh direct address {a:?}: {e}")))
            .collect::<Result<_>>()?;
        Ok(IrohAddress { node_id, direct })
    }
}

/// The pool's node key, created once in `data_dir/iroh-secret.key` and kept (miners dial this
/// node id).
fn node_key(data_dir: &Path) -> Result<SecretKey> {
    let path = data_dir.join("iroh-secret.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes: [u8; 32] = hex::decode(text.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| anyhow!("{} is not a 32-byte hex key", path.display()))?;
            Ok(SecretKey::from_bytes(&bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes: [u8; 32] = bitcoin::secp256k1::rand::random();
            std::fs::create_dir_all(data_dir)?;
            std::fs::write(&path, hex::encode(bytes))
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(SecretKey::from_bytes(&bytes))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The pool's endpoint on `bind` (UDP), its node key from `data_dir`.
///
/// # Errors
/// The key cannot be read or made, or the socket bound.
pub async fn server(data_dir: &Path, bind: SocketAddr, relays: bool) -> Result<Endpoint> {
    let mut builder = Endpoint::builder()
        .secret_key(node_key(data_dir)?)
        .alpns(vec![ALPN.to_vec()])
        .relay_mode(relay_mode(relays));
    builder = match bind {
        SocketAddr::V4(v4) => builder.bind_addr_v4(v4),
        SocketAddr::V6(v6) => builder.bind_addr_v6(v6),
    };
    if relays {
        builder = builder.discovery_n0();
    }
    builder
        .bind()
        .await
        .map_err(|e| anyhow!("binding Iroh on {bind}: {e}"))
}

fn relay_mode(relays: bool) -> RelayMode {
    match relays {
        true => RelayMode::Default,
        false => RelayMode::Disabled,
    }
}

/// Dials `address` and opens one bidirectional stream.
///
/// # Errors
/// The pool cannot be reached, or refuses the stream.
pub async fn connect(
    address: &IrohAddress,
) -> Result<(
    tokio::io::Join<iroh::endpoint::RecvStream, iroh::endpoint::SendStream>,
    Endpoint,
)> {
    // With addresses given, nothing leaves for third parties; without, Iroh's discovery and
    // relays find the node.
    let relays = address.direct.is_empty();
    let mut builder = Endpoint::builder().relay_mode(relay_mode(relays));
    if relays {
        builder = builder.discovery_n0();
    }
    let endpoint = builder
        .bind()
        .await
        .map_err(|e| anyhow!("Iroh client endpoint: {e}"))?;
    let node = NodeAddr::new(address.node_id).with_direct_addresses(address.direct.clone());
    let connection = endpoint
        .connect(node, ALPN)
        .await
        .map_err(|e| anyhow!("Iroh connect to {}: {e}", address.node_id))?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| anyhow!("opening an Iroh stream: {e}"))?;
    if connection.remote_node_id().ok() != Some(address.node_id) {
        bail!("Iroh connected to another node than {}", address.node_id);
    }
    Ok((tokio::io::join(recv, send), endpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_and_without_direct_ones() {
        let id = SecretKey::from_bytes(&[7; 32]).public();
        let bare = IrohAddress::parse(&id.to_string()).expect("bare");
        assert_eq!((bare.node_id, bare.direct.len()), (id, 0));
        let direct =
            IrohAddress::parse(&format!("{id}@127.0.0.1:3336,[::1]:3336")).expect("direct");
        assert_eq!(direct.direct.len(), 2);
        assert!(IrohAddress::parse("not-a-node-id").is_err());
        assert!(IrohAddress::parse(&format!("{id}@nowhere")).is_err());
        let key = quarry_stratum::v2::AuthorityKeypair::generate().public_text();
        let endpoint =
            crate::miner::parse_endpoint(&format!("iroh://{id}@127.0.0.1:1/{key}"), false, None)
                .expect("iroh url");
        assert_eq!(endpoint.iroh.map(|i| i.node_id), Some(id));
        assert!(
            crate::miner::parse_endpoint(&format!("iroh://{id}"), false, None).is_err(),
            "the key is required"
        );
    }
}
