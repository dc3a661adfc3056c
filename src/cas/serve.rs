//! Serving blobs over HTTP: verified once, streamed, resumable. Both the head's
//! peer route (`/blob/<digest>`, [`super::http`]) and the boot server's kernel,
//! image and UEFI routes (`boot::http`) answer through [`respond`], so Range,
//! entity tags and streaming are written once. It lives in `cas`, below `boot`,
//! so that both can use it.
//!
//! Why not `tower_http::services::ServeFile`: it has Range and `If-Modified-Since`
//! but no entity tags, and here the natural validator is the content digest — the
//! same URL (`/image/<mac>`) names different bytes after an image rebuild, while
//! the digest names exactly one. So this module answers `If-None-Match`,
//! `If-Range` and single `Range` requests itself (RFC 9110 §13–14) with
//! `ETag: "sha256:<hex>"`, in a few dozen lines. `HEAD` is axum's: a `get` route
//! answers it with the same headers (Content-Length included) and no body.
//!
//! How the body goes out: on the head's listener ([`super::zerocopy::serve`]) by
//! `sendfile(2)`, from the page cache to the socket with no copy in user space (issue
//! 11: a quarter of the CPU per byte, see docs/PERFORMANCE.md). Elsewhere (plain
//! `axum::serve`, HTTP/2) through [`BlobStream`], the read path below.
//!
//! Why the read path reads in chunks on the blocking pool with one chunk of
//! read-ahead: a blob may be gigabytes and thousands of nodes may stream it at once,
//! so nothing is read into memory whole and no worker thread waits on the disk. Each
//! chunk is a positional read (`pread`) of [`CHUNK`] bytes on tokio's blocking pool;
//! while hyper writes one chunk to the socket the next is already being read, so disk
//! and network overlap. Memory per stream is at most two chunks.
//!
//! Why a single-flight verifier: [`Cas::verify`] re-hashes a blob the first time
//! (then caches by size/mtime/inode). When a rack powers on, hundreds of requests
//! for one unverified 1 GB image arrive within a second; hashing it hundreds of
//! times would stall the head. [`Verifier`] lets the first request hash and the
//! others wait for its answer.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::Stream;
use tokio::task::JoinHandle;

use super::zerocopy::Sendfile;
use super::{Cas, CasError, Digest};

/// Bytes per read (and per body frame).
pub const CHUNK: usize = 256 * 1024;

/// Verifies blobs through [`Cas::verify`], one hash per digest at a time.
#[derive(Debug, Clone)]
pub struct Verifier {
    cas: Cas,
    inflight: Arc<Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Verifier {
    pub fn new(cas: Cas) -> Verifier {
        Verifier {
            cas,
            inflight: Arc::default(),
        }
    }

    pub fn cas(&self) -> &Cas {
        &self.cas
    }

    /// Verify `d` and open it: the file and its size.
    pub async fn open(&self, d: Digest) -> Result<(File, u64), CasError> {
        let gate = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(d)
            .or_default()
            .clone();
        let result = {
            let _turn = gate.lock().await;
            let cas = self.cas.clone();
            tokio::task::spawn_blocking(move || {
                let file = cas.open_verified(&d)?;
                let len = file.metadata().map_err(|source| CasError::Io {
                    path: cas.path(&d),
                    source,
                })?;
                Ok((file, len.len()))
            })
            .await
            .unwrap_or_else(|e| {
                Err(CasError::Io {
                    path: self.cas.path(&d),
                    source: io::Error::other(e),
                })
            })
        };
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map and this call hold the gate: nobody waits, drop it.
        if Arc::strong_count(&gate) == 2 {
            map.remove(&d);
        }
        result
    }
}

/// The entity tag of a blob.
pub fn etag(d: &Digest) -> String {
    format!("\"{d}\"")
}

/// Does an `If-None-Match` / `If-Range` header value name `tag`? (Weak comparison
/// for `If-None-Match`, as RFC 9110 §13.1.2 asks; `*` matches anything.)
fn matches_etag(value: &str, tag: &str) -> bool {
    value
        .split(',')
        .map(str::trim)
        .any(|v| v == "*" || v.trim_start_matches("W/") == tag)
}

/// A parsed `Range` header against a body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No (usable) range: send everything with 200.
    Full,
    /// Send bytes `start..=end` with 206.
    Partial { start: u64, end: u64 },
    /// 416 Range Not Satisfiable.
    Unsatisfiable,
}

