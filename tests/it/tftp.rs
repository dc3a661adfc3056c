//! The TFTP server against real clients, in network namespaces the test creates.
//!
//! LAB.md: TFTP servers under test run only inside namespaces the test made. The
//! server is this test binary re-executed inside the server namespace (the
//! `serve_child` helper below, inert unless its environment variable is set), so
//! it is a process of its own that the test kills by PID. Clients run in the
//! client namespace: tftp-hpa's `tftp`, `curl tftp://`, and a small raw client
//! (`tests/common/tftp_client.rs`) that negotiates `windowsize`, which neither of
//! those speaks. The protocol's corner cases (losses, wrap, timeouts, the cap) are
//! unit tests of `boot::tftp::server` on loopback.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::netns_pair::NsPair;
use crate::tftp_client::raw_fetch;
use wulfpack::boot::tftp::{self, TftpConfig};

const SERVE_ENV: &str = "WULFPACK_TEST_TFTP_SERVE";
const FETCH_ENV: &str = "WULFPACK_TEST_TFTP_FETCH";

/// Helper process: serve TFTP as `$WULFPACK_TEST_TFTP_SERVE` = "ADDR ROOT MEMLIMIT"
/// says, for at most two minutes. Does nothing in a normal test run.
#[test]
fn serve_child() {
    let Ok(spec) = std::env::var(SERVE_ENV) else { return };
    let parts: Vec<&str> = spec.split(' ').collect();
    let (addr, root, mem) = (parts[0], parts[1], parts[2].parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sock = UdpSocket::bind(addr).expect("bind the TFTP address in the namespace");
        println!("READY");
        let cfg = TftpConfig {
            enabled: true,
            listen: addr.into(),
            root: root.into(),
            memory_file_limit: mem,
            ..Default::default()
        };
        tftp::run(sock, cfg, None, tokio::time::sleep(Duration::from_secs(120)))
            .await
            .unwrap();
    });
}

/// Helper process: a raw windowsize fetch as `$WULFPACK_TEST_TFTP_FETCH` =
/// "SERVER:PORT FILE BLKSIZE WINDOWSIZE OUT" says; writes the data to OUT and the
/// OACK options to OUT.oack.
#[test]
fn fetch_child() {
    let Ok(spec) = std::env::var(FETCH_ENV) else { return };
    let p: Vec<&str> = spec.split(' ').collect();
    let (data, oack) = raw_fetch(
        p[0].parse().unwrap(),
        p[1],
        p[2].parse().unwrap(),
        p[3].parse().unwrap(),
    )
    .unwrap_or_else(|e| panic!("raw fetch: {e}"));
    std::fs::write(p[4], data).unwrap();
    let oack: Vec<String> = oack.iter().map(|(k, v)| format!("{k}={v}")).collect();
    std::fs::write(format!("{}.oack", p[4]), oack.join("\n")).unwrap();
}

/// The server process, killed by PID on drop.
pub struct ServerProc(Child);

impl ServerProc {
    /// Start this test binary's `serve_child` inside `ns`.
    pub fn start(pair: &NsPair, root: &Path, mem_limit: u64) -> ServerProc {
        let exe = std::env::current_exe().unwrap();
        let mut child = pair
            .cmd(&pair.server, exe.to_str().unwrap())
            .args(["--exact", "tftp::serve_child", "--nocapture", "--test-threads=1"])
            .env(
                SERVE_ENV,
                format!("{}:69 {} {mem_limit}", pair.server_ip, root.display()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the TFTP server process");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines
            .by_ref()
            .take(20)
            .any(|l| l.map(|l| l.contains("READY")).unwrap_or(false));
        let proc = ServerProc(child);
        assert!(ready, "the TFTP server process did not start");
        // Keep draining its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        proc
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn out(o: std::process::Output) -> (bool, String) {
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), s)
}

/// Root, packages, namespaces; or the reason to skip.
fn prerequisites(tag: &str) -> Option<NsPair> {
    if !crate::registry::is_root() {
        eprintln!("SKIP: TFTP tests need root (network namespaces)");
        return None;
    }
    if !crate::registry::ensure_packages(&["ipxe", "tftp-hpa", "curl", "iproute2"]) {
        return None;
    }
    match NsPair::create(tag) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("SKIP: cannot create network namespaces: {e}");
            None
        }
    }
}

