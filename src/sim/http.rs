//! One HTTP/1.1 GET from a simulated node's own address, with the body hashed as it
//! arrives.
//!
//! The socket is bound before connecting — to the address DHCP leased to the node (the
//! head serves runtime overlays only to the node's address) and, for `wwclient`'s secure
//! mode, to a port below 1024 — and hyper's client connection speaks HTTP over it, so
//! framing (Content-Length, chunked, a body cut short) is hyper's, not ours. One request
//! per connection: a head that dies between two downloads costs the next download a
//! refused connection, which is what the scripts' fallback to the next head is for.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, ETAG, HOST, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};
use tokio::net::{TcpSocket, TcpStream};

use crate::model::Digest;

/// Why a GET failed (a non-2xx/304 status is not an error here: see [`Fetched::status`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {url:?}: {why}")]
    Url { url: String, why: String },
    #[error(
        "cannot send from {addr}: {why}; the leased address must be local in this namespace \
         (an AnyIP route: `ip route add local NET dev lo`, see docs/OPERATIONS.md \"wwsim\")"
    )]
    Source { addr: SocketAddr, why: String },
    #[error("no privileged source port free on {0} (secure mode needs one below 1024; wwsim must run as root)")]
    NoPort(Ipv4Addr),
    #[error("cannot connect to {to}: {why}")]
    Connect { to: String, why: String },
    #[error("{url}: no complete answer within {secs:.1} s")]
    Timeout { url: String, secs: f64 },
    #[error("{url}: {why}")]
    Protocol { url: String, why: String },
    #[error("{url}: body larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
}

/// Where a request is sent from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct From {
    pub addr: Ipv4Addr,
    /// A port below 1024 (wwclient's secure mode); else an ephemeral one (iPXE).
    pub privileged: bool,
}

/// One request.
#[derive(Debug, Clone)]
pub struct Get<'a> {
    pub url: &'a str,
    pub method: Method,
    pub user_agent: &'a str,
    pub if_none_match: Option<&'a str>,
    /// Keep the body (up to this many bytes; more is an error) for the caller to read.
    pub keep_body: Option<u64>,
    pub timeout: Duration,
}

/// A response.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: u16,
    /// `host:port` the request went to.
    pub authority: String,
    pub etag: Option<String>,
    pub bytes: u64,
    /// sha256 of the body as received.
    pub digest: Digest,
    pub body: Option<Vec<u8>>,
    /// First 200 bytes of an error's body (the head's explanation).
    pub message: String,
    pub elapsed: Duration,
}

impl Fetched {
    /// The content digest a `"sha256:<hex>"` ETag names (what the heads send for CAS
    /// blobs and `/efiboot/` files), if it names one.
    pub fn etag_digest(&self) -> Option<Digest> {
        let t = self.etag.as_deref()?.trim().trim_start_matches("W/").trim_matches('"');
        t.strip_prefix("sha256:")?;
        t.parse().ok()
    }
}

/// Ports 1023 down to 512 that a node walks through (each node has its own address, so
/// only its own connections in TIME_WAIT can be in the way).
#[derive(Debug, Clone)]
pub struct PortCursor(u16);

impl PortCursor {
    pub fn new(start: u16) -> PortCursor {
        PortCursor(start % 512)
    }

    fn next(&mut self) -> u16 {
        self.0 = (self.0 + 1) % 512;
        1023 - self.0
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn connect(to: SocketAddr, from: From, ports: &mut PortCursor) -> Result<TcpStream, HttpError> {
    let conn_err = |e: std::io::Error| HttpError::Connect {
        to: to.to_string(),
        why: e.to_string(),
    };
    let tries = if from.privileged { 64 } else { 1 };
    for _ in 0..tries {
        let port = if from.privileged { ports.next() } else { 0 };
        let local = SocketAddr::new(IpAddr::V4(from.addr), port);
        let s = TcpSocket::new_v4().map_err(conn_err)?;
        if from.privileged {
            // A port of ours in TIME_WAIT towards another head may be reused.
            s.set_reuseaddr(true).map_err(conn_err)?;
        }
        match s.bind(local) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && from.privileged => continue,
            Err(e) => {
                return Err(HttpError::Source {
                    addr: local,
                    why: e.to_string(),
                })
            }
        }
        match s.connect(to).await {
            Ok(st) => return Ok(st),
            // This 4-tuple is still in TIME_WAIT: the next port.
            Err(e)
                if from.privileged
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::AddrInUse
                    ) =>
            {
                continue
            }
            Err(e) => return Err(conn_err(e)),
        }
    }
    Err(HttpError::NoPort(from.addr))
}

