//! The pyo3 layer: thin wrappers that convert types, map errors and release the GIL around blocking
//! waits. Every decision is the core's.

mod errors;

// resilience
mod breaker;
mod failures;
mod guard;
mod retry;
mod seconds;

use pyo3::prelude::*;

/// The native half of the `holysheep` package; import `holysheep`, not this module.
#[pymodule(name = "_holysheep")]
mod native {
    // resilience
    #[pymodule_export]
    use super::breaker::BreakerCore;
    #[pymodule_export]
    use super::failures::{classify_failure, retry_after};
    #[pymodule_export]
    use super::guard::SyncGuard;
    #[pymodule_export]
    use super::retry::RetryCore;

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
