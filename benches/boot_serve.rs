//! Boot data plane throughput (issues 4 and 11), each figure against its anchor in the
//! same run:
//!
//! - **HTTP**: `/image/<mac>` streaming an image artifact from the CAS over loopback,
//!   1 and 8 concurrent `curl -o /dev/null` clients, against nginx serving the same
//!   file (a hard link to the blob) with Debian's nginx.conf settings (`sendfile on;
//!   tcp_nopush on`), and, as a second anchor, the same without `tcp_nopush` (which
//!   on this kernel makes curl's receiving cost ~2.5× the CPU per byte; see
//!   docs/PERFORMANCE.md). Two wulfpack servers: the
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
//! one half; `WULFPACK_BENCH_IDLE_WAIT=SECS` waits (up to SECS) for the machine to be
//! idle before each measurement. Needs root and Debian's `nginx-light`, `tftpd-hpa`, `curl` (installed if
//! missing); prints SKIP with the reason otherwise.

#[path = "../tests/common/netns.rs"]
mod netns;
#[path = "../tests/common/netns_pair.rs"]
mod netns_pair;
#[path = "../tests/common/registry.rs"]
mod registry;
#[path = "common/report.rs"]
mod report;
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

/// CPU ticks (1/100 s) of `root` — with the children it has reaped when
/// `reaped` — and of all its live descendants.
fn tree_ticks(root: u64, reaped: bool) -> u64 {
    let mut parent: std::collections::HashMap<u64, u64> = Default::default();
    let mut ticks: std::collections::HashMap<u64, u64> = Default::default();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        if let Some(f) = proc_stat_fields(&format!("/proc/{pid}/stat")) {
            if f.len() > 13 {
                parent.insert(pid, f[0]);
                ticks.insert(pid, f[10] + f[11] + if reaped { f[12] + f[13] } else { 0 });
            }
        }
    }
    let descends = |mut p: u64| {
        for _ in 0..64 {
            if p == root {
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

/// This benchmark and everything it started.
fn our_ticks() -> u64 {
    tree_ticks(std::process::id() as u64, true)
}

/// CPU time of this process's threads, exited ones included, in ns (our HTTP
/// servers run here; the harness thread only waits for curl).
fn self_ticks() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Nanoseconds on CPU of every thread of `root` and its descendants, by (pid, tid).
fn tree_ns(root: u64, out: &mut std::collections::HashMap<(u64, u64), u64>) {
    let mut todo = vec![root];
    let mut seen = 0;
    while let Some(pid) = todo.pop() {
        seen += 1;
        if seen > 10_000 {
            return;
        }
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(tid) = t.file_name().to_string_lossy().parse::<u64>() else {
                continue;
            };
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                if let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse().ok()) {
                    out.insert((pid, tid), ns);
                }
            }
            if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                todo.extend(c.split_whitespace().filter_map(|p| p.parse::<u64>().ok()));
            }
        }
    }
}

/// CPU of an outside server (with the children it forks, like tftpd-hpa per
/// transfer): a thread samples its process tree every 10 ms and keeps the last value
/// of every thread, so a child that exits between samples loses at most 10 ms.
struct CpuMeter {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<f64>,
}

impl CpuMeter {
    fn start(root: u64) -> CpuMeter {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut base = Default::default();
            tree_ns(root, &mut base);
            let mut last = base.clone();
            // Bounded: a measurement is at most the curl/raw client timeouts (600 s).
            for _ in 0..70_000 {
                if st.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
                tree_ns(root, &mut last);
            }
            tree_ns(root, &mut last);
            let spent: u64 = last
                .iter()
                .map(|(k, v)| v.saturating_sub(base.get(k).copied().unwrap_or(0)))
                .sum();
            spent as f64 / 1e9
        });
        CpuMeter { stop, handle }
    }

    /// CPU seconds since start.
    fn stop(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap_or(0.0)
    }
}

/// Whose CPU a measurement charges to the server.
#[derive(Clone, Copy)]
enum Server {
    /// This process (our HTTP servers).
    This,
    /// An outside process tree (nginx, tftpd-hpa, our TFTP child).
    Tree(u64),
}

/// The children this process has reaped: the clients (curl, `ip netns exec`).
fn client_ticks() -> u64 {
    proc_stat_fields("/proc/self/stat").map_or(0, |f| f[12] + f[13])
}

