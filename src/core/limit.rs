//! What a user asks for: "n units per period", checked once at construction, and the window that
//! enforces it.

use std::fmt;

use crate::core::clock::{NS_PER_SEC, secs_to_ns};
use crate::core::counter::SlidingCounter;
use crate::core::decision::Never;
use crate::core::error::{Error, Result};
use crate::core::gcra::Gcra;
use crate::core::window::ExactWindow;

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Requests,
    /// LLM tokens (prompt plus completion), as estimated before a call and settled after it.
    Tokens,
    /// Money, counted in micro-dollars: a request's tokens at its model's price.
    Usd,
}

impl Unit {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "requests" | "request" => Ok(Unit::Requests),
            "tokens" | "token" => Ok(Unit::Tokens),
            "usd" => Ok(Unit::Usd),
            other => Err(Error::config("unit", format!("must be 'requests', 'tokens' or 'usd', got {other:?}"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Tokens => "tokens",
            Unit::Usd => "usd",
        }
    }

    /// How many counted units one unit of a limit's amount is: a dollar is counted in micro-dollars.
    fn counted_per_amount(self) -> f64 {
        if self == Unit::Usd { 1e6 } else { 1.0 }
    }

    /// `counted` units as a user reads them: dollars for a budget (counted in micro-dollars).
    pub fn amount_of(self, counted: u64) -> f64 {
        counted as f64 / self.counted_per_amount()
    }

    /// This unit's share of a request's cost.
    #[inline]
    pub fn of(self, cost: Cost) -> u64 {
        match self {
            Unit::Requests => cost.requests,
            Unit::Tokens => cost.tokens,
            Unit::Usd => cost.micro_usd,
        }
    }
}

/// What one request costs in each unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    pub requests: u64,
    pub tokens: u64,
    pub micro_usd: u64,
}

impl Cost {
    /// One request carrying `tokens` LLM tokens.
    pub fn request(tokens: u64) -> Self {
        Self { requests: 1, tokens, micro_usd: 0 }
    }

    /// One request carrying `tokens` LLM tokens at `usd_per_million` dollars per million tokens: a
    /// token then costs that many micro-dollars.
    pub fn priced(tokens: u64, usd_per_million: f64) -> Self {
        Self { requests: 1, tokens, micro_usd: (tokens as f64 * usd_per_million.max(0.0)).ceil() as u64 }
    }
}

/// How a limit is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// A log of the admissions in the window: never more than the limit in any interval of the period,
    /// and the whole limit usable at once.
    Exact,
    /// GCRA on one word: paces evenly, with room for `burst` units at once.
    Gcra,
    /// Two fixed windows, weighted: constant memory, approximate.
    Counter,
}

impl Algorithm {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "exact" => Ok(Algorithm::Exact),
            "gcra" => Ok(Algorithm::Gcra),
            "counter" => Ok(Algorithm::Counter),
            other => Err(Error::config("algorithm", format!("must be 'exact', 'gcra' or 'counter', got {other:?}"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Exact => "exact",
            Algorithm::Gcra => "gcra",
            Algorithm::Counter => "counter",
        }
    }
}

/// A period by name ("second", "minute", "hour", "day", singular or plural) in nanoseconds.
pub fn parse_period(name: &str) -> Result<u64> {
    let secs = match name.trim_end_matches('s') {
        "second" | "sec" => 1,
        "minute" | "min" => 60,
        "hour" => 3_600,
        "day" => 86_400,
        _ => {
            return Err(Error::config(
                "per",
                format!("must be 'second', 'minute', 'hour', 'day' or a number of seconds, got {name:?}"),
            ));
        }
    };
    Ok(secs * NS_PER_SEC)
}

/// A period given in seconds, in nanoseconds; refused unless positive and finite.
pub fn period_from_secs(secs: f64) -> Result<u64> {
    match secs_to_ns(secs) {
        Some(ns) if ns > 0 => Ok(ns),
        _ => Err(Error::config("per", format!("must be a positive number of seconds, got {secs}"))),
    }
}

/// "At most `amount` units of `unit` per `period_ns`", enforced by `algorithm`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// As the user gave it (dollars for a budget).
    amount: f64,
    /// The same in the units counted (micro-dollars for a budget).
    counted: f64,
    period_ns: u64,
    unit: Unit,
    algorithm: Algorithm,
    burst: u64,
    /// Extra time an admission stays counted past the period, for the trip to the server.
    guard_ns: u64,
}

