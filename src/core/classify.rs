//! The one table of what a failure means: whether it is retried, what it means to a circuit breaker,
//! and whether another model (a fallback) should be asked once the retries have run out.
//!
//! The Python layer reads a failure into a [`Failure`] (status code, `x-should-retry`, the error code of
//! the body) once, when it happens, and the failure carries the [`Verdict`]; the retry policy, the
//! breaker and the fallback read it, none decides again. Retried: 408, 409, 429 and every 5xx, timeouts
//! and broken connections. Never: other 4xx, a 429 whose code is `insufficient_quota` (out of credit, so
//! retrying only burns time), the caller's own bugs, and cancellation. `x-should-retry: true|false`
//! overrides the status for retrying, as the server knows best, but not what the answer says about the
//! server: a 503 it asks not to retry still counts against the breaker.

/// What went wrong, as far as retrying and breaking care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure<'a> {
    /// The server answered with an error status.
    Status { code: u16, should_retry: Option<&'a str>, error_code: Option<&'a str> },
    /// No answer in time.
    Timeout,
    /// The connection failed, was refused or was reset.
    Connection,
    /// A bug on the caller's side (a `TypeError` and friends), or a refusal by holysheep itself.
    Caller,
    /// The caller cancelled or interrupted the call.
    Cancelled,
    /// Anything else raised by the wrapped code.
    Unknown,
}

/// What a failure means to a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerOutcome {
    /// The service is unwell: counts towards opening.
    Failure,
    /// The service answered (even if it said no): resets the failure streak.
    Success,
    /// Says nothing about the service: the call's slot is just given back.
    Neutral,
}

/// The table's answer for one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Another attempt at the same request may pass.
    pub retry: bool,
    /// What the failure says about the service.
    pub breaker: BreakerOutcome,
    /// Another model may answer where this one failed: the model's service was unwell or busy, the
    /// request itself was not at fault.
    pub fallback: bool,
}

/// The table.
pub fn classify(failure: Failure<'_>) -> Verdict {
    use BreakerOutcome::{Failure as Trips, Neutral, Success as Answered};
    match failure {
        Failure::Status { code, should_retry, error_code } => {
            let breaker = if code >= 500 || code == 408 { Trips } else { Answered };
            let by_status = match code {
                429 => error_code != Some("insufficient_quota"),
                408 | 409 => true,
                500..=599 => true,
                _ => false,
            };
            let retry = match should_retry.map(|v| v.trim().to_ascii_lowercase()) {
                Some(v) if v == "true" => true,
                Some(v) if v == "false" => false,
                _ => by_status,
            };
            Verdict { retry, breaker, fallback: retry || breaker == Trips }
        }
        Failure::Timeout | Failure::Connection => Verdict { retry: true, breaker: Trips, fallback: true },
        Failure::Caller | Failure::Cancelled => Verdict { retry: false, breaker: Neutral, fallback: false },
        Failure::Unknown => Verdict { retry: false, breaker: Trips, fallback: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Failure<'static> {
        Failure::Status { code, should_retry: None, error_code: None }
    }

    #[test]
    fn transient_statuses_are_retried() {
        for code in [408, 409, 429, 500, 502, 503, 504, 520, 599] {
            assert!(classify(status(code)).retry, "{code}");
        }
    }

    #[test]
    fn client_errors_are_never_retried() {
        for code in [400, 401, 403, 404, 422] {
            assert!(!classify(status(code)).retry, "{code}");
        }
    }

    #[test]
    fn insufficient_quota_429_is_not_retried() {
        let out_of_credit = Failure::Status { code: 429, should_retry: None, error_code: Some("insufficient_quota") };
        assert!(!classify(out_of_credit).retry);
        let rate_limited = Failure::Status { code: 429, should_retry: None, error_code: Some("rate_limit_exceeded") };
        assert!(classify(rate_limited).retry);
    }

    #[test]
    fn x_should_retry_overrides_the_status() {
        let no = Failure::Status { code: 503, should_retry: Some("false"), error_code: None };
        assert!(!classify(no).retry);
        let yes = Failure::Status { code: 400, should_retry: Some(" TRUE "), error_code: None };
        assert!(classify(yes).retry);
        let unreadable = Failure::Status { code: 503, should_retry: Some("maybe"), error_code: None };
        assert!(classify(unreadable).retry);
    }

    #[test]
    fn only_server_trouble_counts_against_the_breaker() {
        assert_eq!(classify(status(503)).breaker, BreakerOutcome::Failure);
        assert_eq!(classify(status(408)).breaker, BreakerOutcome::Failure);
        assert_eq!(classify(status(429)).breaker, BreakerOutcome::Success);
        assert_eq!(classify(status(404)).breaker, BreakerOutcome::Success);
        assert_eq!(classify(Failure::Timeout).breaker, BreakerOutcome::Failure);
        assert_eq!(classify(Failure::Connection).breaker, BreakerOutcome::Failure);
        assert_eq!(classify(Failure::Unknown).breaker, BreakerOutcome::Failure);
        assert_eq!(classify(Failure::Caller).breaker, BreakerOutcome::Neutral);
    }

    #[test]
    fn a_server_asking_not_to_be_retried_still_counts_against_the_breaker() {
        let no = Failure::Status { code: 503, should_retry: Some("false"), error_code: None };
        assert_eq!(classify(no), Verdict { retry: false, breaker: BreakerOutcome::Failure, fallback: true });
        let timed_out = Failure::Status { code: 408, should_retry: Some("false"), error_code: None };
        assert_eq!(classify(timed_out).breaker, BreakerOutcome::Failure);
    }

    #[test]
    fn another_model_is_asked_only_where_the_model_not_the_request_failed() {
        for code in [408, 409, 429, 500, 503] {
            assert!(classify(status(code)).fallback, "{code}");
        }
        for code in [400, 401, 403, 404, 422] {
            assert!(!classify(status(code)).fallback, "{code}");
        }
        let out_of_credit = Failure::Status { code: 429, should_retry: None, error_code: Some("insufficient_quota") };
        assert!(!classify(out_of_credit).fallback);
        assert!(classify(Failure::Timeout).fallback && classify(Failure::Connection).fallback);
        assert!(!classify(Failure::Caller).fallback && !classify(Failure::Unknown).fallback);
    }

    #[test]
    fn cancellation_is_never_retried_and_neutral() {
        let verdict = Verdict { retry: false, breaker: BreakerOutcome::Neutral, fallback: false };
        assert_eq!(classify(Failure::Cancelled), verdict);
    }
}
