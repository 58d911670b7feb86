//! One request, start to end: route, authenticate, parse, then outage, limits and faults in the order
//! a real gateway meets them, log the admission, wait the latency, answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};

use super::api::{self, BadRequest, ChatCall, EmbeddingCall};
use super::config::GatewayConfig;
use super::faults::Fault;
use super::headers::insert_rate_limits;
use super::limits::{Admission, KeyLimiter};
use super::log::{AdmissionLog, AdmissionRecord, Endpoint};
use super::replies::{self, Reply};
use crate::core::clock::{Clock, MonotonicClock};

/// Request bodies above this are refused with 413, so a runaway client cannot exhaust memory.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// What every connection of one gateway shares.
#[derive(Debug)]
pub struct Shared {
    pub config: GatewayConfig,
    pub limiter: KeyLimiter,
    pub log: AdmissionLog,
    /// Gateway time: ns since it started, for limits, outage and the log alike.
    pub clock: MonotonicClock,
    /// Requests numbered in arrival order, to draw their latency and fault from the seed.
    next_seq: AtomicU64,
}

impl Shared {
    pub fn new(config: GatewayConfig) -> Self {
        Self {
            limiter: KeyLimiter::new(&config.limits, config.window_ns),
            log: AdmissionLog::new(config.log),
            clock: MonotonicClock::new(),
            next_seq: AtomicU64::new(0),
            config,
        }
    }

    /// Logs a request refused before it counted against the limits, and hands its reply back.
    fn refuse(
        &self,
        at_ns: u64,
        key: Arc<str>,
        endpoint: Endpoint,
        tokens: u64,
        reply: Reply,
        fault: Option<Fault>,
    ) -> Reply {
        let status = reply.status().as_u16();
        self.log.append(AdmissionRecord { at_ns, key, endpoint, tokens, status, admitted: false, fault });
        reply
    }
}

/// The handler's way of asking the connection to be reset instead of answered.
#[derive(Debug)]
pub struct ResetConnection;

impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by the reset fault")
    }
}

impl std::error::Error for ResetConnection {}

enum Call {
    Chat(ChatCall),
    Embeddings(EmbeddingCall),
    Models,
    Quota,
}

impl Call {
    fn tokens(&self) -> u64 {
        match self {
            Call::Chat(chat) => chat.tokens(),
            Call::Embeddings(embeddings) => embeddings.tokens(),
            Call::Models | Call::Quota => 0,
        }
    }
}

fn route(method: &Method, path: &str) -> Option<Endpoint> {
    match (method, path) {
        (&Method::POST, "/v1/chat/completions") => Some(Endpoint::ChatCompletions),
        (&Method::POST, "/v1/embeddings") => Some(Endpoint::Embeddings),
        (&Method::GET, "/v1/models") => Some(Endpoint::Models),
        (&Method::GET, "/v1/quota") => Some(Endpoint::Quota),
        _ => None,
    }
}

/// The bearer token, trimmed; `None` when missing, blank or not among the accepted keys.
fn api_key<'a>(headers: &'a HeaderMap, config: &GatewayConfig) -> Option<&'a str> {
    let (scheme, key) = headers.get(AUTHORIZATION)?.to_str().ok()?.split_once(' ')?;
    let key = key.trim();
    let accepted = scheme.eq_ignore_ascii_case("bearer")
        && !key.is_empty()
        && config.api_keys.as_ref().is_none_or(|keys| keys.contains(key));
    accepted.then_some(key)
}

