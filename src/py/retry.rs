//! `RetryCore`: the retry policy's decisions, for the Python `holysheep.RetryPolicy` to drive.

use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::iterator::PySendResult;
use pyo3::types::{PyIterator, PyType};

use crate::core::clock::{ns_to_secs, secs_to_ns};
use crate::core::retry::{ATTEMPTS, Jitter, RetryConfig, RetryDecision, RetryPolicy};

use super::args;

static COROUTINE_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

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

    /// Seconds the first attempt of a call begun at `started` has left before it is cut (0.0 once
    /// past); None when neither `attempt_timeout` nor `max_elapsed` is set.
    fn first_attempt_left(&self, started: u64) -> Option<f64> {
        self.inner.first_attempt_left_ns(started).map(ns_to_secs)
    }

    /// Runs an attempt (an awaitable) until it first suspends or ends: `(True, its result, None)` when
    /// it ended, `(False, what it waits on, what to resume)` when it suspended; raises what it raised.
    /// A coroutine is resumed natively through its `am_send` slot, which hands back its result
    /// without the `StopIteration` that `coroutine.send` (or its `__await__` iterator) raises at the
    /// end: that exception costs more than the rest of a call that never waits.
    #[staticmethod]
    fn first_step<'py>(attempt: &Bound<'py, PyAny>) -> PyResult<(bool, Bound<'py, PyAny>, Option<Bound<'py, PyAny>>)> {
        let py = attempt.py();
        let coroutine_type = COROUTINE_TYPE.import(py, "types", "CoroutineType")?;
        let steps = if attempt.get_type().is(coroutine_type) {
            // SAFETY: `PyIterator::send` is `PyIter_Send`, which takes any object whose type has
            // `am_send`, as every coroutine's does; nothing else of `PyIterator` is used.
            unsafe { attempt.clone().cast_into_unchecked::<PyIterator>() }
        } else {
            let Ok(await_) = attempt.getattr(intern!(py, "__await__")) else {
                let kind = attempt.get_type().name()?;
                return Err(PyTypeError::new_err(format!("object {kind} can't be used in 'await' expression")));
            };
            await_.call0()?.cast_into::<PyIterator>()?
        };
        Ok(match steps.send(&py.None().into_bound(py))? {
            PySendResult::Return(result) => (true, result, None),
            PySendResult::Next(waiting_on) => (false, waiting_on, Some(steps.into_any())),
        })
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
