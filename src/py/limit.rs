//! `Limit`: "n units per period", built and checked by the core.

use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::core::clock::ns_to_secs;
use crate::core::limit::{Algorithm, Limit, Unit, default_guard_ns, parse_period, period_from_secs};
use crate::py::args;

/// At most ``amount`` units per period, in ANY interval of that length.
///
///     hs.Limit(10, per="minute")                 # 10 requests in any 60 s
///     hs.Limit(10_000, per="minute", unit="tokens")
///     hs.Limit(5, per=10.0, algorithm="gcra", burst=2)
///
/// ``guard`` (seconds) keeps each admission counted that much past the period, for the trip to the
/// server, which counts from arrival; by default 1% of the period, at most 50 ms.
#[pyclass(name = "Limit", module = "holysheep._holysheep", frozen, eq)]
#[derive(Clone, PartialEq)]
pub struct PyLimit {
    pub inner: Limit,
}

/// The period: a name ("minute") or a number of seconds.
fn period_ns(per: &Bound<'_, PyAny>) -> PyResult<u64> {
    if per.is_instance_of::<PyString>() {
        return args::choice("per", per, parse_period);
    }
    match args::positive("per", per) {
        Ok(secs) => Ok(period_from_secs(secs)?),
        Err(_) => {
            args::refuse("per", "'second', 'minute', 'hour', 'day' or a finite number of seconds greater than 0", per)
        }
    }
}

#[pymethods]
impl PyLimit {
    #[new]
    #[pyo3(
        signature = (amount, per = None, *, unit = None, algorithm = None, burst = None, guard = None),
        text_signature = "(amount, per=None, *, unit='requests', algorithm='exact', burst=None, guard=None)"
    )]
    fn new(
        amount: &Bound<'_, PyAny>,
        per: Option<&Bound<'_, PyAny>>,
        unit: Option<&Bound<'_, PyAny>>,
        algorithm: Option<&Bound<'_, PyAny>>,
        burst: Option<&Bound<'_, PyAny>>,
        guard: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let amount = args::positive("amount", amount)?;
        let period_ns = match per.filter(|per| !per.is_none()) {
            Some(per) => period_ns(per)?,
            None => parse_period("second")?,
        };
        let unit = args::optional(unit, |unit| args::choice("unit", unit, Unit::parse))?.unwrap_or(Unit::Requests);
        let algorithm = args::optional(algorithm, |name| args::choice("algorithm", name, Algorithm::parse))?
            .unwrap_or(Algorithm::Exact);
        let burst = args::optional(burst, |burst| args::positive("burst", burst))?;
        let guard_ns = args::optional(guard, |guard| args::seconds("guard", guard))?
            .unwrap_or_else(|| default_guard_ns(period_ns));
        let inner = Limit::new(amount, period_ns, unit, algorithm, burst)?;
        Ok(Self { inner: inner.with_guard(guard_ns) })
    }

    /// Seconds each admission stays counted past the period.
    #[getter]
    fn guard(&self) -> f64 {
        ns_to_secs(self.inner.guard_ns())
    }

    #[getter]
    fn amount(&self) -> f64 {
        self.inner.amount()
    }

    /// The period in seconds.
    #[getter]
    fn per(&self) -> f64 {
        ns_to_secs(self.inner.period_ns())
    }

    #[getter]
    fn unit(&self) -> &'static str {
        self.inner.unit().name()
    }

    #[getter]
    fn algorithm(&self) -> &'static str {
        self.inner.algorithm().name()
    }

    /// Units admitted at once by a ``"gcra"`` limit; ``None`` for the others.
    #[getter]
    fn burst(&self) -> Option<u64> {
        (self.inner.algorithm() == Algorithm::Gcra).then(|| self.inner.burst())
    }

    fn __repr__(&self) -> String {
        let burst = self.burst().map(|b| format!(", burst={b}")).unwrap_or_default();
        format!(
            "Limit({}, per={}, unit={:?}, algorithm={:?}{burst}, guard={})",
            self.inner.amount(),
            self.per(),
            self.unit(),
            self.algorithm(),
            self.guard()
        )
    }

    fn __str__(&self) -> String {
        self.inner.to_string()
    }
}
