//! A cluster of real `wulfd` processes on loopback, shared by the integration
//! tests and the benchmark harness. Processes are stopped by PID on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ProcCluster {
    pub dir: tempfile::TempDir,
    /// gRPC address of each head.
    pub addrs: Vec<String>,
    /// HTTP address of each head.
    pub http: Vec<String>,
    wulfd: PathBuf,
    children: Vec<Option<Child>>,
    /// Extra environment of each head's process (from its next start).
    env: Vec<Vec<(String, String)>>,
    /// `insecure: true` (plaintext), or the mutual TLS of docs/OPERATIONS.md.
    tls: bool,
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `n` free ports *below* Linux's ephemeral range (32768–60999). A killed head's
/// port must stay dead: a port handed out by `bind(0)` goes back to the ephemeral
/// pool and another test (or process) asking for any port may get it while the head
/// is down — its peers would then talk to a stranger instead of being refused.
pub fn free_ports(n: usize) -> Vec<String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    const LOW: u64 = 20_000;
    const SPAN: u64 = 12_000;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64)
        ^ (u64::from(std::process::id()) << 7);
    let mut held = Vec::new();
    for _ in 0..SPAN {
        if held.len() == n {
            break;
        }
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + (seed.wrapping_add(k.wrapping_mul(7919))) % SPAN;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            held.push(l);
        }
    }
    assert_eq!(held.len(), n, "no {n} free ports in {LOW}..{}", LOW + SPAN);
    held.iter().map(|l| l.local_addr().unwrap().to_string()).collect()
}

impl ProcCluster {
    /// Start `n` founding heads; `extra_yaml` is appended to each head's config.
    pub fn start(wulfd: &Path, n: usize, extra_yaml: &str) -> ProcCluster {
        ProcCluster::start_with(wulfd, n, extra_yaml, false)
    }

    /// Like [`ProcCluster::start`], with mutual TLS as docs/OPERATIONS.md sets it up:
    /// `wwctl cluster pki init` (the `wwctl` beside `wulfd`), `head-<id>/` copied to each
    /// head's `tls.dir` (the default, `<data_dir>/pki`).
    #[allow(dead_code)]
    pub fn start_tls(wulfd: &Path, n: usize, extra_yaml: &str) -> ProcCluster {
        ProcCluster::start_with(wulfd, n, extra_yaml, true)
    }

    fn start_with(wulfd: &Path, n: usize, extra_yaml: &str, tls: bool) -> ProcCluster {
        let dir = tempfile::tempdir().unwrap();
        if tls {
            let ids: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
            let o = Command::new(wulfd.with_file_name("wwctl"))
                .args(["cluster", "pki", "init", "--ids", &ids.join(","), "--out"])
                .arg(dir.path().join("pki"))
                .output()
                .unwrap();
            assert!(o.status.success(), "pki init: {}", String::from_utf8_lossy(&o.stderr));
            for i in 0..n {
                let data = dir.path().join(format!("data{i}"));
                std::fs::create_dir_all(&data).unwrap();
                let o = Command::new("cp")
                    .arg("-a")
                    .arg(dir.path().join(format!("pki/head-{}", i + 1)))
                    .arg(data.join("pki"))
                    .output()
                    .unwrap();
                assert!(o.status.success());
            }
        }
        let mut ports = free_ports(2 * n);
        let http = ports.split_off(n);
        let mut p = ProcCluster {
            dir,
            addrs: ports,
            http,
            wulfd: wulfd.into(),
            children: (0..n).map(|_| None).collect(),
            env: vec![Vec::new(); n],
            tls,
        };
        let insecure = if tls { "" } else { "insecure: true\n" };
        let boot: String = p
            .addrs
            .iter()
            .enumerate()
            .map(|(j, a)| format!("  - {{id: {}, addr: \"{a}\"}}\n", j + 1))
            .collect();
        for i in 0..n {
            std::fs::write(
                p.cfg(i),
                format!(
                    "id: {}\ndata_dir: {}\nlisten: \"{}\"\nhttp_listen: \"{}\"\ncluster_name: procs\n{insecure}bootstrap:\n{boot}{extra_yaml}",
                    i + 1,
                    p.dir.path().join(format!("data{i}")).display(),
                    p.addrs[i],
                    p.http[i]
                ),
            )
            .unwrap();
            p.spawn(i);
        }
        p
    }

    /// Start one more head, with an empty `bootstrap` (to be joined with `wwctl cluster
    /// join`), id = number of heads + 1; `extra_yaml` is appended to its config.
    /// Returns its index.
    #[allow(dead_code)] // used by the membership test, not by the benchmarks
    pub fn start_empty(&mut self, extra_yaml: &str) -> usize {
        let i = self.addrs.len();
        let mut ports = free_ports(2);
        self.http.push(ports.pop().unwrap());
        self.addrs.push(ports.pop().unwrap());
        self.children.push(None);
        self.env.push(Vec::new());
        let insecure = if self.tls { "" } else { "insecure: true\n" };
        std::fs::write(
            self.cfg(i),
            format!(
                "id: {}\ndata_dir: {}\nlisten: \"{}\"\nhttp_listen: \"{}\"\ncluster_name: procs\n{insecure}{extra_yaml}",
                i + 1,
                self.dir.path().join(format!("data{i}")).display(),
                self.addrs[i],
                self.http[i]
            ),
        )
        .unwrap();
        self.spawn(i);
        i
    }