/// Interpret `Range: bytes=…`. Only one range is honoured; a multi-range or
/// malformed header is ignored (a 200 with the whole body is always a correct
/// answer, and boot clients never ask for several ranges).
pub fn parse_range(value: Option<&str>, len: u64) -> RangeAnswer {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match num(b) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if len == 0 => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            None => RangeAnswer::Full,
        },
        // bytes=A- or bytes=A-B
        (false, _) => {
            let Some(start) = num(a) else { return RangeAnswer::Full };
            let end = if b.is_empty() { Some(u64::MAX) } else { num(b) };
            match end {
                None => RangeAnswer::Full,
                Some(end) if end < start => RangeAnswer::Full,
                Some(_) if start >= len => RangeAnswer::Unsatisfiable,
                Some(end) => RangeAnswer::Partial {
                    start,
                    end: end.min(len - 1),
                },
            }
        }
        (true, true) => RangeAnswer::Full,
    }
}

/// The response for a verified, open blob: 200, 206, 304 or 416. The body goes by
/// `sendfile(2)` when the request came through [`super::zerocopy::serve`] (its
/// [`Sendfile`] handle given here), else it is streamed through [`BlobStream`].
pub fn respond(file: File, len: u64, digest: &Digest, req: &HeaderMap, sendfile: Option<&Sendfile>) -> Response {
    let body = |file: File, offset: u64, n: u64| match sendfile {
        Some(z) => z.body(file, offset, n),
        None => Body::from_stream(BlobStream::new(file, offset, n)),
    };
    let tag = etag(digest);
    let header_str = |h: header::HeaderName| req.get(h).and_then(|v| v.to_str().ok());
    let base = |status: StatusCode| {
        let mut r = Response::builder()
            .status(status)
            .header(header::ETAG, &tag)
            .header(header::ACCEPT_RANGES, "bytes")
            // The URL (`/image/<mac>`) can name new bytes after a rebuild: caches
            // must revalidate, which the ETag makes a 304.
            .header(header::CACHE_CONTROL, "no-cache");
        if status != StatusCode::NOT_MODIFIED {
            r = r.header(header::CONTENT_TYPE, "application/octet-stream");
        }
        r
    };
    if header_str(header::IF_NONE_MATCH).is_some_and(|v| matches_etag(v, &tag)) {
        return base(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("valid response");
    }
    // If-Range with a different validator: the client's partial copy is stale, send all.
    let range_ok = header_str(header::IF_RANGE).is_none_or(|v| v.trim() == tag);
    let range = if range_ok {
        parse_range(header_str(header::RANGE), len)
    } else {
        RangeAnswer::Full
    };
    match range {
        RangeAnswer::Full => base(StatusCode::OK)
            .header(header::CONTENT_LENGTH, len)
            .body(body(file, 0, len))
            .expect("valid response"),
        RangeAnswer::Partial { start, end } => base(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_LENGTH, end - start + 1)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))
            .body(body(file, start, end - start + 1))
            .expect("valid response"),
        RangeAnswer::Unsatisfiable => base(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(header::CONTENT_RANGE, format!("bytes */{len}"))
            .header(header::CONTENT_LENGTH, HeaderValue::from_static("0"))
            .body(Body::empty())
            .expect("valid response"),
    }
}

/// `len` bytes of `file` from `offset`, read a chunk ahead on the blocking pool.
#[derive(Debug)]
pub struct BlobStream {
    file: Arc<File>,
    offset: u64,
    remaining: u64,
    pending: Option<JoinHandle<io::Result<Bytes>>>,
}

impl BlobStream {
    pub fn new(file: File, offset: u64, len: u64) -> BlobStream {
        BlobStream {
            file: Arc::new(file),
            offset,
            remaining: len,
            pending: None,
        }
    }

