//! The `wwsim` lab, shared by `tests/it/wwsim.rs` (and a storm benchmark): three real
//! `wulfd` heads on one rack, configured from the documented example (through
//! `rack_qemu_lab::head_config`: ids, addresses, interface names, the node agent's path
//! and `warewulf_conf` changed), and one namespace of simulated nodes.
//!
//! ```text
//!   ns sw: bridge brm (management 10.0.0.0/24, wwctl at .254)   bridge br1 (rack1 10.10.0.0/16)
//!     h1, h2, h3: m0 10.0.0.N/24, r0 10.10.0.N/16     rack1 served by 1, then 2, then 3
//!     sim: c0 on br1, no address; `10.10.0.0/16 dev c0` and the AnyIP route
//!          `local 10.10.64.0/18 dev lo`: every node address is local here, so the
//!          kernel answers ARP for it on c0 and sockets bind to it
//!   nodes simNNNNN: MAC 02:00:0a:0a:HH:LL, address 10.10.64.0 + N (N = 1..16382)
//! ```
//! The node agent the `wwclient` overlay ships is a 64 KiB stand-in (the simulated
//! nodes never run it, and the debug `wwclient` is ~100 MB); `update interval` is 1 s,
//! so the agents' `wwclient.conf` says `interval = 1s`.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::netns::NetNs;
use crate::rack_qemu_lab::head_config;

const WULFD: &str = env!("CARGO_BIN_EXE_wulfd");
const WWCTL: &str = env!("CARGO_BIN_EXE_wwctl");
pub const WWSIM: &str = env!("CARGO_BIN_EXE_wwsim");
/// Every head's cluster address, for `wwctl --heads`.
pub const ALL: &str = "10.0.0.1:9701,10.0.0.2:9701,10.0.0.3:9701";
/// The first simulated node's MAC.
pub const FIRST_MAC: &str = "02:00:0a:0a:00:01";

/// Node `i`'s (1-based) MAC and address.
pub fn node(i: u32) -> (String, Ipv4Addr) {
    let mac = format!("02:00:0a:0a:{:02x}:{:02x}", i >> 8, i & 0xff);
    (mac, Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 10, 64, 0)) + i))
}

pub struct SimLab {
    pub sw: NetNs,
    pub heads: Vec<NetNs>,
    /// Where `wwsim` runs.
    pub sim: NetNs,
    pub dir: tempfile::TempDir,
    pub pids: Vec<Option<u32>>,
    /// Seconds each `wulfd` may live (`timeout`), a bound should the caller hang.
    pub lifetime_secs: u64,
}

impl SimLab {
    /// Namespaces and links; no head started.
    pub fn build() -> SimLab {
        let sw = NetNs::new("ssw");
        sw.ok("ip link add brm type bridge && ip link set brm up && ip link add br1 type bridge && ip link set br1 up");
        sw.ok("ip addr add 10.0.0.254/24 dev brm");
        let heads: Vec<NetNs> = (1..=3).map(|i| NetNs::new(&format!("sh{i}"))).collect();
        for (i, h) in heads.iter().enumerate() {
            let id = i + 1;
            h.veth("m0", Some(&format!("10.0.0.{id}/24")), &sw, &format!("m{id}"), None);
            sw.ok(&format!("ip link set m{id} master brm"));
            h.veth("r0", Some(&format!("10.10.0.{id}/16")), &sw, &format!("r{id}"), None);
            sw.ok(&format!("ip link set r{id} master br1"));
        }
        let sim = NetNs::new("ssim");
        sim.veth("c0", None, &sw, "cs", None);
        sw.ok("ip link set cs master br1");
        sim.ok("ip route add 10.10.0.0/16 dev c0 && ip route add local 10.10.64.0/18 dev lo");
        let dir = tempfile::tempdir().unwrap();
        // The stand-in node agent (a file the wwclient overlay ships; never run).
        std::fs::write(dir.path().join("wwclient"), vec![b'#'; 64 * 1024]).unwrap();
        std::fs::write(dir.path().join("warewulf.conf"), "warewulf:\n  update interval: 1\n").unwrap();
        SimLab {
            sw,
            heads,
            sim,
            dir,
            pids: vec![None; 3],
            lifetime_secs: 300,
        }
    }

    /// Start head `i` (0-based), living at most `lifetime_secs`.
    pub fn start(&mut self, i: usize) {
        let id = i as u64 + 1;
        let d = self.dir.path();
        let cfg = d.join(format!("wulfd{id}.yaml"));
        std::fs::write(
            &cfg,
            head_config(
                id,
                &d.join(format!("data{id}")),
                &d.join("wwclient"),
                &d.join("warewulf.conf"),
            ),
        )
        .unwrap();
        let log = d.join(format!("wulfd{id}.log"));
        let life = self.lifetime_secs.to_string();
        let pid = self.heads[i].spawn(
            &["timeout", &life, WULFD, "--config", cfg.to_str().unwrap()],
            Some(&log),
        );
        self.pids[i] = Some(pid);
    }

