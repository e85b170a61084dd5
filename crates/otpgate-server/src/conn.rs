//! Serving connections: the accept loop with its bounds on what a
//! connection may hold, and the shape of hyper's own refusals.
//!
//! A stranger's connection costs a socket and a task however little it
//! sends, so each is bounded: at most `http.max_connections` at once (the
//! next is answered 503 and closed), the request head within
//! `http.header_timeout_secs` of connecting or of the previous response
//! (hyper's header-read timer, which is also the keep-alive idle timeout),
//! at most `http.max_header_bytes` of it, and no more than
//! `http.idle_timeout_secs` without a byte moving either way (a client that
//! stopped reading its response, a stalled body).
//!
//! hyper answers requests it cannot parse (431, 414, 400 for a bad
//! `Content-Length`) itself, with an empty body, before any handler runs.
//! The wrapper around each connection's socket recognises those answers as
//! they are written and writes the contract's JSON envelope with a reason
//! instead, so every refusal a client sees has the same shape.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The bounds on one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
}

/// Accepts connections on `listener` and serves `app` on each until
/// `shutdown` fires; then stops accepting, lets every connection finish
/// its request in flight (idle ones close at once), and returns when all
/// are closed or after `drain` at the latest.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment rather
                // than spin, and go on.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(client = %peer.ip(), max, "connection refused: too many open connections");
            tokio::spawn(refuse_full(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve_one(stream, peer, app, limits, shutdown).await;
            drop(slot);
        });
    }
    // Every live connection holds a slot: all returned means all closed.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(drain, slots.acquire_many(all)).await;
}

async fn serve_one(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ConnLimits,
    shutdown: CancellationToken,
) {
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = Watched {
        inner: stream,
        start,
        last: last.clone(),
        out: Vec::new(),
        out_at: 0,
    };
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let idle_ms = u64::try_from(limits.idle_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client = %peer.ip(), error = %e, "connection ended");
                }
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = tick.tick() => {
                let now = elapsed_ms(start);
                if now.saturating_sub(last.load(Ordering::Relaxed)) >= idle_ms {
                    tracing::debug!(client = %peer.ip(), "connection closed: idle");
                    return;
                }
            }
        }
    }
}

/// Answers a connection over the cap with 503 and closes it, reading (a
/// little, briefly) what it sent first so the close does not reset the
/// answer away.
async fn refuse_full(mut stream: TcpStream) {
    let body = envelope(
        503,
        "SERVICE_UNAVAILABLE",
        "the server has too many open connections; try again shortly",
    );
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&body).await;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < 64 * 1024 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// The contract's envelope for a refusal outside its table.
fn envelope(status: u16, message: &str, reason: &str) -> Vec<u8> {
    let e = otpgate_api::Envelope::<()> {
        response_code: otpgate_api::ResponseCode::Other(i64::from(status)),
        message: message.to_owned(),
        data: None,
        error_message: Some(reason.to_owned()),
    };
    serde_json::to_vec(&e).unwrap_or_default()
}

fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The replacement for one of hyper's automatic refusals, if `buf` begins
/// with one: a status hyper sends on its own and a head without a
/// `Content-Type` (every response of otpgate's own has one).
fn rewrite_refusal(buf: &[u8]) -> Option<Vec<u8>> {
    if !(buf.starts_with(b"HTTP/1.1 4") || buf.starts_with(b"HTTP/1.0 4")) {
        return None;
    }
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status_line = head.lines().next()?;
    let code: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?
        .get(..3)?
        .parse()
        .ok()?;
    if head.to_ascii_lowercase().contains("\r\ncontent-type:") {
        return None;
    }
    let (message, reason, line) = match code {
        400 => (
            "BAD_REQUEST",
            "the request is not valid HTTP/1.1 (e.g. a bad or repeated Content-Length, a malformed header)",
            "400 Bad Request",
        ),
        414 => (
            "URI_TOO_LONG",
            "the request's URI is longer than the server accepts",
            "414 URI Too Long",
        ),
        431 => (
            "REQUEST_HEADER_FIELDS_TOO_LARGE",
            "the request's headers are larger than the server accepts (http.max_header_bytes) or too many",
            "431 Request Header Fields Too Large",
        ),
        _ => return None,
    };
    let body = envelope(code, message, reason);
    let mut out = format!(
        "HTTP/1.1 {line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

/// The connection's socket, noting when bytes last moved and replacing
/// hyper's automatic refusals with the envelope ([`rewrite_refusal`]).
struct Watched {
    inner: TcpStream,
    start: Instant,
    /// Milliseconds after `start` when a byte last moved.
    last: Arc<AtomicU64>,
    /// A replacement response still to be written, and how much of it is.
    out: Vec<u8>,
    out_at: usize,
}

impl Watched {
    fn touch(&self) {
        self.last.store(elapsed_ms(self.start), Ordering::Relaxed);
    }

    /// Writes what is left of a replacement response.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_at..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
            self.touch();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if let Some(replacement) = rewrite_refusal(buf) {
            // hyper closes the connection after such an answer: whatever it
            // wrote is taken, and the envelope goes out instead.
            self.out = replacement;
            self.out_at = 0;
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_own_refusals_become_envelopes() {
        let hyper_431 =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(rewrite_refusal(hyper_431).expect("rewritten")).unwrap();
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        assert!(out.contains("content-type: application/json"), "{out}");
        let body = out.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["responseCode"], 431);
        assert!(v["errorMessage"].as_str().unwrap().contains("headers"));
        assert!(
            rewrite_refusal(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").is_some()
        );
    }

    #[test]
    fn otpgates_own_answers_pass_untouched() {
        for ours in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 303 See Other\r\nlocation: /console\r\n\r\n",
            b"partial head",
        ] {
            assert!(rewrite_refusal(ours).is_none());
        }
    }
}
