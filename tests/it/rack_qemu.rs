//! QEMU failover boot: a VM PXE-boots from rack head A, A is SIGKILLed while the image
//! streams, and the VM finishes its boot from head B — image, overlays, `/init`, and
//! `wwclient`'s runtime overlay; a second VM booted afterwards is served by B alone.
//! Three `wulfd` processes in namespaces, configured from the documented example
//! (tests/common/rack_qemu_lab.rs, shared with `benches/rack_boot.rs`):
//!
//! ```text
//!   ns sw: bridge brm (management 10.0.0.0/24, wwctl at .254)   bridge br1 (rack1 10.10.0.0/24)
//!     h1 (A): m0 10.0.0.1, r0 10.10.0.1 (egress rate-limited)    h2 (B): m0 10.0.0.2, r0 10.10.0.2
//!     h3: m0 10.0.0.3 (a voter, no rack)
//!     VMs: taps t1, t2 on br1 (nodes n1 10.10.0.50, n2 10.10.0.51)
//! ```
//! The image is imported through A only; the test waits until B holds every artifact
//! (`wwctl cluster status`, MISSING 0) before booting, so the survivor can serve. A's
//! rack link is rate-limited (tbf) so that the image takes seconds to stream, and A is
//! killed once its TCP byte count shows the image is under way — not after a sleep.

use std::time::Instant;

use crate::qemu_node::{qemu_boot_prerequisites, Vm};
use crate::rack_qemu_lab::{status_row, Lab, ALL, B, NODES};

const MAC1: &str = NODES[0].2;
const MAC2: &str = NODES[1].2;
/// A's rack link while the VM boots: the image (~11 MB gzipped) then takes several
/// seconds, so the kill lands mid-image; B's link is not limited.
const RATE_A: &str = "12mbit";
/// Bytes of the image A must have sent (acknowledged by the VM) before it is killed.
const KILL_AFTER_BYTES: u64 = 1 << 20;

