//! Rack HA with real `wulfd` processes in network namespaces, configured from the
//! documented example (`cluster/examples/wulfd.yaml`, only addresses and names changed)
//! and `wwctl rack add` as docs/OPERATIONS.md shows it. The lab (tests/common/rack_lab.rs):
//! three heads on two bridge racks and a relayed one — rack1 (br1) served by heads 1
//! then 2, rack3 (br3) by heads 3 then 2 (head 2 sits on both), rack2 behind `dhcrelay`
//! by heads 2 then 1.
//!
//! Checked with a capture on the clients' links: one OFFER per DISCOVER, from the rack's
//! primary, on both bridge racks; TFTP on each rack address of a head on two racks; the
//! relayed rack answered to the relay by its first head; after the primary is SIGKILLed
//! the backup answers; a restarted primary takes its rack back; a hung (SIGSTOPped)
//! primary is passed over like a dead one, and so is a primary whose rack link lost its
//! carrier; the relayed rack's primary (a follower) dies and its backup answers the relay.
//! A second test cuts one head's management link: a cut-off backup does not take over, a
//! cut-off primary keeps serving its rack's known node while the majority serves it too.

use std::time::{Duration, Instant};

use crate::netns::skip_reason;
use crate::rack_lab::{Capture, Lab, PXE_LIKE};

