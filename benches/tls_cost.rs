//! The cost of mutual TLS (issue 12): Raft write latency (one writer) and throughput
//! (32 writers) through three real `wulfd` processes on loopback, with the example's
//! mutual TLS (`ProcCluster::start_tls`: `wwctl cluster pki init`, a head certificate as
//! the client's credential) beside the same cluster in plaintext (`insecure: true`),
//! measured in the same run, alternating, three rounds each; medians with min–max.
//!
//! `cargo bench --bench tls_cost` runs the full sizes; under `cargo test` (no `--bench`)
//! tiny sizes check the harness. Blob transfers between heads are not behind TLS yet
//! (docs/SECURITY.md), so there is no streaming figure here.

#[path = "common/nodes.rs"]
mod nodes;
#[path = "../tests/common/proc_cluster.rs"]
mod proc_cluster;
#[path = "common/report.rs"]
mod report;

use std::path::Path;
use std::time::{Duration, Instant};

use nodes::node;
use proc_cluster::ProcCluster;
use wulfpack::client::Client;
use wulfpack::pki::tls::{client_config, Dialer};
use wulfpack::pki::CredFiles;
use wulfpack::state::{Command as Cmd, Kind, Query, Selector};

const WULFD: &str = env!("CARGO_BIN_EXE_wulfd");

struct Sizes {
    rounds: usize,
    seq_writes: usize,
    writers: usize,
    each: usize,
}

/// One round's figures: p50 latency (ms) of one writer, writes/s of `writers`.
struct Round {
    p50_ms: f64,
    p99_ms: f64,
    throughput: f64,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn round(tls: bool, s: &Sizes, tag: usize) -> Round {
    let p = if tls {
        ProcCluster::start_tls(Path::new(WULFD), 3, "")
    } else {
        ProcCluster::start(Path::new(WULFD), 3, "")
    };
    let dialer = if tls {
        // A head's certificate is a client certificate with the head role.
        let f = CredFiles::head(&p.dir.path().join("data0/pki"));
        let (ca, cert, key) = f.read().unwrap();
        Dialer::tls(client_config(&ca, Some((&cert, &key))).unwrap())
    } else {
        Dialer::plain()
    };
    let client = Client::with_dialer(p.addrs.clone(), &dialer).with_deadline(Duration::from_secs(30));
    let probe = Query::profiles(Selector::All);
    let ready = Instant::now();
    while !client.read(&probe, true).await.is_ok_and(|r| !r.profiles.is_empty()) {
        assert!(
            ready.elapsed() < Duration::from_secs(60),
            "cluster not ready:\n{}",
            p.log(0)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut lat = Vec::with_capacity(s.seq_writes);
    for i in 0..s.seq_writes {
        let t = Instant::now();
        client
            .write(Cmd::Add {
                kind: Kind::Node,
                items: vec![(format!("seq{tag}-{i}"), node(i))],
            })
            .await
            .unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..s.writers {
        let (c, each) = (client.clone(), s.each);
        tasks.push(tokio::spawn(async move {
            for i in 0..each {
                c.write(Cmd::Add {
                    kind: Kind::Node,
                    items: vec![(format!("par{tag}-{w}-{i}"), node(1_000_000 + w * 10_000 + i))],
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = Round {
        p50_ms: pct(&lat, 0.5),
        p99_ms: pct(&lat, 0.99),
        throughput: (s.writers * s.each) as f64 / t.elapsed().as_secs_f64(),
    };
    drop(p);
    r
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn fig(measure: &str, unit: &str, better: report::Better, tls: Vec<f64>, plain: Vec<f64>, full: bool) {
    let (t, lo, hi) = median(tls);
    let (p, _, _) = median(plain);
    println!("| {measure} | TLS {t:.2} {unit} ({lo:.2}–{hi:.2}) | plaintext {p:.2} {unit} |");
    report::record(
        &report::Figure {
            bench: "tls_cost",
            measure,
            unit,
            better,
            wulfpack: t,
            spread: Some((lo, hi)),
            anchor: Some(("wulfpack plaintext", p)),
            goal: "",
        },
        full,
    );
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let s = if full {
        Sizes {
            rounds: 3,
            seq_writes: 300,
            writers: 32,
            each: 50,
        }
    } else {
        Sizes {
            rounds: 1,
            seq_writes: 5,
            writers: 2,
            each: 3,
        }
    };
    println!(
        "tls_cost ({} mode): 3 wulfd processes on loopback, mutual TLS vs plaintext, {} rounds each, alternating",
        if full { "full" } else { "smoke" },
        s.rounds
    );
    let (mut tls, mut plain) = (Vec::new(), Vec::new());
    for r in 0..s.rounds {
        plain.push(round(false, &s, 2 * r).await);
        tls.push(round(true, &s, 2 * r + 1).await);
    }
    let col = |v: &[Round], f: fn(&Round) -> f64| v.iter().map(f).collect::<Vec<f64>>();
    use report::Better::{Higher, Lower};
    fig(
        "Raft write latency with mutual TLS, 1 writer, p50",
        "ms",
        Lower,
        col(&tls, |r| r.p50_ms),
        col(&plain, |r| r.p50_ms),
        full,
    );
    fig(
        "Raft write latency with mutual TLS, 1 writer, p99",
        "ms",
        Lower,
        col(&tls, |r| r.p99_ms),
        col(&plain, |r| r.p99_ms),
        full,
    );
    fig(
        &format!("Raft write throughput with mutual TLS, {} writers", s.writers),
        "writes/s",
        Higher,
        col(&tls, |r| r.throughput),
        col(&plain, |r| r.throughput),
        full,
    );
}
