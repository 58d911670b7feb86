//! The traffic a preview plays: when each request arrives and how many LLM tokens it carries, read
//! from k6-style stages ("ramp 0->50/s over 1m, 50/s for 10m"), a constant rate, a list of arrival
//! times, or a recorded JSONL trace. Every form is read here, and a bad one is refused naming the part
//! that could not be read.
//!
//! Arrivals of the rate stages are evenly spaced, as k6's arrival-rate executors start them: the
//! request count grows as the integral of the rate, and a request arrives each time it crosses a whole
//! number (the first at the start). Stages follow one another without a gap or a jump in that count.

use crate::core::clock::secs_to_ns;
use crate::core::error::{Error, Result};

/// The most requests one preview plays: about 200 MB of simulation state.
pub const MAX_ARRIVALS: usize = 10_000_000;

/// One request: when it arrives (ns from the start) and its LLM tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub at_ns: u64,
    pub tokens: u64,
}

/// One stage of a traffic string.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stage {
    /// `per_s` requests per second for `secs` seconds.
    Constant { per_s: f64, secs: f64 },
    /// From `from_per_s` to `to_per_s` linearly over `secs` seconds.
    Ramp { from_per_s: f64, to_per_s: f64, secs: f64 },
    /// `count` requests at the stage's start.
    AtOnce { count: u64 },
}

const STAGE_FORMS: &str = "\"<rate> for <duration>\", \"ramp <rate>-><rate> over <duration>\" or \"<n> at once\" \
                           (rates like 50/s, 600/m, 1000/h; durations like 90s, 10m, 1h30m, 500ms)";

fn refuse(message: String) -> Error {
    Error::config("traffic", message)
}

/// A duration written as k6 writes them: `1h30m`, `10m`, `45s`, `500ms`, `1.5s`; a bare number is
/// seconds.
pub fn parse_duration(text: &str) -> Option<f64> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then_some(secs);
    }
    let (mut total, mut rest) = (0.0, text);
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let secs_per_unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3_600.0,
            "d" => 86_400.0,
            _ => return None,
        };
        total += number * secs_per_unit;
        rest = &rest[unit_len..];
    }
    (!text.is_empty() && total.is_finite()).then_some(total)
}

/// A rate (`50/s`, `600/m`, `1000/h`) in requests per second; `default_unit` reads a bare number (the
/// first rate of a ramp takes the unit of the second).
fn parse_rate(text: &str, default_unit: Option<&str>) -> std::result::Result<f64, String> {
    let text = text.trim();
    let (number, unit) = match text.split_once('/') {
        Some((number, unit)) => (number.trim(), unit.trim()),
        None => (text, default_unit.unwrap_or("")),
    };
    let per_s: f64 = match unit {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3_600.0,
        _ => return Err(format!("cannot read the rate {text:?}: write it like 50/s, 600/m or 1000/h")),
    };
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n / per_s),
        Ok(n) if n < 0.0 => Err(format!("the rate {text:?} is negative: a rate must be 0 or more")),
        _ => Err(format!("cannot read the rate {text:?}: write it like 50/s, 600/m or 1000/h")),
    }
}

fn parse_stage_duration(text: &str) -> std::result::Result<f64, String> {
    parse_duration(text).ok_or_else(|| format!("cannot read the duration {:?}: write it like 90s, 10m or 1h30m", text.trim()))
}

/// The unit written after the `/` of a rate, if any.
fn unit_of(rate: &str) -> Option<&str> {
    rate.split_once('/').map(|(_, unit)| unit.trim())
}

fn parse_stage(text: &str) -> std::result::Result<Stage, String> {
    let text = text.trim();
    if let Some(ramp) = text.strip_prefix("ramp ") {
        let (rates, secs) = ramp.split_once(" over ").ok_or("a ramp reads \"ramp <rate>-><rate> over <duration>\"")?;
        let (from, to) = rates.split_once("->").ok_or("a ramp reads \"ramp <rate>-><rate> over <duration>\"")?;
        let to_per_s = parse_rate(to, None)?;
        let from_per_s = parse_rate(from, unit_of(to))?;
        return Ok(Stage::Ramp { from_per_s, to_per_s, secs: parse_stage_duration(secs)? });
    }
    if let Some(count) = text.strip_suffix(" at once") {
        return match count.trim().parse::<u64>() {
            Ok(count) => Ok(Stage::AtOnce { count }),
            Err(_) => Err(format!("cannot read the count {:?}: a whole number of requests", count.trim())),
        };
    }
    if let Some((rate, secs)) = text.split_once(" for ") {
        return Ok(Stage::Constant { per_s: parse_rate(rate, None)?, secs: parse_stage_duration(secs)? });
    }
    Err(format!("expected {STAGE_FORMS}"))
}

