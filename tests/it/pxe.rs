//! A real PXE boot through wulfpack's own DHCP, TFTP-free direct-iPXE path and HTTP
//! boot: a `wulfd` process and a QEMU VM share a bridge inside a network namespace
//! this test creates (nothing leaves it). Debian's e1000 iPXE ROM asks our DHCP,
//! gets its configured address and the URL of its iPXE script, loads the kernel and
//! the image from `wulfd`, and `/init` prints a marker on the serial console;
//! `wwctl node status` then shows the stages the node passed.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use crate::registry::{ensure_packages, is_root};

const WULFD: &str = env!("CARGO_BIN_EXE_wulfd");
const WWCTL: &str = env!("CARGO_BIN_EXE_wwctl");
const MAC: &str = "52:54:00:12:34:57";

fn wwctl(ns: &NetNs, args: &[&str]) -> (bool, String) {
    let out = ns
        .command(WWCTL)
        .args(["--heads", "127.0.0.1:9701", "--timeout", "5"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Root, QEMU with Debian's iPXE ROMs, a Debian kernel and busybox: the kernel's path,
/// or None after printing why the test is skipped.
pub fn qemu_boot_prerequisites(test: &str) -> Option<std::path::PathBuf> {
    if !is_root() {
        eprintln!("SKIP: {test} needs root (packages, network namespaces, tap devices)");
        return None;
    }
    let pkgs = [
        "qemu-system-x86",
        "ipxe-qemu",
        "linux-image-amd64",
        "busybox-static",
        "cpio",
        "iproute2",
    ];
    if !ensure_packages(&pkgs) {
        return None;
    }
    let kernel = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        });
    if kernel.is_none() {
        eprintln!("SKIP: no /boot/vmlinuz-* after installing linux-image-amd64");
    }
    kernel
}

#[test]
fn qemu_pxe_boots_through_wulfds_dhcp_and_http() {
    let Some(vmlinuz) = qemu_boot_prerequisites("the PXE boot test") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();

    // The image: busybox, an /init that prints a marker, and the Debian kernel.
    let tree = work.path().join("tree");
    for d in ["bin", "dev", "proc", "boot"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    std::fs::copy(&vmlinuz, tree.join("boot").join(vmlinuz.file_name().unwrap())).unwrap();
    let init = tree.join("init");
    std::fs::write(
        &init,
        "#!/bin/busybox sh\n/bin/busybox mount -t devtmpfs dev /dev\n\
         echo WULFPACK-PXE-OK > /dev/ttyS0\n/bin/busybox poweroff -f\n",
    )
    .unwrap();
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    // A rack: bridge + tap in a namespace; wulfd serves DHCP on the bridge only.
    let ns = NetNs::new("pxe");
    ns.ok(
        "ip link add br0 type bridge && ip addr add 10.99.0.1/24 dev br0 && ip link set br0 up && \
         ip tuntap add tap0 mode tap && ip link set tap0 master br0 && ip link set tap0 up",
    );
    let cfg = work.path().join("wulfd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "id: 1\ndata_dir: {}\nlisten: 127.0.0.1:9701\nhttp_listen: 10.99.0.1:9873\ncluster_name: pxe\n\
             bootstrap:\n  - {{id: 1, addr: 127.0.0.1:9701}}\n\
             boot:\n  dhcp:\n    interfaces: [{{name: br0, subnets: [rack]}}]\n    http_port: 9873\n\
             \x20   subnets:\n      rack: {{network: 10.99.0.0/24, server: 10.99.0.1}}\n",
            work.path().join("data").display()
        ),
    )
    .unwrap();
    let log = work.path().join("wulfd.log");
    let wulfd = ns.spawn(&[WULFD, "--config", cfg.to_str().unwrap()], Some(&log));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !wwctl(&ns, &["profile", "list"]).1.contains("default") {
        assert!(
            Instant::now() < deadline,
            "wulfd did not come up: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, out) = wwctl(&ns, &["image", "import", tree.to_str().unwrap(), "pxeimg"]);
    assert!(ok, "{out}");
    let (ok, out) = wwctl(
        &ns,
        &[
            "node",
            "add",
            "pxe1",
            "--image",
            "pxeimg",
            "--hwaddr",
            MAC,
            "--ipaddr",
            "10.99.0.50",
            "--netmask",
            "255.255.255.0",
            "-A",
            "console=ttyS0",
        ],
    );
    assert!(ok, "{out}");

    // Boot it (software emulation; bounded).
    let mut qemu = ns
        .command("qemu-system-x86_64")
        .args(["-machine", "q35", "-m", "512", "-nographic", "-no-reboot", "-boot", "n"])
        .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
        .args(["-device", &format!("e1000,netdev=n0,mac={MAC}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu");
    let stdout = qemu.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut seen = Vec::new();
    let booted = loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) if l.contains("WULFPACK-PXE-OK") => break true,
            Ok(l) => seen.push(l),
            Err(_) if Instant::now() > deadline => break false,
            Err(_) => {}
        }
    };
    let _ = qemu.kill();
    let _ = qemu.wait();
    let (_, status) = wwctl(&ns, &["node", "status"]);
    ns.kill(wulfd);
    assert!(
        booted,
        "no marker on the console; last lines:\n{}\nwulfd log:\n{}",
        seen.iter().rev().take(30).rev().cloned().collect::<Vec<_>>().join("\n"),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The VM got its configured address from our DHCP (iPXE prints it).
    assert!(seen.iter().any(|l| l.contains("10.99.0.50")), "{}", seen.join("\n"));
    // Status keeps each node's latest event: after the image the script asks for the
    // overlays (not built yet, so NOT_FOUND), so the node is at IMAGE or later.
    let row = status
        .lines()
        .find(|l| l.starts_with("pxe1"))
        .unwrap_or_else(|| panic!("{status}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert!(
        ["IMAGE", "SYSTEM_OVERLAY", "RUNTIME_OVERLAY"].contains(&cols[1]),
        "node reached the image stage: {status}"
    );
    assert_eq!(cols[3], "10.99.0.50", "{status}");
}
