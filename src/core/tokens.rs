//! The LLM tokens a request will count before it is sent: the one rule the transport, the framework
//! adapters and the batch engine estimate with, over any representation of its JSON body (serde_json's
//! in the engine, Python's objects in the bindings). The estimate is what the limiter admits; the
//! `usage` of the answer settles it, so a rough one costs little.
//!
//! The rule: a chat request's messages (each with the chat format's overhead, and the reply's priming),
//! the `input` or `prompt` of embeddings and completions, and the completion it may produce
//! (`max_completion_tokens`, else `max_tokens`). Text is counted by the caller's counter: an exact
//! encoding where one is installed, else [`heuristic_tokens`].

/// Tokens the chat format adds around each message (role, separators).
pub const MESSAGE_OVERHEAD: u64 = 4;
/// Tokens every chat reply is primed with.
pub const REPLY_PRIMING: u64 = 3;
/// The most tokens one answer can count: ten times the largest context window any model offers (10
/// million tokens), since an answer's prompt and completion fit in its model's context. Settling a
/// larger `usage` would block every token-carrying request for a whole window.
pub const MOST_TOKENS_PER_ANSWER: u64 = 100_000_000;

/// A JSON value as the estimate reads it; a value of another shape than asked reads as `None`.
pub trait Json: Sized {
    /// Whether this is an object (a mapping).
    fn is_object(&self) -> bool;
    /// The member `key` of an object.
    fn member(&self, key: &str) -> Option<Self>;
    /// The elements of an array.
    fn elements(&self) -> Option<impl Iterator<Item = Self>>;
    /// A string.
    fn text(&self) -> Option<&str>;
    /// A whole number from 0 that fits 64 bits.
    fn whole_number(&self) -> Option<u64>;
}

/// A token per four ASCII characters and one per other character: CJK text runs about one token per
/// character, most other scripts a little under.
pub fn heuristic_tokens(text: &str) -> u64 {
    let ascii = text.bytes().filter(u8::is_ascii).count() as u64;
    ascii.div_ceil(4) + (text.chars().count() as u64 - ascii)
}

/// The tokens `body` will count against a tokens limit, with `count` counting each text. Values of
/// another shape than the API's (a message that is not an object, a part without text) count nothing.
pub fn estimate<J: Json, E>(body: &J, count: &mut impl FnMut(&str) -> Result<u64, E>) -> Result<u64, E> {
    let mut tokens = 0u64;
    if let Some(messages) = body.member("messages").as_ref().and_then(Json::elements) {
        tokens = REPLY_PRIMING;
        for message in messages.filter(Json::is_object) {
            let content = match message.member("content") {
                Some(content) => content_tokens(&content, count)?,
                None => 0,
            };
            tokens = tokens.saturating_add(MESSAGE_OVERHEAD).saturating_add(content);
        }
    }
    for key in ["input", "prompt"] {
        if let Some(value) = body.member(key) {
            tokens = tokens.saturating_add(texts_tokens(&value, count)?);
        }
    }
    let completion = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|key| body.member(key)?.whole_number().filter(|&tokens| tokens > 0))
        .unwrap_or(0);
    Ok(tokens.saturating_add(completion))
}

/// A message's content: a string, or a list of parts of which only the text is counted.
fn content_tokens<J: Json, E>(content: &J, count: &mut impl FnMut(&str) -> Result<u64, E>) -> Result<u64, E> {
    let Some(parts) = content.elements() else { return content.text().map_or(Ok(0), count) };
    let mut tokens = 0u64;
    for text in parts.filter_map(|part| part.member("text")) {
        tokens = tokens.saturating_add(text.text().map_or(Ok(0), &mut *count)?);
    }
    Ok(tokens)
}

/// A string, or the strings in an array (`input` and `prompt` take one or many).
fn texts_tokens<J: Json, E>(value: &J, count: &mut impl FnMut(&str) -> Result<u64, E>) -> Result<u64, E> {
    let Some(items) = value.elements() else { return value.text().map_or(Ok(0), count) };
    let mut tokens = 0u64;
    for item in items {
        tokens = tokens.saturating_add(item.text().map_or(Ok(0), &mut *count)?);
    }
    Ok(tokens)
}