/// Reads a stages string: stages separated by commas.
pub fn parse_stages(text: &str) -> Result<Vec<Stage>> {
    if text.trim().is_empty() {
        return Err(refuse(format!("is empty; give stages like {STAGE_FORMS}")));
    }
    text.split(',')
        .enumerate()
        .map(|(index, part)| {
            parse_stage(part).map_err(|why| refuse(format!("cannot read stage {} {:?}: {why}", index + 1, part.trim())))
        })
        .collect()
}

/// Lays out arrivals while the count grows as the integral of the rate, through each stage.
struct Layout {
    arrivals: Vec<Arrival>,
    tokens: u64,
    /// Where the current stage starts, in seconds, and the count reached there.
    start_s: f64,
    count: f64,
    /// The whole count at which the next request arrives.
    next: f64,
}

impl Layout {
    /// Refuses a stage that would take the arrivals past [`MAX_ARRIVALS`], before laying any out.
    fn room_for(&self, more: f64) -> Result<()> {
        if self.arrivals.len() as f64 + more > MAX_ARRIVALS as f64 {
            return Err(refuse(format!("asks for more than {MAX_ARRIVALS} requests; preview a shorter stretch")));
        }
        Ok(())
    }

    fn push(&mut self, at_s: f64) -> Result<()> {
        let at_ns = secs_to_ns(at_s).ok_or_else(|| refuse(format!("an arrival at {at_s} s is out of range")))?;
        self.arrivals.push(Arrival { at_ns, tokens: self.tokens });
        Ok(())
    }

    /// `from` to `to` requests per second, linearly, for `secs` (constant when they are equal).
    fn rate(&mut self, from: f64, to: f64, secs: f64) -> Result<()> {
        let slope = if secs > 0.0 { (to - from) / secs } else { 0.0 };
        let added = from * secs + slope * secs * secs / 2.0;
        self.room_for(added)?;
        while self.next < self.count + added {
            let k = self.next - self.count;
            // The instant the count has grown by k: from * t + slope * t² / 2 = k.
            let t = if slope.abs() < 1e-12 { k / from } else { (-from + (from * from + 2.0 * slope * k).max(0.0).sqrt()) / slope };
            self.push(self.start_s + t.clamp(0.0, secs))?;
            self.next += 1.0;
        }
        self.count += added;
        self.start_s += secs;
        Ok(())
    }

    fn at_once(&mut self, count: u64) -> Result<()> {
        self.room_for(count as f64)?;
        for _ in 0..count {
            self.push(self.start_s)?;
        }
        self.count += count as f64;
        self.next += count as f64;
        Ok(())
    }
}

/// The arrivals of `stages`, each carrying `tokens`.
pub fn from_stages(stages: &[Stage], tokens: u64) -> Result<Vec<Arrival>> {
    let mut layout = Layout { arrivals: Vec::new(), tokens, start_s: 0.0, count: 0.0, next: 0.0 };
    for stage in stages {
        match *stage {
            Stage::Constant { per_s, secs } => layout.rate(per_s, per_s, secs)?,
            Stage::Ramp { from_per_s, to_per_s, secs } => layout.rate(from_per_s, to_per_s, secs)?,
            Stage::AtOnce { count } => layout.at_once(count)?,
        }
    }
    Ok(layout.arrivals)
}

/// `per_s` requests per second for `secs` seconds, each carrying `tokens`.
pub fn constant(per_s: f64, secs: f64, tokens: u64) -> Result<Vec<Arrival>> {
    if !(per_s.is_finite() && per_s >= 0.0) {
        return Err(refuse(format!("a rate must be a number of requests per second, 0 or more, got {per_s}")));
    }
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(Error::config("duration", format!("must be a number of seconds, 0 or more, got {secs}")));
    }
    from_stages(&[Stage::Constant { per_s, secs }], tokens)
}

