//! The server under the API: hyper HTTP/1.1, one task per connection, built so that no
//! client can hold it (the budgets are in docs/DESIGN.md, "HTTP budgets").
//!
//! `axum::serve` has no request-head timeout, no connection cap and no shutdown deadline,
//! so connections are served with hyper's `http1::Builder` here:
//!
//! - a request head must be complete within the header timeout (hyper's timer; it also ends
//!   a kept-alive connection that sends no next request), and a connection on which no byte
//!   moves for the idle timeout is closed (`ConnIo`: a stalled body, an unread answer);
//! - at most `max_connections` are open; at the cap a new connection closes the stalest
//!   one (see `evict_stalest`), so the listen backlog never fills behind held connections;
//! - one address may open `per_address.max_connections` at once and
//!   `per_address.handshakes_per_sec` a second (bursts of twice that); beyond, a new
//!   connection is closed as soon as it is accepted, before any TLS handshake (the costly
//!   part of HTTPS) and without taking another client's slot;
//! - on shutdown, the listener closes, idle connections close, and whatever is still open
//!   after the shutdown timeout is dropped;
//! - hyper's own answers to unparsable requests (empty-bodied 400, 414, 431) are replaced by
//!   JSON ones (`ConnIo`);
//! - with TLS, the handshake runs first, on the same connection slot and within the same
//!   header timeout, and `ConnIo` sits on the TLS stream, so every limit above applies to
//!   the requests as the client wrote them.

use super::{error_body, MAX_HEAD_BYTES, MAX_URI_BYTES};
use crate::relay::{AddressLimits, PerAddress};
use axum::http::StatusCode;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::SockRef;
use std::collections::HashMap;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, Id, JoinError, JoinSet};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tower_service::Service;
use tracing::{debug, info, warn};

/// The most connections served at once, whatever the file-descriptor limit: each may hold
/// up to `MAX_HEAD_BYTES` of head buffer and `MAX_BODY_BYTES` of body (≈ 32 MiB in all).
pub const MAX_CONNECTIONS: usize = 1024;
/// After answering, read (and drop) what the client still sends for at most this long and
/// this many bytes before closing, so the answer is not destroyed by a reset (`linger`).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;
/// Events a client can cause at will are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub max_connections: usize,
    /// What one address may open: at once, and per second.
    pub per_address: AddressLimits,
    /// Serve HTTPS with this (see `crate::tls::server_config`); `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The connection cap for a file-descriptor limit (RLIMIT_NOFILE): half of it, leaving the
/// rest to the relay (its sockets, eBPF maps and links, logs), and at most
/// [`MAX_CONNECTIONS`].
pub fn connection_cap(nofile: u64) -> usize {
    (nofile / 2).clamp(1, MAX_CONNECTIONS as u64) as usize
}

/// The soft RLIMIT_NOFILE of this process.
pub fn nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_cur
}

/// An open connection as the accept loop sees it.
struct Open {
    /// When it last delivered a complete request head, or was accepted if it never did
    /// (µs since the server started).
    fresh: Arc<AtomicU64>,
    abort: AbortHandle,
    peer: IpAddr,
}

/// The open connections and what each address holds of them.
struct Connections {
    open: HashMap<Id, Open>,
    addresses: PerAddress,
    last_sweep: std::time::Instant,
}

impl Connections {
    fn closed(&mut self, id: Id) {
        if let Some(o) = self.open.remove(&id) {
            self.addresses.closed(o.peer);
        }
    }

