//! An idle cluster over minutes (issue 10, part 6, "no writes when nothing happens"):
//! three real `wulfd` in namespaces from the documented example (tests/common/rack_lab.rs),
//! DHCP on, two racks — one with a pool, so its heads hold pool blocks and keep them
//! alive — liveness probes running, no client. Counted over the idle window: Raft
//! entries applied (every head), log lines written, and each head's RSS at the start and
//! the end. The window is longer than every timer: the pool keep-alive (every 150 s), the
//! interface re-read (2 s), the liveness probes (0.5 s), the drop summary (60 s).
//!
//! `cargo bench --bench idle` idles 320 s; under `cargo test` 3 s (a smoke test).

#[path = "../tests/common/lab_heads.rs"]
mod lab_heads;
#[path = "../tests/common/netns.rs"]
mod netns;
#[path = "../tests/common/rack_lab.rs"]
mod rack_lab;

#[path = "common/report.rs"]
mod report;

use std::time::{Duration, Instant};

use netns::skip_reason;
use rack_lab::Lab;

/// Applied index of every head, from `wwctl cluster status -o json`.
fn applied(lab: &Lab) -> Vec<u64> {
    let v: serde_json::Value = serde_json::from_str(&lab.wwctl_ok("-o json cluster status")).unwrap();
    v["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["applied"].as_u64().unwrap_or(0))
        .collect()
}

/// RSS in KiB of the `wulfd` under head `i`'s process group (the spawned `timeout` runs it).
fn rss_kib(lab: &Lab, i: usize) -> u64 {
    let Some(pgid) = lab.pids[i] else { return 0 };
    let children = std::fs::read_to_string(format!("/proc/{pgid}/task/{pgid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .find(|st| st.lines().any(|l| l.starts_with("Name:") && l.contains("wulfd")))
        .and_then(|st| {
            st.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let idle = Duration::from_secs(if full { 320 } else { 3 });
    if let Some(why) = skip_reason(&[("ip", "iproute2"), ("curl", "curl")]) {
        eprintln!("SKIP idle benchmark: {why}");
        return;
    }
    let mut lab = Lab::up();
    lab.wwctl_ok(
        "rack add rack1 --network 10.10.0.0/24 --head 1=10.10.0.1 --head 2=10.10.0.2 --pool 10.10.0.200-10.10.0.250",
    );
    lab.wwctl_ok("rack add rack3 --network 10.30.0.0/24 --head 3=10.30.0.3 --head 2=10.30.0.2");
    lab.wait("every head serving its racks, seen by its peers", 60, || {
        lab.health(1).contains("\"racks\":[\"rack1\"]")
            && lab.health(2).contains("\"racks\":[\"rack1\",\"rack3\"]")
            && lab.health(3).contains("\"racks\":[\"rack3\"]")
            && lab.health(2).contains("\"1\":[\"rack1\"]")
            && lab.health(2).contains("\"3\":[\"rack3\"]")
    });
    // Let start-up settle (pool blocks reserved, registrations done).
    std::thread::sleep(Duration::from_secs(3));
    let lines = |lab: &Lab| (0..3).map(|i| lab.log(i).lines().count()).sum::<usize>();
    let (a0, l0) = (applied(&lab), lines(&lab));
    let rss0: Vec<u64> = (0..3).map(|i| rss_kib(&lab, i)).collect();
    let t = Instant::now();
    std::thread::sleep(idle);
    let secs = t.elapsed().as_secs_f64();
    let (a1, l1) = (applied(&lab), lines(&lab));
    let rss1: Vec<u64> = (0..3).map(|i| rss_kib(&lab, i)).collect();
    let written = a1.iter().zip(&a0).map(|(b, a)| b.saturating_sub(*a)).max().unwrap_or(0);
    let logged = l1.saturating_sub(l0);
    let per_min = written as f64 * 60.0 / secs;
    let mib = |k: &[u64]| {
        k.iter()
            .map(|k| format!("{:.0}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    report::record(
        &report::Figure {
            bench: "idle",
            measure: &format!("Raft entries per minute, idle 3-head cluster with DHCP and racks ({secs:.0} s)"),
            unit: "entries/min",
            better: report::Better::Lower,
            wulfpack: per_min,
            spread: None,
            anchor: None,
            goal: "a few per minute",
        },
        full,
    );
    report::record(
        &report::Figure {
            bench: "idle",
            measure: "log lines while idle (3 heads)",
            unit: "lines",
            better: report::Better::Lower,
            wulfpack: logged as f64,
            spread: None,
            anchor: None,
            goal: "none",
        },
        full,
    );
    println!("| what | result | goal |");
    println!("|---|---|---|");
    println!(
        "| Raft entries applied while idle ({secs:.0} s) | {written} ({per_min:.1} per minute) | a few per minute |"
    );
    println!("| log lines written while idle (3 heads) | {logged} | none |");
    println!(
        "| RSS of heads 1 / 2 / 3, start → end of the idle window | {} → {} MiB | no growth |",
        mib(&rss0),
        mib(&rss1)
    );
    if logged > 0 {
        eprintln!("{}", lab.logs());
    }
    for i in 0..3 {
        lab.kill(i);
    }
}
