//! `ServerModel` and `_preview`, the binding of [`crate::preview`]: arguments are read and checked here
//! (a bad one raises ConfigError naming it), the simulation runs with the GIL released, and what it
//! found comes back as a dict that `holysheep.preview` makes a report of.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::core::clock::{NS_PER_SEC, ns_to_secs};
use crate::core::retry::ATTEMPTS;
use crate::gateway::Latency;
use crate::preview::{self, Arrival, Outcome, Scenario, ServerModel, traffic};
use crate::py::args;
use crate::py::limiter::PyLimiter;

/// A server a preview sends to, enforcing limits per API key as the MockGateway does (strict sliding
/// windows over requests and tokens, requests in flight): a HolySheep plan's limits, each overridden
/// by a number given.
///
///     server = ServerModel(tier="pro")
///     server = ServerModel(rpm=100, concurrency=8)
///
/// window_s: the length of the server's "minute" (60). Raises ConfigError naming the field for an
/// unknown tier, a limit below 1, or no limit at all.
#[pyclass(name = "ServerModel", module = "holysheep._holysheep", frozen)]
pub struct PyServerModel {
    inner: ServerModel,
}

#[pymethods]
impl PyServerModel {
    #[new]
    #[pyo3(signature = (tier = None, *, rpm = None, tpm = None, concurrency = None, window_s = None))]
    fn new(
        tier: Option<&Bound<'_, PyAny>>,
        rpm: Option<&Bound<'_, PyAny>>,
        tpm: Option<&Bound<'_, PyAny>>,
        concurrency: Option<&Bound<'_, PyAny>>,
        window_s: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let tier = args::optional(tier, |v| args::text("tier", v))?;
        let limit = |field: &str, value| args::optional(value, |v| args::count(field, v, 1, u64::MAX));
        let window_ns = args::optional(window_s, |v| args::seconds("window_s", v))?.unwrap_or(60 * NS_PER_SEC);
        let inner = ServerModel::new(tier.as_deref(), limit("rpm", rpm)?, limit("tpm", tpm)?, limit("concurrency", concurrency)?, window_ns)?;
        Ok(Self { inner })
    }

    /// The plan named, if any.
    #[getter]
    fn tier(&self) -> Option<&'static str> {
        self.inner.tier()
    }

    #[getter]
    fn rpm(&self) -> Option<u64> {
        self.inner.limits().rpm
    }

    #[getter]
    fn tpm(&self) -> Option<u64> {
        self.inner.limits().tpm
    }

    #[getter]
    fn concurrency(&self) -> Option<u64> {
        self.inner.limits().concurrency
    }

    #[getter]
    fn window_s(&self) -> f64 {
        ns_to_secs(self.inner.window_ns())
    }

    fn __repr__(&self) -> String {
        format!("ServerModel({})", self.inner.describe().join(", "))
    }
}

const TRAFFIC_FORMS: &str = "a stages string such as \"ramp 0->50/s over 1m, 50/s for 10m\", a rate in requests per \
                             second, a list of arrival times in seconds (or of (seconds, tokens) pairs), or the path \
                             of a JSONL trace";

/// A number given as an int or a float (not a bool), for the forms of traffic.
fn number(value: &Bound<'_, PyAny>) -> Option<f64> {
    let plain = (value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>()) && !value.is_instance_of::<PyBool>();
    plain.then(|| value.extract::<f64>().ok()).flatten()
}

/// One item of a list of arrivals: seconds, or (seconds, tokens).
fn arrival_of(item: &Bound<'_, PyAny>, index: usize, tokens: u64) -> PyResult<(f64, u64)> {
    if let Some(at) = number(item) {
        return Ok((at, tokens));
    }
    if let Ok(pair) = item.cast::<PyTuple>()
        && pair.len() == 2
        && let Some(at) = number(&pair.get_item(0)?)
    {
        return Ok((at, args::tokens("traffic", &pair.get_item(1)?)?));
    }
    args::refuse("traffic", &format!("a list of arrival times in seconds or (seconds, tokens) pairs; item {index} is not"), item)
}

/// The arrivals of `traffic` in any of its forms; `duration_s` belongs to a constant rate alone.
fn arrivals_of(traffic: &Bound<'_, PyAny>, tokens: u64, duration_s: Option<f64>) -> PyResult<Vec<Arrival>> {
    if duration_s.is_some() && number(traffic).is_none() {
        return Err(crate::core::Error::config("duration", "applies to a constant rate (traffic=50.0) only; stages, times and traces say how long they last").into());
    }
    if let Ok(text) = traffic.cast::<PyString>() {
        return Ok(traffic::parse(&text.to_cow()?, tokens)?);
    }
    if let Some(per_s) = number(traffic) {
        return Ok(traffic::constant(per_s, duration_s.unwrap_or(60.0), tokens)?);
    }
    if traffic.hasattr("__fspath__")? {
        let path: String = traffic.call_method0("__fspath__")?.extract().or_else(|_| args::refuse("traffic", TRAFFIC_FORMS, traffic))?;
        let contents = std::fs::read_to_string(&path)
            .map_err(|err| crate::core::Error::config("traffic", format!("cannot read the trace {path:?}: {err}")))?;
        return Ok(traffic::from_jsonl(&contents, &path, tokens)?);
    }
    if traffic.is_instance_of::<PyList>() || traffic.is_instance_of::<PyTuple>() {
        let times = traffic.try_iter()?.enumerate().map(|(index, item)| arrival_of(&item?, index, tokens)).collect::<PyResult<Vec<_>>>()?;
        return Ok(traffic::from_times(times)?);
    }
    args::refuse("traffic", TRAFFIC_FORMS, traffic)
}

