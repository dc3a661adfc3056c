//! `wwclient`, the real binary, against small HTTP servers made here: applies an
//! archive with its modes, removes only what it wrote, skips a hung head within its
//! deadline, names every head when none serves, binds a port < 1024 in secure mode, and
//! fetches at once on SIGHUP.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wulfpack::overlay::archive::{pack, WriteOptions};
use wulfpack::overlay::tree::{Entry, EntryKind};

const BIN: &str = env!("CARGO_BIN_EXE_wwclient");
const WWID: &str = "52:54:00:aa:bb:01";

/// One request a server saw.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    peer_port: u16,
}

/// A head stand-in: answers every GET with the current body (200), until dropped.
struct Server {
    port: u16,
    body: Arc<Mutex<Vec<u8>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(body: Vec<u8>) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let s = Server {
            port,
            body: Arc::new(Mutex::new(body)),
            seen: Arc::default(),
            stop: Arc::default(),
        };
        let (body, seen, stop) = (s.body.clone(), s.seen.clone(), s.stop.clone());
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                match l.accept() {
                    Ok((c, peer)) => {
                        let target = answer(c, &body.lock().unwrap());
                        seen.lock().unwrap().push(Seen {
                            target,
                            peer_port: peer.port(),
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        s
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads the request head, answers 200 with `body`; returns the request target.
fn answer(mut c: TcpStream, body: &[u8]) -> String {
    c.set_nonblocking(false).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match c.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let target = text.split(' ').nth(1).unwrap_or_default().to_owned();
    let _ = write!(
        c,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = c.write_all(body);
    target
}

/// A listener that accepts connections and never answers (a stopped process, a frozen VM).
pub(crate) struct Hung {
    pub(crate) port: u16,
    stop: Arc<AtomicBool>,
}

impl Hung {
    pub(crate) fn start() -> Hung {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop: Arc<AtomicBool> = Arc::default();
        let st = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            let end = Instant::now() + Duration::from_secs(120);
            while !st.load(Ordering::Relaxed) && Instant::now() < end {
                if let Ok((c, _)) = l.accept() {
                    held.push(c);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Hung { port, stop }
    }
}

impl Drop for Hung {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A port nothing listens on (bound, then closed).
fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn entry(kind: EntryKind, mode: u32) -> Entry {
    Entry {
        kind,
        mode,
        uid: 0,
        gid: 0,
    }
}

fn archive(items: &[(&str, Entry)]) -> Vec<u8> {
    let m: BTreeMap<String, Entry> = items.iter().map(|(p, e)| (p.to_string(), e.clone())).collect();
    pack(&m, &WriteOptions::default()).unwrap()
}

/// A node's directory: root/, the config and a kernel command line.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new(conf: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("root")).unwrap();
        std::fs::write(dir.path().join("wwclient.conf"), conf).unwrap();
        std::fs::write(
            dir.path().join("cmdline"),
            format!("quiet wwid={} init=/init\n", WWID.replace(':', "-").to_uppercase()),
        )
        .unwrap();
        Node { dir }
    }

    fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("root")
    }

    fn cmd(&self, once: bool) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(self.dir.path().join("wwclient.conf"))
            .arg("--cmdline")
            .arg(self.dir.path().join("cmdline"))
            .arg("--root")
            .arg(self.root());
        if once {
            c.arg("--once");
        }
        c
    }

    fn once(&self) -> Output {
        self.cmd(true).output().unwrap()
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn wwclient_applies_with_modes_and_removes_only_what_it_wrote() {
    let srv = Server::start(archive(&[
        ("etc", entry(EntryKind::Dir, 0o755)),
        ("etc/hosts", entry(EntryKind::File(b"10.0.0.1 n1\n".to_vec()), 0o644)),
        ("etc/ssh", entry(EntryKind::Dir, 0o700)),
        (
            "etc/ssh/ssh_host_ed25519_key",
            entry(EntryKind::File(b"KEY".to_vec()), 0o600),
        ),
        (
            "etc/localtime",
            entry(EntryKind::Symlink("/usr/share/zoneinfo/UTC".into()), 0o777),
        ),
    ]));
    let node = Node::new(&format!("head = {}\nassetkey = s3cret key\n", srv.url()));
    let out = node.once();
    assert!(out.status.success(), "{}", stderr(&out));
    let root = node.root();
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hosts")).unwrap(),
        "10.0.0.1 n1\n"
    );
    assert_eq!(mode(&root.join("etc/hosts")), 0o644);
    assert_eq!(mode(&root.join("etc/ssh")), 0o700);
    assert_eq!(mode(&root.join("etc/ssh/ssh_host_ed25519_key")), 0o600);
    assert_eq!(
        std::fs::read_link(root.join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/UTC")
    );
    // The request names the node (from the kernel command line, normalised) and carries
    // the asset key.
    let seen = srv.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].target.starts_with(&format!("/runtime/{WWID}?")),
        "{}",
        seen[0].target
    );
    assert!(seen[0].target.contains("compress=gz"), "{}", seen[0].target);
    assert!(seen[0].target.contains("assetkey=s3cret%20key"), "{}", seen[0].target);

    // The admin's own file, then an overlay without the key and the symlink.
    std::fs::write(root.join("etc/motd"), "mine").unwrap();
    *srv.body.lock().unwrap() = archive(&[
        ("etc", entry(EntryKind::Dir, 0o755)),
        ("etc/hosts", entry(EntryKind::File(b"10.0.0.2 n2\n".to_vec()), 0o600)),
    ]);
    let out = node.once();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hosts")).unwrap(),
        "10.0.0.2 n2\n"
    );
    assert_eq!(mode(&root.join("etc/hosts")), 0o600);
    assert!(!root.join("etc/ssh/ssh_host_ed25519_key").exists());
    assert!(std::fs::symlink_metadata(root.join("etc/localtime")).is_err());
    assert!(
        !root.join("etc/ssh").exists(),
        "the directory wwclient made, now empty, is gone"
    );
    assert_eq!(std::fs::read_to_string(root.join("etc/motd")).unwrap(), "mine");
}

#[test]
fn wwclient_refuses_an_escaping_archive_and_writes_nothing() {
    // Our writer refuses such names; a hostile head would send them raw.
    let mut cpio = Vec::new();
    let mut w = cpio::newc::Builder::new("../escaped")
        .mode(0o100_644)
        .nlink(1)
        .write(&mut cpio, 1);
    w.write_all(b"x").unwrap();
    w.finish().unwrap();
    cpio::newc::trailer(&mut cpio).unwrap();
    let srv = Server::start(cpio);
    let node = Node::new(&format!("head = {}\n", srv.url()));
    let out = node.once();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("`..` component"), "{}", stderr(&out));
    assert!(!node.dir.path().join("escaped").exists());
    assert!(std::fs::read_dir(node.root()).unwrap().next().is_none());
}

#[test]
fn wwclient_skips_a_hung_head_within_its_deadline() {
    let hung = Hung::start();
    let srv = Server::start(archive(&[(
        "etc/issue",
        entry(EntryKind::File(b"hi\n".to_vec()), 0o644),
    )]));
    let node = Node::new(&format!(
        "head = http://127.0.0.1:{}\nhead = {}\ntimeout = 1s\n",
        hung.port,
        srv.url()
    ));
    let t = Instant::now();
    let out = node.once();
    let took = t.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(node.root().join("etc/issue")).unwrap(), "hi\n");
    assert_eq!(srv.seen().len(), 1);
    // The hung head costs its deadline (1 s), not the kernel's TCP timeouts.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("head http://127.0.0.1:{} failed: no answer within", hung.port)),
        "{err}"
    );
}

#[test]
fn wwclient_with_every_head_down_exits_non_zero_naming_each() {
    let (a, b) = (dead_port(), dead_port());
    let node = Node::new(&format!(
        "head = http://127.0.0.1:{a}\nhead = http://127.0.0.1:{b}\ntimeout = 1\n"
    ));
    let out = node.once();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no head served the runtime overlay"), "{err}");
    for p in [a, b] {
        assert!(err.contains(&format!("http://127.0.0.1:{p}: cannot connect")), "{err}");
    }
}

#[test]
fn wwclient_in_secure_mode_uses_a_privileged_source_port() {
    if !rustix::process::geteuid().is_root() {
        println!("SKIP wwclient_in_secure_mode_uses_a_privileged_source_port: needs root to bind a port < 1024");
        return;
    }
    let srv = Server::start(archive(&[(
        "etc/issue",
        entry(EntryKind::File(b"s\n".to_vec()), 0o644),
    )]));
    let node = Node::new(&format!("head = {}\nsecure = true\n", srv.url()));
    let out = node.once();
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = srv.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].peer_port < 1024, "source port {}", seen[0].peer_port);
    // Without secure mode the kernel picks an ephemeral port.
    let node = Node::new(&format!("head = {}\n", srv.url()));
    assert!(node.once().status.success());
    assert!(srv.seen()[1].peer_port >= 1024);
}

/// Polls `f` every 20 ms for up to `secs`.
fn wait_for(secs: u64, what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out after {secs}s waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn wwclient_daemon_fetches_at_once_on_sighup() {
    let srv = Server::start(archive(&[("etc/v", entry(EntryKind::File(b"1".to_vec()), 0o644))]));
    let node = Node::new(&format!("head = {}\ninterval = 1h\n", srv.url()));
    let mut child = node.cmd(false).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(15, "the first fetch", || srv.seen().len() == 1);
        let v = node.root().join("etc/v");
        wait_for(15, "the first apply", || std::fs::read(&v).is_ok_and(|b| b == b"1"));
        *srv.body.lock().unwrap() = archive(&[("etc/v", entry(EntryKind::File(b"2".to_vec()), 0o644))]);
        let p = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::kill_process(p, rustix::process::Signal::HUP).unwrap();
        wait_for(15, "a fetch after SIGHUP", || srv.seen().len() == 2);
        wait_for(15, "the new contents", || std::fs::read(&v).is_ok_and(|b| b == b"2"));
        assert!(child.try_wait().unwrap().is_none(), "still running after SIGHUP");
    }));
    // By PID, whatever happened above.
    let _ = child.kill();
    let _ = child.wait();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
