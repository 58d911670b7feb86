//! What a job's requests are admitted through: the core's limiter in this process, or a limit shared
//! through Redis by a fleet of engines (and any other process naming the same key). Either way an
//! admission comes back as the backend's [`Admitted`], which `send` stamps, settles, lets observe the
//! answer, and ends.

use std::sync::Arc;

use crate::backend::redis::limiter::Refused;
use crate::backend::redis::shared::{OnError, Shared, Turn};
use crate::backend::{Admitted, Decided};
use crate::core::{Cost, Limit, Limiter};
use crate::engine::{admit, shared};

/// What the engine tells its caller about a shared limit (the binding logs and alerts in Python).
pub trait FleetHooks: Send + Sync {
    /// Redis stopped answering or answers again (once per outage), decided by `on_error` meanwhile.
    fn turned(&self, turn: Turn, on_error: OnError);
    /// Redis admitted a request: what the fleet has used is known again (for budget alerts).
    fn decided(&self);
}

/// A limit shared through Redis.
#[derive(Clone)]
pub struct Fleet {
    /// The same limits held in this process: what the server's answers teach (429s, `x-ratelimit-*`).
    pub limiter: Arc<Limiter>,
    pub shared: Arc<Shared>,
    pub hooks: Arc<dyn FleetHooks>,
}

/// Where a job's requests are admitted.
#[derive(Clone)]
pub enum Gate {
    /// By the core's limiter, in this process.
    Local(Arc<Limiter>),
    /// In Redis, with every process naming the same key.
    Fleet(Fleet),
}

impl Gate {
    /// The limits it enforces.
    pub fn limits(&self) -> &[Limit] {
        match self {
            Gate::Local(limiter) => limiter.limits(),
            Gate::Fleet(fleet) => fleet.limiter.limits(),
        }
    }

    /// Admits one request of `cost` (its tokens at `price` dollars per million), waiting as long as
    /// the limits say. `Err(Ok(_))`: a refusal (a cost no limit can ever pass, a budget crossed);
    /// `Err(Err(_))`: Redis failed and the failure policy (`fail_closed`) keeps the failure. Dropped
    /// while waiting, it leaves the line and gives back what it held.
    pub async fn admit(&self, cost: Cost, price: f64) -> Result<Admitted, Refused> {
        match self {
            Gate::Local(limiter) => {
                let admission = admit::admit(limiter, cost).await.map_err(Ok)?;
                Ok(Admitted::new(limiter, Decided::Local(admission), cost.tokens, price))
            }
            Gate::Fleet(fleet) => {
                let grant = shared::admit(fleet, cost, price).await?;
                let decided = Decided::Redis { shared: Arc::clone(&fleet.shared), grant };
                Ok(Admitted::new(&fleet.limiter, decided, cost.tokens, price))
            }
        }
    }
}
