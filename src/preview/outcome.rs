//! What a preview saw, as it happened (the [`Recorder`]), and the [`Outcome`] it makes at the end:
//! the figures of the report and the series of its plot.

use std::collections::BTreeMap;

use crate::core::clock::NS_PER_SEC;
use crate::core::limit::{Cost, Limit};
use crate::preview::server::ServerModel;
use crate::preview::sim::Holding;

/// The widths a plot's bins may take, in ms: the narrowest that keeps to [`MAX_BINS`].
const BIN_WIDTHS_MS: [u64; 14] = [100, 250, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 3_600_000];
const MAX_BINS: u64 = 1_200;

/// A stretch of time during which one thing held the line: an index among the outcome's `holders`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start_ns: u64,
    pub end_ns: u64,
    pub holder: usize,
}

/// Time series for the plot, one value per bin of `bin_ns` from the start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub bin_ns: u64,
    /// Requests the limiter admitted, per second.
    pub admitted_per_s: Vec<f64>,
    /// Requests the server answered 429, per second.
    pub server_429s_per_s: Vec<f64>,
    /// The most requests waiting in the limiter's line at any instant of the bin.
    pub queue: Vec<u64>,
    /// The most requests sent and not yet answered.
    pub in_flight: Vec<u64>,
    /// Waits of the requests admitted in the bin, in seconds: the median and the longest (NaN for a bin
    /// without admissions).
    pub wait_p50_s: Vec<f64>,
    pub wait_max_s: Vec<f64>,
    /// For each limit of the limiter: the share of it used over its window ending at the bin's end.
    pub use_of: Vec<Vec<f64>>,
}

/// What a preview found.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Requests in the traffic.
    pub requests: u64,
    /// Admissions by the limiter (a request tried again after a 429 is admitted again).
    pub admitted: u64,
    /// Requests the server answered (not 429).
    pub answered: u64,
    /// Requests the limiter refused, by why: "never" (more than a limit ever admits), "over_budget",
    /// "timed_out" (waited past the timeout).
    pub refusals: BTreeMap<&'static str, u64>,
    /// Requests still answered 429 after their last attempt.
    pub failed: u64,
    pub server_429s: u64,
    /// Admissions that waited at all, and the waits of all admissions (0 for those that did not).
    pub waited: u64,
    pub wait_p50_ns: u64,
    pub wait_p99_ns: u64,
    pub wait_max_ns: u64,
    /// When each admission was made, in order.
    pub admitted_at_ns: Vec<u64>,
    /// When the last admission was made: the line has drained.
    pub drain_ns: u64,
    /// When the last answer came.
    pub end_ns: u64,
    /// What the answered requests cost at the scenario's price.
    pub cost_usd: f64,
    /// What can hold the line: the limiter's limits as they read, then its concurrency bound (if any).
    pub holders: Vec<String>,
    /// How long each of `holders` held it.
    pub held_ns: Vec<u64>,
    /// The one that held it longest, if anything ever did.
    pub binding: Option<usize>,
    pub spans: Vec<Span>,
    /// What the server enforced, as it reads.
    pub server_limits: Vec<String>,
    /// Requests per second each limit sustains, for the limits that count requests: the limiter's
    /// (by index), then the server's.
    pub request_rates: Vec<(String, f64)>,
    pub series: Series,
}

/// Collects what happens, as it happens.
#[derive(Debug, Default)]
pub struct Recorder {
    requests: u64,
    /// (instant, wait, cost) of each admission, in time order.
    admissions: Vec<(u64, u64, Cost)>,
    refusals: BTreeMap<&'static str, u64>,
    server_429s: Vec<u64>,
    failed: u64,
    answered: u64,
    micro_usd: u64,
    end_ns: u64,
    held_ns: Vec<u64>,
    spans: Vec<Span>,
    /// (instant, waiting, in flight) each time one of them changed.
    queue: Vec<(u64, u64, u64)>,
}

impl Recorder {
    pub fn new(limits: usize) -> Self {
        Self { held_ns: vec![0; limits + 1], ..Self::default() }
    }

    pub fn arrived(&mut self) {
        self.requests += 1;
    }

