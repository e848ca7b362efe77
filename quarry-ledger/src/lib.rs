//! Quarry's ledger: turning accepted shares into amounts owed.
//!
//! [`schemes`] is pure arithmetic (PPLNS, PPS, PROP, fees and the revenue split), exact to the
//! millisatoshi with no satoshi lost to rounding. [`store`] is the database (SQLite or
//! PostgreSQL) and [`share_log`] the group-commit writer in front of it.
#![warn(missing_docs)]

pub mod accounting;
pub mod amount;
pub mod chain;
pub mod coinbase;
pub mod fuzzing;
pub mod history;
pub mod lightning;
pub mod payouts;
pub mod schemes;
pub mod share_log;
pub mod store;

pub use accounting::{MergeMiningFee, Rewards, Scheme};
pub use amount::{Msat, Sat};
pub use chain::Chain;
pub use history::{HistoryBook, HistoryShare, Retention, Scope};
pub use share_log::{Receipt, RecordError, ShareLog};
pub use store::{
    Backend, Balance, BlockRecord, BlockStatus, Credit, CreditStatus, PayoutDestination,
    PayoutMethod, ShareRecord, Store, StoreError,
};
