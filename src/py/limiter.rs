//! `HolySheepRateLimiter`: one native class holding its limits once, over a backend: the core (this
//! process) or Redis (a fleet). Every admission, the no-wait fast paths (`try_acquire`, `async with`
//! and `with` when free) and the waits, in the core's line through the drivers of `waiting.rs` (on the
//! caller's event loop, or its thread with the GIL released) or in Redis through those of `shared.rs`.

use std::ffi::CStr;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyRuntimeError, PyStopIteration};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyList, PySuper, PyTuple, PyType};

use crate::core::clock::{ns_to_secs, secs_to_ns};
use crate::core::alerts::{BUDGET_WARNINGS, Scope};
use crate::core::limiter::Limiter;
use crate::core::{Cost, Error, LimiterConfig, Tier, Unit};
use crate::backend::Decided;
use crate::py::admission::PyAdmission;
use crate::py::alerts::{self, BudgetWarning, Callback};
use crate::py::fastcall::{self, Call, Method};
use crate::py::{args, lock};
use crate::py::limit::PyLimit;
use crate::py::redis::{PyRedisBackend, refusal};
use crate::py::shared::{self, Ask, Channels, InRedis};
use crate::py::waiting::{Acquiring, Finish, InLine, wait_blocking};
use crate::backend::redis::RemoteLimiter;
use crate::backend::redis::shared::{OnError, Shared};

/// An awaitable that is already done, with its result: what `acquire` and `async with` return when
/// nothing had to wait.
#[pyclass(name = "_Ready", module = "holysheep._holysheep", frozen)]
pub struct Ready(Option<Py<PyAny>>);

static DONE: PyOnceLock<Py<Ready>> = PyOnceLock::new();

impl Ready {
    /// Done with `result`: for None, one shared instance, so the free `async with` allocates nothing.
    pub fn with(py: Python<'_>, result: Py<PyAny>) -> PyResult<Py<Ready>> {
        if result.is_none(py) {
            return DONE.get_or_try_init(py, || Py::new(py, Ready(None))).map(|done| done.clone_ref(py));
        }
        Py::new(py, Ready(Some(result)))
    }
}

#[pymethods]
impl Ready {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Ends the await with the result. Ending without raising (no StopIteration made) is how an
    /// iterator ends with None, and the cheapest.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match &self.0 {
            None => Ok(None),
            Some(result) => Err(PyStopIteration::new_err((result.clone_ref(py),))),
        }
    }
}

/// What a limit has left as `stats()` shows it: a count of requests or tokens, dollars for a budget.
fn remaining_amount(py: Python<'_>, unit: Unit, counted: u64) -> PyResult<Py<PyAny>> {
    Ok(match unit {
        Unit::Usd => unit.amount_of(counted).into_pyobject(py)?.into_any().unbind(),
        Unit::Requests | Unit::Tokens => counted.into_pyobject(py)?.into_any().unbind(),
    })
}

/// Where a limiter decides.
enum Backend {
    /// In this process, in the core.
    Local,
    /// In Redis, shared by every process naming the same key.
    Redis(Redis),
}

struct Redis {
    shared: Arc<Shared>,
    channels: Arc<Channels>,
    backend: Py<PyRedisBackend>,
    key: String,
    held: Held,
}

/// Admissions holding a lease taken by `acquire`, `try_acquire` or `async with` and not yet released,
/// most recent last (`release` ends one; leases are alike).
#[derive(Clone, Default)]
struct Held(Arc<Mutex<Vec<Py<PyAdmission>>>>);

impl Held {
    fn push(&self, admission: Py<PyAdmission>) {
        lock(&self.0).push(admission);
    }

    fn pop(&self) -> Option<Py<PyAdmission>> {
        lock(&self.0).pop()
    }

    fn all(&self, py: Python<'_>) -> Vec<Py<PyAdmission>> {
        lock(&self.0).iter().map(|held| held.clone_ref(py)).collect()
    }
}

