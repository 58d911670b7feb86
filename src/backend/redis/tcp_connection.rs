//! A plain TCP connection that speaks RESP2 itself, so that its caller decides how to wait for an
//! answer. Plain TCP only; `rediss://` and Unix sockets go through redis-rs.
//!
//! - An asyncio event loop drives it without blocking: requests are written on the loop's thread, and
//!   answers read there when the loop reports the socket readable (`loop.add_reader`). An asyncio
//!   decision then crosses no thread at all; through the runtime it crossed two, which cost more than
//!   the Redis round trip itself (see README).
//! - A blocking caller (the pool of `Backend::call_blocking`) waits for its answer awake at first,
//!   then asleep: see [`Waiting`].
//!
//! Answers come in request order (RESP2), so a caller matches them to its requests by order.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisResult, Value};

use crate::backend::redis::scripts::{self, Dialect, Missing};

/// How long a blocking caller waits awake for an answer unless told otherwise (`spin_wait`)...
pub const SPIN: Duration = Duration::from_micros(100);
/// ...and at most: an answer that takes longer than this loses nothing a sleeper would notice (waking
/// costs tens of microseconds), while the CPU spent awake would grow with it.
pub const LONGEST_SPIN: Duration = Duration::from_millis(1);

/// How a blocking caller waits for an answer: awake for up to `spin`, yielding the CPU to any other
/// thread that can run, and then asleep in poll(2) until the command timeout. A thread that sleeps
/// gives its CPU a chance to idle, and waking it costs tens of microseconds on a virtual machine: here
/// a Redis round trip from Python took 54 µs asleep and 21 µs awake (`make bench-redis`), so a nearby
/// server answers before a sleeper would be woken. A connection whose answers typically take longer
/// than `spin` (a distant server, a slow script) sleeps at once, but spins on one wait in [`RESAMPLE`]
/// all the same, to find out when its answers are fast again. At most one thread fewer than the CPUs
/// spins at once in a process (see [`Spinning`]), so its other threads and a server on the same
/// machine keep a CPU; on one CPU nobody spins.
struct Waiting {
    spin: Duration,
    /// How long answers took lately (a moving average, 1/8 per answer).
    typical: Duration,
    /// Waits so far, to spin on every RESAMPLE-th.
    waits: u32,
}

const RESAMPLE: u32 = 16;

impl Waiting {
    fn new(spin: Duration) -> Self {
        Self { spin, typical: Duration::ZERO, waits: 0 }
    }

    /// How long the next wait may spin.
    fn spin_for(&mut self) -> Duration {
        self.waits = self.waits.wrapping_add(1);
        if self.typical <= self.spin || self.waits.is_multiple_of(RESAMPLE) { self.spin } else { Duration::ZERO }
    }

    fn answered_after(&mut self, took: Duration) {
        self.typical = self.typical - self.typical / 8 + took / 8;
    }
}

/// One of the threads of this process spinning now; at most one fewer than the CPUs hold one.
struct Spinning;

static SPINNING: AtomicUsize = AtomicUsize::new(0);
static MOST_SPINNING: LazyLock<usize> = LazyLock::new(|| std::thread::available_parallelism().map_or(0, |cpus| cpus.get() - 1));

impl Spinning {
    fn start() -> Option<Self> {
        SPINNING.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| (now < *MOST_SPINNING).then_some(now + 1)).ok().map(|_| Spinning)
    }
}

