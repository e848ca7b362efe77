//! Quarry's ledger: turning accepted shares into amounts owed.
//!
//! [`schemes`] is pure arithmetic (PPLNS, PPS, PROP, fees and the revenue split), exact to the
//! millisatoshi with no satoshi lost to rounding.
#![warn(missing_docs)]

pub mod schemes;

pub use schemes::{Msat, Sat};
