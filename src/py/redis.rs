//! The native half of the Redis backend: `_RedisBackend` (a server and its settings), `_RedisLimiter`
//! (one shared limit) and `_Grant` (one admission). Blocking calls talk to Redis on the calling thread
//! with the GIL released; `decide_soon` runs on the runtime and completes an asyncio future from its
//! thread through `loop.call_soon_threadsafe` (measured: see README), so asyncio callers never block
//! their loop. A request's cost is its tokens at its price (dollars per million tokens), so budgets are
//! decided in Redis with the rest; `decide_locally` decides at this process's share while Redis is away.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::core::clock::secs_to_ns;
use crate::core::{Cost, Error};
use crate::py::limit::PyLimit;
use crate::py::limiter::{max_wait_ns, remaining_amount, tokens_cost};
use crate::py::redis_channel::PyLoopChannel;
use crate::redis::limiter::Counted;
use crate::redis::{Backend, BackendError, Grant, Mode, Outcome, RemoteLimiter, Timeouts, runtime};

/// One request of `tokens` LLM tokens at `price` dollars per million of them.
pub(crate) fn priced_cost(tokens: i64, price: f64) -> PyResult<Cost> {
    if !(price.is_finite() && price >= 0.0) {
        return Err(Error::config("price", format!("must be 0 or more dollars per million tokens, got {price}")).into());
    }
    Ok(Cost::priced(tokens_cost(tokens)?.tokens, price))
}

fn seconds(field: &str, secs: f64) -> PyResult<Duration> {
    match secs_to_ns(secs) {
        Some(ns) if ns > 0 => Ok(Duration::from_nanos(ns)),
        _ => Err(Error::config(field, format!("must be a positive number of seconds, got {secs}")).into()),
    }
}

/// A decision's failure as a Python exception: a cost that never passes, or Redis failing.
pub(crate) fn refusal(err: Result<Error, BackendError>) -> PyErr {
    match err {
        Ok(err) => err.into(),
        Err(err) => err.into(),
    }
}

/// The native half of `RedisBackend`; use that class.
#[pyclass(name = "_RedisBackend", module = "holysheep._holysheep", frozen, subclass)]
pub struct PyRedisBackend {
    inner: Arc<Backend>,
}

#[pymethods]
impl PyRedisBackend {
    #[new]
    #[pyo3(signature = (url, *, prefix = "holysheep", connect_timeout = 2.0, command_timeout = 1.0, tls_ca_cert = None, cluster = false))]
    fn new(
        url: &str,
        prefix: &str,
        connect_timeout: f64,
        command_timeout: f64,
        tls_ca_cert: Option<Vec<u8>>,
        cluster: bool,
    ) -> PyResult<Self> {
        let timeouts = Timeouts {
            connect: seconds("connect_timeout", connect_timeout)?,
            command: seconds("command_timeout", command_timeout)?,
        };
        Ok(Self { inner: Arc::new(Backend::new(url, prefix, timeouts, tls_ca_cert, cluster)?) })
    }

    /// The server's URL, its password shown as ``***``.
    #[getter]
    fn url(&self) -> &str {
        self.inner.url()
    }

    /// What every key of this backend starts with.
    #[getter]
    fn prefix(&self) -> &str {
        self.inner.prefix()
    }

    #[getter]
    fn connect_timeout(&self) -> f64 {
        self.inner.timeouts().connect.as_secs_f64()
    }

    #[getter]
    fn command_timeout(&self) -> f64 {
        self.inner.timeouts().command.as_secs_f64()
    }
}

/// One limit shared through Redis by every process that names the same key.
#[pyclass(name = "_RedisLimiter", module = "holysheep._holysheep", frozen)]
pub struct PyRedisLimiter {
    pub(crate) inner: Arc<RemoteLimiter>,
}