/// One measurement: the rate, and the CPU seconds the server and the clients spent
/// per GB moved. CPU per byte shows the mechanism even when other work on the
/// machine makes the rates noisy.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rate: f64,
    server_cpu: f64,
    client_cpu: f64,
}

/// Run `f` (which moves `bytes` and returns MB/s) and measure the server's CPU and
/// the clients' around it.
fn timed(bytes: u64, server: Server, f: &mut dyn FnMut() -> f64) -> Sample {
    let (s0, c0) = (self_ticks(), client_ticks());
    let meter = match server {
        Server::Tree(pid) => Some(CpuMeter::start(pid)),
        Server::This => None,
    };
    let rate = f();
    let server_s = match meter {
        Some(m) => m.stop(),
        None => (self_ticks() - s0) as f64 / 1e9,
    };
    let c1 = client_ticks();
    let gb = bytes as f64 / 1e9;
    Sample {
        rate,
        server_cpu: server_s / gb,
        client_cpu: (c1.saturating_sub(c0)) as f64 / 100.0 / gb,
    }
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

    /// CPU used by other processes since this sample, in percent of all cores.
    fn others_pct(&self) -> f64 {
        let now = Conditions::sample();
        let total = (now.total.saturating_sub(self.total)).max(1) as f64;
        let others = (now.busy.saturating_sub(self.busy)).saturating_sub(now.ours.saturating_sub(self.ours));
        100.0 * others as f64 / total
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
    /// Server CPU seconds per GB, per run.
    cpu_ours: Vec<f64>,
    cpu_anchor: Vec<f64>,
}

impl Spread {
    fn row(&self, name: &str, anchor: &str, unit: &str, goal: &str) -> String {
        if !self.ours.is_empty() {
            let (m, lo, hi) = report::stats(&self.ours);
            report::record(
                &report::Figure {
                    bench: "boot_serve",
                    measure: name,
                    unit,
                    better: report::Better::Higher,
                    wulfpack: m,
                    spread: Some((lo, hi)),
                    anchor: (!self.anchor.is_empty()).then(|| (anchor, report::stats(&self.anchor).0)),
                    goal,
                },
                std::env::args().any(|a| a == "--bench"),
            );
        }
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
        let cpu = |v: &[f64]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.2}", median(v.to_vec()))
            }
        };
        format!(
            "| {name} | {} | {anchor} {} | {} | {} / {} | {goal} |",
            mmm(&self.ours),
            mmm(&self.anchor),
            ratios.join(", "),
            cpu(&self.cpu_ours),
            cpu(&self.cpu_anchor),
        )
    }

    fn push(&mut self, ours: Sample, anchor: Sample) {
        self.ours.push(ours.rate);
        self.anchor.push(anchor.rate);
        self.cpu_ours.push(ours.server_cpu);
        self.cpu_anchor.push(anchor.server_cpu);
    }
}

/// Take `rounds` rounds of `fns` (one measurement each), rotating which goes first;
/// the median of each field.
fn rounds_of(rounds: usize, fns: &mut [&mut dyn FnMut() -> Sample]) -> Vec<Sample> {
    let n = fns.len();
    let mut got = vec![Vec::new(); n];
    for r in 0..rounds {
        for i in 0..n {
            let k = (r + i) % n;
            got[k].push((fns[k])());
        }
    }
    got.into_iter()
        .map(|v: Vec<Sample>| Sample {
            rate: median(v.iter().map(|s| s.rate).collect()),
            server_cpu: median(v.iter().map(|s| s.server_cpu).collect()),
            client_cpu: median(v.iter().map(|s| s.client_cpu).collect()),
        })
        .collect()
}

#[derive(Default)]
struct HttpResults {
    /// Per client count (1, 8): sendfile path vs nginx, vs nginx without tcp_nopush,
    /// and read path vs nginx.
    sendfile: [Spread; 2],
    nocork: [Spread; 2],
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
    let apply = |s: &mut State, i, cmd| {
        assert!(s
            .apply(
                i,
                &Request {
                    id: None,
                    cmd,
                    audit: None
                }
            )
            .0
            .is_ok())
    };
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
            uncompressed: 0,
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

