//! How long a server asks us to wait, read from its response headers in every form seen in the wild.
//!
//! Sources, first usable one wins: `retry-after-ms` (float milliseconds, OpenAI's), `retry-after` (delta
//! seconds, integer or decimal, or an HTTP-date), then `x-ratelimit-reset-requests` / `-tokens` (Go-style
//! durations such as `6m0s` or `1h2m3.5s`). Every parser returns `None` for anything it cannot read, never
//! panics, and saturates instead of overflowing, so garbage falls back to the caller's own backoff.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::core::clock::NS_PER_SEC;

const NS_PER_MS: f64 = 1_000_000.0;

/// `retry-after-ms`: a non-negative number of milliseconds, possibly fractional.
pub fn parse_retry_after_ms(value: &str) -> Option<u64> {
    let ms = parse_non_negative(value)?;
    Some(saturating_ns(ms * NS_PER_MS))
}

/// `retry-after`: delta-seconds (`120`, `1.5`) or an HTTP-date; a date in the past means "now" (0).
pub fn parse_retry_after(value: &str, now_unix_ns: u64) -> Option<u64> {
    if let Some(secs) = parse_non_negative(value) {
        return Some(saturating_ns(secs * NS_PER_SEC as f64));
    }
    let at = httpdate::parse_http_date(value.trim()).ok()?;
    let at_unix_ns = at.duration_since(UNIX_EPOCH).ok()?.as_nanos();
    Some(u64::try_from(at_unix_ns.saturating_sub(u128::from(now_unix_ns))).unwrap_or(u64::MAX))
}

/// A Go-style duration as in `x-ratelimit-reset-*`: one or more `<number><unit>` parts (`h`, `m`, `s`,
/// `ms`, `us`, `µs`, `ns`), e.g. `20ms`, `6m0s`, `1h2m3.5s`; a bare number is seconds.
pub fn parse_duration(value: &str) -> Option<u64> {
    let value = value.trim();
    if let Some(secs) = parse_non_negative(value) {
        return Some(saturating_ns(secs * NS_PER_SEC as f64));
    }
    let mut rest = value;
    let mut total_ns = 0.0_f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let ns_per_unit = match &rest[..unit_len] {
            "h" => 3600.0 * NS_PER_SEC as f64,
            "m" => 60.0 * NS_PER_SEC as f64,
            "s" => NS_PER_SEC as f64,
            "ms" => NS_PER_MS,
            "us" | "µs" => 1_000.0,
            "ns" => 1.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total_ns += number * ns_per_unit;
    }
    Some(saturating_ns(total_ns))
}

/// `x-ratelimit-remaining-*` and `x-ratelimit-reset-*`, of requests then tokens (the order of
/// [`FOLLOWED`](crate::core::feedback::FOLLOWED)).
const REMAINING: [&str; 2] = ["x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"];
const RESET: [&str; 2] = ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"];

/// What an answer says the server has left of requests and of tokens (`x-ratelimit-remaining-*`),
/// each with the time until that window is whole again (`x-ratelimit-reset-*`) when given readably;
/// `None` for a unit it says nothing readable of. Names compared case-insensitively, values as sent.
pub fn server_left<'a>(headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> [Option<(u64, Option<u64>)>; 2] {
    let (mut remaining, mut reset_ns) = ([None; 2], [None; 2]);
    for (name, value) in headers {
        let value = std::str::from_utf8(value).ok();
        for unit in 0..2 {
            if name.eq_ignore_ascii_case(REMAINING[unit].as_bytes()) {
                remaining[unit] = value.and_then(parse_remaining);
            } else if name.eq_ignore_ascii_case(RESET[unit].as_bytes()) {
                reset_ns[unit] = value.and_then(parse_duration);
            }
        }
    }
    [0, 1].map(|unit| remaining[unit].map(|left| (left, reset_ns[unit])))
}

/// The delay a response asks for, from all its headers (names compared case-insensitively).
///
/// A reset duration counts only for a quota that is spent (its `x-ratelimit-remaining-*` is 0) or whose
/// remaining count is not given; of those, the longest wins, since both must have room again.
pub fn server_delay<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>, now_unix_ns: u64) -> Option<u64> {
    let mut found = RateLimitHeaders::default();
    for (name, value) in headers {
        let name = name.trim();
        // Compared in place: lower-casing each name would allocate for every header of the response.
        let slot = if name.eq_ignore_ascii_case("retry-after-ms") {
            &mut found.retry_after_ms
        } else if name.eq_ignore_ascii_case("retry-after") {
            &mut found.retry_after
        } else if name.eq_ignore_ascii_case(RESET[0]) {
            &mut found.reset_requests
        } else if name.eq_ignore_ascii_case(RESET[1]) {
            &mut found.reset_tokens
        } else if name.eq_ignore_ascii_case(REMAINING[0]) {
            &mut found.remaining_requests
        } else if name.eq_ignore_ascii_case(REMAINING[1]) {
            &mut found.remaining_tokens
        } else {
            continue;
        };
        *slot = Some(value);
    }
    found.delay(now_unix_ns)
}

