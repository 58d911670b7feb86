//! The one tokio runtime the extension owns for Redis I/O: started on first use, shut down explicitly
//! at interpreter exit (a runtime torn down by the process exit can crash while Python finalizes).

use std::sync::Mutex;
use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};

use crate::backend::redis::error::BackendError;
use crate::backend::redis::process;

enum State {
    NotStarted,
    /// The runtime and the process it runs in: a forked child has the value but not the thread.
    Running(Runtime, u32),
    ShutDown,
}

static RUNTIME: Mutex<State> = Mutex::new(State::NotStarted);

/// A handle to the runtime, starting it if needed. One worker thread: it only waits on sockets, and
/// the machine's cores belong to the caller's work.
pub fn handle() -> Result<Handle, BackendError> {
    let mut state = RUNTIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let State::Running(_, pid) = &*state
        && *pid != process::id()
    {
        // A forked child: the parent's runtime has no thread here; forget it (dropping it would wait
        // for that thread) and start one of our own.
        std::mem::forget(std::mem::replace(&mut *state, State::NotStarted));
    }
    match &*state {
        State::Running(runtime, _) => Ok(runtime.handle().clone()),
        State::ShutDown => Err(BackendError::Unavailable { message: "the Redis runtime was shut down (interpreter exit)".into() }),
        State::NotStarted => {
            let runtime = Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("holysheep-redis")
                .enable_all()
                .build()
                .map_err(|err| BackendError::Unavailable { message: format!("cannot start the Redis runtime: {err}") })?;
            let handle = runtime.handle().clone();
            *state = State::Running(runtime, process::id());
            Ok(handle)
        }
    }
}

/// Stops the runtime, waiting briefly for tasks in flight; later calls fail with `Unavailable`.
pub fn shutdown() {
    let previous = std::mem::replace(&mut *RUNTIME.lock().unwrap_or_else(|p| p.into_inner()), State::ShutDown);
    match previous {
        State::Running(runtime, pid) if pid == process::id() => runtime.shutdown_timeout(Duration::from_millis(200)),
        other => std::mem::forget(other),
    }
}
