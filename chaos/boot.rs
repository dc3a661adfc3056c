//! The boot wave: simulated nodes (`wwsim`, src/sim/) booting on rack1 from namespace
//! c1 while faults are injected, as in `tests/it/wwsim.rs` but against the chaos lab
//! (the example config, mutual TLS, rack1 10.10.0.0/24 served by head 1 then head 2).
//!
//! - Nodes `bootNN` are registered with MACs counting up from [`FIRST_MAC`] and the
//!   addresses 10.10.0.10 + k (below rack1's pool, .100–.199), profile `chaosboot`:
//!   a small image (a 128 KiB kernel, 128 KiB of content), the `wwinit`, `wwclient` and
//!   `hostname` system overlays and a runtime overlay `rt`.
//! - The heads' `wwclient` overlay ships a 64 KiB stand-in agent (the debug `wwclient`
//!   is ~120 MB, in every node's system overlay; the simulated nodes never run it).
//! - In c1, the nodes' addresses are local (AnyIP: one `local A/32 dev lo` route each)
//!   so `wwsim` sends every download from the address the node was leased.
//! - `wwsim` runs with `--until-served`: a node is done at its first runtime overlay, its
//!   agent retrying every second (as `wwclient` does every interval), at most
//!   [`REFRESH_CYCLES`] cycles; power-ons are spread over the fault phase (`--ramp`), and
//!   the run is bounded by `--deadline`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::faults;
use crate::rack_lab::Lab;

pub const FIRST_MAC: &str = "02:c4:b0:00:00:01";
/// At most this many nodes (their addresses stay below rack1's pool).
pub const MAX_NODES: u32 = 80;
/// Agent refresh cycles a node may need before one is served.
pub const REFRESH_CYCLES: u32 = 60;

/// Node `k` (0-based): name, MAC, address.
pub fn node(k: u32) -> (String, String, Ipv4Addr) {
    let mac = wulfpack::sim::nth_mac(wulfpack::sim::parse_mac(FIRST_MAC).unwrap(), k);
    let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    (format!("boot{:02}", k + 1), mac, Ipv4Addr::new(10, 10, 0, 10 + k as u8))
}

/// The stand-in node agent the heads' `wwclient` overlay ships (set before they start).
pub fn agent(lab: &Lab) -> PathBuf {
    let p = lab.dir.path().join("wwclient-standin");
    std::fs::write(&p, vec![b'#'; 64 * 1024]).unwrap();
    p
}