/// Keeps requests inside rate limits and a concurrency cap; waiters are served in arrival order
/// (higher ``priority`` first).
///
///     lim = HolySheepRateLimiter(max_qps=10, max_concurrency=20)
///     async with lim:
///         await client.chat.completions.create(...)
///
/// A limit of n per period admits at most n in ANY interval of that length, so a server enforcing the
/// same limit never answers 429 because of us. max_qps, rpm: requests per second, per minute.
/// max_concurrency: requests in flight at once. tpm: LLM tokens per minute (pass ``tokens=``).
/// burst: pace max_qps/rpm evenly (GCRA) with room for this many at once. limits: more `Limit`s, all
/// of which must admit a request. tier: a HolySheep plan's limits (explicit rpm/tpm/max_concurrency
/// override it). backend, key: a `RedisBackend` and the name of the limit every process passing the
/// same key shares. shadow: decide as usual but admit everything, counting in `stats` what would have
/// waited or been refused (roll a limit out before enforcing it). A budget (a limit in ``"usd"``) warns
/// on the ``holysheep`` logger at 80%, 95% and 100% used. Raises ConfigError for a value that cannot
/// work, named in ``.field``.
#[pyclass(name = "HolySheepRateLimiter", module = "holysheep._holysheep", frozen, subclass, weakref)]
pub struct PyLimiter {
    /// The limits, held once: deciding them (local), and what the server's answers teach.
    inner: Arc<Limiter>,
    backend: Backend,
}

/// One request of `tokens` (`None`: 0), its tokens checked as the `tokens` argument.
fn request_of(tokens: Option<&Bound<'_, PyAny>>) -> PyResult<Cost> {
    Ok(Cost::request(args::optional(tokens, |v| args::tokens("tokens", v))?.unwrap_or(0)))
}

/// What a call that may wait asks for, its arguments checked when the call starts.
struct Waiting {
    cost: Cost,
    /// Dollars per million of its tokens, for a budget.
    price: f64,
    max_wait_ns: Option<u64>,
    priority: i64,
}

impl Waiting {
    fn of(tokens: Option<&Bound<'_, PyAny>>, timeout: Option<&Bound<'_, PyAny>>, priority: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        Ok(Self {
            cost: request_of(tokens)?,
            price: 0.0,
            max_wait_ns: args::timeout("timeout", timeout)?,
            priority: args::optional(priority, |v| args::priority("priority", v))?.unwrap_or(0),
        })
    }

    /// One request of `tokens` at `price` dollars per million of them (the transport), at `priority`.
    fn priced(
        tokens: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
        price: &Bound<'_, PyAny>,
        priority: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let price = args::price("price", price)?;
        let waiting = Self::of(Some(tokens), timeout, priority)?;
        Ok(Self { cost: Cost::priced(waiting.cost.tokens, price), price, ..waiting })
    }

    /// One request without tokens, waiting as long as it takes (`async with`, `with`).
    fn one() -> Self {
        Self { cost: Cost::request(0), price: 0.0, max_wait_ns: None, priority: 0 }
    }
}

impl PyLimiter {
    /// The limits as held once, whichever backend decides them (what a preview configures afresh).
    pub(crate) fn core(&self) -> &Arc<Limiter> {
        &self.inner
    }

    /// The limit shared through Redis; None when the limits are decided in this process.
    pub(crate) fn fleet(&self) -> Option<&Arc<Shared>> {
        match &self.backend {
            Backend::Local => None,
            Backend::Redis(redis) => Some(&redis.shared),
        }
    }

    /// `try_acquire` of `cost` (see [`TRY_ACQUIRE_DOC`]), whichever backend decides.
    fn try_acquire_cost(&self, py: Python<'_>, cost: Cost) -> PyResult<bool> {
        let redis = match &self.backend {
            Backend::Local => return Ok(self.try_acquire_here(cost)?),
            Backend::Redis(redis) => redis,
        };
        let decided = shared::decide_now(py, &redis.shared, Ask { cost, price: 0.0, priority: 0, operation: "try_acquire" })?;
        alerts::fleet_decided(&self.inner, &redis.shared.remote);
        let Some(grant) = decided else {
            return Ok(false);
        };
        if redis.shared.leases() {
            let decided = Decided::Redis { shared: Arc::clone(&redis.shared), grant };
            redis.held.push(Py::new(py, self.admission(decided, cost, 0.0))?);
        }
        Ok(true)
    }

    /// `try_acquire` of `cost` decided in this process: a refusal is counted as one. Inlined whole
    /// into the entry, as [`Limiter::try_acquire`] is into it.
    #[inline(always)]
    fn try_acquire_here(&self, cost: Cost) -> Result<bool, Error> {
        let admitted = self.inner.try_acquire(cost)?;
        if !admitted {
            self.inner.reject();
        }
        Ok(admitted)
    }

