//! The fleet breaker against a real redis-server (skipped, saying why, when redis-server is not
//! installed; `make test` installs it).

use std::sync::{Arc, Barrier};
use std::time::Duration;

use redis::Value;

use super::{FleetBreaker, REREAD_FIRST_NS, Refusal};
use crate::backend::redis::server_tests::{Server, Stalled, admin, start_server};
use crate::backend::redis::shared::OnError;
use crate::backend::redis::tcp_connection::SPIN;
use crate::backend::redis::{Backend, Timeouts};
use crate::core::breaker::{BreakerConfig, State, Transition};
use crate::core::error::Error;

fn breaker(server: &Server, key: &str) -> FleetBreaker {
    let timeouts = Timeouts { connect: Duration::from_secs(1), command: Duration::from_secs(1), spin: SPIN };
    let backend = Backend::new(&server.url, "test", timeouts, None, false).unwrap();
    let config = BreakerConfig { failure_threshold: Some(1), ..BreakerConfig::default() };
    // fail_closed: an error reaching the breaker would reach its caller.
    FleetBreaker::new(backend, key, config, OnError::FailClosed).unwrap()
}

/// A connection of the test's own, beside the breaker's.
fn flush_functions(server: &Server) {
    redis::cmd("FUNCTION").arg("FLUSH").exec(&mut admin(server)).unwrap();
}

/// The names of the functions on the server.
fn functions(server: &Server) -> Vec<String> {
    fn strings(value: &Value, into: &mut Vec<String>) {
        match value {
            Value::BulkString(bytes) => into.push(String::from_utf8_lossy(bytes).into_owned()),
            Value::SimpleString(text) => into.push(text.clone()),
            Value::Array(items) | Value::Set(items) => items.iter().for_each(|item| strings(item, into)),
            Value::Map(pairs) => pairs.iter().for_each(|(key, value)| {
                strings(key, into);
                strings(value, into);
            }),
            _ => {}
        }
    }
    let mut names = Vec::new();
    strings(&redis::cmd("FUNCTION").arg("LIST").query::<Value>(&mut admin(server)).unwrap(), &mut names);
    names
}

/// How many scripts and functions Redis ran since its statistics were reset.
fn script_runs(server: &Server) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut admin(server)).unwrap();
    info.lines()
        .filter(|line| line.starts_with("cmdstat_fcall:") || line.starts_with("cmdstat_evalsha:"))
        .filter_map(|line| line.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum()
}

fn refused_open(refused: Result<crate::core::breaker::Permit, Refusal>) -> bool {
    matches!(refused, Err(Refusal::Open(Error::CircuitOpen { .. })))
}

// Issue 19: the breaker's script is a function of the one library, which a server that lost it
// (FUNCTION FLUSH, a restart without data) gets again without an error reaching the caller.
#[test]
fn the_breakers_function_is_in_the_library_and_loaded_again_after_a_flush_without_an_error() {
    let Some(server) = start_server() else { return };
    let fleet = breaker(&server, "flushed");
    fleet.sync().expect("read on a fresh server");
    let listed = || functions(&server).iter().any(|name| name.starts_with("holysheep_") && name.ends_with("_breaker"));
    assert!(listed(), "the breaker's function is listed: {:?}", functions(&server));

    flush_functions(&server);
    assert_eq!(fleet.isolate().expect("isolated after a flush"), Some(Transition { from: State::Closed, to: State::Open }));
    flush_functions(&server);
    assert_eq!(fleet.reset().expect("reset after a flush"), Some(Transition { from: State::Open, to: State::Closed }));

    // A failure is reported on the runtime (the asynchronous call); the next decision waits for it.
    flush_functions(&server);
    let permit = fleet.allow().expect("closed");
    fleet.record_failure(permit, None);
    assert!(refused_open(fleet.allow()), "the failure reached Redis and opened the breaker");
    assert!(!fleet.degraded(), "no error reached the breaker");
    assert!(listed(), "the breaker's function is back");
}

// Issue 19: a burst of threads after a quiet spell re-read the fleet's state once, not once each: 16
// round trips to Redis where one tells them all the same. Redis is held still while they decide, so
// every thread comes while the re-read is under way.
#[test]
fn threads_deciding_together_after_a_quiet_spell_share_one_reread() {
    const THREADS: usize = 16;
    let Some(server) = start_server() else { return };
    let fleet = breaker(&server, "burst");
    fleet.sync().unwrap();
    std::thread::sleep(Duration::from_nanos(REREAD_FIRST_NS) + Duration::from_millis(20));
    redis::cmd("CONFIG").arg("RESETSTAT").exec(&mut admin(&server)).unwrap();

    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (fleet, barrier) = (fleet.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                let permit = fleet.allow().expect("closed");
                fleet.record_success(permit);
            })
        })
        .collect();
    {
        let _stalled = Stalled::new(&server);
        barrier.wait();
        std::thread::sleep(Duration::from_millis(300));
    }
    threads.into_iter().for_each(|thread| thread.join().unwrap());

    // One; two if a thread was held up past the background re-read's interval.
    let runs = script_runs(&server);
    assert!((1..=2).contains(&runs), "{THREADS} threads made {runs} calls to Redis, not one for all");
}
