//! LLM tokens of a request before it is sent (an estimate the limiter admits), and after (the `usage`
//! its answer reports, which settles the estimate).
//!
//! The estimate is `holysheep._tokens.estimate_request_tokens`'s rule without tiktoken: the prompt (chat
//! messages with the chat format's overhead, or embeddings / completions input) at a token per four
//! ASCII characters and one per other character, plus the completion it may produce (`max_tokens`).
//! The usage bound is `holysheep.transport._answers.MOST_TOKENS_PER_ANSWER`.

use serde::Deserialize;
use serde_json::Value;

/// Tokens the chat format adds around each message (role, separators).
const MESSAGE_OVERHEAD: u64 = 4;
/// Tokens every chat reply is primed with.
const REPLY_PRIMING: u64 = 3;
/// The most tokens one answer can count: ten times the largest context window any model offers.
pub const MOST_TOKENS_PER_ANSWER: u64 = 100_000_000;

/// What a request's body says about its cost: its model, and the tokens it will count.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub model: Option<String>,
    pub tokens: u64,
}

fn text_tokens(text: &str) -> u64 {
    let ascii = text.bytes().filter(u8::is_ascii).count() as u64;
    ascii.div_ceil(4) + (text.chars().count() as u64 - ascii)
}

fn content_tokens(content: &Value) -> u64 {
    match content {
        Value::String(text) => text_tokens(text),
        Value::Array(parts) => parts.iter().filter_map(|part| part.get("text")?.as_str()).map(text_tokens).sum(),
        _ => 0,
    }
}

/// The model and estimated tokens of a request body (a JSON object).
pub fn estimate(body: &str) -> Estimate {
    let Ok(Value::Object(body)) = serde_json::from_str::<Value>(body) else { return Estimate { model: None, tokens: 0 } };
    let mut prompt = 0;
    if let Some(Value::Array(messages)) = body.get("messages") {
        prompt += REPLY_PRIMING + messages.iter().map(|m| MESSAGE_OVERHEAD + m.get("content").map_or(0, content_tokens)).sum::<u64>();
    }
    for key in ["input", "prompt"] {
        prompt += match body.get(key) {
            Some(Value::String(text)) => text_tokens(text),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(text_tokens).sum(),
            _ => 0,
        };
    }
    let completion = ["max_completion_tokens", "max_tokens"].iter().find_map(|key| body.get(*key)?.as_u64().filter(|&n| n > 0)).unwrap_or(0);
    let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
    Estimate { model, tokens: prompt.saturating_add(completion) }
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
    fn a_chat_request_counts_its_messages_the_format_and_its_completion() {
        let body = r#"{"model": "gpt-4.1", "messages": [{"role": "user", "content": "abcdefgh"}], "max_tokens": 5}"#;
        assert_eq!(estimate(body), Estimate { model: Some("gpt-4.1".into()), tokens: 3 + 4 + 2 + 5 });
    }

    #[test]
    fn embeddings_input_counts_every_text_and_non_ascii_one_a_character() {
        let body = r#"{"model": "e", "input": ["abcd", "日本"]}"#;
        assert_eq!(estimate(body).tokens, 1 + 2);
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
