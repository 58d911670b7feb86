//! A limiter whose state lives in Redis: its keys, the arguments its scripts take, and what their
//! answers mean. Every decision is one script call, so processes sharing the key share the limit; a
//! request's whole cost (requests, tokens, micro-dollars) is decided there, budgets included. While
//! Redis is away, the `local` failure policy decides in this process (`fallback.rs`, `share.rs`).

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Value;

use crate::core::clock::{Clock, MonotonicClock};
use crate::core::feedback::{self, followed};
use crate::core::limit::{Cost, Limit, Unit};
use crate::core::quota::Receipt;
use crate::core::refusal;
use crate::core::Error;
use crate::backend::redis::backend::{Backend, Resend};
use crate::backend::redis::error::BackendError;
use crate::backend::redis::leases::{self, Leases};
use crate::backend::redis::process::{self, PerProcess};
use crate::backend::redis::scripts::{self, Call};
use crate::backend::redis::fallback::Handover;
use crate::backend::redis::share::{LocalShare, Sighting};
use crate::backend::redis::windows::{Kind, WindowSpec};

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

/// Where an admission was counted, and what names it there for settling or giving it back.
#[derive(Debug, Clone)]
pub enum Counted {
    /// In Redis: one receipt per window (0: that window counted nothing), and what each window of
    /// the fleet counted once it was admitted (what a server's remaining count is held against).
    InRedis { receipts: Vec<u64>, used: Vec<u64> },
    /// By this process alone, at its share (the `local` policy while Redis was away).
    Here { share: Arc<LocalShare>, receipts: Vec<Receipt> },
    /// Nowhere: let through uncounted by the `fail_open` policy while Redis was away.
    Nowhere,
}

/// An admission: when it may proceed, and what settles or returns it later.
#[derive(Debug, Clone)]
pub struct Grant {
    pub wait_us: u64,
    /// Redis's time of the admission, in microseconds since the epoch (0 when decided here).
    pub at_us: u64,
    pub lease: Option<String>,
    /// What it was admitted for (the estimate).
    pub cost: Cost,
    /// Dollars per million of its tokens: a settled token count is priced the same.
    pub price: f64,
    pub counted: Counted,
}

/// What a decision came to.
#[derive(Debug, Clone)]
pub enum Outcome {
    Admitted(Grant),
    /// The rate admits it only after `wait_us`, later than allowed: nothing was counted.
    Later { wait_us: u64, limit: usize },
    /// No lease it may take (every lease is held, or others are ahead in the fleet's line): ask again
    /// within `retry_us`. `ticket`: its place in the line (0: it did not join).
    NoLease { retry_us: u64, ticket: u64 },
    /// Not its turn at the rate yet (others wait ahead of it in the fleet's line, or its instant is
    /// too far off to reserve now): ask again after `retry_us`. `ticket` as for `NoLease`.
    NotYet { retry_us: u64, ticket: u64 },
}

/// A look at the shared state without counting anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peek {
    pub wait_us: u64,
    pub leases: u64,
    pub remaining: Vec<u64>,
}

/// A request's place in the fleet's line for concurrency slots and turns at the rate (see
/// acquire.lua): who asks, whether Redis put it in line (`ticket` > 0), and its priority (higher goes
/// first; across the fleet, within +-[`FLEET_PRIORITIES`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub waiter: String,
    pub ticket: u64,
    pub priority: i64,
}

/// Priorities beyond this (either way) order the fleet's line as this one does: the line's score
/// holds the priority and a 32-bit arrival ticket in a double's 53 bits.
pub const FLEET_PRIORITIES: i64 = (1 << 20) - 1;

impl Place {
    /// A request that will not wait: it only needs to know who is in line before it.
    pub fn newcomer(priority: i64) -> Self {
        Self { waiter: String::new(), ticket: 0, priority }
    }
}

/// A decision sent to Redis: what its answer is read against.
#[derive(Debug, Clone)]
pub struct Ask {
    pub(super) lease_id: String,
    pub(super) cost: Cost,
    pub(super) price: f64,
    /// The hand-over it carries (0: none).
    pub(super) handover: u64,
}

/// The acquire script's answer (see acquire.lua).
struct Reply {
    status: i64,
    leases: u64,
    a: i64,
    b: i64,
    /// The units each window counts now (after this decision).
    used: Vec<u64>,
    /// One value per window after `used`: an admission's receipts, a peek's remaining units.
    per_window: Vec<u64>,
}

