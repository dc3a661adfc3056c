//! One scenario: build the lab, start the clients, inject faults on the seeded schedule,
//! heal, check the invariants, write the report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::boot;
use crate::bootcheck::{self, NodeBoot};
use crate::faults::{self, Fault, Role, Sample, SmallDisk};
use crate::lin;
use crate::rack_lab::Lab;
use crate::rng::Rng;
use crate::workload::{self, DhcpLog, History, Reads, WorkloadConf};

/// Something a scenario does besides its faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    None,
    /// The rollback mutant: mid-run, copy every head's data dir (heads paused), go on
    /// writing, then SIGKILL all heads and put the old copies back — what a disk that
    /// acknowledged writes it never made durable (fsync off) does. The suite must see
    /// acknowledged writes lost.
    Rollback,
    /// The stuck-boot mutant: rack1's heads reset every node agent's runtime-overlay
    /// request (TCP from a privileged port to the HTTP port) for the whole run, so the
    /// nodes boot but never reach the runtime stage. The suite must report them.
    NoRuntime,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub faults: Vec<Fault>,
    /// Length of the fault phase.
    pub secs: u64,
    /// In the bounded subset `.ci/run` runs.
    pub ci: bool,
    pub reads: Reads,
    /// A mutant: the invariant it must break (the scenario passes when it does).
    pub expect_broken: Option<&'static str>,
    pub special: Special,
    /// Simulated nodes (`wwsim`) booting on rack1 during the fault phase (0: none).
    pub boot_nodes: u32,
    /// Seconds after the last heal by which every booting node must be at the runtime
    /// stage.
    pub boot_bound_s: u64,
}

