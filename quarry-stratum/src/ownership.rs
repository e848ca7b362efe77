//! Proof that a miner owns its payout address: a message signed with the address's key, so
//! that nobody can redirect another miner's payouts (see the pool's payout destinations).
//!
//! Signatures: BIP322 (simple or full; P2WPKH, P2TR, …, through rust-bitcoin's `bip322`) or
//! the legacy `signmessage` form (BIP137: P2PKH, and the segwit header bytes Electrum and
//! hardware wallets use for P2WPKH and P2SH-P2WPKH). Keys are recovered by rust-bitcoin.

use bitcoin::secp256k1::Secp256k1;
use bitcoin::sign_message::{signed_msg_hash, MessageSignature};
use bitcoin::{Address, CompressedPublicKey, ScriptBuf};

/// Longest signature looked at (a BIP322 "full" proof of a large multisig stays far below).
pub const MAX_SIGNATURE_LEN: usize = 4096;

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
    if signature.len() > MAX_SIGNATURE_LEN {
        return Err(format!(
            "signature longer than {MAX_SIGNATURE_LEN} characters"
        ));
    }
    if let Some(legacy) = legacy_signature(signature) {
        return verify_legacy(address, message, legacy);
    }
    let text = address.to_string();
    // bip322's error is large; only its text is kept.
    let verdict = bip322::verify_simple_encoded(&text, message, signature)
        .map_err(|e| e.to_string())
        .or_else(|simple| {
            bip322::verify_full_encoded(&text, message, signature).map_err(|_| simple)
        });
    match verdict {
        // Proven now: a proof only valid at a later time or age proves nothing yet.
        Ok(bip322::Verification::Valid { time, age })
            if time.to_consensus_u32() == 0 && age.to_consensus_u32() == 0 =>
        {
            Ok(())
        }
        Ok(bip322::Verification::Valid { .. }) => Err("a time-locked proof".to_string()),
        // "Inconclusive" (a script the validator cannot interpret) is not a proof.
        Ok(bip322::Verification::Inconclusive) => {
            Err(format!("cannot verify a signature for {address}'s script"))
        }
        Err(simple) => Err(format!(
            "not a valid BIP322 or signmessage signature ({simple})"
        )),
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

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::{Message, SecretKey};
    use bitcoin::Network;
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
