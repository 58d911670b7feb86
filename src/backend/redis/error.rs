//! What can go wrong talking to Redis, sorted by what the caller should do about it.

use std::fmt;

/// A Redis failure. Messages never hold the password: see [`crate::backend::redis::backend::Backend::scrub`].
#[derive(Debug, Clone, PartialEq)]
pub enum BackendError {
    /// A setting that cannot work (a malformed URL, a refused password or ACL user): fix it, retrying
    /// will not help. `field` names the argument.
    Config { field: String, message: String },
    /// Redis cannot be reached or did not answer in time: the failure policy decides what happens.
    Unavailable { message: String },
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::Config { message, .. } | BackendError::Unavailable { message } => f.write_str(message),
        }
    }
}

impl std::error::Error for BackendError {}