pub(crate) fn mode(reserve: bool, max_wait: Option<f64>) -> PyResult<Mode> {
    if !reserve {
        return Ok(Mode::Now);
    }
    Ok(Mode::Reserve { max_wait_us: max_wait_ns(max_wait)?.map(|ns| ns / 1_000) })
}

impl PyRedisLimiter {
    /// An outcome as Python sees it: a grant, seconds to wait before trying again, or an error.
    pub(crate) fn outcome(&self, py: Python<'_>, outcome: Outcome, reserve: bool, operation: &str) -> PyResult<Py<PyAny>> {
        match outcome {
            Outcome::Admitted(grant) => {
                let tokens = AtomicU64::new(grant.cost.tokens);
                Ok(Py::new(py, PyGrant { limiter: Arc::clone(&self.inner), grant, tokens })?.into_any())
            }
            Outcome::Later { wait_us, limit } if reserve => Err(self.inner.too_long(operation, wait_us, limit).into()),
            Outcome::Later { wait_us: us, .. } | Outcome::NoLease { retry_us: us } => {
                Ok((us as f64 / 1e6).into_pyobject(py)?.into_any().unbind())
            }
        }
    }
}

#[pymethods]
impl PyRedisLimiter {
    #[new]
    #[pyo3(signature = (backend, key, limits, max_concurrency, lease_ttl))]
    fn new(
        backend: PyRef<'_, PyRedisBackend>,
        key: &str,
        limits: Vec<PyRef<'_, PyLimit>>,
        max_concurrency: Option<u64>,
        lease_ttl: f64,
    ) -> PyResult<Self> {
        let limits = limits.iter().map(|limit| limit.inner).collect();
        let ttl = seconds("lease_ttl", lease_ttl)?;
        let limiter = RemoteLimiter::new(Arc::clone(&backend.inner), key, limits, max_concurrency, ttl)?;
        Ok(Self { inner: Arc::new(limiter) })
    }

    /// Enforces the configured rates scaled by the fractions the process's own feedback from the server
    /// put in force (requests, tokens) in its decisions from now on.
    fn follow(&self, requests: f64, tokens: f64) {
        self.inner.follow([requests, tokens]);
    }

