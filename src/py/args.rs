//! Arguments as Python callers pass them, checked in one place: each extractor turns a wrong type or a
//! value out of range into `ConfigError` naming the field, with the valid range in the message, before a
//! call does anything. A binding takes such an argument as `&Bound<PyAny>` (pyo3's own conversion would
//! raise an untyped `TypeError` or `OverflowError` that names no field) and calls one of these:
//!
//! ```ignore
//! fn new(rpm: Option<&Bound<'_, PyAny>>, max_concurrency: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
//!     let rpm = args::optional(rpm, |v| args::positive("rpm", v))?;
//!     let max_concurrency = args::optional(max_concurrency, |v| args::count("max_concurrency", v, 1, COUNT_MAX))?;
//! ```
//!
//! Bools are refused wherever a number is expected: `True` is an `int` in Python, but
//! `max_concurrency=True` is a slip, never a way to write 1.

use std::ops::RangeInclusive;

use pyo3::exceptions::{PyOverflowError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyString};

use crate::core::Error;
use crate::core::clock::secs_to_ns;

/// The largest count a setting takes (`max_concurrency`, `max_keys`, ...): what fits a `u32`.
pub const COUNT_MAX: u64 = u32::MAX as u64;

/// `value` as a message shows it: its repr, cut short, with its type when it is not a plain number.
fn shown(value: &Bound<'_, PyAny>) -> String {
    let repr = value.repr().map(|r| r.to_string()).unwrap_or_else(|_| "?".into());
    let repr =
        if repr.chars().count() > 40 { format!("{}...", repr.chars().take(37).collect::<String>()) } else { repr };
    let plain = value.is_exact_instance_of::<PyInt>() || value.is_exact_instance_of::<PyFloat>();
    match (plain, value.get_type().name()) {
        (false, Ok(kind)) => format!("{repr} ({kind})"),
        _ => repr,
    }
}

/// A `ConfigError` for `field`: it must be `expected`, and `value` is not.
pub fn refuse<T>(field: &str, expected: &str, value: &Bound<'_, PyAny>) -> PyResult<T> {
    Err(Error::config(field, format!("must be {expected}, got {}", shown(value))).into())
}

/// Any real number but a bool, as an `f64`; `None` when `value` is of another type. Ints too large for
/// a float become infinity, which every caller refuses or reads as "forever".
fn real(value: &Bound<'_, PyAny>) -> Option<f64> {
    if value.is_instance_of::<PyBool>() || value.is_instance_of::<PyString>() {
        return None;
    }
    match value.extract::<f64>() {
        Ok(number) => Some(number),
        Err(err) if err.is_instance_of::<PyOverflowError>(value.py()) => Some(f64::INFINITY),
        Err(_) => None,
    }
}

/// A finite number above zero (a rate, an amount, a period in seconds).
pub fn positive(field: &str, value: &Bound<'_, PyAny>) -> PyResult<f64> {
    match real(value) {
        Some(number) if number.is_finite() && number > 0.0 => Ok(number),
        _ => refuse(field, "a finite number greater than 0", value),
    }
}

/// Dollars per million tokens: finite, 0 or more.
pub fn price(field: &str, value: &Bound<'_, PyAny>) -> PyResult<f64> {
    match real(value) {
        Some(number) if number.is_finite() && number >= 0.0 => Ok(number),
        _ => refuse(field, "a finite number of dollars per million tokens, 0 or more", value),
    }
}

/// A duration in seconds, finite and 0 or more, in nanoseconds.
pub fn seconds(field: &str, value: &Bound<'_, PyAny>) -> PyResult<u64> {
    match real(value).and_then(secs_to_ns) {
        Some(ns) => Ok(ns),
        None => refuse(field, "a finite number of seconds, 0 or more", value),
    }
}

