//! What a job's requests are let through by: the core's breaker in this process, or one state shared
//! through Redis by a fleet of engines (and any other process naming the same key). Both keep their
//! own rules; this only says which one `send` asks, and never blocks the job's thread on Redis: a
//! fleet's decisions that need Redis are awaited on its runtime, and its reports are sent there.

use std::time::Duration;

use crate::backend::redis::BackendError;
use crate::backend::redis::breaker::{FleetBreaker, Refusal};
use crate::core::CircuitBreaker;
use crate::core::breaker::Permit;
use crate::engine::Held;

/// The longest an open fleet breaker is waited out before asking it again: another process may
/// reset it (or isolate it) meanwhile.
const FLEET_RECHECK: Duration = Duration::from_secs(1);

/// Where a job's requests are let through.
#[derive(Clone)]
pub enum Breaker {
    /// By the core's breaker, in this process.
    Local(Held<CircuitBreaker>),
    /// By the state in Redis that every process naming the same key shares.
    Fleet(FleetBreaker),
}

impl Breaker {
    /// Lets a request through, or says why not: `Err(Ok(_))` the breaker is open (`CircuitOpen`, with
    /// how long for); `Err(Err(_))` Redis failed and the failure policy (`fail_closed`) keeps the
    /// failure. A closed breaker answers at once, a fleet's from its cache.
    pub async fn allow(&self) -> Result<Permit, Result<crate::core::Error, BackendError>> {
        match self {
            Breaker::Local(breaker) => breaker.allow().map_err(Ok),
            Breaker::Fleet(fleet) => fleet.allow_async().await.map_err(|refusal| match refusal {
                Refusal::Open(open) => Ok(open),
                Refusal::Backend(failed) => Err(failed),
            }),
        }
    }

    /// The longest to wait out an open breaker before asking it again: a local one changes only by
    /// its own calls, a fleet's by any process's.
    pub fn longest_wait(&self) -> Duration {
        match self {
            Breaker::Local(_) => Duration::MAX,
            Breaker::Fleet(_) => FLEET_RECHECK,
        }
    }

    /// The request succeeded.
    pub fn record_success(&self, permit: Permit) {
        match self {
            Breaker::Local(breaker) => drop(breaker.record_success(permit)),
            Breaker::Fleet(fleet) => drop(fleet.record_success(permit)),
        }
    }

    /// The request failed; `open_for_ns`, the server's own delay, opens the breaker for that long.
    pub fn record_failure(&self, permit: Permit, open_for_ns: Option<u64>) {
        match self {
            Breaker::Local(breaker) => drop(breaker.record_failure(permit, open_for_ns)),
            Breaker::Fleet(fleet) => drop(fleet.record_failure(permit, open_for_ns)),
        }
    }

    /// The request says nothing about the service (cancelled, or refused by the caller's own mistake).
    pub fn release(&self, permit: Permit) {
        match self {
            Breaker::Local(breaker) => breaker.release(permit),
            Breaker::Fleet(fleet) => fleet.release(permit),
        }
    }
}
