//! `_BatchJob`: the batch engine for Python. The job runs on the tokio runtime with the GIL released
//! throughout; Python only starts it, polls its progress, cancels it, and waits for its report, on its
//! thread (`wait`, the GIL released) or on its event loop (`finished`: one pyo3-async-runtimes bridge
//! for the whole job).

use std::collections::HashMap;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::sync::oneshot;

use crate::core::clock::ns_to_secs;
use crate::core::{CircuitBreaker, RetryPolicy};
use crate::backend::redis::RemoteLimiter;
use crate::backend::redis::shared::{OnError, Turn};
use crate::core::Limiter;
use crate::backend::redis::breaker::FleetBreaker;
use crate::engine::{self, Finished, Fleet, FleetHooks, Gate, Guards, Job, JobConfig, JobError, Plan, Report};
use crate::py::breaker::{Breaker, BreakerCore};
use crate::py::limiter::PyLimiter;
use crate::py::retry::RetryCore;
use crate::py::{alerts, args, lock, shared};

/// Requests in flight at once, at most.
const MAX_IN_FLIGHT: u64 = 65_536;

/// The retry policy of a `RetryPolicy`, shared with it while the job runs.
struct HeldRetry(Py<RetryCore>);

impl Deref for HeldRetry {
    type Target = RetryPolicy;
    fn deref(&self) -> &RetryPolicy {
        self.0.get().core()
    }
}

/// The breaker of a `CircuitBreaker` deciding in this process, shared with it (and whoever else calls
/// through it) while the job runs. Made only by [`breaker`], for such a breaker.
struct HeldBreaker(Py<BreakerCore>);

impl Deref for HeldBreaker {
    type Target = CircuitBreaker;
    fn deref(&self) -> &CircuitBreaker {
        match self.0.get().core() {
            Breaker::Local(breaker) => breaker,
            Breaker::Fleet(_) => unreachable!("held only for a breaker of this process"),
        }
    }
}

/// What a job's requests are let through by: the breaker of this process, or the state a
/// `CircuitBreaker` with a backend shares through Redis (the same state, its cache and its reports
/// in flight: the job's failures count for the Python callers too, and theirs for the job).
fn breaker(core: Py<BreakerCore>) -> engine::Breaker {
    match core.get().core() {
        Breaker::Local(_) => engine::Breaker::Local(Arc::new(HeldBreaker(core))),
        Breaker::Fleet(fleet) => engine::Breaker::Fleet(FleetBreaker::clone(fleet)),
    }
}

/// What a job's requests are admitted through: the limiter's core, or the limit it shares through
/// Redis (its outages logged and its budget alerts raised in Python, as for any other call).
fn gate(limiter: &PyLimiter) -> Gate {
    let core = Arc::clone(limiter.core());
    match limiter.fleet() {
        None => Gate::Local(core),
        Some(shared) => {
            let hooks = Arc::new(InPython { limiter: Arc::clone(&core), remote: Arc::clone(&shared.remote) });
            Gate::Fleet(Fleet { limiter: core, shared: Arc::clone(shared), hooks })
        }
    }
}

/// Tells Python what a shared limit does during a job.
struct InPython {
    limiter: Arc<Limiter>,
    remote: Arc<RemoteLimiter>,
}

impl FleetHooks for InPython {
    fn turned(&self, turn: Turn, on_error: OnError) {
        if turn != Turn::Unchanged {
            Python::attach(|py| shared::report(py, turn, on_error));
        }
    }

    fn decided(&self) {
        alerts::fleet_decided(&self.limiter, &self.remote);
    }
}

impl From<JobError> for PyErr {
    fn from(err: JobError) -> PyErr {
        match err {
            JobError::Config(err) => err.into(),
            JobError::Io { message, .. } => PyOSError::new_err(message),
        }
    }
}

type Running = oneshot::Receiver<Result<Report, JobError>>;

/// A request that ended, as `take_finished` hands it to Python.
type FinishedRow = (String, Option<String>, Option<u16>, Option<String>, f64, u64, Option<String>, Option<String>);

/// One batch job; `holysheep.run_batch` and `arun_batch` drive it.
#[pyclass(name = "_BatchJob", module = "holysheep._holysheep", frozen)]
pub struct PyBatchJob {
    job: Arc<Job>,
    running: Mutex<Option<Running>>,
}

/// Where a thread waits for a job's report.
fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

#[pymethods]
impl PyBatchJob {
    /// Every setting checked here; `retry` and `breaker` are the native halves of a `RetryPolicy` and a
    /// `CircuitBreaker`, `prices` the checked price table.
    #[new]
    #[pyo3(signature = (input, output, *, base_url, api_key, limiter, retry, breaker, max_in_flight, timeout, budget_usd, retry_failed, prices, record=false))]
    #[allow(clippy::too_many_arguments)] // one per keyword argument of run_batch
    fn new(
        input: PathBuf,
        output: PathBuf,
        base_url: String,
        api_key: Option<String>,
        limiter: Option<&Bound<'_, PyAny>>,
        retry: Py<RetryCore>,
        breaker: Option<Py<BreakerCore>>,
        max_in_flight: &Bound<'_, PyAny>,
        timeout: &Bound<'_, PyAny>,
        budget_usd: Option<&Bound<'_, PyAny>>,
        retry_failed: bool,
        prices: HashMap<String, f64>,
        record: bool,
    ) -> PyResult<Self> {
        let limiter = match limiter.filter(|limiter| !limiter.is_none()) {
            None => None,
            Some(limiter) => {
                let Ok(limiter) = limiter.cast::<PyLimiter>() else {
                    return args::refuse("limiter", "a holysheep.HolySheepRateLimiter or None", limiter);
                };
                Some(gate(limiter.get()))
            }
        };
        let timeout = Duration::from_secs_f64(args::positive("timeout", timeout)?);
        let config = JobConfig {
            input,
            output,
            base_url,
            api_key,
            max_in_flight: args::count("max_concurrency", max_in_flight, 1, MAX_IN_FLIGHT)? as usize,
            timeout,
            budget_usd: args::optional(budget_usd, |v| args::positive("budget_usd", v))?,
            retry_failed,
            prices,
            record,
        };
        let guards = Guards {
            limiter,
            retry: Arc::new(HeldRetry(retry)),
            breaker: breaker.map(self::breaker),
        };
        Ok(Self { job: Arc::new(Job::new(config, guards)?), running: Mutex::new(None) })
    }

