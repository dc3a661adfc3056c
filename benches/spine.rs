//! Benchmark of the spine (issue 2), with three real `wulfd` processes on loopback
//! (sled fsync on): Raft write latency and throughput, time until writes are
//! accepted again after SIGKILL of the leader, and `wwctl node set` / `node list`
//! at 10,000 nodes. Prints a Markdown report for docs/PERFORMANCE.md.
//!
//! `cargo bench --bench spine` runs the full sizes. `cargo bench --bench spine -- failover`
//! runs only the failover rounds (30 SIGKILLs of the leader, p50/p99 and how many needed
//! more than one election; `SPINE_SLOW_LOGS=DIR` keeps the heads' logs of rounds over 2 s);
//! `SPINE_FAILOVER_WRITERS=N` keeps N writers busy through the
//! kills (default 0). `SPINE_HEAD_YAML` is appended to every head's config, to try
//! other timings (e.g. `SPINE_HEAD_YAML=$'raft:\n  heartbeat_ms: 150\n'`). Under `cargo
//! test` (no `--bench` argument) it runs tiny sizes as a smoke test of the harness itself.

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
use wulfpack::state::{Command as Cmd, Kind, Query, Selector};

const WULFD: &str = env!("CARGO_BIN_EXE_wulfd");
const WWCTL: &str = env!("CARGO_BIN_EXE_wwctl");

struct Sizes {
    seq_writes: usize,
    par_writers: usize,
    par_writes_each: usize,
    nodes: usize,
    failovers: usize,
    cli_runs: usize,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn wwctl(heads: &str, args: &[&str]) -> Duration {
    let t = Instant::now();
    let st = Command::new(WWCTL)
        .arg("--heads")
        .arg(heads)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "wwctl {args:?} failed");
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The highest Raft term any reachable head reports.
async fn max_term(client: &Client) -> u64 {
    let st = client.cluster_status().await.unwrap();
    st.heads
        .iter()
        .filter_map(|h| h.status.as_ref().map(|s| s.term))
        .max()
        .unwrap_or(0)
}

/// Wait (≤ 30 s) until every head answers and all have applied the same index.
async fn all_caught_up(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(st) = client.cluster_status().await {
            let applied: Vec<u64> = st
                .heads
                .iter()
                .filter_map(|h| h.status.as_ref().map(|s| s.applied_index))
                .collect();
            if applied.len() == st.heads.len() && applied.iter().all(|a| *a == applied[0]) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("heads did not catch up within 30 s");
}

/// SIGKILL the leader `rounds` times; per round, the time until a write sent to the two
/// survivors is acknowledged, and how many terms it took (1 = one election; more = a
/// split vote or a failed election).
async fn failovers(p: &mut ProcCluster, client: &Client, rounds: usize, writers: usize) -> Vec<(Duration, u64)> {
    let mut out = Vec::new();
    // Optional background load: writers that go on through every kill (as an operator's
    // scripts would), so survivors' logs differ and fsyncs compete with vote fsyncs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..writers)
        .map(|w| {
            let c = Client::new(p.addrs.clone()).with_deadline(Duration::from_secs(30));
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = c
                        .write(Cmd::Add {
                            kind: Kind::Node,
                            items: vec![(format!("load{w}-{i}"), node(3_000_000 + w * 100_000 + i))],
                        })
                        .await;
                    i += 1;
                }
                i
            })
        })
        .collect();
    for round in 0..rounds {
        all_caught_up(client).await;
        let l = leader(client).await;
        let term_before = max_term(client).await;
        let survivors: Vec<String> = (0..3).filter(|i| *i != l).map(|i| p.addrs[i].clone()).collect();
        let c = Client::new(survivors).with_deadline(Duration::from_secs(30));
        let killed = Instant::now();
        p.kill(l);
        c.write(Cmd::Add {
            kind: Kind::Node,
            items: vec![(format!("failover{round}"), node(2_000_000 + round))],
        })
        .await
        .unwrap();
        let gap = killed.elapsed();
        let terms = max_term(&c).await - term_before;
        eprintln!("failover round {round}: {} ({terms} term(s))", ms(gap));
        if let (true, Ok(dir)) = (gap > Duration::from_secs(2), std::env::var("SPINE_SLOW_LOGS")) {
            // Keep the heads' logs of a slow round to see why (e.g. with RUST_LOG=openraft=info).
            let dir = Path::new(&dir).join(format!("round{round}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..3 {
                std::fs::write(dir.join(format!("head{}.log", i + 1)), p.log(i)).unwrap();
            }
        }
        out.push((gap, terms));
        p.spawn(l);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in load {
        total += t.await.unwrap();
    }
    if writers > 0 {
        eprintln!("{writers} background writers made {total} writes");
    }
    all_caught_up(client).await;
    out
}

fn failover_line(rounds: &[(Duration, u64)], writers: usize, full: bool) -> String {
    let mut gaps: Vec<Duration> = rounds.iter().map(|r| r.0).collect();
    gaps.sort();
    let secs = |d: Duration| d.as_secs_f64();
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        fig(
            &format!("failover: writes again after SIGKILL of the leader, {name} ({writers} background writers)"),
            "s",
            report::Better::Lower,
            secs(pct(&gaps, q)),
            Some((secs(gaps[0]), secs(*gaps.last().unwrap()))),
            "≤ 2 s",
            full,
        );
    }
    let extra = rounds.iter().filter(|r| r.1 > 1).count();
    let over = gaps.iter().filter(|g| **g > Duration::from_secs(2)).count();
    format!(
        "| writes accepted again after SIGKILL of the leader ({} rounds, {writers} background writers) | p50 {} p99 {} max {} | {} over 2 s; {} needed more than one election |",
        gaps.len(),
        ms(pct(&gaps, 0.5)),
        ms(pct(&gaps, 0.99)),
        ms(*gaps.last().unwrap()),
        over,
        extra
    )
}

