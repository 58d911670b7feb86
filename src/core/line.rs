//! The waiting lines, as a sans-IO state machine: who waits for a concurrency slot and who for the rate,
//! in which order, and what a waiter holds when it gives up. No clock and no threads here: the caller
//! passes `now`, and the [`Gate`] the line decides through (a limiter's slots and rates); the drivers
//! (asyncio tasks, threads, tokio tasks) only sleep and wake.
//!
//! A waiter goes through three stages. It waits for a slot (in the slot line), then, holding one, for
//! its turn at the rate (in the rate line); the head of the rate line reserves an instant and sleeps
//! until it (one reservation at a time, so a waiter that gives up before its turn holds nothing and the
//! next one reserves right after it). Order in both lines: higher priority first, then arrival. A slot
//! returned while someone waits for one goes to the head of the slot line, never to a newcomer.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use crate::core::limit::Cost;
use crate::core::refusal::Awaited;

/// A wait this long or longer is slept in two legs: the first set short by `SLACK_SHARE` of it.
const ONE_LEG_NS: u64 = 50_000_000;
const SLACK_SHARE: f64 = 0.002;

/// How far ahead a driver sets its timer for a wait of `ns`: a timer on epoll (asyncio's) may fire
/// 0.1% late, 60 ms of a minute's window, so a long wait is set short of its end by more than that and
/// the waiter, polling again, sleeps the few ms left; a short one is set exactly.
pub fn timer_leg_ns(ns: u64) -> u64 {
    if ns < ONE_LEG_NS { ns } else { (ns as f64 * (1.0 - SLACK_SHARE)) as u64 }
}

/// A waiter's handle in its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(u64);

/// Where a waiter stands: higher priority first, then earlier arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    priority: Reverse<i64>,
    arrival: u64,
}

/// A rate reservation: the instant it may go, and what settles or gives it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved<R> {
    pub at_ns: u64,
    pub receipt: R,
}

/// What the line decides through: a limiter's concurrency slots and rate limits.
pub trait Gate {
    /// What a reservation keeps to be settled, moved or given back.
    type Receipt: Copy;
    /// Why a reservation was refused (a cost no limit can pass, a budget, a wait past the deadline).
    type Refusal;

    /// A slot now, if one is free; the line alone decides who asks.
    fn take_slot(&self) -> bool;
    /// Gives back the slot of a waiter that will not be admitted.
    fn return_slot(&self);
    /// The rate for `cost`: now or at a later instant, not after `latest`.
    fn reserve(&self, cost: Cost, now: u64, latest: u64) -> Result<Reserved<Self::Receipt>, Self::Refusal>;
    /// The instant a reservation really conforms, once earlier ones went out later than reckoned.
    fn confirm(&self, reserved: &Reserved<Self::Receipt>, cost: Cost) -> u64;
    /// Moves a reservation that went after its instant to `now`, when its waiter proceeds.
    fn stamp(&self, reserved: &Reserved<Self::Receipt>, cost: Cost, now: u64);
    /// Gives back a reservation that will not be used.
    fn give_back(&self, reserved: &Reserved<Self::Receipt>, cost: Cost);
    /// The refusal of a waiter whose deadline passed while it stood in line.
    fn timed_out(&self, what: Awaited) -> Self::Refusal;
}

#[derive(Debug, Clone, Copy)]
enum Stage<R> {
    /// In the slot line, holding nothing.
    Slot,
    /// Holding a slot, in the rate line.
    Rate,
    /// Holding a slot and the line's one reservation.
    Reserved(Reserved<R>),
}

struct Waiter<R, W> {
    place: Place,
    cost: Cost,
    /// When it came in line.
    entered_ns: u64,
    /// The instant past which it gives up; `u64::MAX` for never.
    deadline: u64,
    /// Whether the line handed it a slot, which goes back if it leaves.
    holds_slot: bool,
    stage: Stage<R>,
    waker: W,
}

