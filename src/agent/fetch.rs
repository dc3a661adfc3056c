//! One HTTP/1.1 GET with a deadline, on a blocking `TcpStream`, in TLS for `https://`
//! heads (rustls, the head's certificate checked against the cluster CA).
//!
//! The agent needs one request shape (GET, no redirects, a small body), so a
//! few dozen lines of std networking replace an HTTP stack and an async runtime: the
//! static binary stays small and every wait is visibly bounded. The deadline covers
//! everything (connect, request, headers, body): each read waits at most the time
//! left, so a head that accepts and then never answers, or trickles bytes, is given up
//! on at the deadline, not at the kernel's TCP timeouts.
//!
//! In secure mode (Warewulf's `secure`), the socket is bound to a source port below
//! 1024 before connecting; the head serves the runtime overlay only to such a request,
//! as a privileged port proves root on the node.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use super::config::Head;

/// Why a head did not serve.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot resolve {authority}: {source}")]
    Resolve {
        authority: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("no answer within {0:?} (the head is down or hung)")]
    Deadline(Duration),
    #[error("secure mode: cannot bind a source port below 1024: {0} (wwclient must run as root in secure mode)")]
    SecureBind(#[source] io::Error),
    #[error("connection failed: {0}")]
    Io(#[source] io::Error),
    #[error("answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("bad HTTP response: {0}")]
    Protocol(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the response body is larger than {0} bytes; refused")]
    TooLarge(u64),
}

/// A successful (200) response's body.
#[derive(Debug)]
pub struct Response {
    pub body: Vec<u8>,
}

/// Characters left as they are in a path segment or query value.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':')
}

/// Percent-encodes `s` for a path segment or a query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if unreserved(b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A socket whose reads and writes never wait past `deadline` (TLS runs over it, so
/// the handshake is bounded by the same deadline).
struct Deadlined {
    s: TcpStream,
    deadline: Instant,
}

impl Deadlined {
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline"));
        }
        Ok(left)
    }
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.s.set_read_timeout(Some(left))?;
        self.s.read(buf)
    }
}

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.s.set_write_timeout(Some(left))?;
        self.s.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.s.flush()
    }
}

/// The connection a request goes over: plain or TLS.
trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

fn timed_out(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)
}

/// Connects to `addr`, from a privileged source port when `secure`.
fn connect(addr: SocketAddr, secure: bool, timeout: Duration) -> Result<TcpStream, FetchError> {
    let conn_err = |source: io::Error| {
        if timed_out(&source) {
            FetchError::Deadline(timeout)
        } else {
            FetchError::Connect { addr, source }
        }
    };
    if !secure {
        return TcpStream::connect_timeout(&addr, timeout).map_err(conn_err);
    }
    // Ports 1023 down to 512, starting at a point that varies between calls so that a
    // port still in TIME_WAIT towards this head is not tried first every time.
    let span = 512u16;
    let start = (std::process::id() as u16).wrapping_add(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u16)
            .unwrap_or(0),
    ) % span;
    let deadline = Instant::now() + timeout;
    let mut last = None;
    for i in 0..span {
        let port = 1023 - (start + i) % span;
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(FetchError::Io)?;
        sock.set_cloexec(true).map_err(FetchError::Io)?;
        let local: SocketAddr = match addr {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, port).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, port).into(),
        };
        match sock.bind(&local.into()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(FetchError::SecureBind(e)),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(FetchError::Deadline(timeout));
        }
        match sock.connect_timeout(&addr.into(), left) {
            Ok(()) => return Ok(sock.into()),
            // The same (source, destination) pair is still in TIME_WAIT: next port.
            Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable || e.kind() == io::ErrorKind::AddrInUse => {
                last = Some(e)
            }
            Err(e) => return Err(conn_err(e)),
        }
    }
    Err(FetchError::SecureBind(
        last.unwrap_or_else(|| io::Error::other("no port left")),
    ))
}

