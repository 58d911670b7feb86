//! The errors the core returns; `src/py/errors.rs` alone turns them into Python exceptions.

use std::fmt;

/// Why the core refused: a request that will not pass, an open circuit, a spent budget or a config that
/// cannot work. Messages name the operation and the numbers, never a secret.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The request does not pass within the time the caller allows, or never can (`retry_after_ns` is
    /// `None` then). `limit` names the limit that refused it; `remaining` is what that limit has left now.
    RateLimited { message: String, retry_after_ns: Option<u64>, limit: String, remaining: f64 },
    /// A circuit breaker is open; calls pass again after `retry_after_ns`.
    CircuitOpen { message: String, retry_after_ns: u64 },
    /// A spending limit would be crossed by this request.
    BudgetExceeded { message: String },
    /// A configuration that cannot work, refused at construction; `field` names the bad field.
    Config { field: String, message: String },
}

impl Error {
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = format!("{field}: {}", message.into());
        Error::Config { field, message }
    }

    /// A `release()` with no admission of this limiter left to return: the one wording for every backend.
    pub fn unmatched_release() -> Self {
        Error::config("release", "release() called more often than acquire()")
    }

    pub fn message(&self) -> &str {
        match self {
            Error::RateLimited { message, .. }
            | Error::CircuitOpen { message, .. }
            | Error::BudgetExceeded { message }
            | Error::Config { message, .. } => message,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_error_names_its_field_first() {
        let err = Error::config("rpm", "must be a positive number, got -1");
        assert_eq!(err.to_string(), "rpm: must be a positive number, got -1");
        assert!(matches!(err, Error::Config { ref field, .. } if field == "rpm"));
    }
}