    /// One request of ``tokens`` at ``price`` (dollars per million tokens, for budgets) decided in
    /// Redis, with a concurrency lease when ``lease``: a `_Grant`, or the seconds after which trying
    /// again could succeed (the rate, when not ``reserve``; a lease). ``reserve``: admit at a later
    /// instant too, waiting at most ``max_wait`` seconds (None: any).
    #[pyo3(signature = (tokens, max_wait, reserve, lease, operation = "acquire", price = 0.0))]
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        py: Python<'_>,
        tokens: i64,
        max_wait: Option<f64>,
        reserve: bool,
        lease: bool,
        operation: &str,
        price: f64,
    ) -> PyResult<Py<PyAny>> {
        let (cost, mode) = (priced_cost(tokens, price)?, mode(reserve, max_wait)?);
        let outcome = py.detach(|| self.inner.decide_blocking(cost, price, mode, lease, operation));
        self.outcome(py, outcome.map_err(refusal)?, reserve, operation)
    }

    /// `decide` for asyncio: returns at once; the runtime later calls ``resolve(future, ok, value)`` on
    /// the future's loop (``call_soon_threadsafe``), with what `decide` would return or raise.
    #[pyo3(signature = (future, resolve, tokens, max_wait, reserve, lease, operation, price = 0.0))]
    #[allow(clippy::too_many_arguments)]
    fn decide_soon(
        slf: Py<Self>,
        py: Python<'_>,
        future: Py<PyAny>,
        resolve: Py<PyAny>,
        tokens: i64,
        max_wait: Option<f64>,
        reserve: bool,
        lease: bool,
        operation: String,
        price: f64,
    ) -> PyResult<()> {
        let (cost, mode) = (priced_cost(tokens, price)?, mode(reserve, max_wait)?);
        let event_loop = future.bind(py).call_method0("get_loop")?.unbind();
        let limiter = Arc::clone(&slf.get().inner);
        runtime::handle()?.spawn(async move {
            let outcome = limiter.decide(cost, price, mode, lease, &operation).await;
            Python::attach(|py| {
                let (ok, value) = match outcome.map_err(refusal).and_then(|o| slf.get().outcome(py, o, reserve, &operation)) {
                    Ok(value) => (true, value),
                    Err(err) => (false, err.into_value(py).into_any()),
                };
                // A closed loop has no one left to tell; a grant nobody takes is given back by its TTL
                // (lease) or leaves the window by itself.
                let _ = event_loop.call_method1(py, "call_soon_threadsafe", (resolve, future, ok, value));
            });
        });
        Ok(())
    }

    /// `decide` by this process alone at its share of every limit and of the concurrency cap, while
    /// Redis is away (``on_error="local"``); raises BackendUnavailable when it cannot decide alone
    /// (Redis never answered yet, or its share cannot admit the request).
    #[pyo3(signature = (tokens, max_wait, reserve, lease, operation = "acquire", price = 0.0))]
    #[allow(clippy::too_many_arguments)]
    fn decide_locally(
        &self,
        py: Python<'_>,
        tokens: i64,
        max_wait: Option<f64>,
        reserve: bool,
        lease: bool,
        operation: &str,
        price: f64,
    ) -> PyResult<Py<PyAny>> {
        let (cost, mode) = (priced_cost(tokens, price)?, mode(reserve, max_wait)?);
        let outcome = self.inner.decide_locally(cost, price, mode, lease, operation);
        self.outcome(py, outcome.map_err(refusal)?, reserve, operation)
    }

    /// Seconds until a request of ``tokens`` would pass at this process's share (while Redis is away).
    #[pyo3(signature = (tokens = 0))]
    fn wait_locally(&self, tokens: i64) -> PyResult<f64> {
        let wait_ns = self.inner.wait_locally(tokens_cost(tokens)?).map_err(refusal)?;
        Ok(wait_ns as f64 / 1e9)
    }

    /// A connection for ``event_loop`` to drive for this limit's asyncio decisions (see
    /// `_LoopChannel`), connected here, blocking with the GIL released (call it off the loop), and
    /// registered with the loop by its `attach`. None when the URL is not plain TCP to one server
    /// (those decisions use `decide_soon`).
    fn open_channel(slf: &Bound<'_, Self>, event_loop: Py<PyAny>) -> PyResult<Option<PyLoopChannel>> {
        let limiter = Arc::clone(&slf.get().inner);
        let Some(connection) = slf.py().detach(|| limiter.backend().open_loop_connection())? else { return Ok(None) };
        Ok(Some(PyLoopChannel::new(slf, event_loop, connection)))
    }

    /// Seconds until the request would pass, leases held now, and units free now in each limit.
    #[pyo3(signature = (tokens = 0))]
    fn peek(&self, py: Python<'_>, tokens: i64) -> PyResult<(f64, u64, Vec<Py<PyAny>>)> {
        let cost = tokens_cost(tokens)?;
        let peek = py.detach(|| self.inner.peek_blocking(cost)).map_err(refusal)?;
        let limits = self.inner.limits().iter();
        let remaining = limits.zip(peek.remaining).map(|(limit, left)| remaining_amount(py, limit.unit(), left)).collect::<PyResult<_>>()?;
        Ok((peek.wait_us as f64 / 1e6, peek.leases, remaining))
    }

    /// Processes (limiter instances) that decided through this key lately, as of the last answer.
    #[getter]
    fn members(&self) -> u64 {
        self.inner.members()
    }

    /// The Redis keys this limit lives in (one hash slot).
    #[getter]
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.inner.keys())
    }
}