    pub fn admitted(&mut self, at_ns: u64, wait_ns: u64, cost: Cost) {
        self.admissions.push((at_ns, wait_ns, cost));
    }

    /// A request refused, for the reason `kind` (see [`refusal_kind`](crate::preview::sim::refusal_kind)).
    pub fn refused(&mut self, kind: &'static str) {
        *self.refusals.entry(kind).or_default() += 1;
    }

    pub fn server_refused(&mut self, at_ns: u64) {
        self.server_429s.push(at_ns);
    }

    pub fn failed(&mut self) {
        self.failed += 1;
    }

    pub fn answered(&mut self, at_ns: u64, cost: Cost) {
        self.answered += 1;
        self.micro_usd += cost.micro_usd;
        self.end_ns = at_ns;
    }

    /// `holding` held the line from `from_ns` to `to_ns` (nothing did when `None`).
    pub fn held(&mut self, from_ns: u64, to_ns: u64, holding: Option<Holding>) {
        let Some(holding) = holding.filter(|_| to_ns > from_ns) else { return };
        let holder = holding.index(self.held_ns.len() - 1);
        self.held_ns[holder] += to_ns - from_ns;
        match self.spans.last_mut() {
            Some(last) if last.holder == holder && last.end_ns == from_ns => last.end_ns = to_ns,
            _ => self.spans.push(Span { start_ns: from_ns, end_ns: to_ns, holder }),
        }
    }

    pub fn queue(&mut self, at_ns: u64, waiting: u64, in_flight: u64) {
        if self.queue.last().is_none_or(|&(_, w, f)| (w, f) != (waiting, in_flight)) {
            self.queue.push((at_ns, waiting, in_flight));
        }
    }

    pub fn finish(self, limits: &[Limit], max_concurrency: Option<u64>, server: Option<&ServerModel>) -> Outcome {
        let mut waits: Vec<u64> = self.admissions.iter().map(|&(_, wait, _)| wait).collect();
        waits.sort_unstable();
        let mut holders: Vec<String> = limits.iter().map(ToString::to_string).collect();
        let mut held_ns = self.held_ns.clone();
        match max_concurrency {
            Some(max) => holders.push(format!("{max} in flight (max_concurrency)")),
            None => {
                held_ns.pop();
            }
        }
        let binding = held_ns.iter().enumerate().filter(|&(_, &ns)| ns > 0).max_by_key(|&(_, &ns)| ns).map(|(index, _)| index);
        let mut request_rates: Vec<(String, f64)> = limits
            .iter()
            .filter(|limit| limit.unit() == crate::core::limit::Unit::Requests)
            .map(|limit| {
                let (count, window_ns) = limit.whole_window();
                (limit.to_string(), count as f64 / (window_ns as f64 / NS_PER_SEC as f64))
            })
            .collect();
        request_rates.extend(server.and_then(ServerModel::request_rate));
        let drain_ns = self.admissions.last().map_or(0, |&(at, _, _)| at);
        let series = self.series(limits, drain_ns.max(self.end_ns));
        Outcome {
            requests: self.requests,
            admitted: self.admissions.len() as u64,
            answered: self.answered,
            refusals: self.refusals,
            failed: self.failed,
            server_429s: self.server_429s.len() as u64,
            waited: waits.iter().filter(|&&wait| wait > 0).count() as u64,
            wait_p50_ns: quantile(&waits, 0.50),
            wait_p99_ns: quantile(&waits, 0.99),
            wait_max_ns: waits.last().copied().unwrap_or(0),
            admitted_at_ns: self.admissions.iter().map(|&(at, _, _)| at).collect(),
            drain_ns,
            end_ns: self.end_ns,
            cost_usd: self.micro_usd as f64 / 1e6,
            holders,
            held_ns,
            binding,
            spans: self.spans,
            server_limits: server.map(ServerModel::describe).unwrap_or_default(),
            request_rates,
            series,
        }
    }

