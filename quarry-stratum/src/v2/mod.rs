//! Stratum V2: binary frames over Noise NX.
//!
//! References: stratum-mining/sv2-spec, and SRI (stratum-mining/stratum) for what the wire
//! carries in practice. The cryptography is SRI's `noise_sv2`; the codec is ours (plain owned
//! structs, no lifetimes), so SRI's types stay out of the pool core.

pub mod client;
pub mod declaration;
pub mod frame;
pub mod jd_client;
pub mod keys;
pub mod message;
pub mod noise;
pub mod pool_session;
pub mod template_provider;
pub mod wire;

pub use keys::AuthorityKeypair;
pub use message::Message;
pub use pool_session::{PoolSession, Sv2Config};
