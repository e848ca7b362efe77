//! Stratum V1 errors and the one place they become wire codes.

use quarry_work::share::ShareReject;

/// Error codes as the Stratum ecosystem uses them (cgminer, ckpool, NiceHash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 20: anything else (bad parameters, unknown method, version or ntime out of range).
    Other,
    /// 21: job not found, or stale.
    JobNotFound,
    /// 22: duplicate share.
    Duplicate,
    /// 23: low difficulty share.
    LowDifficulty,
    /// 24: unauthorized worker.
    Unauthorized,
    /// 25: not subscribed.
    NotSubscribed,
}

impl ErrorCode {
    /// The number on the wire.
    pub fn code(self) -> i64 {
        match self {
            ErrorCode::Other => 20,
            ErrorCode::JobNotFound => 21,
            ErrorCode::Duplicate => 22,
            ErrorCode::LowDifficulty => 23,
            ErrorCode::Unauthorized => 24,
            ErrorCode::NotSubscribed => 25,
        }
    }
}

/// A request that gets an error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The line is not a JSON-RPC request.
    #[error("parse error: {0}")]
    Parse(String),
    /// Unknown method.
    #[error("unknown method '{0}'")]
    UnknownMethod(String),
    /// Parameters of the wrong shape or type.
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// A request that needs `mining.subscribe` first.
    #[error("not subscribed")]
    NotSubscribed,
    /// A request that needs `mining.authorize` first, or an unknown worker.
    #[error("unauthorized worker")]
    Unauthorized,
    /// The username is not a valid payout address for this network.
    #[error("invalid username '{user}': {reason}")]
    BadAddress {
        /// The username sent.
        user: String,
        /// Why the address was refused.
        reason: String,
    },
    /// The password names an aux payout address that cannot be one.
    #[error("invalid password: {0}")]
    BadAuxPayout(String),
    /// The share was valid but the pool could not keep it (database and spool both failing):
    /// it is not acknowledged, and not credited.
    #[error("share not recorded: the pool cannot store shares right now")]
    NotRecorded,
    /// Too many workers authorized on one connection.
    #[error("too many workers on one connection")]
    TooManyWorkers,
    /// The pool has no work yet (no template from the node).
    #[error("no work available yet")]
    NoWork,
    /// Every extranonce1 is in use: the server is full; try another.
    #[error("server full: no extranonce1 left")]
    ServerFull,
    /// A share was rejected.
    #[error("{0}")]
    Share(ShareReject),
}

impl RequestError {
    /// The code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::NotSubscribed => ErrorCode::NotSubscribed,
            RequestError::Unauthorized
            | RequestError::BadAddress { .. }
            | RequestError::BadAuxPayout(_)
            | RequestError::TooManyWorkers => ErrorCode::Unauthorized,
            RequestError::Share(reject) => match reject {
                ShareReject::JobNotFound | ShareReject::Stale => ErrorCode::JobNotFound,
                ShareReject::Duplicate => ErrorCode::Duplicate,
                ShareReject::LowDifficulty => ErrorCode::LowDifficulty,
                _ => ErrorCode::Other,
            },
            _ => ErrorCode::Other,
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// A line over the length cap.
    #[error("line too long")]
    LineTooLong,
    /// Too many consecutive lines that were not valid requests.
    #[error("too many invalid lines")]
    Garbage,
    /// No subscribe and authorize in time.
    #[error("not authorized in time")]
    AuthTimeout,
    /// Nothing received for too long.
    #[error("idle")]
    Idle,
    /// The pool asked the miner to reconnect.
    #[error("sent client.reconnect")]
    Reconnect,
    /// No extranonce1 was left to give this connection.
    #[error("server full: no extranonce1 left")]
    ServerFull,
    /// An accepted share could not be made durable, so it is not acknowledged.
    #[error("share log unavailable: share not recorded")]
    ShareNotRecorded,
    /// More requests than the connection's budget allows.
    #[error("request flood")]
    Flood,
}
