//! The batch engine: a JSONL file of requests in the OpenAI Batch API's format sent to an
//! OpenAI-compatible API on tokio + reqwest, under the same limiter, retry policy and breaker as
//! every other call, its answers appended to an output file that a rerun resumes from.
//!
//! [`input`] reads and checks the requests, [`output`] writes and reads back the answers, [`gate`]
//! admits them through the limiter (the core's, whose waiting line [`admit`] drives from tokio, or a
//! limit shared through Redis, whose wait [`shared`] drives), [`send`] lives one request's attempts, [`job`] runs
//! the whole file, [`finished`] reads each request that ended for the metrics, and [`plan`] says what
//! a job would take without sending.

pub mod admit;
pub mod body;
pub mod breaker;
pub mod finished;
pub mod gate;
pub mod input;
pub mod job;
pub mod output;
pub mod plan;
pub mod progress;
pub mod send;
pub mod shared;
pub mod tokens;

use std::fmt;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use crate::core::{Error, RetryPolicy};

pub use breaker::Breaker;
pub use finished::Finished;
pub use gate::{Fleet, FleetHooks, Gate};
pub use job::{Job, JobConfig, Report};
pub use plan::Plan;
pub use progress::{Counts, Progress};

/// Something shared with the caller, who may keep using it while the job runs (a breaker held by a
/// Python object, say).
pub type Held<T> = Arc<dyn Deref<Target = T> + Send + Sync>;

/// What every request of a job passes: the limiter (none: no limits), the retry policy, the breaker.
#[derive(Clone)]
pub struct Guards {
    pub limiter: Option<Gate>,
    pub retry: Held<RetryPolicy>,
    pub breaker: Option<Breaker>,
}

/// Why a job could not run: a setting or an input that cannot work, or a file it cannot read or write.
#[derive(Debug)]
pub enum JobError {
    Config(Error),
    Io { field: &'static str, message: String },
}

impl JobError {
    pub fn io(field: &'static str, path: &Path, err: std::io::Error) -> Self {
        JobError::Io { field, message: format!("{field} {}: {err}", path.display()) }
    }
}

impl From<Error> for JobError {
    fn from(err: Error) -> Self {
        JobError::Config(err)
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Config(err) => err.fmt(f),
            JobError::Io { message, .. } => f.write_str(message),
        }
    }
}
