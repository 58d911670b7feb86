//! The order waiters are served in: higher priority first, then arrival. Interactive work (priority > 0)
//! goes ahead of batch work that is still waiting; among equals nobody overtakes, whatever their cost.

use std::cmp::Reverse;
use std::collections::BTreeMap;

/// A waiter's place in a [`WaitQueue`], to leave it early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket {
    priority: Reverse<i64>,
    arrival: u64,
}

/// Waiters of type `T`, served by priority, then in arrival order.
#[derive(Debug)]
pub struct WaitQueue<T> {
    waiters: BTreeMap<Ticket, T>,
    arrivals: u64,
}

impl<T> Default for WaitQueue<T> {
    fn default() -> Self {
        Self { waiters: BTreeMap::new(), arrivals: 0 }
    }
}

impl<T> WaitQueue<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, priority: i64, waiter: T) -> Ticket {
        let ticket = Ticket { priority: Reverse(priority), arrival: self.arrivals };
        self.arrivals += 1;
        self.waiters.insert(ticket, waiter);
        ticket
    }

    /// The waiter served next.
    pub fn front(&self) -> Option<(Ticket, &T)> {
        self.waiters.first_key_value().map(|(ticket, waiter)| (*ticket, waiter))
    }

    pub fn pop_front(&mut self) -> Option<(Ticket, T)> {
        self.waiters.pop_first()
    }

    /// Takes a waiter out wherever it stands (it gave up); `None` if it was served already.
    pub fn remove(&mut self, ticket: Ticket) -> Option<T> {
        self.waiters.remove(&ticket)
    }

    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_are_served_in_arrival_order() {
        let mut queue = WaitQueue::new();
        for name in ["a", "b", "c"] {
            queue.push(0, name);
        }
        let order: Vec<_> = std::iter::from_fn(|| queue.pop_front().map(|(_, w)| w)).collect();
        assert_eq!(order, ["a", "b", "c"]);
    }

    #[test]
    fn interactive_work_goes_ahead_of_waiting_batch_work() {
        let mut queue = WaitQueue::new();
        queue.push(0, "batch-1");
        queue.push(0, "batch-2");
        queue.push(10, "interactive");
        queue.push(-5, "background");
        let order: Vec<_> = std::iter::from_fn(|| queue.pop_front().map(|(_, w)| w)).collect();
        assert_eq!(order, ["interactive", "batch-1", "batch-2", "background"]);
    }

    #[test]
    fn a_waiter_that_gives_up_leaves_its_place() {
        let mut queue = WaitQueue::new();
        let first = queue.push(0, 1);
        let second = queue.push(0, 2);
        assert_eq!(queue.remove(first), Some(1));
        assert_eq!(queue.front(), Some((second, &2)));
        assert_eq!(queue.remove(first), None);
    }
}
