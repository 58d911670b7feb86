//! `BreakerCore`: the circuit breaker's state machine, for the Python `holysheep.CircuitBreaker` to drive:
//! the core's in this process, or one shared by a fleet through Redis. Permits cross the boundary as
//! plain integers (`Permit::to_bits`).

use pyo3::prelude::*;

use crate::backend::redis::breaker::{FleetBreaker, Refusal};
use crate::core::breaker::{
    BreakerConfig, CircuitBreaker, Counters, FAILURE_THRESHOLD, HALF_OPEN_CALLS, MINIMUM_CALLS, Permit, RateRule,
    Transition, WINDOW_CALLS,
};
use crate::core::clock::{ns_to_secs, secs_to_ns};
use crate::core::error::Error;
use crate::core::outcomes::Span;

use super::args;
use super::redis::PyRedisBackend;

/// A breaker in this process, or the fleet's. The local one stays inline: its success path is the hot
/// one, and there is one of these per Python breaker.
#[allow(clippy::large_enum_variant)]
pub enum Breaker {
    Local(CircuitBreaker),
    Fleet(Fleet),
}

/// A fleet's breaker, with what announces the changes its reports to Redis made (`CircuitBreaker`'s
/// announcer: it logs them and calls `on_state_change`), on the caller's thread at this process's next
/// call of the breaker.
pub struct Fleet {
    breaker: FleetBreaker,
    announce: Option<Py<PyAny>>,
}

impl std::ops::Deref for Fleet {
    type Target = FleetBreaker;

    fn deref(&self) -> &FleetBreaker {
        &self.breaker
    }
}

impl Fleet {
    /// Announces what this process's reports changed since last asked. An error the announcer raises is
    /// reported as unraisable, never raised into the call.
    #[inline]
    fn announce_changes(&self) {
        let changes = self.breaker.take_changes();
        let Some(announce) = self.announce.as_ref().filter(|_| !changes.is_empty()) else { return };
        Python::attach(|py| {
            for change in changes {
                if let Err(err) = announce.call1(py, (change.from.name(), change.to.name())) {
                    err.write_unraisable(py, Some(announce.bind(py)));
                }
            }
        });
    }

    /// Waits for this process's reports in flight with the GIL released.
    fn await_reports(&self) {
        if self.breaker.reports_in_flight() {
            Python::attach(|py| py.detach(|| self.breaker.await_reports()));
        }
    }
}

impl Breaker {
    /// Admits a call, or raises `CircuitOpenError` (or the backend's error). A closed local breaker
    /// answers inline; everything else is behind a call (see `CircuitBreaker::allow_closed`).
    #[inline]
    pub fn allow(&self) -> PyResult<Permit> {
        if let Breaker::Local(breaker) = self
            && let Some(permit) = breaker.allow_closed()
        {
            return Ok(permit);
        }
        self.allow_slow()
    }

    #[inline(never)]
    fn allow_slow(&self) -> PyResult<Permit> {
        match self {
            Breaker::Local(breaker) => Ok(breaker.allow()?),
            Breaker::Fleet(fleet) => {
                // Waiting on Redis (reports in flight, a re-read, a trial) with the GIL released.
                let allowed = if fleet.may_wait() { Python::attach(|py| py.detach(|| fleet.allow())) } else { fleet.allow() };
                fleet.announce_changes();
                allowed.map_err(|refusal| match refusal {
                    Refusal::Open(err) => err.into(),
                    Refusal::Backend(err) => err.into(),
                })
            }
        }
    }

    #[inline]
    pub fn record_success(&self, permit: Permit) -> Option<Transition> {
        match self {
            Breaker::Local(breaker) => breaker.record_success(permit),
            Breaker::Fleet(fleet) => {
                let change = fleet.record_success(permit);
                fleet.announce_changes();
                change
            }
        }
    }

    fn record_failure(&self, permit: Permit, open_for_ns: Option<u64>) -> Option<Transition> {
        match self {
            Breaker::Local(breaker) => breaker.record_failure(permit, open_for_ns),
            Breaker::Fleet(fleet) => {
                let change = fleet.record_failure(permit, open_for_ns);
                fleet.announce_changes();
                change
            }
        }
    }

    fn config(&self) -> &BreakerConfig {
        match self {
            Breaker::Local(breaker) => breaker.config(),
            Breaker::Fleet(breaker) => breaker.config(),
        }
    }

    /// This process's breaker: the one deciding, or (fleet) the one counting here and standing in.
    fn local(&self) -> &CircuitBreaker {
        match self {
            Breaker::Local(breaker) => breaker,
            Breaker::Fleet(breaker) => breaker.local(),
        }
    }
}