/// One figure of this benchmark (no anchor: Raft itself is the measure).
fn fig(measure: &str, unit: &str, better: report::Better, v: f64, spread: Option<(f64, f64)>, goal: &str, full: bool) {
    report::record(
        &report::Figure {
            bench: "spine",
            measure,
            unit,
            better,
            wulfpack: v,
            spread,
            anchor: None,
            goal,
        },
        full,
    );
}

async fn leader(client: &Client) -> usize {
    loop {
        if let Ok(st) = client.cluster_status().await {
            if let Some(h) = st
                .heads
                .iter()
                .find(|h| h.status.as_ref().is_some_and(|s| s.role == "Leader"))
            {
                return h.id as usize - 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let only_failover = std::env::args().any(|a| a == "failover");
    let s = if full {
        Sizes {
            seq_writes: 500,
            par_writers: 32,
            par_writes_each: 100,
            nodes: 10_000,
            failovers: 30,
            cli_runs: 11,
        }
    } else {
        Sizes {
            seq_writes: 10,
            par_writers: 2,
            par_writes_each: 5,
            nodes: 50,
            failovers: 1,
            cli_runs: 1,
        }
    };
    let head_yaml = std::env::var("SPINE_HEAD_YAML").unwrap_or_default();
    let writers = std::env::var("SPINE_FAILOVER_WRITERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut p = ProcCluster::start(Path::new(WULFD), 3, &head_yaml);
    let all = p.all_heads();
    let client = Client::new(p.addrs.clone()).with_deadline(Duration::from_secs(30));
    let probe = Query::profiles(Selector::All);
    wait_until(30, "cluster ready", || {
        futures::executor::block_on(async { client.read(&probe, true).await.is_ok_and(|r| !r.profiles.is_empty()) })
    });
    let mut report = String::new();
    let mut line = |s: String| {
        println!("{s}");
        report.push_str(&s);
        report.push('\n');
    };
    line(format!(
        "spine benchmark ({} mode): 3 wulfd processes on loopback, sled fsync on, {} cores",
        if full { "full" } else { "smoke" },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    ));
    if !head_yaml.is_empty() {
        line(format!("head config added: {head_yaml:?}"));
    }
    if only_failover {
        let rounds = failovers(&mut p, &client, s.failovers, writers).await;
        line(failover_line(&rounds, writers, full));
        return;
    }

    // 1. Sequential write latency (one client, one write in flight).
    let mut lat = Vec::with_capacity(s.seq_writes);
    for i in 0..s.seq_writes {
        let t = Instant::now();
        client
            .write(Cmd::Add {
                kind: Kind::Node,
                items: vec![(format!("seq{i}"), node(i))],
            })
            .await
            .unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let msf = |d: Duration| d.as_secs_f64() * 1000.0;
    use report::Better::{Higher, Lower};
    fig(
        "Raft write latency, 1 writer, p50",
        "ms",
        Lower,
        msf(pct(&lat, 0.5)),
        None,
        "",
        full,
    );
    fig(
        "Raft write latency, 1 writer, p99",
        "ms",
        Lower,
        msf(pct(&lat, 0.99)),
        None,
        "",
        full,
    );
    line(format!(
        "| Raft write latency, 1 writer ({} writes) | p50 {} | p99 {} |",
        s.seq_writes,
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99))
    ));

    // 2. Throughput with concurrent writers (batched into shared fsyncs by openraft).
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..s.par_writers {
        let c = client.clone();
        let each = s.par_writes_each;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(each);
            for i in 0..each {
                let n = 1_000_000 + w * 10_000 + i;
                let t = Instant::now();
                c.write(Cmd::Add {
                    kind: Kind::Node,
                    items: vec![(format!("par{w}-{i}"), node(n))],
                })
                .await
                .unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let el = t.elapsed();
    lat.sort();
    let n = s.par_writers * s.par_writes_each;
    fig(
        &format!("Raft write throughput, {} concurrent writers", s.par_writers),
        "writes/s",
        Higher,
        n as f64 / el.as_secs_f64(),
        None,
        "",
        full,
    );
    line(format!(
        "| Raft write throughput, {} writers ({} writes) | {:.0} writes/s | p50 {} p99 {} |",
        s.par_writers,
        n,
        n as f64 / el.as_secs_f64(),
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99))
    ));

    // Clear, then load the node count in batches.
    let existing: Vec<String> = client
        .read(&Query::nodes(Selector::All), true)
        .await
        .unwrap()
        .nodes
        .into_keys()
        .collect();
    client
        .write(Cmd::Delete {
            kind: Kind::Node,
            names: existing,
        })
        .await
        .unwrap();
    let t = Instant::now();
    for chunk in (0..s.nodes).collect::<Vec<_>>().chunks(1000) {
        let items = chunk.iter().map(|i| (format!("n{i:05}"), node(*i))).collect();
        client
            .write(Cmd::Add {
                kind: Kind::Node,
                items,
            })
            .await
            .unwrap();
    }
    line(format!(
        "| load {} nodes (batches of 1000) | {} |",
        s.nodes,
        ms(t.elapsed())
    ));

    // 3. wwctl at that size: whole process, as an operator sees it.
    let set: Vec<Duration> = (0..s.cli_runs)
        .map(|i| wwctl(&all, &["node", "set", "n00042", "-y", "--comment", &format!("c{i}")]))
        .collect();
    fig(
        &format!("`wwctl node set` of one node at {} nodes (whole process)", s.nodes),
        "ms",
        Lower,
        msf(median(set.clone())),
        None,
        "",
        full,
    );
    line(format!(
        "| `wwctl node set` of one node at {} nodes (median of {}) | {} |",
        s.nodes,
        s.cli_runs,
        ms(median(set))
    ));
    let list: Vec<Duration> = (0..s.cli_runs).map(|_| wwctl(&all, &["node", "list"])).collect();
    fig(
        &format!("`wwctl node list` of {} nodes (whole process)", s.nodes),
        "ms",
        Lower,
        msf(median(list.clone())),
        None,
        "",
        full,
    );
    line(format!(
        "| `wwctl node list` of {} nodes (median of {}) | {} |",
        s.nodes,
        s.cli_runs,
        ms(median(list))
    ));
    let list_all: Vec<Duration> = (0..s.cli_runs.min(3))
        .map(|_| wwctl(&all, &["node", "list", "-n"]))
        .collect();
    line(format!(
        "| `wwctl node list -n` of {} nodes | {} |",
        s.nodes,
        ms(median(list_all))
    ));

    // 4. Failover: SIGKILL the leader, time until a write is accepted again.
    let rounds = failovers(&mut p, &client, s.failovers, writers).await;
    line(failover_line(&rounds, writers, full));
    let _ = report;
}
