//! A connection driven by the caller's asyncio event loop: requests are written on the loop's thread,
//! and answers read there when the loop reports the socket readable (`loop.add_reader`). An asyncio
//! decision then crosses no thread at all; through the runtime it crossed two, which cost more than
//! the Redis round trip itself (see README). Plain TCP only; `rediss://` and Unix sockets use the
//! runtime. Answers come in request order (RESP2), so the caller matches them to a FIFO of requests.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, Value};

use crate::backend::redis::scripts::{self, Dialect, Missing};

pub struct LoopConnection {
    stream: TcpStream,
    /// Bytes read but not yet a whole answer.
    unread: Vec<u8>,
}

fn protocol_error(what: &str) -> RedisError {
    RedisError::from((ErrorKind::Parse, "unexpected answer", what.to_string()))
}

impl LoopConnection {
    /// Connects, authenticates, selects the database and loads the scripts, blocking (once per event
    /// loop, bounded by the timeouts); then turns non-blocking. `None` when the address is not plain TCP.
    pub fn open(info: &ConnectionInfo, connect: Duration, command: Duration, dialect: &Dialect) -> Option<Result<Self, RedisError>> {
        let ConnectionAddr::Tcp(host, port) = info.addr() else { return None };
        Some((|| {
            let address = (host.as_str(), *port)
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| RedisError::from(io::Error::new(io::ErrorKind::NotFound, format!("no address for {host}"))))?;
            let stream = TcpStream::connect_timeout(&address, connect)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(command))?;
            stream.set_write_timeout(Some(command))?;
            let mut connection = Self { stream, unread: Vec::new() };
            let settings = info.redis_settings();
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
            connection.load(dialect)?;
            connection.stream.set_nonblocking(true)?;
            Ok(connection)
        })())
    }

    /// Puts on the server what this connection sends (decisions): the library, or before Redis 7.0
    /// the acquire script.
    fn load(&mut self, dialect: &Dialect) -> Result<(), RedisError> {
        match self.call_blocking(&dialect.load_command(&scripts::ACQUIRE).get_packed_command()) {
            Err(err) if dialect.missing(&err) == Some(Missing::Unsupported) => self.load(dialect),
            loaded => loaded.map(drop),
        }
    }

    /// One request and its answer, blocking: the handshake only.
    fn call_blocking(&mut self, packed: &[u8]) -> Result<Value, RedisError> {
        self.stream.write_all(packed)?;
        loop {
            if let Some(value) = self.next_answer()? {
                return value.extract_error();
            }
            let mut chunk = [0u8; 4096];
            let read = self.stream.read(&mut chunk)?;
            if read == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            self.unread.extend_from_slice(&chunk[..read]);
        }
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
    pub fn receive(&mut self) -> Result<Vec<Value>, RedisError> {
        let mut chunk = [0u8; 16384];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(read) => self.unread.extend_from_slice(&chunk[..read]),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err.into()),
            }
        }
        let mut answers = Vec::new();
        while let Some(value) = self.next_answer()? {
            answers.push(value);
        }
        Ok(answers)
    }

    /// The first whole answer in `unread`, removed from it; `None` until one has fully arrived.
    fn next_answer(&mut self) -> Result<Option<Value>, RedisError> {
        let Some(length) = frame_length(&self.unread).map_err(protocol_error)? else { return Ok(None) };
        let value = redis::parse_redis_value(&self.unread[..length])?;
        self.unread.drain(..length);
        Ok(Some(value))
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
    use super::frame_length;

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
