//! The native half of the Redis backend: `_RedisBackend` (a server and its settings), `_RedisLimiter`
//! (one shared limit) and `_Grant` (one admission). Blocking calls talk to Redis on the calling thread
//! with the GIL released; `decide_soon` runs on the runtime and completes an asyncio future from its
//! thread through `loop.call_soon_threadsafe` (measured: see README), so asyncio callers never block
//! their loop.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::core::clock::secs_to_ns;
use crate::core::{Cost, Error};
use crate::py::limit::PyLimit;
use crate::py::limiter::{max_wait_ns, tokens_cost};
use crate::redis::loop_connection::LoopConnection;
use crate::redis::{Backend, BackendError, Grant, Mode, Outcome, RemoteLimiter, Timeouts, runtime};

fn seconds(field: &str, secs: f64) -> PyResult<Duration> {
    match secs_to_ns(secs) {
        Some(ns) if ns > 0 => Ok(Duration::from_nanos(ns)),
        _ => Err(Error::config(field, format!("must be a positive number of seconds, got {secs}")).into()),
    }
}

/// A decision's failure as a Python exception: a cost that never passes, or Redis failing.
fn refusal(err: Result<Error, BackendError>) -> PyErr {
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
    #[pyo3(signature = (url, *, prefix = "holysheep", connect_timeout = 2.0, command_timeout = 1.0))]
    fn new(url: &str, prefix: &str, connect_timeout: f64, command_timeout: f64) -> PyResult<Self> {
        let timeouts = Timeouts {
            connect: seconds("connect_timeout", connect_timeout)?,
            command: seconds("command_timeout", command_timeout)?,
        };
        Ok(Self { inner: Arc::new(Backend::new(url, prefix, timeouts)?) })
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
    inner: Arc<RemoteLimiter>,
}

fn mode(reserve: bool, max_wait: Option<f64>) -> PyResult<Mode> {
    if !reserve {
        return Ok(Mode::Now);
    }
    Ok(Mode::Reserve { max_wait_us: max_wait_ns(max_wait)?.map(|ns| ns / 1_000) })
}

impl PyRedisLimiter {
    /// An outcome as Python sees it: a grant, seconds to wait before trying again, or an error.
    fn outcome(&self, py: Python<'_>, outcome: Outcome, reserve: bool, operation: &str) -> PyResult<Py<PyAny>> {
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

    /// One request of ``tokens`` decided in Redis, with a concurrency lease when ``lease``: a `_Grant`,
    /// or the seconds after which trying again could succeed (the rate, when not ``reserve``; a lease).
    /// ``reserve``: admit at a later instant too, waiting at most ``max_wait`` seconds (None: any).
    #[pyo3(signature = (tokens, max_wait, reserve, lease, operation = "acquire"))]
    fn decide(
        &self,
        py: Python<'_>,
        tokens: i64,
        max_wait: Option<f64>,
        reserve: bool,
        lease: bool,
        operation: &str,
    ) -> PyResult<Py<PyAny>> {
        let (cost, mode) = (tokens_cost(tokens)?, mode(reserve, max_wait)?);
        let outcome = py.detach(|| self.inner.decide_blocking(cost, mode, lease, operation));
        self.outcome(py, outcome.map_err(refusal)?, reserve, operation)
    }

    /// `decide` for asyncio: returns at once; the runtime later calls ``resolve(future, ok, value)`` on
    /// the future's loop (``call_soon_threadsafe``), with what `decide` would return or raise.
    #[pyo3(signature = (future, resolve, tokens, max_wait, reserve, lease, operation))]
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
    ) -> PyResult<()> {
        let (cost, mode) = (tokens_cost(tokens)?, mode(reserve, max_wait)?);
        let event_loop = future.bind(py).call_method0("get_loop")?.unbind();
        let limiter = Arc::clone(&slf.get().inner);
        runtime::handle()?.spawn(async move {
            let outcome = limiter.decide(cost, mode, lease, &operation).await;
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

    /// A connection driven by ``event_loop`` for this limit's asyncio decisions (see `_LoopChannel`);
    /// None when the URL is not plain TCP (those decisions use `decide_soon`).
    fn open_channel(slf: &Bound<'_, Self>, event_loop: Py<PyAny>) -> PyResult<Option<Py<PyLoopChannel>>> {
        let py = slf.py();
        let limiter = Arc::clone(&slf.get().inner);
        let Some(connection) = py.detach(|| limiter.backend().open_loop_connection())? else { return Ok(None) };
        let fd = connection.fd();
        let channel = Py::new(
            py,
            PyLoopChannel {
                limiter: slf.clone().unbind(),
                event_loop: event_loop.clone_ref(py),
                state: Mutex::new(Channel { connection: Some(connection), pending: VecDeque::new(), watchdog: false }),
            },
        )?;
        event_loop.call_method1(py, "add_reader", (fd, channel.getattr(py, "_on_readable")?))?;
        Ok(Some(channel))
    }

    /// Seconds until the request would pass, leases held now, and units free now in each limit.
    #[pyo3(signature = (tokens = 0))]
    fn peek(&self, py: Python<'_>, tokens: i64) -> PyResult<(f64, u64, Vec<u64>)> {
        let cost = tokens_cost(tokens)?;
        let peek = py.detach(|| self.inner.peek_blocking(cost)).map_err(refusal)?;
        Ok((peek.wait_us as f64 / 1e6, peek.leases, peek.remaining))
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
    /// Replaces what was counted by `actual` and releases the lease if `release`: now (blocking, GIL
    /// released), or in the background when `wait` is false (an event loop must not block; a change
    /// lost to an outage is then not retried, and a lease comes back by its TTL).
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

    /// When it was admitted, by Redis's clock: seconds since the epoch.
    #[getter]
    fn at(&self) -> f64 {
        self.grant.at_us as f64 / 1e6
    }

    /// Redis's time of the admission in whole microseconds (exact, for logs and tests).
    #[getter]
    fn at_us(&self) -> u64 {
        self.grant.at_us
    }

    #[getter]
    fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::Acquire)
    }

    /// Whether it holds a concurrency lease.
    #[getter]
    fn has_lease(&self) -> bool {
        self.grant.lease.is_some()
    }

    /// Replaces the tokens counted so far by the actual count: refunds or charges the difference.
    #[pyo3(signature = (actual_tokens, wait = true))]
    fn settle(&self, py: Python<'_>, actual_tokens: i64, wait: bool) -> PyResult<()> {
        let actual = tokens_cost(actual_tokens)?;
        let counted = Cost::request(self.tokens.swap(actual.tokens, Ordering::AcqRel));
        self.apply(py, counted, actual, false, wait)
    }

    /// Takes the whole admission back (its waiter gave up) and releases its lease.
    #[pyo3(signature = (wait = true))]
    fn give_back(&self, py: Python<'_>, wait: bool) -> PyResult<()> {
        let counted = Cost::request(self.tokens.swap(0, Ordering::AcqRel));
        self.apply(py, counted, Cost::default(), true, wait)
    }

    /// Releases its concurrency lease (its request is done); nothing when it holds none.
    #[pyo3(signature = (wait = true))]
    fn release(&self, py: Python<'_>, wait: bool) -> PyResult<()> {
        if self.grant.lease.is_none() {
            return Ok(());
        }
        let counted = Cost::request(self.tokens.load(Ordering::Acquire));
        self.apply(py, counted, counted, true, wait)
    }
}

/// A request sent on a `_LoopChannel`, waiting for its answer.
struct Pending {
    future: Py<PyAny>,
    lease_id: String,
    cost: Cost,
    reserve: bool,
    operation: String,
    sent: Instant,
}

struct Channel {
    /// `None` once closed by a failure; the limiter then opens a new channel.
    connection: Option<LoopConnection>,
    /// Requests in the order they were sent, which is the order Redis answers them.
    pending: VecDeque<Pending>,
    /// Whether a `_check_overdue` call is scheduled on the loop.
    watchdog: bool,
}

/// One limit's connection driven by one asyncio event loop: `decide` writes the request and returns;
/// the loop calls `_on_readable` when answers arrive and each future is completed right there, on
/// the loop's thread. Used only from that loop.
#[pyclass(name = "_LoopChannel", module = "holysheep._holysheep", frozen)]
pub struct PyLoopChannel {
    limiter: Py<PyRedisLimiter>,
    event_loop: Py<PyAny>,
    state: Mutex<Channel>,
}

impl PyLoopChannel {
    fn state(&self) -> std::sync::MutexGuard<'_, Channel> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the channel after a failure: every waiting future gets the error, and the backend's
    /// pause starts, as for any failed call.
    fn close(&self, py: Python<'_>, err: BackendError) {
        let (connection, pending) = {
            let mut state = self.state();
            (state.connection.take(), std::mem::take(&mut state.pending))
        };
        if let Some(connection) = connection {
            let _ = self.event_loop.call_method1(py, "remove_reader", (connection.fd(),));
        }
        for request in pending {
            let error = PyErr::from(err.clone()).into_value(py);
            settle_future(py, &request.future, Err(error.into_any()));
        }
    }

    fn arm_watchdog(slf: &Bound<'_, Self>, after: Duration) -> PyResult<()> {
        let this = slf.get();
        this.state().watchdog = true;
        let check = slf.getattr("_check_overdue")?;
        this.event_loop.call_method1(slf.py(), "call_later", (after.as_secs_f64(), check))?;
        Ok(())
    }
}

/// Completes `future` unless its waiter was cancelled meanwhile; a grant nobody takes goes back.
fn settle_future(py: Python<'_>, future: &Py<PyAny>, result: Result<Py<PyAny>, Py<PyAny>>) {
    let future = future.bind(py);
    if future.call_method0("done").and_then(|done| done.extract::<bool>()).unwrap_or(true) {
        if let Ok(value) = &result
            && let Ok(grant) = value.bind(py).cast::<PyGrant>()
        {
            let _ = grant.get().give_back(py, false);
        }
        return;
    }
    let _ = match result {
        Ok(value) => future.call_method1("set_result", (value,)),
        Err(error) => future.call_method1("set_exception", (error,)),
    };
}

#[pymethods]
impl PyLoopChannel {
    /// `_RedisLimiter.decide` for the loop's tasks: sends the request and returns; ``future`` gets
    /// what `decide` would return or raise.
    #[pyo3(signature = (future, tokens, max_wait, reserve, lease, operation))]
    #[allow(clippy::too_many_arguments)]
    fn decide(
        slf: &Bound<'_, Self>,
        future: Py<PyAny>,
        tokens: i64,
        max_wait: Option<f64>,
        reserve: bool,
        lease: bool,
        operation: String,
    ) -> PyResult<()> {
        let this = slf.get();
        let (cost, mode) = (tokens_cost(tokens)?, mode(reserve, max_wait)?);
        let limiter = &this.limiter.get().inner;
        let lease_id = limiter.lease_id(lease);
        let request = limiter.acquire_invocation(cost, mode, &lease_id).packed();
        let arm = {
            let mut state = this.state();
            let Some(connection) = state.connection.as_mut() else {
                return Err(BackendError::Unavailable { message: "the connection to Redis closed".into() }.into());
            };
            if let Err(err) = connection.send(&request) {
                drop(state);
                let err = limiter.backend().failed(err.into());
                this.close(slf.py(), err.clone());
                return Err(err.into());
            }
            state.pending.push_back(Pending { future, lease_id, cost, reserve, operation, sent: Instant::now() });
            !state.watchdog
        };
        if arm {
            Self::arm_watchdog(slf, limiter.backend().timeouts().command)?;
        }
        Ok(())
    }

    /// Whether it can still send (a failure closes it for good).
    #[getter]
    fn is_open(&self) -> bool {
        self.state().connection.is_some()
    }

    /// Called by the loop when answers arrived: completes their futures, in order.
    fn _on_readable(&self, py: Python<'_>) {
        let limiter_py = self.limiter.get();
        let received = match self.state().connection.as_mut() {
            Some(connection) => connection.receive(),
            None => return,
        };
        let answers = match received {
            Ok(answers) => answers,
            Err(err) => return self.close(py, limiter_py.inner.backend().failed(err)),
        };
        for answer in answers {
            let Some(request) = self.state().pending.pop_front() else { break };
            let outcome = match answer.extract_error() {
                Ok(value) => limiter_py.inner.interpret(value, request.lease_id, request.cost, &request.operation),
                Err(err) => Err(Err(limiter_py.inner.backend().failed(err))),
            };
            let result = outcome
                .map_err(refusal)
                .and_then(|outcome| limiter_py.outcome(py, outcome, request.reserve, &request.operation))
                .map_err(|err| err.into_value(py).into_any());
            settle_future(py, &request.future, result);
        }
    }

    /// Fails the channel when its oldest request went unanswered past the command timeout.
    fn _check_overdue(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let backend = this.limiter.get().inner.backend();
        let timeout = backend.timeouts().command;
        let oldest = {
            let mut state = this.state();
            state.watchdog = false;
            state.pending.front().map(|request| request.sent.elapsed())
        };
        match oldest {
            Some(age) if age >= timeout => {
                let message = format!("Redis at {} did not answer within {} ms", backend.url(), timeout.as_millis());
                let err = backend.failed(redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, message)));
                this.close(slf.py(), err);
                Ok(())
            }
            Some(age) => Self::arm_watchdog(slf, timeout - age),
            None => Ok(()),
        }
    }

    /// Closes it (its loop is going away).
    fn close_channel(&self, py: Python<'_>) {
        self.close(py, BackendError::Unavailable { message: "the connection to Redis was closed".into() });
    }
}

/// Stops the Redis runtime; registered with ``atexit`` by ``holysheep._redis``.
#[pyfunction]
pub fn _shutdown_redis_runtime(py: Python<'_>) {
    // Without the GIL: a runtime task finishing now may need it to complete an asyncio future.
    py.detach(runtime::shutdown);
}