#[derive(Debug, Serialize)]
pub struct FaultRecord {
    pub fault: String,
    pub heads: Vec<usize>,
    pub at_s: f64,
    pub healed_at_s: Option<f64>,
    /// A write through `wwctl` succeeded this long after the fault began, while it lasted
    /// (failover); None: not while the fault lasted (no majority, say).
    pub writes_during_after_s: Option<f64>,
    /// ... and this long after healing.
    pub writes_after_heal_s: Option<f64>,
    /// The longest gap between DHCP ACKs that overlapped the fault.
    pub dhcp_gap_s: Option<f64>,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Invariant {
    pub name: &'static str,
    pub held: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub verdict: String,
    pub duration_s: f64,
    pub timeline: Vec<FaultRecord>,
    pub invariants: Vec<Invariant>,
    pub counts: BTreeMap<&'static str, u64>,
    pub samples_start: Vec<Sample>,
    pub samples_end: Vec<Sample>,
    pub converge_s: Option<f64>,
    pub skipped_faults: Vec<String>,
    /// The boot wave, when the scenario has one.
    pub boot: Option<BootReport>,
}

/// The boot wave of a scenario: every node's boot on the fault timeline's clock.
#[derive(Debug, Serialize)]
pub struct BootReport {
    pub nodes_expected: u32,
    /// When `wwsim` started (s since the clients started).
    pub started_at_s: f64,
    /// Every node had to reach the runtime stage by then (the last heal + the bound).
    pub deadline_s: f64,
    /// One line: nodes at runtime, boot times, retries.
    pub line: String,
    pub nodes: Vec<NodeBoot>,
    /// Why there is no per-node record (wwsim gave no report).
    pub error: Option<String>,
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

const HEADS: [&str; 3] = ["10.0.0.1:9701", "10.0.0.2:9701", "10.0.0.3:9701"];
const MACS: [&str; 4] = [
    "02:c4:a0:00:00:01",
    "02:c4:a0:00:00:02",
    "02:c4:a0:00:00:03",
    "02:c4:a0:00:00:04",
];

/// Run `sc` with `seed`; the report is also written under `out`.
pub fn run(sc: &Scenario, seed: u64, out: &Path) -> Report {
    let mut rng = Rng::new(seed);
    let mut skipped: Vec<String> = Vec::new();
    let faults: Vec<Fault> = sc
        .faults
        .iter()
        .copied()
        .filter(|f| match f.unavailable() {
            Some(why) => {
                skipped.push(format!("{}: SKIP, {why}", f.name()));
                false
            }
            None => true,
        })
        .collect();
    let mut report = Report {
        scenario: sc.name.into(),
        seed,
        verdict: String::new(),
        duration_s: 0.0,
        timeline: vec![],
        invariants: vec![],
        counts: BTreeMap::new(),
        samples_start: vec![],
        samples_end: vec![],
        converge_s: None,
        skipped_faults: skipped,
        boot: None,
    };
    if faults.is_empty() && sc.special == Special::None {
        report.verdict = format!("SKIP ({})", report.skipped_faults.join("; "));
        return report;
    }
    let started = Instant::now();
    let mut lab = Lab::build();
    if sc.boot_nodes > 0 {
        lab.agent = Some(boot::agent(&lab));
    }
    let _disks: Vec<SmallDisk> = if faults.iter().any(|f| matches!(f, Fault::DiskFull(_))) {
        match (0..3)
            .map(|i| SmallDisk::mount(lab.dir.path().join(format!("data{}", i + 1)), 96))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(d) => d,
            Err(e) => {
                report.verdict = format!("SKIP (cannot mount a small tmpfs for the data dirs: {e})");
                return report;
            }
        }
    } else {
        vec![]
    };
    // Preloaded shims: libfaketime for clock jumps, the slow-fsync shim.
    let mut preload: Vec<String> = Vec::new();
    let mut env: Vec<Vec<String>> = vec![vec![]; 3];
    if faults.iter().any(|f| matches!(f, Fault::ClockJump(..))) {
        preload.push(
            faults::faketime_lib()
                .expect("checked by unavailable()")
                .display()
                .to_string(),
        );
        for (i, e) in env.iter_mut().enumerate() {
            let file = faults::clock_file(&lab, i);
            std::fs::write(&file, "+0\n").unwrap();
            e.push(format!("FAKETIME_TIMESTAMP_FILE={}", file.display()));
            e.push("FAKETIME_NO_CACHE=1".into());
            e.push("DONT_FAKE_MONOTONIC=1".into());
        }
    }
    if faults.iter().any(|f| matches!(f, Fault::SlowFsync(..))) {
        preload.push(
            faults::slowfsync_lib()
                .expect("checked by unavailable()")
                .display()
                .to_string(),
        );
        for (i, e) in env.iter_mut().enumerate() {
            let file = faults::fsync_file(&lab, i);
            std::fs::write(&file, "0\n").unwrap();
            e.push(format!("CHAOS_FSYNC_DELAY_FILE={}", file.display()));
        }
    }
    if !preload.is_empty() {
        for (i, e) in env.into_iter().enumerate() {
            lab.wrap[i] = [vec!["env".to_owned(), format!("LD_PRELOAD={}", preload.join(":"))], e].concat();
        }
    }
    for i in 0..3 {
        lab.start(i);
    }
    lab.wait("a cluster with a leader", 60, || faults::leader(&lab).is_some());
    lab.wwctl_ok(
        "rack add rack1 --network 10.10.0.0/24 --head 1=10.10.0.1 --head 2=10.10.0.2 --pool 10.10.0.100-10.10.0.199",
    );
    lab.wwctl_ok("node add probe --comment start");
    if sc.boot_nodes > 0 {
        boot::prepare(&lab, sc.boot_nodes);
    }
    let heads: Vec<String> = HEADS.iter().map(|s| s.to_string()).collect();
    let registers = 4;
    let dialer = lab.dialer();
    let initial = {
        let (heads, dialer) = (heads.clone(), dialer.clone());
        lab.sw
            .enter(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(workload::setup(&heads, &dialer, registers))
            })
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()))
    };
    // Every rack1 head answering before the clock starts.
    lab.wait("rack1 served", 30, || lab.health(1).contains("rack1"));

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let conf = WorkloadConf {
        heads: heads.clone(),
        dialer: dialer.clone(),
        clients: 4,
        registers,
        reads: sc.reads,
        op_deadline: Duration::from_secs(3),
    };
    let wl = {
        let (stop, rng) = (stop.clone(), rng.fork());
        lab.sw.enter(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(workload::run(conf, rng, t0, stop))
        })
    };
    let dhcp = {
        let stop = stop.clone();
        let macs: Vec<String> = MACS.iter().map(|s| s.to_string()).collect();
        lab.c1
            .enter(move || workload::dhcp_loop("c0", &macs, t0, &stop, Duration::from_secs(8)))
    };
    std::thread::sleep(Duration::from_secs(3));
    report.samples_start = (0..3).map(|i| faults::sample(&lab, i)).collect();
    let mut restarted = [false; 3];

    // The fault phase.
    let at = |t: Instant| secs(t.duration_since(t0));
    let phase_end = Instant::now() + Duration::from_secs(sc.secs);
    let mut probe = 0u64;
    let mut probe_write = |lab: &Lab, until: Instant| -> Option<Instant> {
        while Instant::now() < until {
            probe += 1;
            if faults::wwctl(lab, 2, &format!("node set probe --comment p{probe} -y"))
                .status
                .success()
            {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    };
    if sc.special == Special::NoRuntime {
        // Not a table named `chaos`: the faults add and delete that one.
        for h in &lab.heads[..2] {
            h.ok("nft add table inet chaosboot && \
                  nft 'add chain inet chaosboot in { type filter hook input priority 0; }' && \
                  nft add rule inet chaosboot in ip saddr 10.10.0.0/24 tcp dport 9873 tcp sport '<' 1024 reject with tcp reset");
        }
    }
    // The boot wave: power-ons spread over the first three quarters of the fault phase.
    let wave = (sc.boot_nodes > 0).then(|| {
        let ramp = Duration::from_secs(sc.secs * 3 / 4);
        // Past the last heal (the phase, a heal's probe of up to 30 s) plus the bound.
        let slack = if faults.is_empty() { 3 } else { 30 };
        let deadline = Duration::from_secs(sc.secs + slack + sc.boot_bound_s);
        boot::start(&lab, sc.boot_nodes, seed, ramp, deadline, t0)
    });
    if sc.special == Special::Rollback {
        rollback(&mut lab, &mut report, t0, &mut restarted);
    }
    while Instant::now() + Duration::from_secs(4) < phase_end && !faults.is_empty() {
        let fault = *rng.pick(&faults);
        let hold = Duration::from_secs(rng.range(3, 7));
        let t_inj = Instant::now();
        let Some(inj) = faults::inject(&mut lab, fault, &mut rng) else {
            report.timeline.push(FaultRecord {
                fault: fault.name(),
                heads: vec![],
                at_s: at(t_inj),
                healed_at_s: None,
                writes_during_after_s: None,
                writes_after_heal_s: None,
                dhcp_gap_s: None,
                notes: vec!["no head in that role now: not injected".into()],
            });
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        let mut notes = Vec::new();
        if let Some((path, digest)) = &inj.blob {
            notes.push(served_bytes_note(&lab, inj.heads[0], path, digest));
        }
        let during = probe_write(&lab, t_inj + hold).map(|t| secs(t - t_inj));
        let rest = (t_inj + hold).saturating_duration_since(Instant::now());
        std::thread::sleep(rest);
        let t_heal = Instant::now();
        if matches!(inj.fault, Fault::Kill(_) | Fault::KillTwo) {
            for &i in &inj.heads {
                restarted[i] = true;
            }
        }
        let heal_notes = faults::heal(&mut lab, &inj);
        if !heal_notes.is_empty() {
            restarted.iter_mut().for_each(|r| *r = true);
        }
        notes.extend(heal_notes);
        let after = probe_write(&lab, t_heal + Duration::from_secs(30)).map(|t| secs(t - t_heal));
        if let Some((path, digest)) = &inj.blob {
            notes.push(format!(
                "after heal: {}",
                served_bytes_note(&lab, inj.heads[0], path, digest)
            ));
        }
        report.timeline.push(FaultRecord {
            fault: inj.fault.name(),
            heads: inj.heads.iter().map(|i| i + 1).collect(),
            at_s: at(t_inj),
            healed_at_s: Some(at(t_heal)),
            writes_during_after_s: during,
            writes_after_heal_s: after,
            dhcp_gap_s: None,
            notes,
        });
        std::thread::sleep(Duration::from_secs(rng.range(1, 3)));
    }
    if faults.is_empty() {
        std::thread::sleep(phase_end.saturating_duration_since(Instant::now()));
    }
    // As a service manager would: a head that exited on its own after its fault's heal
    // looked (a full disk stops Raft, and wulfd may finish exiting only after the filler
    // is gone) is started again. Found by `mixed` (seed 7): head 2 exited 1 s before its
    // heal ended and stayed down, so the cluster never converged.
    start_exited(
        &mut lab,
        &mut restarted,
        &mut report.timeline,
        at(Instant::now()),
        "after its heal",
    );
    // Let the clients see the healed cluster for a moment, then stop them.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let history: History = wl.join().unwrap();
    let dhcp_log: DhcpLog = dhcp.join().unwrap();
    // The boot wave's end: every node at runtime, or wwsim's deadline.
    let waved: Option<(Result<bootcheck::Wave, String>, &boot::Wave)> = wave
        .as_ref()
        .map(|w| (boot::finish(&lab, w).map(|v| bootcheck::parse(&v, w.offset_s)), w));
    report.samples_end = (0..3).map(|i| faults::sample(&lab, i)).collect();

    // Convergence: every head at the same index with the same digest. The suite goes on
    // standing in for the service manager meanwhile: a disk that stalled instead of
    // failing stops Raft only at `storage_deadline_secs` (60 s in the example config),
    // and its head may exit after the fault phase (`disk-full` on the leader, found so).
    let t_conv = Instant::now();
    let mut verified = faults::wwctl(&lab, 60, "cluster verify");
    while !verified.status.success() && t_conv.elapsed() < Duration::from_secs(90) {
        if !start_exited(
            &mut lab,
            &mut restarted,
            &mut report.timeline,
            at(Instant::now()),
            "later",
        ) {
            std::thread::sleep(Duration::from_secs(2));
        }
        verified = faults::wwctl(&lab, 20, "cluster verify");
    }
    let converged = verified.status.success();
    report.converge_s = converged.then(|| secs(t_conv.elapsed()));

    let finals = {
        let (heads, dialer) = (heads.clone(), dialer.clone());
        lab.sw
            .enter(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(workload::final_reads(&heads, &dialer, registers, t0))
            })
            .join()
            .unwrap()
    };
    report.duration_s = secs(started.elapsed());
    fill_dhcp_gaps(&mut report.timeline, &dhcp_log);
    let booted = waved.as_ref().map(|(r, _)| r.as_ref());
    report.invariants = invariants(
        &history, &initial, finals, &dhcp_log, &verified, &report, &restarted, t0, booted,
    );
    if let Some((r, w)) = &waved {
        let last_heal = report.timeline.iter().filter_map(|f| f.healed_at_s).fold(0.0, f64::max);
        let deadline_s = last_heal.max(w.offset_s + sc.secs as f64) + sc.boot_bound_s as f64;
        let (held, detail) = match r {
            Ok(wave) => bootcheck::reached_runtime(wave, w.count as usize, deadline_s),
            Err(e) => (false, e.clone()),
        };
        report.invariants.push(Invariant {
            name: "booting nodes reach runtime",
            held,
            detail,
        });
        report.boot = Some(BootReport {
            nodes_expected: w.count,
            started_at_s: secs(Duration::from_secs_f64(w.offset_s)),
            deadline_s: secs(Duration::from_secs_f64(deadline_s)),
            line: match r {
                Ok(wave) => bootcheck::line(wave, w.count as usize),
                Err(_) => format!("boot 0/{} at runtime (no wwsim report)", w.count),
            },
            nodes: r.as_ref().map(|wave| wave.nodes.clone()).unwrap_or_default(),
            error: r.as_ref().err().cloned(),
        });
    }
    report.counts = BTreeMap::from([
        ("writes_ok", history.writes_ok as u64),
        ("writes_failed", history.writes_failed as u64),
        ("reads_ok", history.reads_ok as u64),
        ("reads_failed", history.reads_failed as u64),
        ("adds_acked", history.acked_adds.len() as u64),
        ("adds_unknown", history.unknown_adds as u64),
        ("dhcp_acks", dhcp_log.acks.len() as u64),
        ("dhcp_timeouts", dhcp_log.timeouts as u64),
    ]);
    let broken: Vec<&Invariant> = report.invariants.iter().filter(|i| !i.held).collect();
    report.verdict = match sc.expect_broken {
        None if broken.is_empty() => "PASS".into(),
        None => format!(
            "FAIL ({})",
            broken.iter().map(|i| i.name).collect::<Vec<_>>().join(", ")
        ),
        Some(want) if broken.iter().any(|i| i.name == want) => format!("PASS (mutant caught: {want} broken)"),
        Some(want) => format!("FAIL (mutant not caught: {want} held)"),
    };
    write_report(&report, &lab, out);
    report
}

/// The rollback mutant (see [`Special::Rollback`]).
fn rollback(lab: &mut Lab, report: &mut Report, t0: Instant, restarted: &mut [bool; 3]) {
    use rustix::process::{kill_process_group, Pid, Signal};
    std::thread::sleep(Duration::from_secs(4));
    let group = |lab: &Lab, sig: Signal| {
        for p in lab.pids.iter().flatten() {
            if let Some(pid) = Pid::from_raw(*p as i32) {
                let _ = kill_process_group(pid, sig);
            }
        }
    };
    let t = Instant::now();
    group(lab, Signal::STOP);
    let dir = lab.dir.path().to_path_buf();
    for i in 1..=3 {
        let o = std::process::Command::new("cp")
            .arg("-a")
            .arg(dir.join(format!("data{i}")))
            .arg(dir.join(format!("old{i}")))
            .output()
            .unwrap();
        assert!(o.status.success(), "cp: {}", String::from_utf8_lossy(&o.stderr));
    }
    group(lab, Signal::CONT);
    std::thread::sleep(Duration::from_secs(6));
    for (i, r) in restarted.iter_mut().enumerate() {
        lab.kill(i);
        *r = true;
    }
    for i in 1..=3 {
        let _ = std::fs::remove_dir_all(dir.join(format!("data{i}")));
        std::fs::rename(dir.join(format!("old{i}")), dir.join(format!("data{i}"))).unwrap();
    }
    for i in 0..3 {
        faults::restart(lab, i);
    }
    report.timeline.push(FaultRecord {
        fault: "rollback: every head's data dir put back 6 s in the past".into(),
        heads: vec![1, 2, 3],
        at_s: secs(t.duration_since(t0)),
        healed_at_s: Some(secs(t0.elapsed())),
        writes_during_after_s: None,
        writes_after_heal_s: None,
        dhcp_gap_s: None,
        notes: vec![],
    });
    lab.wait("a leader after the rollback", 60, || faults::leader(lab).is_some());
}

/// `stage=head` pairs, shortened: `from 10.10.0.1` when one head answered every stage.
fn heads_text(heads: &[String]) -> String {
    let hosts: BTreeSet<&str> = heads
        .iter()
        .filter_map(|h| h.split_once('=').map(|(_, a)| a.split(':').next().unwrap_or(a)))
        .collect();
    match hosts.len() {
        1 => format!("from {}", hosts.into_iter().next().unwrap_or_default()),
        _ => heads.join(" "),
    }
}

/// Fetch `digest` from head `i`'s blob route on the management network (its gRPC port,
/// as a head: head 1's certificate; `-k` as heads do not check each other's names) and
/// compare.
fn served_bytes_note(lab: &Lab, i: usize, _path: &Path, digest: &str) -> String {
    let pki = lab.dir.path().join("pki/head-1");
    let o = lab.sw.sh(&format!(
        "curl -sf -m 10 -k --cert {c} --key {k} https://10.0.0.{n}:9701/blob/{digest} | sha256sum",
        c = pki.join("head.crt").display(),
        k = pki.join("head.key").display(),
        n = i + 1
    ));
    let got = String::from_utf8_lossy(&o.stdout);
    let got = got.split_whitespace().next().unwrap_or("");
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    if got == digest.trim_start_matches("sha256:") {
        "served bytes: match the digest".into()
    } else if got == empty || got.is_empty() {
        "served bytes: refused (nothing served)".into()
    } else {
        format!("served bytes: MISMATCH (got sha256:{got})")
    }
}

fn fill_dhcp_gaps(timeline: &mut [FaultRecord], log: &DhcpLog) {
    let times: Vec<f64> = log.acks.iter().map(|a| a.at_us as f64 / 1e6).collect();
    for f in timeline.iter_mut() {
        let Some(end) = f.healed_at_s else { continue };
        let mut prev = times.iter().copied().rfind(|t| *t <= f.at_s).unwrap_or(f.at_s);
        let mut gap: f64 = 0.0;
        for &t in times.iter().filter(|t| **t > f.at_s) {
            gap = gap.max(t - prev);
            prev = t;
            if t > end {
                break;
            }
        }
        f.dhcp_gap_s = Some((gap * 1000.0).round() / 1000.0);
    }
}

#[allow(clippy::too_many_arguments)]
fn invariants(
    h: &History,
    initial: &BTreeMap<String, String>,
    finals: Result<(Vec<lin::Op>, BTreeSet<String>), String>,
    dhcp: &DhcpLog,
    verified: &std::process::Output,
    report: &Report,
    restarted: &[bool; 3],
    t0: Instant,
    boot: Option<Result<&bootcheck::Wave, &String>>,
) -> Vec<Invariant> {
    let wave = boot.and_then(|r| r.ok());
    let mut out = Vec::new();
    let (final_ops, names) = match finals {
        Ok(f) => f,
        Err(e) => {
            out.push(Invariant {
                name: "final read",
                held: false,
                detail: e,
            });
            (vec![], BTreeSet::new())
        }
    };
    let mut ops = h.ops.clone();
    ops.extend(final_ops);
    let v = lin::check(&ops, initial);
    out.push(Invariant {
        name: "linearizable",
        held: v.is_empty(),
        detail: if v.is_empty() {
            format!("{} register operations, every key linearizable", ops.len())
        } else {
            v.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; ")
        },
    });
    let lost: Vec<&(String, u64)> = h.acked_adds.iter().filter(|(n, _)| !names.contains(n)).collect();
    out.push(Invariant {
        name: "acknowledged writes kept",
        held: lost.is_empty() && !names.is_empty(),
        detail: if lost.is_empty() {
            format!("all {} acknowledged adds present", h.acked_adds.len())
        } else {
            format!(
                "{} of {} acknowledged adds lost, e.g. {} (acked at {:.3} s)",
                lost.len(),
                h.acked_adds.len(),
                lost[0].0,
                lost[0].1 as f64 / 1e6
            )
        },
    });
    let mut by_addr: BTreeMap<std::net::Ipv4Addr, BTreeSet<&str>> = BTreeMap::new();
    for a in &dhcp.acks {
        by_addr.entry(a.addr).or_default().insert(&a.mac);
    }
    // The boot wave's leases too: a registered node's address must never go to a pool MAC.
    for n in wave.map(|w| w.nodes.as_slice()).unwrap_or_default() {
        if let Some(a) = n.address.as_deref().and_then(|a| a.parse().ok()) {
            by_addr.entry(a).or_default().insert(&n.mac);
        }
    }
    let shared: Vec<String> = by_addr
        .iter()
        .filter(|(_, m)| m.len() > 1)
        .map(|(a, m)| format!("{a} to {m:?}"))
        .chain(
            wave.into_iter()
                .flat_map(|w| w.duplicate_addresses.iter().map(|d| format!("wwsim: {d}"))),
        )
        .collect();
    out.push(Invariant {
        name: "one address per MAC",
        held: shared.is_empty(),
        detail: if shared.is_empty() {
            let servers: BTreeSet<std::net::Ipv4Addr> = dhcp.acks.iter().map(|a| a.server).collect();
            format!(
                "{} ACKs from servers {servers:?}, {} addresses, none to two MACs",
                dhcp.acks.len(),
                by_addr.len()
            )
        } else {
            format!("addresses ACKed to two MACs: {}", shared.join("; "))
        },
    });
    let last_heal = report.timeline.iter().filter_map(|f| f.healed_at_s).fold(0.0, f64::max);
    let unserved: Vec<&str> = MACS
        .iter()
        .copied()
        .filter(|m| {
            !dhcp
                .acks
                .iter()
                .any(|a| a.mac == *m && a.at_us as f64 / 1e6 > last_heal)
        })
        .collect();
    out.push(Invariant {
        name: "DHCP served after healing",
        held: unserved.is_empty(),
        detail: if unserved.is_empty() {
            "every MAC ACKed after the last heal".into()
        } else {
            format!("no ACK after the last heal ({last_heal:.1} s) for {unserved:?}")
        },
    });
    out.push(Invariant {
        name: "converged",
        held: verified.status.success(),
        detail: format!(
            "{}{}",
            String::from_utf8_lossy(&verified.stdout).lines().last().unwrap_or(""),
            String::from_utf8_lossy(&verified.stderr).trim()
        ),
    });
    let mismatches: Vec<&String> = report
        .timeline
        .iter()
        .flat_map(|f| &f.notes)
        .filter(|n| n.contains("MISMATCH"))
        .chain(wave.iter().flat_map(|w| &w.digest_mismatches))
        .collect();
    out.push(Invariant {
        name: "served bytes match digests",
        held: mismatches.is_empty(),
        detail: if mismatches.is_empty() {
            match wave {
                Some(w) => format!(
                    "no blob served with other bytes than its digest; every byte {} booting nodes fetched matched",
                    w.nodes.len()
                ),
                None => "no blob served with other bytes than its digest".into(),
            }
        } else {
            mismatches.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; ")
        },
    });
    // Bounded growth over the run: RSS of heads never restarted, log and data dir bytes
    // of all. Generous bounds: a short run can only show a leak, not prove there is none;
    // the full suite runs longer.
    let minutes = (t0.elapsed().as_secs_f64() / 60.0).max(0.5);
    let mut grew = Vec::new();
    for (i, restarted) in restarted.iter().enumerate() {
        let (a, b) = (report.samples_start[i], report.samples_end[i]);
        if !restarted && b.rss_kib > a.rss_kib * 2 + 64 * 1024 {
            grew.push(format!("head {} RSS {} → {} KiB", i + 1, a.rss_kib, b.rss_kib));
        }
        let log_rate = b.log_bytes.saturating_sub(a.log_bytes) as f64 / minutes;
        if log_rate > 512.0 * 1024.0 {
            grew.push(format!("head {} log {:.0} KiB/min", i + 1, log_rate / 1024.0));
        }
        if b.disk_bytes > a.disk_bytes * 2 + 256 * 1024 * 1024 {
            grew.push(format!(
                "head {} data dir {} → {} bytes",
                i + 1,
                a.disk_bytes,
                b.disk_bytes
            ));
        }
    }
    out.push(Invariant {
        name: "bounded growth",
        held: grew.is_empty(),
        detail: if grew.is_empty() {
            "RSS ≤ 2× + 64 MiB (heads never restarted), log ≤ 512 KiB/min, data dir ≤ 2× + 256 MiB".into()
        } else {
            grew.join("; ")
        },
    });
    out
}

fn write_report(report: &Report, lab: &Lab, out: &Path) {
    let dir: PathBuf = out.join(format!("{}-{}", report.scenario, report.seed));
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("report.json"),
        serde_json::to_vec_pretty(report).unwrap_or_default(),
    );
    let mut t = format!(
        "scenario {} seed {}: {}\n\ntimeline (s since the clients started):\n",
        report.scenario, report.seed, report.verdict
    );
    for f in &report.timeline {
        t.push_str(&format!(
            "  {:>7.3}  {} (heads {:?})  healed {}  writes during: {}  after heal: {}  DHCP gap: {}\n",
            f.at_s,
            f.fault,
            f.heads,
            f.healed_at_s.map_or("-".into(), |s| format!("{s:.3}")),
            f.writes_during_after_s.map_or("none".into(), |s| format!("{s:.3} s")),
            f.writes_after_heal_s.map_or("none".into(), |s| format!("{s:.3} s")),
            f.dhcp_gap_s.map_or("-".into(), |s| format!("{s:.3} s")),
        ));
        for n in &f.notes {
            t.push_str(&format!("           {n}\n"));
        }
    }
    t.push_str("\ninvariants:\n");
    for i in &report.invariants {
        t.push_str(&format!(
            "  {:<28} {}  {}\n",
            i.name,
            if i.held { "held  " } else { "BROKEN" },
            i.detail
        ));
    }
    for s in &report.skipped_faults {
        t.push_str(&format!("  {s}\n"));
    }
    if let Some(b) = &report.boot {
        t.push_str(&format!(
            "\nboot wave ({} nodes from {:.3} s, each at runtime by {:.3} s): {}\n",
            b.nodes_expected, b.started_at_s, b.deadline_s, b.line
        ));
        if let Some(e) = &b.error {
            t.push_str(&format!("  {e}\n"));
        }
        t.push_str("  node     power-on  boot     runtime-at  tries retries  error / heads\n");
        for n in &b.nodes {
            let opt = |v: Option<f64>| v.map_or("-".to_owned(), |s| format!("{s:.3}"));
            t.push_str(&format!(
                "  {:<8} {:>8.3}  {:>7}  {:>10}  {:>5} {:>7}  {}\n",
                n.name.as_deref().unwrap_or(&n.mac),
                n.power_on_s,
                opt(n.boot_s),
                opt(n.runtime_at_s),
                n.attempts,
                n.retries + n.refreshes_failed,
                n.error.clone().unwrap_or_else(|| heads_text(&n.heads))
            ));
        }
        for f in ["wwsim.json", "wwsim.log"] {
            let _ = std::fs::copy(lab.dir.path().join(f), dir.join(f));
        }
    }
    let _ = std::fs::write(dir.join("summary.txt"), t);
    // Every head's logs, earlier runs of restarted heads included.
    if let Ok(rd) = std::fs::read_dir(lab.dir.path()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("wulfd") && name.contains(".log") {
                let _ = std::fs::copy(e.path(), dir.join(&name));
            }
        }
    }
}

