//! Arguments as users pass them: each of the wrong kind (a string for a number, a bool for a count, a
//! number too large for any count) is refused with a `ConfigError` naming its field and what it takes,
//! before the core checks the value's range.

use std::ops::RangeInclusive;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyString};

use crate::core::Error;

use super::seconds::field_ns;

fn refused(field: &str, what: &str, value: &Bound<'_, PyAny>) -> PyErr {
    let shown = value.repr().map(|r| r.to_string()).unwrap_or_else(|_| "?".to_owned());
    Error::config(field, format!("must be {what}, got {shown}")).into()
}

/// A whole number in `range` (not a bool, a float or a string).
pub fn whole(field: &str, value: &Bound<'_, PyAny>, range: RangeInclusive<u32>) -> PyResult<u32> {
    let what = format!("a whole number between {} and {}", range.start(), range.end());
    if value.is_instance_of::<PyBool>() || value.is_instance_of::<PyFloat>() {
        return Err(refused(field, &what, value));
    }
    value
        .extract::<i64>()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| range.contains(n))
        .ok_or_else(|| refused(field, &what, value))
}

/// A real number (an int or a float, not a bool or a string); the core checks its range.
pub fn number(field: &str, value: &Bound<'_, PyAny>) -> PyResult<f64> {
    if value.is_instance_of::<PyBool>() || value.is_instance_of::<PyString>() {
        return Err(refused(field, "a number", value));
    }
    value.extract::<f64>().map_err(|_| refused(field, "a number", value))
}

/// A duration in seconds, as ns: a number, not negative, NaN or infinite.
pub fn seconds(field: &str, value: &Bound<'_, PyAny>) -> PyResult<u64> {
    field_ns(field, number(field, value)?)
}

/// `True` or `False`, nothing else that merely looks true.
pub fn flag(field: &str, value: &Bound<'_, PyAny>) -> PyResult<bool> {
    value.cast::<PyBool>().map(|b| b.is_true()).map_err(|_| refused(field, "True or False", value))
}

/// A string.
pub fn text(field: &str, value: &Bound<'_, PyAny>) -> PyResult<String> {
    value.cast::<PyString>().map(|s| s.to_string()).map_err(|_| refused(field, "a string", value))
}
