//! What a run records: one [`NodeRecord`] per simulated node, and the [`Summary`] over
//! them (the one line `wwsim` prints, and the head of its JSON report).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Serialize;

/// Stages of a boot, in order (keys of [`NodeRecord::stages`]).
pub const STAGES: [&str; 9] = [
    "dhcp_rom",
    "tftp",
    "dhcp_ipxe",
    "script",
    "kernel",
    "image",
    "system",
    "runtime",
    "boot",
];

/// One stage that completed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageRecord {
    /// Time from the stage's start to its end (for downloads: the successful one).
    pub ms: f64,
    /// Who answered: the DHCP server id, the TFTP server, the HTTP head (`host:port`).
    pub head: String,
    pub bytes: u64,
}

/// Retries a node needed, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Retries {
    /// DHCP packets sent again after their wait ran out.
    pub dhcp: u32,
    /// TFTP packets sent again.
    pub tftp: u32,
    /// Downloads that failed and were tried on the next head (refusals by policy, like
    /// the runtime overlay to iPXE in secure mode, not counted).
    pub http: u32,
    /// Boots started again from the PXE ROM after a failed one.
    pub reboots: u32,
}

impl Retries {
    pub fn total(&self) -> u32 {
        self.dhcp + self.tftp + self.http + self.reboots
    }
}

/// One runtime-overlay fetch of the node agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RefreshRecord {
    pub ms: f64,
    /// The head that answered (`host:port`), if one did.
    pub head: Option<String>,
    /// 200 (a new archive) or 304 (unchanged); 0 when no head served.
    pub status: u16,
    /// Heads that failed before one served.
    pub failed_heads: u32,
    pub error: Option<String>,
    /// Seconds from the start of the run to this fetch's end (the chaos suite places a
    /// node's arrival at the runtime stage on its fault timeline with it).
    pub at: f64,
}

/// Everything about one simulated node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeRecord {
    pub mac: String,
    /// Option 12 of the ACK: the node's name, for a known node.
    pub hostname: Option<String>,
    /// The address iPXE was leased.
    pub address: Option<Ipv4Addr>,
    /// Reached `boot` in the iPXE script.
    pub booted: bool,
    /// Booted, every refresh served, every digest matched.
    pub ok: bool,
    pub error: Option<String>,
    /// Boots started (1 + reboots).
    pub attempts: u32,
    /// Why each failed boot failed (the node rebooted after each, or gave up after the
    /// last).
    pub boot_failures: Vec<String>,
    pub retries: Retries,
    /// By [`STAGES`] name; `boot` is the time from power-on to the `boot` command.
    pub stages: BTreeMap<&'static str, StageRecord>,
    /// Images the `boot` command had loaded.
    pub images: Vec<String>,
    /// Downloads refused by policy (403), e.g. iPXE's runtime overlay in secure mode.
    pub refused: u32,
    /// Where the agent's heads came from: `wwclient.conf` (in the system overlay) or,
    /// without one, the heads the script downloaded from.
    pub agent_config: Option<String>,
    pub refreshes: Vec<RefreshRecord>,
    /// What the iPXE binary's TFTP bytes were checked against: `head` (the digest the
    /// head gives on `/efiboot/<file>`) or `first_seen` (the first bytes any node got,
    /// where the head does not serve that route); none with `--no-verify`.
    pub tftp_checked_against: Option<&'static str>,
    /// Served bytes that did not match their digest (each: what, from where, why).
    pub digest_mismatches: Vec<String>,
    /// Seconds from the start of the run to this node's power-on.
    pub started_at: f64,
}

impl NodeRecord {
    pub fn http_bytes(&self) -> u64 {
        self.stages
            .iter()
            .filter(|(k, _)| !matches!(**k, "dhcp_rom" | "dhcp_ipxe" | "tftp" | "boot"))
            .map(|(_, s)| s.bytes)
            .sum()
    }
}

/// p50 and p99 of a stage, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    Percentiles {
        n: v.len(),
        p50: at(0.50),
        p99: at(0.99),
        max: v[v.len() - 1],
    }
}

