//! The Redis backend: one limit shared by every process that names the same key. Each decision is one
//! Lua script run on Redis's own clock (one round trip); this module is the client side of it. It does
//! I/O, so it lives beside the pure core, not in it; the algorithms' semantics match the core's.

pub mod backend;
pub mod breaker;
mod connections;
pub mod error;
mod fallback;
pub mod limiter;
pub mod runtime;
mod process;
pub mod scripts;
mod sentinel;
pub mod share;
pub mod shared;
pub mod tcp_connection;
mod windows;
pub(crate) mod leases;

pub use backend::{Backend, Timeouts, closed_by_server};
pub use error::BackendError;
pub use limiter::{Grant, Mode, Outcome, Peek, RemoteLimiter};

#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod priority_tests;
#[cfg(test)]
mod recall_tests;
#[cfg(test)]
mod log_state_tests;
