//! Limits per key (user, API key, endpoint, model) for many keys: each key is its GCRA TATs and nothing
//! else, in a sharded table. A key whose TATs are all in the past is exactly a fresh key, so it is
//! forgotten without loss; a key whose TATs are not (it still counts admissions) is never forgotten,
//! since forgetting it would let its user start over: an overrun. So the table holds at most `max_keys`
//! keys, and while every one of them still counts admissions a new key is refused
//! ([`Verdict::Full`]) until the earliest of them is fresh again.
//!
//! Memory: 8 bytes for the key plus 8 per limit, in a hash table that is between 44% and 88% full,
//! plus one control byte per slot: 19 to 37 bytes per key with one limit.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::core::clock::{Clock, MonotonicClock, ns_to_secs};
use crate::core::decision::{Decision, Never};
use crate::core::error::{Error, Result};
use crate::core::gcra::Gcra;
use crate::core::limit::{Algorithm, Cost, Limit, Unit};
use crate::core::refusal;
use crate::core::spin::SpinLock;

/// The most limits a keyed limiter applies to each key.
pub const MAX_KEYED_LIMITS: usize = 4;
const SHARDS: usize = 16;

/// Keys arrive hashed already (Python's `hash()`); this only spreads them over the table's bits.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = (self.0 ^ key).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
}

type Table<const N: usize> = HashMap<u64, [u64; N], BuildHasherDefault<KeyHasher>>;

/// One shard's keys, and how many were added since idle ones were last forgotten.
#[derive(Default)]
struct Shard<const N: usize> {
    keys: Table<N>,
    added: usize,
    /// Additions before the next sweep: as many as the shard held after the last one, so sweeping
    /// costs O(1) per key added.
    sweep_after: usize,
    /// No key here is fresh again before this instant (it may be later): a full table sweeps a shard
    /// only once something in it may be forgotten.
    next_fresh_at: u64,
}

impl<const N: usize> Shard<N> {
    /// Forgets the keys fresh again by `before` (never later than now, so none that still counts);
    /// returns how many.
    fn forget_fresh(&mut self, before: u64) -> usize {
        let held = self.keys.len();
        let mut next_fresh_at = u64::MAX;
        self.keys.retain(|_, tats| {
            let at = fresh_at(tats);
            next_fresh_at = next_fresh_at.min(if at > before { at } else { u64::MAX });
            at > before
        });
        self.next_fresh_at = next_fresh_at;
        self.added = 0;
        self.sweep_after = self.keys.len().max(64);
        held - self.keys.len()
    }

    /// Counts a key in this shard that will be fresh again at `at`.
    fn note_fresh_at(&mut self, at: u64) {
        self.next_fresh_at = self.next_fresh_at.min(at);
    }
}

/// How many keys the table holds, at most `max`.
struct Room {
    max: usize,
    held: AtomicUsize,
}

impl Room {
    /// Takes room for one more key, unless the table is full.
    fn claim(&self) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| (held < self.max).then_some(held + 1))
            .is_ok()
    }

    fn free(&self, keys: usize) {
        if keys > 0 {
            self.held.fetch_sub(keys, Ordering::AcqRel);
        }
    }

    fn is_full(&self) -> bool {
        self.held.load(Ordering::Acquire) >= self.max
    }
}

/// What a decision for one key came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The limits' decision, and the receipt of an admission (see [`receipt_of`]).
    Decided(Decision, u64),
    /// A new key that the limits would admit, but every key held still counts admissions; one may be
    /// forgotten at `room_at` at the earliest.
    Full { room_at: u64 },
}

/// One limit as applied to each key.
type KeyedGcra = (Gcra, Unit);

