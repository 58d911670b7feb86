//! How a limiter follows a server that allows less than it was told: each burst of 429s cuts the rate
//! in force (multiplicative decrease), which then holds for a cooldown and climbs back to the
//! configured rate over a recovery period (additive increase). A limiter set above what the server
//! allows settles near what it allows instead of storming it. A server that says how much it has left
//! (`x-ratelimit-remaining-*`) lets the cut come before any 429, and to what it allows, not by a guess.

use crate::core::limit::Unit;
use crate::core::spin::SpinLock;

/// The units whose rates follow the server, each with its own [`Aimd`]; a budget (dollars) is the
/// user's own.
pub const FOLLOWED: [Unit; 2] = [Unit::Requests, Unit::Tokens];

/// Where `unit` stands in [`FOLLOWED`], if it follows the server.
pub fn followed(unit: Unit) -> Option<usize> {
    FOLLOWED.iter().position(|&u| u == unit)
}

/// The rate in force after a cut, as a fraction of the one before it.
const DECREASE: f64 = 0.7;
/// The least fraction of the configured rate ever in force.
const FLOOR: f64 = 0.05;

#[derive(Debug, Clone, Copy)]
struct Cut {
    factor: f64,
    at_ns: u64,
}

/// Additive-increase, multiplicative-decrease of a limiter's rates, on an injected clock.
#[derive(Debug)]
pub struct Aimd {
    last_cut: SpinLock<Option<Cut>>,
    /// 429s closer together than this are one burst: one cut (those in flight answer alike).
    burst_ns: u64,
    cooldown_ns: u64,
    recovery_ns: u64,
}

impl Aimd {
    pub fn new(burst_ns: u64, cooldown_ns: u64, recovery_ns: u64) -> Self {
        Self { last_cut: SpinLock::new(None), burst_ns, cooldown_ns, recovery_ns: recovery_ns.max(1) }
    }

    /// The same, holding each cut for `cooldown_ns` before the climb back.
    pub fn with_cooldown(&self, cooldown_ns: u64) -> Self {
        Self::new(self.burst_ns, cooldown_ns, self.recovery_ns)
    }

    /// The same settings, with no cut yet.
    pub fn fresh(&self) -> Self {
        self.with_cooldown(self.cooldown_ns)
    }

    fn factor_after(&self, cut: Option<Cut>, now: u64) -> f64 {
        let Some(cut) = cut else { return 1.0 };
        let since = now.saturating_sub(cut.at_ns);
        if since < self.cooldown_ns {
            return cut.factor;
        }
        let climbed = (since - self.cooldown_ns) as f64 / self.recovery_ns as f64;
        (cut.factor + (1.0 - cut.factor) * climbed).min(1.0)
    }

    /// The fraction of the configured rate in force at `now`.
    pub fn factor(&self, now: u64) -> f64 {
        self.factor_after(*self.last_cut.lock(), now)
    }

    /// A 429 arrived at `now`: cuts the rate unless this one belongs to the burst already cut for.
    /// Returns the fraction in force after it.
    pub fn rejected(&self, now: u64) -> f64 {
        let mut last_cut = self.last_cut.lock();
        if let Some(cut) = *last_cut {
            if now.saturating_sub(cut.at_ns) < self.burst_ns {
                return cut.factor;
            }
        }
        let factor = (self.factor_after(*last_cut, now) * DECREASE).max(FLOOR);
        *last_cut = Some(Cut { factor, at_ns: now });
        factor
    }

    /// The server allows `allowed` of the configured rate (read from what it says is left): cuts the
    /// rate in force to that at `now`, unless it is that low already; a climb back after a cut stops
    /// there for as long as the server says so. Returns the fraction in force.
    pub fn limited_to(&self, allowed: f64, now: u64) -> f64 {
        let mut last_cut = self.last_cut.lock();
        let in_force = self.factor_after(*last_cut, now);
        if allowed >= in_force {
            return in_force;
        }
        let factor = allowed.max(FLOOR);
        *last_cut = Some(Cut { factor, at_ns: now });
        factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_burst_of_429s_cuts_once() {
        let aimd = Aimd::new(SEC, 10 * SEC, 60 * SEC);
        assert_eq!(aimd.factor(0), 1.0);
        assert_eq!(aimd.rejected(0), 0.7);
        assert_eq!(aimd.rejected(SEC / 2), 0.7);
        assert!((aimd.rejected(2 * SEC) - 0.49).abs() < 1e-9);
    }

    #[test]
    fn the_rate_holds_through_the_cooldown_then_climbs_back() {
        let aimd = Aimd::new(SEC, 10 * SEC, 60 * SEC);
        aimd.rejected(0);
        assert_eq!(aimd.factor(9 * SEC), 0.7);
        assert!((aimd.factor(40 * SEC) - 0.85).abs() < 1e-9);
        assert_eq!(aimd.factor(70 * SEC), 1.0);
        assert_eq!(aimd.factor(700 * SEC), 1.0);
    }

    #[test]
    fn cuts_never_go_below_the_floor() {
        let aimd = Aimd::new(0, SEC, SEC);
        for step in 0..100 {
            aimd.rejected(step);
        }
        assert_eq!(aimd.factor(100), FLOOR);
    }

    #[test]
    fn a_server_that_allows_less_cuts_to_what_it_allows_then_recovery_starts_over() {
        let aimd = Aimd::new(SEC, 10 * SEC, 60 * SEC);
        assert_eq!(aimd.limited_to(1.0, 0), 1.0);
        assert_eq!(aimd.limited_to(0.6, 0), 0.6);
        assert_eq!(aimd.limited_to(0.8, SEC), 0.6, "never raises the rate");
        assert!((aimd.factor(40 * SEC) - 0.8).abs() < 1e-9);
        assert_eq!(aimd.limited_to(0.6, 40 * SEC), 0.6, "the climb stops where the server still says so");
        assert_eq!(aimd.factor(49 * SEC), 0.6);
        assert_eq!(aimd.limited_to(0.0, 50 * SEC), FLOOR);
    }
}