/// Every scenario the suite knows.
pub fn all() -> Vec<Scenario> {
    use Fault::*;
    use Role::*;
    let base = |name, about, faults, secs, ci| Scenario {
        name,
        about,
        faults,
        secs,
        ci,
        reads: Reads::Linearizable,
        expect_broken: None,
        special: Special::None,
        boot_nodes: 0,
        boot_bound_s: 45,
    };
    vec![
        Scenario {
            boot_nodes: 20,
            ..base(
                "kill",
                "SIGKILL and restart of the leader, a follower, rack1's primary",
                vec![Kill(Leader), Kill(Follower), Kill(RackPrimary)],
                40,
                true,
            )
        },
        Scenario {
            boot_nodes: 20,
            ..base(
                "kill-two",
                "two heads SIGKILLed at once (no majority), then restarted",
                vec![KillTwo],
                25,
                true,
            )
        },
        Scenario {
            boot_nodes: 20,
            ..base(
                "hung",
                "SIGSTOP of the leader, a follower, rack1's primary (hung, not dead)",
                vec![Stop(Leader), Stop(Follower), Stop(RackPrimary)],
                40,
                true,
            )
        },
        Scenario {
            boot_nodes: 20,
            ..base(
                "partition",
                "the leader or a follower cut from the other heads (both ways, or inbound only)",
                vec![Partition(Leader), PartitionInbound(Leader), Partition(Follower)],
                40,
                true,
            )
        },
        Scenario {
            boot_nodes: 30,
            ..base(
                "lossy-net",
                "20 % loss on the management network; delay and reordering where tc netem exists",
                vec![Loss(20), DelayReorder],
                30,
                false,
            )
        },
        base(
            "disk-full",
            "a follower's or the leader's data dir (a 96 MiB tmpfs) filled up",
            vec![DiskFull(Follower), DiskFull(Leader)],
            30,
            true,
        ),
        base(
            "corrupt-blob",
            "a CAS blob corrupted on one head; served bytes must match their digest",
            vec![CorruptBlob(Follower), CorruptBlob(Leader)],
            20,
            true,
        ),
        base(
            "clock-jump",
            "a head's wall clock jumps an hour forward or back (libfaketime)",
            vec![ClockJump(Leader, 3600), ClockJump(Follower, -3600), ClockJump(RackPrimary, 3600)],
            30,
            true,
        ),
        base(
            "slow-fsync",
            "the leader's or a follower's fsync 50–400 ms slower (an LD_PRELOAD shim)",
            vec![SlowFsync(Leader, 400), SlowFsync(Follower, 400), SlowFsync(Leader, 50)],
            30,
            true,
        ),
        Scenario {
            boot_nodes: 50,
            ..base(
                "mixed",
                "every fault above, drawn at random",
                vec![
                    Kill(Leader),
                    Kill(Follower),
                    Kill(RackPrimary),
                    KillTwo,
                    Stop(Leader),
                    Stop(RackPrimary),
                    Partition(Leader),
                    PartitionInbound(Follower),
                    Loss(20),
                    DelayReorder,
                    CorruptBlob(Follower),
                    ClockJump(Follower, 3600),
                    SlowFsync(Leader, 200),
                    DiskFull(Follower),
                ],
                120,
                false,
            )
        },
        Scenario {
            reads: Reads::LocalPinned,
            expect_broken: Some("linearizable"),
            ..base(
                "mutant-stale-reads",
                "MUTANT: clients read a pinned head's local state while a follower is partitioned; the checker must fail it",
                vec![Partition(Follower)],
                20,
                true,
            )
        },
        Scenario {
            expect_broken: Some("booting nodes reach runtime"),
            special: Special::NoRuntime,
            boot_nodes: 6,
            boot_bound_s: 10,
            ..base(
                "mutant-boot-stuck",
                "MUTANT: rack1's heads reset every node agent's runtime-overlay request; nodes stuck before runtime must be reported",
                vec![],
                8,
                true,
            )
        },
        Scenario {
            expect_broken: Some("acknowledged writes kept"),
            special: Special::Rollback,
            ..base(
                "mutant-rollback",
                "MUTANT: every head's disk rolled back 6 s (as if fsync were off); lost acknowledged writes must be seen",
                vec![],
                12,
                true,
            )
        },
    ]
}

/// Start again every head that exited on its own (as `Restart=on-failure` would), with a
/// timeline entry naming its last log line; whether one was.
fn start_exited(
    lab: &mut Lab,
    restarted: &mut [bool; 3],
    timeline: &mut Vec<FaultRecord>,
    at_s: f64,
    when: &str,
) -> bool {
    let mut any = false;
    for (i, restarted) in restarted.iter_mut().enumerate() {
        if lab.pids[i].is_some() && faults::wulfd_pid(lab, i).is_none() {
            let last = lab.log(i).lines().last().unwrap_or("").to_owned();
            lab.kill(i);
            faults::restart(lab, i);
            *restarted = true;
            any = true;
            timeline.push(FaultRecord {
                fault: format!("head {} had exited {when}; started again", i + 1),
                heads: vec![i + 1],
                at_s,
                // Not a heal of an injected fault: no invariant waits on it.
                healed_at_s: None,
                writes_during_after_s: None,
                writes_after_heal_s: None,
                dhcp_gap_s: None,
                notes: vec![format!("last log line: {last}")],
            });
        }
    }
    any
}
