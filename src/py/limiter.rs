//! The native half of `HolySheepRateLimiter`: every admission decision and the no-wait fast paths
//! (`try_acquire`, `async with` and `with` when free). Waiting lives in `holysheep/_limiter.py`, on the
//! caller's event loop or thread; this layer is called back only when someone must be woken.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use pyo3::intern;

use crate::core::clock::{ns_to_secs, secs_to_ns};
use crate::core::limiter::{Admission, Limiter, Waiters};
use crate::core::spin::SpinLock;
use crate::core::feedback::FOLLOWED;
use crate::core::headers::server_left;
use crate::core::{Cost, Error, LimiterConfig, Tier};
use crate::py::limit::PyLimit;

/// An awaitable that is already done: what `async with` awaits when nothing had to wait.
#[pyclass(name = "_Ready", module = "holysheep._holysheep", frozen)]
pub struct Ready;

#[pymethods]
impl Ready {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self) -> Option<()> {
        None
    }
}

pub fn tokens_cost(tokens: i64) -> PyResult<Cost> {
    if tokens < 0 {
        return Err(Error::config("tokens", format!("must be 0 or more, got {tokens}")).into());
    }
    Ok(Cost::request(tokens as u64))
}

pub fn max_wait_ns(timeout: Option<f64>) -> PyResult<Option<u64>> {
    timeout
        .map(|secs| secs_to_ns(secs).ok_or_else(|| Error::config("timeout", format!("must be 0 or more seconds, got {secs}"))))
        .transpose()
        .map_err(Into::into)
}

fn waiters(kind: &str) -> Waiters {
    if kind == "slot" { Waiters::Slot } else { Waiters::Rate }
}

/// A rate admission held by a waiter or a permit: when it may proceed, and its receipt.
#[pyclass(name = "_Reservation", module = "holysheep._holysheep", frozen)]
pub struct Reservation {
    limiter: Arc<Limiter>,
    /// Behind a lock only because `confirm` may move its instant.
    admission: SpinLock<Admission>,
    /// The tokens counted for it now: the estimate, then each settled count.
    tokens: AtomicU64,
    /// Dollars per million of its tokens, for a budget.
    price: f64,
}

impl Reservation {
    fn cost(&self) -> Cost {
        self.cost_of(self.tokens.load(Ordering::Acquire))
    }

    fn cost_of(&self, tokens: u64) -> Cost {
        Cost::priced(tokens, self.price)
    }
}

#[pymethods]
impl Reservation {
    /// Seconds to wait before proceeding.
    #[getter]
    fn wait(&self) -> f64 {
        ns_to_secs(self.admission.lock().wait_ns)
    }

    /// The tokens counted for it now.
    #[getter]
    fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::Acquire)
    }

    /// Marks the reservation used now: its admission moves to when its request really goes.
    fn stamp(&self) {
        self.limiter.stamp(&self.admission.lock(), self.cost());
    }

    /// Seconds more to wait after waking at the reserved instant, because requests admitted before
    /// went out later than reckoned; 0.0 when it may go.
    fn confirm(&self) -> f64 {
        let cost = self.cost();
        ns_to_secs(self.limiter.confirm(&mut self.admission.lock(), cost))
    }

    /// Gives the reservation back: its waiter gave up before its turn.
    fn give_back(&self) {
        self.limiter.give_back(&self.admission.lock(), self.cost());
    }

    /// Replaces the tokens counted so far by the actual count: refunds or charges the difference.
    fn settle(&self, actual_tokens: i64) -> PyResult<()> {
        let actual = self.cost_of(tokens_cost(actual_tokens)?.tokens);
        let counted = self.cost_of(self.tokens.swap(actual.tokens, Ordering::AcqRel));
        self.limiter.settle(&self.admission.lock(), counted, actual);
        Ok(())
    }
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

impl PyLimiter {
    fn release_slot(slf: &Bound<'_, Self>) -> PyResult<()> {
        let limiter = &slf.get().inner;
        if limiter.waiting(Waiters::Slot) > 0 {
            slf.call_method0(intern!(slf.py(), "_hand_off_slot"))?;
            Ok(())
        } else {
            Ok(limiter.release()?)
        }
    }
}

