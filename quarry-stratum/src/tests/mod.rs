//! Session tests: scripted miners and pools against the sessions, on a simulated clock. The
//! helpers are the crate's [test kit](crate::testkit).

pub use crate::testkit::*;

use std::sync::Arc;

use quarry_work::{Difficulty, Target};
use serde_json::Value;

use crate::pool::{Pool, SharedPool};
use crate::v1::{CloseReason, Event, Session, SessionConfig};
use quarry_work::template::WorkTemplate;

mod job_declaration;
mod merged;
mod proxy;
mod session;
mod sv2;
mod tp;
