//! A no-op method call through pyo3: what any method of a frozen pyclass costs before it does anything.

use pyo3::prelude::*;

/// Holds nothing; `noop()` does nothing.
#[pyclass(frozen)]
struct Floor;

#[pymethods]
impl Floor {
    #[new]
    fn new() -> Self {
        Floor
    }

    fn noop(&self) {}
}

#[pymodule]
mod holysheep_bench_floor {
    #[pymodule_export]
    use super::Floor;
}