    fn start_read(&mut self) {
        let want = self.remaining.min(CHUNK as u64) as usize;
        let (file, offset) = (self.file.clone(), self.offset);
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; want];
            let mut got = 0;
            while got < want {
                match file.read_at(&mut buf[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(got);
            Ok(Bytes::from(buf))
        }));
    }
}

impl Stream for BlobStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.pending.is_none() {
            if this.remaining == 0 {
                return Poll::Ready(None);
            }
            this.start_read();
        }
        let handle = this.pending.as_mut().expect("a read is pending");
        let chunk = match Pin::new(handle).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => {
                this.pending = None;
                r.unwrap_or_else(|e| Err(io::Error::other(e)))
            }
        };
        match chunk {
            Ok(b) if b.is_empty() => {
                this.remaining = 0;
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob ended before its recorded size (truncated on disk?)",
                ))))
            }
            Ok(b) => {
                this.offset += b.len() as u64;
                this.remaining -= b.len() as u64;
                if this.remaining > 0 {
                    this.start_read(); // read ahead while this chunk is sent
                }
                Poll::Ready(Some(Ok(b)))
            }
            Err(e) => {
                this.remaining = 0;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

impl Drop for BlobStream {
    fn drop(&mut self) {
        // A client that went away: the read in flight finishes on its own and is dropped.
        if let Some(h) = self.pending.take() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeAnswer::*;
        let p = |s: &str| parse_range(Some(s), 1000);
        assert_eq!(parse_range(None, 1000), Full);
        assert_eq!(p("bytes=0-99"), Partial { start: 0, end: 99 });
        assert_eq!(p("bytes=900-"), Partial { start: 900, end: 999 });
        assert_eq!(
            p("bytes=990-5000"),
            Partial { start: 990, end: 999 },
            "clamped to the end"
        );
        assert_eq!(p("bytes=-10"), Partial { start: 990, end: 999 });
        assert_eq!(p("bytes=-5000"), Partial { start: 0, end: 999 });
        assert_eq!(p("bytes=1000-"), Unsatisfiable);
        assert_eq!(p("bytes=-0"), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        for ignored in [
            "bytes=0-1,5-6",
            "bytes=a-b",
            "bytes=5-1",
            "items=0-1",
            "bytes=-",
            "bytes=1",
        ] {
            assert_eq!(p(ignored), Full, "{ignored}");
        }
    }

    #[test]
    fn etags_compare_weakly_for_if_none_match() {
        let t = etag(&Digest::of(b"x"));
        assert!(t.starts_with("\"sha256:") && t.ends_with('"'));
        assert!(matches_etag(&t, &t));
        assert!(matches_etag(&format!("\"other\", W/{t}"), &t));
        assert!(matches_etag("*", &t));
        assert!(!matches_etag("\"sha256:00\"", &t));
    }

    async fn collect(s: BlobStream) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut s = s;
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn streams_ranges_across_chunks_and_reports_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("blob");
        let data: Vec<u8> = (0..(CHUNK * 2 + 123)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let all = collect(BlobStream::new(File::open(&p).unwrap(), 0, data.len() as u64)).await;
        assert_eq!(all.unwrap(), data);
        let (a, n) = (CHUNK as u64 - 10, CHUNK as u64 + 20);
        let part = collect(BlobStream::new(File::open(&p).unwrap(), a, n)).await.unwrap();
        assert_eq!(part, &data[a as usize..(a + n) as usize]);
        let short = collect(BlobStream::new(File::open(&p).unwrap(), 0, data.len() as u64 + 5)).await;
        assert_eq!(short.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn concurrent_verifications_of_one_blob_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path()).unwrap();
        let d = cas.put_bytes(&vec![3u8; 3 << 20]).unwrap();
        let v = Verifier::new(cas);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let v = v.clone();
                tokio::spawn(async move { v.open(d).await.map(|(_, n)| n) })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 3 << 20);
        }
        assert!(v.inflight.lock().unwrap().is_empty(), "gates are dropped when idle");
        let missing = Digest::of(b"absent");
        assert!(matches!(v.open(missing).await, Err(CasError::Missing(_))));
    }
}