#[test]
fn real_clients_fetch_byte_identical_files_and_are_refused_escapes_and_writes() {
    let Some(pair) = prerequisites("t") else { return };
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let ipxe = PathBuf::from(tftp::DEFAULT_ROOT);
    for f in ["undionly.kpxe", "ipxe.efi"] {
        std::fs::copy(ipxe.join(f), root.join(f)).unwrap();
    }
    std::fs::write(work.path().join("secret"), b"outside the root").unwrap();
    std::os::unix::fs::symlink(work.path().join("secret"), root.join("escape")).unwrap();
    // ipxe.efi (about 1 MB) is above this limit: it is read from the file, while
    // undionly.kpxe (about 70 KB) comes from memory. Both paths are exercised.
    let _server = ServerProc::start(&pair, &root, 512 * 1024);
    let ip = pair.server_ip.to_string();
    let dl = work.path().join("dl");
    std::fs::create_dir(&dl).unwrap();
    let tftp_hpa = |cmd: &[&str]| {
        out(pair
            .cmd(&pair.client, "timeout")
            .args(["30", "tftp", "-m", "binary", &ip, "-c"])
            .args(cmd)
            .current_dir(&dl)
            .output()
            .unwrap())
    };
    let curl = |args: &[&str]| {
        out(pair
            .cmd(&pair.client, "curl")
            .args(["-sS", "--max-time", "30"])
            .args(args)
            .current_dir(&dl)
            .output()
            .unwrap())
    };

    // tftp-hpa, plain RFC 1350 (512-byte blocks), from memory.
    let (ok, log) = tftp_hpa(&["get", "undionly.kpxe", "a.kpxe"]);
    assert!(ok, "{log}");
    assert_eq!(
        std::fs::read(dl.join("a.kpxe")).unwrap(),
        std::fs::read(ipxe.join("undionly.kpxe")).unwrap(),
        "tftp-hpa: byte-identical undionly.kpxe"
    );
    // curl with blksize and tsize, from memory and from the file.
    for (file, bs) in [("undionly.kpxe", "1432"), ("ipxe.efi", "1432"), ("ipxe.efi", "512")] {
        let local = format!("c-{bs}-{file}");
        let (ok, log) = curl(&["--tftp-blksize", bs, "-o", &local, &format!("tftp://{ip}/{file}")]);
        assert!(ok, "curl {file} blksize {bs}: {log}");
        assert!(
            std::fs::read(dl.join(&local)).unwrap() == std::fs::read(ipxe.join(file)).unwrap(),
            "curl: byte-identical {file} at blksize {bs}"
        );
    }
    // Four clients at once.
    let clients: Vec<Child> = (0..4)
        .map(|i| {
            pair.cmd(&pair.client, "curl")
                .args(["-sS", "--max-time", "30", "-o"])
                .arg(dl.join(format!("par{i}")))
                .arg(format!("tftp://{ip}/undionly.kpxe"))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in clients {
        assert!(c.wait().unwrap().success());
    }
    for i in 0..4 {
        assert!(
            std::fs::read(dl.join(format!("par{i}"))).unwrap() == std::fs::read(ipxe.join("undionly.kpxe")).unwrap()
        );
    }

    // Escapes: `..`, absolute paths, a symlink out of the root, a missing file.
    for name in ["../secret", "a/../../secret", "/etc/hostname", "escape"] {
        let (_, log) = tftp_hpa(&["get", name, "x"]);
        assert!(
            log.contains("Permission denied") || log.contains("Access violation") || log.contains("code 2"),
            "tftp-hpa get {name}: {log}"
        );
        let got = std::fs::read(dl.join("x")).unwrap_or_default();
        assert!(got.is_empty(), "tftp-hpa get {name} received {} bytes", got.len());
        let (ok, log) = curl(&["--path-as-is", "-o", "y", &format!("tftp://{ip}/{name}")]);
        assert!(!ok, "curl got {name}: {log}");
        assert!(
            std::fs::read(dl.join("y")).unwrap_or_default().is_empty(),
            "curl {name}"
        );
    }
    let (_, log) = tftp_hpa(&["get", "nope.efi", "x"]);
    assert!(log.contains("File not found") || log.contains("code 1"), "{log}");

    // Writes are refused and nothing appears in the root.
    std::fs::write(dl.join("upload"), b"payload").unwrap();
    let (_, log) = tftp_hpa(&["put", "upload", "uploaded"]);
    assert!(
        log.contains("read-only") || log.contains("Access violation"),
        "tftp-hpa put: {log}"
    );
    let (ok, _) = curl(&["-T", "upload", &format!("tftp://{ip}/uploaded2")]);
    assert!(!ok, "curl upload refused");
    assert!(!root.join("uploaded").exists() && !root.join("uploaded2").exists());
    assert_eq!(std::fs::read(work.path().join("secret")).unwrap(), b"outside the root");
}

#[test]
fn windowsize_blksize_and_tsize_are_negotiated() {
    let Some(pair) = prerequisites("w") else { return };
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    // Over 65,535 blocks of 512 bytes would wrap the block number; 3 MB at 1432
    // is about 2,200 blocks with a partial last one.
    let big: Vec<u8> = (0..3_000_001u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    let _server = ServerProc::start(&pair, &root, 16 << 20);
    let exe = std::env::current_exe().unwrap();
    for (bs, win) in [(1432usize, 8u16), (512, 1), (1468, 64)] {
        let dest = work.path().join(format!("raw-{bs}-{win}"));
        let (ok, log) = out(pair
            .cmd(&pair.client, exe.to_str().unwrap())
            .args(["--exact", "tftp::fetch_child", "--nocapture", "--test-threads=1"])
            .env(
                FETCH_ENV,
                format!("{}:69 big.bin {bs} {win} {}", pair.server_ip, dest.display()),
            )
            .output()
            .unwrap());
        assert!(ok, "raw fetch blksize {bs} window {win}: {log}");
        assert!(
            std::fs::read(&dest).unwrap() == big,
            "blksize {bs} window {win}: bytes differ"
        );
        let oack = std::fs::read_to_string(format!("{}.oack", dest.display())).unwrap();
        assert!(oack.contains(&format!("blksize={bs}")), "{oack}");
        assert!(oack.contains(&format!("tsize={}", big.len())), "{oack}");
        assert!(oack.lines().any(|l| l == "timeout=3"), "{oack}");
        let granted = win.min(TftpConfig::default().max_window_size);
        assert!(oack.contains(&format!("windowsize={granted}")), "{oack}");
    }
}

/// A head whose rack address is not up yet: `wulfd` starts anyway (Raft and `wwctl`
/// work), logs why TFTP waits, and serves TFTP as soon as the address exists. A real
/// `wulfd` process and `curl tftp://` in a namespace the test creates.
#[test]
fn wulfd_serves_tftp_once_its_listen_address_appears() {
    if let Some(why) = crate::netns::skip_reason(&[("ip", "iproute2"), ("curl", "curl")]) {
        eprintln!("SKIP wulfd_serves_tftp_once_its_listen_address_appears: {why}");
        return;
    }
    let ns = crate::netns::NetNs::new("tfl");
    ns.ok("ip link add br0 type bridge && ip link set br0 up");
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let payload: Vec<u8> = (0..50_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(root.join("boot.bin"), &payload).unwrap();
    let cfg = work.path().join("wulfd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "id: 1\ndata_dir: {}\nlisten: 127.0.0.1:9701\nhttp_listen: 127.0.0.1:9873\ninsecure: true\n\
             bootstrap:\n  - {{id: 1, addr: 127.0.0.1:9701}}\n\
             boot:\n  tftp: {{enabled: true, listen: \"10.98.0.1:69\", root: {}}}\n",
            work.path().join("data").display(),
            root.display()
        ),
    )
    .unwrap();
    let log = work.path().join("wulfd.log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let wulfd = ns.spawn(
        &[env!("CARGO_BIN_EXE_wulfd"), "--config", cfg.to_str().unwrap()],
        Some(&log),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !crate::pxe::wwctl(&ns, &["profile", "list"]).1.contains("default") {
        assert!(Instant::now() < deadline, "wulfd did not come up: {}", read_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(read_log().contains("TFTP cannot start yet"), "{}", read_log());

    ns.ok("ip addr add 10.98.0.1/24 dev br0");
    let got = work.path().join("got.bin");
    let fetched = ns.wait_for(
        &format!(
            "curl -sS --max-time 5 -o {0} tftp://10.98.0.1/boot.bin && cmp -s {0} {1}",
            got.display(),
            root.join("boot.bin").display()
        ),
        Duration::from_secs(30),
    );
    ns.kill(wulfd);
    assert!(fetched, "TFTP did not start once 10.98.0.1 existed: {}", read_log());
}
