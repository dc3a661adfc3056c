use super::*;

fn store() -> (tempfile::TempDir, Cas) {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(&dir.path().join("cas")).unwrap();
    (dir, cas)
}

#[test]
fn digest_parses_and_prints() {
    let d = Digest::of(b"hello");
    assert_eq!(
        d.to_string(),
        "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
    assert_eq!(d.hex().parse::<Digest>().unwrap(), d);
    for bad in ["sha256:zz", "md5:abc", "", &"g".repeat(64)] {
        assert!(bad.parse::<Digest>().is_err(), "{bad}");
    }
    let json = serde_json::to_string(&d).unwrap();
    assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
}

#[test]
fn put_verify_and_expected_digest() {
    let (_t, cas) = store();
    let d = cas.put_bytes(b"layer bytes").unwrap();
    assert_eq!(d, Digest::of(b"layer bytes"));
    assert!(cas.contains(&d));
    assert_eq!(cas.verify(&d).unwrap(), 11);
    let mut s = String::new();
    cas.open_verified(&d).unwrap().read_to_string(&mut s).unwrap();
    assert_eq!(s, "layer bytes");

    // A writer given the wrong expected digest stores nothing.
    let mut w = cas.writer().unwrap();
    w.write_all(b"other").unwrap();
    let e = w.commit(Some(&d)).unwrap_err();
    assert!(matches!(e, CasError::Mismatch { .. }), "{e}");
    assert!(!cas.contains(&Digest::of(b"other")));
    assert!(
        fs::read_dir(cas.root().join("tmp")).unwrap().next().is_none(),
        "no temp file left"
    );
}

#[test]
fn corrupt_blob_is_detected_quarantined_and_not_served() {
    let (_t, cas) = store();
    let d = cas.put_bytes(&vec![7u8; 100_000]).unwrap();
    cas.verify(&d).unwrap(); // cached as good
                             // Bit rot: same size, different content, new mtime.
    let p = cas.path(&d);
    let mut bytes = fs::read(&p).unwrap();
    bytes[5000] ^= 1;
    std::thread::sleep(Duration::from_millis(10));
    fs::write(&p, &bytes).unwrap();
    let e = cas.open_verified(&d).unwrap_err();
    assert!(matches!(e, CasError::Corrupt { .. }), "{e}");
    assert!(!cas.contains(&d), "corrupt blob moved out of the way");
    assert!(matches!(cas.verify(&d), Err(CasError::Missing(_))));
    // The good content can be stored again.
    assert_eq!(cas.put_bytes(&vec![7u8; 100_000]).unwrap(), d);
    cas.verify(&d).unwrap();
}

#[test]
fn concurrent_writers_of_one_digest_do_not_corrupt_it() {
    let (_t, cas) = store();
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let want = Digest::of(&data);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let cas = cas.clone();
            let data = data.clone();
            std::thread::spawn(move || {
                let mut w = cas.writer().unwrap();
                for chunk in data.chunks(4096) {
                    w.write_all(chunk).unwrap();
                }
                w.commit(Some(&want)).unwrap()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), want);
    }
    assert_eq!(cas.verify(&want).unwrap(), data.len() as u64);
    assert_eq!(cas.list().unwrap().len(), 1);
}

#[test]
fn gc_keeps_referenced_and_young_blobs() {
    let (_t, cas) = store();
    let keep = cas.put_bytes(b"referenced").unwrap();
    let drop_me = cas.put_bytes(b"garbage").unwrap();
    // A leftover temp file from a crashed writer.
    fs::write(cas.root().join("tmp").join("999-1.part"), b"partial").unwrap();
    let referenced: HashSet<Digest> = [keep].into_iter().collect();

    // Within the grace period nothing is removed.
    let st = cas.gc(&referenced, Duration::from_secs(3600)).unwrap();
    assert_eq!((st.kept, st.removed, st.temp_removed), (2, 0, 0));

    let st = cas.gc(&referenced, Duration::ZERO).unwrap();
    assert_eq!((st.kept, st.removed, st.temp_removed), (1, 1, 1));
    assert_eq!(st.bytes_freed, 7);
    assert!(cas.contains(&keep));
    assert!(!cas.contains(&drop_me));
}

#[tokio::test]
async fn async_writer_and_peer_fetch_verify_content() {
    let (_t1, a) = store();
    let (_t2, b) = store();
    let data = vec![42u8; 300_000];
    let d = {
        use tokio::io::AsyncWriteExt;
        let mut w = a.async_writer().await.unwrap();
        w.write_all(&data).await.unwrap();
        w.commit(None).await.unwrap()
    };
    assert_eq!(d, Digest::of(&data));

    // Serve head A's store over HTTP on loopback.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(l, http::router(a.clone()))
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    let client = reqwest::Client::new();

    // B lacks it, fetches it from a list whose first peer is down.
    let got = http::fetch_from_peers(&b, &client, &d, &["127.0.0.1:1".into(), addr.clone()])
        .await
        .unwrap();
    assert_eq!(got, d);
    assert_eq!(b.verify(&d).unwrap(), data.len() as u64);

    // A blob nobody has: a clear error listing the peers tried.
    let missing = Digest::of(b"nobody has this");
    let e = http::fetch_from_peers(&b, &client, &missing, std::slice::from_ref(&addr))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("404"), "{e}");
    assert!(!b.contains(&missing));
    let _ = stop.send(());
    server.await.unwrap();
}

#[tokio::test]
async fn peer_serving_wrong_content_is_rejected() {
    let (_t, b) = store();
    // A "peer" that answers every blob request with the wrong bytes.
    let app = axum::Router::new().route("/blob/{d}", axum::routing::get(|| async { "not the blob" }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move { axum::serve(l, app).await });
    let want = Digest::of(b"the real blob");
    let e = http::fetch_from_peers(&b, &reqwest::Client::new(), &want, &[addr])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("hashes to"), "{e}");
    assert!(!b.contains(&want));
    server.abort();
}

/// The peer route answers through `serve::respond`: a resumed transfer gets 206 with
/// the asked bytes, a revalidation with the blob's ETag gets 304, HEAD the length only.
#[tokio::test]
async fn blob_route_answers_range_if_none_match_and_head() {
    use axum::http::{header, StatusCode};
    let (_t, a) = store();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let d = a.put_bytes(&data).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/blob/{d}", l.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(l, http::router(a)).await });
    let client = reqwest::Client::new();

    let full = client.get(&url).send().await.unwrap();
    assert_eq!(full.status(), StatusCode::OK);
    let tag = full.headers()[header::ETAG].to_str().unwrap().to_owned();
    assert_eq!(tag, serve::etag(&d));
    assert_eq!(full.bytes().await.unwrap(), data);

    let part = client
        .get(&url)
        .header(header::RANGE, "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()[header::CONTENT_RANGE], "bytes 1000-1999/100000");
    assert_eq!(part.bytes().await.unwrap(), &data[1000..2000]);

    let same = client
        .get(&url)
        .header(header::IF_NONE_MATCH, &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), StatusCode::NOT_MODIFIED);
    assert!(same.bytes().await.unwrap().is_empty());

    let head = client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()[header::CONTENT_LENGTH], "100000");
    assert!(head.bytes().await.unwrap().is_empty());

    let missing = client
        .get(url.replace(&d.to_string(), &Digest::of(b"absent").to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    server.abort();
}