/// Like [`server_delay`], with the wall clock read now (HTTP-dates are wall-clock times).
pub fn server_delay_now<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<u64> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    server_delay(headers, u64::try_from(now).unwrap_or(u64::MAX))
}

#[derive(Default)]
struct RateLimitHeaders<'a> {
    retry_after_ms: Option<&'a str>,
    retry_after: Option<&'a str>,
    reset_requests: Option<&'a str>,
    reset_tokens: Option<&'a str>,
    remaining_requests: Option<&'a str>,
    remaining_tokens: Option<&'a str>,
}

impl RateLimitHeaders<'_> {
    fn delay(&self, now_unix_ns: u64) -> Option<u64> {
        if let Some(ns) = self.retry_after_ms.and_then(parse_retry_after_ms) {
            return Some(ns);
        }
        if let Some(ns) = self.retry_after.and_then(|v| parse_retry_after(v, now_unix_ns)) {
            return Some(ns);
        }
        let requests = Self::reset_if_spent(self.reset_requests, self.remaining_requests);
        let tokens = Self::reset_if_spent(self.reset_tokens, self.remaining_tokens);
        requests.max(tokens)
    }

    fn reset_if_spent(reset: Option<&str>, remaining: Option<&str>) -> Option<u64> {
        let spent = remaining.is_none_or(|r| parse_remaining(r) == Some(0));
        if spent { reset.and_then(parse_duration) } else { None }
    }
}

/// `x-ratelimit-remaining-*`: what a server says is left of a limit, in whole units (a fraction of one
/// unit left is none); `None` when it cannot be read.
fn parse_remaining(value: &str) -> Option<u64> {
    parse_non_negative(value).map(|units| units.floor() as u64)
}

/// A finite, non-negative decimal number; rejects `inf`, `NaN`, signs other than none and empty input.
fn parse_non_negative(value: &str) -> Option<f64> {
    let value = value.trim();
    // f64::from_str accepts "inf", "nan" and exponents; a header value is plain digits and at most one dot.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let number: f64 = value.parse().ok()?;
    number.is_finite().then_some(number)
}