/// One admission decided in Redis: settle its tokens, give it back, release its lease.
#[pyclass(name = "_Grant", module = "holysheep._holysheep", frozen)]
pub struct PyGrant {
    limiter: Arc<RemoteLimiter>,
    grant: Grant,
    /// The tokens counted for it now: the estimate, then each settled count.
    tokens: AtomicU64,
}

impl PyGrant {
    /// What it counts for `tokens` LLM tokens, at the price it was admitted at.
    fn cost_of(&self, tokens: u64) -> Cost {
        Cost::priced(tokens, self.grant.price)
    }

    /// Replaces what was counted by `actual` and releases the lease if `release`: now (blocking, GIL
    /// released), or in the background when `wait` is false (an event loop must not block; a change
    /// lost to an outage is then not retried, and a lease is owed back to Redis until it answers).
    fn apply(&self, py: Python<'_>, counted: Cost, actual: Cost, release: bool, wait: bool) -> PyResult<()> {
        if wait {
            return Ok(py.detach(|| self.limiter.adjust_blocking(&self.grant, counted, actual, release))?);
        }
        let (limiter, grant) = (Arc::clone(&self.limiter), self.grant.clone());
        runtime::handle()?.spawn(async move { limiter.adjust(&grant, counted, actual, release).await });
        Ok(())
    }
}

#[pymethods]
impl PyGrant {
    /// Seconds to wait before proceeding (a reservation).
    #[getter]
    fn wait(&self) -> f64 {
        self.grant.wait_us as f64 / 1e6
    }

    /// When it was admitted, by Redis's clock: seconds since the epoch (0.0 when decided locally).
    #[getter]
    fn at(&self) -> f64 {
        self.grant.at_us as f64 / 1e6
    }

    /// Redis's time of the admission in whole microseconds (exact, for logs and tests; 0 when decided
    /// locally).
    #[getter]
    fn at_us(&self) -> u64 {
        self.grant.at_us
    }

    #[getter]
    fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::Acquire)
    }

    /// Whether it holds a concurrency lease (or a slot of the local share).
    #[getter]
    fn has_lease(&self) -> bool {
        self.grant.lease.is_some()
    }

    /// Whether Redis decided it (not this process alone, while Redis was away).
    #[getter]
    fn in_redis(&self) -> bool {
        matches!(self.grant.counted, Counted::InRedis(_))
    }

    /// Replaces the tokens counted so far by the actual count: refunds or charges the difference, in
    /// tokens and in dollars.
    #[pyo3(signature = (actual_tokens, wait = true))]
    fn settle(&self, py: Python<'_>, actual_tokens: i64, wait: bool) -> PyResult<()> {
        let actual = self.cost_of(tokens_cost(actual_tokens)?.tokens);
        let counted = self.cost_of(self.tokens.swap(actual.tokens, Ordering::AcqRel));
        self.apply(py, counted, actual, false, wait)
    }

    /// Takes the whole admission back (its waiter gave up) and releases its lease.
    #[pyo3(signature = (wait = true))]
    pub(crate) fn give_back(&self, py: Python<'_>, wait: bool) -> PyResult<()> {
        let counted = self.cost_of(self.tokens.swap(0, Ordering::AcqRel));
        self.apply(py, counted, Cost::default(), true, wait)
    }

    /// Releases its concurrency lease (its request is done); nothing when it holds none.
    #[pyo3(signature = (wait = true))]
    fn release(&self, py: Python<'_>, wait: bool) -> PyResult<()> {
        if self.grant.lease.is_none() {
            return Ok(());
        }
        let counted = self.cost_of(self.tokens.load(Ordering::Acquire));
        self.apply(py, counted, counted, true, wait)
    }
}

/// Stops the Redis runtime; registered with ``atexit`` by ``holysheep._redis``.
#[pyfunction]
pub fn _shutdown_redis_runtime(py: Python<'_>) {
    // Without the GIL: a runtime task finishing now may need it to complete an asyncio future.
    py.detach(runtime::shutdown);
}
