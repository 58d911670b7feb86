//! The gateway end to end, over real sockets on 127.0.0.1 with a minimal HTTP/1.1 client.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;
use crate::core::clock::NS_PER_SEC;

const MS: u64 = 1_000_000;

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("{err}: {}", self.body))
    }
}

fn send(addr: SocketAddr, method: &str, path: &str, key: Option<&str>, body: &str) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = key.map(|key| format!("Authorization: Bearer {key}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete answer");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
        .collect();
    Ok(Reply { status, headers, body: body.to_owned() })
}

const CHAT: &str =
    r#"{"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}"#;

fn chat(addr: SocketAddr, key: &str) -> Reply {
    send(addr, "POST", "/v1/chat/completions", Some(key), CHAT).unwrap()
}

fn start_gateway(config: GatewayConfig) -> Gateway {
    Gateway::start(config, 0).unwrap()
}

#[test]
fn serves_a_chat_completion_with_usage_and_rate_limit_headers() {
    let limits = Limits { rpm: Some(10), tpm: Some(1000), ..Limits::default() };
    let gateway = start_gateway(GatewayConfig { limits, ..GatewayConfig::default() });
    let reply = chat(gateway.local_addr(), "hs_test");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.json();
    // "hello" is 2 tokens plus 3 for the message; max_tokens 4 cuts the 16-token reply.
    assert_eq!(body["usage"]["prompt_tokens"], 5);
    assert_eq!(body["usage"]["completion_tokens"], 4);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(reply.headers["x-ratelimit-limit-requests"], "10");
    assert_eq!(reply.headers["x-ratelimit-remaining-requests"], "9");
    assert_eq!(reply.headers["x-ratelimit-remaining-tokens"], "991");
    assert_eq!(reply.headers["x-ratelimit-reset-requests"], "1m0s");
}

#[test]
fn refuses_a_missing_or_unknown_key_with_401() {
    let keys = Some(["hs_good".to_owned()].into_iter().collect());
    let gateway = start_gateway(GatewayConfig { api_keys: keys, ..GatewayConfig::default() });
    assert_eq!(send(gateway.local_addr(), "GET", "/v1/models", None, "").unwrap().status, 401);
    let wrong = send(gateway.local_addr(), "GET", "/v1/models", Some("hs_bad"), "").unwrap();
    assert_eq!((wrong.status, &wrong.json()["error"]["code"]), (401, &Value::from("invalid_api_key")));
    assert_eq!(send(gateway.local_addr(), "GET", "/v1/models", Some("hs_good"), "").unwrap().status, 200);
    let statuses: Vec<(u16, bool)> = gateway.admission_log().iter().map(|r| (r.status, r.admitted)).collect();
    assert_eq!(statuses, [(401, false), (401, false), (200, true)]);
}

#[test]
fn answers_429_with_retry_after_once_the_window_is_full() {
    let limits = Limits { rpm: Some(3), ..Limits::default() };
    let gateway =
        start_gateway(GatewayConfig { limits, window_ns: 2 * NS_PER_SEC, ..GatewayConfig::default() });
    let statuses: Vec<u16> = (0..3).map(|_| chat(gateway.local_addr(), "k").status).collect();
    assert_eq!(statuses, [200, 200, 200]);
    let refused = chat(gateway.local_addr(), "k");
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"]["code"], "rate_limit_exceeded");
    let retry_ms: u64 = refused.headers["retry-after-ms"].parse().unwrap();
    assert!((1..=2000).contains(&retry_ms), "{retry_ms}");
    assert_eq!(refused.headers["retry-after"], retry_ms.div_ceil(1000).to_string());
    assert_eq!(refused.headers["x-ratelimit-remaining-requests"], "0");
    // Another key has a window of its own.
    assert_eq!(chat(gateway.local_addr(), "other").status, 200);
    let log = gateway.admission_log();
    assert_eq!(log.iter().filter(|r| r.admitted).count(), 4);
    assert_eq!(log.iter().filter(|r| r.status == 429).count(), 1);
}

#[test]
fn unknown_paths_get_404_and_bad_bodies_400() {
    let gateway = start_gateway(GatewayConfig::default());
    let missing = send(gateway.local_addr(), "GET", "/v1/nothing", Some("k"), "").unwrap();
    assert_eq!(missing.status, 404);
    let bad = send(gateway.local_addr(), "POST", "/v1/chat/completions", Some("k"), "{").unwrap();
    assert_eq!((bad.status, &bad.json()["error"]["type"]), (400, &Value::from("invalid_request_error")));
    let logged: Vec<(u16, bool)> = gateway.admission_log().iter().map(|r| (r.status, r.admitted)).collect();
    assert_eq!(logged, [(400, false)]);
}

#[test]
fn quota_reports_limits_per_period_and_the_credit_left() {
    let limits = Limits { rpm: Some(5), tpd: Some(10_000), credit_tokens: Some(100), ..Limits::default() };
    let gateway = start_gateway(GatewayConfig { limits, ..GatewayConfig::default() });
    chat(gateway.local_addr(), "k");
    let quota = send(gateway.local_addr(), "GET", "/v1/quota", Some("k"), "").unwrap().json();
    assert_eq!(quota["requests"]["minute"]["limit"], 5);
    assert_eq!(quota["requests"]["minute"]["remaining"], 3);
    assert_eq!(quota["requests"]["hour"], Value::Null);
    assert_eq!(quota["tokens"]["day"]["remaining"], 10_000 - 9);
    assert_eq!(quota["credit"]["remaining_tokens"], 100 - 9);
}

