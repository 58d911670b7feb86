//! A circuit breaker shared by a fleet: one state in Redis (`scripts/breaker.lua`, the core's state
//! machine on Redis's clock), cached in each process so a closed breaker's calls cost no round trip.
//!
//! - Closed: calls are admitted from the cache; their successes are counted here and reach Redis in a
//!   batch with the next call to it. While calls are made, the cache is re-read in the background
//!   once it is [`SYNC_INTERVAL_NS`] old (on the runtime; the caller never waits), so a breaker another
//!   process opened is seen open within that interval plus one round trip. A cache older than
//!   [`REREAD_FIRST_NS`] (a process making fewer than ten calls a second) is re-read before deciding,
//!   once for all the callers deciding at that moment (threads and tasks alike; the others wait for it).
//! - A failure is reported at once, on the runtime: the failing call does not wait for Redis. This
//!   process's next decision does, if the report has not landed yet (at most the backend's timeouts),
//!   so the process whose failure opens the breaker sees it open at its very next call, and a reset or
//!   isolation comes after its failures. What a report changed is kept for the caller's thread to
//!   announce ([`FleetBreaker::take_changes`]).
//! - A caller on tokio (the batch engine) decides with [`FleetBreaker::allow_async`]: the same
//!   decision, whose waits (reports in flight, a re-read, a trial) are awaited on the Redis runtime
//!   instead of blocking the caller's thread.
//! - Open: refused from the cache until the time Redis gave; then each trial is asked of Redis, which
//!   hands out `half_open_max_calls` trials for the whole fleet, not per process. A trial's result is
//!   reported as a failure is. Trials lost with their process are handed out again after a minute (or
//!   `slow_call`, when slow calls count; never sooner than `recovery_timeout`).
//! - Answers are taken into the cache in the order their calls were made: one that comes late (a
//!   re-read sent before a failure's report) does not undo a later one.
//! - When Redis cannot be reached, the backend's failure policy decides: `local` uses a breaker in this
//!   process alone until Redis answers again, `fail_open` lets calls pass uncounted, `fail_closed`
//!   raises `BackendUnavailable`.
//!
//! The script is a function of the one holysheep library, called as the limiter's scripts are (see
//! [`scripts`](crate::backend::redis::scripts)): FCALL on Redis 7.0+, EVALSHA before; a server that
//! lost it (restarted, flushed, failed over) gets it again without an error reaching the caller.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::backend::redis::backend::{Backend, Resend};
use crate::backend::redis::error::BackendError;
use crate::backend::redis::{process, runtime};
use crate::backend::redis::scripts::{BREAKER, Call};
use crate::backend::redis::shared::OnError;
use crate::core::breaker::{BreakerConfig, CircuitBreaker, HALF_OPEN_RETRY_NS, Permit, State, Transition};
use crate::core::clock::{Clock, MonotonicClock, ns_to_secs};
use crate::core::error::Error;
use crate::core::outcomes::Span;

/// The longest a busy process's cached state may be out of date (plus one round trip).
pub const SYNC_INTERVAL_NS: u64 = 50_000_000;
/// A cache older than this is re-read before the call is decided (one round trip): only a process
/// making fewer than ten calls a second pays it, at most once per call.
pub const REREAD_FIRST_NS: u64 = 2 * SYNC_INTERVAL_NS;
const NS_PER_MS: u64 = 1_000_000;
/// How long a trial may go unanswered, unless `slow_call` says otherwise: an LLM call takes up to a minute.
const TRIAL_LEASE_NS: u64 = 60_000_000_000;

/// Where a permit came from (`Permit::source`).
const FLEET: u8 = 0;
const LOCAL: u8 = 1;
const UNCOUNTED: u8 = 2;

/// A fleet breaker's refusal: the breaker is open, or Redis failed under `fail_closed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Open(Error),
    Backend(BackendError),
}

/// The cached state: state (bits 0-1), generation modulo 2^16 (bits 2-17), and when open the end of
/// the open period in ms of this process's clock (bits 18-63; all ones: isolated).
#[derive(Debug, Clone, Copy)]
struct Cached(u64);

const ISOLATED_MS: u64 = (1 << 46) - 1;

impl Cached {
    fn new(state: State, generation: u16, until_ms: u64) -> Self {
        let bits = match state {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        };
        Cached(bits | (u64::from(generation) << 2) | (until_ms.min(ISOLATED_MS) << 18))
    }
    fn state(self) -> State {
        match self.0 & 3 {
            0 => State::Closed,
            1 => State::Open,
            _ => State::HalfOpen,
        }
    }
    fn generation(self) -> u16 {
        (self.0 >> 2) as u16
    }
    fn until_ms(self) -> u64 {
        self.0 >> 18
    }
}

