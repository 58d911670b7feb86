//! The OpenAI wire format: parsing request bodies into calls, and writing the bodies the `openai` SDK
//! parses (chat completions, SSE chunks, embeddings, models, errors) plus `/v1/quota`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::config::{GatewayConfig, MAX_EMBEDDING_DIM};
use super::limits::{Headroom, Period, QuotaReport, Unit};
use super::seeded::{Stream, draw};
use super::tokens::{MESSAGE_OVERHEAD_TOKENS, count_text, reply_pieces, reply_text};
use crate::core::clock::ns_to_secs;

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct ChatMessage {
    #[serde(default)]
    content: Option<MessageContent>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct EmbeddingRequest {
    model: String,
    input: EmbeddingInput,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u64>),
    TokenLists(Vec<Vec<u64>>),
}

/// A chat completion as the gateway will answer it; its token counts are known at arrival.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatCall {
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// "length" when the request's `max_tokens` cut the reply short.
    pub finish_reason: &'static str,
    pub stream: bool,
    pub include_usage: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingCall {
    pub model: String,
    /// Each input's seed for its vector, and its token count.
    pub inputs: Vec<(u64, u64)>,
    pub dimensions: usize,
    pub base64: bool,
}

impl EmbeddingCall {
    pub fn tokens(&self) -> u64 {
        self.inputs.iter().map(|&(_, tokens)| tokens).sum()
    }
}

impl ChatCall {
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// A request body the gateway refuses with 400, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    pub message: String,
    pub param: Option<&'static str>,
}

impl BadRequest {
    fn new(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self { message: message.into(), param }
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, BadRequest> {
    serde_json::from_slice(body).map_err(|err| BadRequest::new(format!("invalid request body: {err}"), None))
}

pub fn parse_chat(body: &[u8], config: &GatewayConfig) -> Result<ChatCall, BadRequest> {
    let request: ChatRequest = parse(body)?;
    if request.messages.is_empty() {
        return Err(BadRequest::new("messages must hold at least one message", Some("messages")));
    }
    let prompt_tokens = request
        .messages
        .iter()
        .map(|message| {
            let text_tokens = match &message.content {
                None => 0,
                Some(MessageContent::Text(text)) => count_text(text),
                Some(MessageContent::Parts(parts)) => {
                    parts.iter().filter_map(|p| p.text.as_deref()).map(count_text).sum()
                }
            };
            MESSAGE_OVERHEAD_TOKENS + text_tokens
        })
        .sum();
    let requested_max = request.max_completion_tokens.or(request.max_tokens);
    if requested_max == Some(0) {
        return Err(BadRequest::new("max_tokens must be at least 1", Some("max_tokens")));
    }
    let cut_short = requested_max.is_some_and(|max| max < config.completion_tokens);
    Ok(ChatCall {
        model: request.model,
        prompt_tokens,
        completion_tokens: requested_max
            .map_or(config.completion_tokens, |max| max.min(config.completion_tokens)),
        finish_reason: if cut_short { "length" } else { "stop" },
        stream: request.stream.unwrap_or(false),
        include_usage: request.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
    })
}

/// FNV-1a, so that equal inputs get equal vectors in every run.
fn fingerprint(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes
        .into_iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ byte as u64).wrapping_mul(0x100_0000_01b3))
}

fn text_input(text: &str) -> (u64, u64) {
    (fingerprint(text.bytes()), count_text(text))
}

fn token_input(tokens: &[u64]) -> (u64, u64) {
    (fingerprint(tokens.iter().flat_map(|t| t.to_le_bytes())), tokens.len() as u64)
}

pub fn parse_embeddings(body: &[u8], config: &GatewayConfig) -> Result<EmbeddingCall, BadRequest> {
    let request: EmbeddingRequest = parse(body)?;
    let inputs: Vec<(u64, u64)> = match &request.input {
        EmbeddingInput::Text(text) => vec![text_input(text)],
        EmbeddingInput::Texts(texts) => texts.iter().map(|text| text_input(text)).collect(),
        EmbeddingInput::Tokens(tokens) => vec![token_input(tokens)],
        EmbeddingInput::TokenLists(lists) => lists.iter().map(|tokens| token_input(tokens)).collect(),
    };
    if inputs.is_empty() {
        return Err(BadRequest::new("input must not be empty", Some("input")));
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(BadRequest::new(
                format!("encoding_format must be 'float' or 'base64', got '{other}'"),
                Some("encoding_format"),
            ));
        }
    };
    let dimensions = request.dimensions.unwrap_or(config.embedding_dim);
    if !(1..=MAX_EMBEDDING_DIM).contains(&dimensions) {
        return Err(BadRequest::new(
            format!("dimensions must be between 1 and {MAX_EMBEDDING_DIM}"),
            Some("dimensions"),
        ));
    }
    Ok(EmbeddingCall { model: request.model, inputs, dimensions, base64 })
}

