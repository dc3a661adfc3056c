//! # The chaos suite
//!
//! Real `wulfd` processes in network namespaces (the rack lab of
//! `tests/common/rack_lab.rs`, configured from the documented example), real clients
//! (the admin API client `wwctl` uses, `wwctl` itself for probes, a PXE-like DHCP
//! client on a rack), faults on a **seeded** schedule, and invariants checked from what
//! the clients recorded; in most scenarios a wave of simulated nodes (`wwsim`,
//! `boot.rs`) boots on rack1 while the faults go on:
//!
//! | invariant | how |
//! |---|---|
//! | linearizable | every register read and write, call and return times, checked by `lin.rs` (Wing & Gong with Lowe's memo) |
//! | acknowledged writes kept | every acknowledged `node add` exists at the end |
//! | one address per MAC | no DHCP address ACKed to two MACs over the run |
//! | DHCP served after healing | every MAC ACKed after the last heal |
//! | converged | `wwctl cluster verify`: same applied index and state digest on every head |
//! | served bytes match digests | a corrupted blob is never served as good; every byte a booting node fetched matched its digest |
//! | booting nodes reach runtime | every node of the boot wave had its runtime overlay served within a bound after healing (`bootcheck.rs`) |
//! | bounded growth | RSS, log and data dir size from the start to the end of the run |
//!
//! Mutants prove the suite can fail: `mutant-stale-reads` reads a pinned head's local
//! state during a partition (the checker must catch it), `mutant-rollback` rolls every
//! head's disk back as a missing fsync would (lost acknowledged writes must be seen),
//! `mutant-boot-stuck` resets every node agent's runtime request (stuck nodes must be
//! reported).
//! A mutant passes when its invariant breaks.
//!
//! `cargo test` runs this binary with no arguments: the bounded CI subset. `chaos/run`
//! (or `cargo test --release --test chaos -- --all`) runs everything; `--seed N`
//! replays a run, `--list` names the scenarios, other words filter them by name.
//! Reports go to `chaos/results/<scenario>-<seed>/` (summary.txt, report.json, logs).

#[path = "../tests/common/lab_heads.rs"]
mod lab_heads;
#[path = "../tests/common/netns.rs"]
mod netns;
#[path = "../tests/common/rack_lab.rs"]
mod rack_lab;

mod boot;
mod bootcheck;
mod faults;
mod lin;
mod rng;
mod scenario;
mod workload;

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

struct Args {
    all: bool,
    list: bool,
    seed: Option<u64>,
    out: PathBuf,
    filters: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        all: false,
        list: false,
        seed: None,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("chaos/results"),
        filters: vec![],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--all" => a.all = true,
            "--list" => a.list = true,
            "--seed" => {
                let v = it.next().ok_or("--seed needs a number")?;
                a.seed = Some(v.parse().map_err(|_| format!("--seed {v:?}: not a number"))?);
            }
            "--out" => a.out = PathBuf::from(it.next().ok_or("--out needs a directory")?),
            "--help" | "-h" => {
                return Err("usage: chaos [--all] [--seed N] [--out DIR] [--list] [SCENARIO-NAME-PART...]".into())
            }
            // What `cargo test` passes to every test binary (libtest options): not ours.
            s if s.starts_with('-') => {}
            s => a.filters.push(s.to_owned()),
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let chosen: Vec<scenario::Scenario> = scenario::all()
        .into_iter()
        .filter(|s| {
            if args.filters.is_empty() {
                args.all || s.ci
            } else {
                args.filters.iter().any(|f| s.name.contains(f.as_str()))
            }
        })
        .collect();
    if args.list {
        for s in scenario::all() {
            println!("{:<20} {}{}", s.name, if s.ci { "[ci] " } else { "" }, s.about);
        }
        return;
    }
    if chosen.is_empty() {
        println!("chaos: no scenario matches {:?}", args.filters);
        return;
    }
    if let Some(why) = netns::skip_reason(&[
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("curl", "curl"),
        ("sha256sum", "coreutils"),
    ]) {
        println!("SKIP chaos suite: {why}");
        return;
    }
    // Optional parts: installed when possible, their faults SKIP otherwise.
    let _ = netns::skip_reason(&[("faketime", "faketime")]);
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    println!(
        "chaos: {} scenario(s), seed {seed} (replay: chaos/run --seed {seed} {}), reports in {}",
        chosen.len(),
        chosen.iter().map(|s| s.name).collect::<Vec<_>>().join(" "),
        args.out.display()
    );
    let t = Instant::now();
    let mut failed = Vec::new();
    for (k, s) in chosen.iter().enumerate() {
        // Each scenario its own seed, derived from the run's, so one replays alone.
        let sseed = seed.wrapping_add(k as u64);
        let r = scenario::run(s, sseed, &args.out);
        let broke: Vec<String> = r
            .invariants
            .iter()
            .filter(|i| !i.held)
            .map(|i| format!("{}: {}", i.name, i.detail))
            .collect();
        let boot = r.boot.as_ref().map(|b| format!("  [{}]", b.line)).unwrap_or_default();
        println!(
            "{:<20} seed {sseed:<12} {:>6.1} s  {}{boot}",
            s.name, r.duration_s, r.verdict
        );
        if r.verdict.starts_with("FAIL") {
            for b in broke {
                println!("    {b}");
            }
            println!("    report: {}", args.out.join(format!("{}-{sseed}", s.name)).display());
            failed.push(s.name);
        }
    }
    println!(
        "chaos: {} passed, {} failed in {:.0} s",
        chosen.len() - failed.len(),
        failed.len(),
        t.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
