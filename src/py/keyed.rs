//! The native table behind `KeyedLimiter` for GCRA limits: keys are Python objects, hashed by Python.

use pyo3::prelude::*;

use pyo3::exceptions::PyTypeError;

use crate::core::clock::ns_to_secs;
use crate::core::{Cost, Error, KeyedLimiter};
use crate::py::args;
use crate::py::limit::PyLimit;

/// `max_keys` (an int from 1) and `idle_ttl` (seconds, 0 or more) in ns.
fn bounds(max_keys: &Bound<'_, PyAny>, idle_ttl: &Bound<'_, PyAny>) -> PyResult<(u64, u64)> {
    Ok((args::count("max_keys", max_keys, 1, args::COUNT_MAX)?, args::seconds("idle_ttl", idle_ttl)?))
}

/// One request carrying `tokens` (0 when not given).
fn cost(tokens: Option<&Bound<'_, PyAny>>) -> PyResult<Cost> {
    Ok(Cost::request(args::optional(tokens, |tokens| args::tokens("tokens", tokens))?.unwrap_or(0)))
}

/// Per-key GCRA state for many keys; use `holysheep.KeyedLimiter`.
#[pyclass(name = "_KeyedTable", module = "holysheep._holysheep", frozen)]
pub struct PyKeyedTable {
    inner: KeyedLimiter,
}

/// A key as Python hashes it; an unhashable one is refused under `key`.
fn key_hash(key: &Bound<'_, PyAny>) -> PyResult<u64> {
    match key.hash() {
        Ok(hash) => Ok(hash as u64),
        Err(err) if err.is_instance_of::<PyTypeError>(key.py()) => {
            args::refuse("key", "hashable (a str, an int, a tuple...)", key)
        }
        Err(err) => Err(err),
    }
}

/// Names the key in a refusal, computed only when there is one.
fn for_key(err: Error, key: &Bound<'_, PyAny>) -> PyErr {
    match err {
        Error::RateLimited { message, retry_after_ns, limit, remaining } => {
            let key = key.repr().map(|r| r.to_string()).unwrap_or_else(|_| "?".into());
            Error::RateLimited { message: format!("{message} (key {key})"), retry_after_ns, limit, remaining }.into()
        }
        other => other.into(),
    }
}

#[pymethods]
impl PyKeyedTable {
    #[new]
    fn new(
        limits: Vec<PyRef<'_, PyLimit>>,
        max_keys: &Bound<'_, PyAny>,
        idle_ttl: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let (max_keys, idle_ns) = bounds(max_keys, idle_ttl)?;
        let limits = limits.iter().map(|limit| limit.inner).collect();
        Ok(Self { inner: KeyedLimiter::new(limits, max_keys, idle_ns, Default::default())? })
    }

    /// Checks `max_keys` and `idle_ttl` for any keyed limiter.
    #[staticmethod]
    fn check_bounds(max_keys: &Bound<'_, PyAny>, idle_ttl: &Bound<'_, PyAny>) -> PyResult<()> {
        bounds(max_keys, idle_ttl).map(drop)
    }

    #[pyo3(signature = (key, tokens = None))]
    fn try_acquire(&self, key: &Bound<'_, PyAny>, tokens: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        let (hash, cost) = (key_hash(key)?, cost(tokens)?);
        self.inner.try_acquire(hash, cost).map_err(|err| for_key(err, key))
    }

    /// Reserves for `key`: (seconds to wait, receipt). Raises at once past `timeout`, when never, and
    /// for a new key while every key held still counts admissions.
    #[pyo3(signature = (key, tokens = None, timeout = None))]
    fn reserve(
        &self,
        key: &Bound<'_, PyAny>,
        tokens: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(f64, u64)> {
        let (hash, cost, max_wait) = (key_hash(key)?, cost(tokens)?, args::timeout("timeout", timeout)?);
        let (wait, receipt) = self.inner.reserve(hash, cost, max_wait).map_err(|err| for_key(err, key))?;
        Ok((ns_to_secs(wait), receipt))
    }

    fn give_back(&self, key: &Bound<'_, PyAny>, tokens: &Bound<'_, PyAny>, receipt: u64) -> PyResult<()> {
        self.inner.give_back(key_hash(key)?, cost(Some(tokens))?, receipt);
        Ok(())
    }

    #[pyo3(signature = (key, tokens = None))]
    fn time_until_ready(&self, key: &Bound<'_, PyAny>, tokens: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
        let (hash, cost) = (key_hash(key)?, cost(tokens)?);
        let wait = self.inner.time_until_ready(hash, cost).map_err(|err| for_key(err, key))?;
        Ok(ns_to_secs(wait))
    }

    /// Forgets keys unused for `idle_ttl`; returns how many remain.
    fn forget_idle(&self) -> usize {
        self.inner.forget_idle()
    }

    #[getter]
    fn limits(&self) -> Vec<PyLimit> {
        self.inner.limits().iter().map(|&inner| PyLimit { inner }).collect()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }
}