    /// What the job would take, without sending: a dict of total, skipped, to_send, within_budget,
    /// tokens, cost_usd and duration_s (None without a limiter).
    fn plan<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let job = Arc::clone(&self.job);
        let plan = py.detach(move || job.plan())?;
        plan_dict(py, &plan)
    }

    /// Starts the job on a thread of its own.
    fn start(&self) -> PyResult<()> {
        let mut running = lock(&self.running);
        if running.is_some() {
            return Err(PyRuntimeError::new_err("the batch job is already running"));
        }
        *running = Some(self.job.spawn()?);
        Ok(())
    }

    /// Waits up to ``timeout`` seconds (the GIL released) for the job's end: its report as a dict, or
    /// None while it runs. Raises what stopped the job from running (ConfigError, OSError).
    fn wait<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Option<Bound<'py, PyDict>>> {
        let mut running = lock(&self.running);
        let Some(handle) = running.as_mut() else {
            return Err(PyRuntimeError::new_err("the batch job is not running"));
        };
        let wait = Duration::from_secs_f64(timeout.max(0.0));
        let joined = py.detach(|| runtime().block_on(async { tokio::time::timeout(wait, handle).await }));
        let Ok(joined) = joined else { return Ok(None) };
        *running = None;
        let report = joined.map_err(|_| PyRuntimeError::new_err("the batch job's thread ended without a report"))??;
        report_dict(py, &report).map(Some)
    }

    /// An awaitable of the job's report (one bridge from tokio to asyncio for the whole job).
    fn finished<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let Some(handle) = lock(&self.running).take() else {
            return Err(PyRuntimeError::new_err("the batch job is not running"));
        };
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let report = handle.await.map_err(|_| PyRuntimeError::new_err("the batch job's thread ended without a report"))??;
            Python::attach(|py| report_dict(py, &report).map(Bound::unbind))
        })
    }

    /// Stops the job: nothing more is sent, requests in flight are dropped unanswered (a rerun sends
    /// them again); waiting then returns the report.
    fn cancel(&self) {
        self.job.cancel();
    }

    /// The requests ended since the last call, when the job records them: each as (endpoint, model,
    /// status, failure, duration_s, ended_ns (since the Unix epoch), response_model, usage as JSON).
    fn take_finished(&self) -> Vec<FinishedRow> {
        let row = |f: Finished| {
            let ended_ns = f.ended.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos() as u64);
            (f.endpoint, f.model, f.status, f.failure, f.duration.as_secs_f64(), ended_ns, f.response_model, f.usage)
        };
        self.job.take_finished().into_iter().map(row).collect()
    }

    /// The job's counts so far: total, skipped, sent, ok, failed, server_429s, retries, cost_usd.
    fn progress<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let counts = self.job.progress().counts();
        let dict = PyDict::new(py);
        for (name, value) in [
            ("total", counts.total),
            ("skipped", counts.skipped),
            ("sent", counts.sent),
            ("ok", counts.ok),
            ("failed", counts.failed),
            ("server_429s", counts.server_429s),
            ("retries", counts.retries),
        ] {
            dict.set_item(name, value)?;
        }
        dict.set_item("cost_usd", crate::core::Unit::Usd.amount_of(counts.micro_usd))?;
        Ok(dict)
    }
}

fn report_dict<'py>(py: Python<'py>, report: &Report) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, value) in [
        ("total", report.total),
        ("sent", report.sent),
        ("ok", report.ok),
        ("failed", report.failed),
        ("skipped", report.skipped),
        ("unsent", report.unsent),
        ("server_429s", report.server_429s),
        ("retries", report.retries),
    ] {
        dict.set_item(name, value)?;
    }
    dict.set_item("failures", report.failures.clone())?;
    dict.set_item("wall_s", report.wall.as_secs_f64())?;
    dict.set_item("cost_usd", report.cost_usd)?;
    dict.set_item("stopped", report.stopped.clone())?;
    Ok(dict)
}

fn plan_dict<'py>(py: Python<'py>, plan: &Plan) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, value) in [
        ("total", plan.total),
        ("skipped", plan.skipped),
        ("to_send", plan.to_send),
        ("within_budget", plan.within_budget),
        ("tokens", plan.tokens),
    ] {
        dict.set_item(name, value)?;
    }
    dict.set_item("cost_usd", plan.cost_usd)?;
    dict.set_item("duration_s", plan.duration.map(|d| ns_to_secs(d.as_nanos() as u64)))?;
    Ok(dict)
}
