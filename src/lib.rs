//! holysheep keeps traffic to OpenAI-compatible LLM APIs inside its limits and alive through its failures.
//!
//! [`core`] is pure Rust (no Python) and holds every decision; `py` is the thin pyo3 layer that the
//! `holysheep` Python package is built on, compiled only with the `python` feature (maturin turns it on).
//! [`gateway`] is the mock OpenAI-compatible server that tests and benchmarks run against.
//! [`redis`] is the Redis backend: the same limits decided by Lua scripts in Redis, shared by a fleet.

pub mod core;
pub mod gateway;
pub mod redis;

#[cfg(feature = "python")]
mod py;