    // nginx serves the very same file (a hard link to the blob): once with Debian's
    // nginx.conf settings (`sendfile on; tcp_nopush on`), once without tcp_nopush.
    let (_nginx, nginx_addr) = start_nginx(work, "site", &cas.path(&digest), true);
    let (_nginx_nc, nginx_nc_addr) = start_nginx(work, "site-nocork", &cas.path(&digest), false);
    let ours_url = format!("http://{ours}/image/{MAC}?compress=gz");
    let read_url = format!("http://{read_path}/image/{MAC}?compress=gz");
    let nginx_url = format!("http://{nginx_addr}/image.img.gz");
    let nginx_nc_url = format!("http://{nginx_nc_addr}/image.img.gz");
    // Warm the page cache and the verification cache (the first request hashes the
    // blob once; timed separately here), then each server once.
    let t = Instant::now();
    curl_rate(&ours_url, 1, size);
    let first = t.elapsed();
    curl_rate(&read_url, 1, size);
    curl_rate(&nginx_url, 1, size);
    curl_rate(&nginx_nc_url, 1, size);

    println!(
        "HTTP image {} MB over loopback (curl -o /dev/null; {runs} runs, each the median of {rounds}); \
         first request incl. verification: {:.2} s",
        size >> 20,
        first.as_secs_f64()
    );
    let mut res = HttpResults::default();
    for run in 1..=runs {
        for (i, clients) in [1usize, 8].into_iter().enumerate() {
            wait_idle();
            let start = Conditions::sample();
            let bytes = size * clients as u64;
            let (nginx, nginx_nc) = (
                Server::Tree(_nginx.0.id() as u64),
                Server::Tree(_nginx_nc.0.id() as u64),
            );
            let m = rounds_of(
                rounds,
                &mut [
                    &mut || timed(bytes, nginx, &mut || curl_rate(&nginx_url, clients, size)),
                    &mut || timed(bytes, Server::This, &mut || curl_rate(&ours_url, clients, size)),
                    &mut || timed(bytes, nginx_nc, &mut || curl_rate(&nginx_nc_url, clients, size)),
                    &mut || timed(bytes, Server::This, &mut || curl_rate(&read_url, clients, size)),
                ],
            );
            let (nginx, zc, nc, rd) = (m[0], m[1], m[2], m[3]);
            println!(
                "  run {run}, {clients} client(s): wulfpack {:>5.0} MB/s, nginx {:>5.0}, nginx without tcp_nopush {:>5.0}, \
                 read path {:>5.0}: ratio {:.2} ({:.2} to the second nginx; read path {:.2});\n    \
                 server CPU s/GB {:.2} / {:.2} / {:.2} / {:.2}, curl {:.2} / {:.2} / {:.2} / {:.2}   [{}]",
                zc.rate,
                nginx.rate,
                nc.rate,
                rd.rate,
                zc.rate / nginx.rate,
                zc.rate / nc.rate,
                rd.rate / nginx.rate,
                zc.server_cpu,
                nginx.server_cpu,
                nc.server_cpu,
                rd.server_cpu,
                zc.client_cpu,
                nginx.client_cpu,
                nc.client_cpu,
                rd.client_cpu,
                start.since()
            );
            res.sendfile[i].push(zc, nginx);
            res.nocork[i].push(zc, nc);
            res.read[i].push(rd, nginx);
        }
    }
    res
}

