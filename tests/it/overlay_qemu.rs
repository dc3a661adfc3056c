//! A node boots into a working cluster node: a QEMU VM PXE-boots from a `wulfd` in a
//! network namespace, gets the `wwinit`, `wwclient` and `hostname` system overlays and a
//! runtime overlay; `/init` from the system overlay runs the init scripts (which start
//! `wwclient`) and hands over to the image's init; `wwclient` fetches the runtime
//! overlay from a privileged port; then the runtime overlay changes on the head and the
//! new content appears on the VM within the update interval, read on the serial console.
//!
//! The image is busybox, the Debian kernel and its e1000 module, and — because this
//! test uses the debug `wwclient` (stripped), not the static node build — the few
//! shared libraries it links. The image's own init brings the NIC up with DHCP (from
//! `wulfd`, which gives the node its configured address) and prints what the node has.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use crate::pxe::wwctl;
use crate::qemu_node::{image, qemu_boot_prerequisites};

const WULFD: &str = env!("CARGO_BIN_EXE_wulfd");
const WWCLIENT: &str = env!("CARGO_BIN_EXE_wwclient");
const MAC: &str = "52:54:00:12:34:58";

/// Kills the VM and `wulfd` on every way out of the test.
struct Guard<'a> {
    vm: Option<std::process::Child>,
    ns: &'a NetNs,
    wulfd: u32,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if let Some(mut vm) = self.vm.take() {
            let _ = vm.kill();
            let _ = vm.wait();
        }
        self.ns.kill(self.wulfd);
    }
}

#[test]
fn a_node_boots_with_wwinit_and_wwclient_picks_up_runtime_overlay_changes() {
    let Some(vmlinuz) = qemu_boot_prerequisites("the wwinit + wwclient boot test") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    image(&tree, &vmlinuz);
    let agent = work.path().join("wwclient");
    let out = std::process::Command::new("strip")
        .arg("-o")
        .arg(&agent)
        .arg(WWCLIENT)
        .output()
        .unwrap();
    assert!(out.status.success(), "strip: {}", String::from_utf8_lossy(&out.stderr));
    // The update interval templates (and so wwclient.conf) read, from warewulf.conf.
    let wwconf = work.path().join("warewulf.conf");
    std::fs::write(&wwconf, "warewulf:\n  update interval: 3\n").unwrap();

    let ns = NetNs::new("ovq");
    ns.ok(
        "ip link add br0 type bridge && ip addr add 10.99.0.1/24 dev br0 && ip link set br0 up && \
         ip tuntap add tap0 mode tap && ip link set tap0 master br0 && ip link set tap0 up",
    );
    let cfg = work.path().join("wulfd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "id: 1\ndata_dir: {}\nlisten: 127.0.0.1:9701\nhttp_listen: 10.99.0.1:9873\ncluster_name: ovq\ninsecure: true\n\
             bootstrap:\n  - {{id: 1, addr: 127.0.0.1:9701}}\n\
             boot:\n  dhcp:\n    interfaces: [{{name: br0, subnets: [rack]}}]\n    http_port: 9873\n\
             \x20   subnets:\n      rack: {{network: 10.99.0.0/24, server: 10.99.0.1}}\n\
             \x20 overlays:\n    warewulf_conf: {}\n    wwclient: {}\n",
            work.path().join("data").display(),
            wwconf.display(),
            agent.display()
        ),
    )
    .unwrap();
    let log = work.path().join("wulfd.log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let wulfd = ns.spawn(&[WULFD, "--config", cfg.to_str().unwrap()], Some(&log));
    let mut guard = Guard {
        vm: None,
        ns: &ns,
        wulfd,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !wwctl(&ns, &["overlay", "list"]).1.contains("wwclient") {
        assert!(Instant::now() < deadline, "wulfd did not come up: {}", read_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, out) = wwctl(&ns, &["image", "import", tree.to_str().unwrap(), "busy"]);
    assert!(ok, "{out}");
    let motd = work.path().join("motd.ww");
    std::fs::write(&motd, "motd v1 for {{ Id }}\n").unwrap();
    for args in [
        vec!["overlay", "create", "rt"],
        vec!["overlay", "import", "-p", "rt", motd.to_str().unwrap(), "/etc/motd.ww"],
        vec![
            "node",
            "add",
            "qnode",
            "--image",
            "busy",
            "--hwaddr",
            MAC,
            "--ipaddr",
            "10.99.0.51",
            "--netmask",
            "255.255.255.0",
            "-A",
            "console=ttyS0",
            "--system-overlays",
            "wwinit,wwclient,hostname",
            "--runtime-overlays",
            "rt",
        ],
    ] {
        let (ok, out) = wwctl(&ns, &args);
        assert!(ok, "{args:?}: {out}");
    }

    let mut qemu = ns.command("qemu-system-x86_64");
    qemu.args(["-machine", "q35", "-m", "768", "-nographic", "-no-reboot"])
        .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
        .args(["-boot", "n", "-device", &format!("e1000,netdev=n0,mac={MAC}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = qemu.spawn().expect("start qemu");
    let stdout = child.stdout.take().unwrap();
    guard.vm = Some(child);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line).replace('\r', "\n");
            for l in line.split('\n') {
                if tx.send(l.to_owned()).is_err() {
                    return;
                }
            }
        }
    });
    let mut console: Vec<String> = Vec::new();
    let wait_for = |what: &str, secs: u64, console: &mut Vec<String>| -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_secs(1)) {
                let hit = l.contains(what);
                console.push(l);
                if hit {
                    return true;
                }
            }
        }
        false
    };
    let explain = |console: &[String]| {
        format!(
            "console:\n{}\nwulfd log (end):\n{}",
            console
                .iter()
                .rev()
                .take(60)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
            read_log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
    };

    // /init from the wwinit overlay ran, with the node's name from the system overlay.
    assert!(
        wait_for("NODE-HOSTNAME: qnode", 300, &mut console),
        "{}",
        explain(&console)
    );
    assert!(
        console.iter().any(|l| l.contains("wwinit: node qnode")),
        "{}",
        explain(&console)
    );
    assert!(
        wait_for("NODE-IP: 10.99.0.51", 60, &mut console),
        "{}",
        explain(&console)
    );
    // wwclient fetched the runtime overlay (the VM prints /etc/motd when it changes).
    assert!(
        wait_for("NODE-MOTD: motd v1 for qnode", 60, &mut console),
        "{}",
        explain(&console)
    );
    let (_, status) = wwctl(&ns, &["node", "status", "qnode"]);
    let row: Vec<&str> = status
        .lines()
        .find(|l| l.starts_with("qnode"))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row.get(1).copied(), Some("RUNTIME_OVERLAY"), "{status}");
    assert_eq!(
        row.get(2).copied(),
        Some("runtime"),
        "sent the runtime overlay: {status}"
    );

    // Change the runtime overlay on the head: the VM has it within the interval (3 s)
    // plus the view's publication; no reboot.
    std::fs::write(&motd, "motd v2 for {{ Id }}\n").unwrap();
    let changed = std::time::Instant::now();
    let (ok, out) = wwctl(
        &ns,
        &[
            "overlay",
            "import",
            "--overwrite",
            "rt",
            motd.to_str().unwrap(),
            "/etc/motd.ww",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        wait_for("NODE-MOTD: motd v2 for qnode", 30, &mut console),
        "{}",
        explain(&console)
    );
    eprintln!(
        "runtime overlay change reached the VM in {:.1} s",
        changed.elapsed().as_secs_f64()
    );
    drop(guard);
}