/// Seconds, or (fewest, most) seconds drawn uniformly for each request.
fn latency_of(value: &Bound<'_, PyAny>) -> PyResult<Latency> {
    if let Ok(bounds) = value.cast::<PyTuple>() {
        if bounds.len() == 2 {
            let (min_ns, max_ns) = (args::seconds("latency", &bounds.get_item(0)?)?, args::seconds("latency", &bounds.get_item(1)?)?);
            if min_ns > max_ns {
                return Err(crate::core::Error::config("latency", "(fewest, most) seconds: the first must not exceed the second").into());
            }
            return Ok(Latency::Uniform { min_ns, max_ns });
        }
        return args::refuse("latency", "seconds, or a (fewest, most) pair of seconds", value);
    }
    Ok(Latency::Fixed { ns: args::seconds("latency", value)? })
}

/// Runs a preview; see `holysheep.preview`, which calls this.
#[pyfunction]
#[pyo3(name = "_preview", signature = (limiter, traffic, *, latency = None, tokens = None, server = None, duration = None, price = None, max_attempts = None, timeout = None, seed = None))]
#[allow(clippy::too_many_arguments)]
pub fn run_preview<'py>(
    py: Python<'py>,
    limiter: &Bound<'py, PyAny>,
    traffic: &Bound<'py, PyAny>,
    latency: Option<&Bound<'py, PyAny>>,
    tokens: Option<&Bound<'py, PyAny>>,
    server: Option<&Bound<'py, PyAny>>,
    duration: Option<&Bound<'py, PyAny>>,
    price: Option<&Bound<'py, PyAny>>,
    max_attempts: Option<&Bound<'py, PyAny>>,
    timeout: Option<&Bound<'py, PyAny>>,
    seed: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let limiter = limiter.cast::<PyLimiter>().or_else(|_| {
        args::refuse("limiter", "a holysheep.HolySheepRateLimiter (or a TokenBucket, SlidingWindow or ConcurrencyLimiter)", limiter)
    })?;
    let server = args::optional(server, |v| {
        v.cast::<PyServerModel>().cloned().or_else(|_| args::refuse("server", "a holysheep.ServerModel or None", v))
    })?;
    let tokens = args::optional(tokens, |v| args::tokens("tokens", v))?.unwrap_or(0);
    let duration_s = args::optional(duration, |v| args::positive("duration", v))?;
    let scenario = Scenario {
        arrivals: arrivals_of(traffic, tokens, duration_s)?,
        latency: args::optional(latency, latency_of)?.unwrap_or_default(),
        seed: args::optional(seed, |v| args::count("seed", v, 0, u64::MAX))?.unwrap_or(0),
        usd_per_million: args::optional(price, |v| args::price("price", v))?.unwrap_or(0.0),
        max_attempts: args::optional(max_attempts, |v| args::count_in("max_attempts", v, ATTEMPTS))?.unwrap_or(5),
        timeout_ns: args::timeout("timeout", timeout)?,
    };
    let (limiter, server) = (limiter.get(), server.as_ref().map(|server| &server.get().inner));
    let outcome = py.detach(|| preview::run(limiter.core(), server, &scenario));
    outcome_dict(py, &outcome)
}

fn outcome_dict<'py>(py: Python<'py>, outcome: &Outcome) -> PyResult<Bound<'py, PyDict>> {
    let report = PyDict::new(py);
    report.set_item("requests", outcome.requests)?;
    report.set_item("admitted", outcome.admitted)?;
    report.set_item("answered", outcome.answered)?;
    let refusals = PyDict::new(py);
    for (why, count) in &outcome.refusals {
        refusals.set_item(why, count)?;
    }
    report.set_item("refusals", refusals)?;
    report.set_item("failed", outcome.failed)?;
    report.set_item("server_429s", outcome.server_429s)?;
    report.set_item("waited", outcome.waited)?;
    report.set_item("wait_p50", ns_to_secs(outcome.wait_p50_ns))?;
    report.set_item("wait_p99", ns_to_secs(outcome.wait_p99_ns))?;
    report.set_item("wait_max", ns_to_secs(outcome.wait_max_ns))?;
    report.set_item("drain_s", ns_to_secs(outcome.drain_ns))?;
    report.set_item("end_s", ns_to_secs(outcome.end_ns))?;
    report.set_item("cost_usd", outcome.cost_usd)?;
    report.set_item("holders", &outcome.holders)?;
    report.set_item("held_s", outcome.held_ns.iter().map(|&ns| ns_to_secs(ns)).collect::<Vec<_>>())?;
    report.set_item("binding", outcome.binding)?;
    let spans: Vec<(f64, f64, usize)> =
        outcome.spans.iter().map(|span| (ns_to_secs(span.start_ns), ns_to_secs(span.end_ns), span.holder)).collect();
    report.set_item("spans", spans)?;
    report.set_item("server_limits", &outcome.server_limits)?;
    report.set_item("request_rates", &outcome.request_rates)?;
    let series = &outcome.series;
    let plotted = PyDict::new(py);
    plotted.set_item("bin_s", ns_to_secs(series.bin_ns))?;
    plotted.set_item("admitted_per_s", &series.admitted_per_s)?;
    plotted.set_item("server_429s_per_s", &series.server_429s_per_s)?;
    plotted.set_item("queue", &series.queue)?;
    plotted.set_item("in_flight", &series.in_flight)?;
    plotted.set_item("wait_p50_s", &series.wait_p50_s)?;
    plotted.set_item("wait_max_s", &series.wait_max_s)?;
    plotted.set_item("use_of", &series.use_of)?;
    report.set_item("series", plotted)?;
    Ok(report)
}
