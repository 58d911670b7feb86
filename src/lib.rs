//! holysheep keeps traffic to OpenAI-compatible LLM APIs inside its limits and alive through its failures.
//!
//! [`core`] is pure Rust (no Python) and holds every decision; `py` is the thin pyo3 layer that the
//! `holysheep` Python package is built on, compiled only with the `python` feature (maturin turns it on).
//! [`gateway`] is the mock OpenAI-compatible server that tests and benchmarks run against.
//! [`backend`] is where decisions are made: the core in this process, or Redis (the same limits
//! decided by Lua scripts, shared by a fleet). [`preview`] runs a limiter's configuration against a
//! traffic pattern and a server model on a virtual clock. [`engine`] sends JSONL batch jobs (tokio +
//! reqwest) through the same core limiter, retry policy and breaker.

pub mod core;
pub mod gateway;
pub mod backend;
pub mod engine;
pub mod preview;

#[cfg(feature = "python")]
mod py;
