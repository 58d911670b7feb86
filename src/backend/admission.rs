//! One request's admission and its lifecycle, whichever backend decided it, for every owner: the
//! Python binding's `_Admission` and the batch engine. Its owner stamps it when the request leaves,
//! settles the real token count, lets it observe the server's answer, and ends it once: `end(false)`
//! (done: its slot goes back) or `end(true)` (never sent: everything goes back). What a shared admission
//! changes in Redis comes back as an [`Adjustment`], which the owner runs the way it may wait: on this
//! thread, awaited, or in the background.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::backend::Decided;
use crate::backend::redis::limiter::Counted;
use crate::backend::redis::shared::Shared;
use crate::backend::redis::{BackendError, Grant, runtime};
use crate::core::feedback::followed;
use crate::core::{Cost, Error, Limiter};

/// An admission held by its owner until it ends.
pub struct Admitted {
    /// The limiter it was admitted by: its slots (local), and what the server's answers teach it.
    limiter: Arc<Limiter>,
    decided: Decided,
    /// The tokens counted for it now: the estimate, then each settled count.
    tokens: AtomicU64,
    /// Dollars per million of its tokens, for a budget.
    price: f64,
    /// Whether it still holds what it was admitted with.
    held: AtomicBool,
}

/// Where an admission was counted, as a word (for a repr).
pub fn counted_where(decided: &Decided) -> &'static str {
    match decided {
        Decided::Local(_) => "local",
        Decided::Redis { grant, .. } => match grant.counted {
            Counted::InRedis { .. } => "redis",
            Counted::Here { .. } => "local share",
            Counted::Nowhere => "fail_open",
        },
    }
}

