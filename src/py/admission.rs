//! `_Admission`: one request's admission and its lifecycle, the same type whichever backend decided it.
//! Its owner (a permit, the transport, `acquire`'s caller through `release`) `stamp`s it when the
//! request leaves, `settle`s the real token count, lets it `observe` the server's answer, and ends it
//! once: `release` (done) or `give_back` (never sent). Ending it twice does nothing the second time.

use std::sync::Arc;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::backend::admission::counted_where;
use crate::backend::{Adjustment, Admitted, Decided};
use crate::backend::redis::BackendError;
use crate::core::Limiter;
use crate::py::args;

#[pyclass(name = "_Admission", module = "holysheep._holysheep", frozen)]
pub struct PyAdmission(Admitted);

impl PyAdmission {
    /// An admission of `tokens` at `price` dollars per million of them.
    pub fn new(limiter: &Arc<Limiter>, decided: Decided, tokens: u64, price: f64) -> Self {
        Self(Admitted::new(limiter, decided, tokens, price))
    }

    /// Ends it: `release` (its slot) or `give_back` (all of it).
    fn end(&self, py: Python<'_>, give_back: bool) -> PyResult<()> {
        if let Some(adjustment) = self.0.end(give_back)? {
            run(py, adjustment)?;
        }
        Ok(())
    }
}

/// Runs a change to what Redis counted: in the background on an event loop, which must not block on
/// Redis (a change lost to an outage is then not retried, and a lease is owed back until Redis
/// answers); else now, the GIL released.
fn run(py: Python<'_>, adjustment: Adjustment) -> Result<(), BackendError> {
    if in_event_loop(py) {
        adjustment.in_background();
        return Ok(());
    }
    py.detach(|| adjustment.blocking())
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
        self.0.tokens()
    }

    /// When Redis admitted it, in microseconds since the epoch by Redis's clock (exact, for logs and
    /// tests); None when this process decided it.
    #[getter]
    fn at_us(&self) -> Option<u64> {
        match self.0.decided() {
            Decided::Redis { grant, .. } if grant.at_us > 0 => Some(grant.at_us),
            _ => None,
        }
    }

    /// Whether `stamp` moves it (a local admission; Redis counts a request when it decides it).
    #[getter]
    fn stamps(&self) -> bool {
        self.0.stamps()
    }

    /// Marks it sent now: its place in the local windows moves to when its request really goes (Redis
    /// counts a request at the instant it decided it).
    fn stamp(&self) {
        self.0.stamp();
    }

    /// Replaces the tokens counted so far by the actual count: refunds or charges the difference.
    pub fn settle(&self, py: Python<'_>, actual_tokens: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Some(adjustment) = self.0.settle(args::tokens("actual_tokens", actual_tokens)?) {
            run(py, adjustment)?;
        }
        Ok(())
    }

    /// What the server answered: a 429 cuts the rates in force, any other answer lets them climb back;
    /// what the `x-ratelimit-remaining-*` and `-reset-*` headers say is left is held against our own
    /// count (local), or against the fleet's count when Redis admitted it (read from the decision's
    /// answer: no round trip). `headers` is the answer's httpx `Headers`; unreadable values are ignored.
    fn observe(&self, status: u16, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        let pairs = rate_limit_headers(headers)?;
        self.0.observe(status, pairs.iter().map(|(name, value)| (name.as_bytes(), value.as_bytes())));
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
        let state = if self.0.is_held() { "held" } else { "ended" };
        format!("<_Admission tokens={} {} {state}>", self.tokens(), counted_where(self.0.decided()))
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