/// nginx serving `file` (hard-linked as `image.img.gz`) from `work/name` on a free
/// loopback port, with or without `tcp_nopush`.
fn start_nginx(work: &Path, name: &str, file: &Path, nopush: bool) -> (Proc, String) {
    let site = work.join(name);
    std::fs::create_dir_all(site.join("logs")).unwrap();
    std::fs::create_dir_all(site.join("tmp")).unwrap();
    std::fs::hard_link(file, site.join("image.img.gz")).unwrap();
    let port = registry::free_port();
    let conf = site.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes auto;\npid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{ access_log off; sendfile on; tcp_nopush {nopush}; default_type application/octet-stream;\n\
               client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp; fastcgi_temp_path {dir}/tmp;\n\
               uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;\n\
               server {{ listen 127.0.0.1:{port}; root {dir}; }} }}\n",
            dir = site.display(),
            nopush = if nopush { "on" } else { "off" },
        ),
    )
    .unwrap();
    let proc = Proc(
        Command::new("nginx")
            .args(["-c", conf.to_str().unwrap(), "-p", site.to_str().unwrap()])
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx"),
    );
    let addr = format!("127.0.0.1:{port}");
    wait_http(&addr);
    (proc, addr)
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
        tftp::run(sock, cfg, None, tokio::time::sleep(Duration::from_secs(600)))
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
    let (ours_srv, hpa_srv) = (Server::Tree(_ours.0.id() as u64), Server::Tree(_hpa.0.id() as u64));
    let mut res = TftpResults::default();
    for run in 1..=runs {
        wait_idle();
        let start = Conditions::sample();
        let m = rounds_of(
            rounds,
            &mut [&mut || timed(size, hpa_srv, &mut || curl(6969)), &mut || {
                timed(size, ours_srv, &mut || curl(69))
            }],
        );
        println!(
            "  run {run}, curl: wulfpack {:>5.1} MB/s  tftpd-hpa {:>5.1} MB/s  ratio {:.2};  \
             server CPU s/GB {:.2} vs {:.2}, curl {:.2} vs {:.2}   [{}]",
            m[1].rate,
            m[0].rate,
            m[1].rate / m[0].rate,
            m[1].server_cpu,
            m[0].server_cpu,
            m[1].client_cpu,
            m[0].client_cpu,
            start.since()
        );
        res.curl.push(m[1], m[0]);
        wait_idle();
        let start = Conditions::sample();
        let mut hpa = || timed(size, hpa_srv, &mut || raw(6969, 1));
        let mut w = WINDOWS.map(|w| move || timed(size, ours_srv, &mut || raw(69, w)));
        let [w1, w4, w8, w16] = &mut w;
        let m = rounds_of(rounds, &mut [&mut hpa, w1, w4, w8, w16]);
        println!(
            "  run {run}, raw client: wulfpack windowsize 1 / 4 / 8 / 16: {:.1} / {:.1} / {:.1} / {:.1} MB/s  \
             tftpd-hpa {:.1} MB/s;  server CPU s/GB {:.2} / {:.2} / {:.2} / {:.2} vs {:.2}   [{}]",
            m[1].rate,
            m[2].rate,
            m[3].rate,
            m[4].rate,
            m[0].rate,
            m[1].server_cpu,
            m[2].server_cpu,
            m[3].server_cpu,
            m[4].server_cpu,
            m[0].server_cpu,
            start.since()
        );
        for i in 0..4 {
            res.window[i].push(m[i + 1], m[0]);
        }
    }
    Some(res)
}

/// With `WULFPACK_BENCH_IDLE_WAIT=SECS`: before a measurement, wait up to SECS for
/// two seconds in a row in which other processes used under 10 % of the CPU (this
/// machine is shared); say how long it waited and whether it got them.
fn wait_idle() {
    let max = env_usize("WULFPACK_BENCH_IDLE_WAIT", 0);
    if max == 0 {
        return;
    }
    let start = Instant::now();
    let mut quiet = 0;
    while start.elapsed() < Duration::from_secs(max as u64) {
        let c = Conditions::sample();
        std::thread::sleep(Duration::from_secs(1));
        if c.others_pct() < 10.0 {
            quiet += 1;
            if quiet == 2 {
                println!("  (waited {:.0} s for an idle machine)", start.elapsed().as_secs_f64());
                return;
            }
        } else {
            quiet = 0;
        }
    }
    println!("  (no idle machine within {max} s; measuring anyway)");
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
    println!("| measure | wulfpack | anchor, same runs | ratio per run | server CPU s/GB, wulfpack / anchor | goal |");
    println!("|---|---|---|---|---|---|");
    if let Some(h) = http {
        let mb = http_size >> 20;
        for (i, c) in ["1 client", "8 clients"].iter().enumerate() {
            println!(
                "{}",
                h.sendfile[i].row(&format!("HTTP {mb} MB, {c}, sendfile path"), "nginx", "MB/s", "≥ 1.0×")
            );
            println!(
                "{}",
                h.nocork[i].row(
                    &format!("HTTP {mb} MB, {c}, sendfile path"),
                    "nginx without tcp_nopush",
                    "MB/s",
                    "—"
                )
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
