//! `RetryCore`: the retry policy's decisions, for the Python `holysheep.RetryPolicy` to drive.

use pyo3::prelude::*;

use crate::core::clock::{ns_to_secs, secs_to_ns};
use crate::core::retry::{Jitter, RetryConfig, RetryDecision, RetryPolicy};

use super::seconds::{field_ns, field_u32};

/// The native half of `holysheep.RetryPolicy`; use that class.
#[pyclass(name = "RetryCore", module = "holysheep._holysheep", frozen)]
pub struct RetryCore {
    inner: RetryPolicy,
}

impl RetryCore {
    pub(crate) fn core(&self) -> &RetryPolicy {
        &self.inner
    }
}

/// `next_delay`'s answer: seconds to wait, or the name of the setting that says to stop.
#[derive(IntoPyObject)]
enum NextDelay {
    Wait(f64),
    GiveUp(&'static str),
}

#[pymethods]
impl RetryCore {
    #[new]
    #[pyo3(signature = (*, max_attempts=5, base_delay=1.0, max_delay=60.0, multiplier=2.0, jitter="full",
                        respect_retry_after=true, max_retry_after=120.0, max_elapsed=None, retry_budget=None))]
    #[allow(clippy::too_many_arguments)] // one per keyword argument of the Python constructor
    fn new(
        max_attempts: i64,
        base_delay: f64,
        max_delay: f64,
        multiplier: f64,
        jitter: &str,
        respect_retry_after: bool,
        max_retry_after: f64,
        max_elapsed: Option<f64>,
        retry_budget: Option<f64>,
    ) -> PyResult<Self> {
        let config = RetryConfig {
            max_attempts: field_u32("max_attempts", max_attempts)?,
            base_delay_ns: field_ns("base_delay", base_delay)?,
            max_delay_ns: field_ns("max_delay", max_delay)?,
            multiplier,
            jitter: Jitter::from_name(jitter)?,
            respect_retry_after,
            max_retry_after_ns: field_ns("max_retry_after", max_retry_after)?,
            max_elapsed_ns: max_elapsed.map(|s| field_ns("max_elapsed", s)).transpose()?,
            retry_budget,
        };
        Ok(Self { inner: RetryPolicy::new(config, Default::default())? })
    }

    /// Marks the start of a call; returns the token to pass to `next_delay`.
    fn begin(&self) -> u64 {
        self.inner.begin()
    }

    /// After `attempts` retryable failures: seconds to wait, or the setting that says to give up.
    #[pyo3(signature = (attempts, started, previous_delay, retry_after=None))]
    fn next_delay(&self, attempts: u32, started: u64, previous_delay: f64, retry_after: Option<f64>) -> NextDelay {
        let previous_ns = secs_to_ns(previous_delay).unwrap_or(0);
        match self.inner.decide_randomly(attempts, started, previous_ns, retry_after.and_then(secs_to_ns)) {
            RetryDecision::Wait(ns) => NextDelay::Wait(ns_to_secs(ns)),
            RetryDecision::GiveUp(why) => NextDelay::GiveUp(why.setting()),
        }
    }

    /// The backoff schedule in seconds (random draws unless the jitter is "none").
    fn delays(&self) -> Vec<f64> {
        self.inner.schedule_randomly().into_iter().map(ns_to_secs).collect()
    }

    #[getter]
    fn max_attempts(&self) -> u32 {
        self.inner.config().max_attempts
    }
    #[getter]
    fn base_delay(&self) -> f64 {
        ns_to_secs(self.inner.config().base_delay_ns)
    }
    #[getter]
    fn max_delay(&self) -> f64 {
        ns_to_secs(self.inner.config().max_delay_ns)
    }
    #[getter]
    fn multiplier(&self) -> f64 {
        self.inner.config().multiplier
    }
    #[getter]
    fn jitter(&self) -> &'static str {
        self.inner.config().jitter.name()
    }
    #[getter]
    fn respect_retry_after(&self) -> bool {
        self.inner.config().respect_retry_after
    }
    #[getter]
    fn max_retry_after(&self) -> f64 {
        ns_to_secs(self.inner.config().max_retry_after_ns)
    }
    #[getter]
    fn max_elapsed(&self) -> Option<f64> {
        self.inner.config().max_elapsed_ns.map(ns_to_secs)
    }
    #[getter]
    fn retry_budget(&self) -> Option<f64> {
        self.inner.config().retry_budget
    }
}