/// The run over all nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub nodes: usize,
    pub booted: usize,
    /// Nodes not [`NodeRecord::ok`].
    pub failed: usize,
    pub retries: Retries,
    /// Addresses leased to more than one MAC (an invariant broken by the heads).
    pub duplicate_addresses: Vec<String>,
    pub digest_mismatches: usize,
    pub refreshes: usize,
    pub refreshes_not_modified: usize,
    /// Per stage (and `refresh`), milliseconds.
    pub stages: BTreeMap<String, Percentiles>,
    /// Bytes received over HTTP and TFTP.
    pub bytes: u64,
    /// Seconds from the start to the last node's `boot`.
    pub boot_secs: f64,
    /// Booted nodes per second over `boot_secs`.
    pub nodes_per_sec: f64,
    /// Seconds the whole run took (refreshes included).
    pub run_secs: f64,
    pub seed: u64,
    /// The shared DHCP port's counters, and this namespace's UDP receive-buffer drops
    /// (`/proc/net/snmp` RcvbufErrors over the run): lost replies cost retransmissions.
    pub dhcp_port: PortCounts,
    /// The simulator's own CPU (user + system seconds, all threads) and peak RSS over
    /// the run: what simulating the storm cost this machine.
    pub sim_cpu_secs: f64,
    pub sim_peak_rss_mib: f64,
    /// First failures, for the summary line.
    pub first_errors: Vec<String>,
}

/// Counters of the shared DHCP port over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PortCounts {
    pub sent: u64,
    pub received: u64,
    pub unmatched: u64,
    pub overflow: u64,
    pub udp_rcvbuf_errors: u64,
}

/// This process's CPU seconds (user + system, all threads; `/proc/self/stat` counts in
/// USER_HZ, which Linux fixes at 100 for `/proc`) and peak RSS in MiB (`VmHWM`).
pub fn own_usage() -> (f64, f64) {
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| {
            // Fields after the command name (which may hold spaces) in parentheses.
            let rest = t.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
            let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            let l = t.lines().find(|l| l.starts_with("VmHWM:"))?;
            l.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0);
    (cpu, rss)
}

/// `RcvbufErrors` of `/proc/net/snmp` (this network namespace's UDP), if readable.
pub fn udp_rcvbuf_errors() -> Option<u64> {
    let t = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = t.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Mark nodes sharing an address as failed, and sum everything up.
pub fn summarize(records: &mut [NodeRecord], run: Duration, seed: u64) -> Summary {
    let mut by_addr: HashMap<Ipv4Addr, Vec<usize>> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        if let Some(a) = r.address {
            by_addr.entry(a).or_default().push(i);
        }
    }
    let mut dups = Vec::new();
    for (addr, idx) in by_addr.iter().filter(|(_, v)| v.len() > 1) {
        let macs: Vec<String> = idx.iter().map(|&i| records[i].mac.clone()).collect();
        dups.push(format!("{addr} leased to {}", macs.join(", ")));
        for &i in idx {
            let r = &mut records[i];
            r.ok = false;
            r.error
                .get_or_insert_with(|| format!("address {addr} was also leased to another MAC"));
        }
    }
    dups.sort();
    let mut s = Summary {
        nodes: records.len(),
        duplicate_addresses: dups,
        seed,
        run_secs: run.as_secs_f64(),
        ..Summary::default()
    };
    let mut per_stage: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in records.iter() {
        s.booted += usize::from(r.booted);
        s.failed += usize::from(!r.ok);
        s.retries.dhcp += r.retries.dhcp;
        s.retries.tftp += r.retries.tftp;
        s.retries.http += r.retries.http;
        s.retries.reboots += r.retries.reboots;
        s.digest_mismatches += r.digest_mismatches.len();
        for (k, st) in &r.stages {
            per_stage.entry((*k).to_owned()).or_default().push(st.ms);
            if *k != "boot" {
                s.bytes += st.bytes;
            }
        }
        if let Some(b) = r.stages.get("boot") {
            s.boot_secs = s.boot_secs.max(r.started_at + b.ms / 1000.0);
        }
        for f in &r.refreshes {
            if f.status != 0 {
                s.refreshes += 1;
                s.refreshes_not_modified += usize::from(f.status == 304);
                per_stage.entry("refresh".into()).or_default().push(f.ms);
            }
        }
        if let Some(e) = &r.error {
            if s.first_errors.len() < 3 {
                s.first_errors.push(format!("{}: {e}", r.mac));
            }
        }
    }
    s.stages = per_stage.into_iter().map(|(k, v)| (k, percentiles(v))).collect();
    s.nodes_per_sec = if s.boot_secs > 0.0 {
        s.booted as f64 / s.boot_secs
    } else {
        0.0
    };
    s
}