/// A unit vector determined by its seed.
pub fn embedding_vector(seed: u64, dimensions: usize) -> Vec<f32> {
    let raw: Vec<f64> =
        (0..dimensions as u64).map(|i| 2.0 * draw(seed, Stream::Embedding, i) - 1.0).collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    raw.iter().map(|x| (x / norm) as f32).collect()
}

fn usage(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

fn to_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("a JSON value always serializes"))
}

pub fn chat_completion(call: &ChatCall, id: &str, created: u64) -> Bytes {
    to_bytes(&json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": call.model,
        "system_fingerprint": "fp_holysheep_mock",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply_text(call.completion_tokens), "refusal": null},
            "logprobs": null,
            "finish_reason": call.finish_reason,
        }],
        "usage": usage(call.prompt_tokens, call.completion_tokens),
    }))
}

/// The whole SSE stream: a role chunk, one chunk per reply token, a finish chunk, the usage chunk
/// when asked for (`stream_options.include_usage`), then `data: [DONE]`.
pub fn chat_stream(call: &ChatCall, id: &str, created: u64) -> Bytes {
    let chunk = |delta: Value, finish_reason: Option<&str>| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": call.model,
            "system_fingerprint": "fp_holysheep_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        if call.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": "", "refusal": null}), None)];
    events.extend(reply_pieces(call.completion_tokens).map(|piece| chunk(json!({"content": piece}), None)));
    events.push(chunk(json!({}), Some(call.finish_reason)));
    if call.include_usage {
        let mut last = chunk(json!({}), None);
        last["choices"] = json!([]);
        last["usage"] = usage(call.prompt_tokens, call.completion_tokens);
        events.push(last);
    }
    let mut body = Vec::with_capacity(256 * events.len());
    for event in &events {
        body.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut body, event).expect("a JSON value always serializes");
        body.extend_from_slice(b"\n\n");
    }
    body.extend_from_slice(b"data: [DONE]\n\n");
    Bytes::from(body)
}

