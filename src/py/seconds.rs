//! Seconds as users write them, to the core's nanoseconds, refusing what cannot be a duration.

use pyo3::PyResult;

use crate::core::Error;
use crate::core::clock::secs_to_ns;

/// `secs` in ns, or a `ConfigError` naming `field` when it is negative, NaN or infinite.
pub fn field_ns(field: &str, secs: f64) -> PyResult<u64> {
    secs_to_ns(secs)
        .ok_or_else(|| Error::config(field, format!("must be a non-negative number of seconds, got {secs}")).into())
}

/// A whole-number setting that must fit a `u32`, or a `ConfigError` naming `field`.
pub fn field_u32(field: &str, value: i64) -> PyResult<u32> {
    u32::try_from(value)
        .map_err(|_| Error::config(field, format!("must be between 0 and {}, got {value}", u32::MAX)).into())
}
