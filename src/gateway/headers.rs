//! Rate-limit headers in OpenAI's formats: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`,
//! resets as Go-style durations ("450ms", "7.5s", "6m0s"), and `retry-after` (whole seconds) with
//! `retry-after-ms`, both rounded up so a client that waits that long is never early.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use super::limits::{Headroom, RateStatus};

const NS_PER_MS: u64 = 1_000_000;

/// A duration the way OpenAI writes `x-ratelimit-reset-*`, rounded up to the millisecond.
pub fn format_reset(ns: u64) -> String {
    let ms = ns.div_ceil(NS_PER_MS);
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let (hours, minutes, ms_in_minute) = (ms / 3_600_000, ms / 60_000 % 60, ms % 60_000);
    let seconds = format!("{}.{:03}", ms_in_minute / 1_000, ms_in_minute % 1_000);
    let seconds = seconds.trim_end_matches('0').trim_end_matches('.');
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m{seconds}s"),
        _ => format!("{hours}h{minutes}m{seconds}s"),
    }
}

fn number(value: u64) -> HeaderValue {
    HeaderValue::from(value)
}

fn text(value: String) -> HeaderValue {
    HeaderValue::try_from(value).expect("durations are ASCII")
}

fn insert_headroom(headers: &mut HeaderMap, names: [&'static str; 3], headroom: &Headroom) {
    let [limit, remaining, reset] = names.map(HeaderName::from_static);
    headers.insert(limit, number(headroom.spec.max));
    headers.insert(remaining, number(headroom.remaining));
    headers.insert(reset, text(format_reset(headroom.reset_ns)));
}

/// The `x-ratelimit-*` headers for the limits a key has; none for a unit without a limit.
pub fn insert_rate_limits(headers: &mut HeaderMap, status: &RateStatus) {
    if let Some(requests) = &status.requests {
        let names =
            ["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"];
        insert_headroom(headers, names, requests);
    }
    if let Some(tokens) = &status.tokens {
        let names = ["x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"];
        insert_headroom(headers, names, tokens);
    }
}

pub fn insert_retry_after(headers: &mut HeaderMap, ns: u64) {
    let ms = ns.div_ceil(NS_PER_MS).max(1);
    headers.insert(HeaderName::from_static("retry-after"), number(ms.div_ceil(1_000)));
    headers.insert(HeaderName::from_static("retry-after-ms"), number(ms));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::limits::{LimitSpec, Period, Unit};

    const MS: u64 = NS_PER_MS;

    #[test]
    fn resets_read_like_openai_durations() {
        assert_eq!(format_reset(0), "0s");
        assert_eq!(format_reset(1), "1ms");
        assert_eq!(format_reset(450 * MS), "450ms");
        assert_eq!(format_reset(1_000 * MS), "1s");
        assert_eq!(format_reset(7_500 * MS), "7.5s");
        assert_eq!(format_reset(7_660 * MS + 1), "7.661s");
        assert_eq!(format_reset(360_000 * MS), "6m0s");
        assert_eq!(format_reset(3_725_250 * MS), "1h2m5.25s");
    }

    #[test]
    fn retry_after_rounds_up_in_both_units() {
        let mut headers = HeaderMap::new();
        insert_retry_after(&mut headers, 1_200 * MS + 1);
        assert_eq!(headers["retry-after"], "2");
        assert_eq!(headers["retry-after-ms"], "1201");
        insert_retry_after(&mut headers, 0);
        assert_eq!((&headers["retry-after"], &headers["retry-after-ms"]), (&number(1), &number(1)));
    }

    #[test]
    fn only_limited_units_get_headers() {
        let spec = LimitSpec { unit: Unit::Tokens, period: Period::Minute, max: 1000 };
        let status = RateStatus {
            requests: None,
            tokens: Some(Headroom { spec, remaining: 900, reset_ns: 2_000 * MS }),
        };
        let mut headers = HeaderMap::new();
        insert_rate_limits(&mut headers, &status);
        assert_eq!(headers.len(), 3);
        assert_eq!(headers["x-ratelimit-remaining-tokens"], "900");
        assert_eq!(headers["x-ratelimit-reset-tokens"], "2s");
    }
}
