//! One request, start to end: route, authenticate, parse, then outage, limits and faults in the order
//! a real gateway meets them, log the admission, wait the latency, answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::api::{self, BadRequest, ChatCall, EmbeddingCall};
use super::config::GatewayConfig;
use super::faults::Fault;
use super::headers::{format_reset, insert_rate_limits, insert_retry_after};
use super::limits::{Admission, KeyLimiter, RateStatus, Refusal};
use super::log::{AdmissionLog, AdmissionRecord, Endpoint};
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

pub type Reply = Response<Full<Bytes>>;

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

fn json_reply(status: StatusCode, body: Bytes) -> Reply {
    let mut reply = Response::new(Full::new(body));
    *reply.status_mut() = status;
    reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}

fn error_reply(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
    param: Option<&str>,
) -> Reply {
    json_reply(status, api::error(message, kind, code, param))
}

fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

/// The bearer token, trimmed; `None` when missing, blank or not among the accepted keys.
fn api_key<'a>(request: &'a Request<Incoming>, config: &GatewayConfig) -> Option<&'a str> {
    let header = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = header.split_once(' ')?;
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
    let Some(endpoint) = route(request.method(), request.uri().path()) else {
        let message = format!("Unknown request URL: {} {}.", request.method(), request.uri().path());
        return Ok(error_reply(
            StatusCode::NOT_FOUND,
            &message,
            "invalid_request_error",
            Some("unknown_url"),
            None,
        ));
    };
    let Some(key) = api_key(&request, &shared.config).map(str::to_owned) else {
        let at_ns = shared.clock.now_ns();
        shared.log.append(refused(at_ns, Arc::from(""), endpoint, 0, 401, None));
        let message = "Missing or incorrect API key: pass a valid key as 'Authorization: Bearer <key>'.";
        return Ok(error_reply(
            StatusCode::UNAUTHORIZED,
            message,
            "invalid_request_error",
            Some("invalid_api_key"),
            None,
        ));
    };
    let call = match read_call(endpoint, request, &shared.config).await {
        Ok(call) => call,
        Err(reply) => return Ok(reply),
    };
    let tokens = call.tokens();
    let at_ns = shared.clock.now_ns();
    let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
    let config = &shared.config;

    if let Some(outage_left_ns) = config.faults.in_outage(at_ns) {
        shared.log.append(refused(
            at_ns,
            Arc::from(key.as_str()),
            endpoint,
            tokens,
            503,
            Some(Fault::Outage),
        ));
        let message = "The service is unavailable (scheduled outage). Please try again later.";
        let mut reply = error_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            message,
            "server_error",
            Some("service_unavailable"),
            None,
        );
        insert_retry_after(reply.headers_mut(), outage_left_ns);
        return Ok(reply);
    }

    let (key, status, _slot) = match shared.limiter.admit(&key, tokens, at_ns) {
        Admission::Refused { key, status, refusal } => {
            shared.log.append(refused(at_ns, key, endpoint, tokens, 429, None));
            return Ok(refusal_reply(&refusal, &status, tokens, config));
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
        Some(fault) => fault_reply(fault),
    };
    insert_rate_limits(reply.headers_mut(), &status);
    let request_id = HeaderValue::try_from(format!("req_mock{seq}")).expect("ASCII");
    reply.headers_mut().insert(HeaderName::from_static("x-request-id"), request_id);
    Ok(reply)
}

fn refused(
    at_ns: u64,
    key: Arc<str>,
    endpoint: Endpoint,
    tokens: u64,
    status: u16,
    fault: Option<Fault>,
) -> AdmissionRecord {
    AdmissionRecord { at_ns, key, endpoint, tokens, status, admitted: false, fault }
}