fn saturating_ns(ns: f64) -> u64 {
    if ns >= u64::MAX as f64 { u64::MAX } else { ns.round() as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = NS_PER_SEC;
    // Sun, 06 Nov 1994 08:49:37 GMT, the RFC 9110 example.
    const EXAMPLE_DATE_UNIX_NS: u64 = 784_111_777 * SEC;

    #[test]
    fn retry_after_ms_reads_fractional_milliseconds() {
        assert_eq!(parse_retry_after_ms("1500"), Some(1_500_000_000));
        assert_eq!(parse_retry_after_ms(" 20.5 "), Some(20_500_000));
        assert_eq!(parse_retry_after_ms("-3"), None);
        assert_eq!(parse_retry_after_ms("NaN"), None);
    }

    #[test]
    fn retry_after_reads_integer_and_decimal_seconds() {
        assert_eq!(parse_retry_after("60", 0), Some(60 * SEC));
        assert_eq!(parse_retry_after("0.25", 0), Some(SEC / 4));
        assert_eq!(parse_retry_after("0", 0), Some(0));
    }

    #[test]
    fn retry_after_reads_all_three_http_date_forms() {
        let now = EXAMPLE_DATE_UNIX_NS - 30 * SEC;
        for date in ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            assert_eq!(parse_retry_after(date, now), Some(30 * SEC), "{date}");
        }
    }

    #[test]
    fn retry_after_date_in_the_past_means_now() {
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", EXAMPLE_DATE_UNIX_NS + SEC), Some(0));
    }

    #[test]
    fn retry_after_refuses_garbage_and_non_finite_numbers() {
        for value in ["", "soon", "-5", "inf", "NaN", "1e3", "+5", "Sun, 32 Nov 1994 08:49:37 GMT"] {
            assert_eq!(parse_retry_after(value, 0), None, "{value:?}");
        }
    }

    #[test]
    fn absurd_values_saturate_instead_of_overflowing() {
        assert_eq!(parse_retry_after("99999999999999999999999999", 0), Some(u64::MAX));
        assert_eq!(parse_duration("9999999999h"), Some(u64::MAX));
    }

    #[test]
    fn durations_read_go_style_parts() {
        assert_eq!(parse_duration("20ms"), Some(20_000_000));
        assert_eq!(parse_duration("1s"), Some(SEC));
        assert_eq!(parse_duration("6m0s"), Some(360 * SEC));
        assert_eq!(parse_duration("1h30m"), Some(5_400 * SEC));
        assert_eq!(parse_duration("1h2m3.5s"), Some(3_723_500_000_000));
        assert_eq!(parse_duration("250us"), Some(250_000));
        assert_eq!(parse_duration("250µs"), Some(250_000));
        assert_eq!(parse_duration("7ns"), Some(7));
        assert_eq!(parse_duration("2.5"), Some(2_500_000_000));
    }

    #[test]
    fn durations_refuse_unknown_units_and_missing_numbers() {
        for value in ["", "s", "5x", "1h-2m", "m5", "1..5s", "5 s", "1d"] {
            assert_eq!(parse_duration(value), None, "{value:?}");
        }
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after() {
        let headers = [("Retry-After", "60"), ("retry-after-ms", "1500")];
        assert_eq!(server_delay(headers, 0), Some(1_500_000_000));
    }

    #[test]
    fn garbage_retry_after_ms_falls_through_to_retry_after() {
        let headers = [("retry-after-ms", "later"), ("RETRY-AFTER", "2")];
        assert_eq!(server_delay(headers, 0), Some(2 * SEC));
    }

    #[test]
    fn reset_counts_only_for_a_spent_quota() {
        let headers = [
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-remaining-tokens", "1200"),
            ("x-ratelimit-reset-tokens", "1h"),
        ];
        assert_eq!(server_delay(headers, 0), Some(360 * SEC));
    }

    #[test]
    fn reset_without_remaining_takes_the_longest() {
        let headers = [("x-ratelimit-reset-requests", "1s"), ("x-ratelimit-reset-tokens", "20ms")];
        assert_eq!(server_delay(headers, 0), Some(SEC));
    }

    #[test]
    fn what_is_left_is_read_per_unit_with_its_reset() {
        let said: [(&[u8], &[u8]); 4] = [
            (b"X-RateLimit-Remaining-Requests", b"39"),
            (b"x-ratelimit-reset-requests", b"1m0s"),
            (b"x-ratelimit-remaining-tokens", b"\xff"),
            (b"x-ratelimit-reset-tokens", b"6s"),
        ];
        assert_eq!(server_left(said), [Some((39, Some(60 * NS_PER_SEC))), None]);
        assert_eq!(server_left([(&b"x-ratelimit-remaining-tokens"[..], &b"7"[..])]), [None, Some((7, None))]);
    }

    #[test]
    fn a_remaining_count_is_whole_units_or_nothing() {
        assert_eq!(parse_remaining(" 12 "), Some(12));
        assert_eq!(parse_remaining("0.5"), Some(0), "less than one unit left is none");
        for unreadable in ["", "many", "-1", "1e3", "inf", "NaN"] {
            assert_eq!(parse_remaining(unreadable), None, "{unreadable:?}");
        }
    }

    #[test]
    fn no_rate_limit_headers_means_no_server_delay() {
        assert_eq!(server_delay([("content-type", "application/json")], 0), None);
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_any_string(value in ".*", now in any::<u64>()) {
            let _ = parse_retry_after_ms(&value);
            let _ = parse_retry_after(&value, now);
            let _ = parse_duration(&value);
            let _ = server_delay([("retry-after", value.as_str()), ("x-ratelimit-reset-tokens", value.as_str())], now);
        }

        #[test]
        fn parsers_never_panic_on_header_like_strings(
            value in "[0-9.hmsunµ ,:-]{0,24}|[A-Za-z]{3}, [0-9]{1,2} [A-Za-z]{3} [0-9]{2,5} [0-9:]{1,8} GMT",
            now in any::<u64>(),
        ) {
            let _ = parse_retry_after(&value, now);
            let _ = parse_duration(&value);
        }

        #[test]
        fn whole_seconds_round_trip(secs in 0u64..10_000_000) {
            prop_assert_eq!(parse_retry_after(&secs.to_string(), 0), Some(secs * SEC));
        }
    }
}
