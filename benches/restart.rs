//! Restart and memory benchmark (issue 7, parts 5 and 6) at 10,000 nodes, before and
//! after 150 bulk `node set` over all of them. Prints a Markdown report for
//! docs/PERFORMANCE.md.
//!
//! 1. **In process** (the state machine alone, no I/O): the cost of applying one bulk
//!    patch of every node (what a restarting head replays per such entry), of encoding
//!    the state (building a snapshot) and of decoding it plus rebuilding the indexes
//!    (loading a snapshot), and the encoded size before and after the history.
//! 2. **Real processes** (three `wulfd` on loopback, sled fsync on, `wwctl` as an
//!    operator runs it): snapshot size on disk and each head's RSS (VmRSS) before and
//!    after the history, then the time from process start to the first successful
//!    `wwctl node set` for a restarted follower and for a restart of all heads.
//!
//! `cargo bench --bench restart` runs the full sizes. Under `cargo test` (no `--bench`
//! argument) it runs tiny sizes as a smoke test of the harness itself.

#[path = "common/nodes.rs"]
mod nodes;
#[path = "../tests/common/proc_cluster.rs"]
mod proc_cluster;
#[path = "common/report.rs"]
mod report;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodes::node;
use proc_cluster::{wait_until, ProcCluster};
use wulfpack::client::Client;
use wulfpack::model::PatchOp;
use wulfpack::state::{Command as Cmd, Kind, Query, Request, Selector, State};

const WULFD: &str = env!("CARGO_BIN_EXE_wulfd");
const WWCTL: &str = env!("CARGO_BIN_EXE_wwctl");

struct Sizes {
    nodes: usize,
    bulk_sets: usize,
}

fn name(i: usize) -> String {
    format!("n{i:05}")
}

