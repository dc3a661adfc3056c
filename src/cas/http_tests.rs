//! The fetcher against test peers on loopback: a peer that cuts the body, one that
//! sends wrong bytes, one that accepts and never answers, one that stalls mid-body.

use std::sync::atomic::AtomicUsize;

use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::HeaderMap;
use bytes::Bytes;

use super::*;

fn store() -> (tempfile::TempDir, Cas) {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(&dir.path().join("cas")).unwrap();
    (dir, cas)
}

fn data() -> Vec<u8> {
    (0..300_000u32).map(|i| (i % 253) as u8).collect()
}

fn short() -> Timeouts {
    Timeouts {
        connect: Duration::from_millis(500),
        head: Duration::from_millis(500),
        stall: Duration::from_millis(500),
    }
}

/// How a test peer misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// The first response sends this many bytes, then the connection is cut.
    CutFirstAt(usize),
    /// The first response sends this many bytes, then nothing (the socket stays open).
    StallFirstAt(usize),
    /// Every response is the right length of wrong bytes.
    WrongBytes,
}

#[derive(Clone)]
struct Peer {
    data: Arc<Vec<u8>>,
    fault: Fault,
    requests: Arc<AtomicUsize>,
    /// The Range header of each request.
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

async fn blob(AxState(p): AxState<Peer>, headers: HeaderMap) -> Response {
    let n = p.requests.fetch_add(1, Ordering::SeqCst);
    let range = headers.get(header::RANGE).map(|v| v.to_str().unwrap().to_string());
    p.ranges.lock().unwrap().push(range.clone());
    let len = p.data.len();
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .map(|s| s.parse::<usize>().unwrap())
        .unwrap_or(0);
    let mut body: Vec<u8> = p.data[start..].to_vec();
    if p.fault == Fault::WrongBytes {
        body.iter_mut().for_each(|b| *b = b.wrapping_add(1));
    }
    let mut r = Response::builder().header(header::CONTENT_LENGTH, body.len());
    r = if start > 0 {
        r.status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", len - 1))
    } else {
        r.status(StatusCode::OK)
    };
    let stream: futures::stream::BoxStream<'static, Result<Bytes, io::Error>> = match p.fault {
        // The cut comes a moment after the bytes, so they reach the client first.
        Fault::CutFirstAt(at) if n == 0 => Box::pin(
            futures::stream::iter(vec![Ok(Bytes::copy_from_slice(&body[..at]))]).chain(futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Err(io::Error::other("cut"))
            })),
        ),
        Fault::StallFirstAt(at) if n == 0 => Box::pin(
            futures::stream::iter(vec![Ok(Bytes::copy_from_slice(&body[..at]))]).chain(futures::stream::pending()),
        ),
        _ => Box::pin(futures::stream::iter(vec![Ok(Bytes::from(body))])),
    };
    r.body(Body::from_stream(stream)).unwrap()
}

/// Serve `data` at `/blob/{digest}` with `fault`; the peer's address and handle.
async fn peer(data: &[u8], fault: Fault) -> (String, Peer, tokio::task::JoinHandle<()>) {
    let p = Peer {
        data: Arc::new(data.to_vec()),
        fault,
        requests: Arc::default(),
        ranges: Arc::default(),
    };
    let app = Router::new().route("/blob/{d}", get(blob)).with_state(p.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (addr, p, h)
}

/// A peer that accepts connections and never answers (a SIGSTOPped head).
async fn hung_peer() -> (String, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: at most 64 connections are held, until the test aborts the task.
        while held.len() < 64 {
            let Ok((s, _)) = l.accept().await else { return };
            held.push(s);
        }
        futures::future::pending::<()>().await;
    });
    (addr, h)
}

#[tokio::test]
async fn a_cut_transfer_resumes_with_a_range_request_from_the_same_peer() {
    let (_t, cas) = store();
    let data = data();
    let d = Digest::of(&data);
    let (addr, p, h) = peer(&data, Fault::CutFirstAt(100_000)).await;
    let f = Fetcher::new(short());
    assert_eq!(f.fetch(&cas, &d, std::slice::from_ref(&addr)).await.unwrap(), d);
    assert_eq!(cas.verify(&d).unwrap(), data.len() as u64);
    let ranges = p.ranges.lock().unwrap().clone();
    assert_eq!(
        ranges,
        [None, Some("bytes=100000-".to_string())],
        "resumed, not restarted"
    );
    assert!(!cas.partial_path(&d).exists(), "the partial file became the blob");
    h.abort();
}