impl Drop for Spinning {
    fn drop(&mut self) {
        SPINNING.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct TcpConnection {
    stream: TcpStream,
    /// Bytes read but not yet a whole answer.
    unread: Vec<u8>,
    /// The database selected.
    db: i64,
    command_timeout: Duration,
    waiting: Waiting,
    /// False once a read or write failed or an answer could not be parsed.
    open: bool,
}

fn protocol_error(what: &str) -> RedisError {
    RedisError::from((ErrorKind::Parse, "unexpected answer", what.to_string()))
}

impl TcpConnection {
    /// Connects, authenticates and selects the database, blocking (bounded by the timeouts); `spin`:
    /// how long a blocking caller may wait awake for each answer (see [`Waiting`]). `None` when the
    /// address is not plain TCP.
    pub fn open(info: &ConnectionInfo, connect: Duration, command: Duration, spin: Duration) -> Option<RedisResult<Self>> {
        let ConnectionAddr::Tcp(host, port) = info.addr() else { return None };
        Some((|| {
            let stream = connect_to(host, *port, connect)?;
            stream.set_nodelay(true)?;
            stream.set_nonblocking(true)?;
            let settings = info.redis_settings();
            let mut connection =
                Self { stream, unread: Vec::new(), db: settings.db(), command_timeout: command, waiting: Waiting::new(spin), open: true };
            if let Some(password) = settings.password() {
                connection.authenticate(settings.username(), password)?;
            }
            if settings.db() != 0 {
                connection.call_blocking(&redis::cmd("SELECT").arg(settings.db()).get_packed_command())?;
            }
            Ok(connection)
        })())
    }

    /// AUTH, refused as redis-rs refuses it (so the backend tells bad credentials from an outage);
    /// a server before Redis 6 takes no user name, and is asked again without it.
    fn authenticate(&mut self, user: Option<&str>, password: &str) -> RedisResult<()> {
        let mut auth = redis::cmd("AUTH");
        if let Some(user) = user {
            auth.arg(user);
        }
        match redis::ConnectionLike::req_packed_command(self, &auth.arg(password).get_packed_command())? {
            Value::Okay => Ok(()),
            Value::ServerError(err) if user.is_some() && err.details().is_some_and(|d| d.contains("wrong number of arguments for 'auth'")) => {
                self.authenticate(None, password)
            }
            refused => Err(RedisError::from((ErrorKind::AuthenticationFailed, "Password authentication failed", format!("{refused:?}")))),
        }
    }

    /// Puts on the server what an event loop's connection sends (decisions): the library, or before
    /// Redis 7.0 the acquire script.
    pub fn load(&mut self, dialect: &Dialect) -> RedisResult<()> {
        match self.call_blocking(&dialect.load_command(&scripts::ACQUIRE).get_packed_command()) {
            Err(err) if dialect.missing(&err) == Some(Missing::Unsupported) => self.load(dialect),
            loaded => loaded.map(drop),
        }
    }

    /// One request and its answer, blocking, a server's error as an error.
    fn call_blocking(&mut self, packed: &[u8]) -> RedisResult<Value> {
        redis::ConnectionLike::req_packed_command(self, packed)?.extract_error()
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Writes a request. A full socket buffer (thousands of requests unanswered) is waited out
    /// blocking, bounded by the command timeout, rather than buffered here.
    pub fn send(&mut self, packed: &[u8]) -> io::Result<()> {
        self.send_until(packed, Instant::now() + self.command_timeout)
    }

    fn send_until(&mut self, mut rest: &[u8], deadline: Instant) -> io::Result<()> {
        while !rest.is_empty() {
            match self.stream.write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => rest = &rest[written..],
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if !self.wait_until(libc::POLLOUT, deadline) {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Sleeps until the socket is ready for `events`, a signal comes, or `deadline`; false once the
    /// deadline has passed.
    fn wait_until(&self, events: i16, deadline: Instant) -> bool {
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()) else { return false };
        let mut ready = libc::pollfd { fd: self.fd(), events, revents: 0 };
        let ms = i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        // SAFETY: one pollfd, valid for the call. Whatever it returns, the caller looks again.
        unsafe { libc::poll(&mut ready, 1, ms) };
        true
    }

    /// One request (`packed`) and its `count` answers, the last `count - skip` of them returned, all
    /// within the command timeout.
    fn request(&mut self, packed: &[u8], skip: usize, count: usize) -> RedisResult<Vec<Value>> {
        let deadline = Instant::now() + self.command_timeout;
        self.send_until(packed, deadline).map_err(|err| self.broken(err))?;
        Ok(self.wait_for(count, deadline)?.split_off(skip))
    }

    /// Reads whatever has arrived and returns the whole answers in it, in order. An error (or the
    /// server closing) ends the connection.
    pub fn receive(&mut self) -> RedisResult<Vec<Value>> {
        self.read_arrived()?;
        let mut answers = Vec::new();
        while let Some(value) = self.next_answer()? {
            answers.push(value);
        }
        Ok(answers)
    }

    /// Reads what has arrived into `unread`; whether anything had.
    fn read_arrived(&mut self) -> RedisResult<bool> {
        let mut chunk = [0u8; 16384];
        let mut arrived = false;
        loop {
            match self.stream.read(&mut chunk) {
                // What came before the server hung up is read first; the next read finds the end.
                Ok(0) if arrived => return Ok(true),
                Ok(0) => return Err(self.broken(io::ErrorKind::UnexpectedEof.into())),
                Ok(read) => {
                    self.unread.extend_from_slice(&chunk[..read]);
                    arrived = true;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(arrived),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(self.broken(err)),
            }
        }
    }

    /// Blocks until `count` more whole answers have come (see [`Waiting`]), or fails at `deadline`.
    fn wait_for(&mut self, count: usize, deadline: Instant) -> RedisResult<Vec<Value>> {
        let started = Instant::now();
        let spin = self.waiting.spin_for();
        let mut spinning = if spin.is_zero() { None } else { Spinning::start() };
        let mut answers = Vec::with_capacity(count);
        loop {
            while answers.len() < count {
                let Some(answer) = self.next_answer()? else { break };
                answers.push(answer);
            }
            if answers.len() == count {
                self.waiting.answered_after(started.elapsed());
                return Ok(answers);
            }
            if self.read_arrived()? {
                continue;
            }
            if spinning.is_some() && started.elapsed() < spin {
                // SAFETY: sched_yield takes nothing and only gives up the CPU for a moment.
                unsafe { libc::sched_yield() };
                continue;
            }
            spinning = None;
            if !self.wait_until(libc::POLLIN, deadline) {
                return Err(self.broken(io::ErrorKind::TimedOut.into()));
            }
        }
    }

    /// Marks the connection unusable, passing its error on.
    fn broken(&mut self, err: io::Error) -> RedisError {
        self.open = false;
        err.into()
    }

    /// The first whole answer in `unread`, removed from it; `None` until one has fully arrived.
    fn next_answer(&mut self) -> RedisResult<Option<Value>> {
        let framed = frame_length(&self.unread).map_err(protocol_error);
        if framed.is_err() {
            self.open = false;
        }
        let Some(length) = framed? else { return Ok(None) };
        let value = redis::parse_redis_value(&self.unread[..length])?;
        self.unread.drain(..length);
        Ok(Some(value))
    }
}

impl redis::ConnectionLike for TcpConnection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        Ok(self.request(cmd, 0, 1)?.remove(0))
    }

    fn req_packed_commands(&mut self, cmd: &[u8], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        self.request(cmd, offset, offset + count)
    }

    fn get_db(&self) -> i64 {
        self.db
    }

    fn check_connection(&mut self) -> bool {
        self.call_blocking(&redis::cmd("PING").get_packed_command()).is_ok()
    }

    fn is_open(&self) -> bool {
        self.open
    }
}

/// A connection to the first of `host`'s addresses that takes one (as redis-rs tries them).
fn connect_to(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let mut failed = io::Error::new(io::ErrorKind::NotFound, format!("no address for {host}"));
    for address in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => return Ok(stream),
            Err(err) => failed = err,
        }
    }
    Err(failed)
}

/// The length of the first whole RESP2 value in `bytes`: `Ok(None)` while it is incomplete.
fn frame_length(bytes: &[u8]) -> Result<Option<usize>, &'static str> {
    let Some(line_end) = bytes.windows(2).position(|pair| pair == b"\r\n") else { return Ok(None) };
    let header = bytes.get(1..line_end).and_then(|header| std::str::from_utf8(header).ok()).ok_or("a header that is not text")?;
    let after_header = line_end + 2;
    match bytes.first() {
        Some(b'+' | b'-' | b':') => Ok(Some(after_header)),
        Some(b'$') => {
            let length: i64 = header.parse().map_err(|_| "a bad bulk length")?;
            if length < 0 {
                return Ok(Some(after_header));
            }
            let end = after_header + length as usize + 2;
            Ok((bytes.len() >= end).then_some(end))
        }
        Some(b'*') => {
            let count: i64 = header.parse().map_err(|_| "a bad array length")?;
            let mut end = after_header;
            for _ in 0..count.max(0) {
                match frame_length(&bytes[end..])? {
                    Some(length) => end += length,
                    None => return Ok(None),
                }
            }
            Ok(Some(end))
        }
        _ => Err("an unknown answer type"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::thread;
    use std::time::{Duration, Instant};

    use redis::{ConnectionLike, IntoConnectionInfo, Value};

    use super::{MOST_SPINNING, SPIN, Spinning, TcpConnection, Waiting, frame_length};
    use crate::backend::redis::closed_by_server;

    /// A server that answers each command (its words) with `reply`'s bytes after `delay` (µs,
    /// changeable while it runs), and hangs up after `answers` of them; its URL.
    fn fake_server(answers: usize, delay: Arc<AtomicU64>, reply: impl Fn(&[String]) -> &'static [u8] + Send + 'static) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let (mut answered, mut unread) = (0, Vec::new());
            let mut chunk = [0u8; 4096];
            while answered < answers {
                let Ok(read) = socket.read(&mut chunk) else { return };
                if read == 0 {
                    return;
                }
                unread.extend_from_slice(&chunk[..read]);
                while let Ok(Some(length)) = frame_length(&unread) {
                    let command: Vec<u8> = unread.drain(..length).collect();
                    // "*n", then "$len" and the word for each: the words are every other line.
                    let words: Vec<String> = String::from_utf8_lossy(&command).split("\r\n").skip(2).step_by(2).map(str::to_string).collect();
                    thread::sleep(Duration::from_micros(delay.load(Ordering::Relaxed)));
                    socket.write_all(reply(&words)).unwrap();
                    answered += 1;
                }
            }
        });
        url
    }