fn comment_patch(round: usize) -> Vec<PatchOp> {
    vec![PatchOp::Set {
        path: vec!["comment".into()],
        value: serde_json::Value::String(format!("bulk set {round}")),
    }]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn mb(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Part 1: the state machine alone.
fn in_process(s: &Sizes, line: &mut impl FnMut(String)) {
    let rss_start = rss(std::process::id());
    let mut st = State::default();
    let mut index = 0u64;
    let mut apply = |st: &mut State, id: String, cmd: Cmd| {
        index += 1;
        let r = st.apply(
            index,
            &Request {
                id: Some(id),
                cmd,
                audit: None,
            },
        );
        assert!(r.0.is_ok(), "{r:?}");
        r
    };
    apply(
        &mut st,
        "init".into(),
        Cmd::Init {
            name: "bench".into(),
            default_profile: None,
        },
    );
    for (c, chunk) in (0..s.nodes).collect::<Vec<_>>().chunks(1000).enumerate() {
        let items = chunk.iter().map(|&i| (name(i), node(i))).collect();
        apply(
            &mut st,
            format!("add{c}"),
            Cmd::Add {
                kind: Kind::Node,
                items,
            },
        );
    }
    let size_before = serde_json::to_vec(&st).unwrap().len() as u64;
    let names: Vec<String> = (0..s.nodes).map(name).collect();

    // What one copy of each in-memory form costs (RSS of this process grows by it).
    let rss_state = rss(std::process::id()) - rss_start;
    let r0 = rss(std::process::id());
    let copy = st.clone();
    let rss_clone = rss(std::process::id()) - r0;
    let r0 = rss(std::process::id());
    let view = wulfpack::boot::view::BootView::from_state(&st, 1);
    let rss_view = rss(std::process::id()) - r0;
    drop((copy, view));
    line(format!(
        "| memory of {} nodes in one process: the state / one clone of it / one boot view | {} / {} / {} |",
        s.nodes,
        mib(rss_state),
        mib(rss_clone),
        mib(rss_view)
    ));

    let mut patch_times = Vec::new();
    for round in 0..s.bulk_sets {
        let cmd = Cmd::Patch {
            kind: Kind::Node,
            names: names.clone(),
            patch: comment_patch(round),
        };
        let t = Instant::now();
        let r = apply(&mut st, format!("set{round}"), cmd);
        patch_times.push(t.elapsed());
        assert_eq!(r.0.unwrap().changed_count(), s.nodes as u64);
    }
    let t = Instant::now();
    let json = serde_json::to_vec(&st).unwrap();
    let encode = t.elapsed();
    let t = Instant::now();
    let mut back: State = serde_json::from_slice(&json).unwrap();
    let decode = t.elapsed();
    let t = Instant::now();
    back.rebuild_index();
    let rebuild = t.elapsed();
    assert!(back == st);

    line(format!(
        "| apply one bulk patch of {} nodes (state machine only, median of {}) | {} |",
        s.nodes,
        patch_times.len(),
        ms(median(patch_times))
    ));
    line(format!(
        "| encode the state (snapshot build) / decode / rebuild indexes at {} nodes | {} / {} / {} |",
        s.nodes,
        ms(encode),
        ms(decode),
        ms(rebuild)
    ));
    line(format!(
        "| encoded state at {} nodes: no history / after {} bulk sets | {} / {} ({:.2}×) |",
        s.nodes,
        s.bulk_sets,
        mb(size_before),
        mb(json.len() as u64),
        json.len() as f64 / size_before as f64
    ));
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let s = if full {
        Sizes {
            nodes: 10_000,
            // Fewer for quick comparisons; the report names the count.
            bulk_sets: std::env::var("WULFPACK_BENCH_BULK_SETS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(150),
        }
    } else {
        Sizes {
            nodes: 300,
            bulk_sets: 3,
        }
    };
    let mut report = String::new();
    let mut line = |s: String| {
        println!("{s}");
        report.push_str(&s);
        report.push('\n');
    };
    line(format!(
        "restart benchmark ({} mode): {} nodes, {} bulk sets, {} cores",
        if full { "full" } else { "smoke" },
        s.nodes,
        s.bulk_sets,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    ));
    if std::env::var_os("WULFPACK_BENCH_PROCESSES_ONLY").is_none() {
        in_process(&s, &mut line);
    }
    if std::env::var_os("WULFPACK_BENCH_IN_PROCESS_ONLY").is_none() {
        real_processes(&s, &mut line);
    }
    let _ = report;
}

/// VmRSS of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// One figure of this benchmark (recorded in full runs only).
fn fig(measure: &str, unit: &str, v: f64, spread: Option<(f64, f64)>, goal: &str) {
    report::record(
        &report::Figure {
            bench: "restart",
            measure,
            unit,
            better: report::Better::Lower,
            wulfpack: v,
            spread,
            anchor: None,
            goal,
        },
        std::env::args().any(|a| a == "--bench"),
    );
}

/// Max and min of per-head RSS, MiB.
fn rss_fig(measure: &str, v: &[u64], goal: &str) {
    let m = |b: u64| b as f64 / (1024.0 * 1024.0);
    let max = v.iter().copied().max().unwrap_or(0);
    let min = v.iter().copied().min().unwrap_or(0);
    fig(measure, "MiB", m(max), Some((m(min), m(max))), goal);
}

fn rss_all(p: &ProcCluster) -> Vec<u64> {
    (0..p.addrs.len()).map(|i| rss(p.pid(i).unwrap())).collect()
}

fn rss_list(v: &[u64]) -> String {
    v.iter().map(|&b| mib(b)).collect::<Vec<_>>().join(", ")
}

/// `s` without ANSI colour sequences (`ESC [ … m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Size of the last snapshot head `i` built, from its log.
fn last_snapshot_bytes(p: &ProcCluster, i: usize) -> Option<u64> {
    strip_ansi(&p.log(i))
        .lines()
        .filter(|l| l.contains("built snapshot") || l.contains("persisted snapshot"))
        .filter_map(|l| l.split("bytes=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .next_back()
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// One `wwctl` call; true if it succeeded.
fn wwctl(heads: &str, timeout_s: u64, args: &[&str]) -> bool {
    Command::new(WWCTL)
        .arg("--heads")
        .arg(heads)
        .arg("--timeout")
        .arg(timeout_s.to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|st| st.success())
}

/// Time from `since` until a `wwctl node set` through `heads` succeeds (polled, each try
/// bounded by its own `--timeout`); panics after `limit`.
fn first_write(heads: &str, since: Instant, limit: Duration, comment: &str) -> Duration {
    loop {
        if wwctl(heads, 2, &["node", "set", "n00000", "-y", "--comment", comment]) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < limit,
            "no write accepted through {heads} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn leader(client: &Client, rt: &tokio::runtime::Runtime) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(st) = rt.block_on(client.cluster_status()) {
            if let Some(h) = st
                .heads
                .iter()
                .find(|h| h.status.as_ref().is_some_and(|s| s.role == "Leader"))
            {
                return h.id as usize - 1;
            }
        }
        assert!(Instant::now() < deadline, "no leader within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Part 2: three real heads.
fn real_processes(s: &Sizes, line: &mut impl FnMut(String)) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter(); // the client's channels need a runtime to be made in
                             // Extra head configuration, to compare settings (e.g. "cache_mib: 16\n").
    let extra = std::env::var("WULFPACK_BENCH_HEAD_YAML").unwrap_or_default();
    let mut p = ProcCluster::start(Path::new(WULFD), 3, &extra);
    let all = p.all_heads();
    let client = Client::new(p.addrs.clone()).with_deadline(Duration::from_secs(60));
    let probe = Query::profiles(Selector::All);
    wait_until(30, "cluster ready", || {
        rt.block_on(async { client.read(&probe, true).await.is_ok_and(|r| !r.profiles.is_empty()) })
    });
    let rss_empty = rss_all(&p);
    for chunk in (0..s.nodes).collect::<Vec<_>>().chunks(1000) {
        let items = chunk.iter().map(|&i| (name(i), node(i))).collect();
        rt.block_on(client.write(Cmd::Add {
            kind: Kind::Node,
            items,
        }))
        .unwrap();
    }
    // Settle: let followers apply and any snapshot finish.
    std::thread::sleep(Duration::from_secs(3));
    let rss_before = rss_all(&p);
    let snap_before = last_snapshot_bytes(&p, 0);
    let hostlist = format!("n[00000-{:05}]", s.nodes - 1);
    let t = Instant::now();
    for round in 0..s.bulk_sets {
        assert!(
            wwctl(
                &all,
                60,
                &["node", "set", &hostlist, "-y", "--comment", &format!("bulk {round}")]
            ),
            "bulk set {round} failed"
        );
    }
    let bulk_time = t.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let rss_after = rss_all(&p);
    let snap_after = last_snapshot_bytes(&p, 0);
    let data_after: Vec<u64> = (0..3)
        .map(|i| dir_bytes(&p.dir.path().join(format!("data{i}"))))
        .collect();

    rss_fig(
        &format!("RSS per head (max), {} nodes", s.nodes),
        &rss_before,
        "≤ 150 MiB",
    );
    rss_fig(
        &format!("RSS per head (max), {} nodes after {} bulk sets", s.nodes, s.bulk_sets),
        &rss_after,
        "",
    );
    line(format!(
        "| RSS per head: empty / {} nodes / after {} bulk sets | {} / {} / {} |",
        s.nodes,
        s.bulk_sets,
        rss_list(&rss_empty),
        rss_list(&rss_before),
        rss_list(&rss_after)
    ));
    line(format!(
        "| {} bulk `wwctl node set` of {} nodes | {} total, {} each |",
        s.bulk_sets,
        s.nodes,
        ms(bulk_time),
        ms(bulk_time / s.bulk_sets as u32)
    ));
    let show = |b: Option<u64>| b.map_or("none built".to_string(), mb);
    line(format!(
        "| last snapshot of head 1 after loading / after the bulk sets; data dirs after | {} / {}; {} |",
        show(snap_before),
        show(snap_after),
        data_after.iter().map(|&b| mb(b)).collect::<Vec<_>>().join(", ")
    ));

    // Follower restart (SIGKILL, so no farewell snapshot): start → first write through it.
    let l = leader(&client, &rt);
    let f = (l + 1) % 3;
    p.kill(f);
    let started = Instant::now();
    p.spawn(f);
    let follower = first_write(&p.addrs[f], started, Duration::from_secs(120), "follower restart");
    let rss_restarted = rss(p.pid(f).unwrap());
    fig(
        "follower restart after the history → first write through it",
        "s",
        follower.as_secs_f64(),
        None,
        "≤ 2 s",
    );
    line(format!(
        "| follower restart after the history: process start → first `wwctl node set` through it | {} (RSS then {}) |",
        ms(follower),
        mib(rss_restarted)
    ));

    // All heads: SIGKILL all, start all, time from the last start to the first write.
    for i in 0..3 {
        p.kill(i);
    }
    for i in 0..3 {
        p.spawn(i);
    }
    let last_started = Instant::now();
    let everyone = first_write(&all, last_started, Duration::from_secs(180), "all restart");
    fig(
        "restart of all heads → first write",
        "s",
        everyone.as_secs_f64(),
        None,
        "≤ 3 s",
    );
    line(format!(
        "| restart of all heads: last process start → first `wwctl node set` | {} |",
        ms(everyone)
    ));
    std::thread::sleep(Duration::from_secs(2));
    line(format!(
        "| RSS per head after the full restart | {} |",
        rss_list(&rss_all(&p))
    ));
}
