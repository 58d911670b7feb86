//! `holysheep preview`: what a limiter configuration will do to a traffic pattern, before it is
//! applied, found by running it. The user's limiter is configured afresh on a virtual clock (the
//! core's [`ManualClock`](crate::core::ManualClock)) and its own code decides every admission, so the
//! preview shows what that code does, not an approximation of it; the server it sends to is the
//! MockGateway's own per-key limiter, which takes the instant as an argument.
//!
//! Layers: this module sits above [`core`](crate::core) and [`gateway`](crate::gateway) and calls
//! both; neither calls it. No pyo3 here: `src/py/preview.rs` is its binding.

pub mod outcome;
pub mod server;
pub mod sim;
pub mod traffic;

pub use outcome::{Outcome, Series, Span};
pub use server::ServerModel;
pub use sim::{Scenario, run};
pub use traffic::Arrival;