#[test]
fn a_vm_whose_head_dies_mid_image_boots_from_the_next_head_of_its_rack() {
    let Some(vmlinuz) = qemu_boot_prerequisites("the rack failover QEMU boot test") else {
        return;
    };
    if let Some(why) = crate::netns::skip_reason(&[("tc", "iproute2"), ("ss", "iproute2"), ("curl", "curl")]) {
        eprintln!("SKIP a_vm_whose_head_dies_mid_image_boots_from_the_next_head_of_its_rack: {why}");
        return;
    }
    let mut lab = Lab::build(&vmlinuz, 900);
    lab.ready();
    let table = lab.wwctl_ok(ALL, "cluster status");
    eprintln!("{table}");

    // A's rack link is slow, so the image streams for seconds.
    lab.heads[0].ok(&format!(
        "tc qdisc add dev r0 root tbf rate {RATE_A} burst 32kb latency 400ms"
    ));

    // VM 1 boots from A.
    let mut vm1 = Vm::boot(&lab.sw, "t1", MAC1);
    let img1 = vm1.wait_for("Downloading image", 180);
    assert!(
        img1.is_some(),
        "VM 1 never asked for its image:\n{}\n{}",
        vm1.tail(),
        lab.logs()
    );
    assert!(
        vm1.saw("* Heads: http://10.10.0.1:9873 http://10.10.0.2:9873"),
        "{}",
        vm1.tail()
    );
    // The kernel came from A; the image is now streaming from A: its request is logged
    // and the VM keeps acknowledging bytes. Kill A once a megabyte of it has gone.
    lab.wait("A sending the image to n1", 30, || {
        lab.log(0)
            .lines()
            .any(|l| l.contains("node=n1") && l.contains("stage=Image") && l.contains("send"))
    });
    assert!(
        lab.log(0)
            .lines()
            .any(|l| l.contains("node=n1") && l.contains("stage=Kernel") && l.contains("send")),
        "the kernel came from A:\n{}",
        lab.logs()
    );
    let mut base = lab.acked_to("10.10.0.50");
    let mut streamed = 0;
    lab.wait("A's image stream to VM 1 under way", 60, || {
        let now = lab.acked_to("10.10.0.50");
        // A connection that closed takes its count with it: restart from there.
        base = base.min(now);
        streamed = now - base;
        streamed >= KILL_AFTER_BYTES
    });
    lab.kill(0);
    let killed = Instant::now();
    eprintln!(
        "A SIGKILLed {:.1} s after VM 1 asked for its image, {streamed} image bytes acknowledged",
        killed.duration_since(img1.unwrap()).as_secs_f64()
    );

    // The download from A fails and the next head of the rack serves the image.
    let failed = vm1.wait_for("image from http://10.10.0.1:9873", 60);
    assert!(
        failed.is_some(),
        "VM 1 did not give up on A's image:\n{}\n{}",
        vm1.tail(),
        lab.logs()
    );
    let init1 = vm1.wait_for("NODE-HOSTNAME: n1", 300);
    assert!(
        init1.is_some(),
        "VM 1 did not reach /init:\n{}\n{}",
        vm1.tail(),
        lab.logs()
    );
    assert!(
        vm1.wait_for("NODE-DHCP-SERVER: 10.10.0.2", 60).is_some(),
        "{}",
        vm1.tail()
    );
    assert!(
        vm1.wait_for("NODE-MOTD: motd for n1", 90).is_some(),
        "wwclient did not apply the runtime overlay:\n{}\n{}",
        vm1.tail(),
        lab.logs()
    );
    assert!(vm1.saw("wwinit: node n1"), "{}", vm1.tail());
    assert!(
        lab.log(1)
            .lines()
            .any(|l| l.contains("node=n1") && l.contains("stage=Image") && l.contains("send")),
        "B served n1's image:\n{}",
        lab.logs()
    );
    let survivors = "10.0.0.2:9701,10.0.0.3:9701";
    let mut row = None;
    lab.wait("n1 at RUNTIME_OVERLAY on B", 30, || {
        row = status_row(&lab, B, "n1");
        row.as_ref().is_some_and(|r| r.0 == "RUNTIME_OVERLAY")
    });
    let (_, sent, head, line) = row.unwrap();
    assert!(sent.starts_with("runtime"), "sent the runtime overlay: {line}");
    assert_eq!(head, "2", "n1's runtime overlay from B: {line}");
    assert!(
        lab.wwctl_ok(survivors, "node list").contains("n1"),
        "wwctl works without A"
    );
    vm1.drain();
    drop(vm1);

    // VM 2, booted after the kill: DHCP, script, kernel, image and overlays from B.
    let mut vm2 = Vm::boot(&lab.sw, "t2", MAC2);
    let img2 = vm2.wait_for("Downloading image", 180);
    assert!(
        img2.is_some(),
        "VM 2 never asked for its image:\n{}\n{}",
        vm2.tail(),
        lab.logs()
    );
    assert!(
        vm2.saw("* Heads: http://10.10.0.2:9873 http://10.10.0.1:9873"),
        "B's script, B first:\n{}",
        vm2.tail()
    );
    let init2 = vm2.wait_for("NODE-HOSTNAME: n2", 300);
    assert!(
        init2.is_some(),
        "VM 2 did not reach /init:\n{}\n{}",
        vm2.tail(),
        lab.logs()
    );
    assert!(
        vm2.wait_for("NODE-DHCP-SERVER: 10.10.0.2", 60).is_some(),
        "{}",
        vm2.tail()
    );
    assert!(
        vm2.wait_for("NODE-MOTD: motd for n2", 90).is_some(),
        "{}\n{}",
        vm2.tail(),
        lab.logs()
    );
    // Kernel and image from B at the first try (the runtime overlay is refused to iPXE
    // in secure mode by every head, so that one does try A too).
    assert!(
        !vm2.saw("kernel from http") && !vm2.saw("image from http"),
        "VM 2 never needed A:\n{}",
        vm2.tail()
    );
    lab.wait("n2 at RUNTIME_OVERLAY on B", 30, || {
        status_row(&lab, B, "n2").is_some_and(|r| r.0 == "RUNTIME_OVERLAY" && r.2 == "2")
    });
    drop(vm2);

    // Extra boot time of the VM whose head died: from its image request to /init, against
    // the same stretch of a VM that B served alone.
    let (img1, init1, img2, init2) = (img1.unwrap(), init1.unwrap(), img2.unwrap(), init2.unwrap());
    let healthy = init2.duration_since(img2).as_secs_f64();
    let hit = init1.duration_since(img1).as_secs_f64();
    let after_kill = init1.duration_since(killed).as_secs_f64();
    eprintln!(
        "rack failover boot: image request -> /init {hit:.1} s with A killed mid-image \
         ({:.1} s streaming from A at {RATE_A}, then {after_kill:.1} s from the kill), \
         {healthy:.1} s served by B alone: extra {:.1} s, of which {:.1} s after the kill",
        killed.duration_since(img1).as_secs_f64(),
        hit - healthy,
        after_kill - healthy
    );
    for i in 0..3 {
        lab.kill(i);
    }
}
