//! A limit shared through Redis, waited for from tokio: the same sans-IO wait (`redis::shared`'s
//! `SharedWait`) the binding's thread and asyncio drivers run, and the same failure policy
//! (`Shared::judge`). Decisions run on the Redis runtime, where its connections live; the waiter
//! sleeps on its own runtime. A waiter dropped mid-wait (its job cancelled) leaves the fleet's line
//! and gives back a reservation it holds, and an answer that comes after it left is given back too.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::backend::Adjustment;
use crate::backend::redis::limiter::{Mode, Outcome, Place, Refused};
use crate::backend::redis::shared::{Shared, SharedWait, Step, WaitingCount};
use crate::backend::redis::{BackendError, Grant, runtime};
use crate::core::Cost;
use crate::engine::gate::Fleet;

/// What refusals name as the call that was refused.
const OPERATION: &str = "acquire";

/// One request's wait, counted while it lasts; dropped, it gives up what it holds.
struct Waiting {
    shared: Arc<Shared>,
    wait: SharedWait,
    _counted: WaitingCount,
}

impl Waiting {
    fn start(shared: &Arc<Shared>) -> (Self, Step) {
        let (wait, first) = SharedWait::start(shared.now_ns(), None, shared.remote.place(0));
        (Self { shared: Arc::clone(shared), wait, _counted: WaitingCount::new(shared) }, first)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(grant) = self.wait.abandon() {
            Adjustment::give_back(&self.shared, grant).in_background();
        }
        if let Some(place) = self.wait.leave_line() {
            self.shared.remote.leave_line(&place);
        }
    }
}

/// Waits until the fleet's limit admits `cost` at `price`, as long as it takes.
pub async fn admit(fleet: &Fleet, cost: Cost, price: f64) -> Result<Grant, Refused> {
    let shared = &fleet.shared;
    let (mut waiting, mut step) = Waiting::start(shared);
    loop {
        step = match step {
            Step::Admitted(grant) => {
                shared.admitted(waiting.wait.waited_ns(shared.now_ns()));
                fleet.hooks.decided();
                return Ok(grant);
            }
            Step::Ask { max_wait_us } => {
                let mode = Mode::Reserve { max_wait_us };
                let decided = ask(shared, cost, price, mode, waiting.wait.place().clone()).await;
                let (outcome, turn) = shared.judge(decided, cost, price, mode, OPERATION);
                fleet.hooks.turned(turn, shared.on_error);
                let next = outcome.and_then(|outcome| waiting.wait.answered(shared.now_ns(), outcome, &shared.remote, OPERATION).map_err(Ok));
                if let Err(Ok(_)) = &next {
                    shared.rejected();
                }
                next?
            }
            Step::Sleep { until_ns } => {
                tokio::time::sleep(Duration::from_nanos(until_ns.saturating_sub(shared.now_ns()))).await;
                waiting.wait.woke(shared.now_ns())
            }
        };
    }
}

/// One decision in Redis, run on the Redis runtime; a grant that comes after its waiter left goes back.
async fn ask(shared: &Arc<Shared>, cost: Cost, price: f64, mode: Mode, place: Place) -> Result<Outcome, Refused> {
    let runtime = runtime::handle().map_err(Err)?;
    let (answer, heard) = oneshot::channel();
    let (shared, lease) = (Arc::clone(shared), shared.leases());
    runtime.spawn(async move {
        let decided = shared.remote.decide(cost, price, mode, lease, &place, OPERATION).await;
        if let Err(Ok(Outcome::Admitted(grant))) = answer.send(decided) {
            Adjustment::give_back(&shared, grant).in_background();
        }
    });
    heard.await.unwrap_or_else(|_| Err(Err(BackendError::Unavailable { message: "the Redis runtime stopped before it answered".into() })))
}
