//! The native half of `HolySheepRateLimiter`: every admission, the no-wait fast paths (`try_acquire`,
//! `async with` and `with` when free), and waiting in the core's line through the drivers of
//! `waiting.rs` (on the caller's event loop, or its thread with the GIL released).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use pyo3::intern;

use crate::core::clock::{ns_to_secs, secs_to_ns};
use crate::core::limiter::{Admission, Limiter};
use crate::core::feedback::FOLLOWED;
use crate::core::headers::server_left;
use crate::core::{Cost, Error, LimiterConfig, Tier, Unit};
use crate::py::args;
use crate::py::limit::PyLimit;
use crate::py::waiting::{Acquiring, Finish, wait_blocking};

/// An awaitable that is already done, with its result: what `acquire` and `async with` return when
/// nothing had to wait.
#[pyclass(name = "_Ready", module = "holysheep._holysheep", frozen)]
pub struct Ready(Option<Py<PyAny>>);

#[pymethods]
impl Ready {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<()> {
        let result = self.0.as_ref().map_or_else(|| py.None(), |result| result.clone_ref(py));
        Err(PyStopIteration::new_err((result,)))
    }
}

pub fn tokens_cost(tokens: i64) -> PyResult<Cost> {
    if tokens < 0 {
        return Err(Error::config("tokens", format!("must be 0 or more, got {tokens}")).into());
    }
    Ok(Cost::request(tokens as u64))
}

/// A wait's limit in ns: `None` (and an infinite timeout) waits as long as it takes.
pub fn max_wait_ns(timeout: Option<f64>) -> PyResult<Option<u64>> {
    match timeout {
        None => Ok(None),
        Some(secs) if secs == f64::INFINITY => Ok(None),
        Some(secs) => secs_to_ns(secs)
            .map(Some)
            .ok_or_else(|| Error::config("timeout", format!("must be None or 0 or more seconds, got {secs}")).into()),
    }
}

/// One request's admission, and its lifecycle: `stamp` when it is sent, `settle` its real token count,
/// `observe` the server's answer, then `release` its slot once done, or `give_back` all of it when it
/// was never sent. Releasing (or giving back) twice does nothing the second time.
#[pyclass(name = "_Reservation", module = "holysheep._holysheep", frozen)]
pub struct Reservation {
    limiter: Arc<Limiter>,
    admission: Admission,
    /// The tokens counted for it now: the estimate, then each settled count.
    tokens: AtomicU64,
    /// Dollars per million of its tokens, for a budget.
    price: f64,
    /// Whether it still holds its concurrency slot (and, before it is sent, its place in the rates).
    held: AtomicBool,
}

impl Reservation {
    fn new(limiter: &Arc<Limiter>, admission: Admission, cost: Cost, price: f64) -> Self {
        Self {
            limiter: Arc::clone(limiter),
            admission,
            tokens: AtomicU64::new(cost.tokens),
            price,
            held: AtomicBool::new(true),
        }
    }

    fn cost(&self) -> Cost {
        self.cost_of(self.tokens.load(Ordering::Acquire))
    }

    fn cost_of(&self, tokens: u64) -> Cost {
        Cost::priced(tokens, self.price)
    }

    /// True the first time only: what is held is handed back once.
    fn let_go(&self) -> bool {
        self.held.swap(false, Ordering::AcqRel)
    }
}

#[pymethods]
impl Reservation {
    /// The tokens counted for it now.
    #[getter]
    fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::Acquire)
    }

    /// Marks it sent now: its admission moves to when its request really goes.
    fn stamp(&self) {
        self.limiter.stamp(&self.admission, self.cost());
    }

    /// Replaces the tokens counted so far by the actual count: refunds or charges the difference.
    fn settle(&self, actual_tokens: &Bound<'_, PyAny>) -> PyResult<()> {
        let actual = self.cost_of(args::tokens("actual_tokens", actual_tokens)?);
        let counted = self.cost_of(self.tokens.swap(actual.tokens, Ordering::AcqRel));
        self.limiter.settle(&self.admission, counted, actual);
        Ok(())
    }

    /// What the server answered: see `_Limiter._server_answered`.
    fn observe(&self, status: u16, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        observe_answer(&self.limiter, Some(self), status, headers)
    }

    /// Its request is done: the concurrency slot goes back (to the next waiter first).
    fn release(&self) -> PyResult<()> {
        if self.let_go() {
            self.limiter.release()?;
        }
        Ok(())
    }

    /// Its request was never sent: its place in the rates and its slot go back.
    fn give_back(&self) -> PyResult<()> {
        if self.let_go() {
            self.limiter.give_back(&self.admission, self.cost());
            self.limiter.release()?;
        }
        Ok(())
    }
}

