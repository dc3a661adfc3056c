//! `wwsim` against real heads (lab: tests/common/sim_lab.rs): three `wulfd` processes
//! serving one rack in the order 1, 2, 3, and simulated nodes in a namespace on the
//! rack's bridge, each booting as a PXE ROM and iPXE would (DHCP → TFTP → DHCP → script
//! → kernel → image → overlays) from its own leased address, then fetching its runtime
//! overlay as `wwclient` does.
//!
//! Checked from `wwsim`'s JSON report: every node booted and refreshed, each at the
//! address its node has (all distinct), every download matched its digest, the primary
//! answered everything while alive; with the primary SIGKILLed mid-run, still every node
//! boots, the later ones entirely from the next head.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::skip_reason;
use crate::sim_lab::{node, SimLab};

fn skip(name: &str) -> bool {
    match skip_reason(&[("ip", "iproute2"), ("curl", "curl")]) {
        Some(why) => {
            eprintln!("SKIP {name}: {why}");
            true
        }
        None if !Path::new("/usr/lib/ipxe/undionly.kpxe").exists() => {
            eprintln!("SKIP {name}: /usr/lib/ipxe/undionly.kpxe missing (apt-get install ipxe)");
            true
        }
        None => false,
    }
}

/// Run `wwsim` to its end and return its report (panics with its output and the heads'
/// logs if it did not finish).
fn finish(lab: &SimLab, pid: u32, json: &Path, log: &Path, secs: u64) -> Value {
    let st = lab.sim.wait(pid, Duration::from_secs(secs));
    let out = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        st.is_some(),
        "wwsim still running after {secs} s\n{out}\n{}",
        lab.logs()
    );
    let text = std::fs::read_to_string(json).unwrap_or_else(|e| panic!("no report ({e}):\n{out}\n{}", lab.logs()));
    let report: Value = serde_json::from_str(&text).unwrap();
    let s = &report["summary"];
    assert_eq!(
        s["failed"],
        0,
        "failures:\n{out}\nfirst records: {}\n{}",
        serde_json::to_string_pretty(
            &report["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["ok"] != true)
                .take(3)
                .collect::<Vec<_>>()
        )
        .unwrap(),
        lab.logs()
    );
    assert_eq!(st.unwrap().code(), Some(0), "{out}");
    eprintln!("{out}");
    report
}