#[tokio::test]
async fn a_stalled_peer_hits_the_deadline_and_another_peer_continues_the_file() {
    let (_t, cas) = store();
    let data = data();
    let d = Digest::of(&data);
    let (stalls, ps, h1) = peer(&data, Fault::StallFirstAt(120_000)).await;
    let (good, pg, h2) = peer(&data, Fault::None).await;
    let f = Fetcher::new(short());
    let started = Instant::now();
    assert_eq!(f.fetch(&cas, &d, &[stalls, good]).await.unwrap(), d);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(ps.requests.load(Ordering::SeqCst), 1);
    assert_eq!(
        pg.ranges.lock().unwrap().clone(),
        [Some("bytes=120000-".to_string())],
        "the second peer sent only the rest"
    );
    assert_eq!(cas.verify(&d).unwrap(), data.len() as u64);
    h1.abort();
    h2.abort();
}

#[tokio::test]
async fn a_hung_peer_costs_one_deadline_and_the_next_peer_serves() {
    let (_t, cas) = store();
    let data = data();
    let d = Digest::of(&data);
    let (hung, h1) = hung_peer().await;
    let (good, _pg, h2) = peer(&data, Fault::None).await;
    let f = Fetcher::new(short());
    let started = Instant::now();
    assert_eq!(f.fetch(&cas, &d, &[hung.clone(), good.clone()]).await.unwrap(), d);
    let first = started.elapsed();
    let t = short();
    assert!(first >= t.head, "the hung peer was asked first: {first:?}");
    assert!(first < t.head + t.connect + Duration::from_secs(2), "{first:?}");

    // The hung peer is now tried last: another blob does not wait for it.
    let other: Vec<u8> = data.iter().map(|b| b ^ 0x55).collect();
    let d2 = Digest::of(&other);
    let (good2, _p2, h3) = peer(&other, Fault::None).await;
    let started = Instant::now();
    assert_eq!(f.fetch(&cas, &d2, &[hung, good2]).await.unwrap(), d2);
    assert!(started.elapsed() < t.head, "{:?}", started.elapsed());
    for h in [h1, h2, h3] {
        h.abort();
    }
}

#[tokio::test]
async fn wrong_bytes_are_discarded_and_the_next_peer_is_used() {
    let (_t, cas) = store();
    let data = data();
    let d = Digest::of(&data);
    let (bad, pb, h1) = peer(&data, Fault::WrongBytes).await;
    let (good, pg, h2) = peer(&data, Fault::None).await;
    let f = Fetcher::new(short());
    assert_eq!(f.fetch(&cas, &d, &[bad, good]).await.unwrap(), d);
    assert_eq!(pb.requests.load(Ordering::SeqCst), 1, "the bad peer was asked first");
    assert_eq!(
        pg.ranges.lock().unwrap().clone(),
        [None],
        "the good peer sent the whole blob, not a continuation of bad bytes"
    );
    assert_eq!(cas.verify(&d).unwrap(), data.len() as u64);
    h1.abort();
    h2.abort();

    // Only a bad peer: nothing stored, the error says why, no partial file left.
    let (bad, _pb, h3) = peer(&data, Fault::WrongBytes).await;
    let d2 = Digest::of(b"another");
    let e = f.fetch(&cas, &d2, &[bad]).await.unwrap_err();
    assert!(e.to_string().contains("hashes to"), "{e}");
    assert!(!cas.contains(&d2) && !cas.partial_path(&d2).exists());
    h3.abort();
}

#[tokio::test]
async fn a_corrupt_partial_file_fails_the_whole_file_check_and_is_fetched_again() {
    let (_t, cas) = store();
    let data = data();
    let d = Digest::of(&data);
    // A partial copy whose bytes are wrong (a bad disk, or a bad peer before a cut).
    std::fs::write(cas.partial_path(&d), vec![0u8; 50_000]).unwrap();
    let (addr, p, h) = peer(&data, Fault::None).await;
    let f = Fetcher::new(short());
    assert_eq!(f.fetch(&cas, &d, &[addr]).await.unwrap(), d);
    assert_eq!(
        p.ranges.lock().unwrap().clone(),
        [Some("bytes=50000-".to_string()), None],
        "resumed, found wrong by the whole-file digest, fetched again from zero"
    );
    assert_eq!(cas.verify(&d).unwrap(), data.len() as u64);
    h.abort();
}

#[tokio::test]
async fn concurrent_fetches_of_one_blob_make_one_transfer() {
    let (_t, cas) = store();
    let data = data();
    let d = Digest::of(&data);
    let (addr, p, h) = peer(&data, Fault::None).await;
    let f = Fetcher::new(short());
    let peers = vec![addr];
    let all = futures::future::join_all((0..8).map(|_| f.fetch(&cas, &d, &peers))).await;
    assert!(all.iter().all(|r| r.as_ref().ok() == Some(&d)));
    assert_eq!(p.requests.load(Ordering::SeqCst), 1);
    h.abort();
}
