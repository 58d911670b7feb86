//! The concurrency leases one limiter instance holds in Redis, and the ones it owes back.
//!
//! A lease held is renewed every third of its TTL while its process lives, so only a dead process's
//! leases expire by themselves. A lease this process gave up on is owed back at once instead of being
//! left to its TTL: an acquire that timed out on the client (after a stall Redis runs it anyway, and
//! nobody would own that lease), or a release that could not be sent. Each lease id is chosen by the
//! client, so it can name what it owes: a task sends the ids in `reclaim.lua` as soon as Redis answers
//! again (within [`RECLAIM_EVERY`] of the end of the backend's pause, which a probe ends when Redis
//! answers), which removes the lease or, when the acquire has not run yet, withdraws it so that it
//! takes nothing when it does.
//!
//! A release that a primary took just before a failover may never reach the replica promoted in its
//! place (replication is asynchronous): the lease would stay there for its TTL. So the leases released
//! in the last seconds are owed back once more whenever Redis answers again after an outage.
//!
//! Places in the fleet's line for concurrency slots are owed back the same way: a waiter that gave up
//! while Redis did not answer (a stall) must not hold up the line until its place expires.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::backend::redis::error::BackendError;
use crate::backend::redis::limiter::RemoteLimiter;
use crate::backend::redis::process::{self, PerProcess};
use crate::backend::redis::scripts;

/// How often owed leases are sent while Redis does not take them: a try during the backend's pause
/// after a failure fails at once, so the first after the pause ends (see `Backend::probe`) goes at
/// most this long later.
const RECLAIM_EVERY: Duration = Duration::from_millis(10);

/// One instance's leases (a forked child holds and owes none of its parent's).
#[derive(Debug)]
pub struct Leases {
    held: Mutex<PerProcess<HashSet<String>>>,
    owed: Mutex<PerProcess<Vec<String>>>,
    /// Waiters owed back: their places in the line, or their asks withdrawn.
    places_owed: Mutex<PerProcess<Vec<String>>>,
    /// The process whose renewal task runs (0: none yet).
    renewer_pid: AtomicU32,
    /// The process whose reclaiming task runs (0: none now).
    reclaimer_pid: AtomicU32,
    /// Leases released lately, with when: sent again after an outage (see above).
    released: Mutex<PerProcess<VecDeque<(Instant, String)>>>,
    /// The backend's count of ended outages this instance has answered to.
    recoveries_seen: AtomicU64,
}

/// How long a released lease is remembered, to release it again on a primary promoted meanwhile.
const RELEASED_KEPT: Duration = Duration::from_secs(3);

impl Leases {
    pub fn new() -> Self {
        Self {
            held: Mutex::new(PerProcess::new(HashSet::new())),
            owed: Mutex::new(PerProcess::new(Vec::new())),
            places_owed: Mutex::new(PerProcess::new(Vec::new())),
            renewer_pid: AtomicU32::new(0),
            reclaimer_pid: AtomicU32::new(0),
            released: Mutex::new(PerProcess::new(VecDeque::new())),
            recoveries_seen: AtomicU64::new(0),
        }
    }

    /// Remembers that Redis took the release of `id` (for a while: see the module's notes).
    pub fn released(&self, id: &str) {
        let mut released = self.released.lock().unwrap_or_else(|p| p.into_inner());
        let released = released.current(VecDeque::new);
        let now = Instant::now();
        while released.front().is_some_and(|(at, _)| now.duration_since(*at) > RELEASED_KEPT) {
            released.pop_front();
        }
        released.push_back((now, id.to_string()));
    }

    /// How many leases this process holds now.
    pub fn held_count(&self) -> u64 {
        self.held(|held| held.len() as u64)
    }

    fn held<R>(&self, with: impl FnOnce(&mut HashSet<String>) -> R) -> R {
        with(self.held.lock().unwrap_or_else(|p| p.into_inner()).current(HashSet::new))
    }

    fn owed<R>(&self, with: impl FnOnce(&mut Vec<String>) -> R) -> R {
        with(self.owed.lock().unwrap_or_else(|p| p.into_inner()).current(Vec::new))
    }

    /// Counts `id` as held: renewed until released.
    pub fn hold(&self, id: &str) {
        self.held(|held| held.insert(id.to_string()));
    }

    /// Stops renewing `id` (released, or about to be).
    pub fn forget(&self, id: &str) {
        self.held(|held| held.remove(id));
    }

    /// The ids owed back now.
    pub fn owed_now(&self) -> Vec<String> {
        self.owed(|owed| owed.clone())
    }

    /// Adds `id` to what is owed back.
    fn add_owed(&self, id: String) {
        self.owed(|owed| owed.push(id));
    }

    fn places_owed<R>(&self, with: impl FnOnce(&mut Vec<String>) -> R) -> R {
        with(self.places_owed.lock().unwrap_or_else(|p| p.into_inner()).current(Vec::new))
    }

    fn nothing_owed(&self) -> bool {
        self.owed(|owed| owed.is_empty()) && self.places_owed(|places| places.is_empty())
    }
}

