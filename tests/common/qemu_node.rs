//! QEMU nodes for the boot tests and benchmarks: the prerequisites (root, QEMU, Debian's
//! iPXE ROMs, a kernel, busybox), the test image (busybox, the kernel, e1000, an init that
//! reports on the serial console), and a VM on a tap whose console is read line by line
//! with the time each line arrived. Shared by `tests/it/{pxe,overlay_qemu,rack_qemu}.rs`
//! and `benches/rack_boot.rs`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use crate::registry::{ensure_packages, is_root};

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
        "ipxe",
        "ovmf",
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

/// Drops ANSI escape sequences (`ESC [ ... letter`) from a console line.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn copy_exec(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap();
}

/// busybox + the applets the scripts call, the kernel and e1000, wwclient's libraries,
/// and an init that brings the network up and reports on the console (also used by
/// `rack_qemu` and `benches/rack_boot.rs`).
pub fn image(tree: &Path, vmlinuz: &Path) {
    for d in [
        "bin",
        "sbin",
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "var/log",
        "etc",
        "boot",
        "usr/share/udhcpc",
    ] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    copy_exec(Path::new("/bin/busybox"), &tree.join("bin/busybox"));
    for applet in [
        "sh",
        "mount",
        "mountpoint",
        "mkdir",
        "cat",
        "echo",
        "sleep",
        "ip",
        "udhcpc",
        "insmod",
        "hostname",
        "cp",
        "switch_root",
        "ls",
        "test",
        "chmod",
        "chown",
        "ln",
        "rm",
        "sed",
        "grep",
        "poweroff",
        "true",
    ] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet)).unwrap();
    }
    // Debian's static busybox has no `nohup`, which the wwclient start script uses.
    std::fs::write(tree.join("bin/nohup"), "#!/bin/sh\nexec \"$@\"\n").unwrap();
    std::fs::set_permissions(
        tree.join("bin/nohup"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    copy_exec(vmlinuz, &tree.join("boot").join(vmlinuz.file_name().unwrap()));
    let release = vmlinuz
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    copy_exec(
        &Path::new("/lib/modules")
            .join(&release)
            .join("kernel/drivers/net/ethernet/intel/e1000/e1000.ko"),
        &tree.join("e1000.ko"),
    );
    for lib in [
        "/lib/x86_64-linux-gnu/libgcc_s.so.1",
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ] {
        // Where Debian's loader looks (multiarch) and where a plain one does.
        copy_exec(Path::new(lib), &tree.join(lib.trim_start_matches('/')));
        let name = Path::new(lib).file_name().unwrap();
        if !tree.join("lib64").join(name).exists() {
            copy_exec(Path::new(lib), &tree.join("lib64").join(name));
        }
    }
    std::fs::write(
        tree.join("usr/share/udhcpc/default.script"),
        "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr add \"$ip/$mask\" dev \"$interface\"; echo \"NODE-IP: $ip\"; echo \"NODE-DHCP-SERVER: $serverid\";; esac\n",
    )
    .unwrap();
    std::fs::write(
        tree.join("sbin/init"),
        "#!/bin/sh\n\
         echo \"NODE-HOSTNAME: $(cat /etc/hostname)\" > /dev/ttyS0\n\
         insmod /e1000.ko\n\
         ip link set lo up\n\
         ip link set eth0 up\n\
         udhcpc -i eth0 -q -n -t 20 -s /usr/share/udhcpc/default.script > /dev/ttyS0 2>&1\n\
         (sleep 10; sed 's/^/WWCLIENT-LOG: /' /var/log/wwclient.log > /dev/ttyS0) &\n\
         last=\n\
         while true; do\n\
           c=$(cat /etc/motd 2>/dev/null)\n\
           if [ -n \"$c\" ] && [ \"$c\" != \"$last\" ]; then echo \"NODE-MOTD: $c\" > /dev/ttyS0; last=$c; fi\n\
           sleep 1\n\
         done\n",
    )
    .unwrap();
    for f in ["usr/share/udhcpc/default.script", "sbin/init"] {
        std::fs::set_permissions(tree.join(f), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
}

/// A VM on a tap of the rack bridge; its serial console, line by line with the time each
/// line arrived. Killed on drop.
pub struct Vm {
    child: std::process::Child,
    rx: Receiver<(Instant, String)>,
    console: Vec<(Instant, String)>,
    /// When QEMU was started.
    pub started: Instant,
}

impl Vm {
    pub fn boot(sw: &NetNs, tap: &str, mac: &str) -> Vm {
        let mut qemu = sw.command("qemu-system-x86_64");
        // Emulation, as the other QEMU tests: iPXE hangs after its banner under the
        // nested KVM of some runners (seen on this project's machine).
        qemu.args(["-machine", "q35", "-m", "768", "-nographic", "-no-reboot"])
            .args(["-netdev", &format!("tap,id=n0,ifname={tap},script=no,downscript=no")])
            .args(["-boot", "n", "-device", &format!("e1000,netdev=n0,mac={mac}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let started = Instant::now();
        let mut child = qemu.spawn().expect("start qemu");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).replace('\r', "\n");
                for l in line.split('\n') {
                    let l = strip_ansi(l);
                    if !l.trim().is_empty() && tx.send((Instant::now(), l)).is_err() {
                        return;
                    }
                }
            }
        });
        Vm {
            child,
            rx,
            console: Vec::new(),
            started,
        }
    }

    /// Reads the console until a line contains `what` (its arrival time), `secs` pass, or
    /// QEMU exits.
    pub fn wait_for(&mut self, what: &str, secs: u64) -> Option<Instant> {
        if let Some((t, _)) = self.console.iter().find(|(_, l)| l.contains(what)) {
            return Some(*t);
        }
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok((t, l)) => {
                    let hit = l.contains(what);
                    self.console.push((t, l));
                    if hit {
                        return Some(t);
                    }
                }
                // QEMU exited (`-no-reboot` after a failed boot): nothing more will come.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        None
    }

    /// Reads what arrived so far without waiting.
    pub fn drain(&mut self) {
        while let Ok(x) = self.rx.try_recv() {
            self.console.push(x);
        }
    }

    /// When the first line containing `what` arrived, of what was read so far.
    pub fn first(&self, what: &str) -> Option<Instant> {
        self.console.iter().find(|(_, l)| l.contains(what)).map(|(t, _)| *t)
    }

    /// The lines read so far that contain `what`.
    pub fn lines(&self, what: &str) -> Vec<String> {
        self.console
            .iter()
            .filter(|(_, l)| l.contains(what))
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// How many lines read so far contain `what`.
    pub fn count(&self, what: &str) -> usize {
        self.console.iter().filter(|(_, l)| l.contains(what)).count()
    }

    pub fn saw(&self, what: &str) -> bool {
        self.console.iter().any(|(_, l)| l.contains(what))
    }

    pub fn tail(&self) -> String {
        let n = self.console.len().saturating_sub(80);
        self.console[n..]
            .iter()
            .map(|(t, l)| format!("[{:6.1}] {l}", t.duration_since(self.started).as_secs_f64()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
