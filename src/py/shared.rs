//! A limiter's Redis backend as Python drives it: one decision (`try_acquire`), a wait run on the
//! calling thread with the GIL released, or on the running event loop (the `Wait` of an `_Acquiring`).
//! The rules of a wait are `redis::shared`'s; here are only the I/O and the sleeping. An asyncio
//! decision goes out on the loop's own connection to Redis (`_LoopChannel`) once it is open, and
//! through the Redis runtime until then.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::intern;
use pyo3::prelude::*;

use crate::core::Cost;
use crate::backend::Decided;
use crate::backend::Adjustment;
use crate::py::redis::refusal;
use crate::py::lock;
use crate::py::redis_channel::PyLoopChannel;
use crate::py::waiting::{Armed, Finish, Wait, resolver, running_loop};
use crate::backend::redis::limiter::{Mode, Outcome, Place, Refused};
use crate::backend::redis::shared::{OnError, Shared, SharedWait, Step, Turn, WaitingCount};
use crate::backend::redis::{Grant, runtime};

/// How often a thread sleeping out a wait looks for a pending signal (Ctrl-C).
const SIGNAL_CHECK_NS: u64 = 100_000_000;


/// Logs the start and the end of an outage, once each.
pub fn report(py: Python<'_>, turn: Turn, on_error: OnError) {
    let message = match turn {
        Turn::Unchanged => return,
        Turn::Outage(why) => match on_error {
            OnError::FailClosed => format!("Redis unavailable, refusing shared decisions (on_error='fail_closed') until it is back: {why}"),
            _ => format!("Redis unavailable, deciding by on_error='{}' until it is back: {why}", on_error.name()),
        },
        Turn::Back => "Redis is back: shared limits decided in Redis again".to_owned(),
    };
    let logged = py
        .import(intern!(py, "logging"))
        .and_then(|logging| logging.call_method1(intern!(py, "getLogger"), ("holysheep.redis",)))
        .and_then(|logger| logger.call_method1(intern!(py, "warning"), (message,)));
    // A logging failure must not fail the decision it reports on.
    drop(logged);
}

/// One request's decision with the failure policy applied, its outage reported.
fn judged(py: Python<'_>, shared: &Shared, decided: Result<Outcome, Refused>, cost: Cost, price: f64, mode: Mode, operation: &str) -> Result<Outcome, Refused> {
    let (outcome, turn) = shared.judge(decided, cost, price, mode, operation);
    report(py, turn, shared.on_error);
    outcome
}

/// A refusal raised to the caller, counted as a rejection when it is one (not Redis failing).
fn refused(shared: &Shared, refused: Refused) -> PyErr {
    if refused.is_ok() {
        shared.rejected();
    }
    refusal(refused)
}

/// What a request asks of a shared limit.
#[derive(Clone, Copy)]
pub struct Ask<'a> {
    pub cost: Cost,
    pub price: f64,
    /// Its place among waiters of the whole fleet (higher first).
    pub priority: i64,
    pub operation: &'a str,
}

/// One decision, now or never, on this thread (the GIL released): the grant, or None when refused.
pub fn decide_now(py: Python<'_>, shared: &Arc<Shared>, ask: Ask<'_>) -> PyResult<Option<Grant>> {
    let remote = &shared.remote;
    let lease = shared.leases();
    let place = Place::newcomer(ask.priority);
    let decided = py.detach(|| remote.decide_blocking(ask.cost, ask.price, Mode::Now, lease, &place, ask.operation));
    match judged(py, shared, decided, ask.cost, ask.price, Mode::Now, ask.operation) {
        Ok(Outcome::Admitted(grant)) => {
            shared.admitted(0);
            Ok(Some(grant))
        }
        Ok(_) => {
            shared.rejected();
            Ok(None)
        }
        Err(err) => Err(refused(shared, err)),
    }
}

