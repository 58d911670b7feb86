//! The shorthands users write (`max_qps=`, `rpm=`, `tpm=`, `burst=`) turned into limits, each checked
//! under the name the user gave it.

use crate::core::clock::NS_PER_SEC;
use crate::core::error::{Error, Result};
use crate::core::limit::{Algorithm, Limit, Unit, default_guard_ns};

/// A limiter as written at construction.
#[derive(Debug, Clone, Default)]
pub struct LimiterConfig {
    pub max_qps: Option<f64>,
    pub rpm: Option<f64>,
    pub tpm: Option<f64>,
    /// Turns the request shorthands into GCRA limits with room for this many at once.
    pub burst: Option<f64>,
    pub limits: Vec<Limit>,
    pub max_concurrency: Option<i64>,
    /// The guard of the shorthand limits; `None` for [`default_guard_ns`].
    pub guard_ns: Option<u64>,
}

fn positive(field: &str, value: f64) -> Result<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(Error::config(field, format!("must be a positive number, got {value}")))
    }
}

impl LimiterConfig {
    /// Every limit this config asks for: the shorthands first, then `limits`.
    pub fn rate_limits(&self) -> Result<Vec<Limit>> {
        if let Some(burst) = self.burst {
            if !(burst.is_finite() && burst >= 1.0) {
                return Err(Error::config("burst", format!("must be at least 1, got {burst}")));
            }
            if self.max_qps.is_none() && self.rpm.is_none() {
                return Err(Error::config("burst", "applies to max_qps= or rpm=; give one of them"));
            }
        }
        let request_algorithm = if self.burst.is_some() { Algorithm::Gcra } else { Algorithm::Exact };
        let mut limits = Vec::new();
        for (field, value, secs, unit, algorithm) in [
            ("max_qps", self.max_qps, 1, Unit::Requests, request_algorithm),
            ("rpm", self.rpm, 60, Unit::Requests, request_algorithm),
            ("tpm", self.tpm, 60, Unit::Tokens, Algorithm::Exact),
        ] {
            if let Some(value) = value {
                let amount = positive(field, value)?;
                let burst = if algorithm == Algorithm::Gcra { self.burst } else { None };
                let period_ns = secs * NS_PER_SEC;
                let limit = Limit::new(amount, period_ns, unit, algorithm, burst)
                    .map_err(|err| Error::config(field, err.to_string()))?;
                limits.push(limit.with_guard(self.guard_ns.unwrap_or_else(|| default_guard_ns(period_ns))));
            }
        }
        limits.extend(self.limits.iter().copied());
        Ok(limits)
    }

    pub fn concurrency(&self) -> Result<Option<u64>> {
        match self.max_concurrency {
            Some(n) if n < 1 => Err(Error::config("max_concurrency", format!("must be at least 1, got {n}"))),
            other => Ok(other.map(|n| n as u64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(config: LimiterConfig) -> String {
        match config.rate_limits().and_then(|_| config.concurrency()) {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn shorthands_become_limits_in_order() {
        let config = LimiterConfig { max_qps: Some(10.0), tpm: Some(1_000.0), ..Default::default() };
        let limits = config.rate_limits().unwrap();
        let described: Vec<_> = limits.iter().map(ToString::to_string).collect();
        assert_eq!(described, ["10 requests per second", "1000 tokens per minute"]);
    }

    #[test]
    fn burst_makes_request_limits_gcra() {
        let config = LimiterConfig { rpm: Some(600.0), burst: Some(20.0), ..Default::default() };
        let limits = config.rate_limits().unwrap();
        assert_eq!((limits[0].algorithm(), limits[0].burst()), (Algorithm::Gcra, 20));
    }

    #[test]
    fn bad_shorthands_name_the_field_the_user_wrote() {
        assert_eq!(field_of(LimiterConfig { max_qps: Some(0.0), ..Default::default() }), "max_qps");
        assert_eq!(field_of(LimiterConfig { rpm: Some(f64::NAN), ..Default::default() }), "rpm");
        assert_eq!(field_of(LimiterConfig { tpm: Some(-5.0), ..Default::default() }), "tpm");
        assert_eq!(field_of(LimiterConfig { rpm: Some(5.0), burst: Some(0.0), ..Default::default() }), "burst");
        assert_eq!(field_of(LimiterConfig { burst: Some(3.0), max_concurrency: Some(2), ..Default::default() }), "burst");
        assert_eq!(field_of(LimiterConfig { max_concurrency: Some(0), ..Default::default() }), "max_concurrency");
    }
}
