//! `_LoopChannel`: one shared limit's connection to Redis driven by one asyncio event loop, so an
//! asyncio decision crosses no thread (see `crate::backend::redis::tcp_connection`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::core::Cost;
use crate::py::lock;
use crate::py::shared::Reply;
use crate::backend::redis::limiter::{Ask, Mode, Place};
use crate::backend::redis::scripts::Call;
use crate::backend::redis::tcp_connection::TcpConnection;
use crate::backend::redis::{BackendError, RemoteLimiter, closed_by_server};

/// A request sent on a `_LoopChannel`, waiting for its answer.
struct Pending {
    /// What it asks: a decision, or loading the scripts the server lost.
    kind: Kind,
    sent: Instant,
}

enum Kind {
    Decision {
        reply: Arc<Reply>,
        ask: Ask,
        operation: &'static str,
        /// The call, kept to send once more if the server lost the scripts or closed the connection
        /// before answering (`None` once it was sent again: never a third time).
        call: Option<Call>,
    },
    /// Its answer is the next decision's business, not the caller's: a failure shows there.
    Load,
}

struct Channel {
    /// `None` once closed by a failure; the limiter then opens a new channel.
    connection: Option<TcpConnection>,
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
    limiter: Arc<RemoteLimiter>,
    event_loop: Py<PyAny>,
    state: Mutex<Channel>,
}

