//! Boot data plane throughput (issue 4), each figure against its anchor in the same run:
//!
//! - **HTTP**: `/image/<mac>` streaming an image artifact from the CAS (verified,
//!   chunked reads with read-ahead) against nginx serving the same file with
//!   `sendfile`, over loopback, 1 and 8 concurrent `curl` clients. Goal ≥ 0.9× nginx.
//! - **TFTP**: a large file at blksize 1432 (`curl --tftp-blksize 1432`) from our
//!   server against tftpd-hpa, both in one server network namespace and fetched
//!   from a client namespace over a veth (LAB.md: TFTP servers only in namespaces
//!   the test made). Goal ≥ 1× tftpd-hpa.
//!
//! `cargo bench --bench boot_serve` runs the full sizes (512 MB, 64 MB); without
//! `--bench` (as `cargo test --benches` runs it) tiny sizes check the harness.
//! Needs root and Debian's `nginx-light`, `tftpd-hpa`, `curl` (installed if
//! missing); prints SKIP with the reason otherwise.

#[path = "../tests/common/netns.rs"]
mod netns;
#[path = "../tests/common/netns_pair.rs"]
mod netns_pair;
#[path = "../tests/common/registry.rs"]
mod registry;

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

fn http_bench(rt: &tokio::runtime::Runtime, work: &Path, size: u64, rounds: usize) {
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
    let ours: SocketAddr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let app = router(boot).merge(wulfpack::cas::http::router(cas.clone()));
        tokio::spawn(async move {
            let _tx = tx;
            axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>())
                .await
                .unwrap()
        });
        a
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
    let nginx_url = format!("http://{nginx_addr}/image.img.gz");
    // Warm the page cache and the verification cache (the first request hashes
    // the blob once; measured separately below).
    let t = Instant::now();
    curl_rate(&ours_url, 1, size);
    let first = t.elapsed();
    curl_rate(&nginx_url, 1, size);

    println!(
        "HTTP image {} MB over loopback (curl; median of {rounds}); first request incl. verification: {:.2} s",
        size >> 20,
        first.as_secs_f64()
    );
    for clients in [1usize, 8] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            b.push(curl_rate(&nginx_url, clients, size));
            a.push(curl_rate(&ours_url, clients, size));
        }
        let (a, b) = (median(a), median(b));
        println!(
            "  {clients} client(s): wulfpack {a:>7.0} MB/s   nginx sendfile {b:>7.0} MB/s   ratio {:.2} (goal >= 0.90)",
            a / b
        );
    }
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

fn tftp_bench(work: &Path, size: u64, rounds: usize) {
    let pair = match netns_pair::NsPair::create("b") {
        Ok(p) => p,
        Err(e) => {
            println!("TFTP: SKIP (cannot create network namespaces: {e})");
            return;
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
    let fetch = |port: u16| {
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
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        b.push(fetch(6969));
        a.push(fetch(69));
    }
    let (a, b) = (median(a), median(b));
    println!(
        "TFTP {} MB over a veth, blksize 1432 (curl; median of {rounds}):\n  wulfpack {a:>6.1} MB/s   tftpd-hpa {b:>6.1} MB/s   ratio {:.2} (goal >= 1.00)",
        size >> 20,
        a / b
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--tftp-child") {
        return tftp_child(&args[2], &args[3]);
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
    let (http_size, tftp_size, rounds) = if full {
        (512u64 << 20, 64u64 << 20, 3)
    } else {
        (8u64 << 20, 2u64 << 20, 1)
    };
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
    http_bench(&rt, work.path(), http_size, rounds);
    tftp_bench(work.path(), tftp_size, rounds);
}
