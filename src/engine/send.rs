//! One request's life, as the openai transport lives it: admitted by the limiter, let through by the
//! breaker, stamped and sent, its answer classified once by the core's table and observed by the
//! limiter (429s, `x-ratelimit-*`), its tokens settled from `usage`, and tried again as the retry
//! policy says (the server's `Retry-After` in every form). It always ends in an output line, unless a
//! budget, an isolated breaker or an unreachable Redis under `fail_closed` stops the job before it is sent.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};

use crate::core::breaker::Permit;
use crate::core::classify::{BreakerOutcome, Failure, classify};
use crate::core::headers::server_delay_now;
use crate::core::retry::RetryDecision;
use crate::backend::Admitted;
use crate::core::{Cost, Error};
use crate::engine::body::{Stamp, StampedBody};
use crate::engine::input::{ENDPOINTS, Request};
use crate::engine::job::Cancel;
use crate::engine::output::{self, Answer};
use crate::engine::progress::Progress;
use crate::engine::{Guards, tokens};

/// The least an open breaker is waited out before asking it again.
const OPEN_BREAKER_MIN_WAIT: Duration = Duration::from_millis(10);

/// How a request ended.
pub enum Sent {
    /// Its output line, whether it succeeded, why not (the reason counted in the report) and the
    /// tokens it cost in the end.
    Done { line: Vec<u8>, failure: Option<String>, tokens: u64 },
    /// Not sent, and the job stops (the message says why): a budget limit of the limiter would be
    /// crossed, the breaker is isolated, or a shared guard's Redis failed under `fail_closed`.
    Stopped(String),
    /// The job was cancelled before an answer came: no line (a rerun sends it again).
    Cancelled,
}

/// Sends requests to one base URL with one key, under the job's guards.
pub struct Sender {
    client: reqwest::Client,
    base_url: String,
    /// The URL of each endpoint, parsed once.
    urls: Vec<(&'static str, reqwest::Url)>,
    timeout: Duration,
    guards: Guards,
    progress: Arc<Progress>,
    cancel: Arc<Cancel>,
}

/// What one attempt got: an answer (any status), or no answer at all.
enum Got {
    Answer { status: u16, headers: HeaderMap, body: Bytes },
    Nothing { failure: Failure<'static>, code: &'static str, message: String },
}

impl Sender {
    pub fn new(base_url: &str, api_key: Option<&str>, max_in_flight: usize, timeout: Duration, guards: Guards, progress: Arc<Progress>, cancel: Arc<Cancel>) -> Result<Self, Error> {
        let parsed = reqwest::Url::parse(base_url).map_err(|err| Error::config("base_url", format!("must be an http(s) URL, got {base_url:?} ({err})")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::config("base_url", format!("must be an http(s) URL, got {base_url:?}")));
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(key) = api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| Error::config("api_key", "must be printable ASCII"))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        // reqwest's rustls takes the process's crypto provider: ring, the one this crate builds.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .pool_max_idle_per_host(max_in_flight)
            .tcp_nodelay(true)
            .build()
            .map_err(|err| Error::config("base_url", format!("cannot make an HTTP client: {err}")))?;
        let base_url = base_url.trim_end_matches('/').to_owned();
        let mut urls = Vec::new();
        for endpoint in ENDPOINTS {
            let joined = joined(&base_url, endpoint);
            let url = reqwest::Url::parse(&joined).map_err(|err| Error::config("base_url", format!("{joined:?} is not a URL ({err})")))?;
            urls.push((endpoint, url));
        }
        Ok(Self { client, base_url, urls, timeout, guards, progress, cancel })
    }


