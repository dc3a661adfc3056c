//! # Zero-copy blob bodies: `sendfile(2)` from the CAS file to the socket
//!
//! A blob body served through hyper is copied twice on this side of the socket: a
//! `pread` from the page cache into a buffer, then a `write` from that buffer into the
//! socket. nginx's `sendfile on` does neither: the kernel hands page-cache pages to
//! TCP. On loopback the receiver's copy is then the only one left, which is why nginx
//! streamed 0.6–0.8× faster than the read path in issue 11's re-runs. hyper cannot
//! sendfile by itself: it only writes bytes it was given. So:
//!
//! - **Our listener** ([`serve`]) hands hyper a connection type of its own, [`Conn`],
//!   and every request on it carries a [`Sendfile`] handle in its extensions.
//! - **The body is placeholders.** [`Sendfile::body`] registers the file and range
//!   with the connection, and the body's frames are slices of one static, never
//!   written region ([`PLACEHOLDER`]), `len` bytes in all. hyper frames and counts
//!   them like any body (Content-Length, HEAD, keep-alive all stay hyper's).
//! - **The connection swaps them for the file.** When hyper writes, [`Conn`] knows
//!   placeholder bytes by their address: it sends the bytes before them (the response
//!   head) as given, and instead of the placeholders `sendfile`s as many bytes of the
//!   registered file, from the registered offset, as the socket takes.
//! - **No `TCP_CORK`** (nginx's `tcp_nopush`, on in Debian's nginx.conf), and
//!   `TCP_NODELAY` on as nginx sets it on keep-alive connections. Measured in
//!   `cargo bench --bench boot_serve` on an idle machine (docs/PERFORMANCE.md): corked,
//!   this path streamed like nginx (1.0–1.2× at 1 client) and curl spent 0.58–0.67 s of
//!   CPU per GB receiving; uncorked, 2.1–2.2× nginx and 0.26 s/GB, for 0.27 instead
//!   of 0.2 s/GB of server CPU. (Over a real NIC the receiver is another machine; the
//!   server's cost is what is left, and either way a fraction of the read path's.)
//!   Everything else (scripts, overlays, errors) is written as given.
//!
//! Why this is safe to rely on: hyper writes a connection's responses in order, and it
//! passes body buffers through without copying when the connection says it supports
//! vectored writes ([`Conn`] does; hyper's `WriteStrategy::Queue`). One file is
//! registered at a time: a body whose file would overlap the previous one (pipelined
//! requests) waits until that one is sent. Placeholder bytes that arrive with no file
//! registered, or more of them than registered, fail the connection — the client sees
//! a cut transfer, never zeros or another response's bytes (tested below and in
//! `tests/it/boot_http.rs`).
//!
//! **Bounded before a request:** [`serve_with`] builds hyper's HTTP/1 connection itself
//! (not through `axum::serve`, which gives hyper no timer) with a header read timeout
//! and a request head size limit ([`ConnLimits`]): a slowloris client is closed, an
//! oversized head gets 431.
//!
//! What it does not do: a page that is not in the page cache is read by `sendfile` on
//! the worker thread (as nginx does without `aio threads`); the kernel's readahead
//! keeps a sequential transfer ahead of the socket, and a blob was read whole when it
//! was verified. HTTP/2 and plain `axum::serve` listeners carry no [`Sendfile`]
//! handle: [`super::serve::respond`] then streams through the read path.

use std::fs::File;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::Request;
use axum::Router;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Largest body frame; one frame becomes at most one `sendfile` call of this size.
const FRAME: usize = 2 << 20;

/// The placeholder region. Zero-initialised and never written, so it costs no memory
/// (it lives in `.bss` and is never touched: nothing reads it when all goes well).
static PLACEHOLDER: [u8; FRAME] = [0; FRAME];

fn is_placeholder(b: &[u8]) -> bool {
    let start = PLACEHOLDER.as_ptr() as usize;
    let p = b.as_ptr() as usize;
    !b.is_empty() && p >= start && p < start + FRAME
}

/// The file a connection is sending: `remaining` bytes from `offset`.
#[derive(Debug)]
struct Plan {
    file: Arc<File>,
    offset: u64,
    remaining: u64,
}

/// One connection's zero-copy handle, found in the extensions of every request that
/// came through [`serve`].
#[derive(Debug, Clone, Default)]
pub struct Sendfile(Arc<Mutex<Slot>>);

