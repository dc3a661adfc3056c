//! Artifact sync (issue 10, part 4): how long a head that was away takes to hold every
//! blob the catalog gained meanwhile, against the raw copy speed of the same bytes.
//!
//! Three real `wulfd` on loopback. Head 3 is stopped; an image whose blobs exist only on
//! head 1 is written to the catalog (heads 1 and 2 are a majority; head 2 syncs at once).
//! Head 3 is restarted: measured is the time from its start until `wwctl cluster status`
//! reports it missing nothing (Raft catch-up, then fetching from heads 1 and 2, verifying
//! and fsyncing every blob). The anchor, in the same run: `curl` of the same blobs from
//! head 1's `/blob/` route into files, then `sync` of those files.
//!
//! Run twice: plaintext (`insecure: true`) and with the cluster's mutual TLS (issue 12:
//! the cost of TLS on image streaming between heads, the second figure's anchor being
//! the first). Blobs travel over HTTP/2 on the heads' gRPC port either way.
//!
//! `cargo bench --bench artifact_sync` moves 512 MiB; under `cargo test`, 2 MiB.

#[path = "../tests/common/proc_cluster.rs"]
mod proc_cluster;

#[path = "common/report.rs"]
mod report;

use std::process::Command;
use std::time::{Duration, Instant};

use proc_cluster::{run_wwctl, wait_until, ProcCluster};
use sha2::Digest as _;
use wulfpack::client::Client;
use wulfpack::model::Digest;
use wulfpack::state::{Command as Cmd, ImageCommand, ImageEntry, LayerRef};

const WULFD: &str = env!("CARGO_BIN_EXE_wulfd");
const WWCTL: &str = env!("CARGO_BIN_EXE_wwctl");

/// Head `i`'s missing blobs as `wwctl cluster status -o json` reports them, counted
/// against a catalog at least as new as log index `since` (else None: a head that has
/// just restarted counts against the catalog it had, until it catches up).
fn missing(c: &ProcCluster, i: usize, since: u64) -> Option<u64> {
    let mut args = c.cert_args();
    args.extend(["-o", "json", "cluster", "status"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run_wwctl(WWCTL.as_ref(), &c.all_heads(), &args);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).ok()?;
    let h = v["heads"].as_array()?.iter().find(|h| h["id"] == (i + 1) as u64)?;
    if h["missing_as_of"].as_u64()? < since {
        return None;
    }
    h["missing_blobs"].as_u64()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (blobs, size) = if full { (4, 128 << 20) } else { (2, 1 << 20) };
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIP artifact_sync benchmark: curl is not installed (apt-get install curl)");
        return;
    }
    let (plain_sync, plain_copy) = run(false, blobs, size);
    let (tls_sync, tls_copy) = run(true, blobs, size);

    let total = (blobs * size) as f64 / (1024.0 * 1024.0);
    let secs = |d: Duration| d.as_secs_f64();
    for (tls, sync, copy) in [(false, plain_sync, plain_copy), (true, tls_sync, tls_copy)] {
        let how = if tls { "mutual TLS" } else { "plaintext" };
        report::record(
            &report::Figure {
                bench: "artifact_sync",
                measure: &format!("a returning head fetches {total:.0} MiB of new blobs ({how}): start → 0 missing"),
                unit: "s",
                better: report::Better::Lower,
                wulfpack: secs(sync),
                spread: None,
                anchor: Some((
                    &format!("curl + sync of the same blobs from one head ({how})"),
                    secs(copy),
                )),
                goal: "",
            },
            full,
        );
    }
    report::record(
        &report::Figure {
            bench: "artifact_sync",
            measure: &format!("cost of TLS on blob streaming between heads ({total:.0} MiB): start → 0 missing"),
            unit: "s",
            better: report::Better::Lower,
            wulfpack: secs(tls_sync),
            spread: None,
            anchor: Some(("the same, plaintext, same run", secs(plain_sync))),
            goal: "",
        },
        full,
    );
    println!("| what | wulfpack | anchor | ratio |");
    println!("|---|---|---|---|");
    for (how, sync, copy) in [
        ("plaintext", plain_sync, plain_copy),
        ("mutual TLS", tls_sync, tls_copy),
    ] {
        println!(
            "| a head that was away holds every new blob ({blobs} × {} MiB = {total:.0} MiB, {how}): start → 0 missing | {:.2} s ({:.0} MiB/s) | curl + sync of the same blobs from one head: {:.2} s ({:.0} MiB/s) | {:.2} |",
            size >> 20,
            secs(sync),
            total / secs(sync),
            secs(copy),
            total / secs(copy),
            secs(sync) / secs(copy)
        );
    }
    println!(
        "| TLS against plaintext | {:.2} s | {:.2} s | {:.2} |",
        secs(tls_sync),
        secs(plain_sync),
        secs(tls_sync) / secs(plain_sync)
    );
}