impl Json for &serde_json::Value {
    fn is_object(&self) -> bool {
        serde_json::Value::is_object(self)
    }

    fn member(&self, key: &str) -> Option<Self> {
        self.get(key)
    }

    fn elements(&self) -> Option<impl Iterator<Item = Self>> {
        Some(self.as_array()?.iter())
    }

    fn text(&self) -> Option<&str> {
        self.as_str()
    }

    fn whole_number(&self) -> Option<u64> {
        self.as_u64()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use serde_json::{Value, json};

    use super::*;

    fn heuristic(body: &Value) -> u64 {
        estimate::<_, Infallible>(&body, &mut |text| Ok(heuristic_tokens(text))).unwrap()
    }

    #[test]
    fn text_counts_a_token_per_four_ascii_characters_and_one_per_other_character() {
        assert_eq!(heuristic_tokens(""), 0);
        assert_eq!(heuristic_tokens("abcdefgh"), 2);
        assert_eq!(heuristic_tokens("abcdefghi"), 3);
        assert_eq!(heuristic_tokens("你好世界"), 4);
        assert_eq!(heuristic_tokens("abc你"), 2);
    }

    #[test]
    fn a_chat_request_counts_its_messages_the_format_and_its_completion() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "abcdefgh"}], "max_tokens": 5});
        assert_eq!(heuristic(&body), REPLY_PRIMING + MESSAGE_OVERHEAD + 2 + 5);
        let parts = json!({"messages": [{"content": [{"type": "text", "text": "abcd"}, {"type": "image_url"}]}]});
        assert_eq!(heuristic(&parts), REPLY_PRIMING + MESSAGE_OVERHEAD + 1);
    }

    #[test]
    fn embeddings_and_completions_count_every_text_of_their_input_or_prompt() {
        assert_eq!(heuristic(&json!({"input": ["abcd", "日本"]})), 1 + 2);
        assert_eq!(heuristic(&json!({"input": "abcd", "max_completion_tokens": 5})), 6);
        assert_eq!(heuristic(&json!({"prompt": ["abcdefgh", 7]})), 2, "a token array is not text");
    }

    #[test]
    fn the_completion_cap_is_max_completion_tokens_else_max_tokens_when_a_positive_whole_number() {
        assert_eq!(heuristic(&json!({"max_completion_tokens": 0, "max_tokens": 9})), 9);
        assert_eq!(heuristic(&json!({"max_completion_tokens": "5", "max_tokens": 9})), 9);
        assert_eq!(heuristic(&json!({"max_tokens": -3})), 0);
        assert_eq!(heuristic(&json!({"max_tokens": 2.5})), 0);
    }

    #[test]
    fn values_of_another_shape_count_nothing() {
        assert_eq!(heuristic(&json!({"model": "m"})), 0);
        assert_eq!(heuristic(&json!(["abcd"])), 0);
        assert_eq!(heuristic(&json!({"messages": ["abcd", 1, {"role": "user"}]})), REPLY_PRIMING + MESSAGE_OVERHEAD);
        assert_eq!(heuristic(&json!({"messages": [{"content": {"text": "abcd"}}]})), REPLY_PRIMING + MESSAGE_OVERHEAD);
    }

    #[test]
    fn the_counter_counts_every_text_and_its_error_ends_the_estimate() {
        let body = json!({"messages": [{"content": "a"}, {"content": [{"text": "b"}]}], "input": ["c", "d"], "prompt": "e"});
        let mut seen = Vec::new();
        let tokens = estimate::<_, Infallible>(&&body, &mut |text| {
            seen.push(text.to_owned());
            Ok(10)
        });
        assert_eq!(tokens, Ok(REPLY_PRIMING + 2 * MESSAGE_OVERHEAD + 50));
        assert_eq!(seen, ["a", "b", "c", "d", "e"]);
        assert_eq!(estimate(&&body, &mut |_| Err("no encoding")), Err("no encoding"));
    }

    #[test]
    fn counts_saturate_instead_of_wrapping() {
        let body = json!({"input": ["a", "b"], "max_tokens": u64::MAX});
        assert_eq!(estimate::<_, Infallible>(&&body, &mut |_| Ok(u64::MAX)), Ok(u64::MAX));
    }
}
