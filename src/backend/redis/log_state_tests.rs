//! The numbers the state hash keeps of each exact window's log (common.lua: units, sequence number,
//! length, oldest and newest entries) are what a decision reads instead of the log itself: they must
//! stay in step with the log through every admission, merge, expiry, correction and give-back.

use std::time::Duration;

use redis::Commands;

use crate::backend::redis::server_tests::{admitted, limit, limiter, start_server};
use crate::backend::redis::{Mode, Outcome, runtime};
use crate::backend::redis::limiter::Place;
use crate::backend::redis::windows::WindowSpec;
use crate::core::limit::{Algorithm, Cost, Unit};

/// A window's numbers as the hash holds them, packed little-endian.
fn numbers(packed: &[u8]) -> Vec<i64> {
    packed.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
}

/// What the log itself says: its entries' units, its length, its oldest and newest instants, the newest's units.
fn from_log(entries: &[String]) -> (i64, i64, i64, i64, i64) {
    let parsed: Vec<(i64, i64)> = entries
        .iter()
        .map(|e| {
            let (at, units) = e.split_once(':').unwrap();
            (at.parse().unwrap(), units.parse().unwrap())
        })
        .collect();
    let sum = parsed.iter().map(|(_, units)| units).sum();
    let (head, (last_at, last_units)) = match (parsed.first(), parsed.last()) {
        (Some(first), Some(last)) => (first.0, *last),
        _ => (0, (0, 0)),
    };
    (sum, parsed.len() as i64, head, last_at, last_units)
}

#[test]
fn a_windows_kept_numbers_match_its_log_through_random_admissions_corrections_and_expiries() {
    let Some(server) = start_server() else { return };
    // A 40 ms window of 5,000 tokens: entries closer than 39 us share one, and leave within the run.
    let tokens = limit(5_000.0, 40, Unit::Tokens, Algorithm::Exact);
    let lim = limiter(&server, vec![tokens], None, Duration::from_secs(5));
    let mut redis = redis::Client::open(server.url.as_str()).unwrap().get_connection().unwrap();
    let (state, log) = (lim.keys()[0].clone(), lim.keys()[6].clone());
    let field = WindowSpec::new(&tokens).id;
    let handle = runtime::handle().unwrap();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |below: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % below
    };
    let mut held = Vec::new();
    for step in 0..400 {
        match next(6) {
            0 | 1 => {
                let cost = Cost::request(next(400));
                let decided = handle.block_on(lim.decide(cost, 0.0, Mode::Now, false, &Place::newcomer(0), "acquire"));
                if let Ok(Outcome::Admitted(grant)) = decided {
                    held.push((admitted(Outcome::Admitted(grant)), cost));
                }
            }
            2 if !held.is_empty() => {
                // Settled: the real count is anywhere from none to twice the estimate.
                let (grant, counted) = held.swap_remove(next(held.len() as u64) as usize);
                let actual = Cost::request(next(2 * counted.tokens.max(1) + 1));
                lim.adjust_blocking(&grant, counted, actual, false).unwrap();
            }
            3 if !held.is_empty() => {
                let (grant, counted) = held.pop().unwrap();
                lim.adjust_blocking(&grant, counted, Cost::request(0), false).unwrap();
            }
            _ => std::thread::sleep(Duration::from_micros(next(8_000))),
        }
        let packed: Option<Vec<u8>> = redis.hget(&state, &field).unwrap();
        let entries: Vec<String> = redis.lrange(&log, 0, -1).unwrap();
        let Some(packed) = packed else {
            assert!(entries.is_empty(), "step {step}: a log without its numbers: {entries:?}");
            continue;
        };
        let kept = numbers(&packed);
        let (sum, length, head, last_at, last_units) = from_log(&entries);
        assert_eq!(
            (kept[0], kept[2], kept[3], kept[4], kept[5]),
            (sum, length, head, last_at, last_units),
            "step {step}: kept (units, length, oldest, newest, newest's units) against the log {entries:?}"
        );
    }
}