/// GET (or HEAD) `req.url` from `from`, within `req.timeout` and `deadline`.
pub async fn get(req: &Get<'_>, from: From, ports: &mut PortCursor, deadline: Instant) -> Result<Fetched, HttpError> {
    let started = Instant::now();
    let until = deadline.min(started + req.timeout);
    let url = req.url;
    let uri: Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| HttpError::Url {
        url: url.to_owned(),
        why: e.to_string(),
    })?;
    if uri.scheme_str() != Some("http") {
        return Err(HttpError::Url {
            url: url.to_owned(),
            why: "only http:// is spoken (heads serve boot files on plain HTTP)".into(),
        });
    }
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| HttpError::Url {
            url: url.to_owned(),
            why: "no host".into(),
        })?;
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(80);
    // Heads are addressed by IP in the scripts and wwclient.conf; a name is resolved
    // once here (bounded by the same deadline).
    let to: SocketAddr = match host.parse::<Ipv4Addr>() {
        Ok(ip) => SocketAddr::from((ip, port)),
        Err(_) => {
            let lookup = tokio::net::lookup_host((host.to_owned(), port));
            let found = tokio::time::timeout_at(until.into(), lookup)
                .await
                .map_err(|_| timeout(url, started))?
                .map_err(|e| HttpError::Connect {
                    to: authority.clone(),
                    why: e.to_string(),
                })?;
            found
                .into_iter()
                .find(SocketAddr::is_ipv4)
                .ok_or_else(|| HttpError::Connect {
                    to: authority.clone(),
                    why: "no IPv4 address".into(),
                })?
        }
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
    let work = async {
        let stream = connect(to, from, ports).await?;
        let proto = |e: hyper::Error| HttpError::Protocol {
            url: url.to_owned(),
            why: e.to_string(),
        };
        let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(proto)?;
        let _conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let mut r = Request::builder()
            .method(req.method.clone())
            .uri(path.as_str())
            .header(HOST, authority.as_str())
            .header(USER_AGENT, req.user_agent)
            .header(CONNECTION, "close");
        if let Some(tag) = req.if_none_match {
            r = r.header(hyper::header::IF_NONE_MATCH, tag);
        }
        let r = r.body(Empty::new()).map_err(|e| HttpError::Url {
            url: url.to_owned(),
            why: e.to_string(),
        })?;
        let resp = send.send_request(r).await.map_err(proto)?;
        let status = resp.status().as_u16();
        let header = |h| {
            resp.headers()
                .get(h)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header(ETAG);
        let length: Option<u64> = header(CONTENT_LENGTH).and_then(|l| l.parse().ok());
        let ok = (200..300).contains(&status);
        let keep = if ok { req.keep_body } else { Some(512) };
        if let (Some(limit), Some(len)) = (keep, length) {
            if ok && len > limit {
                return Err(HttpError::TooLarge {
                    url: url.to_owned(),
                    limit,
                });
            }
        }
        let mut body = resp.into_body();
        let mut hash = Sha256::new();
        let mut bytes = 0u64;
        let mut kept: Option<Vec<u8>> = keep.map(|_| Vec::new());
        // Bounded: the body is finite (hyper enforces Content-Length) and the whole
        // exchange is under `until`.
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(proto)?;
            if let Some(d) = frame.data_ref() {
                hash.update(d);
                bytes += d.len() as u64;
                if let (Some(k), Some(limit)) = (kept.as_mut(), keep) {
                    if (k.len() + d.len()) as u64 > limit {
                        if ok {
                            return Err(HttpError::TooLarge {
                                url: url.to_owned(),
                                limit,
                            });
                        }
                    } else {
                        k.extend_from_slice(d);
                    }
                }
            }
        }
        let (body, message) = if ok {
            (kept, String::new())
        } else {
            let m = kept.unwrap_or_default();
            (None, String::from_utf8_lossy(&m[..m.len().min(200)]).trim().to_owned())
        };
        Ok(Fetched {
            status,
            authority: authority.clone(),
            etag,
            bytes,
            digest: Digest(hash.finalize().into()),
            body,
            message,
            elapsed: started.elapsed(),
        })
    };
    tokio::time::timeout_at(until.into(), work)
        .await
        .map_err(|_| timeout(url, started))?
}

