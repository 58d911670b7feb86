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
/// a Redis round trip from Python took 55 µs asleep and 21 µs awake, so a nearby server answers before
/// a sleeper would be woken. A connection whose answers typically take longer than `spin` (a distant
/// server, a slow script) sleeps at once, so spinning costs CPU only where it pays; on one CPU it
/// never spins, since the server would wait for the spinner's time slice.
struct Waiting {
    spin: Duration,
    /// How long answers took lately (a moving average, 1/8 per answer).
    typical: Duration,
}

static ONE_CPU: LazyLock<bool> = LazyLock::new(|| std::thread::available_parallelism().map_or(true, |cpus| cpus.get() == 1));

impl Waiting {
    fn new(spin: Duration) -> Self {
        Self { spin: if *ONE_CPU { Duration::ZERO } else { spin }, typical: Duration::ZERO }
    }

    /// How long the next wait may spin.
    fn spin_for(&self) -> Duration {
        if self.typical <= self.spin { self.spin } else { Duration::ZERO }
    }

    fn answered_after(&mut self, took: Duration) {
        self.typical = self.typical - self.typical / 8 + took / 8;
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
            let address = (host.as_str(), *port)
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| RedisError::from(io::Error::new(io::ErrorKind::NotFound, format!("no address for {host}"))))?;
            let stream = TcpStream::connect_timeout(&address, connect)?;
            stream.set_nodelay(true)?;
            // Writes that find the socket's buffer full block (see `send`), bounded by this.
            stream.set_write_timeout(Some(command))?;
            stream.set_nonblocking(true)?;
            let settings = info.redis_settings();
            let mut connection =
                Self { stream, unread: Vec::new(), db: settings.db(), command_timeout: command, waiting: Waiting::new(spin), open: true };
            if let Some(password) = settings.password() {
                let mut auth = redis::cmd("AUTH");
                if let Some(user) = settings.username() {
                    auth.arg(user);
                }
                connection.call_blocking(&auth.arg(password).get_packed_command())?;
            }
            if settings.db() != 0 {
                connection.call_blocking(&redis::cmd("SELECT").arg(settings.db()).get_packed_command())?;
            }
            Ok(connection)
        })())
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
        match self.stream.write(packed) {
            Ok(written) if written == packed.len() => Ok(()),
            Ok(written) => self.send_blocking(&packed[written..]),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => self.send_blocking(packed),
            Err(err) => Err(err),
        }
    }

    fn send_blocking(&mut self, rest: &[u8]) -> io::Result<()> {
        self.stream.set_nonblocking(false)?;
        let written = self.stream.write_all(rest);
        self.stream.set_nonblocking(true)?;
        written
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

    /// Blocks until `count` more whole answers have come (see [`Waiting`]), at most the command
    /// timeout.
    fn wait_for(&mut self, count: usize) -> RedisResult<Vec<Value>> {
        let started = Instant::now();
        let spin = self.waiting.spin_for();
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
            let waited = started.elapsed();
            if waited < spin {
                // SAFETY: sched_yield takes nothing and only gives up the CPU for a moment.
                unsafe { libc::sched_yield() };
                continue;
            }
            let Some(left) = self.command_timeout.checked_sub(waited).filter(|left| !left.is_zero()) else {
                return Err(self.broken(io::ErrorKind::TimedOut.into()));
            };
            let mut readable = libc::pollfd { fd: self.fd(), events: libc::POLLIN, revents: 0 };
            let ms = i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
            // SAFETY: one pollfd, valid for the call. It returns when the socket is readable, on a
            // signal or at the timeout; the loop looks again in every case.
            unsafe { libc::poll(&mut readable, 1, ms) };
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
        self.send(cmd).map_err(|err| self.broken(err))?;
        Ok(self.wait_for(1)?.remove(0))
    }

    fn req_packed_commands(&mut self, cmd: &[u8], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        self.send(cmd).map_err(|err| self.broken(err))?;
        Ok(self.wait_for(offset + count)?.split_off(offset))
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

/// The length of the first whole RESP2 value in `bytes`: `Ok(None)` while it is incomplete.
fn frame_length(bytes: &[u8]) -> Result<Option<usize>, &'static str> {
    let Some(line_end) = bytes.windows(2).position(|pair| pair == b"\r\n") else { return Ok(None) };
    let header = std::str::from_utf8(&bytes[1..line_end]).map_err(|_| "a header that is not text")?;
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

    use super::{ONE_CPU, SPIN, TcpConnection, frame_length};
    use crate::backend::redis::closed_by_server;

    /// A server that answers each PING with PONG after `delay` (µs, changeable while it runs), and
    /// hangs up after `answers` of them; its URL.
    fn pong_server(delay: Arc<AtomicU64>, answers: usize) -> String {
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
                while let Some(at) = unread.windows(6).position(|w| w == b"PING\r\n") {
                    unread.drain(..at + 6);
                    thread::sleep(Duration::from_micros(delay.load(Ordering::Relaxed)));
                    socket.write_all(b"+PONG\r\n").unwrap();
                    answered += 1;
                }
            }
        });
        url
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
    fn answers_slower_than_the_spin_are_waited_for_asleep_until_they_are_fast_again() {
        let spinning = if *ONE_CPU { Duration::ZERO } else { SPIN };
        let delay = Arc::new(AtomicU64::new(2000));
        let mut connection = connect(&pong_server(Arc::clone(&delay), 100), Duration::from_secs(1), SPIN);
        assert_eq!(connection.waiting.spin_for(), spinning, "a new connection spins");
        connection.req_packed_command(&ping()).unwrap();
        for _ in 0..4 {
            connection.req_packed_command(&ping()).unwrap();
        }
        assert_eq!(connection.waiting.spin_for(), Duration::ZERO, "answers take 2 ms: it sleeps at once");
        delay.store(0, Ordering::Relaxed);
        for _ in 0..60 {
            connection.req_packed_command(&ping()).unwrap();
        }
        assert_eq!(connection.waiting.spin_for(), spinning, "answers come at once again");
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
    }
}