/// What a waiter does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll<R> {
    /// Admitted: it holds its slot (if the limiter has slots) and this reservation, due now; it came
    /// in line at `entered_ns`.
    Ready { reserved: Reserved<R>, entered_ns: u64 },
    /// Sleep until this instant, then poll again.
    SleepUntil(u64),
    /// Wait to be woken, or until the deadline (`u64::MAX`: none), then poll again.
    Parked { deadline: u64 },
}

/// The waiters of one limiter; `W` wakes a parked one.
pub struct Line<R, W> {
    waiters: HashMap<u64, Waiter<R, W>>,
    slot_line: BTreeMap<Place, u64>,
    rate_line: BTreeMap<Place, u64>,
    /// The waiter holding the reservation, if any: the next one reserves once it is gone.
    reserving: Option<u64>,
    arrivals: u64,
}

impl<R, W> std::fmt::Debug for Line<R, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Line")
            .field("for_slots", &self.slot_line.len())
            .field("for_rate", &self.rate_line.len())
            .field("reserving", &self.reserving.is_some())
            .finish()
    }
}

impl<R, W> Default for Line<R, W> {
    fn default() -> Self {
        Self {
            waiters: HashMap::new(),
            slot_line: BTreeMap::new(),
            rate_line: BTreeMap::new(),
            reserving: None,
            arrivals: 0,
        }
    }
}

impl<R: Copy, W: Clone> Line<R, W> {
    /// Waiters in the line, in any stage.
    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    /// Waiters still waiting for a slot.
    pub fn waiting_for_slots(&self) -> usize {
        self.slot_line.len()
    }

    /// Puts a waiter in line: for a slot when `needs_slot`, else straight for the rate. Returns its
    /// ticket and the waiters to wake (it may have been served at once; poll it either way). Each
    /// argument is one fact of the waiter the line orders or serves it by.
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue(
        &mut self,
        gate: &impl Gate<Receipt = R>,
        cost: Cost,
        priority: i64,
        now: u64,
        deadline: u64,
        needs_slot: bool,
        waker: W,
    ) -> (Ticket, Vec<W>) {
        let id = self.arrivals;
        let place = Place { priority: Reverse(priority), arrival: id };
        self.arrivals += 1;
        let stage = if needs_slot { Stage::Slot } else { Stage::Rate };
        self.waiters.insert(id, Waiter { place, cost, entered_ns: now, deadline, holds_slot: false, stage, waker });
        if needs_slot {
            self.slot_line.insert(place, id);
        } else {
            self.rate_line.insert(place, id);
        }
        let mut moved = Vec::new();
        self.hand_out_slots(gate, &mut moved);
        moved.retain(|&other| other != id);
        (Ticket(id), self.wakers(moved))
    }

    /// The wakers of the waiters `ids`, all still in line.
    fn wakers(&self, ids: Vec<u64>) -> Vec<W> {
        ids.into_iter().map(|id| self.waiters[&id].waker.clone()).collect()
    }

    /// Moves the heads of the slot line to the rate line while slots are free.
    fn hand_out_slots(&mut self, gate: &impl Gate<Receipt = R>, wake: &mut Vec<u64>) {
        while let Some(entry) = self.slot_line.first_entry() {
            if !gate.take_slot() {
                return;
            }
            let (place, id) = entry.remove_entry();
            self.rate_line.insert(place, id);
            let waiter = self.waiters.get_mut(&id).expect("a waiter in a line is known");
            waiter.stage = Stage::Rate;
            waiter.holds_slot = true;
            wake.push(id);
        }
    }

    /// A slot returned while waiters may want it: the head of the slot line gets it first.
    pub fn slot_returned(&mut self, gate: &impl Gate<Receipt = R>) -> Vec<W> {
        let mut wake = Vec::new();
        self.hand_out_slots(gate, &mut wake);
        self.wakers(wake)
    }

