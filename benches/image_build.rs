//! Benchmark of the image build (issue: "image build ≤ 0.4× the time of find|cpio|pigz"):
//! `build_cpio_gz` against `find . | cpio -o -H newc | pigz -p N` on a real distribution root,
//! in the same run, interleaved, median of 3 wall times each, archive sizes, and the peak RSS
//! of our build. Prints a Markdown report.
//!
//! `cargo bench --bench image_build` uses `debootstrap --variant=minbase
//! --include=linux-image-amd64 bookworm`, cached in `/var/tmp/wulfpack-bench-root` (made on
//! first use; needs root and network to the Debian mirror; installs debootstrap, pigz and cpio
//! with apt-get if missing). `WULFPACK_BENCH_ROOT=DIR` benchmarks another tree instead.
//! Without `--bench` (as `cargo test --benches` runs it) it does a smoke run on a tiny
//! generated tree and needs none of that.
//!
//! Each of our builds runs in a child process (this binary re-executed with
//! `WULFPACK_IMAGE_BENCH_CHILD` set) so that its peak RSS (`VmHWM` from `/proc/self/status`)
//! is its own, and so both contenders pay process start-up alike.

#[path = "common/report.rs"]
mod report;
#[path = "common/root.rs"]
mod root;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wulfpack::image::build::{build_cpio_gz, read_excludes, tree_digest, BuildOptions, BuildStats, BLOCK_SIZE};

const CHILD_ENV: &str = "WULFPACK_IMAGE_BENCH_CHILD";
const LEVEL: u32 = 6;
/// A cheaper level, also timed: the goal is stated in archive size (≤ 2 % larger than pigz at
/// its default level 6), which level 5 may still meet.
const LEVEL_FAST: u32 = 5;

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if full {
        full_run(threads);
    } else {
        smoke_run(threads);
    }
}

/// One build in this (child) process; prints a `RESULT` line for the parent.
fn child(spec: &str) {
    let mut it = spec.split('\t');
    let (root, out, threads, level) = (
        PathBuf::from(it.next().unwrap()),
        PathBuf::from(it.next().unwrap()),
        it.next().unwrap().parse().unwrap(),
        it.next().unwrap().parse().unwrap(),
    );
    let opts = BuildOptions {
        excludes: read_excludes(&root).unwrap_or_else(|e| panic!("{e}")),
        threads,
        level,
    };
    let file = File::create(&out).unwrap_or_else(|e| panic!("create {}: {e}", out.display()));
    let stats = build_cpio_gz(&root, &opts, file, &|_| {}).unwrap_or_else(|e| panic!("build failed: {e}"));
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    println!(
        "RESULT files={} bytes_in={} bytes_out={} sha256={} hwm_kb={hwm_kb}",
        stats.files, stats.bytes_in, stats.bytes_out, stats.sha256
    );
}

struct Ours {
    wall: Duration,
    stats: BuildStats,
    hwm_kb: u64,
}

fn run_ours(root: &Path, out: &Path, threads: usize, level: u32) -> Ours {
    let spec = format!("{}\t{}\t{threads}\t{level}", root.display(), out.display());
    let t = Instant::now();
    let o = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, spec)
        .stderr(Stdio::inherit())
        .output()
        .expect("re-exec the bench binary");
    let wall = t.elapsed();
    assert!(o.status.success(), "child build failed");
    let line = String::from_utf8_lossy(&o.stdout)
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .expect("RESULT line")
        .to_owned();
    let field = |k: &str| -> String {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .unwrap_or_else(|| panic!("{k} in {line}"))
            .to_owned()
    };
    Ours {
        wall,
        stats: BuildStats {
            files: field("files").parse().unwrap(),
            bytes_in: field("bytes_in").parse().unwrap(),
            bytes_out: field("bytes_out").parse().unwrap(),
            sha256: field("sha256"),
            content_bytes: 0,
            skipped: 0,
        },
        hwm_kb: field("hwm_kb").parse().unwrap(),
    }
}

/// `find . | cpio -o -H newc | pigz -p N -L`, what Warewulf runs (in one pipeline).
fn run_baseline(root: &Path, out: &Path, threads: usize, level: u32) -> (Duration, u64) {
    let cmd = format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | pigz -p {threads} -{level} > '{}'",
        root.display(),
        out.display()
    );
    let t = Instant::now();
    let st = Command::new("sh").arg("-c").arg(&cmd).status().expect("run sh");
    let wall = t.elapsed();
    assert!(st.success(), "baseline failed: {cmd}");
    (wall, fs::metadata(out).unwrap().len())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Single-thread deflate throughput of the flate2 backend gzp uses, and of C zlib (pigz -p 1),