fn head(n: &Value, stage: &str) -> String {
    n["stages"][stage]["head"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn simulated_nodes_boot_through_every_stage_against_a_three_head_rack() {
    if skip("simulated_nodes_boot_through_every_stage_against_a_three_head_rack") {
        return;
    }
    const N: u32 = 100;
    let mut lab = SimLab::build();
    lab.ready(N);
    let json = lab.dir.path().join("report.json");
    let log = lab.dir.path().join("wwsim.log");
    let t = Instant::now();
    // No --interval: the agents use the 1 s of the wwclient.conf their system overlay holds.
    let pid = lab.wwsim(N, "--refreshes 2 --deadline 60 --seed 7", &json, &log);
    let report = finish(&lab, pid, &json, &log, 70);
    eprintln!("wwsim ran {:.1} s", t.elapsed().as_secs_f64());
    let s = &report["summary"];
    assert_eq!(s["booted"], N);
    assert_eq!(s["digest_mismatches"], 0);
    assert_eq!(s["duplicate_addresses"], Value::Array(vec![]));
    let ipxe_len = std::fs::metadata("/usr/lib/ipxe/undionly.kpxe").unwrap().len();
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), N as usize);
    for (i, n) in nodes.iter().enumerate() {
        let i = i as u32 + 1;
        let (mac, ip) = node(i);
        assert_eq!(n["mac"], mac.as_str());
        // Each node was leased its own configured address (so all are distinct).
        assert_eq!(n["address"], ip.to_string().as_str(), "{n}");
        assert_eq!(n["hostname"], format!("sim{i:05}").as_str());
        // The rack's primary answered every stage.
        for stage in ["dhcp_rom", "dhcp_ipxe"] {
            assert_eq!(head(n, stage), "10.10.0.1", "{stage}: {n}");
        }
        assert_eq!(head(n, "tftp"), "10.10.0.1");
        for stage in ["script", "kernel", "image", "system"] {
            assert_eq!(head(n, stage), "10.10.0.1:9873", "{stage}: {n}");
        }
        assert_eq!(n["stages"]["tftp"]["bytes"], ipxe_len, "the whole iPXE binary");
        assert_eq!(n["tftp_checked_against"], "head", "the head's /efiboot/ digest");
        assert_eq!(n["stages"]["kernel"]["bytes"], 256 * 1024);
        // Secure mode: iPXE's runtime-overlay download (an unprivileged port) is refused
        // by each of the three heads and skipped; the agent gets it from port < 1024.
        assert!(n["stages"]["runtime"].is_null(), "{n}");
        assert_eq!(n["refused"], 3, "{n}");
        assert_eq!(n["images"], serde_json::json!(["kernel", "image", "system"]));
        assert_eq!(n["agent_config"], "wwclient.conf");
        let r = n["refreshes"].as_array().unwrap();
        assert_eq!(r.len(), 2, "{n}");
        assert_eq!(
            (r[0]["status"].as_u64(), r[1]["status"].as_u64()),
            (Some(200), Some(304)),
            "{n}"
        );
        assert_eq!(r[0]["head"], "10.10.0.1:9873");
    }
    // The heads saw the nodes where they are: head 1's status board has the runtime
    // overlay sent to the node's address.
    let st = lab.wwctl_ok(crate::sim_lab::ALL, "node status sim00001");
    assert!(st.contains("10.10.64.1"), "{st}");
}

#[test]
fn every_simulated_node_boots_when_the_racks_primary_is_killed_mid_run() {
    if skip("every_simulated_node_boots_when_the_racks_primary_is_killed_mid_run") {
        return;
    }
    const N: u32 = 60;
    let mut lab = SimLab::build();
    lab.ready(N);
    let json = lab.dir.path().join("report.json");
    let log = lab.dir.path().join("wwsim.log");
    // Power-ons spread over 8 s; the primary dies once a quarter has booted.
    let pid = lab.wwsim(
        N,
        "--refreshes 1 --ramp 8s --progress 200ms --deadline 90 --seed 11",
        &json,
        &log,
    );
    let booted = |text: &str| -> u32 {
        text.lines()
            .rev()
            .find_map(|l| l.split(" booted").next()?.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    lab.wait("a quarter of the nodes booted", 60, || {
        booted(&std::fs::read_to_string(&log).unwrap_or_default()) >= N / 4
    });
    let killed_at = Instant::now();
    lab.kill(0);
    let report = finish(&lab, pid, &json, &log, 100);
    eprintln!("finished {:.1} s after the kill", killed_at.elapsed().as_secs_f64());
    assert_eq!(report["summary"]["booted"], N);
    let nodes = report["nodes"].as_array().unwrap();
    let from = |n: &Value, h: &str| ["dhcp_rom", "tftp", "dhcp_ipxe"].iter().all(|s| head(n, s) == h);
    let on_primary = nodes.iter().filter(|n| from(n, "10.10.0.1")).count();
    let on_backup = nodes.iter().filter(|n| from(n, "10.10.0.2")).count();
    assert!(
        on_primary >= (N / 4) as usize,
        "{on_primary} nodes booted from the primary"
    );
    assert!(on_backup > 0, "no node booted entirely from the next head");
    for n in nodes {
        // Whatever a node's boot had reached when the primary died, it finished from the
        // next head, and its agent got the runtime overlay (from head 2 once 1 is gone).
        assert_eq!(n["ok"], true, "{n}");
        let r = &n["refreshes"][0];
        assert!(r["status"] == 200 || r["status"] == 304, "{n}");
    }
}
