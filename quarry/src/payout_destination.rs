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
//! Signatures are checked by `quarry_stratum::ownership` (BIP322, or legacy `signmessage`). A
//! registration must be newer than the one it replaces, and not older than a day: an old
//! signed message cannot be replayed.

use std::str::FromStr;
use std::sync::Arc;

use bitcoin::{Address, Network};
use quarry_ledger::{PayoutDestination, Store};
use quarry_stratum::ownership::{message, verify};
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