    /// Where `ticket` stands at `now`: admitted, to sleep, or parked. A refusal (a cost that can never
    /// pass, a budget crossed, a wait past its deadline) takes it out of the line, returning what it
    /// held. Also returns the waiters to wake.
    pub fn poll<G: Gate<Receipt = R>>(
        &mut self,
        gate: &G,
        ticket: Ticket,
        now: u64,
    ) -> (Result<Poll<R>, G::Refusal>, Vec<W>) {
        let mut wake = Vec::new();
        let outcome = self.advance(gate, ticket.0, now, &mut wake);
        (outcome, self.wakers(wake))
    }

    fn advance<G: Gate<Receipt = R>>(
        &mut self,
        gate: &G,
        id: u64,
        now: u64,
        wake: &mut Vec<u64>,
    ) -> Result<Poll<R>, G::Refusal> {
        let waiter = self.waiters.get(&id).expect("a ticket is polled only while in line");
        let (cost, deadline) = (waiter.cost, waiter.deadline);
        match waiter.stage {
            Stage::Slot if now >= deadline => {
                self.remove(gate, id, wake);
                Err(gate.timed_out(Awaited::Slot))
            }
            Stage::Slot => Ok(Poll::Parked { deadline }),
            Stage::Rate if self.reserving.is_some() || self.rate_line.first_key_value().map(|(_, &head)| head) != Some(id) => {
                if now >= deadline {
                    self.remove(gate, id, wake);
                    return Err(gate.timed_out(Awaited::Rate));
                }
                Ok(Poll::Parked { deadline })
            }
            Stage::Rate => match gate.reserve(cost, now, deadline) {
                Ok(reserved) if reserved.at_ns <= now => Ok(self.admitted(id, reserved, wake)),
                Ok(reserved) => {
                    let place = self.waiters[&id].place;
                    self.rate_line.remove(&place);
                    self.reserving = Some(id);
                    self.waiters.get_mut(&id).expect("known").stage = Stage::Reserved(reserved);
                    Ok(Poll::SleepUntil(reserved.at_ns))
                }
                Err(refusal) => {
                    self.remove(gate, id, wake);
                    Err(refusal)
                }
            },
            Stage::Reserved(reserved) if now < reserved.at_ns => Ok(Poll::SleepUntil(reserved.at_ns)),
            Stage::Reserved(mut reserved) => {
                reserved.at_ns = gate.confirm(&reserved, cost);
                if reserved.at_ns > now {
                    self.waiters.get_mut(&id).expect("known").stage = Stage::Reserved(reserved);
                    return Ok(Poll::SleepUntil(reserved.at_ns));
                }
                gate.stamp(&reserved, cost, now);
                Ok(self.admitted(id, reserved, wake))
            }
        }
    }

    /// Takes an admitted waiter out; the next in the rate line may reserve.
    fn admitted(&mut self, id: u64, reserved: Reserved<R>, wake: &mut Vec<u64>) -> Poll<R> {
        let waiter = self.waiters.remove(&id).expect("known");
        self.rate_line.remove(&waiter.place);
        self.after_rate_turn(id, wake);
        Poll::Ready { reserved, entered_ns: waiter.entered_ns }
    }

    /// After `id` left the rate line or its reservation: wakes the new head if it may reserve now.
    fn after_rate_turn(&mut self, id: u64, wake: &mut Vec<u64>) {
        if self.reserving == Some(id) {
            self.reserving = None;
        }
        if self.reserving.is_none()
            && let Some((_, head)) = self.rate_line.first_key_value() {
                wake.push(*head);
            }
    }

    /// A waiter gives up (timed out or cancelled): whatever it held goes back, and those who move up
    /// are returned to be woken. A ticket no longer in line (admitted, refused) is ignored.
    pub fn leave(&mut self, gate: &impl Gate<Receipt = R>, ticket: Ticket) -> Vec<W> {
        let mut wake = Vec::new();
        if self.waiters.contains_key(&ticket.0) {
            self.remove(gate, ticket.0, &mut wake);
        }
        self.wakers(wake)
    }