/// Tells the limiter what an answer says of the server's limits: a 429 cuts the rates in force, any
/// other answer lets them climb back; and for an admission of this limiter, what the answer's
/// `x-ratelimit-remaining-*` and `-reset-*` say is left is held against our own count. `headers` is the
/// answer's httpx (or httpx2) `Headers`; unreadable values are ignored.
fn observe_answer(limiter: &Limiter, admitted: Option<&Reservation>, status: u16, headers: &Bound<'_, PyAny>) -> PyResult<()> {
    if status == 429 {
        limiter.record_server_rejection();
    } else {
        limiter.record_server_answer();
    }
    let Some(reservation) = admitted else { return Ok(()) };
    let pairs = rate_limit_headers(headers)?;
    let said = server_left(pairs.iter().map(|(name, value)| (name.as_bytes(), value.as_bytes())));
    for (unit, left) in FOLLOWED.into_iter().zip(said) {
        if let Some((remaining, reset_ns)) = left {
            limiter.record_server_remaining(&reservation.admission, reservation.cost(), unit, remaining, reset_ns);
        }
    }
    Ok(())
}

/// The `x-ratelimit-*` (name, value) pairs of an httpx `Headers`. Read from the item list it keeps
/// (raw name, lower-cased name, value), not from `raw`, which builds a new list of every header on
/// each call; `raw` only where that list is not there.
fn rate_limit_headers<'py>(headers: &Bound<'py, PyAny>) -> PyResult<Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>> {
    let py = headers.py();
    let items = match headers.getattr(intern!(py, "_list")) {
        Ok(items) => items,
        Err(_) => headers.getattr(intern!(py, "raw"))?,
    };
    let mut found = Vec::new();
    for item in items.try_iter()? {
        let Ok(item) = item?.cast_into::<PyTuple>() else { continue };
        // The name is next to last and the value last, in a triple of the item list as in a raw pair.
        let Some(last) = item.len().checked_sub(1).filter(|&last| last >= 1) else { continue };
        let (Ok(name), Ok(value)) = (item.get_item(last - 1)?.cast_into::<PyBytes>(), item.get_item(last)?.cast_into::<PyBytes>()) else {
            continue;
        };
        if name.as_bytes().get(..RATE_LIMIT_PREFIX.len()).is_some_and(|start| start.eq_ignore_ascii_case(RATE_LIMIT_PREFIX)) {
            found.push((name, value));
        }
    }
    Ok(found)
}

/// What the names of the headers `server_left` reads begin with.
const RATE_LIMIT_PREFIX: &[u8] = b"x-ratelimit-";

/// The native base of `HolySheepRateLimiter`; use that class.
#[pyclass(name = "_Limiter", module = "holysheep._holysheep", frozen, subclass)]
pub struct PyLimiter {
    inner: Arc<Limiter>,
}

/// One request of `tokens` (`None`: 0), its tokens checked as the `tokens` argument.
fn request_of(tokens: Option<&Bound<'_, PyAny>>) -> PyResult<Cost> {
    Ok(Cost::request(args::optional(tokens, |v| args::tokens("tokens", v))?.unwrap_or(0)))
}

/// What a call that may wait asks for, its arguments checked when the call starts.
struct Waiting {
    cost: Cost,
    max_wait_ns: Option<u64>,
    priority: i64,
}

impl Waiting {
    fn of(cost: Cost, timeout: Option<&Bound<'_, PyAny>>, priority: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        Ok(Self {
            cost,
            max_wait_ns: args::timeout("timeout", timeout)?,
            priority: args::optional(priority, |v| args::priority("priority", v))?.unwrap_or(0),
        })
    }

    /// One request without tokens, waiting as long as it takes (`async with`, `with`).
    fn one() -> Self {
        Self { cost: Cost::request(0), max_wait_ns: None, priority: 0 }
    }
}