/// The file being sent on a connection, and a body waiting to register the next one.
#[derive(Debug, Default)]
struct Slot {
    plan: Option<Plan>,
    waiting: Option<std::task::Waker>,
}

impl Slot {
    /// The current file is sent (or failed): let the next body register its own.
    fn finish(&mut self) {
        self.plan = None;
        if let Some(w) = self.waiting.take() {
            w.wake();
        }
    }
}

impl Sendfile {
    /// A response body of `len` bytes of `file` from `offset`, sent by the connection
    /// with `sendfile(2)`. The response must carry `Content-Length: len`.
    pub fn body(&self, file: File, offset: u64, len: u64) -> Body {
        Body::from_stream(Placeholders {
            slot: self.clone(),
            plan: Some(Plan {
                file: Arc::new(file),
                offset,
                remaining: len,
            }),
            left: len,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The body of [`Sendfile::body`]: registers its file when first polled (so a body
/// never polled, as for HEAD, registers nothing), then yields placeholder frames.
struct Placeholders {
    slot: Sendfile,
    plan: Option<Plan>,
    left: u64,
}

impl futures::Stream for Placeholders {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(plan) = self.plan.take().filter(|p| p.remaining > 0) {
            let slot = self.slot.clone();
            let mut slot = slot.lock();
            if slot.plan.is_some() {
                // The previous response's file is still going out (hyper writes a
                // response head only after the previous body has left its buffer, so
                // this does not happen today; should it, the bytes must not mix).
                slot.waiting = Some(cx.waker().clone());
                self.plan = Some(plan);
                return Poll::Pending;
            }
            slot.plan = Some(plan);
        }
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(FRAME as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Bytes::from_static(&PLACEHOLDER[..n]))))
    }
}

/// A TCP connection that sends placeholder bytes as file bytes (see the module notes).
#[derive(Debug)]
pub struct Conn {
    tcp: TcpStream,
    sendfile: Sendfile,
}

impl Conn {
    fn write_slices(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let Some(k) = bufs.iter().position(|b| is_placeholder(b)) else {
            return Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        };
        if bufs[..k].iter().any(|b| !b.is_empty()) {
            // The response head (and anything else before the file), as given.
            return Pin::new(&mut self.tcp).poll_write_vectored(cx, &bufs[..k]);
        }
        let want: u64 = bufs[k..]
            .iter()
            .take_while(|b| is_placeholder(b))
            .map(|b| b.len() as u64)
            .sum();
        self.poll_sendfile(cx, want)
    }

    fn poll_sendfile(&mut self, cx: &mut Context<'_>, want: u64) -> Poll<io::Result<usize>> {
        let mut slot = self.sendfile.lock();
        let Some(plan) = slot.plan.as_mut() else {
            return Poll::Ready(Err(io::Error::other(
                "zero-copy body bytes with no file registered for this response (a bug: refusing to send placeholders)",
            )));
        };
        let count = want.min(plan.remaining).min(FRAME as u64) as usize;
        if count == 0 {
            return Poll::Ready(Err(io::Error::other(
                "zero-copy body longer than the file range registered for it (a bug: refusing to send placeholders)",
            )));
        }
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let sent = self.tcp.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(&self.tcp, &*plan.file, Some(&mut plan.offset), count).map_err(io::Error::from)
            });
            match sent {
                Ok(0) => {
                    slot.finish();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob ended before its recorded size (truncated on disk?)",
                    )));
                }
                Ok(n) => {
                    plan.remaining -= n as u64;
                    if plan.remaining == 0 {
                        slot.finish(); // and close the file as soon as it is sent
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    slot.finish();
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.write_slices(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write_slices(cx, bufs)
    }

    /// True: hyper then queues body buffers as they are instead of copying them into
    /// its own buffer, which keeps the placeholders recognisable.
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A TCP listener whose connections are [`Conn`]s.
#[derive(Debug)]
pub struct Listener(pub TcpListener);

/// A connection's peer address and zero-copy handle (the listener's address type;
/// [`serve`] turns it into `ConnectInfo<SocketAddr>` plus a [`Sendfile`] extension).
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub sendfile: Sendfile,
}

impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Conn, Peer) {
        loop {
            match self.0.accept().await {
                Ok((tcp, addr)) => {
                    // As nginx does on keep-alive connections: the tail of a body is
                    // not held back waiting for an ACK (Nagle with a delayed ACK
                    // would cost up to 40 ms at the end of a response).
                    let _ = tcp.set_nodelay(true);
                    let sendfile = Sendfile::default();
                    return (
                        Conn {
                            tcp,
                            sendfile: sendfile.clone(),
                        },
                        Peer { addr, sendfile },
                    );
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Out of file descriptors and the like: axum's own listener waits
                    // a second too rather than spinning.
                    tracing::error!("HTTP accept failed, retrying in 1 s: {e}");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            addr: self.0.local_addr()?,
            sendfile: Sendfile::default(),
        })
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// What one HTTP/1 connection may cost the server before it has sent a request: a
/// client that dribbles its request head (slowloris) or sends an endless one cannot
/// hold a connection or grow a buffer. Both are hyper's own checks, switched on here:
/// `axum::serve` gives hyper no timer, so it has no header timeout at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Request line and headers, in bytes; a longer head gets 431 (hyper's answer) and
    /// the connection is closed.
    pub max_head_bytes: usize,
    /// How long a connection has to send a complete request head, counted from when
    /// the server starts waiting for one (the connection's start, or the end of the
    /// previous response on a kept-alive connection); then it is closed. A response
    /// being sent is never cut by it.
    pub header_read_timeout: std::time::Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_head_bytes: 8 * 1024,
            header_read_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// Serve `router` on `listener` until `shutdown` resolves (then finish the requests in
/// flight), like `axum::serve(…).with_graceful_shutdown(…)` with
/// `into_make_service_with_connect_info::<SocketAddr>()`, plus a [`Sendfile`] handle
/// in every request's extensions, with the default [`ConnLimits`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(listener, router, ConnLimits::default(), shutdown).await
}

/// [`serve`] with the given limits. HTTP/1 only (what iPXE, curl, `wwclient` and the
/// peer heads speak).
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_connections(Listener(listener), router, limits, shutdown).await
}