/// A decision's failure: a refusal (`Ok`: never, a budget) or Redis failing (`Err`).
pub type Refused = Result<Error, BackendError>;

/// The acquire script's numbers, packed as it reads them: little-endian signed 64-bit integers, one
/// argument (see acquire.lua), so Redis converts no number from text.
struct Numbers(Vec<u8>);

/// Numbers before the windows' (see acquire.lua), and per window.
const HEADER_NUMBERS: usize = 11;
const WINDOW_NUMBERS: usize = 10;

impl Numbers {
    fn with_windows(windows: usize) -> Self {
        Self(Vec::with_capacity(8 * (HEADER_NUMBERS + WINDOW_NUMBERS * windows)))
    }

    /// Appends `value`; one beyond `i64` (never sent: limits, spans and costs are far below) is clamped.
    fn push(&mut self, value: impl TryInto<i64>) -> &mut Self {
        self.0.extend_from_slice(&value.try_into().unwrap_or(i64::MAX).to_le_bytes());
        self
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A limiter decided in Redis.
pub struct RemoteLimiter {
    backend: Arc<Backend>,
    pub(super) limits: Vec<Limit>,
    pub(super) windows: Vec<WindowSpec>,
    /// The state hash, the lease set, the member set, the withdrawn leases, the line and its places,
    /// then one log per window; one hash slot.
    keys: Vec<String>,
    pub(super) max_leases: Option<u64>,
    lease_ttl_us: u64,
    /// With the process id, names this instance's leases and its entry in the member set.
    instance_suffix: u64,
    next_lease: AtomicU64,
    pub(super) leases: Leases,
    /// How many instances decided within the last member TTL, as of the last answer.
    members: AtomicU64,
    /// The fractions of the configured rates this process enforces, per unit of [`FOLLOWED`] (f64
    /// bits): below 1 while the server allows less (see [`RemoteLimiter::follow`]).
    rate_factors: [AtomicU64; 2],
    created: Instant,
    /// When membership is next due for renewal, in ms since `created`.
    member_renewal_due_ms: AtomicU64,
    pub(super) clock: MonotonicClock,
    /// What Redis said last: what a share is taken from when it goes away.
    pub(super) sighting: Mutex<Option<Sighting>>,
    /// The share deciding while Redis is away, until what it admitted is handed over.
    pub(super) share: Mutex<PerProcess<Option<Arc<LocalShare>>>>,
    pub(super) handover: Mutex<PerProcess<Option<Handover>>>,
    pub(super) next_handover: AtomicU64,
    /// The process reading the logs for a cut ([`RemoteLimiter::hold_against_logs`]), 0 when none.
    reading_logs: AtomicU32,
}

/// Where the logs start among a limiter's keys (after the state hash, the leases, the members, the
/// withdrawals, the line and its places).
const LOG_KEYS: usize = 6;

/// A log entry `at:units` read (see acquire.lua).
fn parse_entry(entry: &str) -> Option<(u64, u64)> {
    let (at, units) = entry.split_once(':')?;
    Some((at.parse().ok()?, units.parse().ok()?))
}

/// An instance counts as a member of the fleet this long after renewing its membership...
const MEMBER_TTL_US: u64 = 10_000_000;
/// ...which it does with a decision at most this often, sparing Redis three commands per decision.
const MEMBER_RENEWAL: Duration = Duration::from_secs(1);
/// A waiter keeps its place in the fleet's line this long after it last asked (it asks at least every
/// 50 ms while it waits), so a dead process's waiters hold up the line at most this long.
const PLACE_TTL_US: u64 = 2_000_000;

pub(super) fn unavailable(message: impl Into<String>) -> BackendError {
    BackendError::Unavailable { message: message.into() }
}

/// The acquire script's answer: little-endian signed 64-bit integers in one bulk string.
fn integers(value: Value) -> Result<Vec<i64>, BackendError> {
    let Value::BulkString(bytes) = value else {
        return Err(unavailable(format!("unexpected answer from the Redis script: {value:?}")));
    };
    if bytes.len() % 8 != 0 {
        return Err(unavailable(format!("an answer of {} bytes from the Redis script", bytes.len())));
    }
    Ok(bytes.chunks_exact(8).map(|number| i64::from_le_bytes(number.try_into().expect("eight bytes"))).collect())
}

/// What `cost` adds over `counted` in each unit (nothing where it is less).
fn excess(actual: Cost, counted: Cost) -> Cost {
    Cost {
        requests: actual.requests.saturating_sub(counted.requests),
        tokens: actual.tokens.saturating_sub(counted.tokens),
        micro_usd: actual.micro_usd.saturating_sub(counted.micro_usd),
    }
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
        let mut keys = ["state", "leases", "members", "withdrawn", "line", "places"].map(|name| format!("{tag}:{name}")).to_vec();
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
            leases: Leases::new(),
            members: AtomicU64::new(0),
            rate_factors: [AtomicU64::new(1.0_f64.to_bits()), AtomicU64::new(1.0_f64.to_bits())],
            created: Instant::now(),
            member_renewal_due_ms: AtomicU64::new(0),
            clock: MonotonicClock::new(),
            sighting: Mutex::new(None),
            share: Mutex::new(PerProcess::new(None)),
            handover: Mutex::new(PerProcess::new(None)),
            next_handover: AtomicU64::new(1),
            reading_logs: AtomicU32::new(0),
        })
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    pub(crate) fn leases(&self) -> &Leases {
        &self.leases
    }

