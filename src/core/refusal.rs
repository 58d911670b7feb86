//! The wording of every refusal, in one place: a request that would cross a budget, one whose cost a
//! limit can never admit, one that would wait longer than its caller allows, and one whose waiter ran
//! out of time in line. The local limiter, the keyed table and the Redis backend all refuse through
//! these, so a user reads the same sentence whichever decided.

use crate::core::clock::ns_to_secs;
use crate::core::error::Error;
use crate::core::limit::{Cost, Limit, Unit};

/// "a request", or "a request of N tokens".
fn describe(cost: Cost) -> String {
    if cost.tokens > 0 { format!("a request of {} tokens", cost.tokens) } else { "a request".to_string() }
}

/// A request that would cross the budget `limit` (a limit in dollars): refused unsent, never delayed.
pub fn over_budget(operation: &str, cost: Cost, limit: &Limit) -> Error {
    Error::BudgetExceeded {
        message: format!(
            "{operation}: a request costing ${:.6} would cross the budget '{limit}'; it was not sent",
            cost.micro_usd as f64 / 1e6
        ),
    }
}

/// A cost `limit` can never admit, `max_cost` being the most it admits at once (`scope` says of what,
/// e.g. " per key"); a budget's is worded as crossing it.
pub fn never(operation: &str, cost: Cost, limit: &Limit, max_cost: u64, scope: &str) -> Error {
    if limit.unit() == Unit::Usd {
        return over_budget(operation, cost, limit);
    }
    Error::RateLimited {
        message: format!(
            "{operation}: {} exceeds what '{limit}' can ever admit{scope} ({max_cost} {} at once), so it never passes",
            describe(cost),
            limit.unit().name()
        ),
        retry_after_ns: None,
        limit: limit.to_string(),
        remaining: 0.0,
    }
}

/// A request that would wait `wait_ns` for `limit` (the names of the limits that hold it), longer than
/// its caller allows; `remaining` is what that limit has left now.
pub fn too_long(operation: &str, cost: Cost, limit: String, wait_ns: u64, remaining: f64) -> Error {
    Error::RateLimited {
        message: format!("{operation}: {} would wait {:.3}s for '{limit}'", describe(cost), ns_to_secs(wait_ns)),
        retry_after_ns: Some(wait_ns),
        limit,
        remaining,
    }
}

/// What a waiter stood in line for when its time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaited {
    Slot,
    Rate,
}

/// A waiter whose deadline passed while it stood in line.
pub fn timed_out(operation: &str, awaited: Awaited) -> Error {
    let (what, limit) = match awaited {
        Awaited::Slot => ("concurrency slot", "concurrency slot"),
        Awaited::Rate => ("turn at the rate limits", "rate admission"),
    };
    Error::RateLimited {
        message: format!("{operation}: no {what} within its timeout"),
        retry_after_ns: None,
        limit: limit.into(),
        remaining: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::NS_PER_SEC;
    use crate::core::limit::Algorithm;

    fn limit(amount: f64, unit: Unit) -> Limit {
        Limit::new(amount, 60 * NS_PER_SEC, unit, Algorithm::Exact, None).unwrap()
    }

    #[test]
    fn a_cost_that_never_passes_names_the_limit_and_what_it_admits() {
        let err = never("acquire", Cost::request(12_000), &limit(10_000.0, Unit::Tokens), 10_000, "");
        assert_eq!(
            err.to_string(),
            "acquire: a request of 12000 tokens exceeds what '10000 tokens per minute' can ever admit (10000 tokens \
             at once), so it never passes"
        );
        assert!(matches!(err, Error::RateLimited { retry_after_ns: None, .. }));
    }

    #[test]
    fn a_budget_that_can_never_pass_is_worded_as_crossing_it() {
        let err = never("acquire", Cost::priced(1_000_000, 8.0), &limit(1.0, Unit::Usd), 1_000_000, "");
        assert_eq!(err.to_string(), "acquire: a request costing $8.000000 would cross the budget '1 usd per minute'; it was not sent");
    }

    #[test]
    fn a_wait_too_long_says_how_long_and_for_what() {
        let err = too_long("acquire", Cost::request(0), "10 requests per second".into(), NS_PER_SEC / 4, 0.0);
        assert_eq!(err.to_string(), "acquire: a request would wait 0.250s for '10 requests per second'");
        assert!(matches!(err, Error::RateLimited { retry_after_ns: Some(250_000_000), .. }));
    }
}
