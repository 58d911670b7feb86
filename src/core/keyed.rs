//! Limits per key (user, API key, endpoint, model) for many keys: each key is its GCRA TATs and nothing
//! else, in a sharded table. A key whose TATs are all in the past is exactly a fresh key, so it is
//! forgotten without loss; memory stays bounded by `max_keys`.
//!
//! Memory: 8 bytes for the key plus 8 per limit, in a hash table that is between 44% and 88% full,
//! plus one control byte per slot: 19 to 37 bytes per key with one limit.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::core::clock::{Clock, MonotonicClock, ns_to_secs};
use crate::core::decision::{Decision, Never};
use crate::core::error::{Error, Result};
use crate::core::gcra::Gcra;
use crate::core::limit::{Algorithm, Cost, Limit, Unit};
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
}

impl<const N: usize> Shard<N> {
    /// Forgets keys fresh again by `before`.
    fn forget_fresh(&mut self, before: u64) {
        self.keys.retain(|_, tats| fresh_at(tats) > before);
        self.added = 0;
        self.sweep_after = self.keys.len().max(64);
    }
}

/// One limit as applied to each key.
type KeyedGcra = (Gcra, Unit);

/// The per-key state for `N` limits, one table per shard.
trait Shards: Send + Sync {
    fn decide(&self, gcras: &[KeyedGcra], key: u64, cost: Cost, now: u64, latest: u64, bounds: Bounds) -> (Decision, u64);
    fn give_back(&self, gcras: &[KeyedGcra], key: u64, cost: Cost, receipt: u64);
    fn earliest(&self, gcras: &[KeyedGcra], key: u64, cost: Cost, now: u64) -> std::result::Result<u64, (usize, Never)>;
    fn forget_idle(&self, before: u64);
    fn len(&self) -> usize;
}

struct Sharded<const N: usize> {
    shards: Vec<SpinLock<Shard<N>>>,
}

/// How many keys a shard may hold, and after how long unused a key is forgotten.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    max_per_shard: usize,
    idle_ns: u64,
}

fn shard_of(key: u64) -> usize {
    (key.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 60) as usize % SHARDS
}

/// The earliest instant every limit admits `cost` for a key in state `tats`.
fn earliest_of<const N: usize>(gcras: &[KeyedGcra], tats: &[u64; N], cost: Cost, now: u64) -> std::result::Result<u64, (usize, Never)> {
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

impl<const N: usize> Sharded<N> {
    fn new() -> Self {
        Self { shards: (0..SHARDS).map(|_| SpinLock::new(Shard::default())).collect() }
    }
}

/// The instant a key is fresh again: its latest TAT.
fn fresh_at<const N: usize>(tats: &[u64; N]) -> u64 {
    tats.iter().copied().max().unwrap_or(0)
}

/// Makes room for one more key in a shard holding `max` keys: first forget the keys that are fresh
/// again, then, while still full, the key closest to fresh (it may pass a little early: the price of
/// bounded memory).
fn make_room<const N: usize>(shard: &mut Shard<N>, max: usize, now: u64) {
    shard.forget_fresh(now);
    while shard.keys.len() >= max {
        let Some(closest) = shard.keys.iter().min_by_key(|(_, tats)| fresh_at(tats)).map(|(&key, _)| key) else { break };
        shard.keys.remove(&closest);
    }
}

impl<const N: usize> Shards for Sharded<N> {
    fn decide(&self, gcras: &[KeyedGcra], key: u64, cost: Cost, now: u64, latest: u64, bounds: Bounds) -> (Decision, u64) {
        let mut shard = self.shards[shard_of(key)].lock();
        let known = shard.keys.get(&key).copied();
        let tats = known.unwrap_or([0; N]);
        let at = match earliest_of(gcras, &tats, cost, now) {
            Ok(at) => at,
            Err((_, never)) => return (never.into(), 0),
        };
        let decision = Decision::for_instant(at, now, latest);
        if !decision.is_admitted() {
            return (decision, 0);
        }
        let mut updated = tats;
        for ((gcra, unit), tat) in gcras.iter().zip(updated.iter_mut()) {
            let units = unit.of(cost);
            if units > 0 {
                *tat = (*tat).max(now).saturating_add(units * gcra.unit_ns());
            }
        }
        if known.is_none() {
            shard.added += 1;
            if shard.keys.len() >= bounds.max_per_shard {
                make_room(&mut shard, bounds.max_per_shard, now);
            } else if shard.added >= shard.sweep_after.max(64) {
                shard.forget_fresh(now.saturating_sub(bounds.idle_ns));
            }
        }
        shard.keys.insert(key, updated);
        (decision, fresh_at(&updated))
    }

    fn give_back(&self, gcras: &[KeyedGcra], key: u64, cost: Cost, receipt: u64) {
        let mut shard = self.shards[shard_of(key)].lock();
        if let Some(tats) = shard.keys.get_mut(&key) {
            // Only while no later request for this key moved its state (see `GcraCell::give_back`).
            if fresh_at(tats) == receipt {
                for ((gcra, unit), tat) in gcras.iter().zip(tats.iter_mut()) {
                    *tat = tat.saturating_sub(unit.of(cost) * gcra.unit_ns());
                }
            }
        }
    }

    fn earliest(&self, gcras: &[KeyedGcra], key: u64, cost: Cost, now: u64) -> std::result::Result<u64, (usize, Never)> {
        let tats = self.shards[shard_of(key)].lock().keys.get(&key).copied().unwrap_or([0; N]);
        earliest_of(gcras, &tats, cost, now)
    }

    fn forget_idle(&self, before: u64) {
        for shard in &self.shards {
            shard.lock().forget_fresh(before);
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().keys.len()).sum()
    }
}

/// The same GCRA limits, applied to each key on its own.
pub struct KeyedLimiter<C: Clock = MonotonicClock> {
    clock: C,
    limits: Vec<Limit>,
    gcras: Vec<KeyedGcra>,
    shards: Box<dyn Shards>,
    bounds: Bounds,
}

impl<C: Clock> std::fmt::Debug for KeyedLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimiter").field("limits", &self.limits).field("keys", &self.len()).finish()
    }
}

