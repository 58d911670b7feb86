//! The limiter's waiting line driven from tokio: the same sans-IO line (`core::line`) the asyncio and
//! thread drivers drive. A waiter polls its ticket, sleeps until the instant it is told, or parks until
//! it is woken; a waiter dropped while in line (its job cancelled) leaves it, giving back what it held.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::core::limiter::{Next, Wake};
use crate::core::line::{Ticket, timer_leg_ns};
use crate::core::{Admission, Cost, Limiter, Result};

/// Wakes a parked tokio waiter; a wake before it parks is kept, so none is lost.
#[derive(Default)]
struct Waker(Notify);

impl Wake for Waker {
    fn wake(&self) {
        self.0.notify_one();
    }
}

/// Leaves the line when dropped while still in it.
struct InLine<'a> {
    limiter: &'a Limiter,
    ticket: Option<Ticket>,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.limiter.leave(ticket);
        }
    }
}

/// Admits `cost`: at once when the limiter is free, else after waiting in its line. `Err` when the
/// cost can never pass or a budget limit would be crossed.
pub async fn admit(limiter: &Limiter, cost: Cost) -> Result<Admission> {
    if let Some(admission) = limiter.try_reserve(cost)? {
        return Ok(admission);
    }
    let waker = Arc::new(Waker::default());
    let ticket = limiter.enqueue(cost, 0, None, waker.clone());
    let mut in_line = InLine { limiter, ticket: Some(ticket) };
    loop {
        let next = limiter.poll(ticket);
        if !matches!(next, Ok(Next::SleepUntil(_) | Next::Parked(_))) {
            // Admitted or refused: out of the line either way.
            in_line.ticket = None;
        }
        match next? {
            Next::Ready(admission) => return Ok(admission),
            Next::SleepUntil(at) => {
                let left = at.saturating_sub(limiter.now_ns());
                tokio::time::sleep(Duration::from_nanos(timer_leg_ns(left))).await;
            }
            Next::Parked(_) => waker.0.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::NS_PER_SEC;
    use crate::core::{Algorithm, Limit, Unit};
    use std::time::Instant;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
    }

    #[test]
    fn waiters_are_admitted_in_turn_at_the_limiters_pace() {
        let limit = Limit::new(5.0, NS_PER_SEC / 10, Unit::Requests, Algorithm::Exact, None).unwrap();
        let limiter = Arc::new(Limiter::new(vec![limit], Some(2), Default::default()).unwrap());
        let started = Instant::now();
        runtime().block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..12 {
                let limiter = Arc::clone(&limiter);
                tasks.push(tokio::spawn(async move {
                    admit(&limiter, Cost::request(0)).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    limiter.release().unwrap();
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
        });
        // 12 at 5 per 0.1 s: the last two go in the third window, after 0.2 s.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        assert_eq!(limiter.snapshot().counts.admitted, 12);
        assert_eq!(limiter.snapshot().counts.in_flight, 0);
    }

    #[test]
    fn a_waiter_dropped_in_line_gives_back_its_slot() {
        let limiter = Limiter::new(vec![], Some(1), Default::default()).unwrap();
        runtime().block_on(async {
            admit(&limiter, Cost::request(0)).await.unwrap();
            let waiting = tokio::time::timeout(Duration::from_millis(20), admit(&limiter, Cost::request(0))).await;
            assert!(waiting.is_err(), "no slot free");
            limiter.release().unwrap();
            admit(&limiter, Cost::request(0)).await.unwrap();
        });
        assert_eq!(limiter.snapshot().counts.waiting, 0);
    }
}
