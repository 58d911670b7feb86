//! The two drivers of the core's waiting line: one for asyncio tasks, one for threads. Each only sleeps
//! and wakes; who goes when, and what a waiter that gives up hands back, is the line's (`core::line`).
//!
//! asyncio: `_Acquiring` is an awaitable that polls the line on the running loop. It waits on a plain
//! loop future, resolved by a `loop.call_later` timer (a reserved instant, a deadline) or by the line
//! waking it (a slot handed over, its turn at the rate), with no thread hop when the wake comes from
//! the loop's own thread. A task cancelled, or an awaitable dropped, leaves the line.
//! Threads: the same polling, blocked on a condition variable with the GIL released, waking every
//! `SIGNAL_CHECK` to let Ctrl-C through.

use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::thread::ThreadId;
use std::time::Duration;

use pyo3::exceptions::{PyStopIteration, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyCFunction;
use pyo3::{PyTraverseError, PyVisit, intern};

use crate::core::clock::ns_to_secs;
use crate::core::line::{Ticket, timer_leg_ns};
use crate::core::{Admission, Cost, Limiter, Next, Wake};
use crate::backend::Decided;
use crate::py::lock;

/// How often a blocked thread looks for a pending signal (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(100);


/// Sets an asyncio future's result unless it is done already (cancelled, or resolved by the other of
/// its timer and its wake-up).
#[pyfunction]
pub fn resolve_if_pending(future: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = future.py();
    if !future.call_method0(intern!(py, "done"))?.is_truthy()? {
        future.call_method1(intern!(py, "set_result"), (py.None(),))?;
    }
    Ok(())
}

/// Seconds to set a timer for, for a wait of ``seconds``: short of a long wait by more than the
/// timer's slack, to be slept again (see `core::line::timer_leg_ns`).
#[pyfunction]
#[pyo3(name = "_timer_leg")]
pub fn timer_leg(seconds: f64) -> f64 {
    crate::core::clock::secs_to_ns(seconds).map_or(0.0, |ns| ns_to_secs(timer_leg_ns(ns)))
}

static RESOLVE: PyOnceLock<Py<PyCFunction>> = PyOnceLock::new();

pub fn resolver(py: Python<'_>) -> PyResult<&Bound<'_, PyCFunction>> {
    Ok(RESOLVE.get_or_try_init(py, || wrap_pyfunction!(resolve_if_pending, py).map(Bound::unbind))?.bind(py))
}

/// Wakes a task parked on its loop: resolves the future it awaits, from the loop's thread directly,
/// from any other through `call_soon_threadsafe`.
struct LoopWaker {
    event_loop: Py<PyAny>,
    loop_thread: ThreadId,
    state: Mutex<Parked>,
}

#[derive(Default)]
struct Parked {
    woken: bool,
    future: Option<Py<PyAny>>,
}

impl Wake for LoopWaker {
    fn wake(&self) {
        let future = {
            let mut state = lock(&self.state);
            state.woken = true;
            state.future.take()
        };
        let Some(future) = future else { return };
        Python::attach(|py| {
            let future = future.bind(py);
            let resolved = if std::thread::current().id() == self.loop_thread {
                resolve_if_pending(future)
            } else {
                resolver(py).and_then(|resolve| {
                    self.event_loop.bind(py).call_method1(intern!(py, "call_soon_threadsafe"), (resolve, future)).map(drop)
                })
            };
            // A closed loop has no task left to wake.
            drop(resolved);
        });
    }
}

/// Makes the result of an admission: nothing (`acquire`), or the admission itself (for a permit or the
/// transport, which settle and release it).
pub type Finish = Box<dyn Fn(Python<'_>, Decided) -> PyResult<Py<PyAny>> + Send + Sync>;

/// The loop future a waiting task awaits now, and the timer that resolves it, if any.
#[derive(Default)]
pub struct Armed {
    future: Option<Py<PyAny>>,
    timer: Option<Py<PyAny>>,
}

impl Armed {
    /// Drops the wait in progress: its timer, and the future a wake-up would resolve.
    fn disarm(&mut self, py: Python<'_>) -> PyResult<()> {
        self.future = None;
        if let Some(timer) = self.timer.take() {
            timer.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        Ok(())
    }

    /// Awaits `future`, resolved by someone else.
    pub fn on(&mut self, future: Py<PyAny>) {
        self.future = Some(future);
    }

    /// Awaits a new future on `event_loop` that a timer resolves after `ns` (`None`: only a wake-up
    /// does); returns it, for a waker to resolve sooner.
    pub fn sleep<'py>(&mut self, event_loop: &Bound<'py, PyAny>, ns: Option<u64>) -> PyResult<Bound<'py, PyAny>> {
        let py = event_loop.py();
        let future = event_loop.call_method0(intern!(py, "create_future"))?;
        if let Some(ns) = ns {
            let timer = event_loop.call_method1(intern!(py, "call_later"), (ns_to_secs(timer_leg_ns(ns)), resolver(py)?, &future))?;
            self.timer = Some(timer.unbind());
        }
        self.future = Some(future.clone().unbind());
        Ok(future)
    }
}

/// What an asyncio waiter waits for: the core's line (a local limiter) or Redis (a shared one).
pub trait Wait: Send + Sync {
    /// Goes on once the future it armed completed (or at the start): the awaited result when admitted,
    /// else None with `armed` holding the future to wait for; raises when refused.
    fn advance(&self, py: Python<'_>, armed: &mut Armed) -> PyResult<Option<Py<PyAny>>>;
    /// Its task gave up (cancelled, closed, dropped): what it holds or is owed goes back.
    fn leave(&self);
}

struct Awaiting {
    armed: Armed,
    /// Admitted, refused or gone: it is not awaited again.
    over: bool,
}

/// An admission being waited for on an asyncio loop: `await` it.
#[pyclass(name = "_Acquiring", module = "holysheep._holysheep", frozen)]
pub struct Acquiring {
    wait: Box<dyn Wait>,
    state: Mutex<Awaiting>,
}

impl Acquiring {
    pub fn new(wait: Box<dyn Wait>) -> Self {
        Self { wait, state: Mutex::new(Awaiting { armed: Armed::default(), over: false }) }
    }

    /// Advances the wait: raises StopIteration with the result when admitted, raises when refused,
    /// or returns the future to yield to the loop.
    fn step(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let mut state = lock(&self.state);
        state.armed.disarm(py)?;
        if state.over {
            return Err(PyTypeError::new_err("an admission is awaited only once"));
        }
        match self.wait.advance(py, &mut state.armed) {
            Ok(Some(result)) => {
                state.over = true;
                Err(PyStopIteration::new_err((result,)))
            }
            Ok(None) => {
                let future = state.armed.future.as_ref().expect("a wait that goes on arms a future").clone_ref(py);
                drop(state);
                // Yield the future as awaiting it would, so the task knows to wait for it.
                future.bind(py).call_method0(intern!(py, "__await__"))?.call_method0(intern!(py, "__next__")).map(Bound::unbind)
            }
            Err(refused) => {
                state.over = true;
                Err(refused)
            }
        }
    }

    fn leave(&self, py: Python<'_>) -> PyResult<()> {
        let mut state = lock(&self.state);
        if !std::mem::replace(&mut state.over, true) {
            self.wait.leave();
        }
        state.armed.disarm(py)
    }
}

#[pymethods]
impl Acquiring {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.step(py)
    }

    fn send(&self, py: Python<'_>, _value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.step(py)
    }

    /// A task cancelled (or an exception thrown in) while waiting: it leaves, giving back what it
    /// held, and the exception goes on.
    #[pyo3(signature = (kind, value = None, _traceback = None))]
    fn throw(
        &self,
        py: Python<'_>,
        kind: &Bound<'_, PyAny>,
        value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        self.leave(py)?;
        let raised = match value {
            Some(value) if !value.is_none() => value.clone(),
            _ if kind.is_instance_of::<pyo3::exceptions::PyBaseException>() => kind.clone(),
            _ => kind.call0()?,
        };
        Err(PyErr::from_value(raised))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.leave(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Never block here: the collector runs inside `step` (an allocation there, with the lock held,
        // on this thread) or on another thread while this one holds the lock and waits for the GIL.
        // What is not visited this time is only kept alive until a later collection.
        let state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(()),
        };
        if let Some(future) = &state.armed.future {
            visit.call(future)?;
        }
        if let Some(timer) = &state.armed.timer {
            visit.call(timer)?;
        }
        Ok(())
    }
}

impl Drop for Acquiring {
    fn drop(&mut self) {
        // Never awaited to its end (its coroutine dropped): what it held goes back.
        if !std::mem::replace(&mut lock(&self.state).over, true) {
            self.wait.leave();
        }
    }
}

/// A place in the core's line, waited for on a loop.
pub struct InLine {
    limiter: Arc<Limiter>,
    waker: Arc<LoopWaker>,
    ticket: Mutex<Option<Ticket>>,
    finish: Finish,
}

impl InLine {
    /// Stands in line on the running loop for `cost`; `finish` makes the awaited result.
    pub fn start(py: Python<'_>, limiter: &Arc<Limiter>, cost: Cost, priority: i64, max_wait_ns: Option<u64>, finish: Finish) -> PyResult<Self> {
        let waker = Arc::new(LoopWaker {
            event_loop: running_loop(py)?.unbind(),
            loop_thread: std::thread::current().id(),
            state: Mutex::new(Parked::default()),
        });
        let ticket = limiter.enqueue(cost, priority, max_wait_ns, Arc::clone(&waker) as Arc<dyn Wake>);
        Ok(Self { limiter: Arc::clone(limiter), waker, ticket: Mutex::new(Some(ticket)), finish })
    }
}

/// The running event loop (raises RuntimeError outside one, as asyncio does).
pub fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    py.import(intern!(py, "asyncio"))?.call_method0(intern!(py, "get_running_loop"))
}

impl Wait for InLine {
    fn advance(&self, py: Python<'_>, armed: &mut Armed) -> PyResult<Option<Py<PyAny>>> {
        let mut ticket_slot = lock(&self.ticket);
        let Some(ticket) = *ticket_slot else {
            return Err(PyTypeError::new_err("an admission is awaited only once"));
        };
        lock(&self.waker.state).future = None;
        loop {
            let next = match self.limiter.poll(ticket) {
                Ok(next) => next,
                Err(refused) => {
                    *ticket_slot = None;
                    return Err(refused.into());
                }
            };
            let wake_at = match next {
                Next::Ready(admission) => {
                    *ticket_slot = None;
                    drop(ticket_slot);
                    return (self.finish)(py, Decided::Local(admission)).map(Some);
                }
                Next::SleepUntil(at) => Some(at),
                Next::Parked(deadline) => deadline,
            };
            let event_loop = self.waker.event_loop.bind(py);
            let future = armed.sleep(event_loop, wake_at.map(|at| at.saturating_sub(self.limiter.now_ns())))?;
            if matches!(next, Next::Parked(_)) {
                // No Python under this lock: a thread waking us holds the GIL while it waits for it.
                let mut parked = lock(&self.waker.state);
                if std::mem::take(&mut parked.woken) {
                    drop(parked);
                    armed.disarm(py)?;
                    continue;
                }
                parked.future = Some(future.unbind());
            }
            return Ok(None);
        }
    }

    fn leave(&self) {
        if let Some(ticket) = lock(&self.ticket).take() {
            self.limiter.leave(ticket);
        }
        lock(&self.waker.state).future = None;
    }
}

/// Wakes a blocked thread.
#[derive(Default)]
struct ThreadWaker {
    woken: Mutex<bool>,
    ready: Condvar,
}

impl Wake for ThreadWaker {
    fn wake(&self) {
        *lock(&self.woken) = true;
        self.ready.notify_one();
    }
}

impl ThreadWaker {
    /// Blocks until woken or `ns` have passed (`None`: until woken); true when woken.
    fn wait(&self, ns: Option<u64>) -> bool {
        let mut woken = lock(&self.woken);
        let limit = ns.map_or(SIGNAL_CHECK, |ns| Duration::from_nanos(ns).min(SIGNAL_CHECK));
        if !*woken {
            woken = self.ready.wait_timeout(woken, limit).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
        std::mem::take(&mut *woken)
    }
}

/// Waits in line on this thread, the GIL released, until admitted or refused. A pending signal's
/// exception (Ctrl-C) takes the waiter out of line and is raised.
pub fn wait_blocking(py: Python<'_>, limiter: &Arc<Limiter>, cost: Cost, priority: i64, max_wait_ns: Option<u64>) -> PyResult<Admission> {
    let waker = Arc::new(ThreadWaker::default());
    let ticket = limiter.enqueue(cost, priority, max_wait_ns, Arc::clone(&waker) as Arc<dyn Wake>);
    loop {
        let next: Result<Option<Admission>, crate::core::Error> = py.detach(|| loop {
            match limiter.poll(ticket)? {
                Next::Ready(admission) => return Ok(Some(admission)),
                Next::SleepUntil(at) => {
                    let ns = at.saturating_sub(limiter.now_ns());
                    if ns > SIGNAL_CHECK.as_nanos() as u64 {
                        waker.wait(Some(ns));
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_nanos(ns));
                }
                Next::Parked(deadline) => {
                    let woken = waker.wait(deadline.map(|at| at.saturating_sub(limiter.now_ns())));
                    if !woken {
                        return Ok(None);
                    }
                }
            }
        });
        match next {
            Ok(Some(admission)) => return Ok(admission),
            Ok(None) => {
                if let Err(signal) = py.check_signals() {
                    limiter.leave(ticket);
                    return Err(signal);
                }
            }
            Err(refused) => return Err(PyErr::from(refused)),
        }
    }
}