    /// A small image tree: a kernel file the import detects, and some content.
    fn image_tree(&self) -> PathBuf {
        let tree = self.dir.path().join("tree");
        for d in ["boot", "bin", "etc"] {
            std::fs::create_dir_all(tree.join(d)).unwrap();
        }
        let bytes = |n: usize, k: u64| -> Vec<u8> {
            let mut x = k;
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        std::fs::write(tree.join("boot/vmlinuz-6.1.0-sim"), bytes(256 * 1024, 7)).unwrap();
        std::fs::write(tree.join("bin/payload"), bytes(256 * 1024, 11)).unwrap();
        std::fs::write(tree.join("etc/os-release"), "NAME=wwsim\n").unwrap();
        tree
    }

    /// Start the heads and bring the lab to where `count` nodes can boot: rack1 served by
    /// heads 1, 2, 3; the image `sim`; the runtime overlay `rt`; the nodes; every head
    /// holding every artifact and serving the rack.
    pub fn ready(&mut self, count: u32) {
        for i in 0..3 {
            self.start(i);
        }
        self.wait("a cluster with a leader", 60, || {
            let o = self.wwctl(ALL, "cluster status");
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Leader")
        });
        self.wwctl_ok(
            ALL,
            "rack add rack1 --network 10.10.0.0/16 --head 1=10.10.0.1 --head 2=10.10.0.2 --head 3=10.10.0.3",
        );
        let tree = self.image_tree();
        let out = self.wwctl_ok(ALL, &format!("image import {} sim", tree.display()));
        assert!(out.contains("Imported image sim"), "{out}");
        let motd = self.dir.path().join("motd.ww");
        std::fs::write(&motd, "motd for {{ Id }}\n").unwrap();
        self.wwctl_ok(ALL, "overlay create rt");
        self.wwctl_ok(ALL, &format!("overlay import -p rt {} /etc/motd.ww", motd.display()));
        let mut conf = String::from(
            "nodeprofiles:\n  default:\n    image name: sim\n    system overlay: [wwinit, wwclient, hostname]\n    \
             runtime overlay: [rt]\n    kernel: {args: [quiet]}\n    network devices:\n      default: {netmask: 255.255.0.0}\nnodes:\n",
        );
        for i in 1..=count {
            let (mac, ip) = node(i);
            conf.push_str(&format!(
                "  sim{i:05}:\n    profiles: [default]\n    network devices:\n      default: {{hwaddr: \"{mac}\", ipaddr: {ip}}}\n"
            ));
        }
        let file = self.dir.path().join("nodes.conf");
        std::fs::write(&file, conf).unwrap();
        self.wwctl_ok(ALL, &format!("node import {} -y", file.display()));
        let commit = {
            let o = self.wwctl_ok(ALL, "cluster status -o json");
            let v: serde_json::Value = serde_json::from_str(&o).unwrap();
            v["heads"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|h| h["commit"].as_u64())
                .max()
                .unwrap()
        };
        self.wait("every head holding every artifact (MISSING 0)", 120, || {
            let o = self.wwctl(ALL, "cluster status -o json");
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) else {
                return false;
            };
            let heads = v["heads"].as_array().cloned().unwrap_or_default();
            heads.len() == 3
                && heads
                    .iter()
                    .all(|h| h["applied"].as_u64().is_some_and(|x| x >= commit) && h["missing_blobs"] == 0)
        });
        self.wait("every head serving rack1", 60, || {
            (1..=3).all(|id| self.health(id).contains("\"racks\":[\"rack1\"]"))
        });
    }

    /// Spawn `wwsim` in the sim namespace for nodes 1..=count, with `extra` flags; its
    /// report goes to `json`, its output to `log`. Returns its pid.
    pub fn wwsim(&self, count: u32, extra: &str, json: &Path, log: &Path) -> u32 {
        let cmd = format!(
            "{WWSIM} --iface c0 --macs {FIRST_MAC} --count {count} --json {} {extra}",
            json.display()
        );
        // Bounded by its own --deadline; `timeout` only in case it is not.
        let argv: Vec<&str> = ["timeout", "1800"].into_iter().chain(cmd.split_whitespace()).collect();
        self.sim.spawn(&argv, Some(log))
    }

    /// Permanent neighbour entries for nodes 1..=count on every head's rack link (the sim
    /// namespace's MAC). Linux's ARP table is shared by all namespaces and capped by
    /// `gc_thresh3` (1024), which only the system's namespace can raise; permanent
    /// entries are exempt from that cap, so a storm of thousands of node addresses fits
    /// without changing the host.
    pub fn pin_neighbours(&self, count: u32) {
        let mac = self.sim.mac("c0");
        let batch: String = (1..=count)
            .map(|i| format!("neigh replace {} lladdr {mac} dev r0 nud permanent\n", node(i).1))
            .collect();
        let file = self.dir.path().join("neigh.batch");
        std::fs::write(&file, batch).unwrap();
        for h in &self.heads {
            h.ok(&format!("ip -batch {}", file.display()));
        }
    }

    /// `VmHWM` (peak RSS) in KiB of head `i`'s `wulfd` (the child of the `timeout` spawned).
    pub fn peak_rss_kib(&self, i: usize) -> u64 {
        let Some(pid) = self.pids[i] else { return 0 };
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        children
            .split_whitespace()
            .filter_map(|c| std::fs::read_to_string(format!("/proc/{c}/status")).ok())
            .find(|st| st.lines().any(|l| l.starts_with("Name:") && l.contains("wulfd")))
            .and_then(|st| {
                st.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
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
            .map(|i| {
                let l = self.log(i);
                let tail: Vec<&str> = l.lines().rev().take(30).collect();
                format!(
                    "--- wulfd{} (last lines) ---\n{}\n",
                    i + 1,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    }

    pub fn wwctl(&self, heads: &str, args: &str) -> std::process::Output {
        self.sw.sh(&format!("{WWCTL} --timeout 10 --heads {heads} {args}"))
    }

    pub fn wwctl_ok(&self, heads: &str, args: &str) -> String {
        crate::lab_heads::ok_output(args, self.wwctl(heads, args), || self.logs())
    }

    pub fn health(&self, id: u64) -> String {
        crate::lab_heads::health(&self.sw, id)
    }

    pub fn wait(&self, what: &str, secs: u64, f: impl FnMut() -> bool) {
        crate::lab_heads::wait(what, secs, || self.logs(), f)
    }
}
