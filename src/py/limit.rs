//! `Limit`: "n units per period", built and checked by the core.

use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::core::clock::{ns_to_secs, secs_to_ns};
use crate::core::limit::{Algorithm, Limit, Unit, default_guard_ns, parse_period, period_from_secs};

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

fn period_ns(per: &Bound<'_, PyAny>) -> PyResult<u64> {
    if per.is_instance_of::<PyString>() {
        return Ok(parse_period(&per.extract::<String>()?)?);
    }
    let secs: f64 = per.extract().map_err(|_| {
        crate::core::Error::config("per", format!("must be a period name or a number of seconds, got {per}"))
    })?;
    Ok(period_from_secs(secs)?)
}

#[pymethods]
impl PyLimit {
    #[new]
    #[pyo3(signature = (amount, per = None, *, unit = "requests", algorithm = "exact", burst = None, guard = None))]
    fn new(
        amount: f64,
        per: Option<&Bound<'_, PyAny>>,
        unit: &str,
        algorithm: &str,
        burst: Option<f64>,
        guard: Option<f64>,
    ) -> PyResult<Self> {
        let period_ns = match per {
            Some(per) => period_ns(per)?,
            None => parse_period("second")?,
        };
        let guard_ns = match guard {
            None => default_guard_ns(period_ns),
            Some(secs) => secs_to_ns(secs)
                .ok_or_else(|| crate::core::Error::config("guard", format!("must be 0 or more seconds, got {secs}")))?,
        };
        let inner = Limit::new(amount, period_ns, Unit::parse(unit)?, Algorithm::parse(algorithm)?, burst)?;
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
