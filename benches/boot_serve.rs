//! Boot data plane throughput (issues 4 and 11), each figure against its anchor in the
//! same run:
//!
//! - **HTTP**: `/image/<mac>` streaming an image artifact from the CAS over loopback,
//!   1 and 8 concurrent `curl -o /dev/null` clients, against nginx serving the same
//!   file (a hard link to the blob) with `sendfile on`. Two wulfpack servers: the
//!   head's (`cas::zerocopy::serve`, bodies by `sendfile(2)`) and, for comparison,
//!   plain `axum::serve` (the read path: `pread` chunks through hyper). Goal ≥ 1.0×.
//! - **TFTP**: a 64 MB file at blksize 1432 (`curl --tftp-blksize 1432`) from our
//!   server against tftpd-hpa, both in one server network namespace and fetched from a
//!   client namespace over a veth (LAB.md: TFTP servers only in namespaces the test
//!   made). Goal ≥ 1.0×. Then windowsize (RFC 7440), which neither curl nor
//!   tftp-hpa speaks: a raw client (`tests/common/tftp_client.rs`) at windowsize 1,
//!   4, 8 and 16 against our server, and at 1 against tftpd-hpa (which ignores the
//!   option), to report windowsize's gain.
//!
//! **Runs, not one figure.** Each measure is taken in `RUNS` runs (default 3), each the
//! median of `ROUNDS` rounds (default 3); within a round the servers take turns, the
//! first one rotating, so a burst of load elsewhere does not always hit the same one.
//! Every run prints its figures and ratio with the machine's conditions during it
//! (load average, CPU used by other processes, steal); the end prints min–median–max
//! over the runs. The machine has 2 cores and is shared: a ratio is only as good as
//! the "others' CPU" printed beside it.
//!
//! `cargo bench --bench boot_serve` runs the full sizes (512 MB, 64 MB); without
//! `--bench` (as `cargo test --benches` runs it) tiny sizes check the harness.
//! `WULFPACK_BOOT_SERVE_RUNS`, `…_ROUNDS` change the counts; `…_ONLY=http|tftp` runs
//! one half. Needs root and Debian's `nginx-light`, `tftpd-hpa`, `curl` (installed if
//! missing); prints SKIP with the reason otherwise.

#[path = "../tests/common/netns.rs"]
mod netns;
#[path = "../tests/common/netns_pair.rs"]
mod netns_pair;
#[path = "../tests/common/registry.rs"]
mod registry;
#[path = "../tests/common/tftp_client.rs"]
mod tftp_client;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use wulfpack::boot::http::{router, BootHttp};
use wulfpack::boot::status::StatusBoard;
use wulfpack::boot::tftp::{self, TftpConfig};
use wulfpack::boot::view::BootView;
use wulfpack::cas::Cas;
use wulfpack::model;
use wulfpack::state::{Artifact, Command as Cmd, ImageCommand, ImageEntry, Request, State};

const MAC: &str = "aa:bb:cc:dd:ee:01";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A child process stopped by PID on drop: SIGTERM first (nginx's master stops
/// its workers on TERM; a SIGKILLed master would orphan them), SIGKILL after 5 s.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.0);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_blob(path: &Path, size: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// `n` concurrent curl downloads of `url`; aggregate MB/s.
fn curl_rate(url: &str, n: usize, size: u64) -> f64 {
    let start = Instant::now();
    let kids: Vec<Child> = (0..n)
        .map(|_| {
            Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "300",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{size_download}\n",
                ])
                .arg(url)
                .stdout(Stdio::piped())
                .spawn()
                .expect("curl")
        })
        .collect();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(
            s.trim() == format!("200 {size}"),
            "{url}: curl reported {s:?} (status, bytes)"
        );
    }
    (size as f64 * n as f64) / start.elapsed().as_secs_f64() / 1e6
}

fn wait_http(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} does not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What else the machine did during a run: load average at its end, and the CPU that
/// processes other than this benchmark and its children used (system busy time minus
/// ours, minus interrupt and softirq time, which on loopback is mostly our own
/// traffic), and steal time (this is a VM), in percent of all cores.
struct Conditions {
    busy: u64,
    steal: u64,
    irq: u64,
    ours: u64,
    total: u64,
}

