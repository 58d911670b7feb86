//! Fault injection: which failure, if any, a request meets. Each fault has a fraction of requests,
//! drawn per request from the seed; an outage window fails every request between two instants.

use super::seeded::{Stream, draw};
use crate::core::{Error, Result};

/// A failure the gateway plays instead of a normal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 500, OpenAI-shaped `server_error` body.
    ServerError,
    /// 502, as a proxy in front of a dead upstream answers.
    BadGateway,
    /// 503, the service is overloaded.
    Unavailable,
    /// Never answers: the client's timeout has to end the request.
    Timeout,
    /// The connection is reset (TCP RST) without an answer.
    Reset,
    /// 200 with a body that is not valid JSON.
    Malformed,
    /// 503 because the request arrived during the scheduled outage.
    Outage,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::ServerError => "server_error",
            Fault::BadGateway => "bad_gateway",
            Fault::Unavailable => "unavailable",
            Fault::Timeout => "timeout",
            Fault::Reset => "reset",
            Fault::Malformed => "malformed",
            Fault::Outage => "outage",
        }
    }

    /// The status the client sees; 0 when it sees none.
    pub fn status(self) -> u16 {
        match self {
            Fault::ServerError => 500,
            Fault::BadGateway => 502,
            Fault::Unavailable | Fault::Outage => 503,
            Fault::Timeout | Fault::Reset => 0,
            Fault::Malformed => 200,
        }
    }
}

/// What fraction of admitted requests meets each fault, and an optional outage `[start, end)` in ns
/// since the gateway started.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    pub server_error: f64,
    pub bad_gateway: f64,
    pub unavailable: f64,
    pub timeout: f64,
    pub reset: f64,
    pub malformed: f64,
    pub outage_ns: Option<(u64, u64)>,
}

impl Faults {
    fn fractions(&self) -> [(Fault, f64, &'static str); 6] {
        [
            (Fault::ServerError, self.server_error, "faults.server_error"),
            (Fault::BadGateway, self.bad_gateway, "faults.bad_gateway"),
            (Fault::Unavailable, self.unavailable, "faults.unavailable"),
            (Fault::Timeout, self.timeout, "faults.timeout"),
            (Fault::Reset, self.reset, "faults.reset"),
            (Fault::Malformed, self.malformed, "faults.malformed"),
        ]
    }

    pub fn validate(&self) -> Result<()> {
        let mut total = 0.0;
        for (_, fraction, field) in self.fractions() {
            if !(0.0..=1.0).contains(&fraction) {
                return Err(Error::config(field, format!("must be a fraction in [0, 1], got {fraction}")));
            }
            total += fraction;
        }
        if total > 1.0 + 1e-9 {
            return Err(Error::config("faults", format!("fractions add up to {total}, more than 1")));
        }
        if let Some((start, end)) = self.outage_ns
            && start >= end
        {
            return Err(Error::config("faults.outage", "must end after it starts"));
        }
        Ok(())
    }

    pub fn in_outage(&self, at_ns: u64) -> Option<u64> {
        match self.outage_ns {
            Some((start, end)) if (start..end).contains(&at_ns) => Some(end - at_ns),
            _ => None,
        }
    }

    /// The fault request `seq` meets, if any: one draw, laid over the fractions end to end.
    pub fn pick(&self, seed: u64, seq: u64) -> Option<Fault> {
        let mut point = draw(seed, Stream::Fault, seq);
        for (fault, fraction, _) in self.fractions() {
            if point < fraction {
                return Some(fault);
            }
            point -= fraction;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_fault_meets_about_its_fraction_of_requests() {
        let faults = Faults { server_error: 0.1, timeout: 0.2, malformed: 0.05, ..Faults::default() };
        let n = 20_000;
        let picks: Vec<Option<Fault>> = (0..n).map(|seq| faults.pick(3, seq)).collect();
        let share = |fault| picks.iter().filter(|&&p| p == Some(fault)).count() as f64 / n as f64;
        assert!((share(Fault::ServerError) - 0.1).abs() < 0.01);
        assert!((share(Fault::Timeout) - 0.2).abs() < 0.01);
        assert!((share(Fault::Malformed) - 0.05).abs() < 0.01);
        assert_eq!(share(Fault::Reset), 0.0);
    }

    #[test]
    fn no_fractions_means_no_faults() {
        assert!((0..1000).all(|seq| Faults::default().pick(1, seq).is_none()));
    }

    #[test]
    fn outage_covers_its_start_but_not_its_end() {
        let faults = Faults { outage_ns: Some((10, 20)), ..Faults::default() };
        assert_eq!(faults.in_outage(9), None);
        assert_eq!(faults.in_outage(10), Some(10));
        assert_eq!(faults.in_outage(19), Some(1));
        assert_eq!(faults.in_outage(20), None);
    }

    #[test]
    fn bad_fractions_name_their_field() {
        let err = Faults { reset: 1.5, ..Faults::default() }.validate().unwrap_err();
        assert!(matches!(err, Error::Config { ref field, .. } if field == "faults.reset"), "{err:?}");
        let err = Faults { reset: 0.6, timeout: 0.6, ..Faults::default() }.validate().unwrap_err();
        assert!(err.to_string().contains("more than 1"), "{err}");
        let err = Faults { outage_ns: Some((5, 5)), ..Faults::default() }.validate().unwrap_err();
        assert!(matches!(err, Error::Config { ref field, .. } if field == "faults.outage"), "{err:?}");
    }
}