pub async fn handle(
    shared: Arc<Shared>,
    reset: Arc<AtomicBool>,
    request: Request<Incoming>,
) -> Result<Reply, ResetConnection> {
    let (head, body) = request.into_parts();
    let Some(endpoint) = route(&head.method, head.uri.path()) else {
        return Ok(replies::not_found(&head.method, head.uri.path()));
    };
    let Some(key) = api_key(&head.headers, &shared.config) else {
        let reply = replies::unauthorized();
        return Ok(shared.refuse(shared.clock.now_ns(), Arc::from(""), endpoint, 0, reply, None));
    };
    let call = match read_call(endpoint, body, &shared.config).await {
        Ok(call) => call,
        Err(reply) => {
            return Ok(shared.refuse(shared.clock.now_ns(), Arc::from(key), endpoint, 0, reply, None));
        }
    };
    let (tokens, at_ns) = (call.tokens(), shared.clock.now_ns());
    let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
    let config = &shared.config;

    if let Some(left_ns) = config.faults.in_outage(at_ns) {
        let reply = replies::outage(left_ns);
        return Ok(shared.refuse(at_ns, Arc::from(key), endpoint, tokens, reply, Some(Fault::Outage)));
    }
    // The slot stays held until the answer is ready, through the latency (and forever for a timeout).
    let (key, status, _slot) = match shared.limiter.admit(key, tokens, at_ns) {
        Admission::Refused { key, status, refusal } => {
            let reply = replies::refusal(&refusal, &status, tokens, config);
            return Ok(shared.refuse(at_ns, key, endpoint, tokens, reply, None));
        }
        Admission::Admitted { key, status, slot } => (key, status, slot),
    };
    let fault = config.faults.pick(config.seed, seq);
    let answered = fault.map_or(200, Fault::status);
    shared.log.append(AdmissionRecord {
        at_ns,
        key: key.clone(),
        endpoint,
        tokens,
        status: answered,
        admitted: true,
        fault,
    });

    let latency_ns = config.latency.sample_ns(config.seed, seq);
    if latency_ns > 0 {
        tokio::time::sleep(Duration::from_nanos(latency_ns)).await;
    }
    let mut reply = match fault {
        None => answer(&call, &shared, &key, seq),
        Some(Fault::Timeout) => std::future::pending().await,
        Some(Fault::Reset) => {
            reset.store(true, Ordering::Release);
            return Err(ResetConnection);
        }
        Some(fault) => replies::fault(fault),
    };
    insert_rate_limits(reply.headers_mut(), &status);
    let request_id = HeaderValue::try_from(format!("req_mock{seq}")).expect("ASCII");
    reply.headers_mut().insert(HeaderName::from_static("x-request-id"), request_id);
    Ok(reply)
}

async fn read_call(endpoint: Endpoint, body: Incoming, config: &GatewayConfig) -> Result<Call, Reply> {
    let parse: fn(&[u8], &GatewayConfig) -> Result<Call, BadRequest> = match endpoint {
        Endpoint::Models => return Ok(Call::Models),
        Endpoint::Quota => return Ok(Call::Quota),
        Endpoint::ChatCompletions => |body, config| api::parse_chat(body, config).map(Call::Chat),
        Endpoint::Embeddings => |body, config| api::parse_embeddings(body, config).map(Call::Embeddings),
    };
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(replies::unreadable_body(MAX_BODY_BYTES)),
    };
    parse(&body, config).map_err(|bad| replies::bad_request(&bad))
}

fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

fn answer(call: &Call, shared: &Shared, key: &str, seq: u64) -> Reply {
    match call {
        Call::Chat(chat) if chat.stream => {
            replies::event_stream(api::chat_stream(chat, &format!("chatcmpl-mock{seq}"), unix_seconds()))
        }
        Call::Chat(chat) => {
            let body = api::chat_completion(chat, &format!("chatcmpl-mock{seq}"), unix_seconds());
            replies::json(StatusCode::OK, body)
        }
        Call::Embeddings(embeddings) => replies::json(StatusCode::OK, api::embeddings(embeddings)),
        Call::Models => replies::json(StatusCode::OK, api::models(unix_seconds())),
        Call::Quota => {
            let report = shared.limiter.quota(key, shared.clock.now_ns());
            replies::json(StatusCode::OK, api::quota(&report, shared.config.window_ns))
        }
    }
}
