//! `_LoopChannel`: one shared limit's connection to Redis driven by one asyncio event loop, so an
//! asyncio decision crosses no thread (see `crate::redis::loop_connection`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::py::redis::{PyGrant, PyRedisLimiter, mode, priced_cost, refusal};
use crate::redis::BackendError;
use crate::redis::limiter::Ask;
use crate::redis::loop_connection::LoopConnection;

/// A request sent on a `_LoopChannel`, waiting for its answer.
struct Pending {
    future: Py<PyAny>,
    ask: Ask,
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
    /// A channel over `connection` for `event_loop`; `attach` registers it with the loop.
    pub fn new(limiter: &Bound<'_, PyRedisLimiter>, event_loop: Py<PyAny>, connection: LoopConnection) -> Self {
        Self {
            limiter: limiter.clone().unbind(),
            event_loop,
            state: Mutex::new(Channel { connection: Some(connection), pending: VecDeque::new(), watchdog: false }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Channel> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the channel after a failure: every waiting future gets the error, and the backend's
    /// pause starts, as for any failed call. Redis may still run what was sent (after a stall): the
    /// leases those requests asked for are owed back.
    fn close(&self, py: Python<'_>, err: BackendError) {
        let (connection, pending) = {
            let mut state = self.state();
            (state.connection.take(), std::mem::take(&mut state.pending))
        };
        if let Some(connection) = connection {
            let _ = self.event_loop.call_method1(py, "remove_reader", (connection.fd(),));
        }
        let limiter = &self.limiter.get().inner;
        for request in pending {
            let error = PyErr::from(limiter.gave_up(request.ask, err.clone())).into_value(py);
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
    #[pyo3(signature = (future, tokens, max_wait, reserve, lease, operation, price = 0.0))]
    #[allow(clippy::too_many_arguments)]
    fn decide(
        slf: &Bound<'_, Self>,
        future: Py<PyAny>,
        tokens: i64,
        max_wait: Option<f64>,
        reserve: bool,
        lease: bool,
        operation: String,
        price: f64,
    ) -> PyResult<()> {
        let this = slf.get();
        let (cost, mode) = (priced_cost(tokens, price)?, mode(reserve, max_wait)?);
        let limiter = &this.limiter.get().inner;
        let arm = {
            let mut state = this.state();
            let Some(connection) = state.connection.as_mut() else {
                return Err(BackendError::Unavailable { message: "the connection to Redis closed".into() }.into());
            };
            let (call, ask) = limiter.ask(cost, price, mode, lease);
            if let Err(err) = connection.send(&call.packed()) {
                drop(state);
                let err = limiter.gave_up(ask, limiter.backend().failed(err.into()));
                this.close(slf.py(), err.clone());
                return Err(err.into());
            }
            state.pending.push_back(Pending { future, ask, reserve, operation, sent: Instant::now() });
            !state.watchdog
        };
        if arm {
            Self::arm_watchdog(slf, limiter.backend().timeouts().command)?;
        }
        Ok(())
    }

    /// Registers it with its loop, to be called when answers arrive; on the loop's thread.
    fn attach(slf: &Bound<'_, Self>) -> PyResult<()> {
        let Some(fd) = slf.get().state().connection.as_ref().map(LoopConnection::fd) else { return Ok(()) };
        slf.get().event_loop.call_method1(slf.py(), "add_reader", (fd, slf.getattr("_on_readable")?))?;
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
                Ok(value) => limiter_py.inner.interpret(value, request.ask, &request.operation),
                Err(err) => Err(Err(limiter_py.inner.gave_up(request.ask, limiter_py.inner.backend().failed(err)))),
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