/// What every request of a connection carries besides itself (its extensions): the
/// client's address as `ConnectInfo<SocketAddr>`, and whatever the listener adds (a
/// [`Sendfile`] handle on plain TCP).
pub trait Accepted: Clone + Send + Sync + 'static {
    fn addr(&self) -> SocketAddr;
    fn extend(&self, extensions: &mut axum::http::Extensions);
}

impl Accepted for Peer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn extend(&self, extensions: &mut axum::http::Extensions) {
        extensions.insert(ConnectInfo(self.addr));
        extensions.insert(self.sendfile.clone());
    }
}

/// [`serve_with`] over any listener (the HTTPS listener of `boot::http::tls` too), so
/// every port a head serves boot routes on has the same [`ConnLimits`] and shutdown.
pub async fn serve_connections<L>(
    mut listener: L,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: Accepted,
{
    // As `axum::serve`: the shutdown signal drops a receiver (tasks see the sender
    // closed); each connection task holds a receiver of `close` until it ends.
    let (signal_tx, signal_rx) = tokio::sync::watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(signal_rx);
    });
    let (close_tx, close_rx) = tokio::sync::watch::channel(());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_head_bytes);
    let refused = Arc::new(crate::logging::EveryPer::<std::net::IpAddr>::new(
        std::time::Duration::from_secs(10),
    ));
    loop {
        let (conn, peer) = tokio::select! {
            c = listener.accept() => c,
            () = signal_tx.closed() => break,
        };
        let (router, http, signal_tx, close_rx, refused) = (
            router.clone(),
            http.clone(),
            signal_tx.clone(),
            close_rx.clone(),
            refused.clone(),
        );
        let addr = peer.addr();
        let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            peer.extend(req.extensions_mut());
            let mut router = router.clone();
            // A Router is always ready (axum's docs): no `poll_ready` needed.
            tower::Service::call(&mut router, req)
        });
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(http.serve_connection(hyper_util::rt::TokioIo::new(conn), svc));
            let mut signal = std::pin::pin!(signal_tx.closed());
            let mut stopping = false;
            let result = loop {
                tokio::select! {
                    r = conn.as_mut() => break r,
                    () = &mut signal, if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            };
            if let Err(e) = result {
                report(&e, addr, &limits, &refused);
            }
            drop(close_rx);
        });
    }
    drop(close_rx);
    drop(listener);
    close_tx.closed().await;
    Ok(())
}

