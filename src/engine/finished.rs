//! The requests a job finished, as the metrics record them (only when asked: `JobConfig::record`):
//! what was asked, what came back and how long it took, read from the output line that was written.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::engine::input::Request;

/// One request, answered or failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// The input's url (`/v1/chat/completions`).
    pub endpoint: String,
    /// The model the request asked for.
    pub model: Option<String>,
    /// The answer's HTTP status; none when no answer came.
    pub status: Option<u16>,
    /// Why it failed (the report's reason: `http_500`, `timeout`, ...); none when it succeeded.
    pub failure: Option<String>,
    /// From the first admission asked to the line written: waits, retries and the answer included.
    pub duration: Duration,
    /// When its line was written, on the wall clock (for a span's end).
    pub ended: SystemTime,
    /// The model that answered, and its `usage` object as JSON (read by the metrics, which name the
    /// token types).
    pub response_model: Option<String>,
    pub usage: Option<String>,
}

impl Finished {
    /// Reads `request` (asking for `model`) and the output `line` written for it.
    pub fn read(request: &Request, model: Option<String>, line: &[u8], failure: Option<&str>, duration: Duration) -> Self {
        let written: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
        let response = &written["response"];
        let body = &response["body"];
        Self {
            endpoint: request.url.clone(),
            model,
            status: response["status_code"].as_u64().and_then(|status| u16::try_from(status).ok()),
            failure: failure.map(str::to_owned),
            duration,
            ended: SystemTime::now(),
            response_model: body["model"].as_str().map(str::to_owned),
            usage: body.get("usage").filter(|usage| usage.is_object()).map(Value::to_string),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::input::parse;
    use crate::engine::output::{Answer, line};

    fn request(body: &str) -> Request {
        parse(&format!(r#"{{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {body}}}"#), 1).unwrap()
    }

    #[test]
    fn an_answer_gives_its_status_model_and_usage() {
        let asked = request(r#"{"model": "gpt-4.1", "messages": []}"#);
        let body = br#"{"model": "gpt-4.1-2025", "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}"#;
        let written = line("a", Ok(Answer { status_code: 200, request_id: None, body, json: true }));
        let finished = Finished::read(&asked, Some("gpt-4.1".into()), &written, None, Duration::from_millis(5));
        assert!(finished.ended <= SystemTime::now());
        assert_eq!(
            finished,
            Finished {
                endpoint: "/v1/chat/completions".into(),
                model: Some("gpt-4.1".into()),
                status: Some(200),
                failure: None,
                duration: Duration::from_millis(5),
                ended: finished.ended,
                response_model: Some("gpt-4.1-2025".into()),
                usage: Some(r#"{"completion_tokens":3,"prompt_tokens":7,"total_tokens":10}"#.into()),
            }
        );
    }

    #[test]
    fn a_failure_without_an_answer_or_a_body_that_is_not_json_reads_what_there_is() {
        let asked = request(r#"{"model": "m"}"#);
        let finished = Finished::read(&asked, Some("m".into()), &line("a", Err(("timeout", "no answer"))), Some("timeout"), Duration::ZERO);
        assert_eq!((finished.status, finished.failure.as_deref(), finished.usage), (None, Some("timeout"), None));
        let text = line("a", Ok(Answer { status_code: 502, request_id: None, body: b"<html>", json: false }));
        let finished = Finished::read(&asked, None, &text, Some("http_502"), Duration::ZERO);
        assert_eq!((finished.status, finished.response_model), (Some(502), None));
    }
}