/// Waits on this thread, the GIL released, until admitted or refused; a pending signal's exception
/// (Ctrl-C) gives back what the wait holds and is raised.
pub fn wait_blocking(py: Python<'_>, shared: &Arc<Shared>, ask: Ask<'_>, max_wait_ns: Option<u64>) -> PyResult<Grant> {
    let _waiting = WaitingCount::new(shared);
    let (mut wait, step) = SharedWait::start(shared.now_ns(), max_wait_ns, shared.remote.place(ask.priority));
    let waited = wait_blocking_steps(py, shared, ask, &mut wait, step);
    if let Some(place) = wait.leave_line() {
        shared.remote.leave_line(&place);
    }
    waited
}

/// `wait_blocking`'s steps, until admitted or refused.
fn wait_blocking_steps(py: Python<'_>, shared: &Arc<Shared>, ask: Ask<'_>, wait: &mut SharedWait, mut step: Step) -> PyResult<Grant> {
    loop {
        step = match step {
            Step::Admitted(grant) => {
                shared.admitted(wait.waited_ns(shared.now_ns()));
                return Ok(grant);
            }
            Step::Ask { max_wait_us } => {
                let mode = Mode::Reserve { max_wait_us };
                let remote = &shared.remote;
                let place = wait.place();
                let decided = py.detach(|| remote.decide_blocking(ask.cost, ask.price, mode, shared.leases(), place, ask.operation));
                let outcome = judged(py, shared, decided, ask.cost, ask.price, mode, ask.operation).map_err(|err| refused(shared, err))?;
                wait.answered(shared.now_ns(), outcome, remote, ask.operation).map_err(|err| refused(shared, Ok(err)))?
            }
            Step::Sleep { until_ns } => {
                let left = until_ns.saturating_sub(shared.now_ns());
                py.detach(|| std::thread::sleep(Duration::from_nanos(left.min(SIGNAL_CHECK_NS))));
                if let Err(signal) = py.check_signals() {
                    if let Some(grant) = wait.abandon() {
                        Adjustment::give_back(shared, grant).in_background();
                    }
                    return Err(signal);
                }
                wait.woke(shared.now_ns())
            }
        };
    }
}

/// The answer to one asyncio decision, delivered by whoever heard it (the loop's channel, the
/// runtime) and taken by its waiter, or given back if the waiter left first.
pub struct Reply {
    shared: Arc<Shared>,
    future: Py<PyAny>,
    answer: Mutex<Answer>,
}

enum Answer {
    Pending,
    Ready(Result<Outcome, Refused>),
    /// Its waiter left: a grant that arrives now goes back.
    Abandoned,
}

impl Reply {
    fn new(shared: &Arc<Shared>, future: Py<PyAny>) -> Arc<Self> {
        Arc::new(Self { shared: Arc::clone(shared), future, answer: Mutex::new(Answer::Pending) })
    }

    /// A grant nobody will take goes back (a place in the fleet's line, its waiter's `leave` took out).
    fn let_go(&self, decided: Result<Outcome, Refused>) {
        if let Ok(Outcome::Admitted(grant)) = decided {
            Adjustment::give_back(&self.shared, grant).in_background();
        }
    }

    /// Hands over the answer, on the loop's thread.
    pub fn deliver(&self, py: Python<'_>, decided: Result<Outcome, Refused>) {
        if self.keep(decided) {
            // A future already cancelled (its task was) needs nothing.
            drop(crate::py::waiting::resolve_if_pending(self.future.bind(py)));
        }
    }

    /// Hands over the answer from another thread: the future is resolved on its loop.
    fn deliver_from_afar(&self, py: Python<'_>, event_loop: &Py<PyAny>, decided: Result<Outcome, Refused>) {
        if self.keep(decided) {
            let scheduled = resolver(py).and_then(|resolve| event_loop.bind(py).call_method1(intern!(py, "call_soon_threadsafe"), (resolve, &self.future)));
            // A closed loop has no waiter left to tell; the grant goes back when the reply is dropped.
            drop(scheduled);
        }
    }