/// Takes `waiters` out of the line, or withdraws them (see leave.lua).
pub async fn send_leave(limiter: &RemoteLimiter, waiters: &[String]) -> Result<(), BackendError> {
    let keys = limiter.keys();
    let mut call = scripts::LEAVE.call(limiter.backend().dialect(), &[keys[4].clone(), keys[5].clone(), keys[3].clone()]);
    call.arg(limiter.place_ttl_us()).arg(waiters);
    limiter.backend().call(|mut c| async move { call.run_async::<i64>(&mut c).await }).await.map(drop)
}

/// Starts, once per process, the task that renews `limiter`'s leases every third of their TTL, so a
/// request that runs longer than the TTL keeps its slot while its process lives.
pub fn keep_alive(limiter: &Arc<RemoteLimiter>) {
    let pid = process::id();
    if limiter.leases().renewer_pid.swap(pid, Ordering::AcqRel) == pid {
        return;
    }
    let Ok(runtime) = crate::backend::redis::runtime::handle() else { return };
    let this: Weak<RemoteLimiter> = Arc::downgrade(limiter);
    let period = Duration::from_micros(limiter.lease_ttl_us() / 3);
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let Some(limiter) = this.upgrade() else { return };
            let ids: Vec<String> = limiter.leases().held(|held| held.iter().cloned().collect());
            if ids.is_empty() {
                continue;
            }
            let keys = limiter.keys();
            let mut invocation = scripts::RENEW.call(limiter.backend().dialect(), &[keys[1].clone(), keys[0].clone()]);
            invocation.arg(limiter.lease_ttl_us());
            for id in &ids {
                invocation.arg(id);
            }
            // A failure here is retried next period; the leases' TTL covers two missed periods.
            let _ = limiter.backend().call(|mut c| async move { invocation.run_async::<i64>(&mut c).await }).await;
        }
    });
}

/// After Redis answered again following an outage (once per outage): the leases released lately are
/// owed back once more, in case the primary that took their release was replaced.
pub fn after_recovery(limiter: &Arc<RemoteLimiter>) {
    let recoveries = limiter.backend().recoveries();
    let leases = limiter.leases();
    // A load first: every decision passes here, and a write would bounce the line between cores.
    if leases.recoveries_seen.load(Ordering::Acquire) == recoveries || leases.recoveries_seen.swap(recoveries, Ordering::AcqRel) == recoveries {
        return;
    }
    let recent: Vec<String> = {
        let mut released = leases.released.lock().unwrap_or_else(|p| p.into_inner());
        released.current(VecDeque::new).drain(..).map(|(_, id)| id).collect()
    };
    for id in recent {
        owe(limiter, id);
    }
}

/// Owes lease `id` back to Redis, and makes sure a task sends it as soon as Redis answers.
pub fn owe(limiter: &Arc<RemoteLimiter>, id: String) {
    limiter.leases().forget(&id);
    limiter.leases().add_owed(id);
    reclaim_soon(limiter);
}

/// Owes `waiter`'s place in the line back to Redis, sent as soon as Redis answers.
pub fn owe_place(limiter: &Arc<RemoteLimiter>, waiter: String) {
    limiter.leases().places_owed(|places| places.push(waiter));
    reclaim_soon(limiter);
}

/// Makes sure a task sends what is owed back as soon as Redis answers.
fn reclaim_soon(limiter: &Arc<RemoteLimiter>) {
    let pid = process::id();
    if limiter.leases().reclaimer_pid.swap(pid, Ordering::AcqRel) == pid {
        return;
    }
    let Ok(runtime) = crate::backend::redis::runtime::handle() else { return };
    let this: Weak<RemoteLimiter> = Arc::downgrade(limiter);
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(RECLAIM_EVERY).await;
            let Some(limiter) = this.upgrade() else { return };
            let leases = limiter.leases();
            let ids = leases.owed_now();
            let places = leases.places_owed(|places| places.clone());
            if ids.is_empty() && places.is_empty() {
                // Done, unless an id came in since: then this task goes on (or another one took over).
                leases.reclaimer_pid.store(0, Ordering::Release);
                if leases.nothing_owed() || leases.reclaimer_pid.compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire).is_err() {
                    return;
                }
                continue;
            }
            if !places.is_empty() && send_leave(&limiter, &places).await.is_ok() {
                leases.places_owed(|owed| owed.retain(|place| !places.contains(place)));
            }
            if ids.is_empty() {
                continue;
            }
            let keys = [limiter.keys()[1].clone(), limiter.keys()[3].clone()];
            let mut invocation = scripts::RECLAIM.call(limiter.backend().dialect(), &keys);
            invocation.arg(limiter.lease_ttl_us());
            for id in &ids {
                invocation.arg(id);
            }
            let sent = limiter.backend().call(|mut c| async move { invocation.run_async::<i64>(&mut c).await }).await;
            if sent.is_ok() {
                leases.owed(|owed| owed.retain(|id| !ids.contains(id)));
            }
        }
    });
}