    /// `work`'s result, or None when the job is cancelled first (`work` is dropped).
    async fn unless_cancelled<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            done = work => Some(done),
            () = self.cancel.cancelled() => None,
        }
    }

    async fn attempt(&self, path: &str, body: Bytes, stamp: Option<Stamp>) -> Got {
        let body = reqwest::Body::wrap(StampedBody::new(body, stamp));
        let post = match self.urls.iter().find(|(endpoint, _)| *endpoint == path) {
            Some((_, url)) => self.client.post(url.clone()),
            None => self.client.post(joined(&self.base_url, path)),
        };
        let sent = post.timeout(self.timeout).body(body).send().await;
        let read = match sent {
            Ok(response) => {
                let (status, headers) = (response.status().as_u16(), response.headers().clone());
                response.bytes().await.map(|body| (status, headers, body))
            }
            Err(err) => Err(err),
        };
        match read {
            Ok((status, headers, body)) => Got::Answer { status, headers, body },
            Err(err) if err.is_timeout() => {
                let message = format!("no answer within {:.3} s", self.timeout.as_secs_f64());
                Got::Nothing { failure: Failure::Timeout, code: "timeout", message }
            }
            Err(err) => Got::Nothing { failure: Failure::Connection, code: "connection_error", message: error_chain(&err) },
        }
    }

    /// Sends `request` (estimated at `cost`) until it succeeds, fails for good, or a budget stops it.
    pub async fn send(&self, request: &Request, cost: Cost, price: f64) -> Sent {
        let body = Bytes::copy_from_slice(request.body.get().as_bytes());
        let retry = &*self.guards.retry;
        let started = retry.begin();
        let (mut attempts, mut previous_delay) = (0, 0);
        loop {
            let admission = match &self.guards.limiter {
                None => None,
                Some(gate) => match self.unless_cancelled(gate.admit(cost, price)).await {
                    None => return Sent::Cancelled,
                    Some(Ok(admission)) => Some(admission),
                    Some(Err(Ok(Error::BudgetExceeded { message }))) => return Sent::Stopped(message),
                    // The shared limiter's Redis failed and its policy (`fail_closed`) decides nothing
                    // without it: the job stops, the rest left for a rerun.
                    Some(Err(Err(failed))) => return Sent::Stopped(format!("the shared limiter could not decide: {failed}")),
                    Some(Err(Ok(refused))) => {
                        let line = output::line(&request.custom_id, Err(("exceeds_limit", refused.message())));
                        return Sent::Done { line, failure: Some("exceeds_limit".into()), tokens: 0 };
                    }
                },
            };
            let permit = match &self.guards.breaker {
                None => None,
                Some(breaker) => match breaker.allow().await {
                    Ok(permit) => Some(permit),
                    Err(Ok(open)) => {
                        end(admission.as_ref(), true).await;
                        let wait = match open {
                            // Isolated by hand (here or by any process sharing it): nothing goes
                            // until reset(), so the job stops, the rest left for a rerun.
                            Error::CircuitOpen { retry_after_ns: u64::MAX, message } => return Sent::Stopped(message),
                            Error::CircuitOpen { retry_after_ns, .. } => Duration::from_nanos(retry_after_ns),
                            _ => OPEN_BREAKER_MIN_WAIT,
                        };
                        let wait = wait.min(breaker.longest_wait()).max(OPEN_BREAKER_MIN_WAIT);
                        if self.unless_cancelled(tokio::time::sleep(wait)).await.is_none() {
                            return Sent::Cancelled;
                        }
                        continue;
                    }
                    // The shared breaker's Redis failed and its policy (`fail_closed`) lets nothing
                    // through without it: the job stops, the rest left for a rerun.
                    Err(Err(failed)) => {
                        end(admission.as_ref(), true).await;
                        return Sent::Stopped(format!("the shared breaker could not decide: {failed}"));
                    }
                },
            };
            let stamp = admission.as_ref().and_then(Admitted::stamp_later).map(|stamp| Box::new(stamp) as Stamp);
            attempts += 1;
            let Some(got) = self.unless_cancelled(self.attempt(&request.url, body.clone(), stamp)).await else {
                // Sent, never answered: the rates keep it (the server may have counted it).
                end(admission.as_ref(), false).await;
                if let (Some(breaker), Some(permit)) = (&self.guards.breaker, permit) {
                    breaker.release(permit);
                }
                return Sent::Cancelled;
            };
            let ended = self.judge(request, &got, admission.as_ref(), cost, permit).await;
            let (line, failure, tokens, retry_after) = match ended {
                Judged::Succeeded { line, tokens } => return Sent::Done { line, failure: None, tokens },
                Judged::Failed { line, reason, retry, server_delay } => (line, reason, cost.tokens, retry.then_some(server_delay)),
            };
            if let Some(server_delay) = retry_after
                && let RetryDecision::Wait(delay) = retry.decide_randomly(attempts, started, previous_delay, server_delay) {
                    self.progress.retries.fetch_add(1, Ordering::Relaxed);
                    if self.unless_cancelled(tokio::time::sleep(Duration::from_nanos(delay))).await.is_none() {
                        return Sent::Cancelled;
                    }
                    previous_delay = delay;
                    continue;
                }
            return Sent::Done { line, failure: Some(failure), tokens };
        }
    }

    /// Reads one attempt's outcome once: the limiter observes the answer and gets its slot back (its
    /// tokens settled from `usage`), the breaker hears the verdict of the one classification table.
    async fn judge(&self, request: &Request, got: &Got, admission: Option<&Admitted>, cost: Cost, permit: Option<Permit>) -> Judged {
        let (failure, line, reason, server_delay) = match got {
            Got::Answer { status, headers, body } => {
                let status = *status;
                if status == 429 {
                    self.progress.server_429s.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(admission) = admission {
                    admission.observe(status, headers.iter().map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes())));
                }
                let usage = tokens::usage(body);
                let request_id = headers.get("x-request-id").and_then(|id| id.to_str().ok());
                let answer = Answer { status_code: status, request_id, body, json: usage.is_ok() };
                let ok = (200..300).contains(&status);
                if ok && let Ok(usage) = usage {
                    let tokens = usage.unwrap_or(cost.tokens);
                    if let Some(Ok(Some(adjustment))) = admission.map(|admission| admission.settle_and_end(tokens)) {
                        // Not settled in Redis: the fleet's windows keep the estimate.
                        let _ = adjustment.run().await;
                    }
                    if let (Some(breaker), Some(permit)) = (&self.guards.breaker, permit) {
                        breaker.record_success(permit);
                    }
                    return Judged::Succeeded { line: output::line(&request.custom_id, Ok(answer)), tokens };
                }
                let text = |name| headers.get(name).and_then(|value: &HeaderValue| value.to_str().ok());
                let server_delay = server_delay_now(headers.iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))));
                if ok {
                    // A 2xx whose body is not JSON: what came was not an answer, read as a 502 (the
                    // transport's rule).
                    let failure = Failure::Status { code: 502, should_retry: text("x-should-retry"), error_code: None };
                    let message = format!("the server answered {status} with a body that is not a JSON object ({} bytes)", body.len());
                    let line = output::line(&request.custom_id, Err(("invalid_json", &message)));
                    (failure, line, "invalid_json".to_owned(), server_delay)
                } else {
                    let code = error_code(body);
                    let failure = Failure::Status { code: status, should_retry: text("x-should-retry"), error_code: code.as_deref() };
                    let verdict = classify(failure);
                    let line = output::line(&request.custom_id, Ok(answer));
                    return self.failed(admission, permit, verdict, line, format!("http_{status}"), server_delay).await;
                }
            }
            Got::Nothing { failure, code, message } => {
                (*failure, output::line(&request.custom_id, Err((code, message))), (*code).to_owned(), None)
            }
        };
        self.failed(admission, permit, classify(failure), line, reason, server_delay).await
    }

    async fn failed(&self, admission: Option<&Admitted>, permit: Option<Permit>, verdict: crate::core::classify::Verdict, line: Vec<u8>, reason: String, server_delay: Option<u64>) -> Judged {
        end(admission, false).await;
        if let (Some(breaker), Some(permit)) = (&self.guards.breaker, permit) {
            match verdict.breaker {
                // The server's own delay (its Retry-After on a 5xx) opens it for that long.
                BreakerOutcome::Failure => breaker.record_failure(permit, server_delay),
                BreakerOutcome::Success => breaker.record_success(permit),
                BreakerOutcome::Neutral => breaker.release(permit),
            }
        }
        Judged::Failed { line, reason, retry: verdict.retry, server_delay }
    }
}

