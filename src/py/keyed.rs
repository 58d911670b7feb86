//! The native table behind `KeyedLimiter` for GCRA limits: keys are Python objects, hashed by Python.

use pyo3::prelude::*;

use crate::core::clock::{ns_to_secs, secs_to_ns};
use crate::core::{Error, KeyedLimiter};
use crate::py::limit::PyLimit;
use crate::py::limiter::{max_wait_ns, tokens_cost};

/// Per-key GCRA state for many keys; use `holysheep.KeyedLimiter`.
#[pyclass(name = "_KeyedTable", module = "holysheep._holysheep", frozen)]
pub struct PyKeyedTable {
    inner: KeyedLimiter,
}

fn key_hash(key: &Bound<'_, PyAny>) -> PyResult<u64> {
    Ok(key.hash()? as u64)
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
    fn new(limits: Vec<PyRef<'_, PyLimit>>, max_keys: i64, idle_ttl: f64) -> PyResult<Self> {
        let (max_keys, idle_ns) = Self::check_bounds(max_keys, idle_ttl)?;
        let limits = limits.iter().map(|limit| limit.inner).collect();
        Ok(Self { inner: KeyedLimiter::new(limits, max_keys, idle_ns, Default::default())? })
    }

    /// Checks `max_keys` and `idle_ttl` for any keyed limiter: (max_keys, idle_ttl in ns).
    #[staticmethod]
    fn check_bounds(max_keys: i64, idle_ttl: f64) -> PyResult<(u64, u64)> {
        if max_keys < 1 {
            return Err(Error::config("max_keys", format!("must be at least 1, got {max_keys}")).into());
        }
        let idle_ns = secs_to_ns(idle_ttl)
            .ok_or_else(|| Error::config("idle_ttl", format!("must be 0 or more seconds, got {idle_ttl}")))?;
        Ok((max_keys as u64, idle_ns))
    }

    fn try_acquire(&self, key: &Bound<'_, PyAny>, tokens: i64) -> PyResult<bool> {
        self.inner.try_acquire(key_hash(key)?, tokens_cost(tokens)?).map_err(|err| for_key(err, key))
    }

    /// Reserves for `key`: (seconds to wait, receipt). Raises at once past `timeout` or when never.
    fn reserve(&self, key: &Bound<'_, PyAny>, tokens: i64, timeout: Option<f64>) -> PyResult<(f64, u64)> {
        let (wait, receipt) = self
            .inner
            .reserve(key_hash(key)?, tokens_cost(tokens)?, max_wait_ns(timeout)?)
            .map_err(|err| for_key(err, key))?;
        Ok((ns_to_secs(wait), receipt))
    }

    fn give_back(&self, key: &Bound<'_, PyAny>, tokens: i64, receipt: u64) -> PyResult<()> {
        self.inner.give_back(key_hash(key)?, tokens_cost(tokens)?, receipt);
        Ok(())
    }

    fn time_until_ready(&self, key: &Bound<'_, PyAny>, tokens: i64) -> PyResult<f64> {
        let wait = self.inner.time_until_ready(key_hash(key)?, tokens_cost(tokens)?).map_err(|err| for_key(err, key))?;
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
