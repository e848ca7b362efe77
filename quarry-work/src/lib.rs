//! Mining math for Quarry, with no networking, no clock and no threads.
//!
//! Everything here is deterministic: the caller passes the time (`now_unix`) and all peer data.
//! The path from a node's `getblocktemplate` answer to a block the node accepts is:
//!
//! 1. [`template::WorkTemplate::from_gbt`] checks the template, computes txids, the merkle branch
//!    and the witness commitment (cross-checked against the node's).
//! 2. [`coinbase::CoinbaseParts::from_spec`] lays out the coinbase a [`coinbase::CoinbaseSpec`]
//!    describes (payouts, scriptSig commitments, extra outputs), split around the extranonce.
//! 3. [`job::Job`] joins both; [`share::validate_share`] rebuilds coinbase → merkle root → header
//!    for a miner's submission and returns a [`share::ValidShare`] proof, from which
//!    [`job::Job::block`] assembles the block bytes.
#![warn(missing_docs)]

pub mod auxpow;
pub mod coinbase;
pub mod hash;
pub mod job;
pub mod merged;
pub mod merkle;
pub mod rsk;
pub mod share;
pub mod target;
pub mod template;
pub mod vardiff;

pub use hash::Hash32;
pub use target::{Difficulty, Target};
