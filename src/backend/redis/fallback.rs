//! The `local` failure policy on a [`RemoteLimiter`]: while Redis is away, decisions are made in this
//! process at its share of the fleet's limits (see `share.rs` for the rules), made from what Redis said
//! last; once Redis answers again, what the share admitted is handed over with the next decision (its
//! units counted there, its running slots held there as leases), and the share stops deciding.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::core::clock::Clock;
use crate::core::limit::Cost;
use crate::backend::redis::error::BackendError;
use crate::backend::redis::leases;
use crate::backend::redis::limiter::{Ask, Counted, Grant, Mode, Outcome, Refused, RemoteLimiter, unavailable};
use crate::backend::redis::share::{Decided, LocalShare, Refusal};

/// How soon a request waiting for a slot of the local share asks again (slots come back by release).
const LOCAL_SLOT_RETRY_US: u64 = 50_000;

/// What this process admitted alone while Redis was away, being handed to Redis.
#[derive(Debug, Clone)]
pub struct Handover {
    pub number: u64,
    share: Arc<LocalShare>,
    pub debt: Vec<u64>,
    pub leases: Vec<String>,
}

impl RemoteLimiter {
    /// The share deciding now: the current one, or one made from what Redis said last.
    fn local_share(&self) -> Result<Arc<LocalShare>, BackendError> {
        let mut share = self.share.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(share) = share.current(|| None) {
            return Ok(Arc::clone(share));
        }
        let sighting = self.sighting.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(seen) = sighting else {
            return Err(unavailable(
                "Redis has not answered this limiter yet: its share of the fleet's limits is not known, so on_error='local' cannot decide alone",
            ));
        };
        let made = Arc::new(LocalShare::new(&self.limits, &self.windows, self.max_leases, &seen));
        *share.current(|| None) = Some(Arc::clone(&made));
        Ok(made)
    }

    /// Decides `cost` in this process alone at its share of every limit (the `local` policy).
    pub fn decide_locally(self: &Arc<Self>, cost: Cost, price: f64, mode: Mode, lease: bool, operation: &str) -> Result<Outcome, Refused> {
        let ask = Ask { lease_id: self.lease_id(lease), cost, price, handover: 0 };
        let slot = (!ask.lease_id.is_empty()).then_some(ask.lease_id.as_str());
        loop {
            let share = self.local_share().map_err(Err)?;
            let now = self.clock.now_ns();
            let latest = match mode {
                Mode::Peek | Mode::Now => now,
                Mode::Reserve { max_wait_us } => max_wait_us.map_or(u64::MAX, |us| now.saturating_add(us.saturating_mul(1_000))),
            };
            return match share.decide(cost, now, latest, slot) {
                Ok(Decided::Admitted { at_ns, receipts }) => Ok(Outcome::Admitted(Grant {
                    wait_us: (at_ns - now).div_ceil(1_000),
                    at_us: 0,
                    lease: slot.map(str::to_string),
                    cost,
                    price,
                    counted: Counted::Here { share, receipts },
                })),
                Ok(Decided::Later { at_ns, binding }) => Ok(Outcome::Later { wait_us: (at_ns - now).div_ceil(1_000), limit: binding }),
                Ok(Decided::NoSlot) => Ok(Outcome::NoLease { retry_us: LOCAL_SLOT_RETRY_US, ticket: 0 }),
                // Redis answered meanwhile and this share handed over what it admitted: a new one decides.
                Err(Refusal::Retired) => continue,
                Err(refusal) => Err(self.local_refusal(refusal, &share, operation, &ask)),
            };
        }
    }

    /// Seconds until `cost` would pass at this process's share, counting nothing.
    pub fn wait_locally(&self, cost: Cost) -> Result<u64, Refused> {
        let share = self.local_share().map_err(Err)?;
        let ask = Ask { lease_id: String::new(), cost, price: 0.0, handover: 0 };
        share.wait_ns(cost, self.clock.now_ns()).map_err(|refusal| self.local_refusal(refusal, &share, "time_until_ready", &ask))
    }

    fn local_refusal(&self, refusal: Refusal, share: &LocalShare, operation: &str, ask: &Ask) -> Refused {
        let members = share.members();
        match refusal {
            Refusal::Budget { index } => Ok(self.over_budget(operation, ask, index)),
            Refusal::Never { index, max_cost } => Ok(self.never(operation, ask, index, max_cost)),
            Refusal::OverShare { index, share } => Err(unavailable(format!(
                "{operation}: Redis is unavailable, and this process's share of '{}' among {members} processes ({share} {}) cannot admit this request",
                self.limits[index],
                self.limits[index].unit().name(),
            ))),
            Refusal::NoSlots => Err(unavailable(format!(
                "{operation}: Redis is unavailable, and this process's share of max_concurrency={} among {members} processes is 0 slots",
                self.max_leases.unwrap_or(0)
            ))),
            Refusal::Retired => Err(unavailable(format!("{operation}: Redis answered again; ask it"))),
        }
    }

    /// What the share admitted that Redis must count, if a share decided lately: the pending hand-over
    /// (the same until Redis confirms it), or a new one. (Never holds the share's lock and the
    /// hand-over's at once.)
    pub(super) fn handover_due(&self) -> Option<Handover> {
        let share = self.share.lock().unwrap_or_else(|p| p.into_inner()).current(|| None).clone();
        let mut pending = self.handover.lock().unwrap_or_else(|p| p.into_inner());
        let pending = pending.current(|| None);
        if pending.is_none() {
            let share = share?;
            let (debt, leases) = share.debt(self.clock.now_ns())?;
            let number = self.next_handover.fetch_add(1, Ordering::Relaxed);
            *pending = Some(Handover { number, share, debt, leases });
        }
        pending.clone()
    }

    /// Redis applied hand-over `number`: its debt is paid, its leases held (and renewed) from now on.
    pub(super) fn handed_over(self: &Arc<Self>, number: u64) {
        let done = {
            let mut pending = self.handover.lock().unwrap_or_else(|p| p.into_inner());
            let pending = pending.current(|| None);
            if pending.as_ref().is_none_or(|h| h.number != number) {
                return;
            }
            // Paid before it stops being pending, so no new hand-over repeats this one's debt.
            let handover = pending.take().expect("checked above");
            handover.share.handed_over(&handover.debt, &handover.leases);
            handover
        };
        for id in &done.leases {
            self.leases.hold(id);
        }
        if !done.leases.is_empty() {
            leases::keep_alive(self);
        }
    }

    /// Redis answers: the share stops deciding once all it admitted is handed over. (A share is made
    /// afresh at the next outage, from what Redis says until then.)
    pub(super) fn back_in_redis(&self) {
        if self.handover.lock().unwrap_or_else(|p| p.into_inner()).current(|| None).is_some() {
            return;
        }
        let mut share = self.share.lock().unwrap_or_else(|p| p.into_inner());
        let share = share.current(|| None);
        if share.as_ref().is_some_and(|s| s.retire(self.clock.now_ns())) {
            *share = None;
        }
    }
}