/// on the same bytes: zlib-rs runs well ahead of C zlib, miniz_oxide well behind it.
fn backend_probe(root: &Path, limit: usize, level: u32) -> String {
    let mut data = Vec::with_capacity(limit);
    for e in walk_files(root) {
        if data.len() >= limit {
            break;
        }
        if let Ok(f) = File::open(&e) {
            let _ = f.take((limit - data.len()) as u64).read_to_end(&mut data);
        }
    }
    let t = Instant::now();
    let mut c = flate2::Compress::new(flate2::Compression::new(level), false);
    let mut out_len = 0;
    for block in data.chunks(256 * 1024) {
        c.reset();
        let mut out = Vec::with_capacity(block.len() + block.len() / 10 + 128);
        c.compress_vec(block, &mut out, flate2::FlushCompress::Sync).unwrap();
        out_len += out.len();
    }
    let ours = mb(data.len() as u64) / t.elapsed().as_secs_f64();
    let pigz = if root::have("pigz") {
        let t = Instant::now();
        let mut child = Command::new("pigz")
            .args(["-p", "1", &format!("-{level}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&data).unwrap();
        child.wait().unwrap();
        format!("{:.1} MB/s", mb(data.len() as u64) / t.elapsed().as_secs_f64())
    } else {
        "n/a (no pigz)".into()
    };
    format!(
        "single-thread level {level} on {:.0} MB of the tree's files: flate2 (zlib-rs) {ours:.1} MB/s \
         ({:.1} MB out), pigz -p 1 (C zlib) {pigz}",
        mb(data.len() as u64),
        mb(out_len as u64)
    )
}

fn walk_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries.into_iter().rev() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                files.push(e.path());
            }
        }
    }
    files.reverse();
    files
}

fn tree_size(root: &Path) -> (u64, u64) {
    let (mut n, mut bytes) = (0, 0);
    for f in walk_files(root) {
        n += 1;
        bytes += fs::symlink_metadata(f).map(|m| m.len()).unwrap_or(0);
    }
    (n, bytes)
}

