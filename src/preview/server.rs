//! The server a preview sends to: a HolySheep plan's limits, or limits given one by one, enforced per
//! API key by the MockGateway's own [`KeyLimiter`] (strict sliding windows over requests and tokens,
//! requests in flight). Its decisions take the instant as an argument, so the preview runs it on the
//! virtual clock as it is: nothing of it is copied here.

use crate::core::clock::NS_PER_SEC;
use crate::core::error::{Error, Result};
use crate::core::tiers::Tier;
use crate::gateway::{GatewayConfig, KeyLimiter, Limits};

/// A server's limits per API key, counted over a "minute" of `window_ns`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerModel {
    tier: Option<&'static str>,
    limits: Limits,
    window_ns: u64,
}

impl ServerModel {
    /// A plan's limits (`tier`), each overridden by a number given; at least one limit in all.
    pub fn new(tier: Option<&str>, rpm: Option<u64>, tpm: Option<u64>, concurrency: Option<u64>, window_ns: u64) -> Result<Self> {
        let plan = tier.map(Tier::named).transpose()?;
        let limits = Limits {
            rpm: rpm.or(plan.map(|plan| plan.rpm)),
            tpm: tpm.or(plan.map(|plan| plan.tpm)),
            concurrency: concurrency.or(plan.map(|plan| plan.concurrency)),
            ..Limits::default()
        };
        if limits == Limits::default() {
            return Err(Error::config("tier", "give a tier, or at least one of rpm, tpm and concurrency"));
        }
        // The gateway's own checks, under the names it gives them.
        GatewayConfig { limits: limits.clone(), window_ns, ..GatewayConfig::default() }.validate()?;
        Ok(Self { tier: plan.map(|plan| plan.name), limits, window_ns })
    }

    pub fn tier(&self) -> Option<&'static str> {
        self.tier
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// The server's window as a reader would name it.
    fn window_name(&self) -> String {
        if self.window_ns == 60 * NS_PER_SEC { "minute".to_string() } else { format!("{}s", self.window_ns as f64 / NS_PER_SEC as f64) }
    }

    /// Its request limit, named, and the requests per second it sustains.
    pub fn request_rate(&self) -> Option<(String, f64)> {
        let rpm = self.limits.rpm?;
        Some((format!("server: {rpm} requests per {}", self.window_name()), rpm as f64 * NS_PER_SEC as f64 / self.window_ns as f64))
    }

    /// What the server enforces, as a reader would say it.
    pub fn describe(&self) -> Vec<String> {
        let window = self.window_name();
        let mut said = Vec::new();
        if let Some(rpm) = self.limits.rpm {
            said.push(format!("{rpm} requests per {window}"));
        }
        if let Some(tpm) = self.limits.tpm {
            said.push(format!("{tpm} tokens per {window}"));
        }
        if let Some(concurrency) = self.limits.concurrency {
            said.push(format!("{concurrency} in flight"));
        }
        said
    }

    /// The gateway's limiter for these limits, with nothing counted.
    pub fn key_limiter(&self) -> KeyLimiter {
        KeyLimiter::new(&self.limits, self.window_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60 * NS_PER_SEC;

    fn field(result: Result<ServerModel>) -> String {
        match result {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn a_plan_gives_its_limits_and_a_number_overrides_one() {
        let pro = ServerModel::new(Some("pro"), None, Some(1_000), None, MINUTE).unwrap();
        assert_eq!((pro.limits.rpm, pro.limits.tpm, pro.limits.concurrency), (Some(2_000), Some(1_000), Some(50)));
        assert_eq!(pro.describe(), ["2000 requests per minute", "1000 tokens per minute", "50 in flight"]);
    }

    #[test]
    fn nonsense_is_refused_naming_the_field() {
        assert_eq!(field(ServerModel::new(Some("platinum"), None, None, None, MINUTE)), "tier");
        assert_eq!(field(ServerModel::new(None, None, None, None, MINUTE)), "tier");
        assert_eq!(field(ServerModel::new(None, Some(0), None, None, MINUTE)), "rpm");
        assert_eq!(field(ServerModel::new(None, Some(5), None, None, 0)), "window_s");
    }
}