/// What the script answered.
struct Answer {
    state: State,
    generation: u16,
    /// ms until trials may start; `None` when isolated.
    wait_ms: Option<u64>,
    granted: bool,
    previous: State,
}

fn state_of(code: i64) -> State {
    match code {
        1 => State::Open,
        2 => State::HalfOpen,
        _ => State::Closed,
    }
}

/// Reports of this process's calls on their way to Redis (failures, trials' results). The caller that
/// sends one does not wait for it; the next decision does ([`Reports::wait`]).
#[derive(Default)]
struct Reports {
    /// The process that sent those counted: a forked child has none of them in flight.
    pid: AtomicU32,
    sent: AtomicU64,
    landed: AtomicU64,
    lock: Mutex<()>,
    wake: Condvar,
    /// What landed reports changed, for the caller's thread to announce.
    changes: Mutex<Vec<Transition>>,
    changed: AtomicBool,
    /// Wakes the decisions awaiting reports on tokio (the threads' wait on `wake`).
    landing: tokio::sync::Notify,
}

impl Reports {
    fn sending(&self) {
        let pid = process::id();
        if self.pid.swap(pid, Ordering::AcqRel) != pid {
            // A forked child: the parent's reports in flight never land here.
            self.landed.store(self.sent.load(Ordering::Acquire), Ordering::Release);
        }
        self.sent.fetch_add(1, Ordering::AcqRel);
    }

    fn landed(&self, change: Option<Transition>) {
        if let Some(change) = change {
            self.changes.lock().unwrap_or_else(|p| p.into_inner()).push(change);
            self.changed.store(true, Ordering::Release);
        }
        self.landed.fetch_add(1, Ordering::AcqRel);
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.wake.notify_all();
        self.landing.notify_waiters();
    }

    #[inline]
    fn in_flight(&self) -> bool {
        self.landed.load(Ordering::Acquire) < self.sent.load(Ordering::Acquire) && self.pid.load(Ordering::Acquire) == process::id()
    }

    /// Waits until the reports sent so far have landed, at most `limit`.
    fn wait(&self, limit: Duration) {
        if !self.in_flight() {
            return;
        }
        let target = self.sent.load(Ordering::Acquire);
        let deadline = Instant::now() + limit;
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.landed.load(Ordering::Acquire) < target {
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()) else { break };
            guard = self.wake.wait_timeout(guard, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// [`wait`](Self::wait) for a caller on tokio: the same limit, its worker free meanwhile.
    async fn landed_async(&self, limit: Duration) {
        if !self.in_flight() {
            return;
        }
        let target = self.sent.load(Ordering::Acquire);
        let all_landed = async {
            loop {
                let landing = self.landing.notified();
                tokio::pin!(landing);
                // Listening before looking: a report landing in between still wakes this one.
                landing.as_mut().enable();
                if self.landed.load(Ordering::Acquire) >= target {
                    return;
                }
                landing.await;
            }
        };
        let _ = tokio::time::timeout(limit, all_landed).await;
    }

    #[inline]
    fn take_changes(&self) -> Vec<Transition> {
        if !self.changed.load(Ordering::Acquire) || !self.changed.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The re-read before deciding (a cache older than [`REREAD_FIRST_NS`]), shared by every caller
/// deciding at that moment, threads and tasks alike: one leads and reads, the others wait for it and
/// decide from what it read. Nothing is locked while it reads; a waiter waits at most as long as the
/// backend allows one call.
#[derive(Default)]
struct Reread {
    running: Mutex<bool>,
    done: Condvar,
    /// Wakes the callers awaiting it on tokio (the threads wait on `done`).
    finished: tokio::sync::Notify,
}

/// The lead of a re-read, handed back when dropped (after the read, or with a panic or a cancelled task).
struct Leading<'a>(&'a Reread);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        *self.0.running.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.0.done.notify_all();
        self.0.finished.notify_waiters();
    }
}

impl Reread {
    /// The lead when no re-read is under way; else waits for the one that is, at most `limit`.
    fn lead_or_wait(&self, limit: Duration) -> Option<Leading<'_>> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if !*running {
            *running = true;
            return Some(Leading(self));
        }
        let deadline = Instant::now() + limit;
        while *running {
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()) else { break };
            running = self.done.wait_timeout(running, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        None
    }

