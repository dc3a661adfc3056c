//! Import throughput from a local registry (issue 3), against `skopeo copy` of the
//! same image in the same run.
//!
//! The image is the debootstrap root of `benches/common/root.rs` packed by umoci as
//! one gzip layer and pushed to Debian's `docker-registry` on loopback. Measured:
//! - our registry pull (manifest, blobs streamed into the CAS and verified) vs
//!   `skopeo copy docker://… oci:DIR` (the same bytes to a local OCI layout);
//! - a whole `wwctl image import` (pull + safe unpack + kernel + build + catalog)
//!   against three real `wulfd` processes.
//!
//! `cargo bench --bench image_import`; without `--bench` a small generated tree is
//! used as a smoke test of the harness.

#[allow(dead_code)]
#[path = "../tests/common/proc_cluster.rs"]
mod proc_cluster;
#[path = "../tests/common/registry.rs"]
mod registry;
#[path = "common/report.rs"]
mod report;
#[allow(dead_code)] // shared with the build benchmark
#[path = "common/root.rs"]
mod root;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wulfpack::cas::Cas;
use wulfpack::image::oci::{pull, Platform, Source};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn run(cmd: &mut Command) {
    let st = cmd.stdout(Stdio::null()).status().expect("command runs");
    assert!(st.success(), "{cmd:?} failed");
}

fn small_tree(root: &Path) {
    for i in 0..50 {
        let d = root.join(format!("d{}", i % 5));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i}")), vec![i as u8; 10_000 + i * 100]).unwrap();
    }
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::write(root.join("boot/vmlinuz-6.1.0-1-amd64"), b"kernel").unwrap();
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let runs = if full { 3 } else { 1 };
    let work = tempfile::tempdir().unwrap();
    let tree = if full {
        root::ensure_root()
    } else {
        let t = work.path().join("tree");
        small_tree(&t);
        t
    };
    let Some(reg) = registry::Registry::start() else {
        println!("image_import: SKIP (needs root and docker-registry/skopeo/umoci)");
        return;
    };
    // Pack the tree as one layer (umoci unpack/repack) and push it (setup, not
    // timed). Not `umoci insert`: Debian's umoci 0.4.7 writes a truncated tar there.
    let copy = |rootfs: &Path| {
        run(Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", tree.display()))
            .arg(rootfs));
    };
    let img = registry::build_test_image(&reg, "bench/root", &[&copy]);
    let reference = img.reference.clone();

    // Anchor: skopeo pulling the same image to a local OCI layout.
    let mut theirs = Vec::new();
    for i in 0..runs {
        let dest = work.path().join(format!("skopeo{i}"));
        let t = Instant::now();
        run(Command::new("skopeo").args([
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{reference}"),
            &format!("oci:{}:x", dest.display()),
        ]));
        theirs.push(t.elapsed());
    }

    // Ours: the registry pull into a fresh CAS each time.
    let source = Source::Registry {
        reference: reference.clone(),
        insecure: true,
        auth: None,
    };
    let mut ours = Vec::new();
    let mut bytes = 0;
    for i in 0..runs {
        let cas = Cas::open(&work.path().join(format!("cas{i}"))).unwrap();
        let t = Instant::now();
        let pulled = pull(&source, &cas, &Platform::host(), &|_| {}).await.unwrap();
        ours.push(t.elapsed());
        bytes = pulled.layers.iter().map(|l| l.size).sum::<u64>();
    }
    let (o, s) = (median(ours), median(theirs));
    let mbs = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    report::record(
        &report::Figure {
            bench: "image_import",
            measure: &format!("registry pull of {:.0} MB (gzip layers)", bytes as f64 / 1e6),
            unit: "s",
            better: report::Better::Lower,
            wulfpack: o.as_secs_f64(),
            spread: None,
            anchor: Some(("skopeo copy", s.as_secs_f64())),
            goal: "",
        },
        full,
    );
    println!(
        "| registry pull of {:.0} MB (gzip layer), median of {runs} | wulfpack {} ({:.0} MB/s) | skopeo copy {} ({:.0} MB/s) | ratio {:.2}× skopeo's time |",
        bytes as f64 / 1e6,
        secs(o),
        mbs(o),
        secs(s),
        mbs(s),
        o.as_secs_f64() / s.as_secs_f64()
    );

    // The whole operator path: wwctl image import against real heads.
    let wulfd = Path::new(env!("CARGO_BIN_EXE_wulfd"));
    let wwctl = env!("CARGO_BIN_EXE_wwctl");
    let p = proc_cluster::ProcCluster::start(wulfd, 3, "");
    let all = p.all_heads();
    proc_cluster::wait_until(30, "cluster ready", || {
        Command::new(wwctl)
            .args(["--heads", &all, "--timeout", "2", "profile", "list"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let t = Instant::now();
    let out = Command::new(wwctl)
        .args(["--heads", &all, "image", "import", "--nohttps"])
        .arg(format!("docker://{reference}"))
        .arg("bench")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let el = t.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    println!(
        "| `wwctl image import` (pull + unpack + kernel + build + catalog) | {} | {} |",
        secs(el),
        String::from_utf8_lossy(&out.stdout).trim()
    );
}