/// How long a call may wait in seconds: `None` (not given, or `None`) and `inf` mean forever; NaN and
/// negatives are refused.
fn timeout_secs(field: &str, value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<f64>> {
    let Some(value) = value.filter(|value| !value.is_none()) else { return Ok(None) };
    match real(value) {
        Some(secs) if secs == f64::INFINITY => Ok(None),
        Some(secs) if secs >= 0.0 => Ok(Some(secs)),
        _ => refuse(field, "None or inf (wait as long as it takes), or a number of seconds, 0 or more", value),
    }
}

/// [`timeout_secs`] in nanoseconds; a finite wait too long for the clock is forever too.
pub fn timeout(field: &str, value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
    Ok(timeout_secs(field, value)?.and_then(|secs| secs_to_ns(secs).filter(|&ns| ns < u64::MAX)))
}

/// A whole number from `min` to `max` (an `int`, not a float or a bool).
pub fn count(field: &str, value: &Bound<'_, PyAny>, min: u64, max: u64) -> PyResult<u64> {
    let expected = || format!("an int from {min} to {max}");
    if value.is_instance_of::<PyBool>() {
        return refuse(field, &expected(), value);
    }
    match value.extract::<i128>() {
        Ok(n) if (i128::from(min)..=i128::from(max)).contains(&n) => Ok(n as u64),
        Ok(_) => refuse(field, &expected(), value),
        Err(err) if err.is_instance_of::<PyOverflowError>(value.py()) => refuse(field, &expected(), value),
        Err(err) if err.is_instance_of::<PyTypeError>(value.py()) => refuse(field, &expected(), value),
        Err(err) => Err(err),
    }
}

/// [`count`] over a core setting's range of `u32`s, e.g. `core::retry::ATTEMPTS`.
pub fn count_in(field: &str, value: &Bound<'_, PyAny>, range: RangeInclusive<u32>) -> PyResult<u32> {
    let n = count(field, value, u64::from(*range.start()), u64::from(*range.end()))?;
    Ok(n as u32) // within the range, so within u32
}

/// LLM tokens a request carries: an int, 0 or more.
pub fn tokens(field: &str, value: &Bound<'_, PyAny>) -> PyResult<u64> {
    count(field, value, 0, u64::MAX)
}

/// A waiter's priority: any int that fits 64 bits (higher goes first).
pub fn priority(field: &str, value: &Bound<'_, PyAny>) -> PyResult<i64> {
    let expected = format!("an int from {} to {}", i64::MIN, i64::MAX);
    if value.is_instance_of::<PyBool>() {
        return refuse(field, &expected, value);
    }
    match value.extract::<i64>() {
        Ok(n) => Ok(n),
        Err(err)
            if err.is_instance_of::<PyOverflowError>(value.py()) || err.is_instance_of::<PyTypeError>(value.py()) =>
        {
            refuse(field, &expected, value)
        }
        Err(err) => Err(err),
    }
}

/// One name of a set, parsed by the core (whose error lists the names); a value that is not a `str`
/// at all is refused here, under `field`.
pub fn choice<T>(
    field: &str,
    value: &Bound<'_, PyAny>,
    parse: impl FnOnce(&str) -> crate::core::error::Result<T>,
) -> PyResult<T> {
    let Ok(string) = value.cast::<PyString>() else {
        return refuse(field, "a str naming one of its options", value);
    };
    Ok(parse(&string.to_cow()?)?)
}

/// `True` or `False`; anything else that merely looks true (`1`, `"yes"`, `None`) is refused.
pub fn flag(field: &str, value: &Bound<'_, PyAny>) -> PyResult<bool> {
    match value.cast::<PyBool>() {
        Ok(flag) => Ok(flag.is_true()),
        Err(_) => refuse(field, "True or False", value),
    }
}

/// A `str` (a name shown in errors and logs).
pub fn text(field: &str, value: &Bound<'_, PyAny>) -> PyResult<String> {
    match value.cast::<PyString>() {
        Ok(string) => Ok(string.to_cow()?.into_owned()),
        Err(_) => refuse(field, "a str", value),
    }
}

/// `check` applied to an argument that may be left out or given as `None`.
pub fn optional<'py, T>(
    value: Option<&Bound<'py, PyAny>>,
    check: impl FnOnce(&Bound<'py, PyAny>) -> PyResult<T>,
) -> PyResult<Option<T>> {
    value.filter(|value| !value.is_none()).map(check).transpose()
}

// --- the same checks for the Python layer's own arguments (one rule, one place) ---

/// ``value`` if it is an int from ``min`` to ``max``; else ConfigError naming ``field``.
#[pyfunction]
#[pyo3(name = "_check_count")]
pub fn check_count(field: &str, value: &Bound<'_, PyAny>, min: u64, max: u64) -> PyResult<u64> {
    count(field, value, min, max)
}

/// ``value`` as a float, or None for forever (``None`` or ``inf``); NaN and negatives raise ConfigError.
#[pyfunction]
#[pyo3(name = "_check_timeout", signature = (field, value))]
pub fn check_timeout(field: &str, value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<f64>> {
    timeout_secs(field, value)
}

/// ``value`` if it is an int that fits 64 bits; else ConfigError naming ``field``.
#[pyfunction]
#[pyo3(name = "_check_priority")]
pub fn check_priority(field: &str, value: &Bound<'_, PyAny>) -> PyResult<i64> {
    priority(field, value)
}

/// ``value`` as a float if it is a finite number greater than 0; else ConfigError naming ``field``.
#[pyfunction]
#[pyo3(name = "_check_positive")]
pub fn check_positive(field: &str, value: &Bound<'_, PyAny>) -> PyResult<f64> {
    positive(field, value)
}