pub fn embeddings(call: &EmbeddingCall) -> Bytes {
    let data: Vec<Value> = call
        .inputs
        .iter()
        .enumerate()
        .map(|(index, &(seed, _))| {
            let vector = embedding_vector(seed, call.dimensions);
            let embedding = if call.base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(BASE64.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens = call.tokens();
    to_bytes(&json!({
        "object": "list",
        "data": data,
        "model": call.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

/// The models every mock gateway lists; any other name is accepted too.
pub const MODELS: [&str; 7] = [
    "gpt-4.1",
    "gpt-4.1-mini",
    "claude-sonnet-4.5",
    "gemini-2.5-flash",
    "deepseek-v3.2",
    "text-embedding-3-small",
    "text-embedding-3-large",
];

pub fn models(created: u64) -> Bytes {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": created, "owned_by": "holysheep-mock"}))
        .collect();
    to_bytes(&json!({"object": "list", "data": data}))
}

fn headroom_json(headroom: &Headroom) -> Value {
    json!({
        "limit": headroom.spec.max,
        "remaining": headroom.remaining,
        "reset_seconds": ns_to_secs(headroom.reset_ns),
    })
}

/// `GET /v1/quota`: limit, remaining and reset per minute/hour/day for requests and tokens (`null`
/// where there is no limit), requests in flight, and the credit left.
pub fn quota(report: &QuotaReport, window_ns: u64) -> Bytes {
    let per_period = |unit: Unit| {
        let periods = Period::ALL.iter().map(|&period| {
            let headroom = report.limits.iter().find(|h| h.spec.unit == unit && h.spec.period == period);
            (period.name().to_owned(), headroom.map_or(Value::Null, headroom_json))
        });
        Value::Object(periods.collect())
    };
    let concurrency = report.concurrency.map(|limit| json!({"limit": limit, "in_flight": report.in_flight}));
    let credit = report
        .credit_tokens
        .map(|limit| json!({"limit_tokens": limit, "remaining_tokens": limit - report.credit_spent}));
    to_bytes(&json!({
        "object": "quota",
        "window_seconds": ns_to_secs(window_ns),
        "requests": per_period(Unit::Requests),
        "tokens": per_period(Unit::Tokens),
        "concurrency": concurrency,
        "credit": credit,
    }))
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
pub fn error(message: &str, kind: &str, code: Option<&str>, param: Option<&str>) -> Bytes {
    to_bytes(&json!({"error": {"message": message, "type": kind, "param": param, "code": code}}))
}

/// What the malformed-JSON fault sends: the start of a completion, cut off.
pub const MALFORMED_BODY: &[u8] = b"{\"id\": \"chatcmpl-mock\", \"object\": \"chat.comp";

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GatewayConfig {
        GatewayConfig { completion_tokens: 5, embedding_dim: 4, ..GatewayConfig::default() }
    }

    #[test]
    fn chat_usage_counts_messages_and_reply() {
        let body = br#"{"model": "m", "messages": [{"role": "user", "content": "abcdefgh"},
                         {"role": "user", "content": [{"type": "text", "text": "abcde"}]}]}"#;
        let call = parse_chat(body, &config()).unwrap();
        assert_eq!(
            (call.prompt_tokens, call.completion_tokens, call.finish_reason),
            (3 + 2 + 3 + 2, 5, "stop")
        );
        let reply: Value = serde_json::from_slice(&chat_completion(&call, "id", 1)).unwrap();
        assert_eq!(reply["usage"]["total_tokens"], 15);
        assert_eq!(reply["choices"][0]["message"]["content"], "baa baa baa baa baa");
    }

    #[test]
    fn max_tokens_cuts_the_reply_short() {
        let body = br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}"#;
        let call = parse_chat(body, &config()).unwrap();
        assert_eq!((call.completion_tokens, call.finish_reason), (2, "length"));
    }

    #[test]
    fn bad_chat_bodies_are_refused_with_a_reason() {
        let no_messages = parse_chat(br#"{"model": "m", "messages": []}"#, &config()).unwrap_err();
        assert_eq!(no_messages.param, Some("messages"));
        let not_json = parse_chat(b"{", &config()).unwrap_err();
        assert!(not_json.message.starts_with("invalid request body"), "{not_json:?}");
        let no_model = parse_chat(br#"{"messages": [{"content": "x"}]}"#, &config()).unwrap_err();
        assert!(no_model.message.contains("model"), "{no_model:?}");
    }

    #[test]
    fn stream_ends_with_usage_then_done() {
        let body = br#"{"model": "m", "messages": [{"content": "hi"}], "stream": true,
                         "stream_options": {"include_usage": true}}"#;
        let call = parse_chat(body, &config()).unwrap();
        let stream = String::from_utf8(chat_stream(&call, "id", 1).to_vec()).unwrap();
        let events: Vec<&str> = stream.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 1 + 5 + 1 + 1 + 1);
        assert_eq!(*events.last().unwrap(), "data: [DONE]");
        let usage_event: Value = serde_json::from_str(&events[events.len() - 2]["data: ".len()..]).unwrap();
        assert_eq!(usage_event["usage"]["completion_tokens"], 5);
        assert_eq!(usage_event["choices"], json!([]));
        let content: String = events[1..6]
            .iter()
            .map(|e| {
                serde_json::from_str::<Value>(&e["data: ".len()..]).unwrap()["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(content, "baa baa baa baa baa");
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors_in_either_encoding() {
        let floats =
            parse_embeddings(br#"{"model": "e", "input": ["abcd", "abcdefgh"]}"#, &config()).unwrap();
        assert_eq!(floats.tokens(), 3);
        let reply: Value = serde_json::from_slice(&embeddings(&floats)).unwrap();
        let first: Vec<f32> = reply["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(first.len(), 4);
        assert!((first.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
        assert_ne!(reply["data"][0]["embedding"], reply["data"][1]["embedding"]);

        let encoded =
            parse_embeddings(br#"{"model": "e", "input": "abcd", "encoding_format": "base64"}"#, &config())
                .unwrap();
        let reply: Value = serde_json::from_slice(&embeddings(&encoded)).unwrap();
        let bytes = BASE64.decode(reply["data"][0]["embedding"].as_str().unwrap()).unwrap();
        let decoded: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(decoded, first);
    }

    #[test]
    fn token_array_inputs_count_one_token_per_id() {
        let call =
            parse_embeddings(br#"{"model": "e", "input": [[1, 2, 3], [4]], "dimensions": 2}"#, &config())
                .unwrap();
        assert_eq!((call.tokens(), call.inputs.len(), call.dimensions), (4, 2, 2));
    }
}
