//! Kaspa mining for Quarry, sans-IO.
//!
//! Kaspa shares nothing with Bitcoin's work beyond the line codec, vardiff and the ledger: its
//! header, its proof of work (kHeavyHash, from rusty-kaspa's `kaspa-pow`) and its stratum dialect
//! (EthereumStratum/1.0.0 as the Kaspa bridges speak it, with the IceRiver and Bitmain variants)
//! live here. Shares go through the one acceptance path in `quarry_stratum::accept`.
//!
//! - [`target`]: stratum difficulty (2^224 / target, real numbers) and 256-bit targets.
//! - [`work`]: a template's job, its kHeavyHash state built once and shared by every miner.
//! - [`dialect`]: the IceRiver, Bitmain and generic variants, from the user agent.
//! - [`session`]: one stratum connection; [`pool`]: what connections share.

pub mod dialect;
#[doc(hidden)]
pub mod fuzzing;
pub mod pool;
pub mod session;
pub mod target;
pub mod work;

/// The ledger's key for Kaspa.
pub const KASPA: &str = "kaspa";

#[cfg(test)]
mod tests;
