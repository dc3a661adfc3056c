//! The QEMU rack lab, shared by `tests/it/rack_qemu.rs` and `benches/rack_boot.rs`:
//! three `wulfd` processes in namespaces, configured from the documented example
//! (`cluster/examples/wulfd.yaml`: ids, addresses and interface names changed, plus the
//! node agent's path, a stripped copy of `wwclient`, and `warewulf_conf` for a 3 s
//! update interval), and VMs on taps of the rack bridge.
//!
//! ```text
//!   ns sw: bridge brm (management 10.0.0.0/24, wwctl at .254)   bridge br1 (rack1 10.10.0.0/24)
//!     h1 (A): m0 10.0.0.1, r0 10.10.0.1    h2 (B): m0 10.0.0.2, r0 10.10.0.2
//!     h3 (C): m0 10.0.0.3, r0 10.10.0.3 (on the rack's link; in rack1 only when the
//!     benchmark lists it)
//!     VMs: taps t1, t2 on br1 (nodes n1 10.10.0.50, n2 10.10.0.51)
//! ```
//! [`Lab::ready`] brings it to where a VM can boot: rack1 served by A then B, the image
//! imported through A only, B holding every artifact (so a survivor can serve).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use crate::netns::NetNs;
use crate::qemu_node::image;

const EXAMPLE: &str = include_str!("../../cluster/examples/wulfd.yaml");
const WULFD: &str = env!("CARGO_BIN_EXE_wulfd");
const WWCTL: &str = env!("CARGO_BIN_EXE_wwctl");
const WWCLIENT: &str = env!("CARGO_BIN_EXE_wwclient");
/// The lab's nodes: (name, address, MAC, tap).
pub const NODES: [(&str, &str, &str, &str); 2] = [
    ("n1", "10.10.0.50", "52:54:00:10:0a:32", "t1"),
    ("n2", "10.10.0.51", "52:54:00:10:0a:33", "t2"),
];
/// Every head's cluster address, for `wwctl --heads`.
pub const ALL: &str = "10.0.0.1:9701,10.0.0.2:9701,10.0.0.3:9701";
/// Head A's and head B's cluster addresses.
pub const A: &str = "10.0.0.1:9701";
pub const B: &str = "10.0.0.2:9701";

/// The example config for head `id`: ids, addresses and interface names changed; the
/// node agent is a stripped copy (the debug build is ~100 MB).
pub fn head_config(id: u64, data_dir: &Path, wwclient: &Path, wwconf: &Path) -> String {
    use serde_yaml_ng::Value;
    let mut v: Value = serde_yaml_ng::from_str(EXAMPLE).unwrap();
    let m = v.as_mapping_mut().unwrap();
    m.insert("id".into(), Value::from(id));
    m.insert("data_dir".into(), Value::from(data_dir.display().to_string()));
    m.insert("advertise".into(), Value::from(format!("10.0.0.{id}:9701")));
    let boot: Value = serde_yaml_ng::from_str(
        "- {id: 1, addr: \"10.0.0.1:9701\"}\n- {id: 2, addr: \"10.0.0.2:9701\"}\n- {id: 3, addr: \"10.0.0.3:9701\"}\n",
    )
    .unwrap();
    m.insert("bootstrap".into(), boot);
    // Boot tests, not credentials: plaintext (the rack lab, tests/common/rack_lab.rs, and
    // the chaos suite run the example's mutual TLS).
    m.remove("tls");
    m.insert("insecure".into(), Value::from(true));
    let boot = m.get_mut("boot").unwrap().as_mapping_mut().unwrap();
    let dhcp = boot.get_mut("dhcp").unwrap().as_mapping_mut().unwrap();
    dhcp.insert("interfaces".into(), serde_yaml_ng::from_str("- {name: r0}\n").unwrap());
    let tftp = boot.get_mut("tftp").unwrap().as_mapping_mut().unwrap();
    tftp.insert("listen".into(), Value::from(format!("10.10.0.{id}:69")));
    let overlays = boot.get_mut("overlays").unwrap().as_mapping_mut().unwrap();
    overlays.insert("wwclient".into(), Value::from(wwclient.display().to_string()));
    // wwclient's update interval (3 s, as overlay_qemu.rs): the test image brings its
    // network up after wwinit starts wwclient, so the first fetch fails and the next
    // one, an interval later, is the one that counts.
    overlays.insert("warewulf_conf".into(), Value::from(wwconf.display().to_string()));
    serde_yaml_ng::to_string(&v).unwrap()
}