fn proc_stat_fields(path: &str) -> Option<Vec<u64>> {
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after the ")" of the command name: state is [0], utime [11], stime [12],
    // cutime [13], cstime [14], ppid [1].
    let rest = &s[s.rfind(')')? + 2..];
    Some(
        rest.split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// CPU ticks of this process (with its reaped children) and of every live descendant.
fn our_ticks() -> u64 {
    let me = std::process::id() as u64;
    let mut parent: std::collections::HashMap<u64, u64> = Default::default();
    let mut ticks: std::collections::HashMap<u64, u64> = Default::default();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        if let Some(f) = proc_stat_fields(&format!("/proc/{pid}/stat")) {
            if f.len() > 13 {
                parent.insert(pid, f[0]);
                ticks.insert(pid, f[10] + f[11] + if pid == me { f[12] + f[13] } else { 0 });
            }
        }
    }
    let descends = |mut p: u64| {
        for _ in 0..64 {
            if p == me {
                return true;
            }
            match parent.get(&p) {
                Some(&q) if q != 0 && q != p => p = q,
                _ => return false,
            }
        }
        false
    };
    ticks.iter().filter(|(p, _)| descends(**p)).map(|(_, t)| t).sum()
}

impl Conditions {
    fn sample() -> Conditions {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cpu: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let get = |i: usize| cpu.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal
        Conditions {
            busy: get(0) + get(1) + get(2),
            irq: get(5) + get(6),
            steal: get(7),
            total: (0..8).map(get).sum(),
            ours: our_ticks(),
        }
    }

    /// "load 1.23, others 12 %, steal 0 %" since `start`.
    fn since(&self) -> String {
        let (start, now) = (self, Conditions::sample());
        let total = (now.total.saturating_sub(start.total)).max(1) as f64;
        let pct = |a: u64, b: u64| 100.0 * a.saturating_sub(b) as f64 / total;
        let others = (now.busy.saturating_sub(start.busy)).saturating_sub(now.ours.saturating_sub(start.ours));
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        format!(
            "load {}, others' CPU {:.0} %, irq+softirq {:.0} %, steal {:.0} %",
            load.split_whitespace().next().unwrap_or("?"),
            100.0 * others as f64 / total,
            pct(now.irq, start.irq),
            pct(now.steal, start.steal),
        )
    }
}

/// One measure over all runs: per run the median of its rounds, for wulfpack and the
/// anchor.
#[derive(Default)]
struct Spread {
    ours: Vec<f64>,
    anchor: Vec<f64>,
}

impl Spread {
    fn row(&self, name: &str, anchor: &str, unit: &str, goal: &str) -> String {
        let mmm = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            if v.is_empty() {
                return "-".to_owned();
            }
            let f = |x: f64| {
                if x >= 100.0 {
                    format!("{x:.0}")
                } else {
                    format!("{x:.1}")
                }
            };
            format!("{}–{}–{} {unit}", f(v[0]), f(median(v.clone())), f(v[v.len() - 1]))
        };
        let ratios: Vec<String> = self
            .ours
            .iter()
            .zip(&self.anchor)
            .map(|(a, b)| format!("{:.2}", a / b))
            .collect();
        format!(
            "| {name} | {} | {anchor} {} | {} | {goal} |",
            mmm(&self.ours),
            mmm(&self.anchor),
            ratios.join(", ")
        )
    }
}

/// Take `rounds` rounds of `fns` (one measurement each), rotating which goes first;
/// the median of each.
fn rounds_of(rounds: usize, fns: &mut [&mut dyn FnMut() -> f64]) -> Vec<f64> {
    let n = fns.len();
    let mut got = vec![Vec::new(); n];
    for r in 0..rounds {
        for i in 0..n {
            let k = (r + i) % n;
            got[k].push((fns[k])());
        }
    }
    got.into_iter().map(median).collect()
}

#[derive(Default)]
struct HttpResults {
    /// Per client count (1, 8): sendfile path vs nginx, and read path vs nginx.
    sendfile: [Spread; 2],
    read: [Spread; 2],
}

