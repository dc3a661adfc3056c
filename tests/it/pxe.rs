//! Real network boots through wulfpack's own DHCP, TFTP and HTTP: a `wulfd` process
//! and a QEMU VM share a bridge inside a network namespace the test creates (nothing
//! leaves it). The VM gets its configured address from our DHCP, loads the kernel and
//! the image from `wulfd`, and the image's `/init` prints a marker on the serial
//! console; `wwctl node status` then shows the stages the node passed. Three firmware
//! paths, each a different first program:
//!
//! | test | firmware | path |
//! |---|---|---|
//! | [`bios_ipxe_rom_boots_directly`] | SeaBIOS + Debian's e1000 iPXE ROM | DHCP (option 77 iPXE) → HTTP script |
//! | [`uefi_pxe_chains_through_tftp_to_ipxe`] | OVMF's own PXE (EDK II, not iPXE) | DHCP (arch 7) → TFTP `snponly.efi` → iPXE → DHCP → HTTP script |
//! | [`uefi_http_boot_loads_ipxe_from_efiboot`] | OVMF's HTTP boot, PXE off, TFTP off | DHCP (`HTTPClient`) → HTTP `/efiboot/snponly.efi` → iPXE → HTTP script |
//!
//! The chain through TFTP needs a PXE client that is not iPXE (iPXE announces itself
//! with option 77 and is sent straight to HTTP). Every legacy-BIOS NIC ROM Debian ships
//! is iPXE, so the chain is proven with UEFI firmware's native PXE; for BIOS clients
//! `undionly.kpxe` is checked by the DHCP unit tests (filename for arch 0 without
//! option 77) and by `tftp.rs` (fetched byte-identical by real TFTP clients).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use crate::qemu_node::{qemu_boot_prerequisites, strip_ansi};

const WULFD: &str = env!("CARGO_BIN_EXE_wulfd");
const WWCTL: &str = env!("CARGO_BIN_EXE_wwctl");
const MAC: &str = "52:54:00:12:34:57";

