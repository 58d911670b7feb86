//! The pure core: every admission, retry and breaker decision, with time from an injectable clock.
//! No pyo3 here: `cargo test` builds and tests it alone.

pub mod clock;
pub mod error;

pub use clock::{Clock, ManualClock, MonotonicClock};
pub use error::{Error, Result};
