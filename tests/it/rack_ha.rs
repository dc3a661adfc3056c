//! Rack HA with real `wulfd` processes in network namespaces, configured from the
//! documented example (`cluster/examples/wulfd.yaml`, only addresses and names changed)
//! and `wwctl rack add` as docs/OPERATIONS.md shows it.
//!
//! ```text
//!   ns sw: bridge brm (management 10.0.0.0/24, wwctl at .254)   bridge br1 (rack1 10.10.0.0/24)
//!     h1: m0 10.0.0.1, r0 10.10.0.1     h2: m0 10.0.0.2, r0 10.10.0.2     h3: m0 10.0.0.3
//!     c1: c0 on br1 (node n1 10.10.0.50)
//!     rt: u0 10.0.0.253 on brm, d0 10.20.0.1 — c2: c0 (node n2 10.20.0.50, relayed rack2)
//! ```
//! rack1 is served by heads 1 then 2; rack2 (relayed by `dhcrelay` to both heads) by heads
//! 2 then 1; head 3 serves no rack but is a voter. Checked with a capture on the client's
//! link: one OFFER per DISCOVER (from the primary); after the primary is SIGKILLed the
//! backup answers; the relayed rack is answered to the relay by its first head; a restarted
//! primary takes its rack back; a hung (SIGSTOPped) primary is passed over like a dead one.
//! A second test cuts one head's management link: a cut-off backup does not take over, a
//! cut-off primary keeps serving its rack's known node while the majority serves it too.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::netns::{skip_reason, NetNs};

const EXAMPLE: &str = include_str!("../../cluster/examples/wulfd.yaml");

/// The example config for head `id` of this lab: ids, addresses and interface names
/// changed, everything else as documented.
fn head_config(id: u64, data_dir: &Path, rack_if: bool) -> String {
    use serde_yaml_ng::Value;
    let mut v: Value = serde_yaml_ng::from_str(EXAMPLE).unwrap();
    let m = v.as_mapping_mut().unwrap();
    let set = |m: &mut serde_yaml_ng::Mapping, k: &str, val: Value| {
        m.insert(Value::from(k), val);
    };
    set(m, "id", Value::from(id));
    set(m, "data_dir", Value::from(data_dir.display().to_string()));
    set(m, "advertise", Value::from(format!("10.0.0.{id}:9701")));
    let boot: Value = serde_yaml_ng::from_str(
        "- {id: 1, addr: \"10.0.0.1:9701\"}\n- {id: 2, addr: \"10.0.0.2:9701\"}\n- {id: 3, addr: \"10.0.0.3:9701\"}\n",
    )
    .unwrap();
    set(m, "bootstrap", boot);
    let boot = m.get_mut(Value::from("boot")).unwrap().as_mapping_mut().unwrap();
    let dhcp = boot.get_mut(Value::from("dhcp")).unwrap().as_mapping_mut().unwrap();
    // The rack link and the uplink relays forward to, as the example's comment says.
    let ifaces = if rack_if {
        "- {name: r0}\n- {name: m0}\n"
    } else {
        "- {name: m0}\n"
    };
    dhcp.insert(Value::from("interfaces"), serde_yaml_ng::from_str(ifaces).unwrap());
    let tftp = boot.get_mut(Value::from("tftp")).unwrap().as_mapping_mut().unwrap();
    if rack_if {
        tftp.insert(Value::from("listen"), Value::from(format!("10.10.0.{id}:69")));
    } else {
        tftp.insert(Value::from("enabled"), Value::from(false));
    }
    serde_yaml_ng::to_string(&v).unwrap()
}

/// A capture of DHCP on one interface (tcpdump -vv), parsed for OFFERs.
struct Capture {
    pid: u32,
    log: tempfile::NamedTempFile,
}