    fn pong_server(delay: Arc<AtomicU64>, answers: usize) -> String {
        fake_server(answers, delay, |_| b"+PONG\r\n")
    }

    fn connect(url: &str, command: Duration, spin: Duration) -> TcpConnection {
        TcpConnection::open(&url.into_connection_info().unwrap(), Duration::from_secs(1), command, spin).unwrap().unwrap()
    }

    fn ping() -> Vec<u8> {
        redis::cmd("PING").get_packed_command()
    }

    #[test]
    fn a_blocking_call_gets_its_answers_in_order_whether_it_waits_awake_or_asleep() {
        for spin in [SPIN, Duration::ZERO] {
            for delay_us in [0, 3000] {
                let mut connection = connect(&pong_server(Arc::new(AtomicU64::new(delay_us)), 4), Duration::from_secs(1), spin);
                assert_eq!(connection.req_packed_command(&ping()).unwrap(), Value::SimpleString("PONG".into()));
                let three = [ping(), ping(), ping()].concat();
                assert_eq!(connection.req_packed_commands(&three, 1, 2).unwrap(), vec![Value::SimpleString("PONG".into()); 2]);
                assert!(connection.is_open());
            }
        }
    }

    #[test]
    fn a_connection_spins_while_its_answers_come_within_the_spin_and_looks_again_now_and_then() {
        let mut waiting = Waiting::new(SPIN);
        assert_eq!(waiting.spin_for(), SPIN, "a new connection spins");
        for _ in 0..4 {
            waiting.answered_after(Duration::from_millis(2));
        }
        let spins = (0..32).filter(|_| !waiting.spin_for().is_zero()).count();
        assert_eq!(spins, 2, "answers take 2 ms: one wait in 16 spins, to look again");
        for _ in 0..40 {
            waiting.answered_after(Duration::from_micros(30));
        }
        assert_eq!(waiting.spin_for(), SPIN, "answers come within the spin again");
    }