fn timeout(url: &str, started: Instant) -> HttpError {
    HttpError::Timeout {
        url: url.to_owned(),
        secs: started.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    async fn serve(app: axum::Router) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>())
                .await
                .unwrap()
        });
        a
    }

    fn req(url: &str) -> Get<'_> {
        Get {
            url,
            method: Method::GET,
            user_agent: "iPXE/1.21.1",
            if_none_match: None,
            keep_body: None,
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn the_request_comes_from_the_given_address_and_the_body_is_hashed() {
        let app = axum::Router::new()
            .route(
                "/kernel/{m}",
                axum::routing::get(
                    |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>| async move {
                        (
                            [(ETAG, format!("\"{}\"", Digest::of(b"vmlinuz")))],
                            format!("vmlinuz {peer}"),
                        )
                            .into_response()
                    },
                ),
            )
            .route(
                "/gone",
                axum::routing::get(|| async { (hyper::StatusCode::NOT_FOUND, "blob missing here").into_response() }),
            );
        let a = serve(app).await;
        let from = From {
            addr: "127.0.0.7".parse().unwrap(),
            privileged: false,
        };
        let mut ports = PortCursor::new(0);
        let far = Instant::now() + Duration::from_secs(10);
        let url = format!("http://{a}/kernel/x");
        let f = get(
            &Get {
                keep_body: Some(1000),
                ..req(&url)
            },
            from,
            &mut ports,
            far,
        )
        .await
        .unwrap();
        assert_eq!(f.status, 200);
        let body = String::from_utf8(f.body.clone().unwrap()).unwrap();
        assert!(
            body.starts_with("vmlinuz 127.0.0.7:"),
            "sent from the node's address: {body}"
        );
        assert_eq!(f.digest, Digest::of(body.as_bytes()));
        assert_eq!(f.etag_digest(), Some(Digest::of(b"vmlinuz")), "the ETag names a digest");
        assert_eq!(f.authority, a.to_string());
        let url = format!("http://{a}/gone");
        let f = get(&req(&url), from, &mut ports, far).await.unwrap();
        assert_eq!((f.status, f.message.as_str()), (404, "blob missing here"));
        // Nobody listening: a connection error, not a hang.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let url = format!("http://{dead}/x");
        let e = get(&req(&url), from, &mut ports, far).await.unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_hung_head_costs_the_timeout_and_a_foreign_source_is_explained() {
        // Accepts and never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let from = From {
            addr: Ipv4Addr::LOCALHOST,
            privileged: false,
        };
        let url = format!("http://{a}/x");
        let t = Instant::now();
        let e = get(
            &Get {
                timeout: Duration::from_millis(300),
                ..req(&url)
            },
            from,
            &mut PortCursor::new(0),
            Instant::now() + Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, HttpError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
        // 192.0.2.1 (TEST-NET-1) is no address of this host.
        let e = get(
            &req(&url),
            From {
                addr: "192.0.2.1".parse().unwrap(),
                privileged: false,
            },
            &mut PortCursor::new(0),
            Instant::now() + Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("ip route add local"), "{e}");
    }

    #[test]
    fn privileged_ports_cycle_below_1024() {
        let mut c = PortCursor::new(5);
        let ports: Vec<u16> = (0..600).map(|_| c.next()).collect();
        assert!(ports.iter().all(|p| (512..1024).contains(p)));
        assert_eq!(ports[0], 1023 - 6);
        assert_eq!(ports[0], ports[512], "the cursor wraps around");
    }
}
