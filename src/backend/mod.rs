//! Where a limiter's decisions are made: `Local`, the core's limiter in this process, or `Redis`, a
//! limit shared by every process that names the same key (one Lua script per decision, on Redis's
//! clock). A backend that cannot enforce something a limit asks for refuses it at construction.
//! [`admission`] is what an admission does afterwards, whichever decided it.

pub mod admission;
pub mod redis;

use std::sync::Arc;

use crate::core::limiter::Admission;
use redis::Grant;
use redis::shared::Shared;

pub use admission::{Adjustment, Admitted};

/// One admission, and the backend that decided it: what settles, releases or gives it back there.
pub enum Decided {
    Local(Admission),
    Redis { shared: Arc<Shared>, grant: Grant },
}
