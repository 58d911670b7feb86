//! The HTTP answers: status, headers and OpenAI-shaped body for a success, each refusal and each fault.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode};

use super::api::{self, BadRequest};
use super::config::GatewayConfig;
use super::faults::Fault;
use super::headers::{format_reset, insert_rate_limits, insert_retry_after};
use super::limits::{RateStatus, Refusal};

pub type Reply = Response<Full<Bytes>>;

fn with_content_type(status: StatusCode, body: Bytes, content_type: &'static str) -> Reply {
    let mut reply = Response::new(Full::new(body));
    *reply.status_mut() = status;
    reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    reply
}

pub fn json(status: StatusCode, body: Bytes) -> Reply {
    with_content_type(status, body, "application/json")
}

pub fn event_stream(body: Bytes) -> Reply {
    with_content_type(StatusCode::OK, body, "text/event-stream")
}

fn error(status: StatusCode, kind: &str, code: Option<&str>, param: Option<&str>, message: &str) -> Reply {
    json(status, api::error(message, kind, code, param))
}

pub fn not_found(method: &Method, path: &str) -> Reply {
    let message = format!("Unknown request URL: {method} {path}.");
    error(StatusCode::NOT_FOUND, "invalid_request_error", Some("unknown_url"), None, &message)
}

pub fn unauthorized() -> Reply {
    let message = "Missing or incorrect API key: pass a valid key as 'Authorization: Bearer <key>'.";
    error(StatusCode::UNAUTHORIZED, "invalid_request_error", Some("invalid_api_key"), None, message)
}

pub fn bad_request(bad: &BadRequest) -> Reply {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", None, bad.param, &bad.message)
}

pub fn unreadable_body(max_bytes: usize) -> Reply {
    let message = format!("The request body is unreadable or larger than {max_bytes} bytes.");
    error(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", None, None, &message)
}

pub fn outage(left_ns: u64) -> Reply {
    let message = "The service is unavailable (scheduled outage). Please try again later.";
    let mut reply =
        error(StatusCode::SERVICE_UNAVAILABLE, "server_error", Some("service_unavailable"), None, message);
    insert_retry_after(reply.headers_mut(), left_ns);
    reply
}

/// The answer of a fault that answers at all (timeouts and resets are played by the connection).
pub fn fault(fault: Fault) -> Reply {
    let (status, code, message) = match fault {
        Fault::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            "The server had an error while processing your request.",
        ),
        Fault::BadGateway => (
            StatusCode::BAD_GATEWAY,
            Some("bad_gateway"),
            "Bad gateway: the upstream model server did not answer.",
        ),
        Fault::Unavailable | Fault::Outage => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("overloaded"),
            "The engine is currently overloaded, please try again later.",
        ),
        Fault::Malformed => return json(StatusCode::OK, Bytes::from_static(api::MALFORMED_BODY)),
        Fault::Timeout | Fault::Reset => unreachable!("{fault:?} is played by the connection, not a reply"),
    };
    error(status, "server_error", code, None, message)
}

/// 429 for a request the limits refused, with `retry-after` when it can pass later.
pub fn refusal(refusal: &Refusal, status: &RateStatus, tokens: u64, config: &GatewayConfig) -> Reply {
    let too_many = StatusCode::TOO_MANY_REQUESTS;
    let mut reply = match *refusal {
        Refusal::RateLimited { spec, retry_after_ns } => {
            let (unit, period) = (spec.unit.name(), spec.period.name());
            let period_ns = config.window_ns * spec.period.windows();
            let limit = format!("{unit} per {period} (limit {} per {})", spec.max, format_reset(period_ns));
            let message = match retry_after_ns {
                Some(ns) => {
                    format!("Rate limit reached for {limit}. Please try again in {}.", format_reset(ns))
                }
                None => format!(
                    "Request too large for {limit}: it counts {tokens} tokens, more than it ever admits."
                ),
            };
            let mut reply = error(too_many, unit, Some("rate_limit_exceeded"), None, &message);
            if let Some(ns) = retry_after_ns {
                insert_retry_after(reply.headers_mut(), ns);
            }
            reply
        }
        Refusal::Concurrency { max } => {
            let message = format!(
                "Too many requests in flight for this key (limit {max}). Please retry when one finishes."
            );
            let mut reply = error(too_many, "requests", Some("concurrency_limit_exceeded"), None, &message);
            // Every request in flight has its answer within the longest latency.
            insert_retry_after(reply.headers_mut(), config.latency.max_ns());
            reply
        }
        Refusal::InsufficientQuota { credit_tokens } => {
            let message = format!(
                "You exceeded your current quota of {credit_tokens} tokens; this request counts {tokens}."
            );
            error(too_many, "insufficient_quota", Some("insufficient_quota"), None, &message)
        }
    };
    insert_rate_limits(reply.headers_mut(), status);
    reply
}
