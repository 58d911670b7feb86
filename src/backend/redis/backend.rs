//! One Redis server as limiters see it: the URL (its password kept out of every message), the key
//! prefix, timeouts, and connections that reconnect by themselves. After a failure, calls fail at once
//! for a short, growing pause instead of each waiting out a timeout against a server that is down,
//! while Redis is asked in the background whether it answers again.
//!
//! Two ways to call: `call` on the runtime (a multiplexed connection, for asyncio callers), and
//! `call_blocking` on the caller's own thread over a pooled plain connection: a thread that waits for
//! the answer anyway saves the two thread hand-offs through the runtime (measured: about half the
//! latency of a decision on a loaded 2-core machine).

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::{ErrorKind, RedisError};

use crate::backend::redis::connections::{Blocking, Server, Shared, cluster_client};
use crate::backend::redis::error::BackendError;
use crate::backend::redis::tcp_connection::TcpConnection;
use crate::backend::redis::process::{self, PerProcess};
use crate::backend::redis::scripts::Dialect;
use crate::backend::redis::sentinel::{self, SentinelUrl};

/// How long to wait for a connection, and for an answer to each command; how long a blocking caller
/// waits for an answer awake before it sleeps (see `tcp_connection::Waiting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
    pub spin: Duration,
}

/// The pause after a failure before Redis is tried again: doubles per failure up to the maximum, which
/// bounds how long after Redis answers again a limiter notices (DESIGN §5: an outage costs at most
/// itself plus one second).
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const LONGEST_PAUSE: Duration = Duration::from_millis(500);
/// How often, at most, Redis is asked in the background whether it answers again while an outage
/// lasts (see `Backend::probe`).
const PROBE_EVERY: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct Outage {
    /// Tells this outage from a later one.
    number: u64,
    retry_at: Instant,
    pause: Duration,
    cause: String,
    /// The process whose task probes Redis for it (a forked child starts its own).
    probed_by: u32,
}

/// The outage going on, if any, and how many started.
#[derive(Debug, Default)]
struct Outages {
    now: Option<Outage>,
    started: u64,
}

/// Whether `err` says the server closed the connection (it went away: a restart closes every
/// connection), rather than that it could not be reached or did not answer in time.
pub fn closed_by_server(err: &RedisError) -> bool {
    err.is_connection_dropped() && !err.is_connection_refusal() && !err.is_timeout()
}

/// Whether a blocking call may be sent again on a new connection when the server had closed its pooled
/// one. A server closes a connection before answering when it goes away (a restart); should it have run
/// the call first, a call sent again runs twice: a decision then counts twice, never less, but a
/// correction would take a refund twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    IfClosed,
    Never,
}

/// A Redis server shared by limiters.
pub struct Backend {
    /// Itself, for the tasks it starts (they end when it is dropped).
    me: Weak<Backend>,
    server: Server,
    url: String,
    secret: Option<String>,
    prefix: String,
    timeouts: Timeouts,
    /// The runtime's connection, made on first use (in each process).
    connection: Mutex<PerProcess<Option<Shared>>>,
    /// Plain connections for `call_blocking`, one per thread calling at once; reused.
    idle: Mutex<PerProcess<Vec<Blocking>>>,
    outage: Mutex<Outages>,
    /// Whether the server takes the scripts as Functions.
    dialect: Arc<Dialect>,
    /// Outages that ended (Redis answered again after failing).
    recoveries: AtomicU64,
    /// Bumped when the primary moved (Sentinel): connections made before are not used again.
    generation: AtomicU64,
    /// The process whose task watches where the primary is (Sentinel; 0: none yet).
    watcher_pid: AtomicU32,
}

/// How often the Sentinels are asked where the primary is: a failover's old primary may accept
/// writes for seconds before it is turned into a replica, so connections must not wait for an error.
const PRIMARY_CHECK: Duration = Duration::from_millis(250);