/// The per-key state for `N` limits, one table per shard.
trait Shards: Send + Sync {
    fn decide(&self, gcras: &[KeyedGcra], key: u64, cost: Cost, now: u64, latest: u64, idle_ns: u64) -> Verdict;
    fn give_back(&self, gcras: &[KeyedGcra], key: u64, cost: Cost, receipt: u64);
    /// The earliest instant `key` may pass `cost` (room for it included), or the limit it never passes.
    fn earliest(&self, gcras: &[KeyedGcra], key: u64, cost: Cost, now: u64)
    -> std::result::Result<u64, (usize, Never)>;
    fn forget_idle(&self, before: u64);
    fn len(&self) -> usize;
}

struct Sharded<const N: usize> {
    shards: Vec<SpinLock<Shard<N>>>,
    room: Room,
}

fn shard_of(key: u64) -> usize {
    (key.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 60) as usize % SHARDS
}

/// The earliest instant every limit admits `cost` for a key in state `tats`.
fn earliest_of<const N: usize>(
    gcras: &[KeyedGcra],
    tats: &[u64; N],
    cost: Cost,
    now: u64,
) -> std::result::Result<u64, (usize, Never)> {
    let mut at = now;
    for (index, ((gcra, unit), &tat)) in gcras.iter().zip(tats).enumerate() {
        let units = unit.of(cost);
        if units > 0 {
            let slot = gcra.schedule(tat, units, now).map_err(|never| (index, never))?;
            at = at.max(slot.at);
        }
    }
    Ok(at)
}

/// A key's TATs once `cost` is admitted at `at`, the instant all its limits agreed on: each limit
/// counts it from then (counting from `now` would let the next request through a slower limit early).
fn admitted_at<const N: usize>(gcras: &[KeyedGcra], tats: &[u64; N], cost: Cost, at: u64) -> [u64; N] {
    let mut updated = *tats;
    for ((gcra, unit), tat) in gcras.iter().zip(updated.iter_mut()) {
        let units = unit.of(cost);
        if let (true, Ok(slot)) = (units > 0, gcra.schedule(*tat, units, at)) {
            *tat = slot.tat;
        }
    }
    updated
}

/// What identifies a key's state after an admission, for giving it back: the sum of its TATs. After
/// an admission each TAT only grows, except by giving back a later admission, which never takes it
/// below where that one found it; so the sum is back to a receipt only while every TAT is what that
/// admission left. (The latest TAT alone stays put when a later request counts in fewer limits, and
/// giving back then took back what the later one was counted on.) A key forgotten and made again
/// starts every TAT at or after the old one's, all of which had passed: an old receipt matches it only
/// if none of them counts anything any more, where a give-back changes nothing.
fn receipt_of<const N: usize>(tats: &[u64; N]) -> u64 {
    tats.iter().fold(0, |sum, &tat| sum.wrapping_add(tat))
}

/// The instant a key is fresh again: its latest TAT.
fn fresh_at<const N: usize>(tats: &[u64; N]) -> u64 {
    tats.iter().copied().max().unwrap_or(0)
}

impl<const N: usize> Sharded<N> {
    fn new(max_keys: usize) -> Self {
        let room = Room { max: max_keys, held: AtomicUsize::new(0) };
        Self { shards: (0..SHARDS).map(|_| SpinLock::new(Shard::default())).collect(), room }
    }

    /// Room for a new key at `now`: `None` when there is some, after forgetting the keys fresh again;
    /// else the instant one may be forgotten at the earliest. Each shard is locked in turn, never two
    /// at once, and swept only when one of its keys may be fresh.
    fn room_at(&self, now: u64) -> Option<u64> {
        if !self.room.is_full() {
            return None;
        }
        let mut earliest = u64::MAX;
        for shard in &self.shards {
            let mut shard = shard.lock();
            if shard.next_fresh_at <= now {
                self.room.free(shard.forget_fresh(now));
            }
            earliest = earliest.min(shard.next_fresh_at);
        }
        self.room.is_full().then(|| earliest.max(now))
    }
}