impl Admitted {
    /// An admission of `tokens` at `price` dollars per million of them, decided as `decided` for
    /// `limiter`.
    pub fn new(limiter: &Arc<Limiter>, decided: Decided, tokens: u64, price: f64) -> Self {
        if let Decided::Redis { shared, .. } = &decided {
            shared.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        Self { limiter: Arc::clone(limiter), decided, tokens: AtomicU64::new(tokens), price, held: AtomicBool::new(true) }
    }

    fn cost_of(&self, tokens: u64) -> Cost {
        Cost::priced(tokens, self.price)
    }

    /// What it counts now.
    pub fn cost(&self) -> Cost {
        self.cost_of(self.tokens())
    }

    /// The tokens counted for it now.
    pub fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::Acquire)
    }

    pub fn decided(&self) -> &Decided {
        &self.decided
    }

    /// Whether it still holds what it was admitted with.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// Whether `stamp` moves it (a local admission; Redis counts a request when it decides it).
    pub fn stamps(&self) -> bool {
        matches!(self.decided, Decided::Local(_))
    }

    /// Marks it sent now: its place in the local windows moves to when its request really goes.
    pub fn stamp(&self) {
        if let Decided::Local(admission) = &self.decided {
            self.limiter.stamp(admission, self.cost());
        }
    }

    /// `stamp` as a call to make later, from anywhere (when the request's first byte goes out); None
    /// when stamping does nothing.
    pub fn stamp_later(&self) -> Option<impl FnOnce() + Send + Sync + 'static> {
        let Decided::Local(admission) = self.decided else { return None };
        let (limiter, cost) = (Arc::clone(&self.limiter), self.cost());
        Some(move || limiter.stamp(&admission, cost))
    }

    /// Replaces the tokens counted so far by `actual_tokens`: refunds or charges the difference, here
    /// at once, or in Redis by the adjustment returned.
    #[must_use = "a shared admission's adjustment must be run"]
    pub fn settle(&self, actual_tokens: u64) -> Option<Adjustment> {
        let actual = self.cost_of(actual_tokens);
        let counted = self.cost_of(self.tokens.swap(actual_tokens, Ordering::AcqRel));
        self.limiter.count_settled(counted.tokens, actual.tokens);
        match &self.decided {
            Decided::Local(admission) => {
                self.limiter.settle(admission, counted, actual);
                None
            }
            Decided::Redis { shared, grant } => Some(Adjustment::new(shared, grant.clone(), counted, actual, false, false)),
        }
    }

    /// What the server answered: a 429 cuts the rates in force, any other answer lets them climb back;
    /// what the `x-ratelimit-remaining-*` and `-reset-*` headers say is left is held against our own
    /// count (local), or against the fleet's count when Redis admitted it (read from the decision's
    /// answer: no round trip; a cut it calls for is checked against the fleet's logs first, in the
    /// background, for what went just after). Unreadable values are ignored.
    pub fn observe<'a>(&self, status: u16, headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) {
        match &self.decided {
            Decided::Local(admission) => self.limiter.observe(admission, self.cost(), status, headers),
            Decided::Redis { shared, grant } => {
                let in_force = self.limiter.rate_factors();
                self.limiter.observe_held_against(status, headers, |unit, remaining, reset_ns| {
                    let allowed = shared.remote.server_allows(grant, unit, remaining, reset_ns)?;
                    if followed(unit).is_some_and(|index| allowed < in_force[index]) {
                        // A cut: what the fleet admitted just after this request may account for it,
                        // which only the logs tell. They are read in the background, and the cut made
                        // by what they say.
                        let (limiter, remote) = (Arc::clone(&self.limiter), Arc::clone(&shared.remote));
                        shared.remote.hold_against_logs(grant, unit, remaining, reset_ns, move |allowed| {
                            limiter.record_server_allows(unit, allowed);
                            remote.follow(limiter.rate_factors());
                        });
                        return None;
                    }
                    Some(allowed)
                });
                shared.remote.follow(self.limiter.rate_factors());
            }
        }
    }

    /// Settles it at `actual_tokens` and ends it as done (`settle`, then `end(false)`), a shared one in
    /// one adjustment: one round trip to Redis where the two would take two.
    #[must_use = "a shared admission's adjustment must be run"]
    pub fn settle_and_end(&self, actual_tokens: u64) -> Result<Option<Adjustment>, Error> {
        let settled = self.settle(actual_tokens);
        let ended = self.end(false)?;
        Ok(match (settled, ended) {
            (Some(settled), Some(ended)) => Some(Adjustment { release: ended.release, ending: true, ..settled }),
            (settled, ended) => settled.or(ended),
        })
    }

    /// Ends it, once (later calls do nothing): `give_back` false when its request is done (its
    /// concurrency slot goes back, to the next waiter first), true when it was never sent (its place in
    /// the rates goes back too). A shared admission's ending is the adjustment returned.
    #[must_use = "a shared admission's adjustment must be run"]
    pub fn end(&self, give_back: bool) -> Result<Option<Adjustment>, Error> {
        if !self.held.swap(false, Ordering::AcqRel) {
            return Ok(None);
        }
        match &self.decided {
            Decided::Local(admission) => {
                if give_back {
                    self.limiter.give_back(admission, self.cost());
                }
                self.limiter.release().map(|()| None)
            }
            Decided::Redis { shared, grant } => {
                shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                let counted = self.cost();
                if grant.lease.is_none() && !give_back {
                    // Nothing held in Redis: a rate counts a request when it is decided.
                    return Ok(None);
                }
                let actual = if give_back { Cost::default() } else { counted };
                Ok(Some(Adjustment::new(shared, grant.clone(), counted, actual, true, true)))
            }
        }
    }
}

/// A change to what a shared admission counted in Redis (from `counted` to `actual`, its lease
/// released if `release`), to run once.
#[must_use = "an adjustment does nothing until it is run"]
pub struct Adjustment {
    shared: Arc<Shared>,
    grant: Grant,
    counted: Cost,
    actual: Cost,
    release: bool,
    /// It ends the admission: a request that is done must not fail for Redis (its lease comes back by
    /// its TTL, or is owed back until Redis answers), so a failure is counted, not returned.
    ending: bool,
}

impl Adjustment {
    fn new(shared: &Arc<Shared>, grant: Grant, counted: Cost, actual: Cost, release: bool, ending: bool) -> Self {
        Self { shared: Arc::clone(shared), grant, counted, actual, release, ending }
    }