/// The native half of `holysheep.CircuitBreaker`; use that class.
#[pyclass(name = "BreakerCore", module = "holysheep._holysheep", frozen)]
pub struct BreakerCore {
    inner: Breaker,
}

impl BreakerCore {
    pub(crate) fn core(&self) -> &Breaker {
        &self.inner
    }
}

fn names(transition: Option<Transition>) -> Option<(&'static str, &'static str)> {
    transition.map(|t| (t.from.name(), t.to.name()))
}

/// Seconds for Python; infinity for "until reset".
fn secs(ns: u64) -> f64 {
    if ns == u64::MAX { f64::INFINITY } else { ns_to_secs(ns) }
}

#[pymethods]
impl BreakerCore {
    #[new]
    /// Every setting as the user passed it to `CircuitBreaker`, which holds the defaults.
    #[pyo3(signature = (*, failure_threshold, recovery_timeout, half_open_max_calls, name, failure_rate=None,
                        window=None, window_s=None, minimum_calls=None, slow_call_s=None, backend=None, key=None,
                        announce=None))]
    #[allow(clippy::too_many_arguments)] // one per keyword argument of the Python constructor
    fn new(
        py: Python<'_>,
        failure_threshold: Option<&Bound<'_, PyAny>>,
        recovery_timeout: &Bound<'_, PyAny>,
        half_open_max_calls: &Bound<'_, PyAny>,
        name: &Bound<'_, PyAny>,
        failure_rate: Option<&Bound<'_, PyAny>>,
        window: Option<&Bound<'_, PyAny>>,
        window_s: Option<&Bound<'_, PyAny>>,
        minimum_calls: Option<&Bound<'_, PyAny>>,
        slow_call_s: Option<&Bound<'_, PyAny>>,
        backend: Option<&Bound<'_, PyAny>>,
        key: Option<&Bound<'_, PyAny>>,
        announce: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let span = match (args::optional(window, |v| args::count_in("window", v, WINDOW_CALLS))?, window_s) {
            (Some(_), Some(_)) => return Err(Error::config("window_s", "give window (calls) or window_s (seconds), not both").into()),
            (_, Some(seconds)) => Span::Time(args::seconds("window_s", seconds)?),
            (calls, None) => Span::Calls(calls.unwrap_or(100)),
        };
        let minimum_calls = args::optional(minimum_calls, |v| args::count_in("minimum_calls", v, MINIMUM_CALLS))?.unwrap_or(20);
        let failure_rate = args::optional(failure_rate, |v| args::positive("failure_rate", v))?
            .map(|threshold| RateRule { threshold, span, minimum_calls });
        let config = BreakerConfig {
            name: args::text("name", name)?,
            failure_threshold: args::optional(failure_threshold, |v| args::count_in("failure_threshold", v, FAILURE_THRESHOLD))?
                .or(if failure_rate.is_none() { Some(5) } else { None }),
            recovery_timeout_ns: args::seconds("recovery_timeout", recovery_timeout)?,
            half_open_max_calls: args::count_in("half_open_max_calls", half_open_max_calls, HALF_OPEN_CALLS)?,
            failure_rate,
            slow_call_ns: args::optional(slow_call_s, |v| Ok(secs_to_ns(args::positive("slow_call_s", v)?).unwrap_or(u64::MAX)))?,
        };
        let inner = match (backend, key) {
            (None, None) => Breaker::Local(CircuitBreaker::new(config, Default::default())?),
            (Some(backend), Some(key)) => {
                let Ok(backend) = backend.cast::<PyRedisBackend>() else {
                    return args::refuse("backend", "a RedisBackend or None", backend);
                };
                let key = args::text("key", key)?;
                let backend = backend.get();
                let fleet = FleetBreaker::new(backend.inner.clone(), &key, config, backend.on_error)?;
                // One read now: a bad URL or refused credentials show at construction, and the state is known.
                match py.detach(|| fleet.sync()) {
                    Err(err @ crate::backend::redis::BackendError::Config { .. }) => return Err(err.into()),
                    _ => Breaker::Fleet(Fleet { breaker: fleet, announce }),
                }
            }
            (Some(_), None) => return Err(Error::config("key", "a breaker with a backend needs key= to name the state it shares").into()),
            (None, Some(_)) => return Err(Error::config("backend", "key= names a state shared through a backend: give backend= too").into()),
        };
        Ok(Self { inner })
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

    /// Records a failure; `open_for` is how long the server said it is away (seconds), which opens the
    /// breaker now for that long. Returns `(from, to)` when that changed the state.
    #[pyo3(signature = (permit, open_for=None))]
    fn failure(&self, permit: u64, open_for: Option<f64>) -> Option<(&'static str, &'static str)> {
        names(self.inner.record_failure(Permit::from_bits(permit), open_for.and_then(secs_to_ns)))
    }

    /// Gives a permit back without a verdict (a cancelled call, or the caller's own bug).
    fn release(&self, permit: u64) {
        let permit = Permit::from_bits(permit);
        match &self.inner {
            Breaker::Local(breaker) => breaker.release(permit),
            Breaker::Fleet(breaker) => breaker.release(permit),
        }
    }

    /// Opens the breaker until `reset`; returns `(from, to)` when that changed the state.
    fn isolate(&self, py: Python<'_>) -> PyResult<Option<(&'static str, &'static str)>> {
        Ok(names(match &self.inner {
            Breaker::Local(breaker) => breaker.isolate(),
            Breaker::Fleet(fleet) => {
                let change = py.detach(|| fleet.isolate())?;
                fleet.announce_changes();
                change
            }
        }))
    }

    /// Closes the breaker and forgets its failures; returns `(from, to)` when that changed the state.
    fn reset(&self, py: Python<'_>) -> PyResult<Option<(&'static str, &'static str)>> {
        Ok(names(match &self.inner {
            Breaker::Local(breaker) => breaker.reset(),
            Breaker::Fleet(fleet) => {
                let change = py.detach(|| fleet.reset())?;
                fleet.announce_changes();
                change
            }
        }))
    }

    /// Re-reads a shared breaker's state from Redis now (a local one has nothing to read).
    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        if let Breaker::Fleet(fleet) = &self.inner {
            py.detach(|| fleet.sync())?;
            fleet.announce_changes();
        }
        Ok(())
    }

    #[getter]
    fn state(&self) -> &'static str {
        match &self.inner {
            Breaker::Local(breaker) => breaker.state(),
            Breaker::Fleet(fleet) => {
                fleet.await_reports();
                let state = fleet.state();
                fleet.announce_changes();
                state
            }
        }
        .name()
    }
    /// Seconds until trials may start; infinity when isolated; None unless open.
    #[getter]
    fn retry_after(&self) -> Option<f64> {
        match &self.inner {
            Breaker::Local(breaker) => breaker.retry_after_ns(),
            Breaker::Fleet(fleet) => {
                fleet.await_reports();
                fleet.retry_after_ns()
            }
        }
        .map(secs)
    }
    #[getter]
    fn isolated(&self) -> bool {
        match &self.inner {
            Breaker::Local(breaker) => breaker.isolated(),
            Breaker::Fleet(fleet) => {
                fleet.await_reports();
                fleet.isolated()
            }
        }
    }
    /// Whether the state is shared through a backend.
    #[getter]
    fn shared(&self) -> bool {
        matches!(self.inner, Breaker::Fleet(_))
    }
    /// A shared breaker whose Redis failed lately, so the backend's failure policy decides.
    #[getter]
    fn degraded(&self) -> bool {
        matches!(&self.inner, Breaker::Fleet(breaker) if breaker.degraded())
    }
    #[getter]
    fn consecutive_failures(&self) -> u64 {
        self.inner.local().consecutive_failures()
    }
    /// `(calls, failures)` in this process's failure-rate window, or None without one.
    #[getter]
    fn window_counts(&self) -> Option<(u64, u64)> {
        match &self.inner {
            Breaker::Local(breaker) => breaker.window(),
            Breaker::Fleet(_) => None,
        }
    }
    /// `(successes, failures, slow_calls, rejected, times_opened)` since the breaker was made (this
    /// process's, for a local breaker).
    fn counters(&self) -> (u64, u64, u64, u64, u64) {
        let Counters { successes, failures, slow_calls, rejected, times_opened } = self.inner.local().counters();
        (successes, failures, slow_calls, rejected, times_opened)
    }
    #[getter]
    fn name(&self) -> &str {
        &self.inner.config().name
    }
    #[getter]
    fn failure_threshold(&self) -> Option<u32> {
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
    #[getter]
    fn failure_rate(&self) -> Option<f64> {
        self.inner.config().failure_rate.map(|rule| rule.threshold)
    }
    #[getter]
    fn window(&self) -> Option<u32> {
        match self.inner.config().failure_rate?.span {
            Span::Calls(calls) => Some(calls),
            Span::Time(_) => None,
        }
    }
    #[getter]
    fn window_s(&self) -> Option<f64> {
        match self.inner.config().failure_rate?.span {
            Span::Time(ns) => Some(ns_to_secs(ns)),
            Span::Calls(_) => None,
        }
    }
    #[getter]
    fn minimum_calls(&self) -> Option<u32> {
        self.inner.config().failure_rate.map(|rule| rule.minimum_calls)
    }
    #[getter]
    fn slow_call_s(&self) -> Option<f64> {
        self.inner.config().slow_call_ns.map(ns_to_secs)
    }
}