    /// Stores the answer for the waiter; false when it left (a grant then goes back).
    fn keep(&self, decided: Result<Outcome, Refused>) -> bool {
        let mut answer = lock(&self.answer);
        match &*answer {
            Answer::Pending => {
                *answer = Answer::Ready(decided);
                true
            }
            _ => {
                drop(answer);
                self.let_go(decided);
                false
            }
        }
    }

    fn take(&self) -> Option<Result<Outcome, Refused>> {
        let mut answer = lock(&self.answer);
        match std::mem::replace(&mut *answer, Answer::Pending) {
            Answer::Ready(decided) => Some(decided),
            other => {
                *answer = other;
                None
            }
        }
    }

    fn abandon(&self) {
        let answer = std::mem::replace(&mut *lock(&self.answer), Answer::Abandoned);
        if let Answer::Ready(decided) = answer {
            self.let_go(decided);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        // Answered after its loop closed: nobody took it.
        self.abandon();
    }
}

/// The loops' channels, each with its state.
type ByLoop = Arc<Mutex<Vec<(Py<PyAny>, Channel)>>>;

/// Each event loop's connection to Redis for one shared limit.
#[derive(Default)]
pub struct Channels {
    by_loop: ByLoop,
}

enum Channel {
    /// Being connected, off the loop (connecting to an unreachable host must not stall it).
    Opening,
    Open(Py<PyLoopChannel>),
    /// Not plain TCP to one server: decisions go through the runtime.
    Unsupported,
}

fn is_closed(event_loop: &Bound<'_, PyAny>) -> bool {
    let py = event_loop.py();
    event_loop.call_method0(intern!(py, "is_closed")).and_then(|closed| closed.is_truthy()).unwrap_or(true)
}

impl Channels {
    /// This loop's channel, if open; else starts opening one (unless one is on its way) and returns
    /// None, for the decision to go through the runtime meanwhile. No Python runs under the lock (a
    /// thread switch there would leave a thread holding the GIL waiting for the lock).
    fn for_loop(&self, shared: &Shared, event_loop: &Bound<'_, PyAny>) -> Option<Py<PyLoopChannel>> {
        let py = event_loop.py();
        {
            let mut by_loop = lock(&self.by_loop);
            match by_loop.iter().position(|(other, _)| other.is(event_loop)) {
                Some(at) => match &by_loop[at].1 {
                    Channel::Open(channel) if channel.get().is_open() => return Some(channel.clone_ref(py)),
                    Channel::Opening | Channel::Unsupported => return None,
                    Channel::Open(_) => {
                        let closed = std::mem::replace(&mut by_loop[at].1, Channel::Opening);
                        drop(by_loop);
                        drop(closed);
                    }
                },
                None => by_loop.push((event_loop.clone().unbind(), Channel::Opening)),
            }
        }
        self.forget_closed_loops(py);
        self.open(shared, event_loop.clone().unbind());
        None
    }

    /// Drops the channels of loops that closed (their connections with them).
    fn forget_closed_loops(&self, py: Python<'_>) {
        let loops: Vec<Py<PyAny>> = lock(&self.by_loop).iter().map(|(other, _)| other.clone_ref(py)).collect();
        let closed: Vec<Py<PyAny>> = loops.into_iter().filter(|other| is_closed(other.bind(py))).collect();
        for event_loop in closed {
            drop(take(&self.by_loop, &event_loop));
        }
    }

