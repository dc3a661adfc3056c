//! Blobs over HTTP between heads: `GET /blob/sha256:<hex>` serves a verified blob
//! (with Range and ETag, see [`serve`]); a [`Fetcher`] pulls one from any peer that
//! has it and stores it only if its content matches the digest.
//!
//! **Where:** on each head's gRPC port, beside Raft and the admin API, as HTTP/2 under
//! the same mutual TLS (a peer must show a `head` certificate of the cluster CA; the
//! per-call check in `api::auth` names `/blob/` like a Raft method). Not on the HTTP
//! boot port: a blob may be any image or overlay tree of the cluster, and the boot port
//! is open to the racks. [`PeerLink`] is how a head reaches them. The cost of TLS and
//! of HTTP/2 instead of `sendfile` is measured in `benches/tls_cost` (docs/PERFORMANCE.md).
//!
//! Why a transfer is written this way:
//! - **Every call has a deadline.** A peer that accepts and never answers (a
//!   SIGSTOPped head, a hung disk) must cost a bounded time, not block the transfer
//!   until TCP keep-alive notices: connecting, waiting for the response head and
//!   waiting for each body chunk each have their own timeout ([`Timeouts`]).
//! - **Peers in a rotating order, the recently failed ones last**, so transfers
//!   spread over the peers and one dead or hung peer costs its timeout once per
//!   minute, not once per blob.
//! - **A cut transfer resumes.** Bytes received stay in `tmp/<hex>.partial`
//!   ([`Cas::partial_path`]); the next attempt, from the same or another peer, asks
//!   for `Range: bytes=N-` with `If-Range: "<digest>"`, so a peer's 200 (no range
//!   support, or another blob) restarts the file. The digest check at the end covers
//!   the whole file; a mismatch discards it and the next peer starts from zero.
//! - **One transfer per digest** ([`Cas::fetch_turn`]): the artifact sync, a boot
//!   request and an image build asking for the same blob share one transfer.

use std::collections::HashMap;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::serve::{self, Verifier};
use super::{Cas, CasError, Digest};
use crate::pki::tls::Dialer;
use crate::state::HeadInfo;

/// Routes serving this head's blobs, through the same Range/ETag code as the boot
/// routes ([`serve::respond`]), so a peer can resume or revalidate a transfer.
pub fn router(cas: Cas) -> Router {
    Router::new()
        .route("/blob/{digest}", get(get_blob))
        .with_state(Verifier::new(cas))
}

async fn get_blob(State(verifier): State<Verifier>, UrlPath(digest): UrlPath<String>, req: Request) -> Response {
    let d: Digest = match digest.parse() {
        Ok(d) => d,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match verifier.open(d).await {
        Ok((file, len)) => serve::respond(file, len, &d, req.headers(), req.extensions().get()),
        Err(CasError::Missing(_)) => (StatusCode::NOT_FOUND, format!("blob {d} not here")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// How long each step of a peer transfer may take. See docs/DECISIONS.md for why
/// these values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (a dead host otherwise costs the kernel's ~2 min of SYN retries).
    pub connect: Duration,
    /// Request sent → response head. The peer verifies (hashes) a blob before it
    /// answers the first time, so this covers hashing a large image on a busy disk.
    pub head: Duration,
    /// Longest wait for the next body chunk: a peer that stops sending mid-body.
    pub stall: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            head: Duration::from_secs(30),
            stall: Duration::from_secs(15),
        }
    }
}

/// How this head reaches its peers' blob routes: one HTTP/2 client (connections pooled
/// per peer) that dials as the head's gRPC channels do ([`Dialer`]), and the peers'
/// base URLs from their registered gRPC addresses.
#[derive(Debug, Clone)]
pub struct PeerLink {
    client: reqwest::Client,
    dialer: Dialer,
}

impl Default for PeerLink {
    /// Plaintext (h2c), for `insecure` heads and tests.
    fn default() -> Self {
        PeerLink::new(Dialer::plain(), Timeouts::default().connect).expect("a plaintext HTTP client builds")
    }
}

impl PeerLink {
    /// A link dialing as `dialer` does, each connection made within `connect`.
    pub fn new(dialer: Dialer, connect: Duration) -> Result<PeerLink, crate::pki::PkiError> {
        Ok(PeerLink {
            client: dialer.http(connect)?,
            dialer,
        })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Base URLs of the blob routes of `heads`, skipping records that name no gRPC
    /// address (written before heads registered it; they re-register when they start).
    pub fn bases<'a>(&self, heads: impl IntoIterator<Item = &'a HeadInfo>) -> Vec<String> {
        heads
            .into_iter()
            .filter(|h| !h.grpc.is_empty())
            .map(|h| self.dialer.base_url(&h.grpc))
            .collect()
    }
}

/// A peer that failed is tried after the others for this long.
const SUSPECT_FOR: Duration = Duration::from_secs(60);

/// Fetches blobs from peer heads (see the module doc). Cheap to clone; clones share
/// the rotation and the list of recently failed peers.
#[derive(Debug, Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    timeouts: Timeouts,
    rotation: Arc<AtomicUsize>,
    suspects: Arc<Mutex<HashMap<String, Instant>>>,
}