#[pymethods]
impl PyLimiter {
    #[new]
    #[pyo3(signature = (max_qps = None, max_concurrency = None, *, rpm = None, tpm = None, burst = None, limits = None, tier = None))]
    fn new(
        max_qps: Option<f64>,
        max_concurrency: Option<i64>,
        rpm: Option<f64>,
        tpm: Option<f64>,
        burst: Option<f64>,
        limits: Option<Vec<PyRef<'_, PyLimit>>>,
        tier: Option<&str>,
    ) -> PyResult<Self> {
        let mut config = LimiterConfig {
            max_qps,
            rpm,
            tpm,
            burst,
            limits: limits.unwrap_or_default().iter().map(|limit| limit.inner).collect(),
            max_concurrency,
            guard_ns: None,
        };
        let tier = tier.map(Tier::named).transpose()?;
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
    #[pyo3(signature = (tokens = 0))]
    fn try_acquire(&self, tokens: i64) -> PyResult<bool> {
        let admitted = self.inner.try_acquire(tokens_cost(tokens)?)?;
        if !admitted {
            self.inner.reject();
        }
        Ok(admitted)
    }

    /// `try_acquire` for a caller that waits when refused: a refusal is not counted.
    fn _admit_now(&self, tokens: i64) -> PyResult<bool> {
        Ok(self.inner.try_acquire(tokens_cost(tokens)?)?)
    }

    /// A slot and the rate now, with the reservation kept (for settle), or None when it would have to
    /// wait; raises when the cost can never pass or would cross a budget.
    #[pyo3(signature = (tokens, price = 0.0))]
    fn _try_reserve(&self, tokens: i64, price: f64) -> PyResult<Option<Reservation>> {
        let cost = Cost::priced(tokens_cost(tokens)?.tokens, price);
        let admitted = self.inner.try_reserve(cost)?;
        Ok(admitted.map(|admission| Reservation {
            limiter: Arc::clone(&self.inner),
            admission: SpinLock::new(admission),
            tokens: AtomicU64::new(cost.tokens),
            price,
        }))
    }

    /// The admission when nobody waits and all is free (no waiting machinery), else None; a cost that
    /// can never pass raises here, before any wait.
    fn _admit_at_once(&self, tokens: i64, price: f64) -> PyResult<Option<Reservation>> {
        let admitted = self._try_reserve(tokens, price)?;
        if admitted.is_none() {
            self.time_until_ready(tokens)?;
        }
        Ok(admitted)
    }

    /// Counts a waiter that ran out of time.
    fn _reject(&self) {
        self.inner.reject();
    }

    /// Seconds until the rate limits would admit the request; 0.0 when now.
    #[pyo3(signature = (tokens = 0))]
    fn time_until_ready(&self, tokens: i64) -> PyResult<f64> {
        Ok(ns_to_secs(self.inner.time_until_ready(tokens_cost(tokens)?)?))
    }

    /// Returns the concurrency slot taken by acquire; wakes the next waiter, if any.
    fn release(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::release_slot(slf)
    }

    /// Ends the request an admission was taken for: here, returns its concurrency slot.
    fn _release_admitted(slf: &Bound<'_, Self>, _admitted: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::release_slot(slf)
    }

    /// Settles the real token count of a request once its answer says it.
    fn _settle_admitted(&self, admitted: &Bound<'_, PyAny>, actual_tokens: i64) -> PyResult<()> {
        admitted.call_method1(intern!(admitted.py(), "settle"), (actual_tokens,))?;
        Ok(())
    }

    fn __aenter__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        if slf.get().inner.try_acquire(Cost::request(0))? {
            return Ok(Py::new(py, Ready)?.into_any());
        }
        Ok(slf.call_method0(intern!(py, "acquire"))?.unbind())
    }

    #[pyo3(signature = (*_exc))]
    fn __aexit__(slf: &Bound<'_, Self>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<Ready> {
        Self::release_slot(slf)?;
        Ok(Ready)
    }