    /// [`lead_or_wait`](Self::lead_or_wait) for a caller on tokio: the same limit, its worker free meanwhile.
    async fn lead_or_await(&self, limit: Duration) -> Option<Leading<'_>> {
        let finished = self.finished.notified();
        tokio::pin!(finished);
        // Listening before looking: a re-read ending in between still wakes this one.
        finished.as_mut().enable();
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if !*running {
                *running = true;
                return Some(Leading(self));
            }
        }
        let _ = tokio::time::timeout(limit, finished).await;
        None
    }
}

struct Inner {
    backend: Arc<Backend>,
    key: String,
    config: BreakerConfig,
    on_error: OnError,
    /// Decides alone while Redis is away (the `local` policy); also times slow calls.
    local: CircuitBreaker,
    cached: AtomicU64,
    synced_at_ns: AtomicU64,
    syncing: AtomicBool,
    /// Successes seen since they were last reported.
    successes: AtomicU64,
    /// Redis failed lately: the policy decides until a re-read succeeds.
    down: AtomicBool,
    reports: Reports,
    reread: Reread,
    /// Numbers the calls to Redis as they are made; the newest whose answer the cache holds.
    issued: AtomicU64,
    adopted: AtomicU64,
    clock: MonotonicClock,
}

/// One breaker state for every process naming the same key.
#[derive(Clone)]
pub struct FleetBreaker {
    inner: Arc<Inner>,
}