/// One cluster (plaintext or TLS): (head 3's catch-up time, the curl anchor's time).
fn run(tls: bool, blobs: usize, size: usize) -> (Duration, Duration) {
    let mut c = if tls {
        ProcCluster::start_tls(WULFD.as_ref(), 3, "")
    } else {
        ProcCluster::start(WULFD.as_ref(), 3, "")
    };
    wait_until(60, "a leader", || missing(&c, 0, 0).is_some());
    c.kill(2);

    // Blobs straight into head 1's store (as an import leaves them), then the catalog.
    let cas = c.dir.path().join("data0/cas/sha256");
    let mut layers = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..blobs {
        let mut data = vec![0u8; size];
        for chunk in data.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
        }
        let digest = Digest(sha2::Sha256::digest(&data).into());
        let hex = digest.to_string().trim_start_matches("sha256:").to_owned();
        std::fs::create_dir_all(cas.join(&hex[..2])).unwrap();
        std::fs::write(cas.join(&hex[..2]).join(&hex), &data).unwrap();
        layers.push(LayerRef {
            digest,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            size: size as u64,
        });
    }
    let entry = ImageEntry {
        source: "bench:artifact-sync".into(),
        platform: "linux/amd64".into(),
        layers: layers.clone(),
        config: None,
        rootfs_size: 0,
        files: 0,
        artifact: None,
        kernel: None,
        kernels: vec![],
        created: 0,
        updated: 0,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let heads = c.addrs[..2].to_vec();
    let dialer = c.dialer();
    let written = rt
        .block_on(async move {
            Client::with_dialer(heads, &dialer)
                .write(Cmd::Image(ImageCommand::Put {
                    name: "bench-sync".into(),
                    entry: Box::new(entry),
                    expect: Some(0),
                }))
                .await
        })
        .expect("catalog write");
    let since = written.log_index;
    wait_until(120, "head 2 holding every blob", || missing(&c, 1, since) == Some(0));

    // Head 3 comes back and fetches what it lacks.
    let t = Instant::now();
    c.spawn(2);
    wait_until(600, "head 3 holding every blob", || missing(&c, 2, since) == Some(0));
    let sync = t.elapsed();

    // Anchor: the same bytes over the same route from head 1 into files, then flushed
    // (as a head: its certificate under TLS; `-k` as heads check no names).
    let dir = tempfile::tempdir().unwrap();
    let pki = c.dir.path().join("data0/pki");
    let t = Instant::now();
    let mut files = Vec::new();
    for (k, l) in layers.iter().enumerate() {
        let out = dir.path().join(format!("b{k}"));
        let mut curl = Command::new("curl");
        curl.args(["-sf", "-o"]).arg(&out);
        let url = if tls {
            curl.arg("-k")
                .arg("--cert")
                .arg(pki.join("head.crt"))
                .arg("--key")
                .arg(pki.join("head.key"));
            format!("https://{}/blob/{}", c.addrs[0], l.digest)
        } else {
            curl.arg("--http2-prior-knowledge");
            format!("http://{}/blob/{}", c.addrs[0], l.digest)
        };
        let ok = curl.arg(&url).status().unwrap().success();
        assert!(ok, "curl {url}");
        files.push(out);
    }
    assert!(Command::new("sync").args(&files).status().unwrap().success());
    (sync, t.elapsed())
}