/// The trace a connection's end leaves: an oversized head (a broken or hostile client)
/// is logged, once per client per 10 s; a header timeout is also how an idle
/// kept-alive connection ends, so it is only a debug line.
fn report(
    e: &hyper::Error,
    client: SocketAddr,
    limits: &ConnLimits,
    refused: &crate::logging::EveryPer<std::net::IpAddr>,
) {
    if e.is_parse_too_large() {
        if let Some(n) = refused.tick(&client.ip()) {
            tracing::warn!(
                client = %client.ip(),
                refused_since_last_report = n,
                "HTTP: request head (URI and headers) over {} bytes; answered 431 and closed the connection \
                 (boot.http.max_head_bytes)",
                limits.max_head_bytes
            );
        }
    } else if e.is_timeout() {
        tracing::debug!(
            %client,
            "HTTP: no complete request head within {} s; connection closed (boot.http.header_read_timeout_secs)",
            limits.header_read_timeout.as_secs_f64()
        );
    } else {
        tracing::debug!(%client, "HTTP connection ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::{serve, Cas};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    #[test]
    fn placeholders_are_known_by_address_only() {
        assert!(is_placeholder(&PLACEHOLDER[..1]));
        assert!(is_placeholder(&PLACEHOLDER[FRAME - 1..]));
        assert!(!is_placeholder(&PLACEHOLDER[..0]), "an empty slice is nobody's");
        let zeros = vec![0u8; 16];
        assert!(!is_placeholder(&zeros), "zeros elsewhere are data");
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect()
    }

    /// A server on 127.0.0.1:0 through [`serve`]: the blob route, a text route, and
    /// `/short`, which claims 10,000 bytes of a 5,000-byte file.
    async fn start(cas: Cas, short: std::path::PathBuf) -> (SocketAddr, tokio_util::sync::CancellationToken) {
        use axum::extract::Request;
        use axum::http::header;
        use axum::response::IntoResponse;
        let app = crate::cas::http::router(cas)
            .route("/text", axum::routing::get(|| async { "plain text" }))
            .route(
                "/short",
                axum::routing::get(move |req: Request| {
                    let short = short.clone();
                    async move {
                        let file = File::open(&short).unwrap();
                        let z: &Sendfile = req.extensions().get().expect("a Sendfile handle on every request");
                        ([(header::CONTENT_LENGTH, "10000")], z.body(file, 0, 10_000)).into_response()
                    }
                }),
            );
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(serve(l, app, stop.clone().cancelled_owned()));
        (addr, stop)
    }

    /// One response read off a keep-alive connection: status, headers (lower case),
    /// body (Content-Length bytes, none for HEAD and 304).
    async fn response(
        r: &mut BufReader<TcpStream>,
        head_only: bool,
    ) -> (u16, std::collections::HashMap<String, String>, Vec<u8>) {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        let status: u16 = line.split_whitespace().nth(1).expect("a status line").parse().unwrap();
        let mut headers = std::collections::HashMap::new();
        loop {
            line.clear();
            r.read_line(&mut line).await.unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.insert(k.trim().to_lowercase(), v.trim().to_owned());
        }
        let len: usize = headers.get("content-length").map_or(0, |v| v.parse().unwrap());
        let mut body = vec![0u8; if head_only || status == 304 { 0 } else { len }];
        r.read_exact(&mut body).await.unwrap();
        (status, headers, body)
    }

    /// One connection, many requests: full, HEAD, ranges, a text route in between, a
    /// conditional 304 and a 416 — each body the right bytes, so the file of one
    /// response never leaks into the next.
    #[tokio::test]
    async fn a_keep_alive_connection_mixes_file_and_other_responses() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path()).unwrap();
        // Larger than a frame and than the socket buffers: several sendfile calls.
        let blob = data(5 * FRAME + 12_345);
        let d = cas.put_bytes(&blob).unwrap();
        let (addr, _stop) = start(cas, dir.path().join("unused")).await;
        let mut c = BufReader::new(TcpStream::connect(addr).await.unwrap());
        let req = |method: &str, path: &str, extra: &str| {
            format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").into_bytes()
        };
        let path = format!("/blob/{d}");
        let len = blob.len();

        c.get_mut().write_all(&req("GET", &path, "")).await.unwrap();
        let (st, h, body) = response(&mut c, false).await;
        assert_eq!((st, body.len()), (200, len));
        assert!(body == blob, "the whole blob, byte for byte");
        assert_eq!(h["etag"], serve::etag(&d));

        c.get_mut().write_all(&req("HEAD", &path, "")).await.unwrap();
        let (st, h, _) = response(&mut c, true).await;
        assert_eq!((st, h["content-length"].as_str()), (200, len.to_string().as_str()));

        c.get_mut()
            .write_all(&req("GET", &path, "Range: bytes=1000-1999\r\n"))
            .await
            .unwrap();
        let (st, h, body) = response(&mut c, false).await;
        assert_eq!(st, 206);
        assert_eq!(h["content-range"], format!("bytes 1000-1999/{len}"));
        assert!(body == blob[1000..2000]);

        c.get_mut().write_all(&req("GET", "/text", "")).await.unwrap();
        let (st, _, body) = response(&mut c, false).await;
        assert_eq!((st, body.as_slice()), (200, b"plain text".as_slice()));

        c.get_mut()
            .write_all(&req("GET", &path, "Range: bytes=-500\r\n"))
            .await
            .unwrap();
        let (st, _, body) = response(&mut c, false).await;
        assert_eq!(st, 206);
        assert!(body == blob[len - 500..], "a suffix range");

        let from = FRAME as u64 + 7;
        c.get_mut()
            .write_all(&req("GET", &path, &format!("Range: bytes={from}-\r\n")))
            .await
            .unwrap();
        let (st, _, body) = response(&mut c, false).await;
        assert_eq!(st, 206);
        assert!(
            body == blob[from as usize..],
            "an open range from inside the second frame"
        );

        let inm = format!("If-None-Match: {}\r\n", serve::etag(&d));
        c.get_mut().write_all(&req("GET", &path, &inm)).await.unwrap();
        let (st, _, _) = response(&mut c, false).await;
        assert_eq!(st, 304);

        c.get_mut()
            .write_all(&req("GET", &path, &format!("Range: bytes={len}-\r\n")))
            .await
            .unwrap();
        let (st, h, _) = response(&mut c, false).await;
        assert_eq!(st, 416);
        assert_eq!(h["content-range"], format!("bytes */{len}"));

        // And the connection still serves a whole blob after all that.
        c.get_mut().write_all(&req("GET", &path, "")).await.unwrap();
        let (st, _, body) = response(&mut c, false).await;
        assert!(st == 200 && body == blob);
    }

    /// Pipelined requests: the next response's body may be taken up while the end of
    /// the previous file is still queued in hyper's write buffer. Its file must wait
    /// for that end to go out, not take its place.
    #[tokio::test]
    async fn pipelined_requests_get_their_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path()).unwrap();
        // A's last frame (300 KiB) is under hyper's buffer limit: hyper takes up the next
        // body without flushing it first.
        let a = data(FRAME + 300 * 1024);
        let b: Vec<u8> = data(FRAME + 123_457).iter().map(|x| x ^ 0x5a).collect();
        let (da, db) = (cas.put_bytes(&a).unwrap(), cas.put_bytes(&b).unwrap());
        let (addr, _stop) = start(cas, dir.path().join("unused")).await;
        let mut c = BufReader::new(TcpStream::connect(addr).await.unwrap());
        let all = format!(
            "GET /blob/{da} HTTP/1.1\r\nHost: t\r\n\r\n\
             GET /blob/{db} HTTP/1.1\r\nHost: t\r\n\r\n\
             GET /blob/{da} HTTP/1.1\r\nHost: t\r\nRange: bytes=1000-\r\n\r\n\
             GET /blob/{db} HTTP/1.1\r\nHost: t\r\n\r\n"
        );
        c.get_mut().write_all(all.as_bytes()).await.unwrap();
        for (i, want) in [&a[..], &b[..], &a[1000..], &b[..]].into_iter().enumerate() {
            let (st, _, body) = tokio::time::timeout(std::time::Duration::from_secs(20), response(&mut c, false))
                .await
                .unwrap_or_else(|_| panic!("response {i} within 20 s"));
            assert!(st == 200 || st == 206, "response {i}: {st}");
            assert!(body == want, "response {i} carries its own file's bytes");
        }
    }

    /// A body does not register its file while the previous response's file is still
    /// going out: it waits, and is woken when that file is done.
    #[test]
    fn a_body_waits_for_the_previous_file() {
        use futures::Stream;
        struct Flag(std::sync::atomic::AtomicBool);
        impl futures::task::ArcWake for Flag {
            fn wake_by_ref(a: &Arc<Self>) {
                a.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let open = || File::open(&p).unwrap();
        let z = Sendfile::default();
        z.lock().plan = Some(Plan {
            file: Arc::new(open()),
            offset: 0,
            remaining: 3,
        });
        let mut body = Placeholders {
            slot: z.clone(),
            plan: Some(Plan {
                file: Arc::new(open()),
                offset: 5,
                remaining: 5,
            }),
            left: 5,
        };
        let flag = Arc::new(Flag(Default::default()));
        let waker = futures::task::waker(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut body).poll_next(&mut cx).is_pending());
        assert_eq!(z.lock().plan.as_ref().unwrap().remaining, 3, "the first file stays");
        z.lock().finish();
        assert!(
            flag.0.load(std::sync::atomic::Ordering::SeqCst),
            "woken when it is done"
        );
        match Pin::new(&mut body).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(b))) => assert!(is_placeholder(&b) && b.len() == 5),
            other => panic!("{other:?}"),
        }
        assert_eq!(z.lock().plan.as_ref().unwrap().offset, 5, "now its own file");
    }

    /// A file shorter than the length promised: the client gets the real bytes and a
    /// cut connection, never filler.
    #[tokio::test]
    async fn a_file_shorter_than_promised_cuts_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        let bytes = data(5_000);
        std::fs::write(&short, &bytes).unwrap();
        let (addr, _stop) = start(Cas::open(&dir.path().join("cas")).unwrap(), short).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /short HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), c.read_to_end(&mut got))
            .await
            .expect("the server closes the connection")
            .ok();
        let body_at = got.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
        assert!(got.starts_with(b"HTTP/1.1 200"));
        assert_eq!(&got[body_at..], &bytes[..], "exactly the file's bytes, then the end");
    }

    /// Placeholder bytes that reach the socket with no file behind them, or more of
    /// them than registered, are an error, not zeros on the wire.
    #[tokio::test]
    async fn placeholders_without_a_file_are_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (tcp, _) = l.accept().await.unwrap();
        let sendfile = Sendfile::default();
        let mut conn = Conn {
            tcp,
            sendfile: sendfile.clone(),
        };
        let e = conn.write(&PLACEHOLDER[..100]).await.unwrap_err();
        assert!(e.to_string().contains("no file registered"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789abcdef").unwrap();
        sendfile.lock().plan = Some(Plan {
            file: Arc::new(File::open(&p).unwrap()),
            offset: 2,
            remaining: 4,
        });
        // Data before the placeholders goes first, as given.
        let head = b"HEAD:";
        let n = conn
            .write_vectored(&[IoSlice::new(head), IoSlice::new(&PLACEHOLDER[..10])])
            .await
            .unwrap();
        assert_eq!(n, head.len());
        assert_eq!(
            conn.write(&PLACEHOLDER[..10]).await.unwrap(),
            4,
            "only the registered range"
        );
        let e = conn.write(&PLACEHOLDER[..6]).await.unwrap_err();
        assert!(e.to_string().contains("no file registered"), "{e}");
        drop(conn);
        let mut got = Vec::new();
        let mut client = client;
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"HEAD:2345");
    }

    /// A client that goes away mid-body: the connection ends and the blob's file is
    /// closed (no descriptor of this process points to it any more).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_leaving_mid_transfer_frees_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path()).unwrap();
        let blob = data(48 << 20);
        let d = cas.put_bytes(&blob).unwrap();
        let blob_path = cas.path(&d);
        let (addr, _stop) = start(cas, dir.path().join("unused")).await;
        let open_fds = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == blob_path))
                .count()
        };
        for _ in 0..3 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(format!("GET /blob/{d} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut some = vec![0u8; 256 * 1024];
            c.read_exact(&mut some).await.unwrap();
            assert!(open_fds() >= 1, "the blob is open while it is being sent");
            drop(c); // unread data: the kernel answers the server with a reset
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while open_fds() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} descriptors of the blob still open 10 s after the clients left",
                open_fds()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // And the server is still well.
        let got = reqwest::get(format!("http://{addr}/blob/{d}")).await.unwrap();
        assert_eq!(got.status(), 200);
        assert!(got.bytes().await.unwrap() == blob);
    }
}