fn http_bench(rt: &tokio::runtime::Runtime, work: &Path, size: u64, runs: usize, rounds: usize) -> HttpResults {
    let cas = Cas::open(&work.join("cas")).unwrap();
    let raw = work.join("artifact.bin");
    write_blob(&raw, size);
    let digest = cas.put_file(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();

    let mut s = State::default();
    let yaml =
        format!("nodes:\n  n1:\n    image name: img\n    network devices:\n      default:\n        hwaddr: {MAC}\n");
    let apply = |s: &mut State, i, cmd| assert!(s.apply(i, &Request { id: None, cmd }).0.is_ok());
    apply(
        &mut s,
        1,
        Cmd::Import {
            conf: model::parse_nodes_conf(&yaml).unwrap(),
        },
    );
    let entry = ImageEntry {
        source: "bench".into(),
        platform: "linux/amd64".into(),
        layers: vec![],
        config: None,
        rootfs_size: 0,
        files: 0,
        artifact: Some(Artifact {
            digest,
            size,
            build_key: "bench".into(),
        }),
        kernel: None,
        kernels: vec![],
        created: 0,
        updated: 0,
    };
    apply(
        &mut s,
        2,
        Cmd::Image(ImageCommand::Put {
            name: "img".into(),
            entry: Box::new(entry),
            expect: None,
        }),
    );
    let (tx, view) = watch::channel(Arc::new(BootView::from_state(&s, 2)));
    let boot = BootHttp::new(view, cas.clone(), Arc::new(StatusBoard::new()), 1);
    let app = router(boot).merge(wulfpack::cas::http::router(cas.clone()));
    // The head's listener (sendfile bodies) and plain axum::serve (the read path).
    let (ours, read_path): (SocketAddr, SocketAddr) = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let app1 = app.clone();
        tokio::spawn(async move {
            let _tx = tx;
            wulfpack::cas::zerocopy::serve(l, app1, std::future::pending())
                .await
                .unwrap()
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = l.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>())
                .await
                .unwrap()
        });
        (a, b)
    });

    // nginx serves the very same file (a hard link to the blob).
    let site = work.join("site");
    std::fs::create_dir_all(site.join("logs")).unwrap();
    std::fs::hard_link(cas.path(&digest), site.join("image.img.gz")).unwrap();
    let port = registry::free_port();
    let conf = site.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes auto;\npid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{ access_log off; sendfile on; tcp_nopush on; default_type application/octet-stream;\n\
               client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp; fastcgi_temp_path {dir}/tmp;\n\
               uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;\n\
               server {{ listen 127.0.0.1:{port}; root {dir}; }} }}\n",
            dir = site.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(site.join("tmp")).unwrap();
    let _nginx = Proc(
        Command::new("nginx")
            .args(["-c", conf.to_str().unwrap(), "-p", site.to_str().unwrap()])
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx"),
    );
    let nginx_addr = format!("127.0.0.1:{port}");
    wait_http(&nginx_addr);

    let ours_url = format!("http://{ours}/image/{MAC}?compress=gz");
    let read_url = format!("http://{read_path}/image/{MAC}?compress=gz");
    let nginx_url = format!("http://{nginx_addr}/image.img.gz");
    // Warm the page cache and the verification cache (the first request hashes the
    // blob once; timed separately here), then each server once.
    let t = Instant::now();
    curl_rate(&ours_url, 1, size);
    let first = t.elapsed();
    curl_rate(&read_url, 1, size);
    curl_rate(&nginx_url, 1, size);

    println!(
        "HTTP image {} MB over loopback (curl -o /dev/null; {runs} runs, each the median of {rounds}); \
         first request incl. verification: {:.2} s",
        size >> 20,
        first.as_secs_f64()
    );
    let mut res = HttpResults::default();
    for run in 1..=runs {
        for (i, clients) in [1usize, 8].into_iter().enumerate() {
            let start = Conditions::sample();
            let m = rounds_of(
                rounds,
                &mut [
                    &mut || curl_rate(&nginx_url, clients, size),
                    &mut || curl_rate(&ours_url, clients, size),
                    &mut || curl_rate(&read_url, clients, size),
                ],
            );
            let (nginx, zc, rd) = (m[0], m[1], m[2]);
            println!(
                "  run {run}, {clients} client(s): wulfpack {zc:>6.0} MB/s  (read path {rd:>6.0})  nginx {nginx:>6.0} MB/s  \
                 ratio {:.2} (read path {:.2})   [{}]",
                zc / nginx,
                rd / nginx,
                start.since()
            );
            res.sendfile[i].ours.push(zc);
            res.sendfile[i].anchor.push(nginx);
            res.read[i].ours.push(rd);
            res.read[i].anchor.push(nginx);
        }
    }
    res
}

