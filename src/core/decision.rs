//! What a limit answers to a request: every outcome is a type, with what the caller needs next.

/// The answer of a limit to a request of some cost at some instant.
///
/// A try (`latest == now`) yields `Now`, `NotBefore` or `Never`; a reservation with a deadline may also
/// yield `At`. Only `Now` and `At` change the limit's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted at once, and counted.
    Now,
    /// Admitted at this instant (ns) and counted already: the caller waits until then, so waiters are
    /// served in the order they reserved.
    At(u64),
    /// Not admitted, nothing counted: this is the earliest instant (ns) it could pass.
    NotBefore(u64),
    /// Never admitted: the cost exceeds what the limit can ever let through (`max_cost`).
    Never { max_cost: u64 },
}

impl Decision {
    /// Whether the request was admitted (now or at a reserved instant) and counted.
    #[inline]
    pub fn is_admitted(self) -> bool {
        matches!(self, Decision::Now | Decision::At(_))
    }

    /// Nanoseconds from `now` until the request may proceed; `None` when it never can.
    pub fn wait_ns(self, now: u64) -> Option<u64> {
        match self {
            Decision::Now => Some(0),
            Decision::At(t) | Decision::NotBefore(t) => Some(t.saturating_sub(now)),
            Decision::Never { .. } => None,
        }
    }

    /// The decision for a request whose earliest conforming instant is `at`, allowed up to `latest`.
    #[inline]
    pub(crate) fn for_instant(at: u64, now: u64, latest: u64) -> Decision {
        if at <= now {
            Decision::Now
        } else if at <= latest {
            Decision::At(at)
        } else {
            Decision::NotBefore(at)
        }
    }
}

/// The cost exceeds what a limit can ever admit; carries the most it could.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Never {
    pub max_cost: u64,
}

impl From<Never> for Decision {
    fn from(never: Never) -> Self {
        Decision::Never { max_cost: never.max_cost }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_sort_into_now_reserved_and_not_before() {
        assert_eq!(Decision::for_instant(5, 10, 10), Decision::Now);
        assert_eq!(Decision::for_instant(15, 10, 20), Decision::At(15));
        assert_eq!(Decision::for_instant(25, 10, 20), Decision::NotBefore(25));
    }

    #[test]
    fn waits_are_measured_from_now() {
        assert_eq!(Decision::Now.wait_ns(7), Some(0));
        assert_eq!(Decision::At(10).wait_ns(7), Some(3));
        assert_eq!(Decision::NotBefore(10).wait_ns(7), Some(3));
        assert_eq!(Decision::Never { max_cost: 1 }.wait_ns(7), None);
        assert!(Decision::At(1).is_admitted() && !Decision::NotBefore(1).is_admitted());
    }
}
