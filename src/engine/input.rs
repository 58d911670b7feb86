//! The job's input: lines in the OpenAI Batch API's request format, read one at a time.
//!
//! `{"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`. The whole
//! file is checked before anything is sent ([`scan`]): every line must be such a request, to an endpoint
//! the Batch API serves, and no custom_id may appear twice. Blank lines are skipped.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::core::Error;
use crate::engine::JobError;

/// The endpoints the OpenAI Batch API takes, so the same file can go to `/v1/batches` later.
pub const ENDPOINTS: [&str; 5] = ["/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/moderations", "/v1/responses"];

/// How many problems one error lists before "and N more".
const SHOWN: usize = 5;

/// One request of the input.
#[derive(Debug)]
pub struct Request {
    /// 1-based line number in the input file.
    pub line: u64,
    pub custom_id: String,
    pub url: String,
    /// The body as written: sent as it is.
    pub body: Box<RawValue>,
}

#[derive(Deserialize)]
struct Line<'a> {
    custom_id: Option<serde_json::Value>,
    method: Option<&'a str>,
    url: Option<&'a str>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
}

/// A custom_id as a 128-bit fingerprint: what the duplicate check and the resume set keep, so their
/// memory is 16 bytes a request whatever the ids' length (two ids colliding: about 1 in 10^29 for a
/// million of them).
pub fn fingerprint(custom_id: &str) -> u128 {
    let half = |salt: u8| {
        let mut hasher = DefaultHasher::new();
        salt.hash(&mut hasher);
        custom_id.hash(&mut hasher);
        hasher.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

/// Reads one line as a request, or says what is wrong with it (without the line number).
pub fn parse(text: &str, line: u64) -> Result<Request, String> {
    let parsed: Line<'_> = serde_json::from_str(text).map_err(|err| format!("not a JSON object of a request ({err})"))?;
    let custom_id = match parsed.custom_id {
        Some(serde_json::Value::String(id)) if !id.is_empty() => id,
        Some(other) => return Err(format!("custom_id must be a non-empty string, got {other}")),
        None => return Err("no custom_id".to_owned()),
    };
    if let Some(method) = parsed.method.filter(|method| *method != "POST") {
        return Err(format!("method must be \"POST\", got {method:?}"));
    }
    let url = parsed.url.ok_or("no url")?;
    if !ENDPOINTS.contains(&url) {
        return Err(format!("unknown url {url:?}: must be one of {}", ENDPOINTS.join(", ")));
    }
    let body = parsed.body.filter(|body| body.get().starts_with('{')).ok_or("body must be a JSON object")?;
    Ok(Request { line, custom_id, url: url.to_owned(), body: body.to_owned() })
}

/// The input's lines that hold something, numbered from 1.
pub fn lines(path: &Path) -> io::Result<impl Iterator<Item = io::Result<(u64, String)>>> {
    let reader = BufReader::with_capacity(1 << 16, File::open(path)?);
    Ok(reader
        .lines()
        .enumerate()
        .map(|(index, line)| line.map(|text| (index as u64 + 1, text)))
        .filter(|line| !matches!(line, Ok((_, text)) if text.trim().is_empty())))
}

/// What the check of the whole input found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Requests in the file.
    pub requests: u64,
}

/// Checks every line of the input before anything is sent; `each` sees every request. Refuses the file
/// with a `ConfigError` (field `input`) naming the lines at fault: lines that are not requests, and
/// custom_ids that appear more than once.
pub fn scan(path: &Path, mut each: impl FnMut(&Request)) -> Result<Scan, JobError> {
    let mut first_seen: HashMap<u128, u64> = HashMap::new();
    let mut bad = Vec::new();
    let mut duplicates: Vec<(u64, u64, String)> = Vec::new();
    let mut scan = Scan::default();
    for line in lines(path).map_err(|err| JobError::io("input", path, err))? {
        let (number, text) = line.map_err(|err| JobError::io("input", path, err))?;
        match parse(&text, number) {
            Ok(request) => {
                scan.requests += 1;
                match first_seen.entry(fingerprint(&request.custom_id)) {
                    std::collections::hash_map::Entry::Occupied(first) => {
                        duplicates.push((*first.get(), number, request.custom_id.clone()));
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(number);
                    }
                }
                each(&request);
            }
            Err(why) => bad.push(format!("line {number}: {why}")),
        }
    }
    let duplicates = duplicates.into_iter().map(|(first, again, id)| format!("line {again}: custom_id {id:?} already on line {first}"));
    let problems: Vec<String> = bad.into_iter().chain(duplicates).collect();
    if problems.is_empty() {
        return Ok(scan);
    }
    let more = problems.len().saturating_sub(SHOWN);
    let mut message = format!("{} has {} bad line(s); nothing was sent: {}", path.display(), problems.len(), problems[..problems.len().min(SHOWN)].join("; "));
    if more > 0 {
        message.push_str(&format!("; and {more} more"));
    }
    Err(JobError::Config(Error::config("input", message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(id: &str) -> String {
        format!(r#"{{"custom_id": "{id}", "method": "POST", "url": "/v1/chat/completions", "body": {{"model": "m", "messages": []}}}}"#)
    }

    #[test]
    fn a_batch_api_line_is_a_request_with_its_body_as_written() {
        let request = parse(&chat("a"), 3).unwrap();
        assert_eq!((request.line, request.custom_id.as_str(), request.url.as_str()), (3, "a", "/v1/chat/completions"));
        assert_eq!(request.body.get(), r#"{"model": "m", "messages": []}"#);
    }

    #[test]
    fn lines_that_are_not_requests_say_why() {
        for (text, why) in [
            ("not json", "not a JSON object"),
            (r#"{"method": "POST", "url": "/v1/embeddings", "body": {}}"#, "no custom_id"),
            (r#"{"custom_id": 7, "url": "/v1/embeddings", "body": {}}"#, "custom_id must be a non-empty string"),
            (r#"{"custom_id": "a", "url": "/v1/images", "body": {}}"#, "unknown url \"/v1/images\""),
            (r#"{"custom_id": "a", "method": "GET", "url": "/v1/embeddings", "body": {}}"#, "method must be"),
            (r#"{"custom_id": "a", "url": "/v1/embeddings", "body": []}"#, "body must be a JSON object"),
        ] {
            let err = parse(text, 1).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn fingerprints_differ_for_different_ids_and_agree_for_the_same() {
        assert_eq!(fingerprint("req-1"), fingerprint("req-1"));
        assert_ne!(fingerprint("req-1"), fingerprint("req-2"));
    }
}