    /// Gives back all of `grant`, which nobody will use (its waiter left before taking it).
    pub fn give_back(shared: &Arc<Shared>, grant: Grant) -> Self {
        let counted = grant.cost;
        Self::new(shared, grant, counted, Cost::default(), true, true)
    }

    /// Runs it on this thread, blocking until Redis answers.
    pub fn blocking(self) -> Result<(), BackendError> {
        let done = self.shared.remote.adjust_blocking(&self.grant, self.counted, self.actual, self.release);
        self.outcome(done)
    }

    /// Runs it on the Redis runtime (where the connections live), awaited from any runtime.
    pub async fn run(self) -> Result<(), BackendError> {
        let done = match runtime::handle() {
            Ok(handle) => {
                let (remote, grant, counted, actual, release) = (Arc::clone(&self.shared.remote), self.grant.clone(), self.counted, self.actual, self.release);
                let task = handle.spawn(async move { remote.adjust(&grant, counted, actual, release).await });
                task.await.unwrap_or_else(|err| Err(BackendError::Unavailable { message: format!("the Redis runtime dropped the adjustment: {err}") }))
            }
            Err(err) => Err(err),
        };
        self.outcome(done)
    }

    /// Runs it in the background on the Redis runtime, for a caller that must not wait (an event
    /// loop, a waiter leaving); a lease whose release Redis did not hear is owed back by the backend.
    pub fn in_background(self) {
        match runtime::handle() {
            Ok(handle) => drop(handle.spawn(async move {
                let remote = Arc::clone(&self.shared.remote);
                let done = remote.adjust(&self.grant, self.counted, self.actual, self.release).await;
                // Nobody waits for it: a failure of an ending is counted, a settlement's is lost with
                // the outage (Redis's windows forget it with time).
                drop(self.outcome(done));
            })),
            Err(err) => drop(self.outcome(Err(err))),
        }
    }

    /// What the caller hears of `done`: an ending's failure is counted among the fallbacks.
    fn outcome(&self, done: Result<(), BackendError>) -> Result<(), BackendError> {
        match done {
            Err(_) if self.ending => {
                self.shared.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            done => done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::NS_PER_SEC;
    use crate::core::{Algorithm, Limit, Unit};

    fn limiter() -> Arc<Limiter> {
        let tokens = Limit::new(1_000.0, NS_PER_SEC, Unit::Tokens, Algorithm::Exact, None).unwrap();
        Arc::new(Limiter::new(vec![tokens], Some(1), Default::default()).unwrap())
    }

    fn admitted(limiter: &Arc<Limiter>, tokens: u64) -> Admitted {
        let admission = limiter.try_reserve(Cost::request(tokens)).unwrap().expect("free");
        Admitted::new(limiter, Decided::Local(admission), tokens, 0.0)
    }

    #[test]
    fn an_admission_ends_once_however_often_it_is_ended() {
        let limiter = limiter();
        let held = admitted(&limiter, 10);
        assert!(held.end(false).unwrap().is_none(), "a local ending is done at once");
        assert!(held.end(true).unwrap().is_none() && !held.is_held());
        assert_eq!(limiter.snapshot().counts.in_flight, 0);
        assert!(limiter.try_reserve(Cost::request(0)).unwrap().is_some(), "its one slot back, once");
    }

    #[test]
    fn settling_and_ending_at_once_counts_the_actual_tokens_and_frees_the_slot() {
        let limiter = limiter();
        let held = admitted(&limiter, 900);
        assert!(held.settle_and_end(300).unwrap().is_none());
        assert_eq!((held.tokens(), limiter.snapshot().counts.in_flight), (300, 0));
        assert_eq!(limiter.snapshot().tokens.refunded, 600);
        assert!(limiter.try_reserve(Cost::request(700)).unwrap().is_some(), "the 600 refunded are free again");
    }

    #[test]
    fn an_admission_given_back_frees_its_place_in_the_rates() {
        let limiter = limiter();
        let held = admitted(&limiter, 1_000);
        assert!(held.end(true).unwrap().is_none());
        assert!(limiter.try_reserve(Cost::request(1_000)).unwrap().is_some());
    }
}