/// How one attempt at one peer ended, when it did not store the blob.
#[derive(Debug)]
enum Attempt {
    /// The peer answered but has no such blob (or refused): try the next.
    Refused(String),
    /// The peer is down, hung or cut the transfer; `progress` when bytes arrived
    /// (kept in the partial file for the next attempt).
    Failed { error: String, progress: bool },
    /// The whole file hashed to another digest: discarded. `resumed`: part of it was
    /// an earlier attempt's (so not necessarily this peer's fault).
    Mismatch { error: CasError, resumed: bool },
    /// A local problem (disk): no peer will fix it.
    Local(CasError),
}

impl Fetcher {
    /// A fetcher with its own HTTP client (connect timeout set).
    pub fn new(timeouts: Timeouts) -> Fetcher {
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .build()
            .unwrap_or_default();
        Self::with_client(http, timeouts)
    }

    /// A fetcher over an existing client; `timeouts.head` bounds connecting too.
    pub fn with_client(http: reqwest::Client, timeouts: Timeouts) -> Fetcher {
        Fetcher {
            http,
            timeouts,
            rotation: Arc::default(),
            suspects: Arc::default(),
        }
    }

    /// `peers` (HTTP base URLs or host:port) in the order to try: rotated by one per
    /// call, the recently failed ones last.
    fn order(&self, peers: &[String]) -> Vec<String> {
        if peers.is_empty() {
            return Vec::new();
        }
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % peers.len();
        let mut order: Vec<String> = peers[start..].iter().chain(&peers[..start]).cloned().collect();
        let now = Instant::now();
        let mut suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        suspects.retain(|_, at| now.duration_since(*at) < SUSPECT_FOR);
        // Stable: the rotation is kept within each group.
        order.sort_by_key(|p| suspects.contains_key(p));
        order
    }

    fn suspect(&self, peer: &str, failed: bool) {
        let mut s = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        if failed {
            s.insert(peer.to_string(), Instant::now());
        } else {
            s.remove(peer);
        }
    }

    /// Fetch `digest` from any of `peers` and store it if its content hashes to
    /// `digest`. Several attempts in one call: a cut transfer continues from the next
    /// peer (the same one when there is only one); the call gives up after
    /// `peers + 1` attempts in a row that added no byte (every peer once, plus one
    /// for a stale pooled connection or a discarded partial file), or after
    /// `2 × peers + 1` attempts in all.
    pub async fn fetch(&self, cas: &Cas, digest: &Digest, peers: &[String]) -> Result<Digest, CasError> {
        if cas.contains(digest) {
            return Ok(*digest);
        }
        let _turn = cas.fetch_turn(digest).await;
        if cas.contains(digest) {
            return Ok(*digest); // fetched by whoever held the turn before
        }
        let order = self.order(peers);
        let mut errors = Vec::new();
        let mut fruitless = 0;
        for i in 0..(2 * order.len() + 1) {
            if order.is_empty() || fruitless > order.len() {
                break;
            }
            let peer = &order[i % order.len()];
            let url = format!("{}/blob/{digest}", base_url(peer));
            match self.attempt(cas, digest, &url).await {
                Ok(d) => {
                    self.suspect(peer, false);
                    return Ok(d);
                }
                Err(Attempt::Local(e)) => return Err(e),
                Err(Attempt::Refused(e)) => {
                    fruitless += 1;
                    errors.push(format!("{url}: {e}"));
                }
                Err(Attempt::Failed { error, progress }) => {
                    fruitless = if progress { 0 } else { fruitless + 1 };
                    if !progress {
                        self.suspect(peer, true);
                    }
                    errors.push(format!("{url}: {error}"));
                }
                Err(Attempt::Mismatch { error, resumed }) => {
                    fruitless += 1;
                    if !resumed {
                        self.suspect(peer, true);
                    }
                    errors.push(format!("{url}: {error}"));
                }
            }
        }
        Err(CasError::PeerFetch {
            digest: *digest,
            errors: if errors.is_empty() {
                "no peers known".into()
            } else {
                errors.join("; ")
            },
        })
    }