impl PyLoopChannel {
    /// A channel over `connection` for `event_loop`; `attach` registers it with the loop.
    pub fn new(limiter: &Arc<RemoteLimiter>, event_loop: Py<PyAny>, connection: TcpConnection) -> Self {
        Self {
            limiter: Arc::clone(limiter),
            event_loop,
            state: Mutex::new(Channel { connection: Some(connection), pending: VecDeque::new(), watchdog: false }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Channel> {
        lock(&self.state)
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
        for request in pending {
            if let Kind::Decision { reply, ask, .. } = request.kind {
                reply.deliver(py, Err(Err(self.limiter.gave_up(ask, err.clone()))));
            }
        }
    }

    /// A failure of the connection: when the server closed it before answering (a restart closes them
    /// all), a new connection is opened and every request waiting is sent again on it (a decision that
    /// Redis ran before closing then runs twice: it counts twice, never less), so a restart costs the
    /// callers no error; else, or when that fails too, the channel ends (`close`). Err when it ended.
    fn failed(slf: &Bound<'_, Self>, err: redis::RedisError) -> Result<(), BackendError> {
        let this = slf.get();
        let closed = closed_by_server(&err);
        let err = this.limiter.backend().failed(err);
        if closed && this.reopen(slf).is_ok() {
            return Ok(());
        }
        this.close(slf.py(), err.clone());
        Err(err)
    }

    /// Opens a new connection in place of the closed one and sends every request waiting on it, once.
    fn reopen(&self, slf: &Bound<'_, Self>) -> Result<(), ()> {
        let py = slf.py();
        let mut state = self.state();
        if state.pending.iter().any(|request| matches!(request.kind, Kind::Decision { call: None, .. })) {
            return Err(());
        }
        let Ok(Some(mut connection)) = self.limiter.backend().open_loop_connection() else { return Err(()) };
        let now = Instant::now();
        state.pending.retain(|request| matches!(request.kind, Kind::Decision { .. }));
        for request in state.pending.iter_mut() {
            let Kind::Decision { call, .. } = &mut request.kind else { continue };
            let again = call.take().map(|call| call.again());
            let Some(again) = again else { return Err(()) };
            connection.send(&again.packed()).map_err(drop)?;
            request.sent = now;
        }
        let fd = connection.fd();
        let closed = state.connection.replace(connection);
        // No Python runs under the lock: it may come back here (a finalizer that decides).
        drop(state);
        if let Some(closed) = closed {
            let _ = self.event_loop.call_method1(py, "remove_reader", (closed.fd(),));
        }
        let on_readable = slf.getattr("_on_readable").map_err(drop)?;
        self.event_loop.call_method1(py, "add_reader", (fd, on_readable)).map_err(drop)?;
        Ok(())
    }

    /// Sends one decision for its loop's task; `reply` gets the answer, or the failure when the request
    /// cannot be written (see `failed`). Fails at once when the channel is closed.
    #[allow(clippy::too_many_arguments)]
    pub fn send(slf: &Bound<'_, Self>, cost: Cost, price: f64, mode: Mode, lease: bool, place: &Place, operation: &'static str, reply: Arc<Reply>) -> Result<(), BackendError> {
        let this = slf.get();
        let limiter = &this.limiter;
        let arm = {
            let mut state = this.state();
            let Some(connection) = state.connection.as_mut() else {
                return Err(BackendError::Unavailable { message: "the connection to Redis closed".into() });
            };
            let (call, ask) = limiter.ask(cost, price, mode, lease, place);
            let sent = connection.send(&call.packed());
            state.pending.push_back(Pending { kind: Kind::Decision { reply, ask, operation, call: Some(call) }, sent: Instant::now() });
            let arm = !state.watchdog;
            drop(state);
            if let Err(err) = sent {
                // Its reply gets the outcome either way: its answer on a new connection, or the failure.
                let _ = Self::failed(slf, err.into());
            }
            arm
        };
        if arm {
            // Without its watchdog a stalled Redis would leave the request unanswered for good.
            Self::arm_watchdog(slf, limiter.backend().timeouts().command)
                .map_err(|err| BackendError::Unavailable { message: format!("cannot time the request to Redis: {err}") })?;
        }
        Ok(())
    }

    pub fn is_open(&self) -> bool {
        self.state().connection.is_some()
    }

    /// The server lost the scripts (restarted, flushed, a replica promoted): loads them and sends
    /// `call` once more, its answer going to the same `reply`, so no error reaches the caller.
    fn load_and_resend(&self, py: Python<'_>, call: Call, reply: Arc<Reply>, ask: Ask, operation: &'static str) {
        let again = call.again();
        let mut state = self.state();
        let sent = match state.connection.as_mut() {
            Some(connection) => connection.send(&again.load_command().get_packed_command()).and_then(|()| connection.send(&again.packed())),
            None => Err(std::io::Error::from(std::io::ErrorKind::NotConnected)),
        };
        match sent {
            Ok(()) => {
                let now = Instant::now();
                state.pending.push_back(Pending { kind: Kind::Load, sent: now });
                state.pending.push_back(Pending { kind: Kind::Decision { reply, ask, operation, call: None }, sent: now });
            }
            Err(err) => {
                drop(state);
                let err = self.limiter.backend().failed(err.into());
                self.close(py, err.clone());
                reply.deliver(py, Err(Err(self.limiter.gave_up(ask, err))));
            }
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

#[pymethods]
impl PyLoopChannel {
    /// Registers it with its loop, to be called when answers arrive; on the loop's thread.
    fn attach(slf: &Bound<'_, Self>) -> PyResult<()> {
        let Some(fd) = slf.get().state().connection.as_ref().map(TcpConnection::fd) else { return Ok(()) };
        slf.get().event_loop.call_method1(slf.py(), "add_reader", (fd, slf.getattr("_on_readable")?))?;
        Ok(())
    }

    /// Whether it can still send (a failure closes it for good).
    #[getter(is_open)]
    fn open_now(&self) -> bool {
        self.is_open()
    }

    /// Called by the loop when answers arrived: completes their futures, in order.
    fn _on_readable(slf: &Bound<'_, Self>) {
        let (this, py) = (slf.get(), slf.py());
        let limiter = &this.limiter;
        let received = match this.state().connection.as_mut() {
            Some(connection) => connection.receive(),
            None => return,
        };
        let answers = match received {
            Ok(answers) => answers,
            Err(err) => {
                let _ = Self::failed(slf, err);
                return;
            }
        };
        for answer in answers {
            let Some(request) = this.state().pending.pop_front() else { break };
            let Kind::Decision { reply, ask, operation, call } = request.kind else { continue };
            let decided = match answer.extract_error() {
                Ok(value) => limiter.interpret(value, ask, operation),
                Err(err) => match call {
                    Some(call) if limiter.backend().dialect().missing(&err).is_some() => {
                        this.load_and_resend(py, call, reply, ask, operation);
                        continue;
                    }
                    _ => Err(Err(limiter.gave_up(ask, limiter.backend().failed(err)))),
                },
            };
            reply.deliver(py, decided);
        }
    }

    /// Fails the channel when its oldest request went unanswered past the command timeout.
    fn _check_overdue(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let backend = this.limiter.backend();
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
}