/// Arrivals at the given instants (seconds from the start, in any order), each with its tokens.
pub fn from_times(times: impl IntoIterator<Item = (f64, u64)>) -> Result<Vec<Arrival>> {
    let mut arrivals = Vec::new();
    for (index, (at_s, tokens)) in times.into_iter().enumerate() {
        let at_ns = secs_to_ns(at_s)
            .ok_or_else(|| refuse(format!("arrival {index} is at {at_s} s: times must be seconds from the start, 0 or more")))?;
        if arrivals.len() >= MAX_ARRIVALS {
            return Err(refuse(format!("holds more than {MAX_ARRIVALS} requests")));
        }
        arrivals.push(Arrival { at_ns, tokens });
    }
    arrivals.sort_by_key(|arrival| arrival.at_ns);
    Ok(arrivals)
}

/// A recorded trace: one JSON object per line, `{"at": seconds, "tokens": n}` (`tokens` optional,
/// `default_tokens` when absent); blank lines are skipped. `name` names the file in errors.
pub fn from_jsonl(text: &str, name: &str, default_tokens: u64) -> Result<Vec<Arrival>> {
    let mut times = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at_line = |why: String| refuse(format!("line {} of {name}: {why}", index + 1));
        let value: serde_json::Value = serde_json::from_str(line).map_err(|err| at_line(format!("not JSON ({err})")))?;
        let at = value.get("at").and_then(serde_json::Value::as_f64).filter(|at| at.is_finite() && *at >= 0.0);
        let at = at.ok_or_else(|| at_line("needs \"at\": the arrival in seconds from the start, 0 or more".into()))?;
        let tokens = match value.get("tokens") {
            None | Some(serde_json::Value::Null) => default_tokens,
            Some(tokens) => tokens.as_u64().ok_or_else(|| at_line(format!("\"tokens\" must be a whole number, 0 or more, got {tokens}")))?,
        };
        times.push((at, tokens));
    }
    if times.is_empty() {
        return Err(refuse(format!("{name} holds no requests")));
    }
    from_times(times)
}

/// A traffic string: a path to a JSONL trace (ending in `.jsonl`), or stages.
pub fn parse(text: &str, tokens: u64) -> Result<Vec<Arrival>> {
    if text.trim_end().ends_with(".jsonl") {
        let path = text.trim();
        let contents = std::fs::read_to_string(path).map_err(|err| refuse(format!("cannot read the trace {path:?}: {err}")))?;
        return from_jsonl(&contents, path, tokens);
    }
    from_stages(&parse_stages(text)?, tokens)
}

