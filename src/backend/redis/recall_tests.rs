//! A limit whose state Redis lost (a restart without persistence, a failover to a replica behind, a
//! flush) against a real redis-server (see server_tests.rs): what its clients recall of the windows
//! from their last answers is counted again, so the window after the loss does not start empty.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::redis::limiter::Place;
use crate::backend::redis::server_tests::{Server, admitted, limit, limiter, start_server};
use crate::backend::redis::{Mode, Outcome, RemoteLimiter};
use crate::core::limit::{Algorithm, Cost, Unit};

fn now(lim: &Arc<RemoteLimiter>) -> Outcome {
    taking(lim, 0)
}

/// A request estimated at `tokens` tokens, decided now.
fn taking(lim: &Arc<RemoteLimiter>, tokens: u64) -> Outcome {
    lim.decide_blocking(Cost::request(tokens), 0.0, Mode::Now, false, &Place::newcomer(0), "try_acquire").map_err(|e| format!("{e:?}")).unwrap()
}

/// Two processes sharing 1,000 tokens per 2 s, an exact window.
fn two_sharing_tokens(server: &Server) -> (Arc<RemoteLimiter>, Arc<RemoteLimiter>) {
    let tokens = || vec![limit(1_000.0, 2_000, Unit::Tokens, Algorithm::Exact)];
    (limiter(server, tokens(), None, Duration::from_secs(5)), limiter(server, tokens(), None, Duration::from_secs(5)))
}

/// Redis loses everything it held: the limit's keys and the scripts, as a restart without persistence.
fn lose_everything(server: &Server) {
    let port = server.url.rsplit(':').next().unwrap().trim_end_matches("/0");
    for command in [["FLUSHALL"], ["FUNCTION FLUSH"]] {
        let args: Vec<&str> = command[0].split(' ').collect();
        let out = Command::new("redis-cli").args(["-p", port]).args(&args).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    }
}

// Issue 19: a restart without persistence used to start every window empty: a full window admitted
// its whole limit again at once.
#[test]
fn a_window_redis_lost_still_counts_what_its_client_recalls() {
    let Some(server) = start_server() else { return };
    let lim = limiter(&server, vec![limit(10.0, 2_000, Unit::Requests, Algorithm::Exact)], None, Duration::from_secs(5));
    for _ in 0..10 {
        admitted(now(&lim));
    }
    lose_everything(&server);
    assert!(matches!(now(&lim), Outcome::Later { .. }), "the 10 admitted before the loss still fill the window");
    assert!(matches!(now(&lim), Outcome::Later { .. }));
}

#[test]
fn a_client_that_recalls_more_adds_what_the_first_one_back_did_not_know() {
    let Some(server) = start_server() else { return };
    let limits = || vec![limit(10.0, 2_000, Unit::Requests, Algorithm::Exact)];
    let (first, second) = (limiter(&server, limits(), None, Duration::from_secs(5)), limiter(&server, limits(), None, Duration::from_secs(5)));
    for _ in 0..6 {
        admitted(now(&first));
    }
    for _ in 0..3 {
        admitted(now(&second));
    }
    lose_everything(&server);
    // The first recalls 6: one more fits. The second recalls 9: it adds its 3, and the window is full.
    admitted(now(&first));
    assert!(matches!(now(&second), Outcome::Later { .. }), "6 + 1 + the 3 only the second knew of");
    assert!(matches!(now(&first), Outcome::Later { .. }));
}

#[test]
fn a_gcra_window_redis_lost_keeps_the_backlog_its_client_recalls() {
    let Some(server) = start_server() else { return };
    let lim = limiter(&server, vec![limit(2.0, 1_000, Unit::Requests, Algorithm::Gcra)], None, Duration::from_secs(5));
    admitted(now(&lim));
    lose_everything(&server);
    assert!(matches!(now(&lim), Outcome::Later { .. }), "one every 0.5 s: the next is not due yet");
}

#[test]
fn a_late_correction_from_before_the_loss_leaves_an_admission_after_it_alone() {
    let Some(server) = start_server() else { return };
    let (before, after) = two_sharing_tokens(&server);
    let old = admitted(taking(&before, 600));
    lose_everything(&server);
    // The first decision after the loss is one that recalls nothing: the log starts again.
    admitted(taking(&after, 300));
    before.adjust_blocking(&old, Cost::request(600), Cost::request(0), false).unwrap();
    assert_eq!(after.peek_blocking(Cost::request(0)).unwrap().remaining, vec![700], "its receipt names no entry of the new log");
}

fn with_lease(lim: &Arc<RemoteLimiter>) -> Outcome {
    lim.decide_blocking(Cost::request(0), 0.0, Mode::Now, true, &Place::newcomer(0), "try_acquire").map_err(|e| format!("{e:?}")).unwrap()
}

fn leases_in_redis(server: &Server, lim: &Arc<RemoteLimiter>) -> Vec<String> {
    let port = server.url.rsplit(':').next().unwrap().trim_end_matches("/0");
    let out = Command::new("redis-cli").args(["-p", port, "ZRANGE", &lim.keys()[1], "0", "-1"]).output().unwrap();
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).filter(|l| !l.is_empty()).collect();
    ids.sort();
    ids
}

// Issue 19: leases were lost with the state while their requests ran on, so a shared cap admitted
// that many more until the requests ended.
#[test]
fn leases_redis_lost_are_held_by_stand_ins_until_their_holders_put_them_back() {
    let Some(server) = start_server() else { return };
    let limits = || vec![limit(1_000.0, 1_000, Unit::Requests, Algorithm::Exact)];
    // Leases renewed every 200 ms.
    let ttl = Duration::from_millis(600);
    let (holder, other) = (limiter(&server, limits(), Some(2), ttl), limiter(&server, limits(), Some(2), ttl));
    let first = admitted(with_lease(&holder));
    let second = admitted(with_lease(&holder));
    assert!(matches!(with_lease(&other), Outcome::NoLease { .. }), "both slots are held");
    lose_everything(&server);
    assert!(matches!(with_lease(&other), Outcome::NoLease { .. }), "the two it saw held are held by stand-ins");
    // The holder's next renewals put its own leases back in place of the stand-ins, which would have
    // lasted no longer than a lease's TTL after the other's last answer.
    std::thread::sleep(ttl + Duration::from_millis(200));
    let mut held = vec![first.lease.clone().unwrap(), second.lease.clone().unwrap()];
    held.sort();
    assert_eq!(leases_in_redis(&server, &holder), held);
    assert!(matches!(with_lease(&other), Outcome::NoLease { .. }), "the holder's own leases hold both slots");
    holder.adjust_blocking(&first, Cost::request(0), Cost::request(0), true).unwrap();
    admitted(with_lease(&other));
}

// A settle that counts tokens into a window whose numbers Redis lost starts its log afresh, numbered
// from Redis's clock: a receipt from before the loss names none of its entries.
#[test]
fn a_late_correction_from_before_the_loss_leaves_what_a_settle_counted_after_it_alone() {
    let Some(server) = start_server() else { return };
    let (before, after) = two_sharing_tokens(&server);
    let old = admitted(taking(&before, 600));
    let unestimated = admitted(taking(&after, 0));
    lose_everything(&server);
    after.adjust_blocking(&unestimated, Cost::request(0), Cost::request(300), false).unwrap();
    before.adjust_blocking(&old, Cost::request(600), Cost::request(0), false).unwrap();
    assert_eq!(after.peek_blocking(Cost::request(0)).unwrap().remaining, vec![700], "the 300 settled after the loss still count");
}