impl FleetBreaker {
    /// A breaker over `backend` under `key`; the failure-rate window must be one of time (`window_s`),
    /// which is what a fleet can share.
    pub fn new(backend: Arc<Backend>, key: &str, config: BreakerConfig, on_error: OnError) -> Result<Self, Error> {
        if let Some(rule) = &config.failure_rate
            && matches!(rule.span, Span::Calls(_))
        {
            return Err(Error::config(
                "window",
                "a breaker shared through a backend measures its failure rate over time: give window_s= instead of window=",
            ));
        }
        if key.is_empty() || key.contains(['{', '}']) {
            return Err(Error::config("key", format!("must be non-empty without braces, got {key:?}")));
        }
        // One clock for both: the local breaker times slow calls on the permits this one stamps.
        let clock = MonotonicClock::new();
        let local = CircuitBreaker::new(config.clone(), clock.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                key: format!("{{{}:{key}}}:breaker", backend.prefix()),
                backend,
                config,
                on_error,
                local,
                cached: AtomicU64::new(Cached::new(State::Closed, 0, 0).0),
                synced_at_ns: AtomicU64::new(0),
                syncing: AtomicBool::new(false),
                successes: AtomicU64::new(0),
                down: AtomicBool::new(false),
                reports: Reports::default(),
                reread: Reread::default(),
                issued: AtomicU64::new(0),
                adopted: AtomicU64::new(0),
                clock,
            }),
        })
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.inner.config
    }

    /// The Redis key holding the state.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// Admits a call: from the cache while closed, from Redis for a half-open trial.
    #[inline]
    pub fn allow(&self) -> Result<Permit, Refusal> {
        self.await_reports();
        let mut now = self.inner.clock.now_ns();
        if self.reread_first(now) {
            // Quiet for a while: what this process saw may be long gone; look before deciding, once
            // for all the threads deciding now (a burst after a quiet spell would send one each).
            if let Some(_lead) = self.inner.reread.lead_or_wait(self.wait_limit())
                && self.still_reread_first()
            {
                let _ = self.run("sync", 0, None);
            }
            now = self.inner.clock.now_ns();
        }
        match self.decide_cached(now) {
            Some(decided) => decided,
            None => self.trial_answered(self.run("trial", 0, None), now),
        }
    }

    /// [`allow`](Self::allow) for a caller on tokio (the batch engine), which never blocks on Redis:
    /// reports in flight, a re-read and a trial are awaited on the Redis runtime. A closed breaker
    /// decides from its cache without awaiting anything.
    pub async fn allow_async(&self) -> Result<Permit, Refusal> {
        if self.inner.reports.in_flight() {
            self.inner.reports.landed_async(self.wait_limit()).await;
        }
        let mut now = self.inner.clock.now_ns();
        if self.reread_first(now) {
            // One re-read for all the requests deciding at once (a job's first dozens): the rest
            // wait for it and decide from what it read.
            if let Some(_lead) = self.inner.reread.lead_or_await(self.wait_limit()).await
                && self.still_reread_first()
            {
                let _ = self.run_async("sync").await;
            }
            now = self.inner.clock.now_ns();
        }
        match self.decide_cached(now) {
            Some(decided) => decided,
            None => self.trial_answered(self.run_async("trial").await, now),
        }
    }

    /// Whether the cache is too old to decide from before a re-read (else a stale one is re-read in
    /// the background).
    #[inline]
    fn reread_first(&self, now: u64) -> bool {
        if self.too_old(now) {
            return true;
        }
        self.refresh_if_stale(now);
        false
    }

    /// Whether the cache is [`REREAD_FIRST_NS`] old: too old to decide from before reading it again.
    #[inline]
    fn too_old(&self, now: u64) -> bool {
        now.saturating_sub(self.inner.synced_at_ns.load(Ordering::Relaxed)) >= REREAD_FIRST_NS
    }

    /// For the lead of a re-read: whether it is still needed (one that ended between looking and
    /// leading has read what this one would).
    #[inline]
    fn still_reread_first(&self) -> bool {
        self.too_old(self.inner.clock.now_ns())
    }

    /// The decision the cache (or the failure policy, while Redis is away) makes; `None`: a trial is
    /// to be asked of Redis.
    #[inline]
    fn decide_cached(&self, now: u64) -> Option<Result<Permit, Refusal>> {
        if self.inner.down.load(Ordering::Acquire) {
            return Some(self.allow_alone());
        }
        let cached = Cached(self.inner.cached.load(Ordering::Acquire));
        match cached.state() {
            State::Closed => Some(Ok(self.permit(cached.generation(), false, false, now))),
            State::Open if cached.until_ms() == ISOLATED_MS => Some(Err(self.refuse(u64::MAX))),
            State::Open if now / NS_PER_MS < cached.until_ms() => Some(Err(self.refuse(cached.until_ms() * NS_PER_MS - now))),
            _ => None,
        }
    }

    fn permit(&self, generation: u16, opened_trials: bool, trial: bool, now: u64) -> Permit {
        let started_us = if self.inner.config.slow_call_ns.is_some() { now / 1_000 } else { 0 };
        Permit { generation, opened_trials, trial, source: FLEET, started_us: started_us & ((1 << 43) - 1) }
    }

    fn refuse(&self, retry_after_ns: u64) -> Refusal {
        let name = &self.inner.config.name;
        let message = if retry_after_ns == u64::MAX {
            format!("circuit {name:?} is isolated (fleet-wide): failing fast until reset()")
        } else {
            format!("circuit {name:?} is open (fleet-wide): failing fast for another {:.3} s", ns_to_secs(retry_after_ns))
        };
        Refusal::Open(Error::CircuitOpen { message, retry_after_ns })
    }

    /// The failure policy's decision while Redis is away.
    fn allow_alone(&self) -> Result<Permit, Refusal> {
        match self.inner.on_error {
            OnError::Local => self.inner.local.allow().map(|p| Permit { source: LOCAL, ..p }).map_err(Refusal::Open),
            OnError::FailOpen => Ok(Permit { source: UNCOUNTED, ..Permit::default() }),
            OnError::FailClosed => Err(Refusal::Backend(BackendError::Unavailable {
                message: format!("the breaker {:?} cannot reach Redis (on_error='fail_closed')", self.inner.config.name),
            })),
        }
    }

    /// A trial's permit, or why not, from Redis's answer to asking for one.
    fn trial_answered(&self, asked: Result<Answer, BackendError>, now: u64) -> Result<Permit, Refusal> {
        match asked {
            Ok(answer) if answer.granted => {
                Ok(self.permit(answer.generation, answer.previous == State::Open, true, now))
            }
            Ok(answer) => Err(self.refuse(match answer.wait_ms {
                None => u64::MAX,
                Some(0) => HALF_OPEN_RETRY_NS.min(self.inner.config.recovery_timeout_ns),
                Some(ms) => ms * NS_PER_MS,
            })),
            Err(_) => self.allow_alone(),
        }
    }

    /// A success: counted here for the next report, unless it was a trial (reported now) or too slow
    /// (a failure).
    #[inline]
    pub fn record_success(&self, permit: Permit) -> Option<Transition> {
        match permit.source {
            LOCAL => return self.inner.local.record_success(permit),
            UNCOUNTED => return None,
            _ => {}
        }
        if self.inner.config.slow_call_ns.is_some() && self.inner.local.is_slow(permit) {
            return self.record_failure(permit, None);
        }
        if !permit.trial {
            self.inner.successes.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.report("trial_ok", permit.generation, None);
        None
    }

    /// A failure, reported with the successes counted since the last report, without waiting for Redis
    /// (see the module's notes): what it changes is announced later ([`take_changes`](Self::take_changes)),
    /// except for a breaker of this process alone (the `local` policy), which answers at once.
    pub fn record_failure(&self, permit: Permit, open_for_ns: Option<u64>) -> Option<Transition> {
        match permit.source {
            LOCAL => return self.inner.local.record_failure(permit, open_for_ns),
            UNCOUNTED => return None,
            _ => {}
        }
        self.report("fail", permit.generation, open_for_ns);
        None
    }

    /// A call that says nothing about the service: a trial gives its slot back.
    pub fn release(&self, permit: Permit) {
        match permit.source {
            LOCAL => self.inner.local.release(permit),
            FLEET if permit.trial => self.report("trial_back", permit.generation, None),
            _ => {}
        }
    }

    /// Opens the breaker for the whole fleet until [`reset`](Self::reset), after this process's
    /// reports in flight.
    pub fn isolate(&self) -> Result<Option<Transition>, BackendError> {
        self.await_reports();
        self.run("isolate", 0, None).map(|answer| changed(&answer))
    }

    /// Closes the breaker for the whole fleet, after this process's reports in flight.
    pub fn reset(&self) -> Result<Option<Transition>, BackendError> {
        self.await_reports();
        self.inner.local.reset();
        self.run("reset", 0, None).map(|answer| changed(&answer))
    }

    /// Sends `op` on the runtime with the successes counted so far; what it changes is kept for
    /// [`take_changes`](Self::take_changes). A failure Redis does not hear is counted by the local
    /// breaker under the `local` policy, which decides from then on. Without the runtime (the
    /// interpreter is exiting), on this thread.
    fn report(&self, op: &'static str, generation: u16, open_for_ns: Option<u64>) {
        let inner = &*self.inner;
        inner.reports.sending();
        let Ok(handle) = runtime::handle() else {
            let result = self.run(op, generation, open_for_ns);
            inner.reports.landed(self.reported(op, result, open_for_ns));
            return;
        };
        let successes = inner.successes.swap(0, Ordering::AcqRel);
        let (call, number) = self.invocation(op, successes, generation, open_for_ns);
        let me = self.clone();
        handle.spawn(async move {
            let result = me.inner.backend.call(|mut connection| async move { call.run_async::<Vec<i64>>(&mut connection).await }).await;
            let result = me.adopt(result, successes, number);
            me.inner.reports.landed(me.reported(op, result, open_for_ns));
        });
    }

    /// What a report changed, from Redis's answer or, for a failure Redis did not hear under the
    /// `local` policy, the local breaker's.
    fn reported(&self, op: &str, result: Result<Answer, BackendError>, open_for_ns: Option<u64>) -> Option<Transition> {
        match result {
            Ok(answer) => changed(&answer),
            Err(_) if op == "fail" && self.inner.on_error == OnError::Local => {
                // Redis left during the call: the local breaker counts it, as it decides from now on.
                let local = self.inner.local.allow().ok()?;
                self.inner.local.record_failure(local, open_for_ns)
            }
            Err(_) => None,
        }
    }

    /// Whether reports of this process's calls are on their way to Redis: the next decision waits for
    /// them (a binding releases the GIL first).
    #[inline]
    pub fn reports_in_flight(&self) -> bool {
        self.inner.reports.in_flight()
    }

    /// Waits for this process's reports in flight, at most as long as the backend allows one call.
    pub fn await_reports(&self) {
        if self.inner.reports.in_flight() {
            self.inner.reports.wait(self.wait_limit());
        }
    }

    /// The longest a decision waits for calls others made (reports in flight, a re-read another caller
    /// leads): as long as the backend allows one call.
    fn wait_limit(&self) -> Duration {
        let timeouts = self.inner.backend.timeouts();
        timeouts.connect + timeouts.command + Duration::from_millis(50)
    }

    /// What this process's reports changed since last asked, oldest first: for the caller's thread to
    /// announce (the changes a call makes at once are returned by that call instead).
    #[inline]
    pub fn take_changes(&self) -> Vec<Transition> {
        self.inner.reports.take_changes()
    }

    /// Whether [`allow`](Self::allow) may wait on Redis: reports in flight, a cache old enough to be
    /// read first, or a trial to ask for.
    #[inline]
    pub fn may_wait(&self) -> bool {
        let inner = &*self.inner;
        if self.reports_in_flight() {
            return true;
        }
        let now = inner.clock.now_ns();
        if self.too_old(now) {
            return true;
        }
        let cached = Cached(inner.cached.load(Ordering::Acquire));
        match cached.state() {
            State::Closed => false,
            State::Open => cached.until_ms() != ISOLATED_MS && now / NS_PER_MS >= cached.until_ms(),
            State::HalfOpen => true,
        }
    }

    /// The state as this process last saw it (at most [`SYNC_INTERVAL_NS`] old while calls are made);
    /// open reads half-open once trials may start.
    pub fn state(&self) -> State {
        self.await_reports();
        self.refresh_if_stale(self.inner.clock.now_ns());
        if self.inner.down.load(Ordering::Acquire) && self.inner.on_error == OnError::Local {
            return self.inner.local.state();
        }
        match self.retry_after_ns() {
            Some(0) => State::HalfOpen,
            _ => Cached(self.inner.cached.load(Ordering::Acquire)).state(),
        }
    }

    /// How long until trials may start (`u64::MAX` when isolated); `None` unless open.
    pub fn retry_after_ns(&self) -> Option<u64> {
        self.await_reports();
        if self.inner.down.load(Ordering::Acquire) && self.inner.on_error == OnError::Local {
            return self.inner.local.retry_after_ns();
        }
        let cached = Cached(self.inner.cached.load(Ordering::Acquire));
        match cached.state() {
            State::Open if cached.until_ms() == ISOLATED_MS => Some(u64::MAX),
            State::Open => Some((cached.until_ms() * NS_PER_MS).saturating_sub(self.inner.clock.now_ns())),
            _ => None,
        }
    }

    /// Whether the fleet's breaker was isolated by hand.
    pub fn isolated(&self) -> bool {
        self.await_reports();
        let cached = Cached(self.inner.cached.load(Ordering::Acquire));
        cached.state() == State::Open && cached.until_ms() == ISOLATED_MS
    }

    /// Whether Redis failed lately, so the failure policy decides.
    pub fn degraded(&self) -> bool {
        self.inner.down.load(Ordering::Acquire)
    }

    /// The local breaker: the `local` policy's, and its counters of this process's calls.
    pub fn local(&self) -> &CircuitBreaker {
        &self.inner.local
    }

    /// Re-reads the state now, waiting for the answer (tests, and `stats()`).
    pub fn sync(&self) -> Result<(), BackendError> {
        self.await_reports();
        self.run("sync", 0, None).map(|_| ())
    }

    /// Starts a background re-read when the cache is older than the interval and none is running.
    #[inline]
    fn refresh_if_stale(&self, now: u64) {
        let inner = &*self.inner;
        if now.saturating_sub(inner.synced_at_ns.load(Ordering::Relaxed)) < SYNC_INTERVAL_NS {
            return;
        }
        if inner.syncing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = runtime::handle() else {
            inner.syncing.store(false, Ordering::Release);
            return;
        };
        let me = self.clone();
        handle.spawn(async move {
            let successes = me.inner.successes.swap(0, Ordering::AcqRel);
            let (call, number) = me.invocation("sync", successes, 0, None);
            let result =
                me.inner.backend.call(|mut connection| async move { call.run_async::<Vec<i64>>(&mut connection).await }).await;
            // A failure marked Redis down: the failure policy decides until a re-read succeeds.
            let _ = me.adopt(result, successes, number);
            me.inner.syncing.store(false, Ordering::Release);
        });
    }

    /// The script's call for `op`, and its number among this breaker's calls (see [`Self::adopt`]).
    fn invocation(&self, op: &str, successes: u64, generation: u16, open_for_ns: Option<u64>) -> (Call, u64) {
        let c = &self.inner.config;
        let (rate, window_ms, minimum) = match c.failure_rate {
            Some(rule) => {
                let window_ns = match rule.span {
                    Span::Time(ns) => ns,
                    Span::Calls(_) => 0,
                };
                (rule.threshold, window_ns.div_ceil(NS_PER_MS), rule.minimum_calls)
            }
            None => (0.0, 0, 0),
        };
        let mut call = BREAKER.call(self.inner.backend.dialect(), std::slice::from_ref(&self.inner.key));
        call.arg(op)
            .arg(c.failure_threshold.unwrap_or(0))
            .arg(c.recovery_timeout_ns.div_ceil(NS_PER_MS))
            .arg(c.half_open_max_calls)
            .arg(rate)
            .arg(window_ms)
            .arg(minimum)
            .arg(successes)
            .arg(generation)
            .arg(open_for_ns.map_or(0, |ns| ns.div_ceil(NS_PER_MS).max(1)))
            .arg(self.trial_lease_ns().div_ceil(NS_PER_MS));
        (call, self.inner.issued.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// How long a trial may stay unanswered before Redis hands its slot to another process (its own
    /// may have died holding it): a slow call's length when slow calls count, else a minute, and never
    /// less than the recovery timeout.
    fn trial_lease_ns(&self) -> u64 {
        let c = &self.inner.config;
        c.slow_call_ns.unwrap_or(TRIAL_LEASE_NS).max(c.recovery_timeout_ns)
    }

    /// Runs `op` now on this thread (one round trip), reporting the successes counted so far.
    fn run(&self, op: &str, generation: u16, open_for_ns: Option<u64>) -> Result<Answer, BackendError> {
        let successes = self.inner.successes.swap(0, Ordering::AcqRel);
        let (call, number) = self.invocation(op, successes, generation, open_for_ns);
        let result = self.inner.backend.call_blocking(Resend::Never, |connection| call.run::<Vec<i64>>(connection));
        self.adopt(result, successes, number)
    }

    /// Runs `op` on the Redis runtime, where its connections live, and awaits the answer (taken into the
    /// cache there): [`run`](Self::run) for a caller on another runtime.
    async fn run_async(&self, op: &'static str) -> Result<Answer, BackendError> {
        let handle = runtime::handle()?;
        let successes = self.inner.successes.swap(0, Ordering::AcqRel);
        let (call, number) = self.invocation(op, successes, 0, None);
        let me = self.clone();
        let task = handle.spawn(async move {
            let result = me.inner.backend.call(|mut connection| async move { call.run_async::<Vec<i64>>(&mut connection).await }).await;
            me.adopt(result, successes, number)
        });
        task.await.unwrap_or_else(|_| Err(BackendError::Unavailable { message: "the Redis runtime stopped before it answered".into() }))
    }

    /// Takes Redis's answer to call `number` into the cache, unless the answer to a later call is there
    /// already; on a failure, marks Redis down and keeps the successes for the next report.
    fn adopt(&self, result: Result<Vec<i64>, BackendError>, successes: u64, number: u64) -> Result<Answer, BackendError> {
        let inner = &*self.inner;
        let now = inner.clock.now_ns();
        inner.synced_at_ns.store(now, Ordering::Relaxed);
        let values = match result {
            Ok(values) if values.len() == 5 => values,
            Ok(values) => {
                return Err(BackendError::Unavailable { message: format!("the breaker script answered {values:?}") });
            }
            Err(err) => {
                inner.successes.fetch_add(successes, Ordering::Relaxed);
                if matches!(err, BackendError::Unavailable { .. }) {
                    inner.down.store(true, Ordering::Release);
                }
                return Err(err);
            }
        };
        inner.down.store(false, Ordering::Release);
        let answer = Answer {
            state: state_of(values[0]),
            generation: values[1] as u16,
            wait_ms: u64::try_from(values[2]).ok(),
            granted: values[3] == 1,
            previous: state_of(values[4]),
        };
        if inner.adopted.fetch_max(number, Ordering::AcqRel) > number {
            // The answer to a later call is in the cache already: this one would undo it.
            return Ok(answer);
        }
        let until_ms = match (answer.state, answer.wait_ms) {
            (State::Open, None) => ISOLATED_MS,
            (State::Open, Some(ms)) => (now / NS_PER_MS).saturating_add(ms),
            _ => 0,
        };
        inner.cached.store(Cached::new(answer.state, answer.generation, until_ms).0, Ordering::Release);
        Ok(answer)
    }
}

fn changed(answer: &Answer) -> Option<Transition> {
    (answer.previous != answer.state).then_some(Transition { from: answer.previous, to: answer.state })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_waits_for_the_reports_in_flight_until_they_land() {
        let reports = Arc::new(Reports::default());
        assert!(!reports.in_flight());
        reports.sending();
        assert!(reports.in_flight());
        let landing = Arc::clone(&reports);
        let report = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            landing.landed(Some(Transition { from: State::Closed, to: State::Open }));
        });
        let started = Instant::now();
        reports.wait(Duration::from_secs(5));
        assert!(started.elapsed() >= Duration::from_millis(25), "{:?}", started.elapsed());
        assert!(!reports.in_flight());
        report.join().unwrap();
        assert_eq!(reports.take_changes(), vec![Transition { from: State::Closed, to: State::Open }]);
        assert!(reports.take_changes().is_empty(), "each change is announced once");
    }

    #[test]
    fn a_decision_on_tokio_awaits_the_reports_in_flight_with_its_thread_free_to_land_them() {
        // One thread: were the wait to block it, the report landing on it could never land.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let reports = Arc::new(Reports::default());
        reports.sending();
        let waited = runtime.block_on(async {
            let landing = Arc::clone(&reports);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                landing.landed(None);
            });
            let started = Instant::now();
            reports.landed_async(Duration::from_secs(5)).await;
            started.elapsed()
        });
        assert!(waited >= Duration::from_millis(25) && waited < Duration::from_secs(2), "{waited:?}");
        assert!(!reports.in_flight());
    }

    #[test]
    fn a_decision_on_tokio_waits_for_a_report_that_never_lands_no_longer_than_allowed() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let reports = Reports::default();
        reports.sending();
        let started = Instant::now();
        runtime.block_on(reports.landed_async(Duration::from_millis(40)));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(40) && waited < Duration::from_secs(2), "{waited:?}");
    }

    #[test]
    fn a_report_that_never_lands_holds_a_decision_up_no_longer_than_allowed() {
        let reports = Reports::default();
        reports.sending();
        let started = Instant::now();
        reports.wait(Duration::from_millis(40));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(40) && waited < Duration::from_secs(2), "{waited:?}");
    }

    #[test]
    fn callers_deciding_during_a_reread_wait_for_it_and_do_not_read_themselves() {
        let reread = Arc::new(Reread::default());
        let lead = reread.lead_or_wait(Duration::from_secs(5)).expect("the first caller leads");
        let waiting = Arc::clone(&reread);
        let waiter = std::thread::spawn(move || {
            let started = Instant::now();
            (waiting.lead_or_wait(Duration::from_secs(5)).is_some(), started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(30));
        drop(lead);
        let (led, waited) = waiter.join().unwrap();
        assert!(!led, "the waiter decides from what the lead read");
        assert!(waited >= Duration::from_millis(25) && waited < Duration::from_secs(2), "{waited:?}");
        assert!(reread.lead_or_wait(Duration::from_secs(5)).is_some(), "the next re-read has a lead again");
    }

    #[test]
    fn a_reread_that_never_ends_holds_the_others_up_no_longer_than_allowed() {
        let reread = Reread::default();
        let _lead = reread.lead_or_wait(Duration::from_secs(5)).unwrap();
        let started = Instant::now();
        assert!(reread.lead_or_wait(Duration::from_millis(40)).is_none());
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(40) && waited < Duration::from_secs(2), "{waited:?}");
    }

    #[test]
    fn a_caller_on_tokio_awaits_a_reread_a_thread_leads_and_a_cancelled_lead_is_handed_back() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let reread = Reread::default();
        let (waited, led) = std::thread::scope(|scope| {
            let lead = reread.lead_or_wait(Duration::from_secs(5)).unwrap();
            scope.spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                drop(lead);
            });
            runtime.block_on(async {
                let started = Instant::now();
                let led = reread.lead_or_await(Duration::from_secs(5)).await.is_some();
                (started.elapsed(), led)
            })
        });
        assert!(!led && waited >= Duration::from_millis(25) && waited < Duration::from_secs(2), "{waited:?}");

        // A task cancelled while it leads (its caller gave up) hands the lead back.
        runtime.block_on(async {
            let cancelled = tokio::time::timeout(Duration::from_millis(10), async {
                let _lead = reread.lead_or_await(Duration::from_secs(5)).await;
                std::future::pending::<()>().await;
            });
            assert!(cancelled.await.is_err());
        });
        assert!(reread.lead_or_wait(Duration::from_millis(40)).is_some());
    }

    #[test]
    fn reports_sent_by_a_parent_process_are_none_of_a_forked_childs() {
        let reports = Reports::default();
        reports.sending();
        reports.pid.store(process::id().wrapping_add(1), Ordering::Release);
        assert!(!reports.in_flight(), "the parent's report never lands here");
        reports.sending();
        assert!(reports.in_flight());
        reports.landed(None);
        assert!(!reports.in_flight(), "only the child's own report counted");
    }
}

#[cfg(test)]
#[path = "breaker_tests.rs"]
mod server_tests;
