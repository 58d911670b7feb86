//! HolySheep's plans, as `from_tier` presets.

use crate::core::error::{Error, Result};

/// One plan's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tier {
    pub name: &'static str,
    pub rpm: u64,
    pub tpm: u64,
    pub concurrency: u64,
    /// How long to hold back after a storm of 429s.
    pub cooldown_s: f64,
}

pub const TIERS: [Tier; 4] = [
    Tier { name: "free", rpm: 60, tpm: 10_000, concurrency: 5, cooldown_s: 60.0 },
    Tier { name: "starter", rpm: 500, tpm: 100_000, concurrency: 20, cooldown_s: 30.0 },
    Tier { name: "pro", rpm: 2_000, tpm: 500_000, concurrency: 50, cooldown_s: 15.0 },
    Tier { name: "enterprise", rpm: 10_000, tpm: 2_000_000, concurrency: 200, cooldown_s: 5.0 },
];

impl Tier {
    pub fn named(name: &str) -> Result<Tier> {
        let wanted = name.trim().to_ascii_lowercase();
        TIERS.iter().copied().find(|tier| tier.name == wanted).ok_or_else(|| {
            let known: Vec<_> = TIERS.iter().map(|tier| tier.name).collect();
            Error::config("tier", format!("unknown tier {name:?}; known tiers: {}", known.join(", ")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_found_by_name_in_any_case() {
        assert_eq!(Tier::named("Pro").unwrap().rpm, 2_000);
        assert_eq!(Tier::named("enterprise").unwrap().concurrency, 200);
    }

    #[test]
    fn an_unknown_tier_lists_the_known_ones() {
        let err = Tier::named("platinum").unwrap_err();
        assert!(err.to_string().contains("free, starter, pro, enterprise"), "{err}");
    }
}
