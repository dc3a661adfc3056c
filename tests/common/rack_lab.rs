//! A rack-HA lab of real `wulfd` processes in network namespaces, shared by
//! `tests/it/rack_ha.rs` and `benches/rack_takeover.rs`:
//!
//! ```text
//!   ns sw: bridge brm (management 10.0.0.0/24, wwctl at .254)   bridge br1 (rack1 10.10.0.0/24)
//!          bridge br3 (rack3 10.30.0.0/24)
//!     h1: m0 10.0.0.1, r0 10.10.0.1
//!     h2: m0 10.0.0.2, r0 10.10.0.2, r1 10.30.0.2 (on two racks)
//!     h3: m0 10.0.0.3, r0 10.30.0.3
//!     c1: c0 on br1 (node n1 10.10.0.50)     c3: c0 on br3 (node n3 10.30.0.50)
//!     rt: u0 10.0.0.253 on brm, d0 10.20.0.1 — c2: c0 (node n2 10.20.0.50, relayed rack2)
//! ```
//! Heads are configured from the documented example (`cluster/examples/wulfd.yaml`, only
//! ids, addresses and interface names changed), mutual TLS included: the lab makes its
//! CA with `wwctl cluster pki init` as docs/OPERATIONS.md says, copies `head-<id>/` to
//! each head's `tls.dir` (the default, `<data_dir>/pki`), and talks to the heads with an
//! admin credential of that CA.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use crate::netns::NetNs;

const EXAMPLE: &str = include_str!("../../cluster/examples/wulfd.yaml");

/// The example config for head `id` of this lab: ids, addresses and interface names
/// changed, everything else as documented.
pub fn head_config(id: u64, data_dir: &Path) -> String {
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
    // tls.dir: the default, <data_dir>/pki (the example names the production path).
    m.get_mut(Value::from("tls"))
        .unwrap()
        .as_mapping_mut()
        .unwrap()
        .remove(Value::from("dir"));
    let boot = m.get_mut(Value::from("boot")).unwrap().as_mapping_mut().unwrap();
    let dhcp = boot.get_mut(Value::from("dhcp")).unwrap().as_mapping_mut().unwrap();
    // The rack links and the uplink relays forward to, as the example's comment says;
    // TFTP on the head's address on each of its racks.
    let (ifaces, tftp_on) = match id {
        1 => ("- {name: r0}\n- {name: m0}\n", "[\"10.10.0.1:69\"]"),
        2 => (
            "- {name: r0}\n- {name: r1}\n- {name: m0}\n",
            "[\"10.10.0.2:69\", \"10.30.0.2:69\"]",
        ),
        _ => ("- {name: r0}\n- {name: m0}\n", "[\"10.30.0.3:69\"]"),
    };
    dhcp.insert(Value::from("interfaces"), serde_yaml_ng::from_str(ifaces).unwrap());
    let tftp = boot.get_mut(Value::from("tftp")).unwrap().as_mapping_mut().unwrap();
    tftp.insert(Value::from("listen"), serde_yaml_ng::from_str(tftp_on).unwrap());
    serde_yaml_ng::to_string(&v).unwrap()
}

/// `cfg` with `boot.overlays.wwclient` set to `agent`: the node agent the `wwclient`
/// overlay ships (a small stand-in where simulated nodes boot; a debug `wwclient` is
/// ~120 MB, in every node's system overlay).
pub fn with_agent(cfg: &str, agent: &Path) -> String {
    use serde_yaml_ng::Value;
    let mut v: Value = serde_yaml_ng::from_str(cfg).unwrap();
    let overlays = v["boot"]["overlays"].as_mapping_mut().unwrap();
    overlays.insert(Value::from("wwclient"), Value::from(agent.display().to_string()));
    serde_yaml_ng::to_string(&v).unwrap()
}

/// A capture of DHCP on one interface (tcpdump -vv), parsed for OFFERs.
pub struct Capture {
    pid: u32,
    log: tempfile::NamedTempFile,
}