#[test]
fn one_answer_per_discover_takeover_by_the_backup_and_a_relayed_rack() {
    let tools = [
        ("ip", "iproute2"),
        ("dhclient", "isc-dhcp-client"),
        ("dhcrelay", "isc-dhcp-relay"),
        ("tcpdump", "tcpdump"),
        ("curl", "curl"),
    ];
    if let Some(why) = skip_reason(&tools) {
        eprintln!("SKIP one_answer_per_discover_takeover_by_the_backup_and_a_relayed_rack: {why}");
        return;
    }
    let mut lab = Lab::up();
    // As in docs/OPERATIONS.md "Racks".
    lab.rack1_with_n1();
    lab.wwctl_ok(
        "rack add rack2 --network 10.20.0.0/24 --relayed --router 10.20.0.1 --head 2=10.0.0.2 --head 1=10.0.0.1",
    );
    // A second rack on its own bridge: head 3 first, head 2 (on both bridges) second.
    lab.wwctl_ok("rack add rack3 --network 10.30.0.0/24 --head 3=10.30.0.3 --head 2=10.30.0.2");
    let list = lab.wwctl_ok("rack list");
    assert!(
        list.contains("rack1") && list.contains("1=10.10.0.1,2=10.10.0.2"),
        "{list}"
    );
    let m2 = lab.c2.mac("c0");
    lab.wwctl_ok(&format!(
        "node add n2 --ipaddr 10.20.0.50 --netmask 255.255.255.0 --hwaddr {m2}"
    ));
    let m3 = lab.c3.mac("c0");
    lab.wwctl_ok(&format!(
        "node add n3 --ipaddr 10.30.0.50 --netmask 255.255.255.0 --hwaddr {m3}"
    ));
    lab.wait("both heads reporting the racks they serve", 30, || {
        lab.health(1).contains("\"racks\":[\"rack1\",\"rack2\"]")
            && lab.health(2).contains("\"racks\":[\"rack1\",\"rack2\",\"rack3\"]")
            && lab.health(3).contains("\"racks\":[\"rack3\"]")
            && lab.health(2).contains("\"1\":[\"rack1\",\"rack2\"]")
            && lab.health(3).contains("\"2\":[\"rack1\",\"rack2\",\"rack3\"]")
            && lab.health(1).contains("\"2\":[\"rack1\",\"rack2\",\"rack3\"]")
    });

    // 0. Idle longer than every liveness timer (probe 0.5 s, down after 2 s, interface
    //    re-read 2 s): the probes write no Raft entry and no log line.
    let applied = |lab: &Lab| -> Vec<u64> {
        let out = lab.wwctl_ok("-o json cluster status");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["heads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["applied"].as_u64().unwrap())
            .collect()
    };
    let lines = |lab: &Lab| (0..3).map(|i| lab.log(i).lines().count()).collect::<Vec<_>>();
    let (before, logged) = (applied(&lab), lines(&lab));
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(applied(&lab), before, "idle heads wrote Raft entries");
    assert_eq!(lines(&lab), logged, "idle heads logged:\n{}", lab.logs());

    // 1. One OFFER, from the primary.
    let cap = Capture::start(&lab.c1, "c0");
    let lease = crate::dhclient::run_with(&lab.c1, "c0", "10.10.0.50/24", Duration::from_secs(30), PXE_LIKE);
    let (offers, text) = cap.offers(&lab.c1);
    assert!(lease.bound, "n1 got no address:\n{}\n{}", lease.log, lab.logs());
    lease.expect("new_dhcp_server_identifier=10.10.0.1");
    assert_eq!(
        offers,
        vec!["10.10.0.1".to_string()],
        "one OFFER, from the primary:\n{text}"
    );

    // 1b. The second bridge rack: one OFFER, from its own primary (head 3); TFTP answers
    //     on both rack addresses of head 2 (a head on two racks listens on each).
    let cap = Capture::start(&lab.c3, "c0");
    let lease3 = crate::dhclient::run_with(&lab.c3, "c0", "10.30.0.50/24", Duration::from_secs(30), PXE_LIKE);
    let (offers3, text3) = cap.offers(&lab.c3);
    assert!(lease3.bound, "n3 got no address:\n{}\n{}", lease3.log, lab.logs());
    lease3.expect("new_dhcp_server_identifier=10.30.0.3");
    assert_eq!(
        offers3,
        vec!["10.30.0.3".to_string()],
        "one OFFER, from rack3's primary:\n{text3}"
    );
    if which("tftp") {
        for server in ["10.30.0.2", "10.30.0.3"] {
            lab.c3.ok(&format!(
                "cd /tmp && timeout 20 tftp {server} -c get undionly.kpxe /dev/null"
            ));
        }
        lab.c1.ok("ip addr add 10.10.0.99/24 dev c0");
        lab.c1.ok("timeout 20 tftp 10.10.0.2 -c get undionly.kpxe /dev/null");
        lab.c1.ok("ip addr del 10.10.0.99/24 dev c0");
    } else {
        eprintln!("SKIP the TFTP part of the rack test: tftp (tftp-hpa) is not installed");
    }

    // 2. The relayed rack: answered to the relay by its first head (head 2).
    let relay = lab.rt.spawn(
        &[
            "timeout", "120", "dhcrelay", "-4", "-d", "-id", "d0", "-iu", "u0", "10.0.0.1", "10.0.0.2",
        ],
        None,
    );
    let cap = Capture::start(&lab.c2, "c0");
    let lease2 = crate::dhclient::run_with(&lab.c2, "c0", "10.20.0.50/24", Duration::from_secs(30), PXE_LIKE);
    let (offers2, text2) = cap.offers(&lab.c2);
    lab.rt.kill(relay);
    assert!(
        lease2.bound,
        "n2 got no address through the relay:\n{}\n{}",
        lease2.log,
        lab.logs()
    );
    lease2.expect("new_dhcp_server_identifier=10.0.0.2");
    lease2.expect("new_routers=10.20.0.1");
    assert_eq!(
        offers2,
        vec!["10.0.0.2".to_string()],
        "one OFFER through the relay:\n{text2}"
    );

    // 3. SIGKILL the primary of rack1: the backup answers.
    lab.c1.ok("ip addr flush dev c0");
    lab.kill(0);
    let killed = Instant::now();
    let lease = crate::dhclient::run_with(&lab.c1, "c0", "10.10.0.50/24", Duration::from_secs(30), PXE_LIKE);
    let took = killed.elapsed();
    assert!(lease.bound, "no takeover:\n{}\n{}", lease.log, lab.logs());
    lease.expect("new_dhcp_server_identifier=10.10.0.2");
    eprintln!(
        "rack1 takeover: bound {:.1} s after the primary was SIGKILLed",
        took.as_secs_f64()
    );
    // Detection takes at most DEAD_AFTER (2 s) and this client retransmits every 1-2 s;
    // the bound leaves room for a loaded CI machine, far below dhclient's own 10 s.
    assert!(took < Duration::from_secs(8), "takeover took {took:?}");
    // wwctl keeps working with the primary gone.
    assert!(lab.wwctl_ok("node list").contains("n1"));
    lab.wait("the backup saying why it answers", 5, || {
        lab.log(1).contains("head is down")
    });

    // 4. The primary comes back and takes its rack back (no restart of anything else).
    lab.start(0);
    lab.wait("head 1 serving rack1 again", 60, || lab.health(1).contains("\"rack1\""));
    lab.wait("head 2 seeing head 1 serve rack1 again", 10, || {
        lab.health(2).contains("\"1\":[\"rack1\",\"rack2\"]")
    });
    lab.c1.ok("ip addr flush dev c0");
    let cap = Capture::start(&lab.c1, "c0");
    let lease = crate::dhclient::run_with(&lab.c1, "c0", "10.10.0.50/24", Duration::from_secs(30), PXE_LIKE);
    let (offers, text) = cap.offers(&lab.c1);
    assert!(lease.bound, "{}\n{}", lease.log, lab.logs());
    lease.expect("new_dhcp_server_identifier=10.10.0.1");
    assert_eq!(
        offers,
        vec!["10.10.0.1".to_string()],
        "the primary again, alone:\n{text}"
    );

    // 5. A hung primary (SIGSTOP: sockets open, nothing answered) is passed over like a
    //    dead one, and serves again when it resumes.
    let pgid = lab.pids[0].expect("head 1 runs");
    let group = rustix::process::Pid::from_raw(pgid as i32).expect("a pid");
    rustix::process::kill_process_group(group, rustix::process::Signal::STOP).expect("SIGSTOP head 1");
    lab.c1.ok("ip addr flush dev c0");
    let stopped = Instant::now();
    let lease = crate::dhclient::run_with(&lab.c1, "c0", "10.10.0.50/24", Duration::from_secs(30), PXE_LIKE);
    let took = stopped.elapsed();
    rustix::process::kill_process_group(group, rustix::process::Signal::CONT).expect("SIGCONT head 1");
    assert!(
        lease.bound,
        "no takeover from a hung primary:\n{}\n{}",
        lease.log,
        lab.logs()
    );
    lease.expect("new_dhcp_server_identifier=10.10.0.2");
    eprintln!(
        "rack1 takeover from a hung primary: bound {:.1} s after SIGSTOP",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(8), "takeover from a hung head took {took:?}");
    lab.wait("head 2 seeing head 1 serve rack1 after SIGCONT", 20, || {
        lab.health(2).contains("\"1\":[\"rack1\",\"rack2\"]")
    });
    lab.c1.ok("ip addr flush dev c0");
    let lease = crate::dhclient::run_with(&lab.c1, "c0", "10.10.0.50/24", Duration::from_secs(30), PXE_LIKE);
    assert!(lease.bound, "{}\n{}", lease.log, lab.logs());
    lease.expect("new_dhcp_server_identifier=10.10.0.1");

    // 6. The primary alive but cut from the rack (its rack link lost carrier): it stops
    //    reporting rack1, and the backup answers.
    lab.sw.ok("ip link set r1 down");
    lab.wait("head 2 seeing head 1 no longer serve rack1", 20, || {
        lab.health(2).contains("\"1\":[\"rack2\"]")
    });
    lab.c1.ok("ip addr flush dev c0");
    let lease = crate::dhclient::run_with(&lab.c1, "c0", "10.10.0.50/24", Duration::from_secs(30), PXE_LIKE);
    assert!(lease.bound, "{}\n{}", lease.log, lab.logs());
    lease.expect("new_dhcp_server_identifier=10.10.0.2");

    // 7. A follower that is the relayed rack's primary dies: its backup answers the relay.
    lab.kill(1);
    let relay = lab.rt.spawn(
        &[
            "timeout", "120", "dhcrelay", "-4", "-d", "-id", "d0", "-iu", "u0", "10.0.0.1", "10.0.0.2",
        ],
        None,
    );
    lab.c2.ok("ip addr flush dev c0");
    let lease2 = crate::dhclient::run_with(&lab.c2, "c0", "10.20.0.50/24", Duration::from_secs(30), PXE_LIKE);
    lab.rt.kill(relay);
    assert!(
        lease2.bound,
        "relayed rack not taken over:\n{}\n{}",
        lease2.log,
        lab.logs()
    );
    lease2.expect("new_dhcp_server_identifier=10.0.0.1");
    assert!(
        lab.wwctl_ok("node list").contains("n2"),
        "wwctl works with a follower down"
    );
    for i in 0..3 {
        lab.kill(i);
    }
}

#[test]
fn partitions_minority_primary_keeps_its_rack_minority_backup_does_not_take_over() {
    let tools = [
        ("ip", "iproute2"),
        ("dhclient", "isc-dhcp-client"),
        ("tcpdump", "tcpdump"),
        ("curl", "curl"),
    ];
    if let Some(why) = skip_reason(&tools) {
        eprintln!("SKIP partitions_minority_primary_keeps_its_rack_minority_backup_does_not_take_over: {why}");
        return;
    }
    let mut lab = Lab::up();
    lab.rack1_with_n1();
    // Health over the rack link (the management link is what gets cut).
    let rack_health = |lab: &Lab, from: usize, id: u64| -> String {
        let o = lab.heads[from].sh(&format!("curl -s -m 1 http://10.10.0.{id}:9873/health"));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    lab.wait("head 2 seeing head 1 serve rack1", 30, || {
        rack_health(&lab, 0, 2).contains("\"1\":[\"rack1\"]")
    });
    let boot = |lab: &Lab| -> Vec<String> {
        lab.c1.ok("ip addr flush dev c0");
        let cap = Capture::start(&lab.c1, "c0");
        let lease = crate::dhclient::run_with(&lab.c1, "c0", "10.10.0.50/24", Duration::from_secs(30), PXE_LIKE);
        let (offers, text) = cap.offers(&lab.c1);
        assert!(lease.bound, "n1 got no address:\n{}\n{text}\n{}", lease.log, lab.logs());
        offers
    };

    // 1. The backup (head 2) is cut off from the others: it sees the primary "down" but
    //    has no quorum, so it does not take the rack over.
    lab.heads[1].ok("ip link set m0 down");
    lab.wait("head 2 counting head 1 as down, without quorum", 30, || {
        let h = rack_health(&lab, 0, 2);
        h.contains("\"1\":null") && h.contains("\"quorum\":false")
    });
    let offers = boot(&lab);
    assert_eq!(
        offers,
        vec!["10.10.0.1".to_string()],
        "the minority backup stays silent"
    );
    lab.heads[1].ok("ip link set m0 up");
    lab.wait("head 2 back in the quorum, seeing head 1", 30, || {
        let h = rack_health(&lab, 0, 2);
        h.contains("\"1\":[\"rack1\"]") && h.contains("\"quorum\":true")
    });
    assert_eq!(boot(&lab), vec!["10.10.0.1".to_string()], "healed: one answer again");

    // 2. The primary (head 1) is cut off: it keeps answering its rack's known node from
    //    its last state; the majority side (head 2 with head 3) elects and serves it too.
    lab.heads[0].ok("ip link set m0 down");
    lab.wait("head 1 without quorum, head 2 counting it down with quorum", 30, || {
        rack_health(&lab, 1, 1).contains("\"quorum\":false") && {
            let h = rack_health(&lab, 0, 2);
            h.contains("\"1\":null") && h.contains("\"quorum\":true")
        }
    });
    let mut offers = boot(&lab);
    offers.sort();
    offers.dedup();
    assert_eq!(
        offers,
        vec!["10.10.0.1".to_string(), "10.10.0.2".to_string()],
        "both sides of the partition serve the rack's known node"
    );
    // Writes go on on the majority side.
    lab.wwctl_ok("node set -y n1 --comment during-partition");
    lab.heads[0].ok("ip link set m0 up");
    lab.wait("head 1 back, seen by head 2", 30, || {
        rack_health(&lab, 0, 2).contains("\"1\":[\"rack1\"]") && rack_health(&lab, 1, 1).contains("\"quorum\":true")
    });
    assert_eq!(boot(&lab), vec!["10.10.0.1".to_string()], "healed: the primary alone");
    for i in 0..3 {
        lab.kill(i);
    }
}

fn which(prog: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .is_ok_and(|o| o.status.success())
}