    /// Whether `peer` may open one more (and counts the attempt against its rate).
    fn admit(&mut self, peer: IpAddr) -> bool {
        let now = std::time::Instant::now();
        if now.saturating_duration_since(self.last_sweep) >= Duration::from_secs(1) {
            self.addresses.sweep(now);
            self.last_sweep = now;
        }
        self.addresses.handshake(peer, now) && self.addresses.may_connect(peer)
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains for at most
/// `opts.shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let epoch = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut conns = Connections {
        open: HashMap::new(),
        addresses: PerAddress::new(opts.per_address),
        last_sweep: std::time::Instant::now(),
    };
    let mut evictions = Throttle::default();
    let mut refusals = Throttle::default();
    let mut accept_errors = Throttle::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = tasks.join_next_with_id() => conns.closed(task_id(&done)),
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => {
                    while let Some(done) = tasks.try_join_next_with_id() {
                        conns.closed(task_id(&done));
                    }
                    let peer = from.ip();
                    if !conns.admit(peer) {
                        if let Some(n) = refusals.tick() {
                            warn!(
                                %peer,
                                refused = n,
                                "HTTP: an address over its connection budget; closing its new \
                                 connections"
                            );
                        }
                        drop(stream);
                        continue;
                    }
                    if conns.open.len() >= opts.max_connections {
                        evict_stalest(&mut conns);
                        if let Some(n) = evictions.tick() {
                            warn!(
                                cap = opts.max_connections,
                                closed = n,
                                "HTTP connection cap reached: closing the connections that \
                                 went longest without a request to admit new ones"
                            );
                        }
                        // Let the evicted task drop its socket before the next accept, so
                        // a burst of connections cannot overshoot the cap.
                        tokio::task::yield_now().await;
                    }
                    let fresh = Arc::new(AtomicU64::new(micros_since(epoch)));
                    let conn = connection(stream, app.clone(), opts.clone(), epoch, fresh.clone(), stop_rx.clone());
                    let abort = tasks.spawn(conn);
                    conns.addresses.opened(peer);
                    conns.open.insert(abort.id(), Open { fresh, abort, peer });
                }
                Err(e) => {
                    // Out of file descriptors or buffers: the listener stays readable, so
                    // wait a little instead of spinning on it.
                    if let Some(n) = accept_errors.tick() {
                        warn!(errors = n, "HTTP accept failed: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(opts.shutdown_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        info!(
            connections = tasks.len(),
            "HTTP: closing the connections still open at the shutdown deadline"
        );
        tasks.shutdown().await;
    }
}

fn task_id(done: &Result<(Id, ()), JoinError>) -> Id {
    match done {
        Ok((id, ())) => *id,
        Err(e) => e.id(),
    }
}

fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// At the cap, the connection that has gone longest without delivering a complete request
/// head makes room: one that never sent a whole head since it was accepted (a held or
/// half-sent request), or a kept-alive one idle since its last request. A client that is
/// being served has just delivered a head and is the last to go; a "refuse new connections
/// at the cap" policy would instead leave honest requests queued in the listen backlog
/// behind whoever holds the slots.
fn evict_stalest(conns: &mut Connections) {
    let stalest = conns
        .open
        .iter()
        .min_by_key(|(_, o)| o.fresh.load(Relaxed))
        .map(|(id, _)| *id);
    if let Some(id) = stalest {
        if let Some(o) = conns.open.get(&id) {
            o.abort.abort();
        }
        conns.closed(id);
    }
}

/// Counts an event a client can cause as often as it likes, and says when to log it: the
/// first time, then at most once per `LOG_EVERY`, with how many happened since.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    count: u64,
}

