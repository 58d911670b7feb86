//! `_Admission`: one request's admission and its lifecycle, the same type whichever backend decided it.
//! Its owner (a permit, the transport, `acquire`'s caller through `release`) `stamp`s it when the
//! request leaves, `settle`s the real token count, lets it `observe` the server's answer, and ends it
//! once: `release` (done) or `give_back` (never sent). Ending it twice does nothing the second time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::backend::Decided;
use crate::core::{Cost, Limiter};
use crate::py::args;
use crate::backend::redis::limiter::Counted;
use crate::backend::redis::shared::Shared;
use crate::backend::redis::{BackendError, Grant, runtime};

#[pyclass(name = "_Admission", module = "holysheep._holysheep", frozen)]
pub struct PyAdmission {
    /// The limiter it was admitted by: its slots (local), and what the server's answers teach it.
    limiter: Arc<Limiter>,
    decided: Decided,
    /// The tokens counted for it now: the estimate, then each settled count.
    tokens: AtomicU64,
    /// Dollars per million of its tokens, for a budget.
    price: f64,
    /// Whether it still holds what it was admitted with.
    held: AtomicBool,
}

impl PyAdmission {
    /// An admission of `tokens` at `price` dollars per million of them.
    pub fn new(limiter: &Arc<Limiter>, decided: Decided, tokens: u64, price: f64) -> Self {
        if let Decided::Redis { shared, .. } = &decided {
            shared.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        Self { limiter: Arc::clone(limiter), decided, tokens: AtomicU64::new(tokens), price, held: AtomicBool::new(true) }
    }

    fn cost_of(&self, tokens: u64) -> Cost {
        Cost::priced(tokens, self.price)
    }

    fn cost(&self) -> Cost {
        self.cost_of(self.tokens.load(Ordering::Acquire))
    }

    /// True the first time only: what is held is handed back once.
    fn let_go(&self) -> bool {
        let first = self.held.swap(false, Ordering::AcqRel);
        if let (true, Decided::Redis { shared, .. }) = (first, &self.decided) {
            shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        first
    }

    /// Ends it: `release` (its slot) or `give_back` (all of it).
    fn end(&self, py: Python<'_>, give_back: bool) -> PyResult<()> {
        if !self.let_go() {
            return Ok(());
        }
        match &self.decided {
            Decided::Local(admission) => {
                if give_back {
                    self.limiter.give_back(admission, self.cost());
                }
                Ok(self.limiter.release()?)
            }
            Decided::Redis { shared, grant } => {
                let counted = self.cost();
                let actual = if give_back { Cost::default() } else { counted };
                if grant.lease.is_none() && !give_back {
                    return Ok(());
                }
                let changed = adjust_shared(py, shared, grant, counted, actual, true);
                // A request that is done must not fail for Redis: its lease comes back by its TTL.
                if changed.is_err() {
                    shared.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
        }
    }
}

/// Changes what `grant` counted from `counted` to `actual` (and releases its lease if `release`): in
/// the background on an event loop, which must not block on Redis (a change lost to an outage is then
/// not retried, and a lease is owed back until Redis answers); else now, the GIL released.
pub fn adjust_shared(py: Python<'_>, shared: &Arc<Shared>, grant: &Grant, counted: Cost, actual: Cost, release: bool) -> Result<(), BackendError> {
    let remote = Arc::clone(&shared.remote);
    if in_event_loop(py) {
        let grant = grant.clone();
        let handle = runtime::handle()?;
        handle.spawn(async move { remote.adjust(&grant, counted, actual, release).await });
        return Ok(());
    }
    py.detach(|| remote.adjust_blocking(grant, counted, actual, release))
}

/// Gives back, in the background, a grant nobody will use (its waiter left).
pub fn give_back_soon(shared: &Shared, grant: Grant) {
    let remote = Arc::clone(&shared.remote);
    if let Ok(handle) = runtime::handle() {
        handle.spawn(async move { remote.adjust(&grant, grant.cost, Cost::default(), true).await });
    }
}

fn in_event_loop(py: Python<'_>) -> bool {
    py.import(intern!(py, "asyncio"))
        .and_then(|asyncio| asyncio.call_method0(intern!(py, "_get_running_loop")))
        .is_ok_and(|running| !running.is_none())
}

#[pymethods]
impl PyAdmission {
    /// The tokens counted for it now.
    #[getter]
    pub fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::Acquire)
    }

    /// When Redis admitted it, in microseconds since the epoch by Redis's clock (exact, for logs and
    /// tests); None when this process decided it.
    #[getter]
    fn at_us(&self) -> Option<u64> {
        match &self.decided {
            Decided::Redis { grant, .. } if grant.at_us > 0 => Some(grant.at_us),
            _ => None,
        }
    }

    /// Whether `stamp` moves it (a local admission; Redis counts a request when it decides it).
    #[getter]
    fn stamps(&self) -> bool {
        matches!(self.decided, Decided::Local(_))
    }

    /// Marks it sent now: its place in the local windows moves to when its request really goes (Redis
    /// counts a request at the instant it decided it).
    fn stamp(&self) {
        if let Decided::Local(admission) = &self.decided {
            self.limiter.stamp(admission, self.cost());
        }
    }

    /// Replaces the tokens counted so far by the actual count: refunds or charges the difference.
    pub fn settle(&self, py: Python<'_>, actual_tokens: &Bound<'_, PyAny>) -> PyResult<()> {
        let actual = self.cost_of(args::tokens("actual_tokens", actual_tokens)?);
        let counted = self.cost_of(self.tokens.swap(actual.tokens, Ordering::AcqRel));
        self.limiter.count_settled(counted.tokens, actual.tokens);
        match &self.decided {
            Decided::Local(admission) => self.limiter.settle(admission, counted, actual),
            Decided::Redis { shared, grant } => adjust_shared(py, shared, grant, counted, actual, false)?,
        }
        Ok(())
    }

    /// What the server answered: a 429 cuts the rates in force, any other answer lets them climb back;
    /// what the `x-ratelimit-remaining-*` and `-reset-*` headers say is left is held against our own
    /// count (local), or against the fleet's count when Redis admitted it (read from the decision's
    /// answer: no round trip). `headers` is the answer's httpx `Headers`; unreadable values are ignored.
    fn observe(&self, status: u16, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        let pairs = rate_limit_headers(headers)?;
        let pairs = pairs.iter().map(|(name, value)| (name.as_bytes(), value.as_bytes()));
        match &self.decided {
            Decided::Local(admission) => self.limiter.observe(admission, self.cost(), status, pairs),
            Decided::Redis { shared, grant } => {
                self.limiter.observe_held_against(status, pairs, |unit, remaining, reset_ns| {
                    shared.remote.server_allows(grant, unit, remaining, reset_ns)
                });
                shared.remote.follow(self.limiter.rate_factors());
            }
        }
        Ok(())
    }

    /// Its request is done: its concurrency slot goes back (to the next waiter first).
    pub fn release(&self, py: Python<'_>) -> PyResult<()> {
        self.end(py, false)
    }

    /// Its request was never sent: its place in the rates and its slot go back.
    fn give_back(&self, py: Python<'_>) -> PyResult<()> {
        self.end(py, true)
    }

    fn __repr__(&self) -> String {
        let state = if self.held.load(Ordering::Acquire) { "held" } else { "ended" };
        let place = match &self.decided {
            Decided::Local(_) => "local",
            Decided::Redis { grant, .. } => match grant.counted {
                Counted::InRedis { .. } => "redis",
                Counted::Here { .. } => "local share",
                Counted::Nowhere => "fail_open",
            },
        };
        format!("<_Admission tokens={} {place} {state}>", self.tokens())
    }
}

/// The `x-ratelimit-*` (name, value) pairs of an httpx (or httpx2) `Headers`, from its public `raw`
/// list of byte pairs; an item that is not one is skipped.
fn rate_limit_headers<'py>(headers: &Bound<'py, PyAny>) -> PyResult<Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>> {
    let mut found = Vec::new();
    for item in headers.getattr(intern!(headers.py(), "raw"))?.try_iter()? {
        let Ok(item) = item?.cast_into::<PyTuple>() else { continue };
        if item.len() != 2 {
            continue;
        }
        let (Ok(name), Ok(value)) = (item.get_item(0)?.cast_into::<PyBytes>(), item.get_item(1)?.cast_into::<PyBytes>()) else {
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