/// TFTP child mode: `--tftp-child ADDR ROOT` serves until killed (at most 10 min).
fn tftp_child(addr: &str, root: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sock = std::net::UdpSocket::bind(addr).expect("bind TFTP in the namespace");
        println!("READY");
        let cfg = TftpConfig {
            enabled: true,
            listen: addr.into(),
            root: root.into(),
            ..Default::default()
        };
        tftp::run(sock, cfg, tokio::time::sleep(Duration::from_secs(600)))
            .await
            .unwrap();
    });
}

/// Raw-client mode: `--tftp-fetch ADDR FILE BLKSIZE WINDOW SIZE` fetches once and prints
/// MB/s and the windowsize the server granted.
fn tftp_fetch(addr: &str, file: &str, blksize: &str, window: &str, size: &str) {
    let size: u64 = size.parse().unwrap();
    let mut got = 0u64;
    let t = Instant::now();
    let oack = tftp_client::raw_fetch_into(
        addr.parse().unwrap(),
        file,
        blksize.parse().unwrap(),
        window.parse().unwrap(),
        &mut |b| got += b.len() as u64,
    )
    .unwrap_or_else(|e| panic!("raw TFTP fetch from {addr}: {e}"));
    let rate = got as f64 / t.elapsed().as_secs_f64() / 1e6;
    assert_eq!(got, size, "raw TFTP fetch from {addr}: wrong length");
    let granted = oack.get("windowsize").map(String::as_str).unwrap_or("1");
    println!("{rate} {granted}");
}

#[derive(Default)]
struct TftpResults {
    curl: Spread,
    /// Raw client: our server at windowsize 1, 4, 8, 16 (anchor: tftpd-hpa, window 1).
    window: [Spread; 4],
}

const WINDOWS: [u16; 4] = [1, 4, 8, 16];