/// Ends an admission, if any: its slot goes back, and when its request was never sent (`give_back`) its
/// place in the rates too; a shared one's in Redis, awaited (a failure there is the backend's to count).
async fn end(admission: Option<&Admitted>, give_back: bool) {
    if let Some(Ok(Some(adjustment))) = admission.map(|admission| admission.end(give_back)) {
        let _ = adjustment.run().await;
    }
}

/// One attempt's outcome, read.
enum Judged {
    Succeeded { line: Vec<u8>, tokens: u64 },
    Failed { line: Vec<u8>, reason: String, retry: bool, server_delay: Option<u64> },
}

/// An input line's `url` under the base URL: `/v1/embeddings` under `.../v1` is `.../v1/embeddings`,
/// not `.../v1/v1/embeddings`.
fn joined(base_url: &str, path: &str) -> String {
    match path.strip_prefix("/v1/") {
        Some(rest) if base_url.ends_with("/v1") => format!("{base_url}/{rest}"),
        _ => format!("{base_url}{path}"),
    }
}

/// The `error.code` of an OpenAI-shaped error body, if any.
fn error_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(value.get("error")?.get("code")?.as_str()?.to_owned())
}

/// An error and its causes, as one line (reqwest's own message omits the cause: "error sending request").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_url_goes_under_the_base_url_without_repeating_v1() {
        assert_eq!(joined("http://h/v1", "/v1/embeddings"), "http://h/v1/embeddings");
        assert_eq!(joined("http://h/api", "/v1/embeddings"), "http://h/api/v1/embeddings");
    }
}
