//! Boot storm (issue 11): simulated nodes (`wwsim`, src/sim) powered on at once against
//! three real `wulfd` heads serving one rack in the order 1, 2, 3 (the lab of
//! tests/common/sim_lab.rs, heads configured from the documented example). Each node
//! does DHCP (PXE ROM) → TFTP (iPXE binary) → DHCP (iPXE) → script → kernel → image →
//! system overlay → (runtime overlay refused to iPXE in secure mode) → 2 `wwclient`
//! refreshes, every byte checked against its digest.
//!
//! Rows:
//! 1. **Healthy storm**: N nodes at once: failures (goal 0), time to the last node's
//!    `boot`, nodes/s, per-stage p50/p99, and the anchor: the bytes the nodes received
//!    divided by the loopback TCP bandwidth measured in the same run (one stream,
//!    in-process), i.e. how long the payload alone would take.
//! 2. **Primary SIGKILLed mid-storm**: the same N nodes again (their boot is stateless),
//!    head 1 SIGKILLed once a quarter of them have booted: failures (goal 0) and the
//!    extra time against row 1.
//! 3. **Peak RSS** (`VmHWM`) of each `wulfd` after row 1.
//!
//! `cargo bench --bench boot_storm` runs `BOOT_STORM_NODES` nodes (default 1000);
//! under `cargo test` it is a smoke run of 20. The heads' neighbour entries for the node
//! addresses are made permanent (`SimLab::pin_neighbours`), which keeps a storm of more
//! than 1024 addresses clear of the kernel's shared ARP table cap without changing the
//! host's settings. What this does not do yet (issue 11): two racks, 10,000 nodes as the
//! default, medians of several runs.

#[path = "../tests/common/lab_heads.rs"]
mod lab_heads;
#[path = "../tests/common/netns.rs"]
mod netns;
#[path = "../tests/common/qemu_node.rs"]
mod qemu_node;
#[path = "../tests/common/rack_qemu_lab.rs"]
mod rack_qemu_lab;
#[path = "../tests/common/registry.rs"]
mod registry;
#[path = "common/report.rs"]
mod report;
#[path = "../tests/common/sim_lab.rs"]
mod sim_lab;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::Value;
use sim_lab::SimLab;

/// Loopback TCP bandwidth, one stream, bytes per second (1 GiB in 1 MiB writes).
fn loopback_bandwidth() -> f64 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    let total: usize = 1 << 30;
    let sender = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let buf = vec![7u8; 1 << 20];
        for _ in 0..total / buf.len() {
            s.write_all(&buf).unwrap();
        }
    });
    let mut c = std::net::TcpStream::connect(a).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut got = 0;
    while got < total {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "loopback stream ended early");
        got += n;
    }
    let secs = t.elapsed().as_secs_f64();
    sender.join().unwrap();
    total as f64 / secs
}

/// Run wwsim over nodes 1..=n with `extra`; with `kill_primary`, SIGKILL head 1 once a
/// quarter have booted. Returns the report and the seconds from the kill to the end.
fn storm(lab: &mut SimLab, n: u32, extra: &str, tag: &str, kill_primary: bool) -> (Value, Option<f64>) {
    let json = lab.dir.path().join(format!("{tag}.json"));
    let log = lab.dir.path().join(format!("{tag}.log"));
    let pid = lab.wwsim(n, &format!("{extra} --progress 200ms"), &json, &log);
    let mut killed = None;
    if kill_primary {
        let booted = |text: &str| -> u32 {
            text.lines()
                .rev()
                .find_map(|l| l.split(" booted").next()?.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0)
        };
        lab.wait("a quarter of the nodes booted", 600, || {
            booted(&std::fs::read_to_string(&log).unwrap_or_default()) >= n / 4
        });
        lab.kill(0);
        killed = Some(Instant::now());
    }
    let st = lab.sim.wait(pid, Duration::from_secs(1800));
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(st.is_some(), "wwsim did not finish\n{out}");
    let summary = out.lines().rfind(|l| l.contains(" booted, ")).unwrap_or("(no summary)");
    eprintln!("{tag}: {summary}");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("no report ({e}):\n{out}\n{}", lab.logs())),
    )
    .unwrap();
    (report, killed.map(|k| k.elapsed().as_secs_f64()))
}

