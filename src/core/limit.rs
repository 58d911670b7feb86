//! What a user asks for: "n units per period", checked once at construction, and the window that
//! enforces it.

use std::fmt;

use crate::core::clock::{NS_PER_SEC, secs_to_ns};
use crate::core::counter::SlidingCounter;
use crate::core::decision::Never;
use crate::core::error::{Error, Result};
use crate::core::gcra::Gcra;
use crate::core::window::ExactWindow;

/// A budget counts micro-dollars.
const MICRO_USD_PER_USD: f64 = 1e6;

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

    /// A limit's amount in the units counted: a dollar is counted in micro-dollars. The product is
    /// snapped to a whole number it misses by a rounding error only ($0.0157 is 15,700 micro-dollars, not
    /// 15,699.999999999998), so that its whole part is what the user wrote.
    fn counted(self, amount: f64) -> f64 {
        if self != Unit::Usd {
            return amount;
        }
        let micro = amount * MICRO_USD_PER_USD;
        let nearest = micro.round();
        if (micro - nearest).abs() <= micro * 1e-12 { nearest } else { micro }
    }

    /// `counted` units as a user reads them: dollars for a budget (counted in micro-dollars).
    pub fn amount_of(self, counted: u64) -> f64 {
        if self == Unit::Usd { counted as f64 / MICRO_USD_PER_USD } else { counted as f64 }
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

/// How a limit is enforced. Each keeps "at most `count` in any half-open interval of the enforced
/// window" (see [`Limit::whole_window`]: `floor(n)` per period plus guard), the GCRA within its burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// A log of the admissions in the window: never more than `count` in any interval of the window,
    /// the whole `count` usable at once, and each admission moved to when its request really went.
    Exact,
    /// GCRA on one word: paces one unit per `window / count`; with room for `burst` units at once, at
    /// most `count + burst - 1` in any interval of the window (`count` with the default burst of 1).
    Gcra,
    /// Two fixed windows: constant memory, never more than `count` in any interval of the window, at
    /// the price of waiting longer than the exact log when the last window's admissions were spread.
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

/// "At most `amount` units of `unit` per `period_ns`", enforced by `algorithm`: no half-open interval
/// of the period (lengthened by the guard) ever holds more than the whole part of the amount in counted
/// units (`max_qps=2.5` never lets 3 through in one second; a budget of $0.0125 counts 12,500
/// micro-dollars). A fraction of a unit is never usable, so 2.5 per second runs at 2 per second. An
/// amount below one unit means one per the period stretched to hold it: 0.5 per second is one per 2 s.
/// GCRA with a burst `b` may add `b - 1` to that; the counter never does, but may wait longer.
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

/// `amount` counted units per `period_ns` as a whole count per window: the whole part of the amount per
/// the period (2.5 per second is 2 per second: a third would put 3 in some second); below one unit, one
/// per the period stretched to hold a whole one (0.5 per second is one per 2 s). Never less than one per
/// window, and the window never shorter than the period.
pub fn whole_window(amount: f64, period_ns: u64) -> (u64, u64) {
    if amount >= 1.0 {
        (amount.floor() as u64, period_ns)
    } else {
        (1, (period_ns as f64 / amount).ceil() as u64)
    }
}

/// The guard a limit gets unless told otherwise: a server counts a request from when it arrives, which
/// is a little after the client admitted it, and by a different little each time; a slot reused exactly
/// one period after its admission meets the server's window edge. 1% of the period, at most 50 ms.
pub fn default_guard_ns(period_ns: u64) -> u64 {
    (period_ns / 100).min(50_000_000)
}

impl Limit {
    /// Checks the numbers once, here: later decisions assume them sound. `burst` belongs to GCRA only;
    /// it defaults to one request (even pacing, never more than the whole amount in any period) and,
    /// for tokens and dollars, to the whole amount, so that one request may carry up to the limit.
    pub fn new(amount: f64, period_ns: u64, unit: Unit, algorithm: Algorithm, burst: Option<f64>) -> Result<Self> {
        if !(amount.is_finite() && amount > 0.0) {
            return Err(Error::config("amount", format!("must be a positive number, got {amount}")));
        }
        if period_ns == 0 {
            return Err(Error::config("per", "must be a positive period"));
        }
        let counted = unit.counted(amount);
        if period_ns as f64 / counted < 1.0 {
            return Err(Error::config("amount", format!("{amount} per {period_ns} ns is more than one per nanosecond")));
        }
        let burst = match (algorithm, burst) {
            (Algorithm::Gcra, Some(b)) if b.is_finite() && b >= 1.0 => b as u64,
            (Algorithm::Gcra, Some(b)) => {
                return Err(Error::config("burst", format!("must be at least 1, got {b}")));
            }
            (Algorithm::Gcra, None) if unit != Unit::Requests => whole_window(counted, period_ns).0,
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

    /// The whole count and the window it holds in, as every algorithm enforces them: the whole part of
    /// the counted amount per the period plus guard; below one unit, one per the period stretched to
    /// hold it (see [`whole_window`]).
    pub fn whole_window(&self) -> (u64, u64) {
        whole_window(self.counted, self.enforced_period_ns())
    }

    pub fn gcra(&self) -> Gcra {
        let (count, window_ns) = self.whole_window();
        Gcra::new(count, window_ns, self.burst)
    }

    /// The window count in force when the limit is scaled by `factor` (0..=1): the whole part of the
    /// scaled count, at least one.
    pub fn scaled_count(&self, factor: f64) -> u64 {
        ((self.whole_window().0 as f64 * factor).floor() as u64).max(1)
    }

    /// The GCRA of this limit scaled by `factor` (0..=1): paced at the whole part of the scaled count
    /// per window (below one, one per the window stretched to hold it), its tolerance kept.
    pub fn scaled_gcra(&self, factor: f64) -> Gcra {
        let (count, window_ns) = self.whole_window();
        let (scaled_count, scaled_window_ns) = whole_window(count as f64 * factor.clamp(1e-6, 1.0), window_ns);
        self.gcra().with_unit_ns(scaled_window_ns.div_ceil(scaled_count))
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
            Window::Gcra { gcra, tat } => *tat = gcra.charge(*tat, cost, now),
            Window::Counter(c) => c.charge(cost, now),
        }
    }

    /// Replaces an admission's cost `old` by `actual`. GCRA gives back only while nothing came after.
    pub fn settle(&mut self, receipt: u64, old: u64, actual: u64, now: u64) {
        match self {
            Window::Exact(w) => w.settle(receipt, old, actual),
            Window::Counter(c) => c.settle(receipt, old, actual),
            Window::Gcra { .. } if actual > old => self.charge(actual - old, now),
            Window::Gcra { gcra, tat } => *tat = gcra.give_back(*tat, receipt, old - actual).unwrap_or(*tat),
        }
    }

    /// Moves an admission of `cost` reserved for `at` to `now`, when its request went (see
    /// [`ExactWindow::restamp`]). GCRA and the counter keep no instant per admission: when it went
    /// late they count it from `now` for what comes next, and those admitted after it keep their
    /// instants.
    pub fn restamp(&mut self, receipt: u64, cost: u64, at: u64, now: u64) {
        match self {
            Window::Exact(w) => w.restamp(receipt, cost, now),
            _ if now <= at => {}
            Window::Gcra { gcra, tat } => *tat = gcra.restamp(*tat, cost, now),
            Window::Counter(c) => c.restamp(receipt, cost, now),
        }
    }

    /// The instant an admission reserved for `from` really conforms (see [`ExactWindow::recheck`]);
    /// `from` for the algorithms that keep no instants per admission.
    pub fn recheck(&mut self, receipt: u64, cost: u64, from: u64) -> u64 {
        match self {
            Window::Exact(w) => w.recheck(receipt, cost, from),
            _ => from,
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

    // Issue 15: 2.5 per second became 2 per 0.8 s, which let 4 through in 0.81 s.
    #[test]
    fn fractional_amounts_count_their_whole_part_per_period() {
        let limit = Limit::new(2.5, SEC, Unit::Requests, Algorithm::Exact, None).unwrap();
        assert_eq!(limit.whole_window(), (2, SEC));
        let rpm = Limit::new(62.5, 60 * SEC, Unit::Requests, Algorithm::Exact, None).unwrap();
        assert_eq!(rpm.whole_window(), (62, 60 * SEC));
        let gcra = Limit::new(2.5, SEC, Unit::Requests, Algorithm::Gcra, None).unwrap();
        assert_eq!(gcra.gcra().unit_ns(), SEC / 2);
    }

    #[test]
    fn an_amount_below_one_unit_is_one_per_a_longer_window() {
        let slow = Limit::new(0.5, SEC, Unit::Requests, Algorithm::Exact, None).unwrap();
        assert_eq!(slow.whole_window(), (1, 2 * SEC));
        let gcra = Limit::new(0.4, SEC, Unit::Requests, Algorithm::Gcra, None).unwrap();
        assert_eq!(gcra.gcra().unit_ns(), 2 * SEC + SEC / 2);
    }

    #[test]
    fn a_dollar_amount_counts_the_micro_dollars_written() {
        let budget = Limit::new(0.0157, 3_600 * SEC, Unit::Usd, Algorithm::Exact, None).unwrap();
        assert_eq!(budget.whole_window(), (15_700, 3_600 * SEC));
        let odd = Limit::new(0.0000125, SEC, Unit::Usd, Algorithm::Exact, None).unwrap();
        assert_eq!(odd.whole_window(), (12, SEC));
    }

    #[test]
    fn a_token_gcra_bursts_the_whole_amount_by_default() {
        let limit = Limit::new(1_000.5, 60 * SEC, Unit::Tokens, Algorithm::Gcra, None).unwrap();
        assert_eq!(limit.burst(), 1_000);
    }

    #[test]
    fn a_scaled_limit_keeps_whole_counts() {
        let limit = Limit::new(10.5, SEC, Unit::Requests, Algorithm::Gcra, None).unwrap();
        assert_eq!(limit.scaled_count(0.35), 3);
        assert_eq!(limit.scaled_count(0.01), 1);
        assert_eq!(limit.scaled_gcra(1.0).unit_ns(), SEC / 10);
        assert_eq!(limit.scaled_gcra(0.35).unit_ns(), SEC / 3 + 1, "three per second, not 3.5");
        assert_eq!(limit.scaled_gcra(0.05).unit_ns(), 2 * SEC, "half a request per second: one per 2 s");
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
