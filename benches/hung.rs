//! What a hung head (SIGSTOP: sockets open, nothing answered) costs `wwctl`, with
//! three real `wulfd` processes on loopback (issue 7). Anchor: the same commands
//! against the healthy cluster, in the same run.
//! - a hung follower listed first: wall time of `wwctl node list` / `node set`;
//! - a hung leader listed first: wall time of the first `node set` after the SIGSTOP
//!   (one election), p50/p99 over several rounds.
//!
//! `cargo bench --bench hung` runs the full sizes; under `cargo test` it runs one
//! round of each as a smoke test of the harness.

#[path = "../tests/common/proc_cluster.rs"]
mod proc_cluster;
#[path = "common/report.rs"]
mod report;

use std::path::Path;
use std::time::Duration;

use proc_cluster::{run_wwctl, wait_until, ProcCluster};

const WULFD: &str = env!("CARGO_BIN_EXE_wulfd");
const WWCTL: &str = env!("CARGO_BIN_EXE_wwctl");

fn wwctl(heads: &str, args: &[&str]) -> (bool, String, Duration) {
    let r = run_wwctl(Path::new(WWCTL), heads, args);
    (r.ok(), r.stdout, r.took)
}

fn timed(heads: &str, args: &[&str]) -> Duration {
    let (ok, _, t) = wwctl(heads, args);
    assert!(ok, "wwctl {args:?} failed");
    t
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (runs, rounds) = if full { (21, 10) } else { (1, 1) };
    let p = ProcCluster::start(Path::new(WULFD), 3, "");
    let all = p.all_heads();
    wait_until(30, "cluster initialised", || {
        let (ok, out, _) = wwctl(&all, &["--timeout", "2", "profile", "list"]);
        ok && out.lines().any(|l| l.starts_with("default"))
    });
    timed(&all, &["node", "add", "n[001-100]", "--ipaddr", "10.9.0.1"]);

    let measure = |heads: &str| {
        let mut list = Vec::new();
        let mut set = Vec::new();
        for i in 0..runs {
            list.push(timed(heads, &["node", "list"]));
            set.push(timed(
                heads,
                &["node", "set", "n001", "--comment", &format!("c{i}"), "-y"],
            ));
        }
        (
            pct(&mut list, 0.5),
            pct(&mut list, 0.99),
            pct(&mut set, 0.5),
            pct(&mut set, 0.99),
        )
    };
    let l = p.leader(Path::new(WWCTL));
    let f = (l + 1) % 3;
    let healthy = measure(&p.heads_from(f));
    p.hang(f, true);
    let hung = measure(&p.heads_from(f));
    p.hang(f, false);

    let mut takeover = Vec::new();
    for r in 0..rounds {
        let l = p.leader(Path::new(WWCTL));
        p.hang(l, true);
        takeover.push(timed(
            &p.heads_from(l),
            &["node", "set", "n002", "--comment", &format!("r{r}"), "-y"],
        ));
        p.hang(l, false);
        // Let the old leader rejoin and catch up before the next round.
        wait_until(20, "old leader back", || {
            wwctl(&p.addrs[l], &["--timeout", "2", "node", "list", "-a", "n002"])
                .1
                .contains(&format!("r{r}"))
        });
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "hung-head benchmark ({} mode, {runs} runs per command, {rounds} leader hangs; {cores} cores)",
        if full { "full" } else { "smoke" }
    );
    println!("| measure | healthy (anchor) | hung head listed first | ratio |");
    println!("|---|---|---|---|");
    let row = |what: &str, a: Duration, b: Duration| {
        report::record(
            &report::Figure {
                bench: "hung",
                measure: &format!("{what}, a hung head listed first"),
                unit: "ms",
                better: report::Better::Lower,
                wulfpack: b.as_secs_f64() * 1000.0,
                spread: None,
                anchor: Some(("healthy cluster", a.as_secs_f64() * 1000.0)),
                goal: "",
            },
            full,
        );
        println!(
            "| {what} | {} | {} | {:.2}× |",
            ms(a),
            ms(b),
            b.as_secs_f64() / a.as_secs_f64()
        )
    };
    row("`wwctl node list`, p50", healthy.0, hung.0);
    row("`wwctl node list`, p99", healthy.1, hung.1);
    row("`wwctl node set`, p50", healthy.2, hung.2);
    row("`wwctl node set`, p99", healthy.3, hung.3);
    row(
        "first `node set` after SIGSTOP of the leader, p50",
        healthy.2,
        pct(&mut takeover, 0.5),
    );
    row(
        "first `node set` after SIGSTOP of the leader, p99",
        healthy.3,
        pct(&mut takeover, 0.99),
    );
}