impl Throttle {
    fn tick(&mut self) -> Option<u64> {
        self.count += 1;
        let now = Instant::now();
        if self.last.is_some_and(|t| now - t < LOG_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

async fn connection(
    stream: TcpStream,
    app: Router,
    opts: ServeOptions,
    epoch: Instant,
    fresh: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let stream = Arc::new(stream);
    let answered = Arc::new(AtomicBool::new(false));
    let tcp = SharedTcp(stream.clone());
    let service = hyper::service::service_fn(move |req| {
        fresh.store(micros_since(epoch), Relaxed);
        let mut app = app.clone();
        async move { app.call(req).await }
    });
    let transport: Box<dyn Transport> = match opts.tls.clone() {
        None => Box::new(tcp),
        Some(tls) => {
            // Until the handshake is done the client has sent no request head: it is held
            // to the header timeout, and meanwhile it is the stalest connection for
            // `evict_stalest`. A peer that is not speaking TLS (plain HTTP to this port)
            // fails here and is closed without an answer.
            let handshake =
                tokio::time::timeout(opts.header_timeout, TlsAcceptor::from(tls).accept(tcp));
            tokio::select! {
                done = handshake => match done {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => return debug!("TLS handshake failed: {e}"),
                    Err(_) => return debug!("TLS handshake not done within the header timeout"),
                },
                () = stopped(stop.clone()) => return,
            }
        }
    };
    let io = ConnIo::new(transport, opts.idle_timeout, answered.clone());
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let done = tokio::select! {
        done = conn.as_mut() => done,
        () = stopped(stop) => {
            // Closes at once if idle, else after the request under way.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = done {
        debug!("HTTP connection ended: {e}");
    }
    if answered.load(Relaxed) {
        linger(&stream).await;
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Closing a socket with unread data makes the kernel send a reset, which can destroy an
/// answer the client has not read yet: a 413 or 414 goes out while the request is still
/// arriving. So after answering, stop writing and read what the client still sends (bounded)
/// before closing, as nginx's lingering close does.
async fn linger(stream: &TcpStream) {
    let _ = SockRef::from(stream).shutdown(Shutdown::Write);
    let mut buf = vec![0u8; 4096];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while left > 0 && stream.readable().await.is_ok() {
            match stream.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => left = left.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}

/// What `ConnIo` reads and writes: the TCP socket itself, or the TLS stream on it.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// The connection's socket as a byte stream, shared (`Arc`) so the connection task can
/// still linger on it after hyper and TLS are done with it.
struct SharedTcp(Arc<TcpStream>);

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl SharedTcp {
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        write: impl Fn(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match write(&self.0) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |s| s.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |s| s.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match SockRef::from(&*self.0).shutdown(Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// The connection as hyper sees it, above TLS if any. Besides moving bytes it:
/// - fails the connection when no byte has moved either way for `idle` (hyper's own timer
///   covers only request heads);
/// - writes a JSON answer in place of the empty-bodied 400, 414 or 431 that hyper sends on
///   its own when it cannot parse a request head;
/// - records whether the last bytes it moved were an answer (`answered`, for `linger`).
struct ConnIo {
    io: Box<dyn Transport>,
    idle: Duration,
    last_io: Instant,
    idle_timer: Pin<Box<Sleep>>,
    /// Bytes read since the last newline: when hyper finds the head too large, a run as long
    /// as its whole head buffer means the request line alone did not fit (414, not 431).
    line_run: usize,
    replacement: Option<Replacement>,
    answered: Arc<AtomicBool>,
}

/// Our answer in place of hyper's, and how much of it is written.
struct Replacement {
    bytes: Vec<u8>,
    sent: usize,
}

impl ConnIo {
    fn new(io: Box<dyn Transport>, idle: Duration, answered: Arc<AtomicBool>) -> ConnIo {
        let now = Instant::now();
        ConnIo {
            io,
            idle,
            last_io: now,
            idle_timer: Box::pin(tokio::time::sleep_until(now + idle)),
            line_run: 0,
            replacement: None,
            answered,
        }
    }

    /// Pending until the connection has been idle for `idle`, then the error that ends it.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let deadline = self.last_io + self.idle;
            if Instant::now() >= deadline {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no byte moved within the idle timeout",
                ));
            }
            // Moved lazily: progress only updates `last_io`.
            if self.idle_timer.deadline() != deadline {
                self.idle_timer.as_mut().reset(deadline);
            }
            ready!(self.idle_timer.as_mut().poll(cx));
        }
    }

    fn read_some(&mut self, bytes: &[u8]) {
        self.answered.store(false, Relaxed);
        if bytes.is_empty() {
            return;
        }
        self.last_io = Instant::now();
        self.line_run = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(i) => bytes.len() - i - 1,
            None => self.line_run.saturating_add(bytes.len()),
        };
    }

    fn wrote_some(&mut self, n: usize) {
        if n > 0 {
            self.last_io = Instant::now();
            self.answered.store(true, Relaxed);
        }
    }

    /// Starts replacing hyper's answer if `head` is one of its own error answers.
    fn intercept(&mut self, head: &[u8]) {
        if self.replacement.is_some() {
            return;
        }
        let Some(status) = hyper_error_status(head) else {
            return;
        };
        let (status, msg) = match status {
            431 if self.line_run >= MAX_HEAD_BYTES => (StatusCode::URI_TOO_LONG, uri_too_long()),
            414 => (StatusCode::URI_TOO_LONG, uri_too_long()),
            431 => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "request head (request line and headers) larger than {MAX_HEAD_BYTES} bytes, \
                     or more than 100 headers"
                ),
            ),
            _ => (
                StatusCode::BAD_REQUEST,
                "malformed HTTP request".to_string(),
            ),
        };
        let body = error_body(&msg);
        let mut bytes = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(&body);
        self.replacement = Some(Replacement { bytes, sent: 0 });
    }

    /// Writes the replacement out; once it is, every later write is swallowed (hyper closes
    /// the connection after its error answer anyway).
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(mut r) = self.replacement.take() else {
            return Poll::Ready(Ok(()));
        };
        let res = loop {
            if r.sent == r.bytes.len() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.io).poll_write(cx, &r.bytes[r.sent..]) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    r.sent += n;
                    self.wrote_some(n);
                }
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break self.poll_idle(cx).map(Err),
            }
        };
        self.replacement = Some(r);
        res
    }

    /// A write, flush or shutdown of the transport; pending counts towards the idle timeout.
    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut dyn Transport>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match op(Pin::new(&mut *self.io), cx) {
            Poll::Pending => self.poll_idle(cx).map(Err),
            done => done,
        }
    }
}

