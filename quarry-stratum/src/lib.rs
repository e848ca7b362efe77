//! Stratum sessions for Quarry, sans-IO.
//!
//! A session is fed bytes, templates and the time (`handle_*`) and yields lines to send, events
//! for the pool and its next deadline (`poll_*`). It owns no socket and reads no clock, so the
//! tests in `src/tests` drive it with a scripted miner and a simulated clock, and the fuzz targets
//! drive it with arbitrary bytes.
#![warn(missing_docs)]

pub mod accept;
pub mod ack;
pub mod bans;
pub mod clock;
pub mod connection;
pub mod detect;
pub mod event;
pub mod ownership;
pub mod pool;
pub mod proxy;
pub mod proxy_header;
pub mod rate;
pub mod tip;
pub mod v1;
pub mod v2;
pub mod worker;

#[cfg(any(test, feature = "testkit"))]
pub mod fuzzing;
#[cfg(any(test, feature = "testkit"))]
#[allow(missing_docs)]
pub mod testkit;
#[cfg(test)]
mod tests;

pub use clock::Now;
pub use connection::Connection;
pub use event::{AcceptedShare, Event, FoundAux, FoundBlock};
pub use pool::{Pool, PoolMode, ShareBook, SharedPool};
pub use worker::{AuxPayouts, Worker};