    #[test]
    fn at_most_one_thread_fewer_than_the_cpus_spins_at_once() {
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(*MOST_SPINNING, cpus - 1);
        let held: Vec<Spinning> = std::iter::from_fn(Spinning::start).take(cpus + 4).collect();
        assert!(held.len() < cpus, "{} spinning on {cpus} CPUs", held.len());
    }

    #[test]
    fn credentials_a_server_refuses_are_told_apart_from_an_outage() {
        let refusing = fake_server(1, Arc::default(), |_| b"-ERR invalid password\r\n");
        let url = refusing.replace("redis://", "redis://:secret@");
        let opened = TcpConnection::open(&url.as_str().into_connection_info().unwrap(), Duration::from_secs(1), Duration::from_secs(1), SPIN);
        let err = opened.unwrap().err().expect("refused");
        assert_eq!(err.kind(), redis::ErrorKind::AuthenticationFailed, "{err}");
    }

    #[test]
    fn a_server_before_redis_6_is_asked_again_without_the_user_name() {
        let old = fake_server(3, Arc::default(), |words| match words {
            [auth, _, _] if auth == "AUTH" => b"-ERR wrong number of arguments for 'auth' command\r\n",
            [auth, password] if auth == "AUTH" && password == "secret" => b"+OK\r\n",
            _ => b"+PONG\r\n",
        });
        let url = old.replace("redis://", "redis://app:secret@");
        let mut connection = connect(&url, Duration::from_secs(1), SPIN);
        assert_eq!(connection.req_packed_command(&ping()).unwrap(), Value::SimpleString("PONG".into()));
    }