/// What a limit has left as `stats()` shows it: a count of requests or tokens, dollars for a budget.
pub fn remaining_amount(py: Python<'_>, unit: Unit, counted: u64) -> PyResult<Py<PyAny>> {
    Ok(match unit {
        Unit::Usd => unit.amount_of(counted).into_pyobject(py)?.into_any().unbind(),
        Unit::Requests | Unit::Tokens => counted.into_pyobject(py)?.into_any().unbind(),
    })
}

/// What `acquire` resolves to: nothing.
fn nothing() -> Finish {
    Box::new(|py, _| Ok(py.None()))
}

impl PyLimiter {
    /// The admission of `cost` at `price` now, kept for settling and releasing, or None when it would
    /// have to wait; a cost that can never pass raises here, before any wait.
    fn admit_at_once(&self, cost: Cost) -> PyResult<Option<Admission>> {
        let admitted = self.inner.try_reserve(cost)?;
        if admitted.is_none() {
            self.inner.time_until_ready(cost)?;
        }
        Ok(admitted)
    }

    /// `acquire` and its variants: admitted now (`Ready`) or an awaitable waiting its turn.
    fn acquiring(&self, py: Python<'_>, waiting: Waiting, finish: Finish) -> PyResult<Py<PyAny>> {
        let Waiting { cost, max_wait_ns, priority } = waiting;
        if let Some(admission) = self.admit_at_once(cost)? {
            return Ok(Py::new(py, Ready(Some(finish(py, admission)?)))?.into_any());
        }
        Ok(Py::new(py, Acquiring::start(py, &self.inner, cost, priority, max_wait_ns, finish)?)?.into_any())
    }

    fn blocking(&self, py: Python<'_>, waiting: Waiting) -> PyResult<Admission> {
        let Waiting { cost, max_wait_ns, priority } = waiting;
        match self.admit_at_once(cost)? {
            Some(admission) => Ok(admission),
            None => wait_blocking(py, &self.inner, cost, priority, max_wait_ns),
        }
    }

    fn reservation(&self, admission: Admission, cost: Cost, price: f64) -> Reservation {
        Reservation::new(&self.inner, admission, cost, price)
    }

    /// Makes the awaited result: the admission as a `_Reservation`.
    fn keeping(&self, cost: Cost, price: f64) -> Finish {
        let limiter = Arc::clone(&self.inner);
        Box::new(move |py, admission| Ok(Py::new(py, Reservation::new(&limiter, admission, cost, price))?.into_any()))
    }
}

#[pymethods]
impl PyLimiter {
    #[new]
    #[pyo3(signature = (max_qps = None, max_concurrency = None, *, rpm = None, tpm = None, burst = None, limits = None, tier = None))]
    fn new(
        max_qps: Option<&Bound<'_, PyAny>>,
        max_concurrency: Option<&Bound<'_, PyAny>>,
        rpm: Option<&Bound<'_, PyAny>>,
        tpm: Option<&Bound<'_, PyAny>>,
        burst: Option<&Bound<'_, PyAny>>,
        limits: Option<&Bound<'_, PyAny>>,
        tier: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let rate = |field: &'static str, value| args::optional(value, |v| args::positive(field, v));
        let limits = args::optional(limits, |v| {
            v.extract::<Vec<PyRef<'_, PyLimit>>>()
                .or_else(|_| args::refuse("limits", "a list of holysheep.Limit", v))
                .map(|limits| limits.iter().map(|limit| limit.inner).collect::<Vec<_>>())
        })?;
        let mut config = LimiterConfig {
            max_qps: rate("max_qps", max_qps)?,
            rpm: rate("rpm", rpm)?,
            tpm: rate("tpm", tpm)?,
            burst: rate("burst", burst)?,
            limits: limits.unwrap_or_default(),
            max_concurrency: args::optional(max_concurrency, |v| args::count("max_concurrency", v, 1, args::COUNT_MAX))?
                .map(|n| n as i64),
            guard_ns: None,
        };
        let tier = args::optional(tier, |v| args::choice("tier", v, Tier::named))?;
        if let Some(tier) = tier {
            config.rpm = config.rpm.or(Some(tier.rpm as f64));
            config.tpm = config.tpm.or(Some(tier.tpm as f64));
            config.max_concurrency = config.max_concurrency.or(Some(tier.concurrency as i64));
        }
        let mut limiter = Limiter::new(config.rate_limits()?, config.concurrency()?, Default::default())?;
        if let Some(tier) = tier {
            limiter = limiter.with_cooldown(secs_to_ns(tier.cooldown_s).expect("a plan's cooldown is a valid duration"));
        }
        Ok(Self { inner: Arc::new(limiter) })
    }