impl<const N: usize> Shards for Sharded<N> {
    fn decide(&self, gcras: &[KeyedGcra], key: u64, cost: Cost, now: u64, latest: u64, idle_ns: u64) -> Verdict {
        // Twice at most: once more after a full table forgot keys fresh again.
        for attempt in 0..2 {
            let mut shard = self.shards[shard_of(key)].lock();
            let known = shard.keys.get(&key).copied();
            // A new key starts fresh at `now` (the same as never used, see `receipt_of`).
            let tats = known.unwrap_or([now; N]);
            let at = match earliest_of(gcras, &tats, cost, now) {
                Ok(at) => at,
                Err((_, never)) => return Verdict::Decided(never.into(), 0),
            };
            let decision = Decision::for_instant(at, now, latest);
            if !decision.is_admitted() {
                return Verdict::Decided(decision, 0);
            }
            if known.is_none() && !self.room.claim() {
                drop(shard);
                match self.room_at(now) {
                    Some(room_at) => return Verdict::Full { room_at },
                    None if attempt == 0 => continue,
                    // Another new key took the room just made.
                    None => return Verdict::Full { room_at: now },
                }
            }
            let updated = admitted_at(gcras, &tats, cost, at);
            if known.is_none() {
                shard.added += 1;
                if shard.added >= shard.sweep_after.max(64) {
                    let forgotten = shard.forget_fresh(now.saturating_sub(idle_ns));
                    self.room.free(forgotten);
                }
            }
            shard.note_fresh_at(fresh_at(&updated));
            shard.keys.insert(key, updated);
            return Verdict::Decided(decision, receipt_of(&updated));
        }
        unreachable!("the second attempt returns")
    }

    fn give_back(&self, gcras: &[KeyedGcra], key: u64, cost: Cost, receipt: u64) {
        let mut shard = self.shards[shard_of(key)].lock();
        if let Some(tats) = shard.keys.get_mut(&key) {
            // Only while no later request for this key moved its state (see `GcraCell::give_back`).
            if receipt_of(tats) == receipt {
                for ((gcra, unit), tat) in gcras.iter().zip(tats.iter_mut()) {
                    // The key's receipt check above stands for each limit's.
                    *tat = gcra.give_back(*tat, *tat, unit.of(cost)).unwrap_or(*tat);
                }
                let fresh = fresh_at(tats);
                shard.note_fresh_at(fresh);
            }
        }
    }

    fn earliest(
        &self,
        gcras: &[KeyedGcra],
        key: u64,
        cost: Cost,
        now: u64,
    ) -> std::result::Result<u64, (usize, Never)> {
        let known = self.shards[shard_of(key)].lock().keys.get(&key).copied();
        let at = earliest_of(gcras, &known.unwrap_or([0; N]), cost, now)?;
        match known {
            Some(_) => Ok(at),
            None => Ok(self.room_at(now).map_or(at, |room_at| at.max(room_at))),
        }
    }

    fn forget_idle(&self, before: u64) {
        for shard in &self.shards {
            let mut shard = shard.lock();
            let forgotten = shard.forget_fresh(before);
            self.room.free(forgotten);
        }
    }

    fn len(&self) -> usize {
        self.room.held.load(Ordering::Acquire)
    }
}

/// The same GCRA limits, applied to each key on its own.
pub struct KeyedLimiter<C: Clock = MonotonicClock> {
    clock: C,
    limits: Vec<Limit>,
    gcras: Vec<KeyedGcra>,
    shards: Box<dyn Shards>,
    max_keys: u64,
    idle_ns: u64,
}

impl<C: Clock> std::fmt::Debug for KeyedLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimiter").field("limits", &self.limits).field("keys", &self.len()).finish()
    }
}