    /// Connects on the runtime, then hands the channel to its loop; a failure forgets it, for the
    /// next decision to try again (as often as the backend's pause after a failure allows).
    fn open(&self, shared: &Shared, event_loop: Py<PyAny>) {
        let (remote, by_loop) = (Arc::clone(&shared.remote), Arc::clone(&self.by_loop));
        let Ok(handle) = runtime::handle() else {
            drop(take(&by_loop, &event_loop));
            return;
        };
        handle.spawn_blocking(move || {
            let opened = remote.backend().open_loop_connection();
            Python::attach(|py| {
                let channel = match opened {
                    Ok(Some(connection)) => {
                        let attached = Py::new(py, PyLoopChannel::new(&remote, event_loop.clone_ref(py), connection)).and_then(|channel| {
                            let attach = channel.bind(py).getattr(intern!(py, "attach"))?;
                            event_loop.bind(py).call_method1(intern!(py, "call_soon_threadsafe"), (attach,))?;
                            Ok(channel)
                        });
                        attached.ok().map(Channel::Open)
                    }
                    Ok(None) => Some(Channel::Unsupported),
                    Err(_) => None,
                };
                let replaced = {
                    let mut entries = lock(&by_loop);
                    match (entries.iter().position(|(other, _)| other.is(&event_loop)), channel) {
                        (Some(at), Some(channel)) => Some(std::mem::replace(&mut entries[at].1, channel)),
                        (Some(at), None) => Some(entries.remove(at).1),
                        (None, _) => None,
                    }
                };
                // Dropped with the lock released: dropping Python objects may run Python.
                drop(replaced);
            });
        });
    }

    /// This loop's open channel, if any (for tests and diagnostics).
    pub fn open_for(&self, event_loop: &Bound<'_, PyAny>) -> Option<Py<PyLoopChannel>> {
        lock(&self.by_loop).iter().find_map(|(other, channel)| match channel {
            Channel::Open(channel) if other.is(event_loop) => Some(channel.clone_ref(event_loop.py())),
            _ => None,
        })
    }
}

/// Takes `event_loop`'s entry out, for the caller to drop once the lock is released.
fn take(by_loop: &ByLoop, event_loop: &Py<PyAny>) -> Option<(Py<PyAny>, Channel)> {
    let mut entries = lock(by_loop);
    let at = entries.iter().position(|(other, _)| other.is(event_loop))?;
    Some(entries.remove(at))
}

/// A wait for a shared limit, on an asyncio loop.
pub struct InRedis {
    shared: Arc<Shared>,
    channels: Arc<Channels>,
    event_loop: Py<PyAny>,
    cost: Cost,
    price: f64,
    operation: &'static str,
    finish: Finish,
    state: Mutex<AsyncState>,
}

struct AsyncState {
    wait: SharedWait,
    /// What it does when the armed future completes.
    then: Then,
    /// Counts it while it waits.
    waiting: Option<WaitingCount>,
}

enum Then {
    /// Take this step (the first one).
    Take(Step),
    /// Read Redis's answer to a decision asked in this mode.
    Read(Arc<Reply>, Mode),
    /// Its sleep ended.
    Wake,
}

impl InRedis {
    pub fn start(py: Python<'_>, shared: &Arc<Shared>, channels: &Arc<Channels>, ask: Ask<'static>, max_wait_ns: Option<u64>, finish: Finish) -> PyResult<Self> {
        let (wait, first) = SharedWait::start(shared.now_ns(), max_wait_ns, shared.remote.place(ask.priority));
        Ok(Self {
            shared: Arc::clone(shared),
            channels: Arc::clone(channels),
            event_loop: running_loop(py)?.unbind(),
            cost: ask.cost,
            price: ask.price,
            operation: ask.operation,
            finish,
            state: Mutex::new(AsyncState { wait, then: Then::Take(first), waiting: Some(WaitingCount::new(shared)) }),
        })
    }