#[test]
fn insufficient_quota_once_the_credit_is_spent() {
    let limits = Limits { credit_tokens: Some(20), ..Limits::default() };
    let gateway = start_gateway(GatewayConfig { limits, ..GatewayConfig::default() });
    assert_eq!(chat(gateway.local_addr(), "k").status, 200);
    assert_eq!(chat(gateway.local_addr(), "k").status, 200);
    let refused = chat(gateway.local_addr(), "k");
    assert_eq!((refused.status, &refused.json()["error"]["code"]), (429, &Value::from("insufficient_quota")));
}

#[test]
fn outage_answers_503_from_its_start_to_its_end() {
    let (start, end) = (150 * MS, 400 * MS);
    let faults = Faults { outage_ns: Some((start, end)), ..Faults::default() };
    let gateway = start_gateway(GatewayConfig { faults, ..GatewayConfig::default() });
    let begun = Instant::now();
    while begun.elapsed() < Duration::from_millis(550) {
        let reply = chat(gateway.local_addr(), "k");
        if reply.status == 503 {
            let retry_ms: u64 = reply.headers["retry-after-ms"].parse().unwrap();
            assert!((1..=250).contains(&retry_ms), "{retry_ms}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Judged by arrival times in the gateway's own clock, so a slow round trip cannot blur the edges.
    let log = gateway.admission_log();
    for record in &log {
        let in_outage = (start..end).contains(&record.at_ns);
        assert_eq!(record.status == 503 && record.fault == Some(Fault::Outage), in_outage, "{record:?}");
        assert_eq!(record.admitted, !in_outage);
    }
    assert!(log.iter().any(|r| r.at_ns < start) && log.iter().any(|r| (start..end).contains(&r.at_ns)));
    assert!(log.iter().any(|r| r.at_ns >= end));
}

#[test]
fn reset_fault_resets_the_connection() {
    let faults = Faults { reset: 1.0, ..Faults::default() };
    let gateway = start_gateway(GatewayConfig { faults, ..GatewayConfig::default() });
    let err =
        send(gateway.local_addr(), "POST", "/v1/chat/completions", Some("k"), CHAT).err().expect("no answer");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
}

#[test]
fn timeout_fault_never_answers_and_stop_does_not_wait_for_it() {
    let faults = Faults { timeout: 1.0, ..Faults::default() };
    let gateway = start_gateway(GatewayConfig { faults, ..GatewayConfig::default() });
    let mut stream = TcpStream::connect(gateway.local_addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    stream.write_all(b"GET /v1/models HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer k\r\n\r\n").unwrap();
    let err = stream.read(&mut [0; 64]).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{err}");
    let stopping = Instant::now();
    gateway.stop();
    assert!(stopping.elapsed() < Duration::from_secs(2), "stop took {:?}", stopping.elapsed());
}

#[test]
fn stop_frees_the_port_for_a_restart_and_is_idempotent() {
    let first = start_gateway(GatewayConfig::default());
    let port = first.local_addr().port();
    assert_eq!(chat(first.local_addr(), "k").status, 200);
    first.stop();
    first.stop();
    assert!(!first.is_running());
    let again = Gateway::start(GatewayConfig::default(), port).unwrap();
    assert_eq!(chat(again.local_addr(), "k").status, 200);
    assert!(matches!(Gateway::start(GatewayConfig::default(), port), Err(StartError::Io(_))));
}

#[test]
fn bad_config_is_refused_before_binding() {
    let config = GatewayConfig { window_ns: 0, ..GatewayConfig::default() };
    assert!(matches!(Gateway::start(config, 0), Err(StartError::Config(_))));
}

#[test]
fn concurrency_limit_refuses_the_request_beyond_it() {
    let limits = Limits { concurrency: Some(1), ..Limits::default() };
    let latency = Latency::Fixed { ns: 600 * MS };
    let gateway = start_gateway(GatewayConfig { limits, latency, ..GatewayConfig::default() });
    let addr = gateway.local_addr();
    let slow = std::thread::spawn(move || chat(addr, "k").status);
    // Once the first request is logged, it holds the only slot for its 600 ms of latency.
    let waiting = Instant::now();
    while gateway.admission_log().is_empty() && waiting.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let refused = chat(addr, "k");
    assert_eq!(
        (refused.status, &refused.json()["error"]["code"]),
        (429, &Value::from("concurrency_limit_exceeded"))
    );
    assert_eq!(refused.headers["retry-after-ms"], "600");
    assert_eq!(slow.join().unwrap(), 200);
    assert_eq!(chat(addr, "k").status, 200);
}

#[test]
fn faults_show_in_the_log_and_in_the_answer() {
    let faults = Faults { server_error: 1.0, ..Faults::default() };
    let gateway = start_gateway(GatewayConfig { faults, ..GatewayConfig::default() });
    let reply = chat(gateway.local_addr(), "k");
    assert_eq!((reply.status, &reply.json()["error"]["type"]), (500, &Value::from("server_error")));
    let record = &gateway.admission_log()[0];
    assert_eq!((record.status, record.admitted, record.fault), (500, true, Some(Fault::ServerError)));
    assert_eq!((record.endpoint, record.tokens, &*record.key), (Endpoint::ChatCompletions, 9, "k"));
}
