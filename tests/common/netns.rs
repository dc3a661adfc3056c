//! Network namespaces for protocol tests with real clients (shared/LAB.md rules).
//!
//! Servers under test (DHCP, TFTP, ...) must only ever see links this fixture created:
//! each [`NetNs`] is a fresh namespace named after the test and the process id, its
//! links are veth pairs created *inside* it (so no interface ever appears in the host
//! namespace), and dropping it kills what it spawned (by PID) and deletes the namespace
//! with its links. In-process servers enter a namespace on their own thread
//! ([`NetNs::enter`]): sockets keep the namespace they were created in, so a tokio
//! runtime started there serves only the namespace's links.
//!
//! Tests call [`skip_reason`] first and print the reason and return when they cannot
//! run (not root, tools missing and not installable).

#![allow(dead_code)]

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Why the namespace tests cannot run here, or `None`. Missing tools are installed with
/// apt-get (services prevented from starting by `policy-rc.d`) when running as root.
/// `tools` pairs a binary with the Debian package that ships it.
pub fn skip_reason(tools: &[(&str, &str)]) -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root: network namespaces need root".into());
    }
    let have = |t: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t} >/dev/null 2>&1 || test -x /usr/sbin/{t}"))
            .status()
            .is_ok_and(|s| s.success())
    };
    let missing: Vec<&str> = tools.iter().filter(|(t, _)| !have(t)).map(|(_, p)| *p).collect();
    if missing.is_empty() {
        return None;
    }
    let _ = std::fs::write("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n");
    let _ = Command::new("chmod").args(["+x", "/usr/sbin/policy-rc.d"]).status();
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {}) >/dev/null 2>&1",
            missing.join(" ")
        ))
        .status()
        .is_ok_and(|s| s.success());
    let still: Vec<&str> = tools.iter().filter(|(t, _)| !have(t)).map(|(t, _)| *t).collect();
    if ok && still.is_empty() {
        None
    } else {
        Some(format!(
            "cannot install {} (apt-get install -y {}); missing {}",
            missing.join(" "),
            missing.join(" "),
            still.join(" ")
        ))
    }
}

/// A network namespace that deletes itself (and kills its spawned processes) on drop.
pub struct NetNs {
    pub name: String,
    children: std::sync::Mutex<Vec<Child>>,
}

impl NetNs {
    /// Create `wpt-<tag>-<pid>-<n>` with loopback up.
    pub fn new(tag: &str) -> NetNs {
        let name = format!(
            "wpt-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs {
            name,
            children: Default::default(),
        };
        ns.ok("ip link set lo up");
        ns
    }

    /// `ip netns exec <ns> <prog>`.
    pub fn command(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }

    /// Run a shell script inside (bounded to 120 s).
    pub fn sh(&self, script: &str) -> Output {
        let mut c = self.command("timeout");
        c.args(["120", "sh", "-c", script]);
        c.output().expect("ip netns exec")
    }

    /// Run a shell script inside; panic with its output if it fails. Returns stdout.
    pub fn ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert!(
            o.status.success(),
            "in {}: `{script}` failed: {}{}",
            self.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Spawn a process inside, as the leader of its own process group; the group is
    /// killed when the namespace is dropped (so wrappers such as `timeout` that fork
    /// cannot leave their child behind). Output goes to `log` when given.
    pub fn spawn(&self, argv: &[&str], log: Option<&Path>) -> u32 {
        let mut c = self.command(argv[0]);
        c.args(&argv[1..]).stdin(Stdio::null()).process_group(0);
        if let Some(p) = log {
            let f = std::fs::File::create(p).expect("log file");
            c.stdout(f.try_clone().unwrap()).stderr(f);
        } else {
            c.stdout(Stdio::null()).stderr(Stdio::null());
        }
        let child = c.spawn().expect("spawn in namespace");
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// Kill one spawned process and its process group (by its PID) and reap it.
    pub fn kill(&self, pid: u32) {
        let mut cs = self.children.lock().unwrap();
        if let Some(i) = cs.iter().position(|c| c.id() == pid) {
            kill_group(cs.remove(i));
        }
    }

    /// Wait up to `timeout` for a spawned process to exit (polling); its exit status, or
    /// None if it is still running (or was not spawned here).
    pub fn wait(&self, pid: u32, timeout: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        loop {
            {
                let mut cs = self.children.lock().unwrap();
                let c = cs.iter_mut().find(|c| c.id() == pid)?;
                if let Ok(Some(st)) = c.try_wait() {
                    return Some(st);
                }
            }
            if t.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Run `f` on a new thread that has entered this namespace: sockets it creates live
    /// here. The namespace must outlive the thread's sockets (join before dropping).
    pub fn enter<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> std::thread::JoinHandle<R> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        std::thread::spawn(move || {
            rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
                .expect("setns into the test namespace");
            drop(file);
            f()
        })
    }

    /// A veth pair: `ifname` here with `cidr`, `peer_if` in `peer` with `peer_cidr`, both
    /// up. Created inside this namespace, so the host never sees it.
    pub fn veth(&self, ifname: &str, cidr: Option<&str>, peer: &NetNs, peer_if: &str, peer_cidr: Option<&str>) {
        self.ok(&format!(
            "ip link add {ifname} type veth peer name {peer_if} netns {}",
            peer.name
        ));
        self.ok(&format!("ip link set {ifname} up"));
        peer.ok(&format!("ip link set {peer_if} up"));
        if let Some(c) = cidr {
            self.ok(&format!("ip addr add {c} dev {ifname}"));
        }
        if let Some(c) = peer_cidr {
            peer.ok(&format!("ip addr add {c} dev {peer_if}"));
        }
    }

    /// The MAC address of `ifname` (lowercase, colons).
    pub fn mac(&self, ifname: &str) -> String {
        self.ok(&format!("cat /sys/class/net/{ifname}/address"))
            .trim()
            .to_owned()
    }

    /// Poll a shell condition inside until it succeeds or `timeout` passes.
    pub fn wait_for(&self, script: &str, timeout: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.sh(script).status.success() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for c in self.children.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            kill_group(c);
        }
        // Deleting the namespace deletes the veth ends inside it (and their peers).
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}

/// SIGKILL the process group a spawned child leads (its PID is the group id), then reap.
fn kill_group(mut c: Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = c.kill();
    let _ = c.wait();
}

fn run(c: &mut Command) {
    let o = c.output().expect("run ip");
    assert!(
        o.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