impl<C: Clock> KeyedLimiter<C> {
    /// `limits` must all be GCRA (a log per key would make memory grow with each key's traffic).
    /// At most `max_keys` keys are held; keys fresh again are forgotten as room is needed, and those
    /// unused for `idle_ns` as new keys arrive.
    pub fn new(limits: Vec<Limit>, max_keys: u64, idle_ns: u64, clock: C) -> Result<Self> {
        if limits.is_empty() || limits.len() > MAX_KEYED_LIMITS {
            return Err(Error::config("limits", format!("give 1 to {MAX_KEYED_LIMITS} limits, got {}", limits.len())));
        }
        if let Some(limit) = limits.iter().find(|limit| limit.algorithm() != Algorithm::Gcra) {
            return Err(Error::config(
                "limits",
                format!("keyed limits are GCRA; '{limit}' is {:?}", limit.algorithm().name()),
            ));
        }
        let Some(max) = usize::try_from(max_keys).ok().filter(|&max| max >= 1) else {
            return Err(Error::config("max_keys", format!("must be from 1 to {}, got {max_keys}", usize::MAX)));
        };
        let shards: Box<dyn Shards> = match limits.len() {
            1 => Box::new(Sharded::<1>::new(max)),
            2 => Box::new(Sharded::<2>::new(max)),
            3 => Box::new(Sharded::<3>::new(max)),
            _ => Box::new(Sharded::<4>::new(max)),
        };
        let gcras = limits.iter().map(|limit| (limit.gcra(), limit.unit())).collect();
        Ok(Self { clock, limits, gcras, shards, max_keys, idle_ns })
    }

    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    fn refusal(&self, operation: &str, cost: Cost, index: usize, never: Never) -> Error {
        refusal::never(operation, cost, &self.limits[index], never.max_cost, " per key")
    }

    /// A new key refused because every key held still counts admissions.
    fn full(&self, operation: &str, room_at: u64, now: u64) -> Error {
        let wait = room_at.saturating_sub(now);
        Error::RateLimited {
            message: format!(
                "{operation}: all max_keys={} keys still count admissions, so a new key may start in {:.3}s at the \
                 earliest (forgetting one would let it pass its limits again)",
                self.max_keys,
                ns_to_secs(wait)
            ),
            retry_after_ns: Some(wait),
            limit: format!("max_keys={}", self.max_keys),
            remaining: 0.0,
        }
    }

    /// Decides a request for `key` at `now`, admitting it if it passes by `latest`; `Err` when it can
    /// never pass.
    fn decide(&self, operation: &str, key: u64, cost: Cost, now: u64, latest: u64) -> Result<Verdict> {
        match self.shards.decide(&self.gcras, key, cost, now, latest, self.idle_ns) {
            Verdict::Decided(Decision::Never { .. }, _) => {
                let Err((index, never)) = self.shards.earliest(&self.gcras, key, cost, now) else {
                    unreachable!("a cost is refused forever by some limit")
                };
                Err(self.refusal(operation, cost, index, never))
            }
            verdict => Ok(verdict),
        }
    }

    /// Admits a request for `key` now, or not (also when `key` is new and the table has no room for
    /// it); `Err` only when it can never pass.
    pub fn try_acquire(&self, key: u64, cost: Cost) -> Result<bool> {
        let now = self.clock.now_ns();
        Ok(matches!(self.decide("try_acquire", key, cost, now, now)?, Verdict::Decided(Decision::Now, _)))
    }

    /// Reserves a request for `key`: (nanoseconds to wait, receipt for [`KeyedLimiter::give_back`]).
    /// Refused at once, counting nothing, when the wait would pass `max_wait_ns` or can never end, and
    /// when `key` is new and every key held still counts admissions (`retry_after` says when one may
    /// be forgotten at the earliest).
    pub fn reserve(&self, key: u64, cost: Cost, max_wait_ns: Option<u64>) -> Result<(u64, u64)> {
        let now = self.clock.now_ns();
        let latest = max_wait_ns.map_or(u64::MAX, |wait| now.saturating_add(wait));
        match self.decide("acquire", key, cost, now, latest)? {
            Verdict::Full { room_at } => Err(self.full("acquire", room_at, now)),
            Verdict::Decided(Decision::NotBefore(at), _) => {
                let limits: Vec<_> = self.limits.iter().map(ToString::to_string).collect();
                Err(refusal::too_long("acquire", cost, limits.join(", "), at - now, 0.0))
            }
            Verdict::Decided(decision, receipt) => Ok((decision.wait_ns(now).unwrap_or(0), receipt)),
        }
    }