/// The guard a limit gets unless told otherwise: a server counts a request from when it arrives, which
/// is a little after the client admitted it, and by a different little each time; a slot reused exactly
/// one period after its admission meets the server's window edge. 1% of the period, at most 50 ms.
pub fn default_guard_ns(period_ns: u64) -> u64 {
    (period_ns / 100).min(50_000_000)
}

impl Limit {
    /// Checks the numbers once, here: later decisions assume them sound. `burst` belongs to GCRA only;
    /// it defaults to one request (even pacing, never more than `amount` in any period) and, for tokens,
    /// to the whole amount, so that one request may carry up to the limit.
    pub fn new(amount: f64, period_ns: u64, unit: Unit, algorithm: Algorithm, burst: Option<f64>) -> Result<Self> {
        if !(amount.is_finite() && amount > 0.0) {
            return Err(Error::config("amount", format!("must be a positive number, got {amount}")));
        }
        if period_ns == 0 {
            return Err(Error::config("per", "must be a positive period"));
        }
        let counted = amount * unit.counted_per_amount();
        if period_ns as f64 / counted < 1.0 {
            return Err(Error::config("amount", format!("{amount} per {period_ns} ns is more than one per nanosecond")));
        }
        let burst = match (algorithm, burst) {
            (Algorithm::Gcra, Some(b)) if b.is_finite() && b >= 1.0 => b as u64,
            (Algorithm::Gcra, Some(b)) => {
                return Err(Error::config("burst", format!("must be at least 1, got {b}")));
            }
            (Algorithm::Gcra, None) if unit != Unit::Requests => counted.ceil() as u64,
            (Algorithm::Gcra, None) => 1,
            (_, Some(_)) => {
                return Err(Error::config(
                    "burst",
                    format!("only a 'gcra' limit has a burst; this one is {:?}", algorithm.name()),
                ));
            }
            (_, None) => 0,
        };
        Ok(Self { amount, counted, period_ns, unit, algorithm, burst, guard_ns: 0 })
    }

    /// This limit, keeping each admission counted `guard_ns` past its period.
    pub fn with_guard(self, guard_ns: u64) -> Self {
        Self { guard_ns, ..self }
    }

    pub fn guard_ns(&self) -> u64 {
        self.guard_ns
    }

    /// The period as enforced: the guard included.
    fn enforced_period_ns(&self) -> u64 {
        self.period_ns.saturating_add(self.guard_ns)
    }

    pub fn amount(&self) -> f64 {
        self.amount
    }

    pub fn period_ns(&self) -> u64 {
        self.period_ns
    }

