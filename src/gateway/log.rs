//! The admission log: one record per request that reached an endpoint, so tests can prove what a
//! client did. Appends take a short lock on a chunked Vec: no record is ever moved, so a push never
//! copies the log while other requests wait.

use std::sync::{Arc, Mutex};

use super::faults::Fault;
use super::limits::Unit;

/// The endpoints the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
    Models,
    Quota,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Models => "/v1/models",
            Endpoint::Quota => "/v1/quota",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionRecord {
    /// Arrival, in ns since the gateway started; the time the limits counted it at.
    pub at_ns: u64,
    /// The API key; empty when the request was refused for lacking a valid one.
    pub key: Arc<str>,
    pub endpoint: Endpoint,
    /// LLM tokens the request counts for (prompt plus completion).
    pub tokens: u64,
    /// The HTTP status answered; 0 when none was (a timeout or reset fault).
    pub status: u16,
    /// Whether it counted against the limits (false for 400, 401, 413, 429 and outage refusals).
    pub admitted: bool,
    pub fault: Option<Fault>,
}

const CHUNK_RECORDS: usize = 8_192;

#[derive(Debug)]
pub struct AdmissionLog {
    enabled: bool,
    chunks: Mutex<Vec<Vec<AdmissionRecord>>>,
}

impl AdmissionLog {
    pub fn new(enabled: bool) -> Self {
        let first = if enabled { vec![Vec::with_capacity(CHUNK_RECORDS)] } else { Vec::new() };
        Self { enabled, chunks: Mutex::new(first) }
    }

    pub fn append(&self, record: AdmissionRecord) {
        if !self.enabled {
            return;
        }
        let mut chunks = self.chunks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK_RECORDS => chunk.push(record),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK_RECORDS);
                chunk.push(record);
                chunks.push(chunk);
            }
        }
    }

    /// Every record so far, in arrival order (appends from concurrent requests may land out of order).
    pub fn snapshot(&self) -> Vec<AdmissionRecord> {
        let mut records: Vec<AdmissionRecord> = {
            let chunks = self.chunks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            chunks.iter().flatten().cloned().collect()
        };
        records.sort_by_key(|record| record.at_ns);
        records
    }
}

/// The most admitted requests (or tokens) that any interval `[t, t + window_ns)` holds, for one key or
/// all: what a strict window limit of that size must allow, so a test can prove none was exceeded.
/// `records` are in arrival order, as `AdmissionLog::snapshot` returns them.
pub fn peak_admitted(records: &[AdmissionRecord], window_ns: u64, unit: Unit, key: Option<&str>) -> u64 {
    if window_ns == 0 {
        return 0; // an empty interval holds nothing
    }
    let counted: Vec<(u64, u64)> = records
        .iter()
        .filter(|record| record.admitted && key.is_none_or(|key| *record.key == *key))
        .map(|record| (record.at_ns, if unit == Unit::Tokens { record.tokens } else { 1 }))
        .collect();
    let (mut oldest, mut inside, mut peak) = (0, 0, 0);
    for &(at_ns, cost) in &counted {
        inside += cost;
        while counted[oldest].0 + window_ns <= at_ns {
            inside -= counted[oldest].1;
            oldest += 1;
        }
        peak = peak.max(inside);
    }
    peak
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(at_ns: u64) -> AdmissionRecord {
        AdmissionRecord {
            at_ns,
            key: Arc::from("k"),
            endpoint: Endpoint::Models,
            tokens: 0,
            status: 200,
            admitted: true,
            fault: None,
        }
    }

    #[test]
    fn keeps_every_record_across_chunks_in_arrival_order() {
        let log = AdmissionLog::new(true);
        let n = 2 * CHUNK_RECORDS as u64 + 5;
        for at in (0..n).rev() {
            log.append(record(at));
        }
        let records = log.snapshot();
        assert_eq!(records.len() as u64, n);
        assert!(records.windows(2).all(|pair| pair[0].at_ns <= pair[1].at_ns));
    }

    #[test]
    fn peak_counts_the_fullest_window_of_admitted_records() {
        let mut records: Vec<AdmissionRecord> = [0, 5, 9, 10, 12, 30].into_iter().map(record).collect();
        records[4].admitted = false;
        records[2].tokens = 7;
        records[3].key = Arc::from("other");
        assert_eq!(peak_admitted(&records, 10, Unit::Requests, None), 3);
        assert_eq!(peak_admitted(&records, 10, Unit::Tokens, None), 7);
        assert_eq!(peak_admitted(&records, 10, Unit::Requests, Some("k")), 3);
        assert_eq!(peak_admitted(&records, 5, Unit::Requests, Some("k")), 2);
        assert_eq!(peak_admitted(&records, 4, Unit::Requests, Some("k")), 1);
        assert_eq!(peak_admitted(&records, 100, Unit::Requests, Some("other")), 1);
    }

    #[test]
    fn a_record_costs_40_bytes_as_the_docs_say() {
        assert_eq!(std::mem::size_of::<AdmissionRecord>(), 40);
    }

    #[test]
    fn a_disabled_log_keeps_nothing() {
        let log = AdmissionLog::new(false);
        log.append(record(1));
        assert!(log.snapshot().is_empty());
    }
}