    /// Nanoseconds until `key` may pass `cost`: its limits, and for a new key room in the table.
    pub fn time_until_ready(&self, key: u64, cost: Cost) -> Result<u64> {
        let now = self.clock.now_ns();
        match self.shards.earliest(&self.gcras, key, cost, now) {
            Ok(at) => Ok(at - now),
            Err((index, never)) => Err(self.refusal("time_until_ready", cost, index, never)),
        }
    }

    /// Gives back a reservation for `key` that will not be used, while it is the key's last.
    pub fn give_back(&self, key: u64, cost: Cost, receipt: u64) {
        self.shards.give_back(&self.gcras, key, cost, receipt);
    }

    /// Forgets keys idle for `idle_ns` or more (they are fresh again); returns how many keys remain.
    pub fn forget_idle(&self) -> usize {
        let before = self.clock.now_ns().saturating_sub(self.idle_ns);
        self.shards.forget_idle(before);
        self.len()
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::{ManualClock, NS_PER_SEC as SEC};
    use crate::core::limit::Unit;

    fn keyed(per_second: f64, burst: f64, max_keys: u64) -> (KeyedLimiter<ManualClock>, ManualClock) {
        let clock = ManualClock::new(0);
        let limit = Limit::new(per_second, SEC, Unit::Requests, Algorithm::Gcra, Some(burst)).unwrap();
        (KeyedLimiter::new(vec![limit], max_keys, 60 * SEC, clock.clone()).unwrap(), clock)
    }

    #[test]
    fn each_key_has_its_own_limit() {
        let (lim, _) = keyed(1.0, 2.0, 100);
        let pass = |key| lim.try_acquire(key, Cost::request(0)).unwrap();
        assert!(pass(1) && pass(1) && !pass(1));
        assert!(pass(2) && pass(2) && !pass(2));
        assert_eq!(lim.len(), 2);
    }

    #[test]
    fn a_refused_request_adds_no_key() {
        let (lim, _) = keyed(1.0, 1.0, 100);
        let limit = Limit::new(1.0, SEC, Unit::Tokens, Algorithm::Gcra, Some(5.0)).unwrap();
        let tokens = KeyedLimiter::new(vec![limit], 100, SEC, ManualClock::new(0)).unwrap();
        assert!(matches!(tokens.try_acquire(9, Cost::request(6)), Err(Error::RateLimited { .. })));
        assert_eq!(tokens.len(), 0);
        assert!(lim.try_acquire(1, Cost::request(0)).unwrap());
        assert!(!lim.try_acquire(1, Cost::request(0)).unwrap());
        assert_eq!(lim.len(), 1);
    }

    #[test]
    fn idle_keys_are_forgotten_without_loss() {
        let (lim, clock) = keyed(1.0, 1.0, 100);
        lim.try_acquire(1, Cost::request(0)).unwrap();
        clock.advance(30 * SEC);
        lim.try_acquire(2, Cost::request(0)).unwrap();
        clock.advance(40 * SEC);
        assert_eq!(lim.forget_idle(), 1, "key 2 was used 40 s ago, key 1 70 s ago");
    }

    #[test]
    fn idle_keys_are_swept_as_new_keys_arrive() {
        let (lim, clock) = keyed(1_000.0, 1.0, 1_000_000);
        for key in 0..5_000u64 {
            lim.try_acquire(key, Cost::request(0)).unwrap();
        }
        clock.advance(120 * SEC);
        for key in 5_000..10_000u64 {
            lim.try_acquire(key, Cost::request(0)).unwrap();
        }
        assert!(lim.len() < 7_500, "{}", lim.len());
    }

    #[test]
    fn memory_stays_bounded_by_max_keys() {
        let (lim, _) = keyed(1.0, 1.0, 64);
        let admitted = (0..10_000u64).filter(|&key| lim.try_acquire(key, Cost::request(0)).unwrap()).count();
        assert_eq!((admitted, lim.len()), (64, 64));
    }

    /// Issue 15: with a, b and c busy in a table of 3, user d went through 20 of 20 (each time the key
    /// closest to fresh was forgotten, and d started over).
    #[test]
    fn a_full_table_refuses_new_keys_while_every_key_still_counts() {
        let clock = ManualClock::new(0);
        let limit = Limit::new(5.0, 60 * SEC, Unit::Requests, Algorithm::Gcra, Some(5.0)).unwrap();
        let lim = KeyedLimiter::new(vec![limit], 3, 600 * SEC, clock.clone()).unwrap();
        for key in [1, 2, 3] {
            assert!(lim.try_acquire(key, Cost::request(0)).unwrap());
        }
        let passed = (0..20).filter(|_| lim.try_acquire(4, Cost::request(0)).unwrap()).count();
        assert_eq!(passed, 0);
        for key in [1, 2, 3] {
            assert_eq!((0..10).filter(|_| lim.try_acquire(key, Cost::request(0)).unwrap()).count(), 4, "key {key}");
        }
        assert_eq!(lim.len(), 3);
    }

    #[test]
    fn a_refused_new_key_is_told_when_a_key_may_be_forgotten() {
        let (lim, clock) = keyed(1.0, 1.0, 2);
        lim.try_acquire(1, Cost::request(0)).unwrap();
        clock.advance(SEC / 4);
        lim.try_acquire(2, Cost::request(0)).unwrap();
        let wait = 3 * SEC / 4;
        let Err(Error::RateLimited { retry_after_ns, limit, .. }) = lim.reserve(3, Cost::request(0), None) else {
            panic!("a new key is refused while the table is full")
        };
        assert_eq!((retry_after_ns, limit.as_str()), (Some(wait), "max_keys=2"));
        assert_eq!(lim.time_until_ready(3, Cost::request(0)).unwrap(), wait);
        clock.advance(wait);
        assert_eq!(lim.time_until_ready(3, Cost::request(0)).unwrap(), 0);
        assert!(lim.try_acquire(3, Cost::request(0)).unwrap(), "key 1 is fresh again, so it makes room");
        assert!(!lim.try_acquire(2, Cost::request(0)).unwrap(), "key 2 still counts its admission");
        assert_eq!(lim.len(), 2);
    }

    #[test]
    fn a_given_back_reservation_can_make_room_sooner() {
        let (lim, clock) = keyed(1.0, 1.0, 1);
        lim.try_acquire(1, Cost::request(0)).unwrap();
        let (wait, receipt) = lim.reserve(1, Cost::request(0), None).unwrap();
        assert_eq!(wait, SEC);
        lim.give_back(1, Cost::request(0), receipt);
        clock.advance(SEC);
        assert!(lim.try_acquire(2, Cost::request(0)).unwrap());
    }

    #[test]
    fn waiters_for_one_key_queue_in_order_and_the_last_gives_back() {
        let (lim, _) = keyed(1.0, 1.0, 100);
        assert_eq!(lim.reserve(7, Cost::request(0), None).unwrap().0, 0);
        let (wait, receipt) = lim.reserve(7, Cost::request(0), None).unwrap();
        assert_eq!(wait, SEC);
        assert!(matches!(
            lim.reserve(7, Cost::request(0), Some(SEC)),
            Err(Error::RateLimited { retry_after_ns: Some(_), .. })
        ));
        lim.give_back(7, Cost::request(0), receipt);
        assert_eq!(lim.time_until_ready(7, Cost::request(0)).unwrap(), SEC);
    }

    /// A request that waits on one limit was counted by the others from when it asked, so the next
    /// request passed them early: two went at once through one per second.
    #[test]
    fn a_request_that_waits_on_one_limit_counts_in_the_others_from_when_it_goes() {
        let clock = ManualClock::new(0);
        let tokens = Limit::new(10.0, 10 * SEC, Unit::Tokens, Algorithm::Gcra, Some(10.0)).unwrap();
        let requests = Limit::new(1.0, SEC, Unit::Requests, Algorithm::Gcra, Some(1.0)).unwrap();
        let lim = KeyedLimiter::new(vec![tokens, requests], 10, 60 * SEC, clock.clone()).unwrap();
        let waits: Vec<u64> = (0..2).map(|_| lim.reserve(1, Cost::request(10), None).unwrap().0).collect();
        let waited = tokens.gcra().unit_ns() * 10;
        assert_eq!(waits, [0, waited], "the second waits for the tokens");
        clock.advance(waited);
        assert!(!lim.try_acquire(1, Cost::request(0)).unwrap(), "one request per second: the second goes now");
        assert_eq!(lim.time_until_ready(1, Cost::request(0)).unwrap(), requests.gcra().unit_ns());
    }

    /// A later request that counts in fewer limits (no tokens) leaves the key's latest TAT where it was;
    /// giving back an earlier reservation then took back what the later one was counted on, and a
    /// third request went at the same instant as the second through one per second.
    #[test]
    fn a_reservation_is_not_given_back_once_a_later_request_counted_on_it() {
        let clock = ManualClock::new(0);
        let tokens = Limit::new(10.0, 10 * SEC, Unit::Tokens, Algorithm::Gcra, Some(10.0)).unwrap();
        let requests = Limit::new(1.0, SEC, Unit::Requests, Algorithm::Gcra, Some(1.0)).unwrap();
        let lim = KeyedLimiter::new(vec![tokens, requests], 10, 60 * SEC, clock).unwrap();
        let (_, receipt) = lim.reserve(1, Cost::request(10), None).unwrap();
        let (second, _) = lim.reserve(1, Cost::request(0), None).unwrap();
        lim.give_back(1, Cost::request(10), receipt);
        let (third, _) = lim.reserve(1, Cost::request(0), None).unwrap();
        assert!(third >= second + requests.gcra().unit_ns(), "the second at {second} ns, the third at {third} ns");
    }

    #[test]
    fn only_gcra_limits_are_keyed() {
        let exact = Limit::new(1.0, SEC, Unit::Requests, Algorithm::Exact, None).unwrap();
        let err = KeyedLimiter::new(vec![exact], 10, SEC, ManualClock::new(0)).unwrap_err();
        assert!(matches!(err, Error::Config { field, .. } if field == "limits"));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// A key's admissions (instant, units), sorted: the most units in any half-open interval of
        /// `window` ns.
        fn most_in_any_window(admitted: &[(u64, u64)], window: u64) -> u64 {
            let (mut start, mut inside, mut most) = (0, 0, 0);
            for &(at, units) in admitted {
                inside += units;
                while admitted[start].0 + window <= at {
                    inside -= admitted[start].1;
                    start += 1;
                }
                most = most.max(inside);
            }
            most
        }

        /// One request: which of 8 users, after how long, its tokens, and whether it waits (up to how
        /// long, and whether it gives up before its turn) or not.
        type Arrival = (u64, u64, u64, Option<(u64, bool)>);

        fn arrivals() -> impl Strategy<Value = Vec<Arrival>> {
            let wait = prop::option::of((0..2 * SEC, prop::bool::weighted(0.2)));
            prop::collection::vec((0u64..8, 0..3 * SEC, 0u64..3, wait), 1..400)
        }

        /// A GCRA limit with a fractional amount: (amount, period in s, burst, counts tokens).
        fn limits() -> impl Strategy<Value = Vec<(f64, u64, u64, bool)>> {
            prop::collection::vec((0.5f64..12.0, 1u64..5, 1u64..4, any::<bool>()), 1..=2)
        }

        proptest! {
            /// Whatever keys the table forgets to stay within `max_keys`, no key ever passes what one
            /// never-forgetting GCRA per key would pass (counting each admission from when it goes, and
            /// giving back per limit while that limit's TAT is the admission's), so never more than
            /// floor(amount) + burst - 1 units in any period plus guard among those that went.
            #[test]
            fn no_key_passes_its_limits_whatever_the_evictions(
                max_keys in 1u64..5, idle_s in 0u64..4, specs in limits(), stream in arrivals(),
            ) {
                let clock = ManualClock::new(0);
                let limits: Vec<Limit> = specs
                    .iter()
                    .map(|&(amount, period_s, burst, tokens)| {
                        let unit = if tokens { Unit::Tokens } else { Unit::Requests };
                        let burst = if tokens { burst.max(3) } else { burst };
                        Limit::new(amount, period_s * SEC, unit, Algorithm::Gcra, Some(burst as f64)).unwrap()
                    })
                    .collect();
                let lim = KeyedLimiter::new(limits.clone(), max_keys, idle_s * SEC, clock.clone()).unwrap();
                let mut reference = vec![vec![0u64; limits.len()]; 8];
                let mut admitted = vec![Vec::new(); 8];
                // Per user, a reservation to give back at its next request: (cost, receipt, each limit's TAT after it).
                let mut pending: Vec<Option<(Cost, u64, Vec<u64>)>> = vec![None; 8];
                for (user, gap, tokens, wait) in stream {
                    let cost = Cost::request(tokens);
                    clock.advance(gap);
                    let now = clock.now_ns();
                    // Spread over the shards as Python's hashes are.
                    let key = (user + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    let (at, receipt) = match wait {
                        None => (lim.try_acquire(key, cost).unwrap().then_some(now), None),
                        Some((wait, gives_up)) => match lim.reserve(key, cost, Some(wait)) {
                            Ok((wait, receipt)) => (Some(now + wait), (gives_up && wait > 0).then_some(receipt)),
                            Err(_) => (None, None),
                        },
                    };
                    prop_assert!(lim.len() as u64 <= max_keys);
                    let earlier = pending[user as usize].take();
                    if let Some((cost, receipt, tats)) = &earlier {
                        lim.give_back(key, *cost, *receipt);
                        for ((limit, tat), &receipt) in limits.iter().zip(reference[user as usize].iter_mut()).zip(tats) {
                            *tat = limit.gcra().give_back(*tat, receipt, limit.unit().of(*cost)).unwrap_or(*tat);
                        }
                    }
                    let Some(at) = at else { continue };
                    for (limit, tat) in limits.iter().zip(reference[user as usize].iter_mut()) {
                        let units = limit.unit().of(cost);
                        if units == 0 {
                            continue;
                        }
                        let slot = limit.gcra().schedule(*tat, units, now).unwrap();
                        prop_assert!(at >= slot.at, "user {user} admitted at {at}, conforming only at {}", slot.at);
                        *tat = limit.gcra().schedule(*tat, units, at).unwrap().tat;
                    }
                    match receipt {
                        Some(receipt) => pending[user as usize] = Some((cost, receipt, reference[user as usize].clone())),
                        None => admitted[user as usize].push((at, cost)),
                    }
                }
                for admissions in &mut admitted {
                    admissions.sort_unstable_by_key(|&(at, _)| at);
                    for limit in &limits {
                        let units: Vec<(u64, u64)> = admissions.iter().map(|&(at, cost)| (at, limit.unit().of(cost))).collect();
                        let (count, window_ns) = limit.whole_window();
                        let most = most_in_any_window(&units, window_ns);
                        prop_assert!(most <= count + (limit.burst() - 1), "{most} in {window_ns} ns for {limit}");
                    }
                }
            }
        }
    }
}
