//! The pure core: every admission, retry and breaker decision, with time from an injectable clock.
//! No pyo3 here: `cargo test` builds and tests it alone.

pub mod clock;
pub mod error;

// resilience: retries, circuit breaking, what a failure means, and what the server's headers ask for
pub mod breaker;
pub mod classify;
pub mod headers;
pub mod retry;

pub use clock::{Clock, ManualClock, MonotonicClock};
pub use error::{Error, Result};

pub use breaker::{BreakerConfig, CircuitBreaker};
pub use retry::{RetryConfig, RetryPolicy};