    /// The local admission of `cost` now, or None when it would have to wait (at most `max_wait_ns`);
    /// a cost that can never pass raises here, before any wait.
    fn admit_at_once(&self, cost: Cost, max_wait_ns: Option<u64>) -> PyResult<Option<crate::core::Admission>> {
        let admitted = self.inner.try_reserve_within(cost, max_wait_ns)?;
        if admitted.is_none() {
            self.inner.time_until_ready(cost)?;
        }
        Ok(admitted)
    }

    /// An admission waited for on the running loop: done now (`Ready`) or an `_Acquiring` to await.
    fn acquiring(&self, py: Python<'_>, waiting: Waiting, finish: Finish) -> PyResult<Py<PyAny>> {
        let Waiting { cost, price, max_wait_ns, priority } = waiting;
        let wait: Box<dyn crate::py::waiting::Wait> = match &self.backend {
            Backend::Local => match self.admit_at_once(cost, max_wait_ns)? {
                Some(admission) => return Ok(Ready::with(py, finish(py, Decided::Local(admission))?)?.into_any()),
                None => Box::new(InLine::start(py, &self.inner, cost, priority, max_wait_ns, finish)?),
            },
            Backend::Redis(redis) => {
                let ask = Ask { cost, price, priority, operation: "acquire" };
                let (limiter, remote) = (Arc::clone(&self.inner), Arc::clone(&redis.shared.remote));
                let finish: Finish = Box::new(move |py, decided| {
                    alerts::fleet_decided(&limiter, &remote);
                    finish(py, decided)
                });
                Box::new(InRedis::start(py, &redis.shared, &redis.channels, ask, max_wait_ns, finish)?)
            }
        };
        Ok(Py::new(py, Acquiring::new(wait))?.into_any())
    }

    /// An admission waited for on this thread, the GIL released.
    fn blocking(&self, py: Python<'_>, waiting: Waiting) -> PyResult<Decided> {
        let Waiting { cost, price, max_wait_ns, priority } = waiting;
        match &self.backend {
            Backend::Local => match self.admit_at_once(cost, max_wait_ns)? {
                Some(admission) => Ok(Decided::Local(admission)),
                None => wait_blocking(py, &self.inner, cost, priority, max_wait_ns).map(Decided::Local),
            },
            Backend::Redis(redis) => {
                let grant = shared::wait_blocking(py, &redis.shared, Ask { cost, price, priority, operation: "acquire" }, max_wait_ns)?;
                alerts::fleet_decided(&self.inner, &redis.shared.remote);
                Ok(Decided::Redis { shared: Arc::clone(&redis.shared), grant })
            }
        }
    }

    fn admission(&self, decided: Decided, cost: Cost, price: f64) -> PyAdmission {
        PyAdmission::new(&self.inner, decided, cost.tokens, price)
    }

    /// Makes the awaited result: the admission, for its owner to settle and end.
    fn keeping(&self, waiting: &Waiting) -> Finish {
        let (limiter, tokens, price) = (Arc::clone(&self.inner), waiting.cost.tokens, waiting.price);
        Box::new(move |py, decided| Ok(Py::new(py, PyAdmission::new(&limiter, decided, tokens, price))?.into_any()))
    }

    /// Makes the awaited result of `acquire` and `async with`: nothing; what `release` will end is
    /// kept (a lease in Redis; a local slot is the core's to count).
    fn holding(&self, waiting: &Waiting) -> Finish {
        let (limiter, held) = match &self.backend {
            Backend::Redis(redis) if redis.shared.leases() => (Arc::clone(&self.inner), redis.held.clone()),
            // Nothing to keep: a closure that captures nothing, so the fast path allocates nothing.
            _ => return Box::new(|py, _| Ok(py.None())),
        };
        let (tokens, price) = (waiting.cost.tokens, waiting.price);
        Box::new(move |py, decided| {
            held.push(Py::new(py, PyAdmission::new(&limiter, decided, tokens, price))?);
            Ok(py.None())
        })
    }
}

/// `try_acquire`'s docstring, after its text signature as CPython reads one.
const TRY_ACQUIRE_DOC: &CStr = c"try_acquire(self, tokens=0)
--

Takes one request (and ``tokens`` LLM tokens) now if every limit allows it, without waiting
(in Redis: one round trip). Returns False otherwise; raises RateLimitExceeded when the cost
could never pass. With ``max_concurrency``, call `release` after.";