fn full_run(threads: usize) {
    root::ensure_tools(&["debootstrap", "pigz", "cpio"]);
    let root = root::ensure_root();
    let out_dir = PathBuf::from("/var/tmp/wulfpack-bench-out");
    fs::create_dir_all(&out_dir).unwrap();
    let (ours_out, base_out) = (out_dir.join("ours.img.gz"), out_dir.join("pigz.img.gz"));
    let (nfiles, fbytes) = tree_size(&root);

    // Warm the page cache for both contenders alike (one untimed run of each).
    run_baseline(&root, &base_out, threads, LEVEL);
    run_ours(&root, &ours_out, threads, LEVEL);

    let (mut ours_t, mut base_t, mut fast_t) = (Vec::new(), Vec::new(), Vec::new());
    let mut fast_size = 0;
    let mut ours_last = None;
    let mut base_size = 0;
    let mut hwm = 0;
    let mut shas = Vec::new();
    for i in 0..3 {
        let o = run_ours(&root, &ours_out, threads, LEVEL);
        eprintln!("run {i}: ours {:.2}s", o.wall.as_secs_f64());
        ours_t.push(o.wall);
        hwm = hwm.max(o.hwm_kb);
        shas.push(o.stats.sha256.clone());
        ours_last = Some(o);
        let (t, size) = run_baseline(&root, &base_out, threads, LEVEL);
        eprintln!("run {i}: find|cpio|pigz {:.2}s", t.as_secs_f64());
        base_t.push(t);
        base_size = size;
        let f = run_ours(&root, &out_dir.join("ours-fast.img.gz"), threads, LEVEL_FAST);
        eprintln!("run {i}: ours level {LEVEL_FAST} {:.2}s", f.wall.as_secs_f64());
        fast_t.push(f.wall);
        fast_size = f.stats.bytes_out;
    }
    let fm = median(fast_t.clone());
    let ours = ours_last.unwrap();
    let (om, bm) = (median(ours_t.clone()), median(base_t.clone()));
    let ratio = om.as_secs_f64() / bm.as_secs_f64();
    let size_ratio = ours.stats.bytes_out as f64 / base_size as f64;
    let identical = shas.windows(2).all(|w| w[0] == w[1]);

    // Peak RSS against tree size: a small subtree for comparison.
    let small = root.join("etc");
    let small_run = run_ours(&small, &out_dir.join("small.img.gz"), threads, LEVEL);

    // GNU cpio reads our archive back.
    let listed = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -dc < '{}' | cpio -it --quiet | wc -l",
            ours_out.display()
        ))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let probe = backend_probe(&root, 128 << 20, LEVEL);
    let t = Instant::now();
    let excludes = read_excludes(&root).unwrap();
    let digest = tree_digest(&root, &excludes).unwrap();
    let digest_secs = t.elapsed().as_secs_f64();

    let fmt = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let secs3 = |v: &[Duration]| {
        let (m, lo, hi) = report::stats(&v.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>());
        (m, Some((lo, hi)))
    };
    let (ow, os) = secs3(&ours_t);
    report::record(
        &report::Figure {
            bench: "image_build",
            measure: &format!(
                "image build (cpio.gz, level {LEVEL}) of a {:.0} MB Debian root",
                mb(fbytes)
            ),
            unit: "s",
            better: report::Better::Lower,
            wulfpack: ow,
            spread: os,
            anchor: Some(("find | cpio | pigz", secs3(&base_t).0)),
            goal: "≤ 0.40× the anchor's time (≥ 2.5×)",
        },
        true,
    );
    report::record(
        &report::Figure {
            bench: "image_build",
            measure: "image build: archive size",
            unit: "MB",
            better: report::Better::Lower,
            wulfpack: mb(ours.stats.bytes_out),
            spread: None,
            anchor: Some(("find | cpio | pigz", mb(base_size))),
            goal: "≤ 1.02× the anchor's size",
        },
        true,
    );
    println!("## Image build: wulfpack vs find | cpio -o -H newc | pigz\n");
    println!(
        "Tree: `{}` ({nfiles} regular files, {:.0} MB of file data; {} archive entries). gzip level {LEVEL}, \
         {threads} compression threads (pigz -p {threads}), {threads} cores, {} KiB blocks. Page cache \
         warm for both; runs interleaved.\n",
        root.display(),
        mb(fbytes),
        ours.stats.files,
        BLOCK_SIZE / 1024
    );
    println!("| | wulfpack `build_cpio_gz` | find \\| cpio \\| pigz |");
    println!("|---|---|---|");
    println!(
        "| wall time, median of 3 | {:.2} s | {:.2} s |",
        om.as_secs_f64(),
        bm.as_secs_f64()
    );
    println!("| runs | {} s | {} s |", fmt(&ours_t), fmt(&base_t));
    println!(
        "| archive size | {} B ({:.1} MB) | {} B ({:.1} MB) |",
        ours.stats.bytes_out,
        mb(ours.stats.bytes_out),
        base_size,
        mb(base_size)
    );
    println!("| uncompressed cpio | {:.1} MB | — |", mb(ours.stats.bytes_in));
    println!("| peak RSS | {:.1} MiB | — |", hwm as f64 / 1024.0);
    println!(
        "| wulfpack at level {LEVEL_FAST}, median of 3 | {:.2} s ({} s), {:.1} MB: **{:.2}×** the time, size ratio **{:.4}** | |",
        fm.as_secs_f64(),
        fmt(&fast_t),
        mb(fast_size),
        fm.as_secs_f64() / bm.as_secs_f64(),
        fast_size as f64 / base_size as f64
    );
    println!();
    println!(
        "- time ratio: **{ratio:.2}×** (goal ≤ 0.40×); size ratio: **{size_ratio:.4}** (goal ≤ 1.02)\n\
         - throughput: {:.0} MB/s of uncompressed archive (baseline {:.0} MB/s)\n\
         - three builds byte-identical: {identical} (sha256 {})\n\
         - peak RSS on `{}` ({:.1} MB uncompressed): {:.1} MiB; on the whole tree: {:.1} MiB\n\
         - GNU `cpio -it` lists {listed} entries of our archive (we wrote {})\n\
         - `tree_digest` of the tree: {digest_secs:.2} s (one thread; {}…)\n\
         - {probe}",
        mb(ours.stats.bytes_in) / om.as_secs_f64(),
        mb(ours.stats.bytes_in) / bm.as_secs_f64(),
        &ours.stats.sha256[..16],
        small.display(),
        mb(small_run.stats.bytes_in),
        small_run.hwm_kb as f64 / 1024.0,
        hwm as f64 / 1024.0,
        ours.stats.files,
        &digest[..16],
    );
}

fn smoke_run(threads: usize) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for d in ["etc/warewulf", "usr/bin", "boot"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for i in 0..50 {
        fs::write(
            root.join(format!("usr/bin/tool{i}")),
            format!("#!/bin/sh\necho {i}\n").repeat(100),
        )
        .unwrap();
    }
    fs::write(root.join("boot/vmlinuz"), vec![1u8; 4096]).unwrap();
    fs::write(root.join("etc/warewulf/excludes"), "/boot/*\n").unwrap();
    let out = dir.path().join("ours.img.gz");
    let o = run_ours(&root, &out, threads, LEVEL);
    assert!(o.stats.files > 50 && o.stats.bytes_out > 0);
    assert_eq!(fs::metadata(&out).unwrap().len(), o.stats.bytes_out);
    print!(
        "image_build smoke: {} entries, {} B -> {} B in {:.3} s, peak RSS {} KiB",
        o.stats.files,
        o.stats.bytes_in,
        o.stats.bytes_out,
        o.wall.as_secs_f64(),
        o.hwm_kb
    );
    if root::have("cpio") && root::have("pigz") {
        let (t, size) = run_baseline(&root, &dir.path().join("pigz.img.gz"), threads, LEVEL);
        print!("; find|cpio|pigz {size} B in {:.3} s", t.as_secs_f64());
    } else {
        print!("; baseline skipped (cpio or pigz not installed)");
    }
    println!("\n{}", backend_probe(&root, 1 << 20, LEVEL));
    let digest = tree_digest(&root, &read_excludes(&root).unwrap()).unwrap();
    println!("tree_digest {digest}");
}