/// `wwctl` against the head at 127.0.0.1:9701 inside `ns`: success and output.
pub fn wwctl(ns: &NetNs, args: &[&str]) -> (bool, String) {
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

/// How the VM starts its network boot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Firmware {
    /// SeaBIOS with Debian's e1000 iPXE option ROM.
    BiosIpxeRom,
    /// OVMF with its own PXE (virtio-net without an option ROM), IPv6 PXE off so a
    /// failure shows quickly; `wulfd` serves TFTP.
    UefiPxe,
    /// OVMF with both PXE boot options off, so it goes straight to HTTP boot; `wulfd`
    /// serves no TFTP at all.
    UefiHttp,
}

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Kills the VM on every way out of the test.
struct Vm(std::process::Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a boot showed: whether the marker appeared, the console lines before it,
/// `wwctl node status`, and wulfd's log.
struct Booted {
    marker: bool,
    console: Vec<String>,
    status: String,
    log: String,
}

impl Booted {
    fn saw(&self, text: &str) -> bool {
        self.console.iter().any(|l| l.contains(text))
    }

    fn explain(&self) -> String {
        format!(
            "last console lines:\n{}\nwulfd log:\n{}",
            self.console
                .iter()
                .rev()
                .take(40)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
            self.log
        )
    }

    /// The node's row: STAGE, SENT, IPADDR.
    fn status_of(&self, node: &str) -> (String, String, String) {
        let row = self
            .status
            .lines()
            .find(|l| l.starts_with(node))
            .unwrap_or_else(|| panic!("{node} not in node status:\n{}", self.status));
        let cols: Vec<&str> = row.split_whitespace().collect();
        (cols[1].into(), cols[2].into(), cols[3].into())
    }
}

/// A rack in a namespace: `wulfd` on a bridge, an image of busybox + the Debian kernel
/// whose `/init` prints a marker, node `pxe1` at 10.99.0.50; then the VM boots.
fn boot(fw: Firmware, vmlinuz: &std::path::Path) -> Booted {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    for d in ["bin", "dev", "proc", "boot"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    std::fs::copy(vmlinuz, tree.join("boot").join(vmlinuz.file_name().unwrap())).unwrap();
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
    let tftp = if fw == Firmware::UefiPxe {
        "  tftp: {enabled: true, listen: \"10.99.0.1:69\"}\n"
    } else {
        ""
    };
    let cfg = work.path().join("wulfd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "id: 1\ndata_dir: {}\nlisten: 127.0.0.1:9701\nhttp_listen: 10.99.0.1:9873\ncluster_name: pxe\ninsecure: true\n\
             bootstrap:\n  - {{id: 1, addr: 127.0.0.1:9701}}\n\
             boot:\n  dhcp:\n    interfaces: [{{name: br0, subnets: [rack]}}]\n    http_port: 9873\n\
             \x20   subnets:\n      rack: {{network: 10.99.0.0/24, server: 10.99.0.1}}\n{tftp}",
            work.path().join("data").display()
        ),
    )
    .unwrap();
    let log = work.path().join("wulfd.log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let wulfd = ns.spawn(&[WULFD, "--config", cfg.to_str().unwrap()], Some(&log));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !wwctl(&ns, &["profile", "list"]).1.contains("default") {
        assert!(Instant::now() < deadline, "wulfd did not come up: {}", read_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, out) = wwctl(&ns, &["image", "import", tree.to_str().unwrap(), "pxeimg"]);
    assert!(ok, "{out}");
    // A profile of its own: this test is about the firmware's path to the image, and
    // the cluster's `default` profile (Warewulf's) would put wwinit's `/init` over the
    // image's marker (tests/it/overlay_qemu.rs boots through wwinit).
    let (ok, out) = wwctl(&ns, &["profile", "add", "pxe"]);
    assert!(ok, "{out}");
    let (ok, out) = wwctl(
        &ns,
        &[
            "node",
            "add",
            "pxe1",
            "--profile",
            "pxe",
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
    let mut qemu = ns.command("qemu-system-x86_64");
    qemu.args(["-machine", "q35", "-m", "512", "-nographic", "-no-reboot"])
        .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"]);
    match fw {
        Firmware::BiosIpxeRom => {
            qemu.args(["-boot", "n", "-device", &format!("e1000,netdev=n0,mac={MAC}")]);
        }
        Firmware::UefiPxe | Firmware::UefiHttp => {
            // OVMF keeps its boot options in the writable vars image: a copy per VM.
            let vars = work.path().join("vars.fd");
            std::fs::copy(OVMF_VARS, &vars).unwrap();
            qemu.args(["-drive", &format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}")])
                .args(["-drive", &format!("if=pflash,format=raw,file={}", vars.display())])
                // `romfile=`: no iPXE option ROM, so OVMF's own driver and PXE/HTTP stack run.
                .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={MAC},romfile=")])
                .args(["-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n"]);
            if fw == Firmware::UefiHttp {
                qemu.args(["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n"]);
            }
        }
    }
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu");
    let stdout = child.stdout.take().unwrap();
    let vm = Vm(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            // Firmware consoles paint with escape sequences and carriage returns.
            let line = String::from_utf8_lossy(&line).replace('\r', "\n");
            for l in line.split('\n') {
                if tx.send(strip_ansi(l)).is_err() {
                    return;
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut console = Vec::new();
    let marker = loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) if l.contains("WULFPACK-PXE-OK") => break true,
            Ok(l) if l.trim().is_empty() => {}
            Ok(l) => console.push(l),
            Err(_) if Instant::now() > deadline => break false,
            Err(_) => {}
        }
    };
    drop(vm);
    let (_, status) = wwctl(&ns, &["node", "status"]);
    ns.kill(wulfd);
    Booted {
        marker,
        console,
        status,
        log: read_log(),
    }
}

/// Checks common to every path: the marker, the configured address (iPXE prints it),
/// and a status row at the image stage or later from that address.
fn assert_booted_from_wulfd(b: &Booted) {
    assert!(b.marker, "no marker on the console; {}", b.explain());
    assert!(b.saw("10.99.0.50"), "configured address not seen; {}", b.explain());
    assert!(b.saw("wulfpack (iPXE)"), "our iPXE script did not run; {}", b.explain());
    // Status keeps each node's latest event: after the image the script asks for the
    // overlays (not built yet, so NOT_FOUND), so the node is at IMAGE or later.
    let (stage, _, addr) = b.status_of("pxe1");
    assert!(
        ["IMAGE", "SYSTEM_OVERLAY", "RUNTIME_OVERLAY"].contains(&stage.as_str()),
        "node reached the image stage: {}",
        b.status
    );
    assert_eq!(addr, "10.99.0.50", "{}", b.status);
}

#[test]
fn bios_ipxe_rom_boots_directly() {
    let Some(vmlinuz) = qemu_boot_prerequisites("the BIOS PXE boot test") else {
        return;
    };
    let b = boot(Firmware::BiosIpxeRom, &vmlinuz);
    assert_booted_from_wulfd(&b);
    assert!(!b.log.contains("TFTP serving"), "this path needs no TFTP");
}

#[test]
fn uefi_pxe_chains_through_tftp_to_ipxe() {
    let Some(vmlinuz) = qemu_boot_prerequisites("the UEFI PXE chain test") else {
        return;
    };
    let b = boot(Firmware::UefiPxe, &vmlinuz);
    assert_booted_from_wulfd(&b);
    // OVMF's own PXE asked our DHCP (arch 7, no option 77), was told snponly.efi and
    // fetched it over our TFTP; that iPXE then asked again and got the script URL.
    assert!(b.saw("NBP filename is snponly.efi"), "{}", b.explain());
    assert!(b.saw("NBP file downloaded successfully"), "{}", b.explain());
    assert!(b.saw("iPXE initialising devices"), "{}", b.explain());
    assert!(b.saw("Filename: http://10.99.0.1:9873/ipxe/"), "{}", b.explain());
}

#[test]
fn uefi_http_boot_loads_ipxe_from_efiboot() {
    let Some(vmlinuz) = qemu_boot_prerequisites("the UEFI HTTP boot test") else {
        return;
    };
    let b = boot(Firmware::UefiHttp, &vmlinuz);
    assert_booted_from_wulfd(&b);
    assert!(
        b.saw("URI: http://10.99.0.1:9873/efiboot/snponly.efi"),
        "HTTP boot was pointed at /efiboot/: {}",
        b.explain()
    );
    assert!(b.saw("iPXE initialising devices"), "{}", b.explain());
    assert!(!b.log.contains("TFTP serving"), "this path needs no TFTP");
}