    pub fn unit(&self) -> Unit {
        self.unit
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The GCRA burst; zero for the other algorithms.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// A window count and length for the window-based algorithms: a whole number of units per a
    /// proportionally scaled period (2.5 per second becomes 2 per 0.8 s), so the average rate is kept.
    fn whole_window(&self) -> (u64, u64) {
        let count = self.counted.floor().max(1.0);
        let window_ns = (self.enforced_period_ns() as f64 * count / self.counted).ceil() as u64;
        (count as u64, window_ns)
    }

    pub fn gcra(&self) -> Gcra {
        Gcra::new(self.counted, self.enforced_period_ns(), self.burst)
    }

    /// The window count in force when the limit is scaled by `factor` (0..=1): at least one.
    pub fn scaled_count(&self, factor: f64) -> u64 {
        ((self.whole_window().0 as f64 * factor).floor() as u64).max(1)
    }

    /// The GCRA of this limit scaled by `factor` (0..=1), its burst kept.
    pub fn scaled_gcra(&self, factor: f64) -> Gcra {
        Gcra::new(self.counted * factor.max(1e-6), self.enforced_period_ns(), self.burst)
    }

    /// The state that enforces this limit, empty.
    pub fn window(&self) -> Window {
        match self.algorithm {
            Algorithm::Exact => {
                let (count, window_ns) = self.whole_window();
                Window::Exact(ExactWindow::new(count, window_ns))
            }
            Algorithm::Counter => {
                let (count, window_ns) = self.whole_window();
                Window::Counter(SlidingCounter::new(count, window_ns))
            }
            Algorithm::Gcra => Window::Gcra { gcra: self.gcra(), tat: 0 },
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.period_ns as f64 / NS_PER_SEC as f64;
        let period = match self.period_ns / NS_PER_SEC {
            1 if self.period_ns == NS_PER_SEC => "second".to_string(),
            60 if self.period_ns == 60 * NS_PER_SEC => "minute".to_string(),
            3_600 if self.period_ns == 3_600 * NS_PER_SEC => "hour".to_string(),
            86_400 if self.period_ns == 86_400 * NS_PER_SEC => "day".to_string(),
            _ => format!("{secs}s"),
        };
        write!(f, "{} {} per {period}", self.amount, self.unit.name())
    }
}

/// The running state of one limit: one of the three algorithms, used under the quota's lock.
#[derive(Debug, Clone)]
pub enum Window {
    Exact(ExactWindow),
    Gcra { gcra: Gcra, tat: u64 },
    Counter(SlidingCounter),
}

impl Window {
    /// The earliest instant, not before `now`, at which `cost` more units pass.
    #[inline]
    pub fn earliest(&mut self, cost: u64, now: u64) -> Result<u64, Never> {
        match self {
            Window::Exact(w) => w.earliest(cost, now),
            Window::Gcra { gcra, tat } => gcra.schedule(*tat, cost, now).map(|slot| slot.at),
            Window::Counter(c) => c.earliest(cost, now),
        }
    }

    /// Counts `cost` at `at` (an instant `earliest` allowed); returns a receipt for settle and give-back.
    #[inline]
    pub fn admit(&mut self, at: u64, cost: u64) -> u64 {
        match self {
            Window::Exact(w) => w.admit(at, cost),
            Window::Gcra { gcra, tat } => {
                let slot = gcra.schedule(*tat, cost, at).expect("admit follows a successful earliest");
                *tat = slot.tat;
                *tat
            }
            Window::Counter(c) => c.admit(at, cost),
        }
    }

    /// Enforces `limit` scaled by `factor` (0..=1) from now on: what the server allows, when it allows
    /// less than configured.
    pub fn rescale(&mut self, limit: &Limit, factor: f64) {
        match self {
            Window::Exact(w) => w.set_limit(limit.scaled_count(factor)),
            Window::Counter(c) => c.set_limit(limit.scaled_count(factor)),
            Window::Gcra { gcra, .. } => *gcra = limit.scaled_gcra(factor),
        }
    }

    /// Counts `cost` that was spent without being admitted here (a settle found tokens nobody
    /// estimated), from `now` on, whatever room is left: the server has counted it already.
    pub fn charge(&mut self, cost: u64, now: u64) {
        match self {
            Window::Exact(w) => w.charge(cost, now),
            Window::Gcra { gcra, tat } => *tat = (*tat).max(now).saturating_add(cost * gcra.unit_ns()),
            Window::Counter(c) => c.charge(cost, now),
        }
    }

    /// Replaces an admission's cost `old` by `actual`. GCRA gives back only while nothing came after.
    pub fn settle(&mut self, receipt: u64, old: u64, actual: u64, now: u64) {
        match self {
            Window::Exact(w) => w.settle(receipt, old, actual),
            Window::Counter(c) => c.settle(receipt, old, actual),
            Window::Gcra { .. } if actual > old => self.charge(actual - old, now),
            Window::Gcra { gcra, tat } => {
                if *tat == receipt {
                    *tat -= (old - actual) * gcra.unit_ns();
                }
            }
        }
    }

    /// Moves an admission reserved for `at` to `now`, when its request went late (see
    /// [`ExactWindow::restamp`]); GCRA shifts its TAT while it is the last.
    /// The approximate counter does not track instants.
    pub fn restamp(&mut self, receipt: u64, at: u64, now: u64) {
        match self {
            Window::Exact(w) => w.restamp(receipt, now),
            Window::Gcra { tat, .. } if *tat == receipt => *tat += now.saturating_sub(at),
            _ => {}
        }
    }

    /// The instant an admission reserved for `at` really conforms (see [`ExactWindow::recheck`]);
    /// `at` for the algorithms that keep no instants per admission.
    pub fn recheck(&mut self, receipt: u64, at: u64) -> u64 {
        match self {
            Window::Exact(w) => w.recheck(receipt),
            _ => at,
        }
    }

    /// What this limit counts where a server counted an admission (see [`ExactWindow::counted_around`]);
    /// `None` for the algorithms that keep no instants per admission.
    pub fn counted_around(&self, receipt: u64, late_ns: u64) -> Option<u64> {
        match self {
            Window::Exact(w) => w.counted_around(receipt, late_ns),
            _ => None,
        }
    }

    /// Takes back an admission of `cost` that will not be used.
    pub fn give_back(&mut self, receipt: u64, cost: u64) {
        match self {
            Window::Exact(w) => w.give_back(receipt, cost),
            _ => self.settle(receipt, cost, 0, 0),
        }
    }

    /// Units free now.
    pub fn remaining(&mut self, now: u64) -> u64 {
        match self {
            Window::Exact(w) => w.remaining(now),
            Window::Gcra { gcra, tat } => gcra.remaining(*tat, now),
            Window::Counter(c) => c.remaining(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = NS_PER_SEC;

    #[test]
    fn nonsense_configs_name_their_field() {
        let field = |r: Result<Limit>| match r {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert_eq!(field(Limit::new(0.0, SEC, Unit::Requests, Algorithm::Exact, None)), "amount");
        assert_eq!(field(Limit::new(-3.0, SEC, Unit::Requests, Algorithm::Exact, None)), "amount");
        assert_eq!(field(Limit::new(f64::NAN, SEC, Unit::Requests, Algorithm::Exact, None)), "amount");
        assert_eq!(field(Limit::new(10.0, 0, Unit::Requests, Algorithm::Exact, None)), "per");
        assert_eq!(field(Limit::new(10.0, SEC, Unit::Requests, Algorithm::Gcra, Some(0.5))), "burst");
        assert_eq!(field(Limit::new(10.0, SEC, Unit::Requests, Algorithm::Exact, Some(5.0))), "burst");
        assert_eq!(field(Limit::new(2e9, SEC, Unit::Requests, Algorithm::Gcra, None)), "amount");
        assert_eq!(field(parse_period("fortnight").map(|_| unreachable!())), "per");
        assert_eq!(field(Unit::parse("dollars").map(|_| unreachable!())), "unit");
        assert_eq!(field(Algorithm::parse("leaky").map(|_| unreachable!())), "algorithm");
        assert_eq!(field(period_from_secs(-1.0).map(|_| unreachable!())), "per");
    }

    #[test]
    fn periods_parse_by_name() {
        assert_eq!(parse_period("minute").unwrap(), 60 * SEC);
        assert_eq!(parse_period("hours").unwrap(), 3_600 * SEC);
        assert_eq!(parse_period("day").unwrap(), 86_400 * SEC);
        assert_eq!(period_from_secs(10.0).unwrap(), 10 * SEC);
    }

    #[test]
    fn gcra_burst_defaults_to_one_request_or_the_whole_token_amount() {
        assert_eq!(Limit::new(10.0, SEC, Unit::Requests, Algorithm::Gcra, None).unwrap().burst(), 1);
        assert_eq!(Limit::new(1_000.0, 60 * SEC, Unit::Tokens, Algorithm::Gcra, None).unwrap().burst(), 1_000);
    }

    #[test]
    fn fractional_amounts_keep_their_average_rate() {
        let limit = Limit::new(2.5, SEC, Unit::Requests, Algorithm::Exact, None).unwrap();
        assert_eq!(limit.whole_window(), (2, 800_000_000));
        let slow = Limit::new(0.5, SEC, Unit::Requests, Algorithm::Exact, None).unwrap();
        assert_eq!(slow.whole_window(), (1, 2 * SEC));
    }

    #[test]
    fn a_guard_keeps_admissions_counted_past_the_period() {
        let limit = Limit::new(2.0, SEC, Unit::Requests, Algorithm::Exact, None).unwrap().with_guard(SEC / 10);
        assert_eq!(limit.whole_window(), (2, SEC + SEC / 10));
        assert_eq!(default_guard_ns(SEC), SEC / 100);
        assert_eq!(default_guard_ns(60 * SEC), 50_000_000);
    }

    #[test]
    fn limits_describe_themselves() {
        let limit = Limit::new(10.0, 60 * SEC, Unit::Requests, Algorithm::Exact, None).unwrap();
        assert_eq!(limit.to_string(), "10 requests per minute");
        let odd = Limit::new(100.0, 10 * SEC, Unit::Tokens, Algorithm::Exact, None).unwrap();
        assert_eq!(odd.to_string(), "100 tokens per 10s");
    }
}