    /// Takes one request (and ``tokens`` LLM tokens) now if every limit allows it, without waiting.
    /// Returns False otherwise; raises RateLimitExceeded when the cost could never pass.
    #[pyo3(signature = (tokens = None), text_signature = "(self, tokens=0)")]
    fn try_acquire(&self, tokens: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        let admitted = self.inner.try_acquire(request_of(tokens)?)?;
        if !admitted {
            self.inner.reject();
        }
        Ok(admitted)
    }

    /// `try_acquire` for a caller that waits when refused: a refusal is not counted.
    fn _admit_now(&self, tokens: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.inner.try_acquire(request_of(Some(tokens))?)?)
    }

    /// The admission of one request of ``tokens`` at ``price`` dollars per million of them when
    /// nobody waits and all is free, else None; a cost that can never pass raises here.
    fn _admit_at_once(&self, tokens: &Bound<'_, PyAny>, price: f64) -> PyResult<Option<Reservation>> {
        let cost = Cost::priced(request_of(Some(tokens))?.tokens, price);
        Ok(self.admit_at_once(cost)?.map(|admission| self.reservation(admission, cost, price)))
    }

    /// Waits for one request slot and the rate for it (and ``tokens`` LLM tokens); call `release`
    /// after. ``timeout``: seconds to wait at most (RateLimitExceeded at once when the predicted wait is
    /// longer); ``priority``: higher goes ahead of lower among those still waiting.
    #[pyo3(signature = (tokens = None, timeout = None, priority = None), text_signature = "(self, tokens=0, timeout=None, priority=0)")]
    fn acquire(
        &self,
        py: Python<'_>,
        tokens: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        priority: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let waiting = Waiting::of(request_of(tokens)?, timeout, priority)?;
        self.acquiring(py, waiting, nothing())
    }

    /// `acquire` for threads: blocks with the GIL released, so other threads keep running.
    #[pyo3(signature = (tokens = None, timeout = None, priority = None), text_signature = "(self, tokens=0, timeout=None, priority=0)")]
    fn acquire_blocking(
        &self,
        py: Python<'_>,
        tokens: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        priority: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.blocking(py, Waiting::of(request_of(tokens)?, timeout, priority)?).map(drop)
    }

    /// `acquire` resolving to the admission, to settle and release it (a permit, the transport).
    #[pyo3(signature = (tokens, timeout, priority, price = 0.0))]
    fn _acquire(
        &self,
        py: Python<'_>,
        tokens: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
        priority: &Bound<'_, PyAny>,
        price: f64,
    ) -> PyResult<Py<PyAny>> {
        let cost = Cost::priced(request_of(Some(tokens))?.tokens, price);
        let waiting = Waiting::of(cost, timeout, Some(priority))?;
        self.acquiring(py, waiting, self.keeping(cost, price))
    }

    /// `acquire_blocking` returning the admission.
    #[pyo3(signature = (tokens, timeout, priority, price = 0.0))]
    fn _acquire_blocking(
        &self,
        py: Python<'_>,
        tokens: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
        priority: &Bound<'_, PyAny>,
        price: f64,
    ) -> PyResult<Reservation> {
        let cost = Cost::priced(request_of(Some(tokens))?.tokens, price);
        let admission = self.blocking(py, Waiting::of(cost, timeout, Some(priority))?)?;
        Ok(self.reservation(admission, cost, price))
    }

    /// Seconds until the rate limits would admit the request; 0.0 when now.
    #[pyo3(signature = (tokens = None), text_signature = "(self, tokens=0)")]
    fn time_until_ready(&self, tokens: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
        Ok(ns_to_secs(self.inner.time_until_ready(request_of(tokens)?)?))
    }

    /// Returns the concurrency slot taken by acquire; the next waiter, if any, gets it. Does nothing
    /// on a limiter without ``max_concurrency`` (its admissions hold nothing).
    fn release(&self) -> PyResult<()> {
        Ok(self.inner.release()?)
    }

    /// Ends the request an admission was taken for: returns its concurrency slot.
    fn _release_admitted(&self, admitted: &Bound<'_, Reservation>) -> PyResult<()> {
        admitted.get().release()
    }

    /// Settles the real token count of a request once its answer says it.
    fn _settle_admitted(&self, admitted: &Bound<'_, Reservation>, actual_tokens: &Bound<'_, PyAny>) -> PyResult<()> {
        admitted.get().settle(actual_tokens)
    }

    /// What an answer says of the server's limits (see `_Reservation.observe`); ``admitted`` is the
    /// answered request's admission, if it is this limiter's.
    fn _server_answered(&self, status: u16, admitted: &Bound<'_, PyAny>, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        let reservation = admitted.cast::<Reservation>().ok();
        observe_answer(&self.inner, reservation.as_ref().map(|r| r.get()), status, headers)
    }

    fn __aenter__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.acquiring(py, Waiting::one(), nothing())
    }

    #[pyo3(signature = (*_exc))]
    fn __aexit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<Py<Ready>> {
        self.inner.release()?;
        Py::new(py, Ready(None))
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<()> {
        self.blocking(py, Waiting::one()).map(drop)
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) -> PyResult<()> {
        Ok(self.inner.release()?)
    }

    /// The fractions of the configured requests and tokens rates in force.
    fn _rate_factors(&self) -> (f64, f64) {
        let [requests, tokens] = self.inner.rate_factors();
        (requests, tokens)
    }

    /// The limits this limiter enforces.
    #[getter]
    fn limits(&self) -> Vec<PyLimit> {
        self.inner.limits().iter().map(|&inner| PyLimit { inner }).collect()
    }

    #[getter]
    fn max_concurrency(&self) -> Option<u64> {
        self.inner.max_concurrency()
    }

    /// What the limiter has done: admitted, rejected, in_flight, waiting, waited_s_p50/p99,
    /// server_429s, rate_factor and tokens_rate_factor, and the units remaining now in each limit.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let snapshot = self.inner.snapshot();
        let stats = PyDict::new(py);
        stats.set_item("admitted", snapshot.admitted)?;
        stats.set_item("rejected", snapshot.rejected)?;
        stats.set_item("in_flight", snapshot.in_flight)?;
        stats.set_item("waiting", snapshot.waiting)?;
        stats.set_item("waited", snapshot.waited)?;
        stats.set_item("waited_s_p50", ns_to_secs(snapshot.wait_p50_ns))?;
        stats.set_item("waited_s_p99", ns_to_secs(snapshot.wait_p99_ns))?;
        stats.set_item("server_429s", snapshot.server_rejections)?;
        let [requests_factor, tokens_factor] = self.inner.rate_factors();
        stats.set_item("rate_factor", requests_factor)?;
        stats.set_item("tokens_rate_factor", tokens_factor)?;
        let remaining = PyDict::new(py);
        for window in &snapshot.windows {
            remaining.set_item(&window.limit, remaining_amount(py, window.unit, window.remaining)?)?;
        }
        stats.set_item("remaining", remaining)?;
        Ok(stats)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let limiter = &slf.get().inner;
        let limits = PyList::new(slf.py(), limiter.limits().iter().map(ToString::to_string))?;
        let snapshot = limiter.snapshot();
        Ok(format!(
            "<{} limits={} max_concurrency={} in_flight={} waiting={}>",
            slf.get_type().name()?,
            limits.repr()?,
            limiter.max_concurrency().map_or("None".into(), |n| n.to_string()),
            snapshot.in_flight,
            snapshot.waiting,
        ))
    }
}
