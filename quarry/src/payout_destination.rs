//! Where a miner wants its Bitcoin paid: a BOLT12 offer registered for its address, either by a
//! message signed with the address's key (the API) or by its first `ln=<offer>` authorize
//! password (trusted once: changing it needs a signature).
//!
//! The signed message is one line, so that `bitcoin-cli signmessage` and wallets sign it as is:
//!
//! ```text
//! quarry payout-destination <address> <offer, or "none" to remove it> <unix seconds>
//! ```
//!
//! Signatures: BIP322 (simple or full; P2WPKH, P2TR, …) or the legacy `signmessage` form
//! (BIP137: P2PKH, and the segwit header bytes Electrum and hardware wallets use for P2WPKH and
//! P2SH-P2WPKH). A registration must be newer than the one it replaces, and not older than a
//! day: an old signed message cannot be replayed.

use std::str::FromStr;
use std::sync::Arc;

use bitcoin::secp256k1::Secp256k1;
use bitcoin::sign_message::{signed_msg_hash, MessageSignature};
use bitcoin::{Address, CompressedPublicKey, Network, ScriptBuf};
use quarry_ledger::{PayoutDestination, Store};
use serde_json::json;
use tracing::{info, warn};

use crate::events::EventBus;
use crate::lightning::Lightning;

/// How old a signed registration may be.
const MAX_AGE_SECS: i64 = 86_400;
/// How far in the future (clock skew).
const MAX_SKEW_SECS: i64 = 600;
/// Longest offer accepted (offers with a few blinded paths are well under 1,000 characters).
pub const MAX_OFFER_LEN: usize = 2_000;

/// Why a registration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistrationError {
    /// Malformed input.
    #[error("{0}")]
    Invalid(String),
    /// The signature does not prove the address's key signed the message.
    #[error("bad signature: {0}")]
    Signature(String),
    /// Older than the registration in force, or too old.
    #[error("{0}")]
    Stale(String),
    /// Lightning payouts are off on this pool.
    #[error("Lightning payouts are not enabled on this pool")]
    Disabled,
    /// The ledger failed.
    #[error("ledger: {0}")]
    Store(String),
}

/// The message a registration signs.
pub fn message(address: &str, destination: &str, timestamp: i64) -> String {
    let destination = if destination.is_empty() {
        "none"
    } else {
        destination
    };
    format!("quarry payout-destination {address} {destination} {timestamp}")
}

/// Checks that `signature` (base64) is `address`'s key signing `message`.
///
/// # Errors
/// Why it is not.
pub fn verify(address: &Address, message: &str, signature: &str) -> Result<(), String> {
    let signature = signature.trim();
    if let Some(legacy) = legacy_signature(signature) {
        return verify_legacy(address, message, legacy);
    }
    let text = address.to_string();
    match bip322::verify_simple_encoded(&text, message, signature) {
        Ok(_) => Ok(()),
        Err(simple) => match bip322::verify_full_encoded(&text, message, signature) {
            Ok(_) => Ok(()),
            Err(_) => Err(format!(
                "not a valid BIP322 or signmessage signature ({simple})"
            )),
        },
    }
}

/// A 65-byte recoverable signature with a BIP137 header (27..=42), if `signature` is one.
fn legacy_signature(signature: &str) -> Option<[u8; 65]> {
    use bitcoin::base64::Engine as _;
    let bytes = bitcoin::base64::engine::general_purpose::STANDARD
        .decode(signature)
        .ok()?;
    let bytes: [u8; 65] = bytes.try_into().ok()?;
    (27..=42).contains(&bytes[0]).then_some(bytes)
}

fn verify_legacy(address: &Address, message: &str, mut bytes: [u8; 65]) -> Result<(), String> {
    let header = bytes[0];
    let compressed = header >= 31;
    // rust-bitcoin reads only the P2PKH headers (27..=34): the segwit ones (35..=42) carry the
    // same recovery id and always a compressed key.
    bytes[0] = 27 + ((header - 27) & 3) + if compressed { 4 } else { 0 };
    let signature =
        MessageSignature::from_slice(&bytes).map_err(|e| format!("malformed signature: {e}"))?;
    let key = signature
        .recover_pubkey(&Secp256k1::verification_only(), signed_msg_hash(message))
        .map_err(|e| format!("no key recovers from it: {e}"))?;
    let script = address.script_pubkey();
    let mut matches = script == ScriptBuf::new_p2pkh(&key.pubkey_hash());
    if let Ok(compressed) = CompressedPublicKey::try_from(key) {
        let p2wpkh = ScriptBuf::new_p2wpkh(&compressed.wpubkey_hash());
        matches |= script == p2wpkh || script == ScriptBuf::new_p2sh(&p2wpkh.script_hash());
    }
    match matches {
        true => Ok(()),
        false => Err(format!("signed by another key than {address}'s")),
    }
}

