//! A limiter whose state lives in Redis: its keys, the arguments its scripts take, and what their
//! answers mean. Every decision is one script call, so processes sharing the key share the limit.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::Value;

use crate::core::feedback::followed;
use crate::core::limit::{Cost, Limit, Unit};
use crate::core::Error;
use crate::redis::backend::Backend;
use crate::redis::error::BackendError;
use crate::redis::process::PerProcess;
use crate::redis::scripts::{self, Call};
use crate::redis::windows::WindowSpec;

/// What a decision may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Count nothing; say when the request would pass and what is free.
    Peek,
    /// Admit now or not at all.
    Now,
    /// Admit now or at a later instant, waiting at most this long (`None`: any wait).
    Reserve { max_wait_us: Option<u64> },
}

/// An admission: when it may proceed, and what settles or returns it later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub wait_us: u64,
    /// Redis's time of the admission, in microseconds since the epoch.
    pub at_us: u64,
    /// One per window: where the admission was counted (0: that window counted nothing).
    pub receipts: Vec<u64>,
    pub lease: Option<String>,
    pub cost: Cost,
}

/// What a decision came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Admitted(Grant),
    /// The rate admits it only after `wait_us`, later than allowed: nothing was counted.
    Later { wait_us: u64, limit: usize },
    /// Every lease is held; the oldest expires in `retry_us` unless its holder releases it first.
    NoLease { retry_us: u64 },
}

/// A look at the shared state without counting anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peek {
    pub wait_us: u64,
    pub leases: u64,
    pub remaining: Vec<u64>,
}

/// A limiter decided in Redis.
pub struct RemoteLimiter {
    backend: Arc<Backend>,
    limits: Vec<Limit>,
    windows: Vec<WindowSpec>,
    /// The state hash, the lease set, the member set, then one log per window; one hash slot.
    keys: Vec<String>,
    max_leases: Option<u64>,
    lease_ttl_us: u64,
    /// With the process id, names this instance's leases and its entry in the member set.
    instance_suffix: u64,
    next_lease: AtomicU64,
    held: Mutex<PerProcess<HashSet<String>>>,
    /// The process whose renewal task runs (0: none yet); a forked child starts its own.
    renewer_pid: AtomicU32,
    /// How many instances decided within the last member TTL, as of the last answer.
    members: AtomicU64,
    /// The fractions of the configured rates this process enforces, per unit of [`FOLLOWED`] (f64
    /// bits): below 1 while the server allows less (see [`RemoteLimiter::follow`]).
    rate_factors: [AtomicU64; 2],
    created: Instant,
    /// When membership is next due for renewal, in ms since `created`.
    member_renewal_due_ms: AtomicU64,
}

/// An instance counts as a member of the fleet this long after renewing its membership...
const MEMBER_TTL_US: u64 = 10_000_000;
/// ...which it does with a decision at most this often, sparing Redis three commands per decision.
const MEMBER_RENEWAL: Duration = Duration::from_secs(1);

fn integers(value: Value) -> Result<Vec<i64>, BackendError> {
    let Value::Array(items) = value else {
        return Err(BackendError::Unavailable { message: format!("unexpected answer from the Redis script: {value:?}") });
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::Int(n) => Ok(n),
            other => Err(BackendError::Unavailable { message: format!("unexpected item from the Redis script: {other:?}") }),
        })
        .collect()
}