/// `HolySheepRateLimiter.try_acquire`, entered by CPython directly (see `fastcall`): a call without
/// arguments on a limiter of this process is decided at once; any other goes the way of every method.
unsafe extern "C" fn try_acquire(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this entry, which `TRY_ACQUIRE` put on the class, with these arguments.
    let (limiter, call) = unsafe { (fastcall::receiver::<PyLimiter>(slf), Call::new(args, nargs, kwnames)) };
    if call.is_empty() && matches!(limiter.backend, Backend::Local) {
        return fastcall::decided(|| limiter.try_acquire_here(Cost::request(0)));
    }
    call.run(|py, call| {
        let tokens = call.one_optional(py, "HolySheepRateLimiter.try_acquire", "tokens")?;
        let admitted = limiter.try_acquire_cost(py, request_of(tokens.as_ref())?)?;
        Ok(PyBool::new(py, admitted).to_owned().into_any())
    })
}

static TRY_ACQUIRE: Method = Method::new(c"try_acquire", TRY_ACQUIRE_DOC, try_acquire);

/// Puts the methods CPython enters directly on `HolySheepRateLimiter`: once, when the module is made.
pub(crate) fn install_entries(py: Python<'_>) -> PyResult<()> {
    TRY_ACQUIRE.put_on(&py.get_type::<PyLimiter>())
}

/// The decorator's wrappers, in Python: an ``async def`` must stay one (``inspect`` and frameworks
/// check), which only Python code makes.
static DECORATE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn decorate(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    DECORATE
        .get_or_try_init(py, || {
            let code = pyo3::ffi::c_str!(include_str!("decorate.py"));
            let module = pyo3::types::PyModule::from_code(py, code, c"holysheep/_decorate.py", c"holysheep._decorate")?;
            Ok::<_, PyErr>(module.getattr("limited")?.unbind())
        })
        .map(|limited| limited.bind(py))
}