fn uri_too_long() -> String {
    format!("request URI longer than {MAX_URI_BYTES} bytes")
}

/// The status of `head` if it is an answer hyper wrote by itself for a request it could not
/// parse: `HTTP/1.1 400|414|431 ...` with `content-length: 0`. Every answer of the API has a
/// body, so a bodiless one with these statuses is hyper's.
fn hyper_error_status(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    let status = match rest.get(..4)? {
        b"400 " => 400,
        b"414 " => 414,
        b"431 " => 431,
        _ => return None,
    };
    let end = find(head, b"\r\n\r\n")?;
    find(&head[..end + 2], b"\r\ncontent-length: 0\r\n").map(|_| status)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(this.poll_io(cx, |io, cx| io.poll_read(cx, buf)))?;
        this.read_some(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.intercept(buf);
        if this.replacement.is_some() {
            ready!(this.poll_replacement(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        let n = ready!(this.poll_io(cx, |io, cx| io.poll_write(cx, buf)))?;
        this.wrote_some(n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            this.intercept(first);
        }
        if this.replacement.is_some() {
            ready!(this.poll_replacement(cx))?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let n = ready!(this.poll_io(cx, |io, cx| io.poll_write_vectored(cx, bufs)))?;
        this.wrote_some(n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    /// TLS holds written bytes until flushed; the socket alone holds none.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_io(cx, |io, cx| io.poll_flush(cx))
    }

    /// TLS sends its close_notify first; then the socket stops writing.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_io(cx, |io, cx| io.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_hypers_bodiless_error_answers() {
        let own = |s: &str| {
            format!("HTTP/1.1 {s}\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n")
        };
        assert_eq!(
            hyper_error_status(own("414 URI Too Long").as_bytes()),
            Some(414)
        );
        assert_eq!(
            hyper_error_status(own("400 Bad Request").as_bytes()),
            Some(400)
        );
        assert_eq!(
            hyper_error_status(own("431 Request Header Fields Too Large").as_bytes()),
            Some(431)
        );
        assert_eq!(hyper_error_status(own("404 Not Found").as_bytes()), None);
        let ours = "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
                    content-length: 20\r\n\r\n{\"error\":\"x\"}";
        assert_eq!(hyper_error_status(ours.as_bytes()), None);
        // content-length: 0 in a body, not the head, is not hyper's answer.
        let body =
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 24\r\n\r\n\r\ncontent-length: 0\r\n";
        assert_eq!(hyper_error_status(body.as_bytes()), None);
    }

    #[test]
    fn cap_is_half_the_descriptor_limit_within_bounds() {
        assert_eq!(connection_cap(1024), 512);
        assert_eq!(connection_cap(100), 50);
        assert_eq!(connection_cap(1), 1);
        assert_eq!(connection_cap(1 << 20), MAX_CONNECTIONS);
    }
}