    pub(crate) fn lease_ttl_us(&self) -> u64 {
        self.lease_ttl_us
    }

    /// The most concurrency leases held at once across the fleet.
    pub fn max_concurrency(&self) -> Option<u64> {
        self.max_leases
    }

    /// The limits shared under this key.
    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    /// Units each window counted fleet-wide at Redis's last answer (`None` before any): what every
    /// decision reports anyway, read by the alerts on the fleet's use.
    pub fn last_used(&self) -> Option<Vec<u64>> {
        self.sighting.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|seen| seen.used.clone())
    }

    /// Instances that shared the limit lately, as of the last answer from Redis (0 before any).
    pub fn members(&self) -> u64 {
        self.members.load(Ordering::Relaxed)
    }

    /// Names this instance in this process: a forked child is another instance, with other lease ids.
    fn instance(&self) -> String {
        format!("{}-{:016x}", process::id(), self.instance_suffix)
    }

    // --- refusals, worded by the core ----------------------------------------------------------------

    /// The refusal of a request that would cross budget window `index`.
    pub(super) fn over_budget(&self, operation: &str, ask: &Ask, index: usize) -> Error {
        refusal::over_budget(operation, ask.cost, &self.limits[index])
    }

    /// The refusal for a cost that window `index` can never admit.
    pub(super) fn never(&self, operation: &str, ask: &Ask, index: usize, max_cost: u64) -> Error {
        refusal::never(operation, ask.cost, &self.limits[index], max_cost, "")
    }

    /// The refusal for a wait longer than the caller allows.
    pub fn too_long(&self, operation: &str, wait_us: u64, index: usize) -> Error {
        let limit = self.limits[index].to_string();
        refusal::too_long(operation, Cost::request(0), limit, wait_us.saturating_mul(1_000), 0.0)
    }

    // --- deciding in Redis ------------------------------------------------------------------------

    /// Decides one request of `cost` in one round trip, on the runtime. `lease`: take a concurrency
    /// lease with it.
    pub async fn decide(self: &Arc<Self>, cost: Cost, price: f64, mode: Mode, lease: bool, place: &Place, operation: &str) -> Result<Outcome, Refused> {
        // Failing at once during the pause after a failure, without naming a lease it would owe back.
        self.backend.check_pause().map_err(Err)?;
        let (call, ask) = self.ask(cost, price, mode, lease, place);
        match self.backend.call(|mut c| async move { call.run_async(&mut c).await }).await {
            Ok(value) => self.interpret(value, ask, operation),
            Err(err) => Err(Err(self.gave_up(ask, err))),
        }
    }

    /// `decide` on this thread, blocking until Redis answers.
    pub fn decide_blocking(self: &Arc<Self>, cost: Cost, price: f64, mode: Mode, lease: bool, place: &Place, operation: &str) -> Result<Outcome, Refused> {
        self.backend.check_pause().map_err(Err)?;
        let (call, ask) = self.ask(cost, price, mode, lease, place);
        match self.backend.call_blocking(Resend::IfClosed, |c| call.run(c)) {
            Ok(value) => self.interpret(value, ask, operation),
            Err(err) => Err(Err(self.gave_up(ask, err))),
        }
    }

    /// A fresh lease id when a lease is asked for and the limiter bounds concurrency; "" otherwise.
    pub(super) fn lease_id(&self, lease: bool) -> String {
        match (lease, self.max_leases) {
            (true, Some(_)) => format!("{}:{}", self.instance(), self.next_lease.fetch_add(1, Ordering::Relaxed)),
            _ => String::new(),
        }
    }

    /// A place in the fleet's line for a request about to wait, at `priority`.
    pub fn place(&self, priority: i64) -> Place {
        Place { waiter: format!("{}:w{}", self.instance(), self.next_lease.fetch_add(1, Ordering::Relaxed)), ticket: 0, priority }
    }

    /// Takes `place` out of the fleet's line, or withdraws it if an ask of it may still run late, in
    /// the background (its waiter gave up); while Redis does not answer, it is owed back like a lease
    /// (see `leases.rs`).
    pub fn leave_line(self: &Arc<Self>, place: &Place) {
        let Ok(runtime) = crate::backend::redis::runtime::handle() else { return };
        let (this, waiter) = (Arc::clone(self), place.waiter.clone());
        runtime.spawn(async move {
            if leases::send_leave(&this, std::slice::from_ref(&waiter)).await.is_err() {
                leases::owe_place(&this, waiter);
            }
        });
    }

    pub(crate) fn place_ttl_us(&self) -> u64 {
        PLACE_TTL_US
    }

    /// Redis did not answer `ask`: it may still run it later (after a stall), so its lease is owed back.
    pub fn gave_up(self: &Arc<Self>, ask: Ask, err: BackendError) -> BackendError {
        if !ask.lease_id.is_empty() {
            leases::owe(self, ask.lease_id);
        }
        err
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

    /// The acquire script's call for a request of `cost` at `price` dollars per million tokens, and
    /// what its answer is read against. It carries what this process admitted alone, if anything.
    pub fn ask(&self, cost: Cost, price: f64, mode: Mode, lease: bool, place: &Place) -> (Call, Ask) {
        let lease_id = self.lease_id(lease);
        let (mode_number, max_wait) = match mode {
            Mode::Peek => (0, -1),
            Mode::Now => (1, 0),
            Mode::Reserve { max_wait_us } => (2, max_wait_us.map_or(-1, |us| us.min(i64::MAX as u64) as i64)),
        };
        let handover = if mode == Mode::Peek { None } else { self.handover_due() };
        // What the last answer said of each window, for Redis to count again should it have lost them
        // (read under the lock while the numbers are written: no copy of it per decision).
        let sighting = self.sighting.lock().unwrap_or_else(|p| p.into_inner());
        let mut numbers = Numbers::with_windows(self.windows.len());
        numbers
            .push(mode_number)
            .push(max_wait)
            .push(self.max_leases.unwrap_or(0))
            .push(self.lease_ttl_us)
            .push(MEMBER_TTL_US)
            .push(place.priority.clamp(-FLEET_PRIORITIES, FLEET_PRIORITIES))
            .push(PLACE_TTL_US)
            .push(self.windows.len())
            .push(handover.as_ref().map_or(0, |h| h.number));
        let own_now = self.leases.held_count();
        let (leases, leases_until_us) = sighting.as_ref().map_or((0, 0), |seen| seen.recalled_leases(own_now, self.lease_ttl_us));
        numbers.push(leases).push(leases_until_us);
        for (index, window) in self.windows.iter().enumerate() {
            let (limit, span_us) = window.in_force(self.rate_factor(window.unit));
            numbers
                .push(u8::from(window.kind == Kind::Gcra))
                .push(limit)
                .push(span_us)
                .push(window.span_us)
                .push(window.units(cost))
                .push(window.merge_us)
                .push(u8::from(window.is_budget()))
                .push(handover.as_ref().map_or(0, |h| h.debt[index]));
            let (used, until_us) = sighting.as_ref().map_or((0, 0), |seen| seen.recalled(index));
            numbers.push(used).push(until_us);
        }
        drop(sighting);
        let mut invocation = scripts::ACQUIRE.call(self.backend.dialect(), &self.keys);
        invocation
            .arg(numbers.bytes())
            .arg(&lease_id)
            .arg(if self.membership_due() { self.instance() } else { String::new() })
            .arg(&place.waiter);
        for window in &self.windows {
            invocation.arg(&window.id);
        }
        if let Some(h) = &handover {
            invocation.arg(self.instance()).arg(&h.leases);
        }
        (invocation, Ask { lease_id, cost, price, handover: handover.map_or(0, |h| h.number) })
    }

    /// The acquire script's answer read: its header, and what it says of the fleet noted (members,
    /// leases, each window's use) for the `local` policy and for Redis to recall. `asked_lease`: the
    /// request asked for one, which the fleet's count includes when it was admitted.
    fn read(&self, value: Value, asked_lease: bool) -> Result<Reply, BackendError> {
        let reply = integers(value)?;
        let n = self.windows.len();
        if reply.len() < 6 + 2 * n {
            return Err(unavailable("short answer from the Redis script"));
        }
        let (members, leases, redis_now_us) = (reply[1] as u64, reply[2] as u64, reply[5] as u64);
        self.members.store(members, Ordering::Relaxed);
        let used: Vec<u64> = reply[6..6 + n].iter().map(|&u| u as u64).collect();
        let until_us = reply[6 + n..6 + 2 * n].iter().map(|&u| u as u64).collect();
        let own_leases = self.leases.held_count() + u64::from(asked_lease && reply[0] == 0);
        let seen = Sighting { at_ns: self.clock.now_ns(), members, leases, own_leases, used: used.clone(), redis_now_us, until_us };
        *self.sighting.lock().unwrap_or_else(|p| p.into_inner()) = Some(seen);
        let per_window = reply[6 + 2 * n..].iter().map(|&r| r as u64).collect();
        Ok(Reply { status: reply[0], leases, a: reply[3], b: reply[4], used, per_window })
    }

    /// What the acquire script's answer means for `ask`.
    pub fn interpret(self: &Arc<Self>, value: Value, ask: Ask, operation: &str) -> Result<Outcome, Refused> {
        let reply = self.read(value, !ask.lease_id.is_empty()).map_err(Err)?;
        if ask.handover > 0 {
            self.handed_over(ask.handover);
        }
        self.back_in_redis();
        leases::after_recovery(self);
        self.backend.follow_primary();
        let (a, b) = (reply.a, reply.b);
        match reply.status {
            0 => {
                let lease = (!ask.lease_id.is_empty()).then_some(ask.lease_id);
                if let Some(id) = &lease {
                    self.leases.hold(id);
                    leases::keep_alive(self);
                }
                let counted = Counted::InRedis { receipts: reply.per_window, used: reply.used };
                Ok(Outcome::Admitted(Grant { wait_us: a as u64, at_us: b as u64, lease, cost: ask.cost, price: ask.price, counted }))
            }
            1 => Ok(Outcome::Later { wait_us: a as u64, limit: b as usize - 1 }),
            2 => Err(Ok(self.never(operation, &ask, a as usize - 1, b as u64))),
            3 => Ok(Outcome::NoLease { retry_us: a as u64, ticket: b as u64 }),
            7 => Ok(Outcome::NotYet { retry_us: a as u64, ticket: b as u64 }),
            6 => Err(Ok(self.over_budget(operation, &ask, a as usize - 1))),
            other => Err(Err(unavailable(format!("unexpected status {other} from the Redis script")))),
        }
    }

    /// When `cost` would pass and what is free now, counting nothing (on this thread).
    pub fn peek_blocking(self: &Arc<Self>, cost: Cost) -> Result<Peek, Refused> {
        let (call, ask) = self.ask(cost, 0.0, Mode::Peek, false, &Place::newcomer(0));
        let value = self.backend.call_blocking(Resend::IfClosed, |c| call.run(c)).map_err(Err)?;
        let reply = self.read(value, false).map_err(Err)?;
        self.back_in_redis();
        match reply.status {
            4 => {
                Ok(Peek { wait_us: reply.a as u64, leases: reply.leases, remaining: reply.per_window })
            }
            2 => Err(Ok(self.never("time_until_ready", &ask, reply.a as usize - 1, reply.b as u64))),
            other => Err(Err(unavailable(format!("unexpected status {other} from the Redis script")))),
        }
    }

    /// What the server allows of `unit` (a fraction of the configured rate), from what it said is left
    /// after `grant`'s request (`remaining`, with the time until its window is whole, `reset_ns`), as
    /// far as the decision's own answer tells (no round trip): by the core's rule
    /// ([`feedback::server_allows`], over the windows the server speaks of), with what the fleet's
    /// windows counted when Redis admitted it. What the fleet admitted up to the guard after it, which
    /// the rule counts too, came later: this is never above what the rule gives, and a cut it calls for
    /// is checked against the logs first ([`RemoteLimiter::hold_against_logs`]). `None` when no
    /// window can tell (GCRA keeps no count; an admission decided outside Redis; a request without
    /// that unit).
    pub fn server_allows(&self, grant: &Grant, unit: Unit, remaining: u64, reset_ns: Option<u64>) -> Option<f64> {
        let Counted::InRedis { used, .. } = &grant.counted else { return None };
        if unit.of(grant.cost) == 0 {
            return None;
        }
        self.spoken_of(unit, reset_ns)
            .map(|i| feedback::server_allows(used[i], remaining, self.windows[i].whole))
            .reduce(f64::max)
    }

    /// The log windows of `unit` a server that is whole again within `reset_ns` speaks of.
    fn spoken_of(&self, unit: Unit, reset_ns: Option<u64>) -> impl Iterator<Item = usize> + '_ {
        (0..self.windows.len()).filter(move |&i| {
            let w = &self.windows[i];
            w.unit == unit && w.kind == Kind::Log && feedback::speaks_of(w.period_ns(), reset_ns)
        })
    }

    /// [`RemoteLimiter::server_allows`] by the core's whole rule, in the background: the fleet's logs
    /// are read (one round trip) for what went up to the guard after `grant`'s request, which the
    /// server may have counted first, and `apply` gets what the server allows. At most one read runs at
    /// a time per limiter; while one does, another answer calling for a cut is let go (the next
    /// will tell). Nothing is applied when no window can tell any more (the admission left its log).
    pub fn hold_against_logs(
        self: &Arc<Self>,
        grant: &Grant,
        unit: Unit,
        remaining: u64,
        reset_ns: Option<u64>,
        apply: impl FnOnce(f64) + Send + 'static,
    ) {
        let pid = process::id();
        let reader = self.reading_logs.load(Ordering::Acquire);
        // A reader of another process (this is a forked child) left the flag behind: it is free here.
        if reader == pid || self.reading_logs.compare_exchange(reader, pid, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return;
        }
        let Ok(runtime) = crate::backend::redis::runtime::handle() else {
            self.reading_logs.store(0, Ordering::Release);
            return;
        };
        let (this, grant) = (Arc::clone(self), grant.clone());
        runtime.spawn(async move {
            if let Ok(Some(allowed)) = this.server_allows_by_the_logs(&grant, unit, remaining, reset_ns).await {
                apply(allowed);
            }
            this.reading_logs.store(0, Ordering::Release);
        });
    }

    /// What the server allows of `unit` by the core's whole rule, from the fleet's logs as they stand:
    /// per window, what it counted in the window that ends at the admission (never less than when Redis
    /// admitted it: entries that left since were in it), with its own entry, plus what went up to the
    /// guard after it ([`feedback::went_just_after`]). An entry shared by admissions closer than
    /// 1/1024 of the window counts whole. `None` when no window can tell.
    async fn server_allows_by_the_logs(&self, grant: &Grant, unit: Unit, remaining: u64, reset_ns: Option<u64>) -> Result<Option<f64>, BackendError> {
        let Counted::InRedis { receipts, used } = &grant.counted else { return Ok(None) };
        let windows: Vec<usize> = self.spoken_of(unit, reset_ns).filter(|&i| receipts[i] != 0).collect();
        if windows.is_empty() {
            return Ok(None);
        }
        let keys: Vec<String> = std::iter::once(self.keys[0].clone()).chain(windows.iter().map(|&i| self.keys[LOG_KEYS + i].clone())).collect();
        let mut invocation = scripts::LOGS.call(self.backend.dialect(), &keys);
        for &i in &windows {
            invocation.arg(&self.windows[i].id);
        }
        let logs: Vec<(u64, Vec<String>)> = self.backend.call(|mut c| async move { invocation.run_async(&mut c).await }).await?;
        let at = grant.at_us;
        let counts = windows.iter().zip(logs).filter_map(|(&i, (seq, entries))| {
            let w = &self.windows[i];
            let entries: Vec<(u64, u64)> = entries.iter().filter_map(|entry| parse_entry(entry)).collect();
            let own = usize::try_from(receipts[i].checked_sub(seq)?.checked_sub(1)?).ok()?;
            // Its own entry is dated at its admission or, shared with admissions just after, a little
            // later; a later number's entry (the log was made afresh) is dated past its window.
            let &(own_at, own_units) = entries.get(own).filter(|(entry_at, _)| (at..at + w.span_us).contains(entry_at))?;
            let before: u64 = entries[..own].iter().filter(|(entry_at, _)| entry_at + w.span_us > at).map(|(_, units)| units).sum();
            let after = feedback::went_just_after(entries[own + 1..].iter().copied(), at, w.guard_us());
            let just_after_own = if own_at <= at + w.guard_us() { own_units } else { own_units.min(w.units(grant.cost)) };
            let counted = (before + just_after_own + after).max(used[i]);
            Some(feedback::server_allows(counted, remaining, w.whole))
        });
        Ok(counts.reduce(f64::max))
    }

    // --- correcting and returning admissions ------------------------------------------------------

    /// Replaces what `grant` counted (`counted`) by `actual`, and releases its lease if `release`;
    /// `actual` of zero in every unit gives the admission back. On the runtime.
    pub async fn adjust(self: &Arc<Self>, grant: &Grant, counted: Cost, actual: Cost, release: bool) -> Result<(), BackendError> {
        let Some(invocation) = self.adjust_invocation(grant, counted, actual, release) else { return Ok(()) };
        let result = self.backend.call(|mut c| async move { invocation.run_async::<i64>(&mut c).await }).await;
        self.adjusted(grant, release, result.map(|_| ()))
    }

    /// `adjust` on this thread, blocking until Redis answers.
    pub fn adjust_blocking(self: &Arc<Self>, grant: &Grant, counted: Cost, actual: Cost, release: bool) -> Result<(), BackendError> {
        let Some(invocation) = self.adjust_invocation(grant, counted, actual, release) else { return Ok(()) };
        let result = self.backend.call_blocking(Resend::Never, |c| invocation.run::<i64>(c));
        self.adjusted(grant, release, result.map(|_| ()))
    }

    /// A release Redis did not hear is owed back: its lease must not wait out its TTL.
    fn adjusted(self: &Arc<Self>, grant: &Grant, release: bool, result: Result<(), BackendError>) -> Result<(), BackendError> {
        if let (true, Some(id), Counted::InRedis { .. }) = (release, &grant.lease, &grant.counted) {
            match result {
                Ok(()) => self.leases.released(id),
                Err(_) => leases::owe(self, id.clone()),
            }
        }
        result
    }

    /// The script call for an adjustment in Redis, or None when Redis has nothing to change. An
    /// admission made here is corrected here; once its share was handed over, what it takes beyond
    /// its estimate is charged in Redis (a refund then is not: it errs on the side of the limit).
    fn adjust_invocation(self: &Arc<Self>, grant: &Grant, counted: Cost, actual: Cost, release: bool) -> Option<Call> {
        let lease = if release { grant.lease.as_deref() } else { None };
        let (receipts, lease, counted, actual) = match &grant.counted {
            Counted::Nowhere => return None,
            Counted::InRedis { receipts, .. } => {
                if let Some(id) = lease {
                    self.leases.forget(id);
                }
                (receipts.clone(), lease, counted, actual)
            }
            Counted::Here { share, receipts } => {
                let retired = share.settle(receipts, counted, actual, self.clock.now_ns());
                // A slot handed to Redis as a lease is freed there too.
                if let Some(id) = lease
                    && share.release(id)
                {
                    leases::owe(self, id.to_string());
                }
                let charge = excess(actual, counted);
                if !retired || charge == Cost::default() {
                    return None;
                }
                (vec![0; self.windows.len()], None, Cost::default(), charge)
            }
        };
        let changes = self.windows.iter().any(|w| w.units(counted) != w.units(actual));
        if !changes && lease.is_none() {
            return None;
        }
        let mut invocation = scripts::ADJUST.call(self.backend.dialect(), &self.keys);
        // The admission's instant: a receipt is honoured only while its admission is in its window.
        invocation.arg(lease.unwrap_or("")).arg(grant.at_us).arg(self.windows.len());
        for (window, receipt) in self.windows.iter().zip(&receipts) {
            invocation
                .arg(&window.id)
                .arg(window.kind_name())
                .arg(window.in_force(self.rate_factor(window.unit)).1)
                .arg(window.span_us)
                .arg(*receipt)
                .arg(window.units(counted))
                .arg(window.units(actual));
        }
        Some(invocation)
    }
}