#[pymethods]
impl PyLimiter {
    #[new]
    #[pyo3(signature = (max_qps = None, max_concurrency = None, *, rpm = None, tpm = None, burst = None, limits = None, tier = None, backend = None, key = None, shadow = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        max_qps: Option<&Bound<'_, PyAny>>,
        max_concurrency: Option<&Bound<'_, PyAny>>,
        rpm: Option<&Bound<'_, PyAny>>,
        tpm: Option<&Bound<'_, PyAny>>,
        burst: Option<&Bound<'_, PyAny>>,
        limits: Option<&Bound<'_, PyAny>>,
        tier: Option<&Bound<'_, PyAny>>,
        backend: Option<&Bound<'_, PyAny>>,
        key: Option<&Bound<'_, PyAny>>,
        shadow: Option<&Bound<'_, PyAny>>,
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
        let shadow = args::optional(shadow, |v| args::flag("shadow", v))?.unwrap_or(false);
        if shadow {
            limiter = limiter.in_shadow();
        }
        if limiter.limits().iter().any(|limit| limit.unit() == Unit::Usd) {
            for fraction in BUDGET_WARNINGS {
                limiter.alerts().add(fraction, Scope::Budgets, Arc::new(BudgetWarning))?;
            }
        }
        let backend = shared_backend(&limiter, backend, key)?;
        if shadow && matches!(backend, Backend::Redis(_)) {
            return Err(Error::config("shadow", "a limit shared through Redis is always enforced; shadow=True needs a limiter of this process").into());
        }
        Ok(Self { inner: Arc::new(limiter), backend })
    }

    /// Gives a subclass its own `try_acquire` descriptor (see `Method::inherit`), then does what
    /// ``object.__init_subclass__`` does with ``kwargs``.
    #[classmethod]
    #[pyo3(signature = (**kwargs))]
    fn __init_subclass__(cls: &Bound<'_, PyType>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        let base = cls.py().get_type::<PyLimiter>();
        TRY_ACQUIRE.inherit(cls, &base)?;
        PySuper::new(&base, cls)?.call_method("__init_subclass__", (), kwargs).map(drop)
    }

    /// The limits of a HolySheep plan: ``"free"``, ``"starter"``, ``"pro"`` or ``"enterprise"``.
    #[classmethod]
    fn from_tier<'py>(cls: &Bound<'py, PyType>, tier: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let kwargs = PyDict::new(cls.py());
        kwargs.set_item("tier", tier)?;
        cls.call((), Some(&kwargs))
    }

    /// Waits for one request slot and the rate for it (and ``tokens`` LLM tokens); call `release`
    /// after. ``timeout``: seconds to wait at most (RateLimitExceeded at once when the predicted wait is
    /// longer); ``priority``: higher goes ahead of lower among those still waiting (not applied to a
    /// limit shared in Redis, whose waiters are served in the order Redis decides them).
    #[pyo3(signature = (tokens = None, timeout = None, priority = None), text_signature = "(self, tokens=0, timeout=None, priority=0)")]
    fn acquire(
        &self,
        py: Python<'_>,
        tokens: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        priority: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let waiting = Waiting::of(tokens, timeout, priority)?;
        let finish = self.holding(&waiting);
        self.acquiring(py, waiting, finish)
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
        let waiting = Waiting::of(tokens, timeout, priority)?;
        let finish = self.holding(&waiting);
        finish(py, self.blocking(py, waiting)?).map(drop)
    }

    /// The admission of one request of ``tokens`` at ``price`` dollars per million of them when it
    /// passes now without waiting (a local limiter only), else None; a cost that can never pass raises.
    fn _admit_at_once(&self, py: Python<'_>, tokens: &Bound<'_, PyAny>, price: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAdmission>>> {
        let waiting = Waiting::priced(tokens, None, price, None)?;
        if !matches!(self.backend, Backend::Local) {
            return Ok(None);
        }
        match self.admit_at_once(waiting.cost, None)? {
            Some(admission) => Ok(Some(Py::new(py, self.admission(Decided::Local(admission), waiting.cost, waiting.price))?)),
            None => Ok(None),
        }
    }

    /// The admission of one request of ``tokens`` at ``price``, waited for on the running loop (at
    /// most ``timeout`` seconds, ahead of lower ``priority`` waiters): an awaitable of an `_Admission`,
    /// which its owner ends.
    #[pyo3(signature = (tokens, timeout, price, priority = None))]
    fn _admit(
        &self,
        py: Python<'_>,
        tokens: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
        price: &Bound<'_, PyAny>,
        priority: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let waiting = Waiting::priced(tokens, timeout, price, priority)?;
        let finish = self.keeping(&waiting);
        self.acquiring(py, waiting, finish)
    }

    /// `_admit` on this thread, the GIL released.
    #[pyo3(signature = (tokens, timeout, price, priority = None))]
    fn _admit_blocking(
        &self,
        py: Python<'_>,
        tokens: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
        price: &Bound<'_, PyAny>,
        priority: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyAdmission> {
        let waiting = Waiting::priced(tokens, timeout, price, priority)?;
        let (cost, price) = (waiting.cost, waiting.price);
        Ok(self.admission(self.blocking(py, waiting)?, cost, price))
    }

    /// One request carrying an estimate of ``tokens`` LLM tokens, as a context manager whose permit can
    /// `Permit.settle` the real count once the response says it.
    ///
    ///     async with lim.slot(tokens=850) as permit:
    ///         resp = await client.chat.completions.create(...)
    ///         permit.settle(resp.usage.total_tokens)
    #[pyo3(signature = (tokens = None, timeout = None, priority = None), text_signature = "(self, tokens=0, timeout=None, priority=0)")]
    fn slot(
        slf: &Bound<'_, Self>,
        tokens: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        priority: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyPermit> {
        let waiting = Waiting::of(tokens, timeout, priority)?;
        Ok(PyPermit { limiter: slf.clone().unbind(), tokens: waiting.cost.tokens, max_wait_ns: waiting.max_wait_ns, priority: waiting.priority, admission: Mutex::default() })
    }

    /// Decorates a ``def`` or ``async def``: each call holds one admission while it runs.
    fn __call__<'py>(slf: &Bound<'py, Self>, function: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if !function.is_callable() {
            return args::refuse("function", "a function (def or async def) to limit", function);
        }
        decorate(slf.py())?.call1((slf, function))
    }

    /// Seconds until the limits would admit the request; 0.0 when now.
    #[pyo3(signature = (tokens = None), text_signature = "(self, tokens=0)")]
    fn time_until_ready(&self, py: Python<'_>, tokens: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
        let cost = request_of(tokens)?;
        match &self.backend {
            Backend::Local => Ok(ns_to_secs(self.inner.time_until_ready(cost)?)),
            Backend::Redis(redis) => {
                let remote = &redis.shared.remote;
                let peeked = py.detach(|| remote.peek_blocking(cost));
                match peeked {
                    Ok(peek) => {
                        shared::report(py, redis.shared.reachable(), redis.shared.on_error);
                        Ok(peek.wait_us as f64 / 1e6)
                    }
                    Err(Err(err)) => {
                        let (ruling, turn) = redis.shared.on_failure(err);
                        shared::report(py, turn, redis.shared.on_error);
                        ruling.map_err(|err| refusal(Err(err)))?;
                        match redis.shared.on_error {
                            OnError::Local => Ok(remote.wait_locally(cost).map_err(refusal)? as f64 / 1e9),
                            _ => Ok(0.0),
                        }
                    }
                    Err(refused) => Err(refusal(refused)),
                }
            }
        }
    }

    /// Returns the concurrency slot taken by acquire; the next waiter, if any, gets it. Does nothing
    /// on a limiter without ``max_concurrency`` (its admissions hold nothing).
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        match &self.backend {
            Backend::Local => Ok(self.inner.release()?),
            Backend::Redis(redis) if !redis.shared.leases() => Ok(()),
            Backend::Redis(redis) => match redis.held.pop() {
                Some(admission) => admission.get().release(py),
                None => Err(Error::unmatched_release().into()),
            },
        }
    }

    fn __aenter__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let finish = self.holding(&Waiting::one());
        self.acquiring(py, Waiting::one(), finish)
    }

    #[pyo3(signature = (*_exc))]
    fn __aexit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<Py<Ready>> {
        self.release(py)?;
        Ready::with(py, py.None())
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<()> {
        let finish = self.holding(&Waiting::one());
        finish(py, self.blocking(py, Waiting::one())?).map(drop)
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<()> {
        self.release(py)
    }

    /// Calls ``callback(limiter, limit_name, used_fraction)`` once each time a limit's use (a rate
    /// window or a budget) reaches ``fraction`` of it, and again once it has fallen back below 90% of
    /// ``fraction``; from whichever thread or task made the admission, after it. Shared through Redis,
    /// the use is the fleet's as Redis reports it with each decision. A callback that raises is reported
    /// as unraisable and never fails a request. ``limit_name`` is the limit as `stats` names it.
    fn on_threshold(slf: &Bound<'_, Self>, fraction: &Bound<'_, PyAny>, callback: &Bound<'_, PyAny>) -> PyResult<()> {
        let fraction = args::positive("fraction", fraction)?;
        if !callback.is_callable() {
            return args::refuse("callback", "a callable taking (limiter, limit_name, used_fraction)", callback);
        }
        let alert = Arc::new(Callback::new(slf.as_any(), callback)?);
        Ok(slf.get().inner.alerts().add(fraction, Scope::Every, alert)?)
    }

    /// Whether it only watches (``shadow=True``): admitting everything, counting what it would hold back.
    #[getter]
    fn shadow(&self) -> bool {
        self.inner.is_shadow()
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

    /// The `RedisBackend` the limits are shared through; None for a limiter of this process alone.
    #[getter]
    fn backend(&self, py: Python<'_>) -> Option<Py<PyRedisBackend>> {
        match &self.backend {
            Backend::Local => None,
            Backend::Redis(redis) => Some(redis.backend.clone_ref(py)),
        }
    }

    /// The name of the shared limit (its Redis keys share the hash tag ``{prefix:key}``); None for a
    /// limiter of this process alone.
    #[getter]
    fn key(&self) -> Option<&str> {
        match &self.backend {
            Backend::Local => None,
            Backend::Redis(redis) => Some(&redis.key),
        }
    }

    /// Admissions held for `release` (Redis leases), most recent last: for tests and diagnostics.
    #[getter]
    fn _held(&self, py: Python<'_>) -> Vec<Py<PyAdmission>> {
        match &self.backend {
            Backend::Local => Vec::new(),
            Backend::Redis(redis) => redis.held.all(py),
        }
    }

    /// This event loop's own connection to Redis once it is open (None before, and for a local
    /// limiter): for tests and diagnostics.
    fn _loop_channel(&self, event_loop: &Bound<'_, PyAny>) -> Option<Py<crate::py::redis_channel::PyLoopChannel>> {
        match &self.backend {
            Backend::Local => None,
            Backend::Redis(redis) => redis.channels.open_for(event_loop),
        }
    }

    /// What the limiter has done: admitted, rejected (rejected_by_budget of them), in_flight, waiting,
    /// waited, waited_s_p50/p99, server_429s, tokens_reserved/settled/refunded (as admissions are
    /// settled), rate_factor and tokens_rate_factor, and the units remaining now in each limit.
    /// Shared through Redis, the counts are this process's and ``remaining`` the fleet's (None while
    /// Redis is away), with fleet_in_flight, fleet_members (processes seen lately) and fallbacks
    /// (decisions made by the failure policy).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let snapshot = self.inner.snapshot();
        let stats = PyDict::new(py);
        let [requests_factor, tokens_factor] = self.inner.rate_factors();
        let counts = match &self.backend {
            Backend::Local => snapshot.counts,
            Backend::Redis(redis) => redis.shared.counts(),
        };
        stats.set_item("admitted", counts.admitted)?;
        stats.set_item("rejected", counts.rejected)?;
        stats.set_item("in_flight", counts.in_flight)?;
        stats.set_item("waiting", counts.waiting)?;
        stats.set_item("waited", counts.waited)?;
        stats.set_item("waited_s_p50", ns_to_secs(counts.wait_p50_ns))?;
        stats.set_item("waited_s_p99", ns_to_secs(counts.wait_p99_ns))?;
        stats.set_item("rejected_by_budget", snapshot.budget_refusals)?;
        stats.set_item("server_429s", snapshot.server_rejections)?;
        stats.set_item("tokens_reserved", snapshot.tokens.reserved)?;
        stats.set_item("tokens_settled", snapshot.tokens.settled)?;
        stats.set_item("tokens_refunded", snapshot.tokens.refunded)?;
        stats.set_item("rate_factor", requests_factor)?;
        stats.set_item("tokens_rate_factor", tokens_factor)?;
        if let Some(shadow) = snapshot.shadow {
            stats.set_item("would_wait", shadow.delayed)?;
            stats.set_item("would_wait_s", ns_to_secs(shadow.delayed_total_ns))?;
            stats.set_item("would_wait_s_p50", ns_to_secs(shadow.delay_p50_ns))?;
            stats.set_item("would_wait_s_p99", ns_to_secs(shadow.delay_p99_ns))?;
            stats.set_item("would_wait_for_slot", shadow.slot_waits)?;
            stats.set_item("would_reject", shadow.refused)?;
        }
        match &self.backend {
            Backend::Local => {
                let remaining = PyDict::new(py);
                for window in &snapshot.windows {
                    remaining.set_item(&window.limit, remaining_amount(py, window.unit, window.remaining)?)?;
                }
                stats.set_item("remaining", remaining)?;
            }
            Backend::Redis(redis) => {
                let remote = &redis.shared.remote;
                match py.detach(|| remote.peek_blocking(Cost::request(0))) {
                    Ok(peek) => {
                        let remaining = PyDict::new(py);
                        for (limit, left) in remote.limits().iter().zip(peek.remaining) {
                            remaining.set_item(limit.to_string(), remaining_amount(py, limit.unit(), left)?)?;
                        }
                        stats.set_item("remaining", remaining)?;
                        stats.set_item("fleet_in_flight", peek.leases)?;
                    }
                    Err(Err(crate::backend::redis::BackendError::Unavailable { .. })) => {
                        stats.set_item("remaining", py.None())?;
                        stats.set_item("fleet_in_flight", py.None())?;
                    }
                    Err(refused) => return Err(refusal(refused)),
                }
                stats.set_item("fleet_members", remote.members())?;
                stats.set_item("fallbacks", redis.shared.fallbacks())?;
            }
        }
        Ok(stats)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let this = slf.get();
        let limiter = &this.inner;
        let limits = PyList::new(slf.py(), limiter.limits().iter().map(ToString::to_string))?;
        // What this process holds: no round trip to Redis for a repr.
        let (counts, shared) = match &this.backend {
            Backend::Local => (limiter.snapshot().counts, String::new()),
            Backend::Redis(redis) => (redis.shared.counts(), format!(" key={:?} backend={}", redis.key, redis.backend.bind(slf.py()).repr()?)),
        };
        let (in_flight, waiting) = (counts.in_flight, counts.waiting);
        Ok(format!(
            "<{} limits={} max_concurrency={} in_flight={in_flight} waiting={waiting}{shared}>",
            slf.get_type().name()?,
            limits.repr()?,
            limiter.max_concurrency().map_or("None".into(), |n| n.to_string()),
        ))
    }
}

/// The backend `backend=` and `key=` name: this process alone when neither is given.
fn shared_backend(limiter: &Limiter, backend: Option<&Bound<'_, PyAny>>, key: Option<&Bound<'_, PyAny>>) -> PyResult<Backend> {
    let backend = backend.filter(|backend| !backend.is_none());
    let key = key.filter(|key| !key.is_none());
    let Some(backend) = backend else {
        return match key {
            None => Ok(Backend::Local),
            Some(_) => Err(Error::config("backend", "must be a RedisBackend for a shared limit named by key, got None").into()),
        };
    };
    let Ok(backend) = backend.cast::<PyRedisBackend>() else {
        return args::refuse("backend", "a holysheep.RedisBackend", backend);
    };
    let Some(key) = key else {
        return Err(Error::config("key", "a shared limit needs a key naming it, got None").into());
    };
    let key = args::text("key", key)?;
    let settings = backend.get();
    let remote = RemoteLimiter::new(Arc::clone(&settings.inner), &key, limiter.limits().to_vec(), limiter.max_concurrency(), settings.lease_ttl)?;
    let shared = Arc::new(Shared::new(Arc::new(remote), settings.on_error));
    Ok(Backend::Redis(Redis { shared, channels: Arc::default(), backend: backend.clone().unbind(), key, held: Held::default() }))
}

/// One admission taken by `HolySheepRateLimiter.slot`; held until the ``with`` block ends.
#[pyclass(name = "Permit", module = "holysheep._holysheep", frozen)]
pub struct PyPermit {
    limiter: Py<PyLimiter>,
    tokens: u64,
    max_wait_ns: Option<u64>,
    priority: i64,
    admission: Mutex<Option<Py<PyAdmission>>>,
}

impl PyPermit {
    fn waiting(&self) -> Waiting {
        Waiting { cost: Cost::request(self.tokens), price: 0.0, max_wait_ns: self.max_wait_ns, priority: self.priority }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Py<PyAdmission>>> {
        lock(&self.admission)
    }

    fn end(&self, py: Python<'_>) -> PyResult<()> {
        let admission = self.held().take();
        admission.map_or(Ok(()), |admission| admission.get().release(py))
    }
}

#[pymethods]
impl PyPermit {
    /// The LLM tokens counted for this request now: the estimate, or the last settled count.
    #[getter]
    fn tokens(&self) -> u64 {
        self.held().as_ref().map_or(self.tokens, |admission| admission.get().tokens())
    }

    /// Replaces the estimate by the real token count: refunds the difference or charges it.
    fn settle(&self, py: Python<'_>, actual_tokens: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(admission) = self.held().as_ref().map(|admission| admission.clone_ref(py)) else {
            return Err(PyRuntimeError::new_err("settle() needs an acquired permit: call it inside the `with` block"));
        };
        admission.get().settle(py, actual_tokens)
    }

    fn __aenter__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let limiter = this.limiter.bind(py).get();
        let (core, tokens, permit) = (Arc::clone(&limiter.inner), this.tokens, slf.clone().unbind());
        let finish: Finish = Box::new(move |py, decided| {
            let admission = Py::new(py, PyAdmission::new(&core, decided, tokens, 0.0))?;
            *permit.get().held() = Some(admission);
            Ok(permit.clone_ref(py).into_any())
        });
        limiter.acquiring(py, this.waiting(), finish)
    }

    #[pyo3(signature = (*_exc))]
    fn __aexit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<Py<Ready>> {
        self.end(py)?;
        Ready::with(py, py.None())
    }

    fn __enter__(slf: &Bound<'_, Self>) -> PyResult<Py<Self>> {
        let py = slf.py();
        let this = slf.get();
        let limiter = this.limiter.bind(py).get();
        let decided = limiter.blocking(py, this.waiting())?;
        *this.held() = Some(Py::new(py, PyAdmission::new(&limiter.inner, decided, this.tokens, 0.0))?);
        Ok(slf.clone().unbind())
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<()> {
        self.end(py)
    }

    fn __repr__(&self) -> String {
        let state = if self.held().is_some() { "held" } else { "not acquired" };
        format!("<Permit tokens={} {state}>", self.tokens())
    }
}