/// GET `path_and_query` from `head`, all within `timeout`; a body over `max_body`
/// bytes is refused. Only a 200 is a success. `tls`: how to check `https://` heads
/// ([`crate::pki::tls::node_client_config`] with the cluster CA).
pub fn get(
    head: &Head,
    path_and_query: &str,
    secure: bool,
    timeout: Duration,
    max_body: u64,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Response, FetchError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let addrs: Vec<SocketAddr> = head
        .authority
        .to_socket_addrs()
        .map_err(|source| FetchError::Resolve {
            authority: head.authority.clone(),
            source,
        })?
        .collect();
    let mut stream = None;
    let mut last = None;
    for a in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match connect(a, secure, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e @ FetchError::SecureBind(_)) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    let s = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(FetchError::Deadline(_))) | (None, None) => return Err(FetchError::Deadline(timeout)),
        (None, Some(e)) => return Err(e),
    };
    let map_io = |e: io::Error| {
        if timed_out(&e) {
            FetchError::Deadline(timeout)
        } else {
            FetchError::Io(e)
        }
    };
    let plain = Deadlined { s, deadline };
    let mut conn: Box<dyn Conn> = if head.tls {
        let config =
            tls.ok_or_else(|| FetchError::Tls(format!("{}: no CA to check it against (`ca = FILE`)", head.url)))?;
        let host = head
            .authority
            .rsplit_once(':')
            .map_or(head.authority.as_str(), |(h, _)| h);
        let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|e| FetchError::Tls(format!("{host:?}: {e}")))?;
        let c = rustls::ClientConnection::new(config.clone(), name).map_err(|e| FetchError::Tls(e.to_string()))?;
        Box::new(rustls::StreamOwned::new(c, plain))
    } else {
        Box::new(plain)
    };
    let req = format!(
        "GET {}{} HTTP/1.1\r\nHost: {}\r\nUser-Agent: wwclient/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        head.prefix,
        path_and_query,
        head.authority,
        env!("CARGO_PKG_VERSION")
    );
    conn.write_all(req.as_bytes())
        .and_then(|()| conn.flush())
        .map_err(map_io)?;
    let mut r = BufReader::new(conn);
    let status_line = read_line(&mut r).map_err(map_io)?;
    let mut parts = status_line.splitn(3, ' ');
    let (proto, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !proto.starts_with("HTTP/1.") {
        return Err(FetchError::Protocol(format!("status line {status_line:?}")));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| FetchError::Protocol(format!("status line {status_line:?}")))?;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for _ in 0..200 {
        let line = read_line(&mut r).map_err(map_io)?;
        if line.is_empty() {
            break;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(FetchError::Protocol(format!("header line {line:?}")));
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            length = Some(
                v.parse()
                    .map_err(|_| FetchError::Protocol(format!("Content-Length {v:?}")))?,
            );
        } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    // An error's body is only read for the message: a few hundred bytes are enough.
    let limit = if status == 200 { max_body } else { 512 };
    let body = if chunked {
        read_chunked(&mut r, limit, status == 200).map_err(|e| match e {
            BodyError::Io(e) => map_io(e),
            BodyError::TooLarge => FetchError::TooLarge(max_body),
            BodyError::Bad(w) => FetchError::Protocol(w),
        })?
    } else {
        if status == 200 && length.is_some_and(|l| l > max_body) {
            return Err(FetchError::TooLarge(max_body));
        }
        let want = length.unwrap_or(u64::MAX).min(limit.saturating_add(1));
        let mut body = Vec::new();
        (&mut r).take(want).read_to_end(&mut body).map_err(map_io)?;
        if status == 200 {
            if body.len() as u64 > max_body {
                return Err(FetchError::TooLarge(max_body));
            }
            if let Some(l) = length {
                if (body.len() as u64) < l {
                    return Err(FetchError::Protocol(format!(
                        "body ended after {} of {l} bytes",
                        body.len()
                    )));
                }
            }
        }
        body
    };
    if status != 200 {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).trim().to_owned();
        return Err(FetchError::Status {
            status,
            body: if text.is_empty() { "(no body)".into() } else { text },
        });
    }
    Ok(Response { body })
}