impl Capture {
    fn start(ns: &NetNs, iface: &str) -> Capture {
        let log = tempfile::NamedTempFile::new().unwrap();
        let pid = ns.spawn(
            &[
                "timeout", "120", "tcpdump", "-i", iface, "-n", "-l", "-vv", "udp", "port", "67", "or", "udp", "port",
                "68",
            ],
            Some(log.path()),
        );
        let t = Instant::now();
        while !std::fs::read_to_string(log.path())
            .unwrap_or_default()
            .contains("listening on")
        {
            assert!(t.elapsed() < Duration::from_secs(10), "tcpdump did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Capture { pid, log }
    }

    /// Stop and return the server id of every OFFER seen.
    fn offers(self, ns: &NetNs) -> (Vec<String>, String) {
        // Let the last packets reach the log before stopping.
        std::thread::sleep(Duration::from_millis(300));
        ns.kill(self.pid);
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let mut out = Vec::new();
        // One packet per block: a header line starting with a timestamp, then its options.
        let mut cur_offer = false;
        for line in text.lines() {
            let l = line.trim();
            if line.as_bytes().first().is_some_and(|b| b.is_ascii_digit()) {
                cur_offer = false;
            }
            if l.contains("DHCP-Message (53)") {
                cur_offer = l.ends_with("Offer");
            }
            if cur_offer {
                if let Some(id) = l.strip_prefix("Server-ID (54), length 4: ") {
                    out.push(id.to_owned());
                }
            }
        }
        (out, text)
    }
}

struct Lab {
    sw: NetNs,
    heads: Vec<NetNs>,
    c1: NetNs,
    rt: NetNs,
    c2: NetNs,
    dir: tempfile::TempDir,
    pids: Vec<Option<u32>>,
}

impl Lab {
    fn build() -> Lab {
        let sw = NetNs::new("hsw");
        sw.ok("ip link add brm type bridge && ip link set brm up && ip link add br1 type bridge && ip link set br1 up");
        sw.ok("ip addr add 10.0.0.254/24 dev brm");
        let heads: Vec<NetNs> = (1..=3).map(|i| NetNs::new(&format!("h{i}"))).collect();
        for (i, h) in heads.iter().enumerate() {
            let id = i + 1;
            h.veth("m0", Some(&format!("10.0.0.{id}/24")), &sw, &format!("m{id}"), None);
            sw.ok(&format!("ip link set m{id} master brm"));
            if id <= 2 {
                h.veth("r0", Some(&format!("10.10.0.{id}/24")), &sw, &format!("r{id}"), None);
                sw.ok(&format!("ip link set r{id} master br1"));
            }
            // Replies to the relay of rack2.
            h.ok("ip route add 10.20.0.0/24 via 10.0.0.253");
        }
        let c1 = NetNs::new("hc1");
        c1.veth("c0", None, &sw, "cp1", None);
        sw.ok("ip link set cp1 master br1");
        let rt = NetNs::new("hrt");
        rt.veth("u0", Some("10.0.0.253/24"), &sw, "rtp", None);
        sw.ok("ip link set rtp master brm");
        let c2 = NetNs::new("hc2");
        rt.veth("d0", Some("10.20.0.1/24"), &c2, "c0", None);
        Lab {
            sw,
            heads,
            c1,
            rt,
            c2,
            dir: tempfile::tempdir().unwrap(),
            pids: vec![None; 3],
        }
    }

    fn start(&mut self, i: usize) {
        let id = i as u64 + 1;
        let cfg = self.dir.path().join(format!("wulfd{id}.yaml"));
        std::fs::write(
            &cfg,
            head_config(id, &self.dir.path().join(format!("data{id}")), id <= 2),
        )
        .unwrap();
        let log = self.dir.path().join(format!("wulfd{id}.log"));
        let pid = self.heads[i].spawn(
            &[
                "timeout",
                "600",
                env!("CARGO_BIN_EXE_wulfd"),
                "--config",
                cfg.to_str().unwrap(),
            ],
            Some(&log),
        );
        self.pids[i] = Some(pid);
    }

    /// SIGKILL head `i` (its process group: `timeout` and wulfd).
    fn kill(&mut self, i: usize) {
        if let Some(pid) = self.pids[i].take() {
            self.heads[i].kill(pid);
        }
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("wulfd{}.log", i + 1))).unwrap_or_default()
    }

    fn logs(&self) -> String {
        (0..3)
            .map(|i| format!("--- wulfd{} ---\n{}", i + 1, self.log(i)))
            .collect()
    }

    /// `wwctl` from the management bridge against every head.
    fn wwctl(&self, args: &str) -> std::process::Output {
        self.sw.sh(&format!(
            "{} --timeout 10 --heads 10.0.0.1:9701,10.0.0.2:9701,10.0.0.3:9701 {args}",
            env!("CARGO_BIN_EXE_wwctl")
        ))
    }

    fn wwctl_ok(&self, args: &str) -> String {
        let o = self.wwctl(args);
        assert!(
            o.status.success(),
            "wwctl {args}: {}{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn health(&self, id: u64) -> String {
        let o = self.sw.sh(&format!("curl -s -m 1 http://10.0.0.{id}:9873/health"));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn wait(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "timed out after {secs} s waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Like a PXE ROM: retransmit after about a second, not dhclient's default 10 s.
const PXE_LIKE: &str = "initial-interval 1;\nbackoff-cutoff 2;\n";

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
    let mut lab = Lab::build();
    for i in 0..3 {
        lab.start(i);
    }
    lab.wait("a cluster with a leader", 60, || {
        let o = lab.wwctl("cluster status");
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Leader")
    });
    // As in docs/OPERATIONS.md "Racks".
    lab.wwctl_ok("rack add rack1 --network 10.10.0.0/24 --head 1=10.10.0.1 --head 2=10.10.0.2");
    lab.wwctl_ok(
        "rack add rack2 --network 10.20.0.0/24 --relayed --router 10.20.0.1 --head 2=10.0.0.2 --head 1=10.0.0.1",
    );
    let list = lab.wwctl_ok("rack list");
    assert!(
        list.contains("rack1") && list.contains("1=10.10.0.1,2=10.10.0.2"),
        "{list}"
    );
    let (m1, m2) = (lab.c1.mac("c0"), lab.c2.mac("c0"));
    lab.wwctl_ok(&format!(
        "node add n1 --ipaddr 10.10.0.50 --netmask 255.255.255.0 --hwaddr {m1}"
    ));
    lab.wwctl_ok(&format!(
        "node add n2 --ipaddr 10.20.0.50 --netmask 255.255.255.0 --hwaddr {m2}"
    ));
    lab.wait("both heads reporting the racks they serve", 30, || {
        lab.health(1).contains("\"racks\":[\"rack1\",\"rack2\"]")
            && lab.health(2).contains("\"racks\":[\"rack1\",\"rack2\"]")
            && lab.health(2).contains("\"1\":[\"rack1\",\"rack2\"]")
            && lab.health(1).contains("\"2\":[\"rack1\",\"rack2\"]")
    });

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
    let mut lab = Lab::build();
    for i in 0..3 {
        lab.start(i);
    }
    lab.wait("a cluster with a leader", 60, || {
        let o = lab.wwctl("cluster status");
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Leader")
    });
    lab.wwctl_ok("rack add rack1 --network 10.10.0.0/24 --head 1=10.10.0.1 --head 2=10.10.0.2");
    let m1 = lab.c1.mac("c0");
    lab.wwctl_ok(&format!(
        "node add n1 --ipaddr 10.10.0.50 --netmask 255.255.255.0 --hwaddr {m1}"
    ));
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