    /// Sends one decision for this loop's task, at `place` in the fleet's line; its answer comes to `reply`.
    fn ask(&self, py: Python<'_>, mode: Mode, place: &Place, reply: &Arc<Reply>) {
        let event_loop = self.event_loop.bind(py);
        let lease = self.shared.leases();
        if let Some(channel) = self.channels.for_loop(&self.shared, event_loop) {
            if let Err(err) = PyLoopChannel::send(channel.bind(py), self.cost, self.price, mode, lease, place, self.operation, Arc::clone(reply)) {
                reply.deliver(py, Err(Err(err)));
            }
            return;
        }
        let (remote, reply, event_loop, operation) = (Arc::clone(&self.shared.remote), Arc::clone(reply), self.event_loop.clone_ref(py), self.operation);
        let (cost, price, place) = (self.cost, self.price, place.clone());
        match runtime::handle() {
            Ok(handle) => drop(handle.spawn(async move {
                let decided = remote.decide(cost, price, mode, lease, &place, operation).await;
                Python::attach(|py| reply.deliver_from_afar(py, &event_loop, decided));
            })),
            Err(err) => reply.deliver(py, Err(Err(err))),
        }
    }

    fn admitted(&self, py: Python<'_>, state: &mut AsyncState, grant: Grant) -> PyResult<Py<PyAny>> {
        self.shared.admitted(state.wait.waited_ns(self.shared.now_ns()));
        state.waiting = None;
        (self.finish)(py, Decided::Redis { shared: Arc::clone(&self.shared), grant })
    }
}

impl Wait for InRedis {
    fn advance(&self, py: Python<'_>, armed: &mut Armed) -> PyResult<Option<Py<PyAny>>> {
        let mut state = lock(&self.state);
        let mut step = match std::mem::replace(&mut state.then, Then::Wake) {
            Then::Take(step) => step,
            Then::Wake => state.wait.woke(self.shared.now_ns()),
            Then::Read(reply, mode) => match reply.take() {
                None => {
                    // Woken before the answer came: wait on for it.
                    armed.on(reply.future.clone_ref(py));
                    state.then = Then::Read(reply, mode);
                    return Ok(None);
                }
                Some(decided) => self.read(py, &mut state, decided, mode)?,
            },
        };
        loop {
            match step {
                Step::Admitted(grant) => return self.admitted(py, &mut state, grant).map(Some),
                Step::Sleep { until_ns } => {
                    armed.sleep(self.event_loop.bind(py), Some(until_ns.saturating_sub(self.shared.now_ns())))?;
                    state.then = Then::Wake;
                    return Ok(None);
                }
                Step::Ask { max_wait_us } => {
                    let mode = Mode::Reserve { max_wait_us };
                    let future = self.event_loop.bind(py).call_method0(intern!(py, "create_future"))?.unbind();
                    let reply = Reply::new(&self.shared, future);
                    self.ask(py, mode, state.wait.place(), &reply);
                    match reply.take() {
                        // Failed at once (a closed channel, the pause after a failure): decided now.
                        Some(decided) => step = self.read(py, &mut state, decided, mode)?,
                        None => {
                            armed.on(reply.future.clone_ref(py));
                            state.then = Then::Read(reply, mode);
                            return Ok(None);
                        }
                    }
                }
            }
        }
    }

    fn leave(&self) {
        let mut state = lock(&self.state);
        if let Then::Read(reply, _) = std::mem::replace(&mut state.then, Then::Wake) {
            reply.abandon();
        }
        if let Some(grant) = state.wait.abandon() {
            Adjustment::give_back(&self.shared, grant).in_background();
        }
        if let Some(place) = state.wait.leave_line() {
            self.shared.remote.leave_line(&place);
        }
        state.waiting = None;
    }
}

impl InRedis {
    /// The next step after Redis's answer, the failure policy applied; raises when refused.
    fn read(&self, py: Python<'_>, state: &mut AsyncState, decided: Result<Outcome, Refused>, mode: Mode) -> PyResult<Step> {
        let outcome = judged(py, &self.shared, decided, self.cost, self.price, mode, self.operation);
        let step = outcome.and_then(|outcome| state.wait.answered(self.shared.now_ns(), outcome, &self.shared.remote, self.operation).map_err(Ok));
        step.map_err(|err| {
            state.waiting = None;
            if let Some(place) = state.wait.leave_line() {
                self.shared.remote.leave_line(&place);
            }
            refused(&self.shared, err)
        })
    }
}
