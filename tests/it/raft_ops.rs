//! Raft timing and the operator's view of it, with real `wulfd` processes on loopback:
//! a healthy cluster keeps its leader (no election without a fault), a dead head is
//! logged collapsed by the leader, and the log options (`--log-format json`, no colour
//! codes in a file) do what docs/OPERATIONS.md says.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::proc_cluster::{run_wwctl, wait_until, ProcCluster};

const WULFD: &str = env!("CARGO_BIN_EXE_wulfd");
const WWCTL: &str = env!("CARGO_BIN_EXE_wwctl");

/// Seconds the idle test watches the cluster; `WULFPACK_IDLE_SECS=600` for the
/// 10-minute run recorded in docs/DECISIONS.md.
fn idle_secs() -> u64 {
    std::env::var("WULFPACK_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(75)
}

fn wwctl(heads: &str, args: &[&str]) -> (bool, String, String) {
    let r = run_wwctl(Path::new(WWCTL), heads, args);
    (r.ok(), r.stdout, r.stderr)
}

/// (leader id, highest term) as the cluster reports it, if a leader is known.
fn leader_and_term(heads: &str) -> Option<(u64, u64)> {
    let (ok, out, _) = wwctl(heads, &["--timeout", "3", "cluster", "status", "-o", "json"]);
    if !ok {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let heads = v["heads"].as_array()?;
    let leader = heads.iter().find(|h| h["role"] == "Leader")?["id"].as_u64()?;
    let term = heads.iter().filter_map(|h| h["term"].as_u64()).max()?;
    Some((leader, term))
}

fn ready(p: &ProcCluster) -> (u64, u64) {
    let all = p.all_heads();
    wait_until(30, "cluster initialised", || {
        let (ok, out, _) = wwctl(&all, &["--timeout", "2", "profile", "list"]);
        ok && out.lines().any(|l| l.starts_with("default"))
    });
    let mut lt = None;
    wait_until(15, "a leader", || {
        lt = leader_and_term(&all);
        lt.is_some()
    });
    lt.unwrap()
}

/// Part 7 of issue 7: no elections on an idle or lightly loaded healthy cluster. Any
/// election, successful or not, raises some head's term; the leader must not change either.
#[test]
fn healthy_cluster_elects_no_new_leader_idle_or_lightly_loaded() {
    let p = ProcCluster::start(Path::new(WULFD), 3, "");
    let all = p.all_heads();
    let (leader, term) = ready(&p);
    let secs = idle_secs();
    let start = Instant::now();
    let mut samples = 0;
    let mut writes = 0;
    // Idle for the first half, then a write every 2 s (lightly loaded); sample once a second.
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        if start.elapsed() > Duration::from_secs(secs / 2) && samples % 2 == 0 {
            let name = format!("light{writes}");
            let (ok, _, err) = wwctl(&all, &["--timeout", "5", "node", "add", &name]);
            assert!(ok, "write {name} failed: {err}");
            writes += 1;
        }
        if let Some((l, t)) = leader_and_term(&all) {
            samples += 1;
            assert_eq!(
                (l, t),
                (leader, term),
                "after {:?} the leader/term changed from head {leader}/term {term}; leader log:\n{}",
                start.elapsed(),
                p.log(leader as usize - 1)
            );
        }
    }
    assert!(samples as u64 >= secs / 2, "only {samples} status samples in {secs} s");
    println!("{secs} s, {samples} samples, {writes} writes: leader {leader}, term {term} throughout");
}

/// Part 9: with one head of three SIGKILLed, the leader's log says so once (WARN, with the
/// peer and the reason), not several times a second, and says when it is back. Also: no
/// ANSI colour codes when stderr is a file.
#[test]
fn leader_logs_a_dead_head_collapsed_and_its_return() {
    let mut p = ProcCluster::start(Path::new(WULFD), 3, "");
    let all = p.all_heads();
    let (leader, _) = ready(&p);
    let li = leader as usize - 1;
    let victim = (li + 1) % 3;
    let victim_id = victim + 1;
    // Both survivors are watched: on this loaded 2-core machine (other tests run
    // beside this one) leadership may move between them during the 10 s, and then
    // the new leader is the one that talks to the dead head.
    let survivors = [li, (li + 2) % 3];
    let before: Vec<usize> = survivors.iter().map(|&h| p.log(h).len()).collect();
    p.kill(victim);
    // ~10 s of a dead follower, with writes and (linearizable) reads going on.
    let t = Instant::now();
    let mut i = 0;
    while t.elapsed() < Duration::from_secs(10) {
        let (ok, _, err) = wwctl(&all, &["--timeout", "5", "node", "add", &format!("n{i}")]);
        assert!(ok, "{err}");
        assert!(wwctl(&all, &["--timeout", "5", "node", "list"]).0);
        i += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let down = format!("head {victim_id} at {} unreachable", p.addrs[victim]);
    let mut named = false;
    for (k, &h) in survivors.iter().enumerate() {
        let during = p.log(h)[before[k]..].to_string();
        let noisy: Vec<&str> = during
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        // Whoever talks to the dead head first says so, naming it.
        named |= noisy
            .iter()
            .find(|l| l.contains(&format!("head {victim_id} ")))
            .is_some_and(|l| l.contains(&down));
        // The first failure, at most one summary, and a handful of lines from elsewhere
        // (not one per failed RPC: the dead head got ≥ 10 RPCs in these 10 s).
        assert!(
            noisy.len() <= 4,
            "head {}: {} WARN/ERROR lines in 10 s:\n{}",
            h + 1,
            noisy.len(),
            noisy.join("\n")
        );
        assert!(!during.contains('\x1b'), "colour codes in a log file:\n{during}");
        println!(
            "head {}'s WARN/ERROR lines in 10 s with head {victim_id} dead:\n{}",
            h + 1,
            noisy.join("\n")
        );
    }
    assert!(
        named,
        "a surviving head warned once, naming the dead peer ({down}); leader {leader}, victim {victim_id}, status now {:?}; logs:\n{}\n---\n{}\n---victim:\n{}",
        leader_and_term(&all),
        p.log(survivors[0]),
        p.log(survivors[1]),
        p.log(victim)
    );

    p.spawn(victim);
    let back = format!("head {victim_id} at {} reachable again after", p.addrs[victim]);
    wait_until(15, "the leader logs the head's return", || {
        survivors.iter().any(|&h| p.log(h).contains(&back))
    });
}

/// `--log-format json`: every line on stderr is one JSON object with level and message.
#[test]
fn wulfd_log_format_json_writes_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<String> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let cfg = dir.path().join("wulfd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "id: 1\ndata_dir: {}\nlisten: \"{}\"\nhttp_listen: \"{}\"\ncluster_name: json\ninsecure: true\nbootstrap:\n  - {{id: 1, addr: \"{}\"}}\n",
            dir.path().join("data").display(),
            ports[0],
            ports[1],
            ports[0]
        ),
    )
    .unwrap();
    let log_path = dir.path().join("wulfd.log");
    let mut child = Command::new(WULFD)
        .args(["--log-format", "json", "--config"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut got = String::new();
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(20, "wulfd logs it is starting", || {
            got = std::fs::read_to_string(&log_path).unwrap_or_default();
            got.contains("wulfd starting")
        })
    }));
    let _ = child.kill();
    let _ = child.wait();
    assert!(waited.is_ok(), "no start line; log:\n{got}");
    // Complete lines only: the kill may have cut the last one.
    let got = std::fs::read_to_string(&log_path).unwrap();
    let complete = got.rsplit_once('\n').map_or("", |(lines, _)| lines);
    assert!(complete.contains("wulfd starting"));
    for line in complete.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
}