    fn __enter__(slf: &Bound<'_, Self>) -> PyResult<()> {
        if !slf.get().inner.try_acquire(Cost::request(0))? {
            slf.call_method0(intern!(slf.py(), "acquire_blocking"))?;
        }
        Ok(())
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(slf: &Bound<'_, Self>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<()> {
        Self::release_slot(slf)
    }

    /// A slot now, unless none is free or others wait for one (`for_waiter`: the head of the line asks).
    #[pyo3(signature = (for_waiter = false))]
    fn _try_slot(&self, for_waiter: bool) -> bool {
        if for_waiter { self.inner.try_slot_for_waiter() } else { self.inner.try_slot() }
    }

    /// Returns a slot without handing it to a waiter.
    fn _release_slot(&self) -> PyResult<()> {
        Ok(self.inner.release()?)
    }

    /// Counts a slot passed from its holder straight to a waiter.
    fn _hand_over(&self) {
        self.inner.hand_over();
    }

    /// Returns the slot of a request that will not be admitted after all (it timed out or was
    /// cancelled while waiting for the rate), handing it to the next waiter.
    fn _abandon(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().inner.count_abandoned();
        Self::release_slot(slf)
    }

    /// Records the whole wait of a request that had to wait, in seconds.
    fn _record_wait(&self, seconds: f64) {
        self.inner.record_wait(secs_to_ns(seconds).unwrap_or(0));
    }

    fn _park(&self, kind: &str) {
        self.inner.park(waiters(kind));
    }

    fn _unpark(&self, kind: &str) {
        self.inner.unpark(waiters(kind));
    }

    /// Whether the fast path is closed because someone waits.
    fn _has_waiters(&self) -> bool {
        self.inner.has_waiters()
    }

    /// Reserves the rate for one request of ``tokens`` at ``price`` dollars per million of them:
    /// proceeds after ``.wait`` seconds. Raises RateLimitExceeded at once when the wait would pass
    /// ``timeout`` or the cost can never pass, BudgetExceeded when it would cross a budget.
    #[pyo3(signature = (tokens, timeout, operation = "acquire", price = 0.0))]
    fn _reserve(&self, tokens: i64, timeout: Option<f64>, operation: &str, price: f64) -> PyResult<Reservation> {
        let cost = Cost::priced(tokens_cost(tokens)?.tokens, price);
        let admission = self.inner.reserve(cost, max_wait_ns(timeout)?, operation)?;
        Ok(Reservation {
            limiter: Arc::clone(&self.inner),
            admission: SpinLock::new(admission),
            tokens: AtomicU64::new(cost.tokens),
            price,
        })
    }

    /// Sleeps with the GIL released: a thread's wait for its reserved instant.
    fn _sleep(&self, py: Python<'_>, seconds: f64) {
        if let Some(ns) = secs_to_ns(seconds) {
            py.detach(|| std::thread::sleep(Duration::from_nanos(ns)));
        }
    }

    /// Tells the limiter what an answer says of the server's limits, in one call per answer: a 429
    /// cuts the rates in force, any other answer lets them climb back; and for an admission of this
    /// limiter, what the answer's `x-ratelimit-remaining-*` and `-reset-*` say is left is held against
    /// our own count. `headers` is the answer's httpx (or httpx2) `Headers`; unreadable values are
    /// ignored.
    fn _server_answered(&self, status: u16, admitted: &Bound<'_, PyAny>, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        if status == 429 {
            self.inner.record_server_rejection();
        } else {
            self.inner.record_server_answer();
        }
        let Ok(reservation) = admitted.cast::<Reservation>() else { return Ok(()) };
        let reservation = reservation.get();
        let pairs = rate_limit_headers(headers)?;
        let said = server_left(pairs.iter().map(|(name, value)| (name.as_bytes(), value.as_bytes())));
        for (unit, left) in FOLLOWED.into_iter().zip(said) {
            if let Some((remaining, reset_ns)) = left {
                let admission = reservation.admission.lock();
                self.inner.record_server_remaining(&admission, reservation.cost(), unit, remaining, reset_ns);
            }
        }
        Ok(())
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
            remaining.set_item(&window.limit, window.remaining)?;
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
