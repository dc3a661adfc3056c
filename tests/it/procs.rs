//! The real binaries: three `wulfd` processes on loopback, `wwctl` against each,
//! SIGKILL of the leader and later of every head; no acknowledged write is lost.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WULFD: &str = env!("CARGO_BIN_EXE_wulfd");
const WWCTL: &str = env!("CARGO_BIN_EXE_wwctl");

struct Procs {
    dir: tempfile::TempDir,
    addrs: Vec<String>,
    children: Vec<Option<Child>>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        // Stop what this test started, by PID.
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

impl Procs {
    fn start() -> Procs {
        let dir = tempfile::tempdir().unwrap();
        let addrs = free_ports(3);
        let mut p = Procs {
            dir,
            addrs,
            children: vec![None, None, None],
        };
        for i in 0..3 {
            let boot: String = p
                .addrs
                .iter()
                .enumerate()
                .map(|(j, a)| format!("  - {{id: {}, addr: \"{a}\"}}\n", j + 1))
                .collect();
            std::fs::write(
                p.cfg(i),
                format!(
                    "id: {}\ndata_dir: {}\nlisten: \"{}\"\ncluster_name: procs\nbootstrap:\n{boot}",
                    i + 1,
                    p.dir.path().join(format!("data{i}")).display(),
                    p.addrs[i]
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

    fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("wulfd{i}.log")))
            .unwrap();
        let child = Command::new(WULFD)
            .arg("--config")
            .arg(self.cfg(i))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[i] = Some(child);
    }

    /// SIGKILL head `i`.
    fn kill(&mut self, i: usize) {
        let mut c = self.children[i].take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    fn all_heads(&self) -> String {
        self.addrs.join(",")
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("wulfd{i}.log"))).unwrap_or_default()
    }
}

/// Run wwctl; returns (success, stdout, stderr).
fn wwctl(heads: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(WWCTL)
        .arg("--heads")
        .arg(heads)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn ok(heads: &str, args: &[&str]) -> String {
    let (success, out, err) = wwctl(heads, args);
    assert!(success, "wwctl {args:?} via {heads} failed: {err}");
    out
}

fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status_json(heads: &str) -> serde_json::Value {
    serde_json::from_str(&ok(heads, &["cluster", "status", "-o", "json"])).unwrap()
}

fn leader_index(p: &Procs) -> usize {
    let mut found = None;
    wait_until(15, "a leader", || {
        let (success, out, _) = wwctl(&p.all_heads(), &["cluster", "status", "-o", "json"]);
        if !success {
            return false;
        }
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
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

fn node_names(list_output: &str) -> Vec<String> {
    list_output
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

#[test]
fn three_wulfd_processes_survive_sigkill_of_leader_and_of_all() {
    let mut p = Procs::start();
    let all = p.all_heads();
    wait_until(30, "cluster ready", || {
        wwctl(&all, &["--timeout", "2", "profile", "list"]).0
    });

    // wwctl against each head alone.
    let mut written = Vec::new();
    for i in 0..3 {
        let name = format!("via{i}");
        ok(
            &p.addrs[i],
            &["node", "add", &name, "--ipaddr", &format!("10.2.0.{}", i + 1)],
        );
        written.push(name);
    }
    for i in 0..3 {
        let names = node_names(&ok(&p.addrs[i], &["node", "list"]));
        assert_eq!(names, written, "head {i} lists every node");
    }

    // SIGKILL the leader; wwctl with the head list keeps working.
    let leader = leader_index(&p);
    p.kill(leader);
    for j in 0..10 {
        let name = format!("after-kill-{j:02}");
        ok(
            &all,
            &["node", "add", &name, "--comment", "written while a head was dead"],
        );
        written.push(name);
    }
    let survivor = (leader + 1) % 3;
    ok(
        &p.addrs[survivor],
        &["node", "set", "via0", "--comment", "changed", "-y"],
    );
    let st = status_json(&p.addrs[survivor]);
    let dead = &st["heads"][leader];
    assert_eq!(dead["reachable"], false, "{st}");

    // Restart it: it catches up.
    p.spawn(leader);
    let addr = p.addrs[leader].clone();
    wait_until(30, "restarted head caught up", || {
        let (success, out, _) = wwctl(&all, &["cluster", "status", "-o", "json"]);
        if !success {
            return false;
        }
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let heads = v["heads"].as_array().unwrap();
        let applied: Vec<_> = heads.iter().map(|h| h["applied"].as_u64().unwrap()).collect();
        heads.iter().all(|h| h["reachable"] == true) && applied.iter().all(|a| *a == applied[0])
    });
    let mut want = written.clone();
    want.sort();
    assert_eq!(node_names(&ok(&addr, &["node", "list"])), want);

    // SIGKILL every head at once, restart all: every acknowledged write is there.
    for i in 0..3 {
        p.kill(i);
    }
    for i in 0..3 {
        p.spawn(i);
    }
    wait_until(30, "cluster back after total kill", || {
        wwctl(&all, &["--timeout", "2", "node", "list"]).0
    });
    let listed = ok(&all, &["node", "list"]);
    assert_eq!(node_names(&listed), want, "logs:\n{}", p.log(0));
    let comment = ok(&all, &["node", "list", "-a", "via0"]);
    assert!(comment.contains("changed"), "{comment}");
}
