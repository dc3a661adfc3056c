//! Artifacts on every head before they are needed (issue 10, part 4), on an
//! in-process 3-head cluster: an image imported through head A alone is on B and C
//! without any node asking, `wwctl cluster status` says so, B serves it with A
//! stopped (boot routes on HTTP, the blob route on the gRPC port only), and a corrupt blob on a head is detected, quarantined, fetched again from
//! a peer and never served.

use std::time::Duration;

use wulfpack::cas::Digest;
use wulfpack::state::ImageEntry;

use crate::harness::{eventually, ok, settings, Cluster};
use crate::images::small_root;

/// `wwctl` that talks to head `i` only.
async fn ww_on(c: &Cluster, i: usize, args: &[&str]) -> String {
    use clap::Parser;
    let mut argv = vec!["wwctl", "--heads", &c.cfgs[i].listen];
    argv.extend_from_slice(args);
    let cli = wulfpack::cli::Cli::try_parse_from(argv).unwrap();
    let mut out = Vec::new();
    wulfpack::cli::run(cli, &mut out)
        .await
        .unwrap_or_else(|e| panic!("wwctl {args:?} on head {}: {e:#}", i + 1));
    String::from_utf8(out).unwrap()
}

/// `(missing_blobs, missing_bytes)` per head id, from `wwctl -o json cluster status`.
async fn missing_per_head(c: &Cluster) -> Vec<(u64, Option<u64>, Option<u64>)> {
    let out = ok(c, &["-o", "json", "cluster", "status"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["id"].as_u64().unwrap(),
                h["missing_blobs"].as_u64(),
                h["missing_bytes"].as_u64(),
            )
        })
        .collect()
}

async fn get(http: &reqwest::Client, addr: &str, path: &str) -> (u16, Vec<u8>) {
    let r = http
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

/// A client of the gRPC port's plain HTTP routes on a plaintext head.
fn h2c() -> reqwest::Client {
    reqwest::Client::builder().http2_prior_knowledge().build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_head_holds_every_artifact_serves_without_the_importer_and_heals_corruption() {
    let mut c = Cluster::start_with(3, settings(), |cfg| {
        // Scrub every second, so silent corruption is found within the test.
        cfg.artifacts.scrub_interval_secs = 1;
        cfg.artifacts.scrub_mib_per_sec = 256;
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_root(&src);
    let out = ww_on(&c, 0, &["image", "import", src.to_str().unwrap(), "img"]).await;
    assert!(out.contains("Imported image img"), "{out}");
    let mac = "52:54:00:aa:00:01";
    ok(&c, &["node", "add", "n1", "--image", "img", "--hwaddr", mac]).await;
    let e: ImageEntry = c.ctx(0).sm.read(|s| s.images["img"].value.clone());
    let blobs: Vec<Digest> = e.blobs().collect();
    let art = e.artifact.clone().unwrap().digest;
    let kernel = e.kernel.clone().unwrap().digest;
    let right_art = std::fs::read(c.ctx(0).cas.path(&art)).unwrap();

    // B and C fetch every blob without any node asking, and report 0 missing.
    for i in 1..3 {
        eventually(20, &format!("head {} holds every blob of the image", i + 1), || async {
            blobs.iter().all(|d| c.ctx(i).cas.contains(d))
        })
        .await;
        assert!(!c.ctx(i).artifacts.lacks(&blobs));
    }
    eventually(10, "cluster status reports 0 missing on every head", || async {
        let m = missing_per_head(&c).await;
        m.len() == 3 && m.iter().all(|(_, n, b)| *n == Some(0) && *b == Some(0))
    })
    .await;
    let table = ok(&c, &["cluster", "status"]).await;
    assert!(
        table.lines().next().is_some_and(|_| table.contains("MISSING")),
        "{table}"
    );
    for i in 0..3 {
        let m = c.ctx(i).artifacts.current();
        assert_eq!(m.count(), 0, "head {}", i + 1);
        assert!(m.referenced >= blobs.len(), "{m:?}");
    }

    // The importer stops; B still serves the image, the kernel and the blob route.
    c.stop(0).await;
    let http = reqwest::Client::new();
    let b = c.cfgs[1].http_listen.clone();
    let view = c.ctx(1).view.clone();
    eventually(5, "head 2's boot view has n1", || async {
        view.borrow().node_by_mac(mac).is_some()
    })
    .await;
    let (st, body) = get(&http, &b, &format!("/image/{mac}")).await;
    assert_eq!((st, body.len()), (200, right_art.len()));
    assert!(body == right_art, "the image's bytes");
    let (st, body) = get(&http, &b, &format!("/kernel/{mac}")).await;
    assert_eq!((st, body.as_slice()), (200, &b"not really a kernel"[..]));
    // Blobs are for heads, on the gRPC port (this cluster is plaintext: h2c).
    let (st, body) = get(&h2c(), &c.cfgs[1].listen, &format!("/blob/{art}")).await;
    assert!(st == 200 && body == right_art);
    let (st, _) = get(&http, &b, &format!("/blob/{art}")).await;
    assert_eq!(st, 404, "no blobs on the boot port");

    // Corrupt the image on B's disk: a verified read finds it, it is quarantined and
    // fetched again from C, and no answer in between carries the wrong bytes.
    let p = c.ctx(1).cas.path(&art);
    let mut bad = right_art.clone();
    bad[100] ^= 0xff;
    std::fs::write(&p, &bad).unwrap();
    let answers = std::sync::Mutex::new(Vec::new());
    eventually(20, "head 2 serves the image again after refetching it", || async {
        let (st, body) = get(&http, &b, &format!("/image/{mac}")).await;
        assert!(st != 200 || body == right_art, "wrong bytes served (status {st})");
        answers.lock().unwrap().push(st);
        st == 200
    })
    .await;
    let answers = answers.into_inner().unwrap();
    assert_ne!(answers[0], 200, "the corrupt copy was refused: {answers:?}");
    assert_eq!(std::fs::read(&p).unwrap(), right_art, "refetched from a peer");
    let quarantined = std::fs::read_dir(c.ctx(1).cas.root().join("corrupt")).unwrap().count();
    assert!(quarantined >= 1);

    // Silent corruption on C (mtime kept, nobody reads it): the scrub finds it and the
    // sync fetches it again from B.
    let p = c.ctx(2).cas.path(&kernel);
    let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_at(b"X", 0).unwrap();
        f.set_modified(mtime).unwrap();
    }
    let corrupt_dir = c.ctx(2).cas.root().join("corrupt");
    eventually(20, "head 3's scrub quarantined the kernel", || async {
        std::fs::read_dir(&corrupt_dir).unwrap().count() >= 1
    })
    .await;
    eventually(20, "head 3 fetched the kernel again", || async {
        std::fs::read(&p).is_ok_and(|b| b == b"not really a kernel")
    })
    .await;
    let c3 = c.cfgs[2].http_listen.clone();
    let (st, body) = get(&http, &c3, &format!("/kernel/{mac}")).await;
    assert_eq!((st, body.as_slice()), (200, &b"not really a kernel"[..]));
    c.shutdown().await;
}
