//! Reproducible randomness for latency, faults and embeddings: the n-th request of a gateway with a
//! given seed always draws the same numbers, whatever the order in which concurrent requests are served.

/// Which decision a draw is for, so that latency and faults of one request are independent.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Fault = 1,
    Latency = 2,
    /// Components of a deterministic embedding (the "sequence number" is the component's index).
    Embedding = 3,
}

/// A uniform number in `[0, 1)` for request `seq` (SplitMix64 over seed, stream and sequence number).
pub fn draw(seed: u64, stream: Stream, seq: u64) -> f64 {
    let mut z = seed
        .wrapping_add((stream as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(seq.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // The top 53 bits fill an f64 mantissa exactly.
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_and_sequence_give_the_same_draw() {
        assert_eq!(draw(7, Stream::Fault, 3), draw(7, Stream::Fault, 3));
        assert_ne!(draw(7, Stream::Fault, 3), draw(8, Stream::Fault, 3));
        assert_ne!(draw(7, Stream::Fault, 3), draw(7, Stream::Latency, 3));
    }

    #[test]
    fn draws_are_uniform_in_the_unit_interval() {
        let n = 100_000;
        let draws: Vec<f64> = (0..n).map(|seq| draw(42, Stream::Fault, seq)).collect();
        assert!(draws.iter().all(|&d| (0.0..1.0).contains(&d)));
        let below_tenth = draws.iter().filter(|&&d| d < 0.1).count();
        assert!((9_500..10_500).contains(&below_tenth), "{below_tenth} of {n} below 0.1");
    }
}
