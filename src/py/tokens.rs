//! The core's token estimate over Python's objects: a request body as `json.loads` gives it (or any
//! mapping), texts counted by the heuristic or by the caller's exact counter.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyList, PyMapping, PyString};

use crate::core::tokens::{self, Json, heuristic_tokens};

impl Json for Bound<'_, PyAny> {
    fn is_object(&self) -> bool {
        self.cast::<PyMapping>().is_ok()
    }

    fn member(&self, key: &str) -> Option<Self> {
        let value = match self.cast::<PyDict>() {
            Ok(dict) => dict.get_item(key).ok()??,
            Err(_) => self.cast::<PyMapping>().ok()?.call_method1("get", (key,)).ok()?,
        };
        (!value.is_none()).then_some(value)
    }

    fn elements(&self) -> Option<impl Iterator<Item = Self>> {
        Some(self.cast::<PyList>().ok()?.iter())
    }

    fn text(&self) -> Option<&str> {
        self.cast::<PyString>().ok()?.to_str().ok()
    }

    fn whole_number(&self) -> Option<u64> {
        self.cast::<PyInt>().ok()?.extract().ok()
    }
}

/// Tokens a request body will count against a tokens limit (the core's rule), texts counted by
/// ``count`` (an exact encoding) or, when None, by the heuristic.
#[pyfunction]
#[pyo3(name = "_estimate_request_tokens", signature = (body, count=None))]
pub fn estimate_request_tokens(body: &Bound<'_, PyAny>, count: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
    match count {
        None => tokens::estimate(body, &mut |text| Ok(heuristic_tokens(text))),
        Some(count) => tokens::estimate(body, &mut |text| count.call1((text,))?.extract()),
    }
}

/// Tokens in ``text`` by the heuristic: a token per four ASCII characters, one per other character.
#[pyfunction]
#[pyo3(name = "_text_tokens")]
pub fn text_tokens(text: &str) -> u64 {
    heuristic_tokens(text)
}