impl RemoteLimiter {
    /// `limits` (may be empty) and an optional concurrency bound, shared under `key`. Leases not
    /// renewed for `lease_ttl` (their process died) come back by themselves.
    pub fn new(
        backend: Arc<Backend>,
        key: &str,
        limits: Vec<Limit>,
        max_leases: Option<u64>,
        lease_ttl: Duration,
    ) -> Result<Self, Error> {
        if key.is_empty() {
            return Err(Error::config("key", "must name the shared limit, got an empty string"));
        }
        let lease_ttl_us = lease_ttl.as_micros() as u64;
        if lease_ttl_us < 1_000 {
            return Err(Error::config("lease_ttl", "must be at least 0.001 seconds"));
        }
        let windows: Vec<WindowSpec> = limits.iter().map(WindowSpec::new).collect();
        // The hash tag puts every key of one limiter in one Redis Cluster slot, so one script sees all.
        let tag = format!("{{{}:{key}}}", backend.prefix());
        let mut keys = vec![format!("{tag}:state"), format!("{tag}:leases"), format!("{tag}:members")];
        keys.extend(windows.iter().map(|w| format!("{tag}:log:{}", w.id)));
        let instance_suffix = RandomState::new().hash_one(key);
        Ok(Self {
            backend,
            limits,
            windows,
            keys,
            max_leases,
            lease_ttl_us,
            instance_suffix,
            next_lease: AtomicU64::new(0),
            held: Mutex::new(PerProcess::new(HashSet::new())),
            renewer_pid: AtomicU32::new(0),
            members: AtomicU64::new(0),
            rate_factors: [AtomicU64::new(1.0_f64.to_bits()), AtomicU64::new(1.0_f64.to_bits())],
            created: Instant::now(),
            member_renewal_due_ms: AtomicU64::new(0),
        })
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Instances that shared the limit lately, as of the last answer from Redis (0 before any).
    pub fn members(&self) -> u64 {
        self.members.load(Ordering::Relaxed)
    }

    /// The leases this process holds (a forked child holds none of its parent's).
    fn held<R>(&self, with: impl FnOnce(&mut HashSet<String>) -> R) -> R {
        with(self.held.lock().unwrap_or_else(|p| p.into_inner()).current(HashSet::new))
    }

    /// Names this instance in this process: a forked child is another instance, with other lease ids.
    fn instance(&self) -> String {
        format!("{}-{:016x}", std::process::id(), self.instance_suffix)
    }

    /// The refusal for a cost that window `index` can never admit; worded like the core's.
    fn never(&self, operation: &str, cost: Cost, index: usize, max_cost: u64) -> Error {
        let limit = &self.limits[index];
        let what = if cost.tokens > 0 { format!("a request of {} tokens", cost.tokens) } else { "a request".into() };
        Error::RateLimited {
            message: format!(
                "{operation}: {what} exceeds what '{limit}' can ever admit ({max_cost} {} at once), so it never passes",
                limit.unit().name()
            ),
            retry_after_ns: None,
            limit: limit.to_string(),
            remaining: 0.0,
        }
    }

    /// The refusal for a wait longer than the caller allows.
    pub fn too_long(&self, operation: &str, wait_us: u64, index: usize) -> Error {
        let limit = &self.limits[index];
        Error::RateLimited {
            message: format!("{operation}: a request would wait {:.3}s for '{limit}'", wait_us as f64 / 1e6),
            retry_after_ns: Some(wait_us.saturating_mul(1_000)),
            limit: limit.to_string(),
            remaining: 0.0,
        }
    }

    /// Decides one request of `cost` in one round trip, on the runtime. `lease`: take a concurrency
    /// lease with it. `Err(Ok(_))`: a cost that can never pass; `Err(Err(_))`: Redis failed.
    pub async fn decide(
        self: &Arc<Self>,
        cost: Cost,
        mode: Mode,
        lease: bool,
        operation: &str,
    ) -> Result<Outcome, Result<Error, BackendError>> {
        let lease_id = self.lease_id(lease);
        let invocation = self.acquire_invocation(cost, mode, &lease_id);
        let value = self.backend.call(|mut c| async move { invocation.run_async(&mut c).await }).await;
        self.interpret(value.map_err(Err)?, lease_id, cost, operation)
    }

    /// `decide` on this thread, blocking until Redis answers.
    pub fn decide_blocking(
        self: &Arc<Self>,
        cost: Cost,
        mode: Mode,
        lease: bool,
        operation: &str,
    ) -> Result<Outcome, Result<Error, BackendError>> {
        let lease_id = self.lease_id(lease);
        let invocation = self.acquire_invocation(cost, mode, &lease_id);
        let value = self.backend.call_blocking(|c| invocation.run(c));
        self.interpret(value.map_err(Err)?, lease_id, cost, operation)
    }

    /// A fresh lease id when a lease is asked for and the limiter bounds concurrency; "" otherwise.
    pub fn lease_id(&self, lease: bool) -> String {
        match (lease, self.max_leases) {
            (true, Some(_)) => format!("{}:{}", self.instance(), self.next_lease.fetch_add(1, Ordering::Relaxed)),
            _ => String::new(),
        }
    }

    /// What the acquire script's answer means for a request of `cost` that asked for `lease_id`.
    pub fn interpret(
        self: &Arc<Self>,
        value: Value,
        lease_id: String,
        cost: Cost,
        operation: &str,
    ) -> Result<Outcome, Result<Error, BackendError>> {
        let reply = self.reply(value).map_err(Err)?;
        let field = |i: usize| reply[i] as u64;
        match reply[0] {
            0 => {
                let lease = (!lease_id.is_empty()).then_some(lease_id);
                if let Some(id) = &lease {
                    self.held(|held| held.insert(id.clone()));
                    self.keep_leases_alive();
                }
                let receipts = reply[4..].iter().map(|&r| r as u64).collect();
                Ok(Outcome::Admitted(Grant { wait_us: field(2), at_us: field(3), receipts, lease, cost }))
            }
            1 => Ok(Outcome::Later { wait_us: field(2), limit: reply[3] as usize - 1 }),
            2 => Err(Ok(self.never(operation, cost, reply[2] as usize - 1, field(3)))),
            3 => Ok(Outcome::NoLease { retry_us: field(2) }),
            other => Err(Err(BackendError::Unavailable { message: format!("unexpected status {other} from the Redis script") })),
        }
    }

    /// When `cost` would pass and what is free now, counting nothing (on this thread).
    pub fn peek_blocking(self: &Arc<Self>, cost: Cost) -> Result<Peek, Result<Error, BackendError>> {
        let invocation = self.acquire_invocation(cost, Mode::Peek, "");
        let value = self.backend.call_blocking(|c| invocation.run(c)).map_err(Err)?;
        let reply = self.reply(value).map_err(Err)?;
        match reply[0] {
            4 => Ok(Peek { wait_us: reply[2] as u64, leases: reply[4] as u64, remaining: reply[5..].iter().map(|&r| r as u64).collect() }),
            2 => Err(Ok(self.never("time_until_ready", cost, reply[2] as usize - 1, reply[3] as u64))),
            other => Err(Err(BackendError::Unavailable { message: format!("unexpected status {other} from the Redis script") })),
        }
    }

    /// Whether this decision should renew the instance's membership (claims the renewal if so).
    fn membership_due(&self) -> bool {
        let now_ms = self.created.elapsed().as_millis() as u64;
        let due = self.member_renewal_due_ms.load(Ordering::Relaxed);
        now_ms >= due
            && self
                .member_renewal_due_ms
                .compare_exchange(due, now_ms + MEMBER_RENEWAL.as_millis() as u64, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The script's answer as integers, noting how many instances share the limit.
    fn reply(&self, value: Value) -> Result<Vec<i64>, BackendError> {
        let reply = integers(value)?;
        if reply.len() < 2 {
            return Err(BackendError::Unavailable { message: "short answer from the Redis script".into() });
        }
        self.members.store(reply[1] as u64, Ordering::Relaxed);
        Ok(reply)
    }

    /// Enforces the configured rates scaled by `factors` (requests, tokens; 0..=1) in this process's
    /// decisions from now on: what its own feedback from the server says (429s; see `core::feedback`).
    /// Each process of the fleet follows what it hears; all hear the same server.
    pub fn follow(&self, factors: [f64; 2]) {
        for (factor, in_force) in factors.iter().zip(&self.rate_factors) {
            in_force.store(factor.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
        }
    }

    fn rate_factor(&self, unit: Unit) -> f64 {
        followed(unit).map_or(1.0, |index| f64::from_bits(self.rate_factors[index].load(Ordering::Relaxed)))
    }

    /// The acquire script's call for a request of `cost` (`lease_id` from [`RemoteLimiter::lease_id`]).
    pub fn acquire_invocation(&self, cost: Cost, mode: Mode, lease_id: &str) -> Call {
        let mut invocation = scripts::ACQUIRE.call(&self.keys);
        let (mode_name, max_wait) = match mode {
            Mode::Peek => ("peek", -1),
            Mode::Now => ("now", 0),
            Mode::Reserve { max_wait_us } => ("reserve", max_wait_us.map_or(-1, |us| us.min(i64::MAX as u64) as i64)),
        };
        invocation
            .arg(mode_name)
            .arg(max_wait)
            .arg(lease_id)
            .arg(self.max_leases.unwrap_or(0))
            .arg(self.lease_ttl_us)
            .arg(if self.membership_due() { self.instance() } else { String::new() })
            .arg(MEMBER_TTL_US)
            .arg(self.windows.len());
        for window in &self.windows {
            let (limit, span_us) = window.in_force(self.rate_factor(window.unit));
            invocation
                .arg(&window.id)
                .arg(window.kind_name())
                .arg(limit)
                .arg(span_us)
                .arg(window.units(cost))
                .arg(window.merge_us);
        }
        invocation
    }

    /// Replaces what `grant` counted (`counted`) by `actual`, and releases its lease if `release`;
    /// `actual` of zero in every unit gives the admission back. On the runtime.
    pub async fn adjust(&self, grant: &Grant, counted: Cost, actual: Cost, release: bool) -> Result<(), BackendError> {
        let Some(invocation) = self.adjust_invocation(grant, counted, actual, release) else { return Ok(()) };
        self.backend.call(|mut c| async move { invocation.run_async::<i64>(&mut c).await }).await?;
        Ok(())
    }

    /// `adjust` on this thread, blocking until Redis answers.
    pub fn adjust_blocking(&self, grant: &Grant, counted: Cost, actual: Cost, release: bool) -> Result<(), BackendError> {
        let Some(invocation) = self.adjust_invocation(grant, counted, actual, release) else { return Ok(()) };
        self.backend.call_blocking(|c| invocation.run::<i64>(c))?;
        Ok(())
    }

    /// The script call for an adjustment, or None when there is nothing to change.
    fn adjust_invocation(&self, grant: &Grant, counted: Cost, actual: Cost, release: bool) -> Option<Call> {
        let lease = if release { grant.lease.as_deref() } else { None };
        if let Some(id) = lease {
            self.held(|held| held.remove(id));
        }
        let changes = self.windows.iter().any(|w| w.units(counted) != w.units(actual));
        if !changes && lease.is_none() {
            return None;
        }
        let mut invocation = scripts::ADJUST.call(&self.keys);
        invocation.arg(lease.unwrap_or("")).arg(self.windows.len());
        for (window, receipt) in self.windows.iter().zip(&grant.receipts) {
            invocation
                .arg(&window.id)
                .arg(window.kind_name())
                .arg(window.span_us)
                .arg(*receipt)
                .arg(window.units(counted))
                .arg(window.units(actual));
        }
        Some(invocation)
    }

    /// Starts, once, the task that renews this instance's leases every third of their TTL, so a
    /// request that runs longer than the TTL keeps its slot while its process lives.
    fn keep_leases_alive(self: &Arc<Self>) {
        let pid = std::process::id();
        if self.renewer_pid.swap(pid, Ordering::AcqRel) == pid {
            return;
        }
        let Ok(runtime) = crate::redis::runtime::handle() else { return };
        let this: Weak<Self> = Arc::downgrade(self);
        let period = Duration::from_micros(self.lease_ttl_us / 3);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(limiter) = this.upgrade() else { return };
                let ids: Vec<String> = limiter.held(|held| held.iter().cloned().collect());
                if ids.is_empty() {
                    continue;
                }
                let mut invocation = scripts::RENEW.call(&limiter.keys[1..2]);
                invocation.arg(limiter.lease_ttl_us);
                for id in &ids {
                    invocation.arg(id);
                }
                // A failure here is retried next period; the leases' TTL covers two missed periods.
                let _ = limiter
                    .backend
                    .call(|mut c| async move { invocation.run_async::<i64>(&mut c).await })
                    .await;
            }
        });
    }
}