    fn cfg(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("wulfd{i}.yaml"))
    }

    /// (Re)start head `i` with its config and data.
    pub fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("wulfd{i}.log")))
            .unwrap();
        let child = Command::new(&self.wulfd)
            .arg("--config")
            .arg(self.cfg(i))
            .envs(self.env[i].iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[i] = Some(child);
    }

    /// Set `key=value` in head `i`'s environment from its next start.
    #[allow(dead_code)] // used by the tests, not by the benchmarks
    pub fn set_env(&mut self, i: usize, key: &str, value: &str) {
        self.env[i].push((key.into(), value.into()));
    }

    /// Wait up to `secs` for head `i` to exit on its own; its exit status, or `None`.
    #[allow(dead_code)]
    pub fn wait_exit(&mut self, i: usize, secs: u64) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(secs) {
            if let Some(st) = self.children[i].as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.children[i] = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// SIGKILL head `i` and reap it.
    #[allow(dead_code)] // not every benchmark that shares this file kills heads
    pub fn kill(&mut self, i: usize) {
        let mut c = self.children[i].take().expect("head running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGSTOP (`hung: true`) or SIGCONT head `i`: a head that hangs instead of dying
    /// keeps its sockets open and answers nothing.
    #[allow(dead_code)] // used by the tests, not by the benchmark that shares this file
    pub fn hang(&self, i: usize, hung: bool) {
        let c = self.children[i].as_ref().expect("head running");
        let pid = rustix::process::Pid::from_raw(c.id() as i32).expect("a child's pid is positive");
        let sig = if hung {
            rustix::process::Signal::STOP
        } else {
            rustix::process::Signal::CONT
        };
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// Process id of head `i`, if it runs.
    #[allow(dead_code)] // used by the restart benchmark
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(Child::id)
    }

    /// `wwctl` arguments that authenticate as head 1 (a head's certificate is also an
    /// admin's) when the cluster runs TLS; none when plaintext.
    #[allow(dead_code)] // used by the benchmarks that run both
    pub fn cert_args(&self) -> Vec<String> {
        if !self.tls {
            return Vec::new();
        }
        let cert = self.dir.path().join("data0/pki/head.crt");
        vec!["--cert".into(), cert.display().to_string()]
    }

    /// How this process dials the heads: as head 1 under TLS, else plaintext.
    #[allow(dead_code)] // used by the benchmarks that run both
    pub fn dialer(&self) -> wulfpack::pki::tls::Dialer {
        if !self.tls {
            return wulfpack::pki::tls::Dialer::plain();
        }
        let pki = self.dir.path().join("data0/pki");
        let read = |f: &str| std::fs::read_to_string(pki.join(f)).unwrap();
        let config = wulfpack::pki::tls::client_config(&read("ca.crt"), Some((&read("head.crt"), &read("head.key"))));
        wulfpack::pki::tls::Dialer::tls(config.unwrap())
    }

    pub fn all_heads(&self) -> String {
        self.addrs.join(",")
    }

    /// The head list with head `first` first (then the others in order).
    #[allow(dead_code)] // used by the tests, not by every benchmark that shares this file
    pub fn heads_from(&self, first: usize) -> String {
        let n = self.addrs.len();
        (0..n)
            .map(|j| self.addrs[(first + j) % n].clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Index of the leading head, as `wwctl cluster status` reports it; waits up to 20 s.
    #[allow(dead_code)] // used by the tests, not by every benchmark that shares this file
    pub fn leader(&self, wwctl: &Path) -> usize {
        let mut found = None;
        wait_until(20, "a leader", || {
            let out = Command::new(wwctl)
                .args([
                    "--heads",
                    &self.all_heads(),
                    "--timeout",
                    "2",
                    "cluster",
                    "status",
                    "-o",
                    "json",
                ])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .unwrap();
            if !out.status.success() {
                return false;
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            found = v["heads"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["role"] == "Leader")
                .map(|h| h["id"].as_u64().unwrap() as usize - 1);
            found.is_some()
        });
        found.unwrap()
    }

    #[allow(dead_code)] // used by the tests, not by the benchmark that shares this file
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("wulfd{i}.log"))).unwrap_or_default()
    }
}

/// One `wwctl` run as an operator sees it.
#[allow(dead_code)] // not every user reads every field
pub struct WwctlRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

#[allow(dead_code)] // not every benchmark that shares this file runs wwctl through it
impl WwctlRun {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

/// Run `wwctl --heads HEADS ARGS…` (no stdin) and wait for it.
#[allow(dead_code)] // not every benchmark that shares this file runs wwctl through it
pub fn run_wwctl(wwctl: &Path, heads: &str, args: &[&str]) -> WwctlRun {
    let t = Instant::now();
    let out = Command::new(wwctl)
        .arg("--heads")
        .arg(heads)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    WwctlRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
        took: t.elapsed(),
    }
}

/// Poll `f` every 100 ms until true; panic after `secs`.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