    #[test]
    fn a_server_that_never_answers_fails_the_call_at_the_command_timeout() {
        for spin in [SPIN, Duration::ZERO] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("redis://{}", listener.local_addr().unwrap());
            let mut connection = connect(&url, Duration::from_millis(80), spin);
            let started = Instant::now();
            let err = connection.req_packed_command(&ping()).unwrap_err();
            let took = started.elapsed();
            assert!(err.is_timeout(), "{err}");
            assert!((Duration::from_millis(80)..Duration::from_millis(500)).contains(&took), "{took:?}");
            assert!(!connection.is_open());
        }
    }

    #[test]
    fn a_server_that_hangs_up_is_told_apart_from_one_that_is_slow() {
        let mut connection = connect(&pong_server(Arc::new(AtomicU64::new(0)), 1), Duration::from_secs(1), SPIN);
        connection.req_packed_command(&ping()).unwrap();
        let err = connection.req_packed_command(&ping()).unwrap_err();
        assert!(closed_by_server(&err), "{err}");
        assert!(!connection.is_open());
    }

    #[test]
    fn frames_are_whole_only_once_all_their_bytes_arrived() {
        let answer = b"*3\r\n:0\r\n$5\r\nhello\r\n*1\r\n:-7\r\n";
        assert_eq!(frame_length(answer), Ok(Some(answer.len())));
        for cut in 0..answer.len() {
            assert_eq!(frame_length(&answer[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(frame_length(b"-NOSCRIPT No matching script\r\n:1\r\n"), Ok(Some(30)));
        assert_eq!(frame_length(b"$-1\r\n"), Ok(Some(5)));
        assert!(frame_length(b"?what\r\n").is_err());
        assert!(frame_length(b"\r\n").is_err(), "not RESP: an error, not a panic");
    }
}