/// Seconds to whole nanoseconds for the tests' arithmetic.
#[cfg(test)]
fn secs(s: f64) -> u64 {
    (s * crate::core::clock::NS_PER_SEC as f64).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_and_message(result: Result<Vec<Arrival>>) -> (String, String) {
        match result {
            Err(Error::Config { field, message }) => (field, message),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn durations_read_as_k6_writes_them() {
        assert_eq!(parse_duration("10m"), Some(600.0));
        assert_eq!(parse_duration("1h30m"), Some(5_400.0));
        assert_eq!(parse_duration("500ms"), Some(0.5));
        assert_eq!(parse_duration("1.5s"), Some(1.5));
        assert_eq!(parse_duration("90"), Some(90.0));
        assert_eq!(parse_duration("10 minutes"), None);
        assert_eq!(parse_duration("-5s"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn a_constant_stage_spaces_its_requests_evenly() {
        let arrivals = parse("2/s for 3s", 7).unwrap();
        let at: Vec<u64> = arrivals.iter().map(|a| a.at_ns).collect();
        assert_eq!(at, [0, secs(0.5), secs(1.0), secs(1.5), secs(2.0), secs(2.5)]);
        assert!(arrivals.iter().all(|a| a.tokens == 7));
        assert_eq!(parse("120/m for 1m", 0).unwrap().len(), 120);
        assert_eq!(parse("3600/h for 10s", 0).unwrap().len(), 10);
    }

    #[test]
    fn a_ramp_arrives_as_the_integral_of_its_rate() {
        // 0 -> 10/s over 10 s: 50 requests; the count reaches k at t = sqrt(2k).
        let arrivals = parse("ramp 0->10/s over 10s", 0).unwrap();
        assert_eq!(arrivals.len(), 50);
        assert_eq!(arrivals[8].at_ns, secs(4.0));
        assert_eq!(arrivals[32].at_ns, secs(8.0));
    }

    #[test]
    fn stages_follow_on_without_a_gap() {
        let arrivals = parse("ramp 0->50/s over 1m, 50/s for 10m", 800).unwrap();
        assert_eq!(arrivals.len(), 1_500 + 30_000);
        let gaps: Vec<u64> = arrivals.windows(2).skip(1_490).take(20).map(|w| w[1].at_ns - w[0].at_ns).collect();
        assert!(gaps.iter().all(|&gap| (19_000_000..=21_000_000).contains(&gap)), "{gaps:?}");
        let burst = parse("5 at once, 1/s for 2s, 3 at once", 0).unwrap();
        let at: Vec<u64> = burst.iter().map(|a| a.at_ns).collect();
        assert_eq!(at, [0, 0, 0, 0, 0, 0, secs(1.0), secs(2.0), secs(2.0), secs(2.0)]);
    }

    #[test]
    fn a_bad_stage_is_named_by_its_place_and_text() {
        let (field, message) = field_and_message(parse("50/s for 1m, 50/s fr 10m", 0));
        assert_eq!(field, "traffic");
        assert!(message.contains("stage 2 \"50/s fr 10m\""), "{message}");
        let (_, message) = field_and_message(parse("-5/s for 1m", 0));
        assert!(message.contains("negative"), "{message}");
        let (_, message) = field_and_message(parse("ramp 0->50/s over soon", 0));
        assert!(message.contains("\"soon\""), "{message}");
        let (_, message) = field_and_message(parse("50/fortnight for 1m", 0));
        assert!(message.contains("50/fortnight"), "{message}");
        assert_eq!(field_and_message(parse("   ", 0)).0, "traffic");
        assert_eq!(field_and_message(constant(-1.0, 10.0, 0)).0, "traffic");
        assert_eq!(field_and_message(constant(1.0, f64::NAN, 0)).0, "duration");
    }

    #[test]
    fn a_preview_too_large_is_refused_before_it_fills_memory() {
        let (field, message) = field_and_message(parse("1000000/s for 1h", 0));
        assert_eq!(field, "traffic");
        assert!(message.contains("more than"), "{message}");
    }

    #[test]
    fn times_are_sorted_and_checked() {
        let arrivals = from_times([(2.0, 1), (0.5, 2)]).unwrap();
        assert_eq!(arrivals, [Arrival { at_ns: secs(0.5), tokens: 2 }, Arrival { at_ns: secs(2.0), tokens: 1 }]);
        let (field, message) = field_and_message(from_times([(1.0, 0), (-1.0, 0)]));
        assert_eq!(field, "traffic");
        assert!(message.contains("arrival 1"), "{message}");
    }

    #[test]
    fn a_trace_reads_times_and_tokens_per_line() {
        let trace = "{\"at\": 0.25, \"tokens\": 900}\n\n{\"at\": 0.0}\n";
        let arrivals = from_jsonl(trace, "t.jsonl", 5).unwrap();
        assert_eq!(arrivals, [Arrival { at_ns: 0, tokens: 5 }, Arrival { at_ns: secs(0.25), tokens: 900 }]);
        let (_, message) = field_and_message(from_jsonl("{\"at\": 1}\n{\"tokens\": 3}\n", "t.jsonl", 0));
        assert!(message.contains("line 2 of t.jsonl"), "{message}");
        let (_, message) = field_and_message(from_jsonl("nope\n", "t.jsonl", 0));
        assert!(message.contains("not JSON"), "{message}");
        let (_, message) = field_and_message(parse("/nonexistent/trace.jsonl", 0));
        assert!(message.contains("cannot read the trace"), "{message}");
    }
}