/// A signed registration, as the API takes it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SignedRegistration {
    /// The BOLT12 offer; empty removes the destination.
    pub destination: String,
    /// Unix seconds, as in the signed message.
    pub timestamp: i64,
    /// BIP322 or legacy signature, base64.
    pub signature: String,
}

/// Registers destinations, checking them with the Lightning node.
pub struct Registrar {
    /// The ledger.
    pub store: Store,
    /// The node (offers are decoded and checked for the network by it).
    pub lightning: Option<Arc<Lightning>>,
    /// The pool's network.
    pub network: Network,
    /// `PayoutDestinationSet` events.
    pub events: Arc<EventBus>,
}

impl Registrar {
    fn address(&self, address: &str) -> Result<Address, RegistrationError> {
        Address::from_str(address)
            .map_err(|e| RegistrationError::Invalid(format!("{address}: {e}")))?
            .require_network(self.network)
            .map_err(|_| {
                RegistrationError::Invalid(format!("{address} is not a {} address", self.network))
            })
    }

    async fn check_offer(&self, offer: &str) -> Result<(), RegistrationError> {
        let lightning = self.lightning.as_ref().ok_or(RegistrationError::Disabled)?;
        if offer.len() > MAX_OFFER_LEN {
            return Err(RegistrationError::Invalid(format!(
                "the offer is longer than {MAX_OFFER_LEN} characters"
            )));
        }
        if !offer.to_ascii_lowercase().starts_with("lno1") {
            return Err(RegistrationError::Invalid(
                "not a BOLT12 offer (lno1…)".to_string(),
            ));
        }
        lightning
            .check_offer(offer)
            .await
            .map(|_| ())
            .map_err(|e| RegistrationError::Invalid(format!("{e:#}")))
    }

    /// A registration signed with the address's key.
    ///
    /// # Errors
    /// Bad address, signature, timestamp or offer; nothing is changed then.
    pub async fn register_signed(
        &self,
        address: &str,
        request: &SignedRegistration,
        now_secs: i64,
    ) -> Result<PayoutDestination, RegistrationError> {
        if self.lightning.is_none() {
            return Err(RegistrationError::Disabled);
        }
        let parsed = self.address(address)?;
        let destination = request.destination.trim();
        let signed = message(address, destination, request.timestamp);
        verify(&parsed, &signed, &request.signature).map_err(RegistrationError::Signature)?;
        if request.timestamp > now_secs + MAX_SKEW_SECS
            || request.timestamp < now_secs - MAX_AGE_SECS
        {
            return Err(RegistrationError::Stale(format!(
                "timestamp {} is not within a day of now ({now_secs})",
                request.timestamp
            )));
        }
        let current = self
            .store
            .payout_destination(address)
            .await
            .map_err(store)?;
        if let Some(signed_at) = current.as_ref().and_then(|c| c.signed_at) {
            if request.timestamp <= signed_at {
                return Err(RegistrationError::Stale(format!(
                    "a registration signed at {signed_at} is in force: sign a newer one"
                )));
            }
        }
        let method = match destination.is_empty() {
            true => "none",
            false => {
                self.check_offer(destination).await?;
                "bolt12"
            }
        };
        let registered = PayoutDestination {
            address: address.to_string(),
            method: method.to_string(),
            destination: destination.to_string(),
            source: "signed".to_string(),
            signed_at: Some(request.timestamp),
            updated_ms: now_secs.saturating_mul(1000),
        };
        self.store
            .set_payout_destination(&registered)
            .await
            .map_err(store)?;
        info!(%address, method, "payout destination registered (signed)");
        self.events.publish(
            "PayoutDestinationSet",
            json!({"address": address, "method": method, "source": "signed"}),
        );
        Ok(registered)
    }

    /// An `ln=<offer>` authorize password: taken only when the address has no destination yet.
    ///
    /// # Errors
    /// Bad offer, or the address already has another destination (changing it needs a
    /// signature).
    pub async fn register_from_authorize(
        &self,
        address: &str,
        offer: &str,
        now_ms: i64,
    ) -> Result<bool, RegistrationError> {
        let current = self
            .store
            .payout_destination(address)
            .await
            .map_err(store)?;
        if let Some(current) = current {
            if current.destination == offer {
                return Ok(false);
            }
            return Err(RegistrationError::Stale(
                "this address already has a payout destination: changing it needs a signed request (POST /api/miners/<address>/payout-destination)".into(),
            ));
        }
        self.address(address)?;
        self.check_offer(offer).await?;
        let registered = PayoutDestination {
            address: address.to_string(),
            method: "bolt12".to_string(),
            destination: offer.to_string(),
            source: "authorize".to_string(),
            signed_at: None,
            updated_ms: now_ms,
        };
        self.store
            .set_payout_destination(&registered)
            .await
            .map_err(store)?;
        info!(%address, "payout destination registered (first ln= authorize password)");
        self.events.publish(
            "PayoutDestinationSet",
            json!({"address": address, "method": "bolt12", "source": "authorize"}),
        );
        Ok(true)
    }

