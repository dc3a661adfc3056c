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
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_ports(n: usize) -> Vec<String> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().to_string()).collect()
}

impl ProcCluster {
    /// Start `n` founding heads; `extra_yaml` is appended to each head's config.
    pub fn start(wulfd: &Path, n: usize, extra_yaml: &str) -> ProcCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut ports = free_ports(2 * n);
        let http = ports.split_off(n);
        let mut p = ProcCluster {
            dir,
            addrs: ports,
            http,
            wulfd: wulfd.into(),
            children: (0..n).map(|_| None).collect(),
        };
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
                    "id: {}\ndata_dir: {}\nlisten: \"{}\"\nhttp_listen: \"{}\"\ncluster_name: procs\nbootstrap:\n{boot}{extra_yaml}",
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
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[i] = Some(child);
    }

    /// SIGKILL head `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        let mut c = self.children[i].take().expect("head running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// Process id of head `i`, if it runs.
    #[allow(dead_code)] // used by the restart benchmark
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(Child::id)
    }

    pub fn all_heads(&self) -> String {
        self.addrs.join(",")
    }

    #[allow(dead_code)] // used by the tests, not by the benchmark that shares this file
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("wulfd{i}.log"))).unwrap_or_default()
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
