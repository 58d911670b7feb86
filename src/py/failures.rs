//! What a failure means (the core's one table) and how long the server asked us to wait.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::core::classify::{BreakerOutcome, Failure, classify};
use crate::core::clock::ns_to_secs;
use crate::core::headers::server_delay_now;

/// `(retry, breaker_outcome, fallback)` for a failure of `kind` ("status", "timeout", "connection",
/// "caller", "cancelled", "unknown"); a status failure also gives its code, `x-should-retry` and body
/// error code.
#[pyfunction]
#[pyo3(signature = (kind, status=None, should_retry=None, error_code=None))]
pub fn classify_failure(
    kind: &str,
    status: Option<u16>,
    should_retry: Option<&str>,
    error_code: Option<&str>,
) -> PyResult<(bool, &'static str, bool)> {
    let failure = match (kind, status) {
        ("status", Some(code)) => Failure::Status { code, should_retry, error_code },
        ("timeout", _) => Failure::Timeout,
        ("connection", _) => Failure::Connection,
        ("caller", _) => Failure::Caller,
        ("cancelled", _) => Failure::Cancelled,
        ("unknown", _) => Failure::Unknown,
        _ => return Err(PyValueError::new_err(format!("classify_failure: unknown kind {kind:?} (status={status:?})"))),
    };
    let verdict = classify(failure);
    let breaker = match verdict.breaker {
        BreakerOutcome::Failure => "failure",
        BreakerOutcome::Success => "success",
        BreakerOutcome::Neutral => "neutral",
    };
    Ok((verdict.retry, breaker, verdict.fallback))
}

/// Seconds the response headers ask to wait (`retry-after-ms`, `retry-after`, `x-ratelimit-reset-*`),
/// or `None` when they ask nothing readable.
#[pyfunction]
pub fn retry_after(headers: Vec<(String, String)>) -> Option<f64> {
    server_delay_now(headers.iter().map(|(name, value)| (name.as_str(), value.as_str()))).map(ns_to_secs)
}