/// Seeded bytes for the image tree.
fn bytes(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Register `n` nodes with their image and overlays, make their addresses local in c1,
/// and wait until every head holds every artifact (so a surviving head can serve).
pub fn prepare(lab: &Lab, n: u32) {
    assert!(n <= MAX_NODES, "at most {MAX_NODES} boot nodes");
    let d = lab.dir.path();
    let tree = d.join("boot-tree");
    for sub in ["boot", "bin", "etc"] {
        std::fs::create_dir_all(tree.join(sub)).unwrap();
    }
    std::fs::write(tree.join("boot/vmlinuz-6.1.0-chaos"), bytes(128 * 1024, 7)).unwrap();
    std::fs::write(tree.join("bin/payload"), bytes(128 * 1024, 11)).unwrap();
    std::fs::write(tree.join("etc/os-release"), "NAME=chaosboot\n").unwrap();
    let out = lab.wwctl_ok(&format!("image import {} chaosboot", tree.display()));
    assert!(out.contains("Imported image chaosboot"), "{out}");
    let motd = d.join("motd.ww");
    std::fs::write(&motd, "motd for {{ Id }}\n").unwrap();
    lab.wwctl_ok("overlay create rt");
    lab.wwctl_ok(&format!("overlay import -p rt {} /etc/motd.ww", motd.display()));
    let mut conf = String::from(
        "nodeprofiles:\n  chaosboot:\n    image name: chaosboot\n    system overlay: [wwinit, wwclient, hostname]\n    \
         runtime overlay: [rt]\n    kernel: {args: [quiet]}\n    network devices:\n      default: {netmask: 255.255.255.0}\nnodes:\n",
    );
    for k in 0..n {
        let (name, mac, ip) = node(k);
        conf.push_str(&format!(
            "  {name}:\n    profiles: [chaosboot]\n    network devices:\n      default: {{hwaddr: \"{mac}\", ipaddr: {ip}}}\n"
        ));
    }
    let file = d.join("boot-nodes.conf");
    std::fs::write(&file, conf).unwrap();
    lab.wwctl_ok(&format!("node import {} -y", file.display()));
    // AnyIP in c1: each node address local, the rack reached over c0.
    let routes: String = std::iter::once("route add 10.10.0.0/24 dev c0\n".to_owned())
        .chain((0..n).map(|k| format!("route add local {}/32 dev lo\n", node(k).2)))
        .collect();
    let batch = d.join("boot-routes.batch");
    std::fs::write(&batch, routes).unwrap();
    lab.c1.ok(&format!("ip -batch {}", batch.display()));
    let status = || -> Option<serde_json::Value> {
        serde_json::from_slice(&faults::wwctl(lab, 5, "cluster status -o json").stdout).ok()
    };
    let commit = status()
        .and_then(|v| v["heads"].as_array()?.iter().filter_map(|h| h["commit"].as_u64()).max())
        .unwrap_or(0);
    lab.wait("every head holding every artifact (MISSING 0)", 120, || {
        let heads = status()
            .and_then(|v| v["heads"].as_array().cloned())
            .unwrap_or_default();
        heads.len() == 3
            && heads
                .iter()
                .all(|h| h["applied"].as_u64().is_some_and(|x| x >= commit) && h["missing_blobs"] == 0)
    });
}

/// A running wave.
pub struct Wave {
    pub pid: u32,
    pub json: PathBuf,
    pub log: PathBuf,
    pub count: u32,
    /// When wwsim started, on the scenario's clock.
    pub offset_s: f64,
    /// When its `--deadline` passes.
    pub ends: Instant,
}

/// Start `wwsim` in c1 for `n` nodes: power-ons spread over `ramp`, the whole run
/// bounded by `deadline`.
pub fn start(lab: &Lab, n: u32, seed: u64, ramp: Duration, deadline: Duration, t0: Instant) -> Wave {
    let d = lab.dir.path();
    let (json, log) = (d.join("wwsim.json"), d.join("wwsim.log"));
    let cmd = format!(
        "{} --iface c0 --macs {FIRST_MAC} --count {n} --seed {seed} --ramp {}ms --deadline {} \
         --refreshes {REFRESH_CYCLES} --until-served --interval 1s --http-timeout 10s --json {}",
        env!("CARGO_BIN_EXE_wwsim"),
        ramp.as_millis(),
        deadline.as_secs(),
        json.display()
    );
    // Bounded by its own --deadline; `timeout` only in case it is not.
    let limit = (deadline.as_secs() + 30).to_string();
    let argv: Vec<&str> = ["timeout", &limit].into_iter().chain(cmd.split_whitespace()).collect();
    let offset_s = t0.elapsed().as_secs_f64();
    let pid = lab.c1.spawn(&argv, Some(&log));
    Wave {
        pid,
        json,
        log,
        count: n,
        offset_s,
        ends: Instant::now() + deadline,
    }
}

/// Wait for `wwsim` to end (its deadline at the latest) and read its report; Err with
/// what it printed when there is none. (The scenario's report keeps both files.)
pub fn finish(lab: &Lab, w: &Wave) -> Result<serde_json::Value, String> {
    let wait = w.ends.saturating_duration_since(Instant::now()) + Duration::from_secs(15);
    let st = lab.c1.wait(w.pid, wait);
    if st.is_none() {
        lab.c1.kill(w.pid);
    }
    let out = std::fs::read_to_string(&w.log).unwrap_or_default();
    let tail: Vec<&str> = out.lines().rev().take(5).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
    let text = std::fs::read_to_string(&w.json).map_err(|e| format!("no wwsim report ({e}); wwsim said: {tail}"))?;
    serde_json::from_str(&text).map_err(|e| format!("wwsim report unreadable ({e}); wwsim said: {tail}"))
}
