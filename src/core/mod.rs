//! The pure core: every admission, retry and breaker decision, with time from an injectable clock.
//! No pyo3 here: `cargo test` builds and tests it alone.

pub mod alerts;
pub mod breaker;
pub mod cell;
pub mod classify;
pub mod clock;
pub mod concurrency;
pub mod config;
pub mod counter;
pub mod decision;
pub mod error;
pub mod feedback;
pub mod gcra;
pub mod headers;
pub mod keyed;
pub mod limit;
pub mod limiter;
pub mod line;
pub mod outcomes;
pub mod quota;
pub mod refusal;
pub mod retry;
pub mod shadow;
pub mod spin;
pub mod stats;
pub mod tiers;
pub mod tokens;
pub mod window;

#[cfg(test)]
mod properties;

pub use breaker::{BreakerConfig, CircuitBreaker};
pub use clock::{Clock, ManualClock, MonotonicClock};
pub use config::LimiterConfig;
pub use decision::Decision;
pub use error::{Error, Result};
pub use keyed::KeyedLimiter;
pub use limit::{Algorithm, Cost, Limit, Unit};
pub use limiter::{Admission, Limiter, Next, Snapshot, Wake};
pub use quota::{Quota, Receipt};
pub use retry::{RetryConfig, RetryPolicy};
pub use tiers::Tier;
