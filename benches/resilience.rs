//! The resilience core's decisions, one group per question: how long parsing a rate-limit header takes
//! (ns per header, each form), and what the breaker and the retry policy cost per call on their hot
//! paths. Time is the real monotonic clock, as in production; every group is `Throughput::Elements(1)`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use holysheep::core::breaker::{BreakerConfig, CircuitBreaker, RateRule};
use holysheep::core::outcomes::Span;
use holysheep::core::headers::{parse_duration, parse_retry_after, parse_retry_after_ms, server_delay};
use holysheep::core::retry::{RetryConfig, RetryPolicy};
use holysheep::core::{Clock, MonotonicClock};

const NOW_UNIX_NS: u64 = 1_764_000_000_000_000_000;

fn headers(c: &mut Criterion) {
    let mut group = c.benchmark_group("headers/parse");
    group.throughput(Throughput::Elements(1));
    for value in ["60", "1.5", "Wed, 25 Nov 2026 10:00:00 GMT", "soon"] {
        group.bench_with_input(BenchmarkId::new("retry-after", value), value, |b, v| {
            b.iter(|| parse_retry_after(black_box(v), NOW_UNIX_NS))
        });
    }
    group.bench_function("retry-after-ms/1500", |b| b.iter(|| parse_retry_after_ms(black_box("1500"))));
    for value in ["20ms", "6m0s", "1h2m3.5s"] {
        group.bench_with_input(BenchmarkId::new("x-ratelimit-reset", value), value, |b, v| {
            b.iter(|| parse_duration(black_box(v)))
        });
    }
    group.finish();

    // A 429 as OpenAI-compatible gateways send it: the delay is found among ten headers.
    let response = [
        ("date", "Wed, 25 Nov 2026 10:00:00 GMT"),
        ("content-type", "application/json"),
        ("content-length", "212"),
        ("x-request-id", "req_8c1f0e2b6d"),
        ("x-ratelimit-limit-requests", "500"),
        ("x-ratelimit-limit-tokens", "100000"),
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-remaining-tokens", "74000"),
        ("x-ratelimit-reset-requests", "6m0s"),
        ("x-ratelimit-reset-tokens", "1h2m3.5s"),
    ];
    let mut group = c.benchmark_group("headers/server_delay");
    group.throughput(Throughput::Elements(1));
    group.bench_function("429 with 10 headers, no retry-after", |b| {
        b.iter(|| server_delay(black_box(response), NOW_UNIX_NS))
    });
    group.finish();
}

fn breaker(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker");
    group.throughput(Throughput::Elements(1));
    let closed = CircuitBreaker::new(BreakerConfig::default(), MonotonicClock::new()).unwrap();
    group.bench_function("closed: allow + record_success", |b| {
        b.iter(|| {
            let permit = closed.allow().unwrap();
            closed.record_success(black_box(permit))
        })
    });
    let rated = BreakerConfig {
        failure_threshold: None,
        failure_rate: Some(RateRule { threshold: 0.5, span: Span::Calls(100), minimum_calls: 20 }),
        ..BreakerConfig::default()
    };
    let rated = CircuitBreaker::new(rated, MonotonicClock::new()).unwrap();
    group.bench_function("closed, failure rate over 100 calls: allow + record_success", |b| {
        b.iter(|| {
            let permit = rated.allow().unwrap();
            rated.record_success(black_box(permit))
        })
    });
    let open = CircuitBreaker::new(BreakerConfig { failure_threshold: Some(1), ..BreakerConfig::default() }, MonotonicClock::new())
        .unwrap();
    open.record_failure(open.allow().unwrap(), None);
    group.bench_function("open: allow refused", |b| b.iter(|| black_box(open.allow()).is_err()));
    group.finish();
}

fn retry(c: &mut Criterion) {
    let mut group = c.benchmark_group("retry");
    group.throughput(Throughput::Elements(1));
    let plain = RetryPolicy::new(RetryConfig::default(), MonotonicClock::new()).unwrap();
    let budgeted =
        RetryPolicy::new(RetryConfig { retry_budget: Some(0.1), ..RetryConfig::default() }, MonotonicClock::new())
            .unwrap();
    group.bench_function("begin (with retry budget)", |b| b.iter(|| budgeted.begin()));
    let started = MonotonicClock::new().now_ns();
    group.bench_function("decide (full jitter)", |b| {
        b.iter(|| plain.decide_randomly(black_box(2), started, 1_000_000_000, None))
    });
    group.bench_function("decide (server delay)", |b| {
        b.iter(|| plain.decide_randomly(black_box(2), started, 1_000_000_000, Some(60_000_000_000)))
    });
    group.finish();
}

criterion_group!(benches, headers, breaker, retry);
criterion_main!(benches);