/// `url` with the password (if any) replaced by `***`, for messages and repr.
pub fn redact(url: &str) -> String {
    match userinfo(url) {
        Some((start, end)) => match url[start..end].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..start], &url[end..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Where the `user:password` part of a URL lies, if it has one.
fn userinfo(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let authority_end = url[start..].find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    let at = url[start..authority_end].rfind('@')? + start;
    Some((start, at))
}

fn password(url: &str) -> Option<String> {
    let (start, end) = userinfo(url)?;
    let (_, password) = url[start..end].split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

impl Backend {
    /// Checks the URL now; connects on first use. `tls_ca_cert`: PEM certificates to trust for
    /// `rediss://` instead of the system's (a private CA). `cluster`: `url` is one node of a Redis
    /// Cluster, which tells where the others are.
    pub fn new(url: &str, prefix: &str, timeouts: Timeouts, tls_ca_cert: Option<Vec<u8>>, cluster: bool) -> Result<Arc<Self>, BackendError> {
        let shown = redact(url);
        let secret = password(url);
        let opened = match (cluster, tls_ca_cert) {
            (cluster, ca) if url.starts_with(sentinel::SCHEME) => sentinel_server(url, cluster, ca.is_some()),
            (true, None) => cluster_client(url, timeouts).map(Server::Cluster),
            (true, Some(_)) => Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "tls_ca_cert is not supported with cluster=True yet",
            ))),
            (false, Some(root_cert)) => {
                redis::Client::build_with_tls(url, redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) })
                    .map(Server::Single)
            }
            (false, None) => redis::Client::open(url).map(Server::Single),
        };
        let server = opened.map_err(|err| BackendError::Config {
            field: "url".into(),
            message: scrub(&format!("url: {shown} cannot be used: {err}"), secret.as_deref()),
        })?;
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            return Err(BackendError::Config {
                field: "prefix".into(),
                message: format!("prefix: must be non-empty without braces (it goes inside a hash tag), got {prefix:?}"),
            });
        }
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            server,
            url: shown,
            secret,
            prefix: prefix.to_string(),
            timeouts,
            connection: Mutex::new(PerProcess::new(None)),
            idle: Mutex::new(PerProcess::new(Vec::new())),
            outage: Mutex::default(),
            dialect: Arc::default(),
            recoveries: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            watcher_pid: AtomicU32::new(0),
        }))
    }

    /// The URL, password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// How many outages ended so far: what each limiter compares to learn that one did.
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Acquire)
    }

    /// For a primary found through Sentinel: starts, once per process, the task that asks the
    /// Sentinels where it is every [`PRIMARY_CHECK`] and, when it moved, drops every connection made
    /// to the old one (the next call connects to the new one). Nothing for other servers.
    pub fn follow_primary(&self) {
        let pid = process::id();
        if !self.server.follows_failovers() || self.watcher_pid.swap(pid, Ordering::AcqRel) == pid {
            return;
        }
        let Ok(runtime) = crate::backend::redis::runtime::handle() else { return };
        let this = self.me.clone();
        runtime.spawn(async move {
            let mut known: Option<String> = None;
            loop {
                tokio::time::sleep(PRIMARY_CHECK).await;
                let Some(backend) = this.upgrade() else { return };
                let Ok(Some(now)) = backend.server.primary().await else { continue };
                if known.as_ref().is_some_and(|before| *before != now) {
                    backend.generation.fetch_add(1, Ordering::AcqRel);
                    backend.idle().current(Vec::new).clear();
                    *backend.connection.lock().unwrap_or_else(|p| p.into_inner()).current(|| None) = None;
                }
                known = Some(now);
            }
        });
    }

    /// How the server takes the scripts (Functions, or EVALSHA before Redis 7.0).
    pub fn dialect(&self) -> &Arc<Dialect> {
        &self.dialect
    }

    /// The runtime's connection, made on first use (on the runtime).
    async fn connection(&self) -> Result<Shared, RedisError> {
        let made = self.connection.lock().unwrap_or_else(|p| p.into_inner()).current(|| None).clone();
        if let Some(shared) = made {
            return Ok(shared);
        }
        let shared = self.server.connect_shared(self.timeouts).await?;
        let mut slot = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        // Another task may have made one meanwhile: keep that one, so all share one connection.
        Ok(slot.current(|| None).get_or_insert(shared).clone())
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, PerProcess<Vec<Blocking>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails at once while the pause after a failure lasts.
    pub fn check_pause(&self) -> Result<(), BackendError> {
        if let Some(outage) = &self.outage().now {
            let now = Instant::now();
            if now < outage.retry_at {
                return Err(BackendError::Unavailable {
                    message: format!(
                        "Redis at {} is unavailable ({}); next try in {} ms",
                        self.url,
                        outage.cause,
                        (outage.retry_at - now).as_millis()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Runs one call on this thread over a pooled plain connection, unless Redis failed lately and its
    /// pause has not passed. A connection that failed is dropped; the next call opens a new one. A
    /// pooled connection the server had closed while it sat idle (a restart closes them all) is found so
    /// by the call, which `resend` may then send again on a new connection, so that a restart costs the
    /// caller no error.
    pub fn call_blocking<T>(
        &self,
        resend: Resend,
        call: impl Fn(&mut dyn redis::ConnectionLike) -> Result<T, RedisError>,
    ) -> Result<T, BackendError> {
        self.check_pause()?;
        let generation = self.generation.load(Ordering::Acquire);
        let pooled = self.idle().current(Vec::new).pop();
        let reused = pooled.is_some();
        let mut connection = match pooled {
            Some(connection) => connection,
            None => match self.connect_blocking() {
                Ok(connection) => connection,
                Err(err) => return err,
            },
        };
        let mut result = call(connection.as_connection());
        if resend == Resend::IfClosed && reused && result.as_ref().is_err_and(closed_by_server) {
            self.went_away();
            connection = match self.connect_blocking() {
                Ok(connection) => connection,
                Err(err) => return err,
            };
            result = call(connection.as_connection());
        }
        let value = result.map_err(|err| self.failed(err))?;
        if self.generation.load(Ordering::Acquire) == generation {
            self.idle().current(Vec::new).push(connection);
        }
        self.answered();
        Ok(value)
    }

    /// A new plain connection for `call_blocking`, or the failure to make one (noted).
    fn connect_blocking<T>(&self) -> Result<Blocking, Result<T, BackendError>> {
        self.server.connect_blocking(self.timeouts).map_err(|err| Err(self.failed(err)))
    }

    /// A connection for an asyncio event loop to drive (see [`TcpConnection`]), with the scripts loaded;
    /// `None` for addresses it does not serve (TLS, Unix sockets, a Cluster), whose callers go through
    /// the runtime.
    pub fn open_loop_connection(&self) -> Result<Option<TcpConnection>, BackendError> {
        self.check_pause()?;
        let Some(info) = self.server.single_info() else { return Ok(None) };
        let Some(opened) = TcpConnection::open(info, self.timeouts.connect, self.timeouts.command, self.timeouts.spin) else {
            return Ok(None);
        };
        let connection = opened.and_then(|mut connection| connection.load(&self.dialect).map(|()| connection)).map_err(|err| self.failed(err))?;
        self.answered();
        Ok(Some(connection))
    }

    /// A failed call's error, noted, by whichever way it was called (a loop connection's too). A
    /// server that closed the connection went away and may be back already (a restart closes every
    /// connection): that starts no pause, and the next call finds out on a new connection. Any other
    /// failure to reach Redis starts one, which applies to every way of calling.
    pub fn failed(&self, err: RedisError) -> BackendError {
        let closed = closed_by_server(&err);
        let err = self.classify(err);
        if closed {
            self.went_away();
        } else {
            self.note(&Err::<(), _>(err.clone()));
        }
        err
    }

    /// The server closed a connection: what it was told last may be lost with it, as after an outage
    /// (`recoveries`); following failovers, the next call asks the Sentinels where the primary is.
    fn went_away(&self) {
        self.recoveries.fetch_add(1, Ordering::AcqRel);
        if self.server.follows_failovers() {
            *self.connection.lock().unwrap_or_else(|p| p.into_inner()).current(|| None) = None;
        }
    }

    /// Ends the pause after a success.
    fn answered(&self) {
        self.note(&Ok::<(), BackendError>(()));
    }

    /// Runs one call on the runtime, unless Redis failed lately and its pause has not passed.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, BackendError>
    where
        F: FnOnce(Shared) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.check_pause()?;
        let limit = self.call_limit();
        let attempt = async { call(self.connection().await?).await };
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(value)) => {
                self.answered();
                Ok(value)
            }
            Ok(Err(err)) => Err(self.failed(err)),
            Err(_) => {
                let result = Err(BackendError::Unavailable {
                    message: format!("Redis at {} did not answer within {} ms", self.url, limit.as_millis()),
                });
                self.note(&result);
                result
            }
        }
    }

    /// How long a call on the runtime may take: the connections' own timeouts bound connecting and
    /// each answer; this bounds it all together.
    fn call_limit(&self) -> Duration {
        self.timeouts.connect + self.timeouts.command
    }

    fn outage(&self) -> std::sync::MutexGuard<'_, Outages> {
        self.outage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts or lengthens the pause after a failure to reach Redis; ends it after a success.
    fn note<T>(&self, result: &Result<T, BackendError>) {
        let mut outages = self.outage();
        match result {
            Err(BackendError::Unavailable { message }) => {
                let pid = process::id();
                let (number, pause, probed_by) = match &outages.now {
                    Some(going_on) => (going_on.number, (going_on.pause * 2).min(LONGEST_PAUSE), going_on.probed_by),
                    None => {
                        outages.started += 1;
                        (outages.started, FIRST_PAUSE, 0)
                    }
                };
                outages.now = Some(Outage { number, retry_at: Instant::now() + pause, pause, cause: message.clone(), probed_by: pid });
                drop(outages);
                if probed_by != pid {
                    self.probe(number);
                }
                if self.server.follows_failovers() {
                    // The primary may have moved: the next call asks the Sentinels again.
                    *self.connection.lock().unwrap_or_else(|p| p.into_inner()).current(|| None) = None;
                }
            }
            _ => {
                if outages.now.take().is_some() {
                    self.recoveries.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// Asks Redis whether it answers again (PING, at most every [`PROBE_EVERY`], on the runtime) while
    /// outage `number` lasts, and ends its pause when it does: decisions and what is owed back go to
    /// Redis within milliseconds of its return instead of after the pause, and no caller waits to find
    /// out. One PING always waits on a stalled server, which answers it the moment it resumes. A probe
    /// only ends the pause: the outage ends when a call succeeds (a server may answer PING and still
    /// fail calls), and a failed probe leaves the pause as it is. Not for a Cluster, whose PING asks
    /// every primary rather than the node that holds a limit.
    fn probe(&self, number: u64) {
        if matches!(self.server, Server::Cluster(_)) {
            return;
        }
        let Ok(runtime) = crate::backend::redis::runtime::handle() else { return };
        let this = self.me.clone();
        runtime.spawn(async move {
            let mut rest = PROBE_EVERY;
            loop {
                tokio::time::sleep(rest).await;
                let Some(backend) = this.upgrade() else { return };
                let asked = Instant::now();
                let ping = async { redis::cmd("PING").query_async::<()>(&mut backend.connection().await?).await };
                let answered = matches!(tokio::time::timeout(backend.call_limit(), ping).await, Ok(Ok(())));
                let mut outages = backend.outage();
                let Some(outage) = outages.now.as_mut().filter(|outage| outage.number == number) else { return };
                if answered {
                    // Should the calls that follow fail again, the outage goes on with a new probe.
                    (outage.retry_at, outage.probed_by) = (Instant::now(), 0);
                    return;
                }
                rest = PROBE_EVERY.saturating_sub(asked.elapsed());
            }
        });
    }

    /// Sorts a Redis error: refused credentials and bad settings are the user's to fix; anything else
    /// means Redis is unreachable or failing now.
    fn classify(&self, err: RedisError) -> BackendError {
        let refused_credentials = matches!(err.kind(), ErrorKind::AuthenticationFailed)
            || matches!(err.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"));
        let message = scrub(&err.to_string(), self.secret.as_deref());
        if refused_credentials {
            BackendError::Config { field: "url".into(), message: format!("url: Redis at {} refused the credentials: {message}", self.url) }
        } else if matches!(err.kind(), ErrorKind::InvalidClientConfig) {
            BackendError::Config { field: "url".into(), message: format!("url: {}: {message}", self.url) }
        } else {
            BackendError::Unavailable { message: format!("Redis at {}: {message}", self.url) }
        }
    }
}

/// A primary found through the Sentinels a `redis+sentinel://` URL names.
fn sentinel_server(url: &str, cluster: bool, tls: bool) -> Result<Server, RedisError> {
    let refuse = |message: String| RedisError::from((ErrorKind::InvalidClientConfig, "bad Sentinel URL", message));
    if cluster || tls {
        return Err(refuse("cluster=True and tls_ca_cert are not supported with redis+sentinel:// yet".into()));
    }
    let parsed = SentinelUrl::parse(url).map_err(refuse)?;
    let (blocking, shared) = (parsed.client()?, parsed.client()?);
    Ok(Server::Sentinel { blocking: Mutex::new(blocking), shared: tokio::sync::Mutex::new(shared) })
}

fn scrub(message: &str, secret: Option<&str>) -> String {
    match secret {
        Some(secret) => message.replace(secret, "***"),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::redis::tcp_connection::SPIN;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(redact("redis://:hunter2@127.0.0.1:6379/0"), "redis://:***@127.0.0.1:6379/0");
        assert_eq!(redact("rediss://app:s3cr@t@host/1"), "rediss://app:***@host/1");
        assert_eq!(redact("redis://app@host/1"), "redis://app@host/1");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn a_malformed_url_is_a_config_error_without_the_password() {
        let timeouts = Timeouts { connect: Duration::from_secs(1), command: Duration::from_secs(1), spin: SPIN };
        match Backend::new("http://:hunter2@host", "holysheep", timeouts, None, false) {
            Err(BackendError::Config { field, message }) => {
                assert_eq!(field, "url");
                assert!(!message.contains("hunter2") && message.contains("***"), "{message}");
            }
            other => panic!("expected a config error, got {:?}", other.map(|_| ())),
        }
    }
}
