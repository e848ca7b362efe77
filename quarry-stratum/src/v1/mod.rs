//! Stratum V1: JSON-RPC lines over TCP.
//!
//! References: the de-facto protocol as ckpool and cgminer speak it, BIP310 (`mining.configure`,
//! version rolling), BIP320 (the version bits a miner may roll).

pub mod client;
pub mod codec;
pub mod error;
pub mod message;
pub mod notify;
pub mod session;

pub use crate::event::{AcceptedShare, Event, FoundBlock};
pub use client::{Client, ClientConfig, ClientError, ClientEvent, Rejection, Work};
pub use error::{CloseReason, ErrorCode, RequestError};
pub use notify::Notify;
pub use session::{Session, SessionConfig};
