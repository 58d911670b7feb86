//! LLM tokens of a request before it is sent (the core's estimate, which the limiter admits), and after
//! (the `usage` its answer reports, which settles the estimate). The engine has no exact encoding, so
//! text counts by the core's heuristic.

use std::convert::Infallible;

use serde::Deserialize;
use serde_json::Value;

use crate::core::tokens::{self, MOST_TOKENS_PER_ANSWER, heuristic_tokens};

/// What a request's body says about its cost: its model, and the tokens it will count.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub model: Option<String>,
    pub tokens: u64,
}

/// The model and estimated tokens of a request body (a JSON object).
pub fn estimate(body: &str) -> Estimate {
    let Ok(body) = serde_json::from_str::<Value>(body) else { return Estimate { model: None, tokens: 0 } };
    let Ok(tokens) = tokens::estimate::<_, Infallible>(&&body, &mut |text| Ok(heuristic_tokens(text)));
    let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
    Estimate { model, tokens }
}

#[derive(Deserialize)]
struct Answer {
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Usage {
    total_tokens: Option<Value>,
}

/// Reads an answer's body: `Err` when it is not a JSON object; else the `usage.total_tokens` it
/// reports, when that can be real: a whole number no larger than [`MOST_TOKENS_PER_ANSWER`] (settling a
/// larger one would block every token-carrying request for a whole window).
pub fn usage(body: &[u8]) -> Result<Option<u64>, serde_json::Error> {
    let answer: Answer = serde_json::from_slice(body)?;
    Ok(answer.usage.and_then(|usage| usage.total_tokens?.as_u64()).filter(|&tokens| tokens <= MOST_TOKENS_PER_ANSWER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_its_model_and_the_cores_estimate() {
        let body = r#"{"model": "gpt-4.1", "messages": [{"role": "user", "content": "abcdefgh"}], "max_tokens": 5}"#;
        assert_eq!(estimate(body), Estimate { model: Some("gpt-4.1".into()), tokens: 3 + 4 + 2 + 5 });
        assert_eq!(estimate("not json"), Estimate { model: None, tokens: 0 });
    }

    #[test]
    fn usage_is_read_only_when_it_can_be_real() {
        assert_eq!(usage(br#"{"usage": {"total_tokens": 12}}"#).unwrap(), Some(12));
        assert_eq!(usage(br#"{"usage": {"total_tokens": 999999999999999999}}"#).unwrap(), None);
        assert_eq!(usage(br#"{"usage": {"total_tokens": 1e+308}}"#).unwrap(), None);
        assert_eq!(usage(br#"{"data": []}"#).unwrap(), None);
        assert!(usage(b"{\"usage\": {").is_err() && usage(b"[]").is_err());
    }
}