fn tftp_bench(work: &Path, size: u64, runs: usize, rounds: usize) -> Option<TftpResults> {
    let pair = match netns_pair::NsPair::create("b") {
        Ok(p) => p,
        Err(e) => {
            println!("TFTP: SKIP (cannot create network namespaces: {e})");
            return None;
        }
    };
    let root = work.join("tftproot");
    std::fs::create_dir_all(&root).unwrap();
    write_blob(&root.join("big.bin"), size);
    let exe = std::env::current_exe().unwrap();
    let ip = pair.server_ip;
    let mut ours = pair
        .cmd(&pair.server, exe.to_str().unwrap())
        .args(["--tftp-child", &format!("{ip}:69"), root.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start our TFTP server");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(ours.stdout.take().unwrap()), &mut line).unwrap();
    assert!(line.contains("READY"), "our TFTP server did not start: {line:?}");
    let _ours = Proc(ours);
    let _hpa = Proc(
        pair.cmd(&pair.server, "in.tftpd")
            .args(["--foreground", "--secure", "--address", &format!("{ip}:6969")])
            .arg(&root)
            .spawn()
            .expect("start tftpd-hpa"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let curl = |port: u16| {
        let t = Instant::now();
        let o = pair
            .cmd(&pair.client, "curl")
            .args([
                "-sS",
                "--max-time",
                "600",
                "--tftp-blksize",
                "1432",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
            ])
            .arg(format!("tftp://{ip}:{port}/big.bin"))
            .output()
            .unwrap();
        let got = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            got.trim(),
            size.to_string(),
            "port {port}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        size as f64 / t.elapsed().as_secs_f64() / 1e6
    };
    let raw = |port: u16, window: u16| {
        let o = pair
            .cmd(&pair.client, exe.to_str().unwrap())
            .args(["--tftp-fetch", &format!("{ip}:{port}"), "big.bin", "1432"])
            .arg(window.to_string())
            .arg(size.to_string())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "raw fetch: {out} {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let mut f = out.split_whitespace();
        let rate: f64 = f.next().unwrap().parse().unwrap();
        let granted: u16 = f.next().unwrap().parse().unwrap();
        if port == 69 {
            assert_eq!(granted, window, "our server grants windowsize up to 16");
        }
        rate
    };
    println!(
        "TFTP {} MB over a veth, blksize 1432 ({runs} runs, each the median of {rounds})",
        size >> 20
    );
    let mut res = TftpResults::default();
    for run in 1..=runs {
        let start = Conditions::sample();
        let m = rounds_of(rounds, &mut [&mut || curl(6969), &mut || curl(69)]);
        println!(
            "  run {run}, curl: wulfpack {:>5.1} MB/s  tftpd-hpa {:>5.1} MB/s  ratio {:.2}   [{}]",
            m[1],
            m[0],
            m[1] / m[0],
            start.since()
        );
        res.curl.ours.push(m[1]);
        res.curl.anchor.push(m[0]);
        let start = Conditions::sample();
        let mut hpa = || raw(6969, 1);
        let (mut w1, mut w4, mut w8, mut w16) = (|| raw(69, 1), || raw(69, 4), || raw(69, 8), || raw(69, 16));
        let m = rounds_of(rounds, &mut [&mut hpa, &mut w1, &mut w4, &mut w8, &mut w16]);
        println!(
            "  run {run}, raw client: wulfpack windowsize 1 / 4 / 8 / 16: {:.1} / {:.1} / {:.1} / {:.1} MB/s  \
             tftpd-hpa {:.1} MB/s   [{}]",
            m[1],
            m[2],
            m[3],
            m[4],
            m[0],
            start.since()
        );
        for i in 0..4 {
            res.window[i].ours.push(m[i + 1]);
            res.window[i].anchor.push(m[0]);
        }
    }
    Some(res)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--tftp-child") => return tftp_child(&args[2], &args[3]),
        Some("--tftp-fetch") => return tftp_fetch(&args[2], &args[3], &args[4], &args[5], &args[6]),
        _ => {}
    }
    let full = args.iter().any(|a| a == "--bench");
    if !registry::is_root() {
        println!("boot_serve: SKIP (needs root for namespaces and Debian packages)");
        return;
    }
    if !registry::ensure_packages(&["nginx-light", "tftpd-hpa", "curl", "iproute2"]) {
        println!("boot_serve: SKIP (nginx-light, tftpd-hpa, curl are missing and cannot be installed)");
        return;
    }
    let (http_size, tftp_size) = if full {
        (512u64 << 20, 64u64 << 20)
    } else {
        (8u64 << 20, 2u64 << 20)
    };
    let runs = env_usize("WULFPACK_BOOT_SERVE_RUNS", if full { 3 } else { 1 });
    let rounds = env_usize("WULFPACK_BOOT_SERVE_ROUNDS", if full { 3 } else { 1 });
    let only = std::env::var("WULFPACK_BOOT_SERVE_ONLY").unwrap_or_default();
    let work = tempfile::tempdir_in(
        std::env::var_os("BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let http = (only.is_empty() || only == "http").then(|| http_bench(&rt, work.path(), http_size, runs, rounds));
    let tftp = if only.is_empty() || only == "tftp" {
        tftp_bench(work.path(), tftp_size, runs, rounds)
    } else {
        None
    };
    println!("\nSummary: min–median–max over {runs} runs (each the median of {rounds}), ratio of each run:\n");
    println!("| measure | wulfpack | anchor, same runs | ratio per run | goal |");
    println!("|---|---|---|---|---|");
    if let Some(h) = http {
        let mb = http_size >> 20;
        for (i, c) in ["1 client", "8 clients"].iter().enumerate() {
            println!(
                "{}",
                h.sendfile[i].row(&format!("HTTP {mb} MB, {c}, sendfile path"), "nginx", "MB/s", "≥ 1.0×")
            );
            println!(
                "{}",
                h.read[i].row(&format!("HTTP {mb} MB, {c}, read path (before)"), "nginx", "MB/s", "—")
            );
        }
    }
    if let Some(t) = tftp {
        let mb = tftp_size >> 20;
        println!(
            "{}",
            t.curl.row(
                &format!("TFTP {mb} MB, blksize 1432, curl"),
                "tftpd-hpa",
                "MB/s",
                "≥ 1.0×"
            )
        );
        for (i, w) in WINDOWS.iter().enumerate() {
            println!(
                "{}",
                t.window[i].row(
                    &format!("TFTP {mb} MB, blksize 1432, raw client, windowsize {w}"),
                    "tftpd-hpa (window 1)",
                    "MB/s",
                    "—"
                )
            );
        }
    }
}
