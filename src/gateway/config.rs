//! What a gateway enforces and how it misbehaves; checked once, before it starts.

use std::collections::HashSet;

use super::faults::Faults;
use super::latency::Latency;
use crate::core::clock::NS_PER_SEC;
use crate::core::{Error, Result};

/// Limits per API key, counted over the window (a "minute" of `window_ns`), 60 windows (an "hour")
/// and 1,440 windows (a "day"); `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: Option<u64>,
    pub rph: Option<u64>,
    pub rpd: Option<u64>,
    pub tpm: Option<u64>,
    pub tph: Option<u64>,
    pub tpd: Option<u64>,
    /// Requests in flight at once.
    pub concurrency: Option<u64>,
    /// Tokens a key may spend in the gateway's life; past it, 429 `insufficient_quota`.
    pub credit_tokens: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    pub limits: Limits,
    /// The length of a "minute"; tests shorten it to run a minute in a second.
    pub window_ns: u64,
    /// Keys the gateway accepts; `None` accepts any non-empty bearer token.
    pub api_keys: Option<HashSet<String>>,
    pub latency: Latency,
    pub faults: Faults,
    pub seed: u64,
    /// Length of the embedding vectors when the request does not ask for `dimensions`.
    pub embedding_dim: usize,
    /// Length of every chat reply, unless the request's `max_tokens` is shorter.
    pub completion_tokens: u64,
    /// Whether to keep the admission log.
    pub log: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            window_ns: 60 * NS_PER_SEC,
            api_keys: None,
            latency: Latency::None,
            faults: Faults::default(),
            seed: 0,
            embedding_dim: 1536,
            completion_tokens: 16,
            log: true,
        }
    }
}

/// The most dimensions an embedding may have, so a typo cannot ask for gigabytes.
pub const MAX_EMBEDDING_DIM: usize = 65_536;

impl GatewayConfig {
    pub fn validate(&self) -> Result<()> {
        let limits = &self.limits;
        let named = [
            ("rpm", limits.rpm),
            ("rph", limits.rph),
            ("rpd", limits.rpd),
            ("tpm", limits.tpm),
            ("tph", limits.tph),
            ("tpd", limits.tpd),
            ("concurrency", limits.concurrency),
            ("credit_tokens", limits.credit_tokens),
        ];
        for (field, value) in named {
            if value == Some(0) {
                return Err(Error::config(field, "must be at least 1 (leave it unset for no limit)"));
            }
        }
        if self.window_ns == 0 {
            return Err(Error::config("window_s", "must be longer than 0"));
        }
        if let Some(keys) = &self.api_keys {
            if keys.is_empty() {
                return Err(Error::config(
                    "api_keys",
                    "must hold at least one key (leave it unset to accept any)",
                ));
            }
            if keys.iter().any(|key| key.trim().is_empty()) {
                return Err(Error::config("api_keys", "keys must not be blank"));
            }
        }
        if let Latency::Uniform { min_ns, max_ns } = self.latency
            && min_ns > max_ns
        {
            return Err(Error::config("latency", "the lower bound exceeds the upper bound"));
        }
        if !(1..=MAX_EMBEDDING_DIM).contains(&self.embedding_dim) {
            return Err(Error::config(
                "embedding_dim",
                format!("must be between 1 and {MAX_EMBEDDING_DIM}, got {}", self.embedding_dim),
            ));
        }
        if self.completion_tokens == 0 {
            return Err(Error::config("completion_tokens", "must be at least 1"));
        }
        self.faults.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(config: GatewayConfig) -> String {
        match config.validate() {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn default_config_is_valid() {
        assert_eq!(GatewayConfig::default().validate(), Ok(()));
    }

    #[test]
    fn bad_values_name_their_field() {
        let zero_rpm = Limits { rpm: Some(0), ..Limits::default() };
        assert_eq!(field_of(GatewayConfig { limits: zero_rpm, ..GatewayConfig::default() }), "rpm");
        assert_eq!(field_of(GatewayConfig { window_ns: 0, ..GatewayConfig::default() }), "window_s");
        let no_keys = Some(HashSet::new());
        assert_eq!(field_of(GatewayConfig { api_keys: no_keys, ..GatewayConfig::default() }), "api_keys");
        let backwards = Latency::Uniform { min_ns: 2, max_ns: 1 };
        assert_eq!(field_of(GatewayConfig { latency: backwards, ..GatewayConfig::default() }), "latency");
        assert_eq!(field_of(GatewayConfig { embedding_dim: 0, ..GatewayConfig::default() }), "embedding_dim");
        assert_eq!(
            field_of(GatewayConfig { completion_tokens: 0, ..GatewayConfig::default() }),
            "completion_tokens"
        );
        let faults = Faults { timeout: -0.1, ..Faults::default() };
        assert_eq!(field_of(GatewayConfig { faults, ..GatewayConfig::default() }), "faults.timeout");
    }
}