impl Summary {
    /// The one line `wwsim` prints.
    pub fn line(&self) -> String {
        let mut out = format!(
            "wwsim: {}/{} booted, {} failed; retries {} (dhcp {}, tftp {}, http {}, reboots {}); \
             {:.1} nodes/s ({:.1} s to the last boot, {:.1} s in all, {:.1} MB)",
            self.booted,
            self.nodes,
            self.failed,
            self.retries.total(),
            self.retries.dhcp,
            self.retries.tftp,
            self.retries.http,
            self.retries.reboots,
            self.nodes_per_sec,
            self.boot_secs,
            self.run_secs,
            self.bytes as f64 / 1e6,
        );
        let stages: Vec<String> = STAGES
            .iter()
            .copied()
            .chain(["refresh"])
            .filter_map(|k| self.stages.get(k).map(|p| format!("{k} {:.0}/{:.0}", p.p50, p.p99)))
            .collect();
        if !stages.is_empty() {
            out.push_str(&format!("; p50/p99 ms: {}", stages.join(", ")));
        }
        if self.refreshes > 0 {
            out.push_str(&format!(
                "; refreshes {} ({} not modified)",
                self.refreshes, self.refreshes_not_modified
            ));
        }
        if self.dhcp_port.udp_rcvbuf_errors + self.dhcp_port.overflow > 0 {
            out.push_str(&format!(
                "; UDP receive drops {} (+{} queue)",
                self.dhcp_port.udp_rcvbuf_errors, self.dhcp_port.overflow
            ));
        }
        if self.digest_mismatches > 0 {
            out.push_str(&format!("; DIGEST MISMATCHES {}", self.digest_mismatches));
        }
        if !self.duplicate_addresses.is_empty() {
            out.push_str(&format!(
                "; DUPLICATE ADDRESSES: {}",
                self.duplicate_addresses.join("; ")
            ));
        }
        if self.sim_cpu_secs > 0.0 {
            out.push_str(&format!(
                "; wwsim used {:.1} CPU s, {:.0} MiB",
                self.sim_cpu_secs, self.sim_peak_rss_mib
            ));
        }
        out.push_str(&format!("; seed {}", self.seed));
        if !self.first_errors.is_empty() {
            out.push_str(&format!("; first errors: {}", self.first_errors.join(" | ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(mac: &str, addr: &str, boot_ms: f64) -> NodeRecord {
        let mut r = NodeRecord {
            mac: mac.into(),
            address: Some(addr.parse().unwrap()),
            booted: true,
            ok: true,
            ..Default::default()
        };
        r.stages.insert(
            "boot",
            StageRecord {
                ms: boot_ms,
                ..Default::default()
            },
        );
        r.stages.insert(
            "kernel",
            StageRecord {
                ms: 5.0,
                head: "10.0.0.1:9873".into(),
                bytes: 100,
            },
        );
        r
    }

    #[test]
    fn own_usage_is_read_from_proc() {
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let (cpu, rss) = own_usage();
        assert!(cpu >= 0.2, "{cpu} CPU s after spinning 0.3 s");
        assert!(rss > 1.0, "{rss} MiB");
    }

    #[test]
    fn percentiles_rates_and_duplicate_addresses() {
        let p = percentiles((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p99, p.max, p.n), (50.0, 99.0, 100.0, 100));
        assert_eq!(percentiles(vec![7.0]).p99, 7.0);
        let mut rs = vec![
            node("m1", "10.0.0.5", 1000.0),
            node("m2", "10.0.0.6", 2000.0),
            node("m3", "10.0.0.5", 500.0),
        ];
        let s = summarize(&mut rs, Duration::from_secs(3), 7);
        assert_eq!((s.nodes, s.booted, s.failed), (3, 3, 2));
        assert_eq!(s.duplicate_addresses, ["10.0.0.5 leased to m1, m3"]);
        assert!(!rs[0].ok && rs[1].ok && !rs[2].ok);
        assert_eq!(s.boot_secs, 2.0);
        assert_eq!(s.nodes_per_sec, 1.5);
        assert_eq!(s.bytes, 300);
        let line = s.line();
        assert!(line.starts_with("wwsim: 3/3 booted, 2 failed"), "{line}");
        assert!(line.contains("DUPLICATE ADDRESSES: 10.0.0.5"), "{line}");
        assert!(line.contains("kernel 5/5"), "{line}");
    }
}
