//! The pyo3 layer: thin wrappers that convert types, map errors and release the GIL around blocking
//! waits. Every decision is the core's.

mod admission;
mod alerts;
mod args;
mod breaker;
mod engine;
mod errors;
mod failures;
mod fastcall;
mod gateway;
mod guard;
mod keyed;
mod limit;
mod limiter;
mod preview;
mod redis;
mod redis_channel;
mod retry;
mod shared;
mod tokens;
mod waiting;

use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;

/// A mutex's guard, even after a panic elsewhere poisoned it: what it guards stays consistent (each
/// holder leaves it whole), and a limiter must keep working.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The native half of the `holysheep` package; import `holysheep`, not this module.
#[pymodule(name = "_holysheep")]
mod native {
    #[pymodule_export]
    use super::args::{check_count, check_positive, check_priority, check_timeout};
    #[pymodule_export]
    use super::breaker::BreakerCore;
    #[pymodule_export]
    use super::engine::PyBatchJob;
    #[pymodule_export]
    use super::failures::{classify_failure, retry_after};
    #[pymodule_export]
    use super::gateway::{MockGatewayConfig, MockGatewayServer};
    #[pymodule_export]
    use super::guard::SyncGuard;
    #[pymodule_export]
    use super::keyed::PyKeyedTable;
    #[pymodule_export]
    use super::limit::PyLimit;
    #[pymodule_export]
    use super::admission::PyAdmission;
    #[pymodule_export]
    use super::limiter::{PyLimiter, PyPermit, Ready};
    #[pymodule_export]
    use super::preview::{PyServerModel, run_preview};
    #[pymodule_export]
    use super::waiting::{Acquiring, timer_leg};
    #[pymodule_export]
    use super::redis::{_shutdown_redis_runtime, PyRedisBackend};
    #[pymodule_export]
    use super::redis_channel::PyLoopChannel;
    #[pymodule_export]
    use super::retry::RetryCore;
    #[pymodule_export]
    use super::tokens::{estimate_request_tokens, text_tokens};

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        use crate::core::tokens::{MESSAGE_OVERHEAD, MOST_TOKENS_PER_ANSWER, REPLY_PRIMING};
        super::limiter::install_entries(m.py())?;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("MESSAGE_OVERHEAD", MESSAGE_OVERHEAD)?;
        m.add("REPLY_PRIMING", REPLY_PRIMING)?;
        m.add("MOST_TOKENS_PER_ANSWER", MOST_TOKENS_PER_ANSWER)
    }
}