pub struct Lab {
    pub sw: NetNs,
    pub heads: Vec<NetNs>,
    pub dir: tempfile::TempDir,
    pub pids: Vec<Option<u32>>,
    /// The node agent the heads serve (a stripped copy of `wwclient`).
    pub agent: PathBuf,
    /// The image tree imported through A.
    pub tree: PathBuf,
    /// Seconds each `wulfd` may live (`timeout`), a bound should the caller hang.
    pub lifetime_secs: u64,
}

impl Lab {
    /// The namespaces and links, the image tree (`vmlinuz` and busybox) and the agent;
    /// no head started yet. Each `wulfd` lives at most `lifetime_secs`.
    pub fn build(vmlinuz: &Path, lifetime_secs: u64) -> Lab {
        let sw = NetNs::new("qsw");
        sw.ok("ip link add brm type bridge && ip link set brm up && ip link add br1 type bridge && ip link set br1 up");
        sw.ok("ip addr add 10.0.0.254/24 dev brm");
        let heads: Vec<NetNs> = (1..=3).map(|i| NetNs::new(&format!("qh{i}"))).collect();
        for (i, h) in heads.iter().enumerate() {
            let id = i + 1;
            h.veth("m0", Some(&format!("10.0.0.{id}/24")), &sw, &format!("m{id}"), None);
            sw.ok(&format!("ip link set m{id} master brm"));
            h.veth("r0", Some(&format!("10.10.0.{id}/24")), &sw, &format!("r{id}"), None);
            sw.ok(&format!("ip link set r{id} master br1"));
        }
        // The VMs' links: taps on the rack bridge, inside the switch namespace.
        for t in ["t1", "t2"] {
            sw.ok(&format!(
                "ip tuntap add {t} mode tap && ip link set {t} master br1 && ip link set {t} up"
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        image(&tree, vmlinuz);
        let agent = dir.path().join("wwclient");
        let out = std::process::Command::new("strip")
            .arg("-o")
            .arg(&agent)
            .arg(WWCLIENT)
            .output()
            .unwrap();
        assert!(out.status.success(), "strip: {}", String::from_utf8_lossy(&out.stderr));
        Lab {
            sw,
            heads,
            dir,
            pids: vec![None; 3],
            agent,
            tree,
            lifetime_secs,
        }
    }

    /// Start head `i` (0-based; its log file starts afresh).
    pub fn start(&mut self, i: usize) {
        let id = i as u64 + 1;
        let cfg = self.dir.path().join(format!("wulfd{id}.yaml"));
        let data = self.dir.path().join(format!("data{id}"));
        let wwconf = self.dir.path().join("warewulf.conf");
        std::fs::write(&wwconf, "warewulf:\n  update interval: 3\n").unwrap();
        std::fs::write(&cfg, head_config(id, &data, &self.agent, &wwconf)).unwrap();
        let log = self.dir.path().join(format!("wulfd{id}.log"));
        let pid = self.heads[i].spawn(
            &[
                "timeout",
                &self.lifetime_secs.to_string(),
                WULFD,
                "--config",
                cfg.to_str().unwrap(),
            ],
            Some(&log),
        );
        self.pids[i] = Some(pid);
    }

    /// Start the heads and bring the lab to where a VM can boot: a leader, rack1 served by
    /// A then B, the image `busy` imported through A only, the runtime overlay `rt`, the
    /// nodes of [`NODES`], B holding every artifact (MISSING 0 once it has applied
    /// everything committed so far, else 0 could mean "not heard of the image yet"), and
    /// both heads serving rack1.
    pub fn ready(&mut self) {
        for i in 0..3 {
            self.start(i);
        }
        self.wait("a cluster with a leader", 60, || {
            let o = self.wwctl_at(ALL, "cluster status");
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Leader")
        });
        self.wwctl_ok(
            ALL,
            "rack add rack1 --network 10.10.0.0/24 --head 1=10.10.0.1 --head 2=10.10.0.2",
        );
        // The image enters the cluster through A only.
        let out = self.wwctl_ok(A, &format!("image import {} busy", self.tree.display()));
        assert!(out.contains("Imported image busy"), "{out}");
        let motd = self.dir.path().join("motd.ww");
        std::fs::write(&motd, "motd for {{ Id }}\n").unwrap();
        self.wwctl_ok(ALL, "overlay create rt");
        self.wwctl_ok(ALL, &format!("overlay import -p rt {} /etc/motd.ww", motd.display()));
        for (name, ip, mac, _) in NODES {
            self.wwctl_ok(
                ALL,
                &format!(
                    "node add {name} --image busy --hwaddr {mac} --ipaddr {ip} --netmask 255.255.255.0 \
                     -A console=ttyS0 --system-overlays wwinit,wwclient,hostname --runtime-overlays rt"
                ),
            );
        }
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
        self.wait("head B holding every artifact (MISSING 0)", 120, || {
            let o = self.wwctl_at(ALL, "cluster status -o json");
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) else {
                return false;
            };
            v["heads"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|h| h["id"] == 2 && h["applied"].as_u64().is_some_and(|x| x >= commit) && h["missing_blobs"] == 0)
        });
        self.wait("both heads serving rack1", 60, || {
            self.serves(1, true) && self.serves(2, true)
        });
    }

    /// Whether head `id` reports (`/health`) that it serves rack1 (`yes`) or not.
    pub fn serves(&self, id: u64, yes: bool) -> bool {
        let h = self.health(id);
        if yes {
            h.contains("\"racks\":[\"rack1\"]")
        } else {
            h.contains("\"racks\":[]")
        }
    }

    /// How many lines of head `i`'s log show it sending `stage` to `node`.
    pub fn sends(&self, i: usize, node: &str, stage: &str) -> usize {
        let (node, stage) = (format!("node={node}"), format!("stage={stage}"));
        self.log(i)
            .lines()
            .filter(|l| l.contains(&node) && l.contains(&stage) && l.contains("send"))
            .count()
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
                let tail: Vec<&str> = l.lines().rev().take(40).collect();
                format!(
                    "--- wulfd{} (last lines) ---\n{}\n",
                    i + 1,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    }

    /// `wwctl --heads HEADS ARGS` from the management bridge.
    pub fn wwctl_at(&self, heads: &str, args: &str) -> std::process::Output {
        self.sw.sh(&format!("{WWCTL} --timeout 10 --heads {heads} {args}"))
    }

    pub fn wwctl_ok(&self, heads: &str, args: &str) -> String {
        crate::lab_heads::ok_output(args, self.wwctl_at(heads, args), || self.logs())
    }

    pub fn health(&self, id: u64) -> String {
        crate::lab_heads::health(&self.sw, id)
    }

    pub fn wait(&self, what: &str, secs: u64, f: impl FnMut() -> bool) {
        crate::lab_heads::wait(what, secs, || self.logs(), f)
    }

    /// Bytes head A has sent to `client` on its HTTP port and the client acknowledged,
    /// summed over the open connections (`ss -ti`).
    pub fn acked_to(&self, client: &str) -> u64 {
        let o = self.heads[0].sh(&format!(
            "ss -tinH state established '( sport = :9873 and dst {client} )'"
        ));
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|t| t.strip_prefix("bytes_acked:"))
            .filter_map(|n| n.parse::<u64>().ok())
            .sum()
    }
}

/// The node's row in `wwctl node status` asked of `heads`: (STAGE, SENT, HEAD, the
/// whole row); SENT may hold spaces, so the columns after it are read from the right.
pub fn status_row(lab: &Lab, heads: &str, node: &str) -> Option<(String, String, String, String)> {
    let o = lab.wwctl_at(heads, &format!("node status {node}"));
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text.lines().find(|l| l.starts_with(node))?;
    let row: Vec<&str> = line.split_whitespace().collect();
    if row.len() < 6 {
        return None;
    }
    let sent = row[2..row.len() - 3].join(" ");
    Some((row[1].to_owned(), sent, row[row.len() - 1].to_owned(), line.to_owned()))
}
