//! Sockets and threads: binds 127.0.0.1, serves HTTP/1.1 on a tokio runtime driven by a thread of its
//! own, and stops on request (idempotently, also when dropped) without waiting on hung requests.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::config::GatewayConfig;
use super::handler::{self, Shared};
use super::log::AdmissionRecord;
use crate::core::Error;

/// How long stopping waits for the runtime's tasks to notice; requests still open are then dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(200);
/// Pause after a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(10);

#[derive(Debug)]
pub enum StartError {
    Config(Error),
    Io(io::Error),
}

impl From<io::Error> for StartError {
    fn from(err: io::Error) -> Self {
        StartError::Io(err)
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(err) => write!(f, "{err}"),
            StartError::Io(err) => write!(f, "cannot start the gateway: {err}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running mock gateway on 127.0.0.1.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop_signal: watch::Sender<bool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn worker_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(4))
}

impl Gateway {
    /// Validates `config`, binds 127.0.0.1:`port` (0 picks a free port) and starts serving.
    pub fn start(config: GatewayConfig, port: u16) -> Result<Gateway, StartError> {
        config.validate().map_err(StartError::Config)?;
        // Bound here, not on the thread, so a port in use is the caller's error.
        let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads())
            .thread_name("holysheep-gateway-worker")
            .enable_io()
            .enable_time()
            .build()?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        let shared = Arc::new(Shared::new(config));
        let (stop_signal, stopped) = watch::channel(false);
        let serving = shared.clone();
        let thread = std::thread::Builder::new().name("holysheep-gateway".to_owned()).spawn(move || {
            runtime.block_on(accept_until_stopped(listener, serving, stopped));
            // Drops every connection still open, including requests that never answer.
            runtime.shutdown_timeout(SHUTDOWN_GRACE);
        })?;
        Ok(Gateway { addr, shared, stop_signal, thread: Mutex::new(Some(thread)) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.shared.config
    }

    pub fn admission_log(&self) -> Vec<AdmissionRecord> {
        self.shared.log.snapshot()
    }

    pub fn is_running(&self) -> bool {
        self.thread.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).is_some()
    }

    /// Stops serving and frees the port before returning; later calls do nothing.
    pub fn stop(&self) {
        let thread = self.thread.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(thread) = thread {
            self.stop_signal.send_replace(true);
            // A panic on the server thread has already been reported there; stopping still succeeds.
            let _ = thread.join();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_until_stopped(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, shared.clone()));
                }
                Err(_) => tokio::time::sleep(ACCEPT_RETRY_PAUSE).await,
            },
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    // Small answers go out at once rather than waiting for Nagle's timer.
    let _ = stream.set_nodelay(true);
    let reset = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(ResettableStream { stream, reset: reset.clone() });
    let service = service_fn(move |request| handler::handle(shared.clone(), reset.clone(), request));
    // A connection ends in error when the client goes away or a reset fault ends it: nothing to report.
    let _ = http1::Builder::new().serve_connection(io, service).await;
}

/// A TCP stream that closes with RST instead of FIN once its `reset` flag is set.
struct ResettableStream {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Acquire) {
            // A zero linger makes close() send RST; the socket is closed right after, so nothing is lost.
            let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