impl Capture {
    pub fn start(ns: &NetNs, iface: &str) -> Capture {
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
    pub fn offers(self, ns: &NetNs) -> (Vec<String>, String) {
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

pub struct Lab {
    pub sw: NetNs,
    pub heads: Vec<NetNs>,
    pub c1: NetNs,
    pub rt: NetNs,
    pub c2: NetNs,
    pub c3: NetNs,
    pub dir: tempfile::TempDir,
    pub pids: Vec<Option<u32>>,
    /// Per head: argv put before `timeout … wulfd` (e.g. `env LD_PRELOAD=…`), empty by default.
    pub wrap: Vec<Vec<String>>,
    /// The node agent the heads' `wwclient` overlay ships ([`with_agent`]); None: the
    /// example's default (beside `wulfd`).
    pub agent: Option<std::path::PathBuf>,
}

impl Lab {
    pub fn build() -> Lab {
        let sw = NetNs::new("hsw");
        sw.ok("ip link add brm type bridge && ip link set brm up && ip link add br1 type bridge && ip link set br1 up");
        sw.ok("ip link add br3 type bridge && ip link set br3 up");
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
            // rack3: head 3 (r0) and head 2 (its second rack link, r1).
            let on3 = match id {
                2 => Some("r1"),
                3 => Some("r0"),
                _ => None,
            };
            if let Some(ifname) = on3 {
                h.veth(ifname, Some(&format!("10.30.0.{id}/24")), &sw, &format!("s{id}"), None);
                sw.ok(&format!("ip link set s{id} master br3"));
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
        let c3 = NetNs::new("hc3");
        c3.veth("c0", None, &sw, "cp3", None);
        sw.ok("ip link set cp3 master br3");
        let dir = tempfile::tempdir().unwrap();
        // The cluster CA and the founders' certificates, as an operator makes them.
        let pki = dir.path().join("pki");
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_wwctl"))
            .args(["cluster", "pki", "init", "--ids", "1,2,3", "--out"])
            .arg(&pki)
            .output()
            .unwrap();
        assert!(o.status.success(), "pki init: {}", String::from_utf8_lossy(&o.stderr));
        // The lab's operator: an admin credential of that CA (made here, not with
        // `credentials add --local`, which records it through a running cluster).
        let ca = wulfpack::pki::load_ca(&pki).unwrap();
        let issued = ca.issue("lab", wulfpack::pki::Role::Admin, 2).unwrap();
        wulfpack::pki::CredFiles::operator(&dir.path().join("operator"), "lab")
            .write(&ca.cert_pem, &issued)
            .unwrap();
        Lab {
            sw,
            heads,
            c1,
            rt,
            c2,
            c3,
            dir,
            pids: vec![None; 3],
            wrap: vec![vec![]; 3],
            agent: None,
        }
    }

    /// The lab operator's certificate (`wwctl --cert`; the key and CA beside it).
    pub fn cert(&self) -> std::path::PathBuf {
        self.dir.path().join("operator/lab.crt")
    }

    /// How the admin API client dials the heads with the lab operator's credential.
    pub fn dialer(&self) -> wulfpack::pki::tls::Dialer {
        let f = wulfpack::pki::CredFiles::operator(&self.dir.path().join("operator"), "lab");
        let (ca, cert, key) = f.read().unwrap();
        wulfpack::pki::tls::Dialer::tls(wulfpack::pki::tls::client_config(&ca, Some((&cert, &key))).unwrap())
    }

    /// Build the lab, start the three heads and wait for a leader.
    pub fn up() -> Lab {
        let mut lab = Lab::build();
        for i in 0..3 {
            lab.start(i);
        }
        lab.wait("a cluster with a leader", 60, || {
            let o = lab.wwctl("cluster status");
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Leader")
        });
        lab
    }

    /// rack1 (heads 1 then 2) and its node n1 (client c1's MAC), as docs/OPERATIONS.md
    /// "Racks" shows; returns n1's MAC.
    pub fn rack1_with_n1(&self) -> String {
        self.wwctl_ok("rack add rack1 --network 10.10.0.0/24 --head 1=10.10.0.1 --head 2=10.10.0.2");
        let mac = self.c1.mac("c0");
        self.wwctl_ok(&format!(
            "node add n1 --ipaddr 10.10.0.50 --netmask 255.255.255.0 --hwaddr {mac}"
        ));
        mac
    }

    pub fn start(&mut self, i: usize) {
        let id = i as u64 + 1;
        let cfg = self.dir.path().join(format!("wulfd{id}.yaml"));
        let data = self.dir.path().join(format!("data{id}"));
        let mut text = head_config(id, &data);
        if let Some(agent) = &self.agent {
            text = with_agent(&text, agent);
        }
        std::fs::write(&cfg, text).unwrap();
        // head-<id>/ of `pki init` into the head's tls.dir, once (a restart keeps it).
        if !data.join("pki/head.crt").exists() {
            std::fs::create_dir_all(&data).unwrap();
            let o = std::process::Command::new("cp")
                .arg("-a")
                .arg(self.dir.path().join(format!("pki/head-{id}")))
                .arg(data.join("pki"))
                .output()
                .unwrap();
            assert!(o.status.success(), "copy pki: {}", String::from_utf8_lossy(&o.stderr));
        }
        let log = self.dir.path().join(format!("wulfd{id}.log"));
        let mut argv: Vec<&str> = self.wrap[i].iter().map(String::as_str).collect();
        argv.extend([
            "timeout",
            "600",
            env!("CARGO_BIN_EXE_wulfd"),
            "--config",
            cfg.to_str().unwrap(),
        ]);
        let pid = self.heads[i].spawn(&argv, Some(&log));
        self.pids[i] = Some(pid);
    }

    /// SIGKILL head `i` (its process group: `timeout` and wulfd).
    pub fn kill(&mut self, i: usize) {
        if let Some(pid) = self.pids[i].take() {
            self.heads[i].kill(pid);
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("wulfd{}.log", i + 1))).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        (0..3)
            .map(|i| format!("--- wulfd{} ---\n{}", i + 1, self.log(i)))
            .collect()
    }

    /// `wwctl` from the management bridge against every head.
    pub fn wwctl(&self, args: &str) -> std::process::Output {
        self.sw.sh(&format!(
            "{} --timeout 10 --cert {} --heads 10.0.0.1:9701,10.0.0.2:9701,10.0.0.3:9701 {args}",
            env!("CARGO_BIN_EXE_wwctl"),
            self.cert().display()
        ))
    }

    pub fn wwctl_ok(&self, args: &str) -> String {
        crate::lab_heads::ok_output(args, self.wwctl(args), || self.logs())
    }

    pub fn health(&self, id: u64) -> String {
        crate::lab_heads::health(&self.sw, id)
    }

    pub fn wait(&self, what: &str, secs: u64, f: impl FnMut() -> bool) {
        crate::lab_heads::wait(what, secs, || self.logs(), f)
    }
}

/// Like a PXE ROM: retransmit after about a second, not dhclient's default 10 s.
pub const PXE_LIKE: &str = "initial-interval 1;\nbackoff-cutoff 2;\n";

/// A DHCP client for measurements: from `iface` in `ns` (no address needed), broadcast a
/// DISCOVER for `mac` every 100 ms (`secs` 0, so only a head whose turn it is answers)
/// and complete the exchange with the first OFFER: REQUEST, then ACK. Returns the ACK's
/// server id and when it arrived, or None at `deadline`.
pub fn dora(ns: &NetNs, iface: &str, mac: &str, deadline: Instant) -> Option<(std::net::Ipv4Addr, Instant)> {
    use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};
    use dhcproto::{Decodable, Encodable};
    use std::net::{Ipv4Addr, SocketAddrV4};
    let mac: Vec<u8> = mac.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    let iface = iface.to_owned();
    ns.enter(move || {
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        sock.set_reuse_address(true).unwrap();
        sock.set_broadcast(true).unwrap();
        sock.bind_device(Some(iface.as_bytes())).unwrap();
        sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into()).unwrap();
        let sock: std::net::UdpSocket = sock.into();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
        let xid = 0x5157_0000 | (std::process::id() & 0xffff);
        let u = Ipv4Addr::UNSPECIFIED;
        let msg = |kind: MessageType| {
            let mut m = Message::new_with_id(xid, u, u, u, u, &mac);
            m.set_flags(Flags::default().set_broadcast());
            m.opts_mut().insert(DhcpOption::MessageType(kind));
            m
        };
        let mut buf = [0u8; 1500];
        let mut sent_request: Option<(Ipv4Addr, Ipv4Addr)> = None;
        let mut next_discover = Instant::now();
        while Instant::now() < deadline {
            if sent_request.is_none() && Instant::now() >= next_discover {
                let _ = sock.send_to(&msg(MessageType::Discover).to_vec().unwrap(), to);
                next_discover = Instant::now() + Duration::from_millis(100);
            }
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                if let Some((server, addr)) = sent_request {
                    // No ACK within 100 ms: ask again.
                    let mut r = msg(MessageType::Request);
                    r.opts_mut().insert(DhcpOption::ServerIdentifier(server));
                    r.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
                    let _ = sock.send_to(&r.to_vec().unwrap(), to);
                }
                continue;
            };
            let Ok(m) = Message::from_bytes(&buf[..n]) else {
                continue;
            };
            if m.xid() != xid {
                continue;
            }
            let server = match m.opts().get(OptionCode::ServerIdentifier) {
                Some(DhcpOption::ServerIdentifier(s)) => *s,
                _ => continue,
            };
            match m.opts().msg_type() {
                Some(MessageType::Offer) if sent_request.is_none() => {
                    let mut r = msg(MessageType::Request);
                    r.opts_mut().insert(DhcpOption::ServerIdentifier(server));
                    r.opts_mut().insert(DhcpOption::RequestedIpAddress(m.yiaddr()));
                    let _ = sock.send_to(&r.to_vec().unwrap(), to);
                    sent_request = Some((server, m.yiaddr()));
                }
                Some(MessageType::Ack) if sent_request.map(|s| s.0) == Some(server) => {
                    return Some((server, Instant::now()));
                }
                Some(MessageType::Nak) => sent_request = None,
                _ => {}
            }
        }
        None
    })
    .join()
    .unwrap()
}