    /// [`Registrar::register_from_authorize`] in the background, logging the outcome.
    pub fn on_authorize(self: &Arc<Self>, address: String, offer: String) {
        let registrar = Arc::clone(self);
        tokio::spawn(async move {
            let now_ms = i64::try_from(crate::driver::unix_ms()).unwrap_or(i64::MAX);
            if let Err(e) = registrar
                .register_from_authorize(&address, &offer, now_ms)
                .await
            {
                warn!(%address, error = %e, "ln= password not taken as payout destination");
            }
        });
    }
}

fn store(e: quarry_ledger::StoreError) -> RegistrationError {
    RegistrationError::Store(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::{Message, SecretKey};
    use bitcoin::{PrivateKey, PublicKey};

    fn key(byte: u8) -> (SecretKey, PublicKey) {
        let secp = Secp256k1::new();
        let secret = SecretKey::from_slice(&[byte; 32]).expect("key");
        (secret, PublicKey::new(secret.public_key(&secp)))
    }

    /// A legacy `signmessage` signature with `header_base` (27 P2PKH uncompressed, 31 P2PKH
    /// compressed, 35 P2SH-P2WPKH, 39 P2WPKH).
    fn sign_legacy(secret: &SecretKey, message: &str, header_base: u8) -> String {
        use bitcoin::base64::Engine as _;
        let secp = Secp256k1::new();
        let hash = signed_msg_hash(message);
        let signature =
            secp.sign_ecdsa_recoverable(&Message::from_digest(hash.to_byte_array()), secret);
        let (id, compact) = signature.serialize_compact();
        let mut bytes = vec![header_base + id.to_i32() as u8];
        bytes.extend_from_slice(&compact);
        bitcoin::base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    use bitcoin::hashes::Hash as _;

    #[test]
    fn legacy_signatures_for_p2pkh_p2wpkh_and_p2sh_p2wpkh() {
        let (secret, public) = key(7);
        let compressed = CompressedPublicKey::try_from(public).expect("compressed");
        let p2pkh = Address::p2pkh(public, Network::Regtest);
        let p2wpkh = Address::p2wpkh(&compressed, Network::Regtest);
        let nested = Address::p2shwpkh(&compressed, Network::Regtest);
        let text = message(&p2wpkh.to_string(), "lno1abc", 1_765_000_000);
        for (address, header) in [(&p2pkh, 31), (&p2wpkh, 39), (&p2wpkh, 31), (&nested, 35)] {
            let signature = sign_legacy(&secret, &text, header);
            assert_eq!(
                verify(address, &text, &signature),
                Ok(()),
                "{address} {header}"
            );
            // Another message, another key, another address: refused.
            assert!(verify(address, &format!("{text}0"), &signature).is_err());
            let (other, _) = key(8);
            assert!(verify(address, &text, &sign_legacy(&other, &text, header)).is_err());
        }
        let (_, other_public) = key(9);
        let other = Address::p2pkh(other_public, Network::Regtest);
        assert!(verify(&other, &text, &sign_legacy(&secret, &text, 31)).is_err());
        // Garbage is an error, not a panic.
        for junk in ["", "AAAA", "!!!", &"A".repeat(88)] {
            assert!(verify(&p2wpkh, &text, junk).is_err());
        }
    }

    #[test]
    fn bip322_simple_signatures() {
        let (secret, public) = key(11);
        let compressed = CompressedPublicKey::try_from(public).expect("compressed");
        let address = Address::p2wpkh(&compressed, Network::Regtest);
        let wif = PrivateKey::new(secret, Network::Regtest).to_wif();
        let text = message(&address.to_string(), "", 1_765_000_000);
        assert!(text.ends_with(" none 1765000000"));
        let signature =
            bip322::sign_simple_encoded(&address.to_string(), &text, &[wif], None).expect("sign");
        assert_eq!(verify(&address, &text, &signature), Ok(()));
        assert!(verify(&address, "another message", &signature).is_err());
        let taproot_key = key(12);
        let other = Address::p2wpkh(
            &CompressedPublicKey::try_from(taproot_key.1).expect("compressed"),
            Network::Regtest,
        );
        assert!(verify(&other, &text, &signature).is_err());
    }
}