/// One CRLF-terminated line of at most 8 KiB, without the terminator.
fn read_line<R: BufRead>(r: &mut R) -> io::Result<String> {
    let mut buf = Vec::new();
    r.take(8 * 1024).read_until(b'\n', &mut buf)?;
    if buf.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "connection closed in the response head (or a line over 8 KiB)",
        ));
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

enum BodyError {
    Io(io::Error),
    TooLarge,
    Bad(String),
}

/// A chunked body; over `limit` bytes is an error when `strict`, else truncated.
fn read_chunked<R: BufRead>(r: &mut R, limit: u64, strict: bool) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r).map_err(BodyError::Io)?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_hex, 16).map_err(|_| BodyError::Bad(format!("chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, then the final empty line.
            for _ in 0..100 {
                if read_line(r).map_err(BodyError::Io)?.is_empty() {
                    break;
                }
            }
            return Ok(body);
        }
        if body.len() as u64 + size > limit {
            if strict {
                return Err(BodyError::TooLarge);
            }
            let keep = limit.saturating_sub(body.len() as u64);
            r.take(keep).read_to_end(&mut body).map_err(BodyError::Io)?;
            return Ok(body);
        }
        let before = body.len();
        r.take(size).read_to_end(&mut body).map_err(BodyError::Io)?;
        if (body.len() - before) as u64 != size {
            return Err(BodyError::Bad("connection closed inside a chunk".into()));
        }
        read_line(r).map_err(BodyError::Io)?;
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// A one-connection server that reads the request head and then writes `parts`,
    /// pausing `gap` between them.
    fn serve(parts: Vec<Vec<u8>>, gap: Duration) -> Head {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut b) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&b[..n]),
                }
            }
            for p in parts {
                if c.write_all(&p).is_err() {
                    return;
                }
                std::thread::sleep(gap);
            }
        });
        Head::parse(&format!("http://127.0.0.1:{port}")).unwrap()
    }

    fn get1(h: &Head, timeout: Duration) -> Result<Response, FetchError> {
        get(h, "/runtime/x", false, timeout, 1 << 20, None)
    }

    #[test]
    fn chunked_and_sized_bodies() {
        let h = serve(
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n".to_vec()],
            Duration::ZERO,
        );
        assert_eq!(get1(&h, Duration::from_secs(5)).unwrap().body, b"abcde");
        let h = serve(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyz".to_vec()],
            Duration::ZERO,
        );
        assert_eq!(get1(&h, Duration::from_secs(5)).unwrap().body, b"xyz");
        // A body cut short is an error, not a short archive.
        let h = serve(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nxyz".to_vec()],
            Duration::ZERO,
        );
        let err = get1(&h, Duration::from_secs(5)).unwrap_err().to_string();
        assert!(err.contains("body ended after 3 of 9 bytes"), "{err}");
    }

    #[test]
    fn an_error_status_carries_the_heads_message() {
        let h = serve(
            vec![b"HTTP/1.1 403 Forbidden\r\nContent-Length: 26\r\n\r\nnot from a privileged port".to_vec()],
            Duration::ZERO,
        );
        let err = get1(&h, Duration::from_secs(5)).unwrap_err().to_string();
        assert_eq!(err, "answered 403: not from a privileged port");
    }

    #[test]
    fn a_trickling_head_is_given_up_at_the_deadline() {
        let mut parts = vec![b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec()];
        parts.extend((0..100).map(|_| b"x".to_vec()));
        let h = serve(parts, Duration::from_millis(100));
        let t = Instant::now();
        let err = get1(&h, Duration::from_millis(700)).unwrap_err();
        assert!(matches!(err, FetchError::Deadline(_)), "{err}");
        assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
    }

    #[test]
    fn an_oversized_body_is_refused() {
        let h = serve(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n".to_vec()],
            Duration::ZERO,
        );
        assert!(matches!(get1(&h, Duration::from_secs(5)), Err(FetchError::TooLarge(_))));
    }
}