    fn remove(&mut self, gate: &impl Gate<Receipt = R>, id: u64, wake: &mut Vec<u64>) {
        let waiter = self.waiters.remove(&id).expect("known");
        match waiter.stage {
            Stage::Slot => {
                self.slot_line.remove(&waiter.place);
                return;
            }
            Stage::Rate => {
                self.rate_line.remove(&waiter.place);
            }
            Stage::Reserved(reserved) => gate.give_back(&reserved, waiter.cost),
        }
        self.after_rate_turn(id, wake);
        if waiter.holds_slot {
            gate.return_slot();
            self.hand_out_slots(gate, wake);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;

    /// A gate with `slots` free slots and one admission per `spacing` ns, reserving in order.
    struct FakeGate {
        slots: Cell<u64>,
        spacing: u64,
        next_free: Cell<u64>,
        given_back: RefCell<Vec<u64>>,
        late_by: Cell<u64>,
    }

    impl FakeGate {
        fn new(slots: u64, spacing: u64) -> Self {
            Self { slots: Cell::new(slots), spacing, next_free: Cell::new(0), given_back: RefCell::default(), late_by: Cell::new(0) }
        }
    }

    #[derive(Debug, PartialEq)]
    enum Refused {
        TooLate,
        TimedOut(Awaited),
    }

    impl Gate for FakeGate {
        type Receipt = u64;
        type Refusal = Refused;

        fn take_slot(&self) -> bool {
            let free = self.slots.get();
            if free == 0 {
                return false;
            }
            self.slots.set(free - 1);
            true
        }

        fn return_slot(&self) {
            self.slots.set(self.slots.get() + 1);
        }

        fn reserve(&self, _cost: Cost, now: u64, latest: u64) -> Result<Reserved<u64>, Refused> {
            let at = self.next_free.get().max(now);
            if at > latest {
                return Err(Refused::TooLate);
            }
            self.next_free.set(at + self.spacing);
            Ok(Reserved { at_ns: at, receipt: at })
        }

        fn confirm(&self, reserved: &Reserved<u64>, _cost: Cost) -> u64 {
            reserved.at_ns + self.late_by.replace(0)
        }

        fn stamp(&self, _reserved: &Reserved<u64>, _cost: Cost, _now: u64) {}

        fn give_back(&self, reserved: &Reserved<u64>, _cost: Cost) {
            self.given_back.borrow_mut().push(reserved.receipt);
        }

        fn timed_out(&self, what: Awaited) -> Refused {
            Refused::TimedOut(what)
        }
    }

    const NEVER: u64 = u64::MAX;

    fn enqueue(line: &mut Line<u64, &'static str>, gate: &FakeGate, priority: i64, name: &'static str) -> (Ticket, Vec<&'static str>) {
        line.enqueue(gate, Cost::request(0), priority, 0, NEVER, true, name)
    }

    fn poll(line: &mut Line<u64, &'static str>, gate: &FakeGate, ticket: Ticket, now: u64) -> Result<Poll<u64>, Refused> {
        line.poll(gate, ticket, now).0
    }

    #[test]
    fn a_long_wait_is_timed_short_by_more_than_the_timers_slack_and_a_short_one_exactly() {
        let minute = 60_000_000_000;
        let first = timer_leg_ns(minute);
        assert!(first < minute - minute / 1_000, "{first}: epoll may be 0.1% late, 60 ms of a minute");
        assert!(first > minute - minute / 100, "{first}: then one short leg, not many");
        assert_eq!(timer_leg_ns(ONE_LEG_NS - 1), ONE_LEG_NS - 1);
    }

    #[test]
    fn a_waiter_with_a_free_slot_and_rate_is_ready_at_once() {
        let gate = FakeGate::new(1, 10);
        let mut line = Line::default();
        let (ticket, wake) = enqueue(&mut line, &gate, 0, "a");
        assert!(wake.is_empty(), "nobody else to wake");
        assert_eq!(poll(&mut line, &gate, ticket, 5), Ok(Poll::Ready { reserved: Reserved { at_ns: 5, receipt: 5 }, entered_ns: 0 }));
        assert!(line.is_empty());
    }

    #[test]
    fn waiters_reserve_one_at_a_time_in_arrival_order() {
        let gate = FakeGate::new(3, 10);
        let mut line = Line::default();
        let tickets: Vec<_> = ["a", "b", "c"].into_iter().map(|name| enqueue(&mut line, &gate, 0, name).0).collect();
        assert_eq!(poll(&mut line, &gate, tickets[1], 0), Ok(Poll::Parked { deadline: NEVER }), "b is not the head");
        assert_eq!(poll(&mut line, &gate, tickets[0], 0), Ok(Poll::Ready { reserved: Reserved { at_ns: 0, receipt: 0 }, entered_ns: 0 }));
        assert_eq!(poll(&mut line, &gate, tickets[1], 0), Ok(Poll::SleepUntil(10)));
        assert_eq!(poll(&mut line, &gate, tickets[2], 0), Ok(Poll::Parked { deadline: NEVER }), "one reservation at a time");
        let (outcome, wake) = line.poll(&gate, tickets[1], 10);
        assert_eq!(outcome, Ok(Poll::Ready { reserved: Reserved { at_ns: 10, receipt: 10 }, entered_ns: 0 }));
        assert_eq!(wake, ["c"], "the next one is woken to reserve");
        assert_eq!(poll(&mut line, &gate, tickets[2], 10), Ok(Poll::SleepUntil(20)));
    }

    #[test]
    fn higher_priority_goes_ahead_of_those_still_waiting_but_not_of_a_reservation() {
        let gate = FakeGate::new(4, 10);
        let mut line = Line::default();
        let first = enqueue(&mut line, &gate, 0, "a").0;
        assert_eq!(poll(&mut line, &gate, first, 0), Ok(Poll::Ready { reserved: Reserved { at_ns: 0, receipt: 0 }, entered_ns: 0 }));
        let batch = enqueue(&mut line, &gate, 0, "batch").0;
        assert_eq!(poll(&mut line, &gate, batch, 0), Ok(Poll::SleepUntil(10)));
        let later_batch = enqueue(&mut line, &gate, 0, "later batch").0;
        let interactive = enqueue(&mut line, &gate, 10, "interactive").0;
        let (_, wake) = line.poll(&gate, batch, 10);
        assert_eq!(wake, ["interactive"]);
        assert_eq!(poll(&mut line, &gate, later_batch, 10), Ok(Poll::Parked { deadline: NEVER }));
        assert_eq!(poll(&mut line, &gate, interactive, 10), Ok(Poll::SleepUntil(20)));
    }

    #[test]
    fn a_returned_slot_goes_to_the_head_of_the_slot_line() {
        let gate = FakeGate::new(1, 0);
        let mut line = Line::default();
        let holder = enqueue(&mut line, &gate, 0, "holder").0;
        assert!(matches!(poll(&mut line, &gate, holder, 0), Ok(Poll::Ready { .. })));
        let first = enqueue(&mut line, &gate, 0, "first");
        assert!(first.1.is_empty(), "no slot free");
        let second = enqueue(&mut line, &gate, 0, "second").0;
        assert_eq!(line.waiting_for_slots(), 2);
        gate.return_slot();
        assert_eq!(line.slot_returned(&gate), ["first"]);
        assert_eq!(gate.slots.get(), 0, "taken for the head, not left for a newcomer");
        assert!(matches!(poll(&mut line, &gate, first.0, 0), Ok(Poll::Ready { .. })));
        assert_eq!(poll(&mut line, &gate, second, 0), Ok(Poll::Parked { deadline: NEVER }));
    }

    #[test]
    fn a_waiter_that_leaves_gives_back_its_reservation_and_slot_and_the_next_moves_up() {
        let gate = FakeGate::new(2, 10);
        let mut line = Line::default();
        let first = enqueue(&mut line, &gate, 0, "first").0;
        assert!(matches!(poll(&mut line, &gate, first, 0), Ok(Poll::Ready { .. })));
        let sleeper = enqueue(&mut line, &gate, 0, "sleeper").0;
        assert_eq!(poll(&mut line, &gate, sleeper, 0), Ok(Poll::SleepUntil(10)));
        let parked = enqueue(&mut line, &gate, 0, "parked").0;
        assert_eq!(poll(&mut line, &gate, parked, 0), Ok(Poll::Parked { deadline: NEVER }));
        let wake = line.leave(&gate, sleeper);
        assert_eq!(*gate.given_back.borrow(), [10]);
        assert_eq!(gate.slots.get(), 0, "the sleeper's slot went to the parked waiter");
        assert_eq!(wake, ["parked"]);
        assert!(line.leave(&gate, sleeper).is_empty(), "leaving twice is harmless");
    }

    #[test]
    fn a_waiter_that_never_needed_a_slot_returns_none() {
        let gate = FakeGate::new(0, 10);
        let mut line = Line::default();
        gate.next_free.set(10);
        let waiter = line.enqueue(&gate, Cost::request(0), 0, 0, NEVER, false, "w").0;
        assert_eq!(poll(&mut line, &gate, waiter, 0), Ok(Poll::SleepUntil(10)));
        line.leave(&gate, waiter);
        assert_eq!((gate.slots.get(), gate.given_back.borrow().len()), (0, 1));
    }

    #[test]
    fn a_waiter_leaving_the_slot_line_holds_nothing() {
        let gate = FakeGate::new(0, 10);
        let mut line = Line::default();
        let waiter = enqueue(&mut line, &gate, 0, "w").0;
        assert!(line.leave(&gate, waiter).is_empty());
        assert_eq!(gate.slots.get(), 0);
        assert!(line.is_empty());
    }

    #[test]
    fn a_deadline_passed_in_line_is_a_timeout_naming_what_was_awaited() {
        let gate = FakeGate::new(0, 10);
        let mut line = Line::default();
        let (waiter, _) = line.enqueue(&gate, Cost::request(0), 0, 0, 100, true, "w");
        assert_eq!(poll(&mut line, &gate, waiter, 50), Ok(Poll::Parked { deadline: 100 }));
        assert_eq!(poll(&mut line, &gate, waiter, 100), Err(Refused::TimedOut(Awaited::Slot)));
        assert!(line.is_empty());
    }

    #[test]
    fn a_reservation_past_the_deadline_is_refused_at_once_and_returns_the_slot() {
        let gate = FakeGate::new(1, 1_000);
        let mut line = Line::default();
        gate.next_free.set(500);
        let (waiter, _) = line.enqueue(&gate, Cost::request(0), 0, 0, 100, true, "w");
        assert_eq!(poll(&mut line, &gate, waiter, 0), Err(Refused::TooLate));
        assert_eq!(gate.slots.get(), 1);
        assert!(line.is_empty());
    }

    #[test]
    fn a_reservation_whose_predecessor_went_late_sleeps_again() {
        let gate = FakeGate::new(1, 10);
        let mut line = Line::default();
        gate.next_free.set(10);
        let waiter = line.enqueue(&gate, Cost::request(0), 0, 0, NEVER, false, "w").0;
        assert_eq!(poll(&mut line, &gate, waiter, 0), Ok(Poll::SleepUntil(10)));
        gate.late_by.set(3);
        assert_eq!(poll(&mut line, &gate, waiter, 10), Ok(Poll::SleepUntil(13)));
        assert_eq!(poll(&mut line, &gate, waiter, 13), Ok(Poll::Ready { reserved: Reserved { at_ns: 13, receipt: 10 }, entered_ns: 0 }));
    }
}
