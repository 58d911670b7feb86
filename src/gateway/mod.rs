//! The mock gateway: an OpenAI-compatible server on 127.0.0.1 that enforces limits per API key like the
//! real gateway, injects faults and logs every admission. Python reaches it as
//! `holysheep.testing.MockGateway`; `cargo test` exercises it over real sockets.

mod api;
mod config;
mod faults;
mod handler;
mod headers;
mod latency;
mod limits;
mod log;
mod replies;
mod seeded;
mod server;
mod tokens;
mod window;

#[cfg(test)]
mod tests;

pub use config::{GatewayConfig, Limits};
pub use faults::{Fault, Faults};
pub use latency::Latency;
pub use limits::{Admission, KeyLimiter, RateStatus, Refusal, Unit};
pub use log::{AdmissionRecord, Endpoint, peak_admitted};
pub use server::{Gateway, StartError};
