//! `RetryCore`: the retry policy's decisions, for the Python `holysheep.RetryPolicy` to drive.

use pyo3::prelude::*;

use crate::core::clock::{ns_to_secs, secs_to_ns};
use crate::core::retry::{ATTEMPTS, Jitter, RetryConfig, RetryDecision, RetryPolicy};

use super::args;

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
    /// Every setting as the user passed it to `RetryPolicy`, which holds the defaults.
    #[pyo3(signature = (*, max_attempts, base_delay, max_delay, multiplier, jitter, respect_retry_after,
                        max_retry_after, max_elapsed, retry_budget, attempt_timeout=None))]
    #[allow(clippy::too_many_arguments)] // one per keyword argument of the Python constructor
    fn new(
        max_attempts: &Bound<'_, PyAny>,
        base_delay: &Bound<'_, PyAny>,
        max_delay: &Bound<'_, PyAny>,
        multiplier: &Bound<'_, PyAny>,
        jitter: &Bound<'_, PyAny>,
        respect_retry_after: &Bound<'_, PyAny>,
        max_retry_after: &Bound<'_, PyAny>,
        max_elapsed: Option<&Bound<'_, PyAny>>,
        retry_budget: Option<&Bound<'_, PyAny>>,
        attempt_timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let config = RetryConfig {
            max_attempts: args::count_in("max_attempts", max_attempts, ATTEMPTS)?,
            base_delay_ns: args::seconds("base_delay", base_delay)?,
            max_delay_ns: args::seconds("max_delay", max_delay)?,
            multiplier: args::positive("multiplier", multiplier)?,
            jitter: args::choice("jitter", jitter, Jitter::from_name)?,
            respect_retry_after: args::flag("respect_retry_after", respect_retry_after)?,
            max_retry_after_ns: args::seconds("max_retry_after", max_retry_after)?,
            max_elapsed_ns: args::optional(max_elapsed, |s| args::seconds("max_elapsed", s))?,
            attempt_timeout_ns: args::optional(attempt_timeout, |s| args::seconds("attempt_timeout", s))?,
            retry_budget: args::optional(retry_budget, |r| args::positive("retry_budget", r))?,
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

    /// Seconds the attempt starting now may run (the attempt timeout, cut to what `max_elapsed` leaves
    /// of the call begun at `started`); None when neither is set.
    fn attempt_budget(&self, started: u64) -> Option<f64> {
        self.inner.attempt_budget_ns(started).map(ns_to_secs)
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
    fn attempt_timeout(&self) -> Option<f64> {
        self.inner.config().attempt_timeout_ns.map(ns_to_secs)
    }
    #[getter]
    fn retry_budget(&self) -> Option<f64> {
        self.inner.config().retry_budget
    }
}
