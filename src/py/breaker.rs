//! `BreakerCore`: the circuit breaker's state machine, for the Python `holysheep.CircuitBreaker` to drive.
//! Permits cross the boundary as plain integers (`Permit::to_bits`).

use pyo3::prelude::*;

use crate::core::breaker::{BreakerConfig, CircuitBreaker, FAILURE_THRESHOLD, HALF_OPEN_CALLS, Permit, Transition};
use crate::core::clock::ns_to_secs;

use super::args;

/// The native half of `holysheep.CircuitBreaker`; use that class.
#[pyclass(name = "BreakerCore", module = "holysheep._holysheep", frozen)]
pub struct BreakerCore {
    inner: CircuitBreaker,
}

impl BreakerCore {
    pub(crate) fn core(&self) -> &CircuitBreaker {
        &self.inner
    }
}

fn names(transition: Option<Transition>) -> Option<(&'static str, &'static str)> {
    transition.map(|t| (t.from.name(), t.to.name()))
}

#[pymethods]
impl BreakerCore {
    #[new]
    /// Every setting as the user passed it to `CircuitBreaker`, which holds the defaults.
    #[pyo3(signature = (*, failure_threshold, recovery_timeout, half_open_max_calls, name))]
    fn new(
        failure_threshold: &Bound<'_, PyAny>,
        recovery_timeout: &Bound<'_, PyAny>,
        half_open_max_calls: &Bound<'_, PyAny>,
        name: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let config = BreakerConfig {
            name: args::text("name", name)?,
            failure_threshold: args::count_in("failure_threshold", failure_threshold, FAILURE_THRESHOLD)?,
            recovery_timeout_ns: args::seconds("recovery_timeout", recovery_timeout)?,
            half_open_max_calls: args::count_in("half_open_max_calls", half_open_max_calls, HALF_OPEN_CALLS)?,
        };
        Ok(Self { inner: CircuitBreaker::new(config, Default::default())? })
    }

    /// Admits a call and returns its permit; odd when this call turned the breaker half-open.
    /// Raises `CircuitOpenError` while open.
    fn allow(&self) -> PyResult<u64> {
        Ok(self.inner.allow()?.to_bits())
    }

    /// Records a success; returns `(from, to)` when that changed the state.
    fn success(&self, permit: u64) -> Option<(&'static str, &'static str)> {
        names(self.inner.record_success(Permit::from_bits(permit)))
    }

    /// Records a failure; returns `(from, to)` when that changed the state.
    fn failure(&self, permit: u64) -> Option<(&'static str, &'static str)> {
        names(self.inner.record_failure(Permit::from_bits(permit)))
    }

    /// Gives a permit back without a verdict (a cancelled call, or the caller's own bug).
    fn release(&self, permit: u64) {
        self.inner.release(Permit::from_bits(permit))
    }

    #[getter]
    fn state(&self) -> &'static str {
        self.inner.state().name()
    }
    #[getter]
    fn retry_after(&self) -> Option<f64> {
        self.inner.retry_after_ns().map(ns_to_secs)
    }
    #[getter]
    fn consecutive_failures(&self) -> u64 {
        self.inner.consecutive_failures()
    }
    /// `(successes, failures, rejected, times_opened)` since the breaker was made.
    fn counters(&self) -> (u64, u64, u64, u64) {
        let c = self.inner.counters();
        (c.successes, c.failures, c.rejected, c.times_opened)
    }
    #[getter]
    fn name(&self) -> &str {
        &self.inner.config().name
    }
    #[getter]
    fn failure_threshold(&self) -> u32 {
        self.inner.config().failure_threshold
    }
    #[getter]
    fn recovery_timeout(&self) -> f64 {
        ns_to_secs(self.inner.config().recovery_timeout_ns)
    }
    #[getter]
    fn half_open_max_calls(&self) -> u32 {
        self.inner.config().half_open_max_calls
    }
}