async fn read_call(
    endpoint: Endpoint,
    request: Request<Incoming>,
    config: &GatewayConfig,
) -> Result<Call, Reply> {
    let parse: fn(&[u8], &GatewayConfig) -> Result<Call, BadRequest> = match endpoint {
        Endpoint::Models => return Ok(Call::Models),
        Endpoint::Quota => return Ok(Call::Quota),
        Endpoint::ChatCompletions => |body, config| api::parse_chat(body, config).map(Call::Chat),
        Endpoint::Embeddings => |body, config| api::parse_embeddings(body, config).map(Call::Embeddings),
    };
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let message = format!("The request body is unreadable or larger than {MAX_BODY_BYTES} bytes.");
            return Err(error_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                &message,
                "invalid_request_error",
                None,
                None,
            ));
        }
    };
    parse(&body, config).map_err(|bad| {
        error_reply(StatusCode::BAD_REQUEST, &bad.message, "invalid_request_error", None, bad.param)
    })
}

fn answer(call: &Call, shared: &Shared, key: &str, seq: u64) -> Reply {
    match call {
        Call::Chat(chat) if chat.stream => {
            let mut reply = json_reply(
                StatusCode::OK,
                api::chat_stream(chat, &format!("chatcmpl-mock{seq}"), unix_seconds()),
            );
            reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            reply
        }
        Call::Chat(chat) => json_reply(
            StatusCode::OK,
            api::chat_completion(chat, &format!("chatcmpl-mock{seq}"), unix_seconds()),
        ),
        Call::Embeddings(embeddings) => json_reply(StatusCode::OK, api::embeddings(embeddings)),
        Call::Models => json_reply(StatusCode::OK, api::models(unix_seconds())),
        Call::Quota => {
            let report = shared.limiter.quota(key, shared.clock.now_ns());
            json_reply(StatusCode::OK, api::quota(&report, shared.config.window_ns))
        }
    }
}

fn fault_reply(fault: Fault) -> Reply {
    let (status, message, code) = match fault {
        Fault::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request.",
            None,
        ),
        Fault::BadGateway => (
            StatusCode::BAD_GATEWAY,
            "Bad gateway: the upstream model server did not answer.",
            Some("bad_gateway"),
        ),
        Fault::Unavailable | Fault::Outage => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The engine is currently overloaded, please try again later.",
            Some("overloaded"),
        ),
        Fault::Malformed => return json_reply(StatusCode::OK, Bytes::from_static(api::MALFORMED_BODY)),
        Fault::Timeout | Fault::Reset => unreachable!("{fault:?} is played by the connection, not a reply"),
    };
    error_reply(status, message, "server_error", code, None)
}

fn refusal_reply(refusal: &Refusal, status: &RateStatus, tokens: u64, config: &GatewayConfig) -> Reply {
    let mut reply = match *refusal {
        Refusal::RateLimited { spec, retry_after_ns } => {
            let period_ns = config.window_ns * spec.period.windows();
            let (unit, period) = (spec.unit.name(), spec.period.name());
            let limit = format!("{unit} per {period} (limit {} per {})", spec.max, format_reset(period_ns));
            let message = match retry_after_ns {
                Some(ns) => {
                    format!("Rate limit reached for {limit}. Please try again in {}.", format_reset(ns))
                }
                None => format!(
                    "Request too large for {limit}: it counts {tokens} tokens, more than the limit ever admits."
                ),
            };
            let mut reply = error_reply(
                StatusCode::TOO_MANY_REQUESTS,
                &message,
                spec.unit.name(),
                Some("rate_limit_exceeded"),
                None,
            );
            if let Some(ns) = retry_after_ns {
                insert_retry_after(reply.headers_mut(), ns);
            }
            reply
        }
        Refusal::Concurrency { max } => {
            let message = format!(
                "Too many requests in flight for this key (limit {max}). Please retry when one finishes."
            );
            let mut reply = error_reply(
                StatusCode::TOO_MANY_REQUESTS,
                &message,
                "requests",
                Some("concurrency_limit_exceeded"),
                None,
            );
            // Every request in flight has its answer within the longest latency.
            insert_retry_after(reply.headers_mut(), config.latency.max_ns());
            reply
        }
        Refusal::InsufficientQuota { credit_tokens } => {
            let message = format!(
                "You exceeded your current quota of {credit_tokens} tokens; this request counts {tokens}."
            );
            error_reply(
                StatusCode::TOO_MANY_REQUESTS,
                &message,
                "insufficient_quota",
                Some("insufficient_quota"),
                None,
            )
        }
    };
    insert_rate_limits(reply.headers_mut(), status);
    reply
}