/// Why boots failed (before a reboot), grouped by the message up to its first number or
/// address, most frequent first.
fn boot_failures(report: &Value) -> String {
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    for n in report["nodes"].as_array().into_iter().flatten() {
        for f in n["boot_failures"].as_array().into_iter().flatten() {
            let t = f.as_str().unwrap_or_default();
            let cut = t.find(|c: char| c.is_ascii_digit()).unwrap_or(t.len()).min(60);
            *by.entry(t[..cut].trim_end().to_owned()).or_default() += 1;
        }
    }
    let mut v: Vec<(String, u64)> = by.into_iter().collect();
    v.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    if v.is_empty() {
        return "none".into();
    }
    v.iter()
        .take(4)
        .map(|(k, n)| format!("{n}× \"{k}…\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn p(report: &Value, stage: &str) -> String {
    let s = &report["summary"]["stages"][stage];
    format!(
        "{:.0}/{:.0}",
        s["p50"].as_f64().unwrap_or(0.0),
        s["p99"].as_f64().unwrap_or(0.0)
    )
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: u32 = if full {
        std::env::var("BOOT_STORM_NODES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000)
    } else {
        20
    }
    .clamp(1, 16_382);
    if let Some(why) = netns::skip_reason(&[("ip", "iproute2"), ("curl", "curl")]) {
        eprintln!("SKIP boot_storm benchmark: {why}");
        return;
    }
    if !std::path::Path::new("/usr/lib/ipxe/undionly.kpxe").exists() {
        eprintln!("SKIP boot_storm benchmark: /usr/lib/ipxe/undionly.kpxe missing (apt-get install ipxe)");
        return;
    }
    let bw = loopback_bandwidth();
    let mut lab = SimLab::build();
    lab.lifetime_secs = 3600;
    let t = Instant::now();
    lab.ready(n);
    // Not optional: without it, 10,000 addresses overflowed the kernel's ARP table, which
    // all namespaces share (25 of 10,000 nodes booted; docs/PERFORMANCE.md).
    lab.pin_neighbours(n);
    eprintln!("lab ready with {n} nodes in {:.1} s", t.elapsed().as_secs_f64());
    // The smoke run's 20 nodes boot in about a second: spread them over 3 s so that the
    // kill lands mid-storm there too.
    let ramp = if full { "0s" } else { "3s" };
    let common = format!("--concurrency {n} --refreshes 2 --interval 2s --deadline 900 --seed 42 --ramp {ramp}");
    let (healthy, _) = storm(&mut lab, n, &common, "healthy", false);
    let rss: Vec<u64> = (0..3).map(|i| lab.peak_rss_kib(i)).collect();
    let (killed, after_kill) = storm(&mut lab, n, &common, "primary-killed", true);
    let s = &healthy["summary"];
    let k = &killed["summary"];
    let boot = s["boot_secs"].as_f64().unwrap_or(0.0);
    let boot_k = k["boot_secs"].as_f64().unwrap_or(0.0);
    let bytes = s["bytes"].as_u64().unwrap_or(0) as f64;
    let anchor = bytes / bw;
    println!(
        "\nboot storm: {n} simulated nodes, 3 heads on one rack (run of {})",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    let fig = |measure: String, unit: &'static str, better, v: f64, anchor: Option<(&str, f64)>, goal: &str| {
        report::record(
            &report::Figure {
                bench: "boot_storm",
                measure: &measure,
                unit,
                better,
                wulfpack: v,
                spread: None,
                anchor,
                goal,
            },
            full,
        );
    };
    use report::Better::Lower;
    fig(
        format!("boot storm: {n} simulated nodes, 3 heads, time to the last boot"),
        "s",
        Lower,
        boot,
        Some(("payload / loopback bandwidth, same run", anchor)),
        "0 failures",
    );
    fig(
        format!("boot storm: {n} nodes, failures"),
        "nodes",
        Lower,
        s["failed"].as_f64().unwrap_or(0.0),
        None,
        "0",
    );
    fig(
        format!("boot storm: {n} nodes, primary SIGKILLed mid-storm: time to the last boot"),
        "s",
        Lower,
        boot_k,
        Some(("the healthy storm", boot)),
        "0 failures",
    );
    fig(
        format!("boot storm: {n} nodes, primary killed: failures"),
        "nodes",
        Lower,
        k["failed"].as_f64().unwrap_or(0.0),
        None,
        "0",
    );
    fig(
        format!("boot storm: {n} nodes, peak RSS of the busiest head"),
        "MiB",
        Lower,
        rss.iter().copied().max().unwrap_or(0) as f64 / 1024.0,
        None,
        "",
    );
    println!("| what | result | anchor | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| {n} nodes at once: failures | {} of {n} (retries: dhcp {}, tftp {}, http {}, reboots {}) | goal 0 | — |",
        s["failed"], s["retries"]["dhcp"], s["retries"]["tftp"], s["retries"]["http"], s["retries"]["reboots"]
    );
    println!(
        "| time to the last node's `boot` | {boot:.1} s ({:.1} nodes/s) | payload {:.1} MB / loopback {:.2} GB/s = {anchor:.2} s | {:.0}× |",
        s["nodes_per_sec"].as_f64().unwrap_or(0.0),
        bytes / 1e6,
        bw / 1e9,
        if anchor > 0.0 { boot / anchor } else { 0.0 }
    );
    println!(
        "| p50/p99 ms: DHCP ROM, TFTP, DHCP iPXE, script, kernel, image, system, boot, refresh | {}, {}, {}, {}, {}, {}, {}, {}, {} | — | — |",
        p(&healthy, "dhcp_rom"),
        p(&healthy, "tftp"),
        p(&healthy, "dhcp_ipxe"),
        p(&healthy, "script"),
        p(&healthy, "kernel"),
        p(&healthy, "image"),
        p(&healthy, "system"),
        p(&healthy, "boot"),
        p(&healthy, "refresh")
    );
    println!(
        "| primary SIGKILLed once {} had booted: failures | {} of {n} (retries: dhcp {}, tftp {}, http {}, reboots {}) | goal 0 | — |",
        n / 4,
        k["failed"], k["retries"]["dhcp"], k["retries"]["tftp"], k["retries"]["http"], k["retries"]["reboots"]
    );
    println!(
        "| time to the last `boot` with the kill | {boot_k:.1} s ({:.1} s after the kill to the end of the run) | healthy {boot:.1} s | +{:.1} s |",
        after_kill.unwrap_or(0.0),
        boot_k - boot
    );
    println!(
        "| failed boots (rebooted), healthy / killed | {} / {} | — | — |",
        boot_failures(&healthy),
        boot_failures(&killed)
    );
    println!(
        "| wwsim's own cost (healthy storm): CPU, peak RSS | {:.1} CPU s ({:.1} ms per node), {:.0} MiB | — | — |",
        s["sim_cpu_secs"].as_f64().unwrap_or(0.0),
        s["sim_cpu_secs"].as_f64().unwrap_or(0.0) * 1000.0 / f64::from(n),
        s["sim_peak_rss_mib"].as_f64().unwrap_or(0.0)
    );
    println!(
        "| DHCP replies the simulator's socket dropped (UDP receive buffer), healthy / killed | {} / {} | — | — |",
        s["dhcp_port"]["udp_rcvbuf_errors"], k["dhcp_port"]["udp_rcvbuf_errors"]
    );
    println!(
        "| peak RSS of wulfd 1, 2, 3 after the healthy storm | {} MiB | — | — |",
        rss.iter()
            .map(|k| format!("{:.0}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !full {
        assert_eq!(s["failed"], 0, "healthy smoke storm failed");
        assert_eq!(k["failed"], 0, "smoke storm with the primary killed failed");
    }
}
