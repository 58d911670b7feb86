//! The one place where core errors become Python exceptions. The classes live in `holysheep/errors.py`
//! (ConfigError has two bases, which pyo3 cannot declare), and are reached here by import.

use pyo3::PyErr;
use pyo3::import_exception;

use crate::core::clock::ns_to_secs;
use crate::core::Error;

import_exception!(holysheep.errors, RateLimitExceeded);
import_exception!(holysheep.errors, CircuitOpenError);
import_exception!(holysheep.errors, BudgetExceeded);
import_exception!(holysheep.errors, ConfigError);
import_exception!(holysheep.errors, BackendUnavailable);

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        match err {
            Error::RateLimited { message, retry_after_ns, limit, remaining } => {
                RateLimitExceeded::new_err((message, retry_after_ns.map(ns_to_secs), limit, remaining))
            }
            Error::CircuitOpen { message, retry_after_ns } => {
                // u64::MAX: isolated by hand, until reset()
                let retry_after = if retry_after_ns == u64::MAX { f64::INFINITY } else { ns_to_secs(retry_after_ns) };
                CircuitOpenError::new_err((message, retry_after))
            }
            Error::BudgetExceeded { message } => BudgetExceeded::new_err(message),
            Error::Config { field, message } => ConfigError::new_err((message, field)),
        }
    }
}

impl From<crate::backend::redis::BackendError> for PyErr {
    fn from(err: crate::backend::redis::BackendError) -> PyErr {
        match err {
            crate::backend::redis::BackendError::Config { field, message } => ConfigError::new_err((message, field)),
            crate::backend::redis::BackendError::Unavailable { message } => BackendUnavailable::new_err(message),
        }
    }
}