    fn series(&self, limits: &[Limit], horizon_ns: u64) -> Series {
        let bin_ns = BIN_WIDTHS_MS
            .iter()
            .map(|ms| ms * 1_000_000)
            .find(|bin| horizon_ns / bin < MAX_BINS)
            .unwrap_or(BIN_WIDTHS_MS[BIN_WIDTHS_MS.len() - 1] * 1_000_000);
        let bins = (horizon_ns / bin_ns + 1) as usize;
        let bin_of = |at: u64| ((at / bin_ns) as usize).min(bins - 1);
        let per_s = NS_PER_SEC as f64 / bin_ns as f64;

        let mut admitted_per_s = vec![0.0; bins];
        let mut waits_in: Vec<Vec<u64>> = vec![Vec::new(); bins];
        for &(at, wait, _) in &self.admissions {
            admitted_per_s[bin_of(at)] += per_s;
            waits_in[bin_of(at)].push(wait);
        }
        let mut server_429s_per_s = vec![0.0; bins];
        for &at in &self.server_429s {
            server_429s_per_s[bin_of(at)] += per_s;
        }
        let (mut wait_p50_s, mut wait_max_s) = (Vec::with_capacity(bins), Vec::with_capacity(bins));
        for waits in &mut waits_in {
            waits.sort_unstable();
            // NaN where nothing was admitted: a gap in the plot, not a wait of 0.
            let secs = |ns: Option<u64>| ns.map_or(f64::NAN, |ns| ns as f64 / NS_PER_SEC as f64);
            wait_p50_s.push(secs((!waits.is_empty()).then(|| quantile(waits, 0.5))));
            wait_max_s.push(secs(waits.last().copied()));
        }

        // The most waiting and in flight within each bin, carried over bins in which nothing changed.
        let (mut queue, mut in_flight) = (vec![0; bins], vec![0; bins]);
        let (mut changes, mut now) = (self.queue.iter().peekable(), (0, 0));
        for bin in 0..bins {
            let (mut most_waiting, mut most_in_flight) = now;
            let end = (bin as u64 + 1) * bin_ns;
            while let Some(&&(at, waiting, flying)) = changes.peek() {
                if at >= end {
                    break;
                }
                now = (waiting, flying);
                (most_waiting, most_in_flight) = (most_waiting.max(waiting), most_in_flight.max(flying));
                changes.next();
            }
            (queue[bin], in_flight[bin]) = (most_waiting, most_in_flight);
        }

        let use_of = limits.iter().map(|limit| self.use_of(limit, bins, bin_ns)).collect();
        Series { bin_ns, admitted_per_s, server_429s_per_s, queue, in_flight, wait_p50_s, wait_max_s, use_of }
    }

    /// The share of `limit` used over the window that ends at each bin's end, as it counts admissions.
    fn use_of(&self, limit: &Limit, bins: usize, bin_ns: u64) -> Vec<f64> {
        let (count, window_ns) = limit.whole_window();
        let unit = limit.unit();
        let (mut first, mut next, mut used) = (0, 0, 0u64);
        (0..bins)
            .map(|bin| {
                let end = (bin as u64 + 1) * bin_ns;
                while next < self.admissions.len() && self.admissions[next].0 < end {
                    used += unit.of(self.admissions[next].2);
                    next += 1;
                }
                while first < next && self.admissions[first].0 + window_ns <= end {
                    used -= unit.of(self.admissions[first].2);
                    first += 1;
                }
                used as f64 / count as f64
            })
            .collect()
    }
}

/// The `q` quantile of sorted values by nearest rank (as `stats()` ranks its waits); 0 for none.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!((quantile(&values, 0.5), quantile(&values, 0.99)), (50, 99));
        assert_eq!(quantile(&[7], 0.99), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn what_held_the_line_is_merged_into_spans() {
        let mut recorder = Recorder::new(1);
        recorder.held(0, 5, Some(Holding::Limit(0)));
        recorder.held(5, 9, Some(Holding::Limit(0)));
        recorder.held(9, 10, None);
        recorder.held(10, 12, Some(Holding::Concurrency));
        assert_eq!(
            recorder.spans,
            [Span { start_ns: 0, end_ns: 9, holder: 0 }, Span { start_ns: 10, end_ns: 12, holder: 1 }]
        );
        assert_eq!(recorder.held_ns, [9, 2]);
    }
}
