//! The one place a GCRA's state lives: its theoretical arrival time in an `AtomicU64`, updated by
//! compare-and-swap, so deciding never takes a lock.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::decision::Decision;
use crate::core::gcra::Gcra;

/// The TAT of one GCRA, in nanoseconds on the limiter's clock. Zero is "never used".
#[derive(Debug, Default)]
pub struct GcraCell {
    tat: AtomicU64,
}

impl GcraCell {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides a request of `cost` units at `now`, admitting it if it conforms by `latest`.
    /// On `Now` or `At`, the TAT counts it and the new TAT comes back as the receipt for
    /// [`GcraCell::give_back`]; on anything else the cell is unchanged.
    #[inline]
    pub fn decide(&self, gcra: &Gcra, cost: u64, now: u64, latest: u64) -> (Decision, u64) {
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let slot = match gcra.schedule(tat, cost, now) {
                Ok(slot) => slot,
                Err(never) => return (never.into(), tat),
            };
            let decision = Decision::for_instant(slot.at, now, latest);
            if !decision.is_admitted() {
                return (decision, tat);
            }
            match self.tat.compare_exchange_weak(tat, slot.tat, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return (decision, slot.tat),
                Err(current) => tat = current,
            }
        }
    }

    /// The TAT now.
    pub fn tat(&self) -> u64 {
        self.tat.load(Ordering::Acquire)
    }

    /// Counts `cost` more units from `now` (a settle that found the real cost higher than the
    /// estimate): see [`Gcra::charge`].
    pub fn charge(&self, gcra: &Gcra, cost: u64, now: u64) {
        let _ = self.tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| Some(gcra.charge(tat, cost, now)));
    }

    /// Counts a request of `cost` from `now`, when it really went, later than admitted: see
    /// [`Gcra::restamp`].
    pub fn restamp(&self, gcra: &Gcra, cost: u64, now: u64) {
        let _ = self.tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| Some(gcra.restamp(tat, cost, now)));
    }

    /// Gives back `cost` units admitted by the request that moved the TAT to `receipt`, but only while no
    /// later request has moved it since (see [`Gcra::give_back`]). Returns whether it gave back.
    pub fn give_back(&self, gcra: &Gcra, cost: u64, receipt: u64) -> bool {
        self.tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| gcra.give_back(tat, receipt, cost)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn refusal_leaves_the_cell_unchanged() {
        let gcra = Gcra::new(1, SEC, 1);
        let cell = GcraCell::new();
        assert_eq!(cell.decide(&gcra, 1, 0, 0).0, Decision::Now);
        let before = cell.tat();
        assert_eq!(cell.decide(&gcra, 1, 0, 0).0, Decision::NotBefore(SEC));
        assert_eq!(cell.tat(), before);
    }

    #[test]
    fn reservations_queue_in_order() {
        let gcra = Gcra::new(1, SEC, 1);
        let cell = GcraCell::new();
        assert_eq!(cell.decide(&gcra, 1, 0, u64::MAX).0, Decision::Now);
        assert_eq!(cell.decide(&gcra, 1, 0, u64::MAX).0, Decision::At(SEC));
        assert_eq!(cell.decide(&gcra, 1, 0, u64::MAX).0, Decision::At(2 * SEC));
    }

    #[test]
    fn only_the_latest_reservation_gives_back() {
        let gcra = Gcra::new(1, SEC, 1);
        let cell = GcraCell::new();
        cell.decide(&gcra, 1, 0, u64::MAX);
        cell.decide(&gcra, 1, 0, u64::MAX);
        let first_receipt = cell.tat();
        cell.decide(&gcra, 1, 0, u64::MAX);
        assert!(!cell.give_back(&gcra, 1, first_receipt));
        assert!(cell.give_back(&gcra, 1, cell.tat()));
        assert_eq!(cell.decide(&gcra, 1, 0, u64::MAX).0, Decision::At(2 * SEC));
    }

    #[test]
    fn charge_pushes_later_requests_back() {
        let gcra = Gcra::new(10, SEC, 10);
        let cell = GcraCell::new();
        assert_eq!(cell.decide(&gcra, 5, 0, 0).0, Decision::Now);
        cell.charge(&gcra, 5, 0);
        assert_eq!(cell.decide(&gcra, 1, 0, 0).0, Decision::NotBefore(SEC / 10));
    }

    #[test]
    fn threads_racing_never_admit_more_than_the_burst() {
        let gcra = Gcra::new(1, 3_600 * SEC, 1_000);
        let cell = Arc::new(GcraCell::new());
        let admitted: usize = (0..4)
            .map(|_| {
                let cell = Arc::clone(&cell);
                thread::spawn(move || (0..10_000).filter(|_| cell.decide(&gcra, 1, 0, 0).0.is_admitted()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(admitted, 1_000);
    }
}