impl<C: Clock> KeyedLimiter<C> {
    /// `limits` must all be GCRA (a log per key would make memory grow with each key's traffic).
    pub fn new(limits: Vec<Limit>, max_keys: u64, idle_ns: u64, clock: C) -> Result<Self> {
        if limits.is_empty() || limits.len() > MAX_KEYED_LIMITS {
            return Err(Error::config("limits", format!("give 1 to {MAX_KEYED_LIMITS} limits, got {}", limits.len())));
        }
        if let Some(limit) = limits.iter().find(|limit| limit.algorithm() != Algorithm::Gcra) {
            return Err(Error::config("limits", format!("keyed limits are GCRA; '{limit}' is {:?}", limit.algorithm().name())));
        }
        if max_keys == 0 {
            return Err(Error::config("max_keys", "must be at least 1"));
        }
        let shards: Box<dyn Shards> = match limits.len() {
            1 => Box::new(Sharded::<1>::new()),
            2 => Box::new(Sharded::<2>::new()),
            3 => Box::new(Sharded::<3>::new()),
            _ => Box::new(Sharded::<4>::new()),
        };
        let bounds = Bounds { max_per_shard: (max_keys as usize).div_ceil(SHARDS), idle_ns };
        let gcras = limits.iter().map(|limit| (limit.gcra(), limit.unit())).collect();
        Ok(Self { clock, limits, gcras, shards, bounds })
    }

    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    fn refusal(&self, operation: &str, cost: Cost, index: usize, never: Never) -> Error {
        let limit = &self.limits[index];
        Error::RateLimited {
            message: format!(
                "{operation}: a request of {} {} exceeds what '{limit}' can ever admit per key ({} at once)",
                limit.unit().of(cost),
                limit.unit().name(),
                never.max_cost
            ),
            retry_after_ns: None,
            limit: limit.to_string(),
            remaining: 0.0,
        }
    }

    /// Decides a request for `key` at `now`, admitting it if it passes by `latest`.
    fn decide(&self, key: u64, cost: Cost, now: u64, latest: u64) -> Result<(Decision, u64)> {
        let (decision, receipt) = self.shards.decide(&self.gcras, key, cost, now, latest, self.bounds);
        if let Decision::Never { .. } = decision {
            let Err((index, never)) = self.shards.earliest(&self.gcras, key, cost, now) else {
                unreachable!("a cost is refused forever by some limit")
            };
            return Err(self.refusal("acquire", cost, index, never));
        }
        Ok((decision, receipt))
    }

    /// Admits a request for `key` now, or not; `Err` only when it can never pass.
    pub fn try_acquire(&self, key: u64, cost: Cost) -> Result<bool> {
        let now = self.clock.now_ns();
        Ok(self.decide(key, cost, now, now)?.0 == Decision::Now)
    }

    /// Reserves a request for `key`: (nanoseconds to wait, receipt for [`KeyedLimiter::give_back`]).
    /// Refused at once, counting nothing, when the wait would pass `max_wait_ns` or can never end.
    pub fn reserve(&self, key: u64, cost: Cost, max_wait_ns: Option<u64>) -> Result<(u64, u64)> {
        let now = self.clock.now_ns();
        let latest = max_wait_ns.map_or(u64::MAX, |wait| now.saturating_add(wait));
        match self.decide(key, cost, now, latest)? {
            (Decision::NotBefore(at), _) => {
                let limits: Vec<_> = self.limits.iter().map(ToString::to_string).collect();
                Err(Error::RateLimited {
                    message: format!("acquire: would wait {:.3}s for '{}'", ns_to_secs(at - now), limits.join("', '")),
                    retry_after_ns: Some(at - now),
                    limit: limits.join(", "),
                    remaining: 0.0,
                })
            }
            (decision, receipt) => Ok((decision.wait_ns(now).unwrap_or(0), receipt)),
        }
    }

    /// Nanoseconds until `key` may pass `cost`.
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
        let before = self.clock.now_ns().saturating_sub(self.bounds.idle_ns);
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
        for key in 0..10_000u64 {
            assert!(lim.try_acquire(key, Cost::request(0)).unwrap());
        }
        assert!(lim.len() <= 64 + SHARDS, "{}", lim.len());
    }

    #[test]
    fn waiters_for_one_key_queue_in_order_and_the_last_gives_back() {
        let (lim, _) = keyed(1.0, 1.0, 100);
        assert_eq!(lim.reserve(7, Cost::request(0), None).unwrap().0, 0);
        let (wait, receipt) = lim.reserve(7, Cost::request(0), None).unwrap();
        assert_eq!(wait, SEC);
        assert!(matches!(lim.reserve(7, Cost::request(0), Some(SEC)), Err(Error::RateLimited { retry_after_ns: Some(_), .. })));
        lim.give_back(7, Cost::request(0), receipt);
        assert_eq!(lim.time_until_ready(7, Cost::request(0)).unwrap(), SEC);
    }

    #[test]
    fn only_gcra_limits_are_keyed() {
        let exact = Limit::new(1.0, SEC, Unit::Requests, Algorithm::Exact, None).unwrap();
        let err = KeyedLimiter::new(vec![exact], 10, SEC, ManualClock::new(0)).unwrap_err();
        assert!(matches!(err, Error::Config { field, .. } if field == "limits"));
    }
}