    /// One request to one peer, resuming the partial file if there is one.
    async fn attempt(&self, cas: &Cas, digest: &Digest, url: &str) -> Result<Digest, Attempt> {
        let t = self.timeouts;
        let path = cas.partial_path(digest);
        let local = |source: io::Error| {
            Attempt::Local(CasError::Io {
                path: path.clone(),
                source,
            })
        };
        let have = match tokio::fs::metadata(&path).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(local(e)),
        };
        let mut req = self.http.get(url);
        if have > 0 {
            req = req
                .header(header::RANGE, format!("bytes={have}-"))
                .header(header::IF_RANGE, serve::etag(digest));
        }
        let failed = |error: String| Attempt::Failed { error, progress: false };
        let resp = match tokio::time::timeout(t.head + t.connect, req.send()).await {
            Err(_) => return Err(failed(format!("no answer within {:?}", t.head + t.connect))),
            Ok(Err(e)) => return Err(failed(crate::error::report(&e))),
            Ok(Ok(r)) => r,
        };
        let resume = match resp.status() {
            StatusCode::PARTIAL_CONTENT if have > 0 => {
                let range = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !range.starts_with(&format!("bytes {have}-")) {
                    // Not the range asked for: start over, from zero, next time.
                    let _ = tokio::fs::remove_file(&path).await;
                    return Err(failed(format!("asked for bytes {have}-, got range {range:?}")));
                }
                true
            }
            StatusCode::OK => false,
            StatusCode::RANGE_NOT_SATISFIABLE => {
                // The partial file is as long as the blob or longer: it cannot be right.
                let _ = tokio::fs::remove_file(&path).await;
                return Err(failed("the partial copy is longer than the blob; discarded".into()));
            }
            s if s.is_client_error() => return Err(Attempt::Refused(format!("HTTP {s}"))),
            s => return Err(failed(format!("HTTP {s}"))),
        };
        // The hash of what is already there, then of every byte appended.
        let (mut file, mut hasher, start) = open_partial(&path, resume).await.map_err(local)?;
        let mut got = start;
        let mut body = resp.bytes_stream();
        loop {
            let chunk = match tokio::time::timeout(t.stall, body.next()).await {
                Err(_) => Some(Err(format!("no data for {:?} after {got} bytes", t.stall))),
                Ok(None) => None,
                Ok(Some(Err(e))) => Some(Err(format!("cut after {got} bytes: {}", crate::error::report(&e)))),
                Ok(Some(Ok(c))) => Some(Ok(c)),
            };
            match chunk {
                None => break,
                Some(Ok(c)) => {
                    file.write_all(&c).await.map_err(local)?;
                    hasher.update(&c);
                    got += c.len() as u64;
                }
                Some(Err(error)) => {
                    // Keep what arrived for the next attempt.
                    file.flush().await.map_err(local)?;
                    return Err(Attempt::Failed {
                        error,
                        progress: got > start,
                    });
                }
            }
        }
        file.flush().await.map_err(local)?;
        file.sync_all().await.map_err(local)?;
        drop(file);
        let actual = Digest(hasher.finalize().into());
        if actual != *digest {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(Attempt::Mismatch {
                error: CasError::Mismatch {
                    expected: *digest,
                    actual,
                },
                resumed: start > 0,
            });
        }
        let (cas2, d) = (cas.clone(), *digest);
        tokio::task::spawn_blocking(move || cas2.install(&cas2.partial_path(&d), &d))
            .await
            .map_err(|e| local(io::Error::other(e)))?
            .map_err(Attempt::Local)?;
        Ok(actual)
    }
}

/// Open the partial file for appending (`resume`) or truncated, with the hash of
/// the bytes it keeps and their count.
async fn open_partial(path: &Path, resume: bool) -> io::Result<(tokio::fs::File, Sha256, u64)> {
    let path: PathBuf = path.to_path_buf();
    let (file, hasher, len) = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(!resume)
            .read(true)
            .write(true)
            .open(&path)?;
        let mut h = Sha256::new();
        let mut len = 0u64;
        if resume {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                len += n as u64;
            }
        }
        f.seek(io::SeekFrom::Start(len))?;
        Ok::<_, io::Error>((f, h, len))
    })
    .await
    .map_err(io::Error::other)??;
    Ok((tokio::fs::File::from_std(file), hasher, len))
}

fn base_url(peer: &str) -> String {
    if peer.contains("://") {
        peer.trim_end_matches('/').to_string()
    } else {
        format!("http://{peer}")
    }
}

/// Fetch `digest` from any of `peers` (HTTP base URLs or host:port) with the default
/// [`Timeouts`]; the blob is stored only if its content hashes to `digest`.
pub async fn fetch_from_peers(
    cas: &Cas,
    http: &reqwest::Client,
    digest: &Digest,
    peers: &[String],
) -> Result<Digest, CasError> {
    Fetcher::with_client(http.clone(), Timeouts::default())
        .fetch(cas, digest, peers)
        .await
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
