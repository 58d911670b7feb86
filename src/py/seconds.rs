//! Seconds as users write them, to the core's nanoseconds, refusing what cannot be a duration.

use pyo3::PyResult;

use crate::core::Error;
use crate::core::clock::secs_to_ns;

/// `secs` in ns, or a `ConfigError` naming `field` when it is negative, NaN or infinite.
pub fn field_ns(field: &str, secs: f64) -> PyResult<u64> {
    secs_to_ns(secs)
        .ok_or_else(|| Error::config(field, format!("must be a non-negative number of seconds, got {secs}")).into())
}

