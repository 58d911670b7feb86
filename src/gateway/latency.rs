//! How long the gateway takes to answer: fixed, or uniform between two bounds with a seed.

use super::seeded::{Stream, draw};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Latency {
    #[default]
    None,
    Fixed {
        ns: u64,
    },
    Uniform {
        min_ns: u64,
        max_ns: u64,
    },
}

impl Latency {
    /// The latency of request `seq`.
    pub fn sample_ns(&self, seed: u64, seq: u64) -> u64 {
        match *self {
            Latency::None => 0,
            Latency::Fixed { ns } => ns,
            Latency::Uniform { min_ns, max_ns } => {
                min_ns + ((max_ns - min_ns) as f64 * draw(seed, Stream::Latency, seq)) as u64
            }
        }
    }

    /// The longest any answer takes, so every request in flight now has its answer by then.
    pub fn max_ns(&self) -> u64 {
        match *self {
            Latency::None => 0,
            Latency::Fixed { ns } => ns,
            Latency::Uniform { max_ns, .. } => max_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_latency_stays_within_its_bounds_and_repeats_with_the_seed() {
        let latency = Latency::Uniform { min_ns: 100, max_ns: 200 };
        let samples: Vec<u64> = (0..1000).map(|seq| latency.sample_ns(5, seq)).collect();
        assert!(samples.iter().all(|ns| (100..200).contains(ns)));
        assert!(samples.iter().any(|&ns| ns < 120) && samples.iter().any(|&ns| ns > 180));
        assert_eq!(samples[17], latency.sample_ns(5, 17));
    }

    #[test]
    fn fixed_latency_is_fixed() {
        assert_eq!(Latency::Fixed { ns: 42 }.sample_ns(1, 99), 42);
        assert_eq!(Latency::None.sample_ns(1, 99), 0);
    }
}
