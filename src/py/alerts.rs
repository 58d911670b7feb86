//! What a crossed threshold does in Python: call the user's callback, or warn on the `holysheep`
//! logger. The crossing itself is the core's (`core::alerts`).

use pyo3::prelude::*;
use pyo3::types::PyWeakrefReference;

use crate::backend::redis::RemoteLimiter;
use crate::core::alerts::{self, Alert};
use crate::core::limit::Limit;
use crate::core::limiter::Limiter;

/// Calls `callback(limiter, limit_name, used_fraction)`; the limiter is held weakly, so a limiter and
/// its callback do not keep each other alive. A callback that raises is reported as unraisable: an
/// alert never fails the request that crossed the threshold.
pub struct Callback {
    limiter: Py<PyWeakrefReference>,
    callback: Py<PyAny>,
}

impl Callback {
    pub fn new(limiter: &Bound<'_, PyAny>, callback: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(Self { limiter: PyWeakrefReference::new(limiter)?.unbind(), callback: callback.clone().unbind() })
    }
}

impl Alert for Callback {
    fn crossed(&self, limit: &Limit, used: f64) {
        Python::attach(|py| {
            let Some(limiter) = self.limiter.bind(py).upgrade() else { return };
            if let Err(err) = self.callback.call1(py, (limiter, limit.to_string(), used)) {
                err.write_unraisable(py, Some(self.callback.bind(py)));
            }
        });
    }
}

/// Warns on the `holysheep` logger that a budget is this much used.
pub struct BudgetWarning;

impl Alert for BudgetWarning {
    fn crossed(&self, limit: &Limit, used: f64) {
        Python::attach(|py| {
            let warned = py.import("logging").and_then(|logging| {
                let logger = logging.call_method1("getLogger", ("holysheep",))?;
                let message = "budget %r is %.0f%% used";
                logger.call_method1("warning", (message, limit.to_string(), used * 100.0)).map(drop)
            });
            if let Err(err) = warned {
                err.write_unraisable(py, None);
            }
        });
    }
}

/// Lets the thresholds see the fleet's use as Redis reported it with its last decision (no round
/// trip of its own).
pub fn fleet_decided(limiter: &Limiter, remote: &RemoteLimiter) {
    if !limiter.alerts().armed() {
        return;
    }
    let Some(counted) = remote.last_used() else { return };
    let limits = remote.limits();
    let used: Vec<f64> = limits.iter().zip(counted).map(|(limit, counted)| alerts::used_of_counted(limit, counted)).collect();
    limiter.alerts().observe(limits, &used);
}
