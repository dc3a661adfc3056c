//! The chaos suite's boot-wave invariant (`chaos/bootcheck.rs`), "every booting node
//! reaches the runtime stage", on reports made with `wwsim`'s own record types (so the
//! parser reads what `wwsim --json` writes): it holds when every node's agent was served
//! in time, and it fails for a node stuck before runtime, a node that never booted, a
//! node that reached runtime only after the bound, and a missing record.

#[path = "../../chaos/bootcheck.rs"]
#[allow(dead_code)]
mod bootcheck;

use wulfpack::sim::report::{NodeRecord, RefreshRecord, StageRecord, Summary};
use wulfpack::sim::Report;

use bootcheck::{line, parse, reached_runtime};

fn stage(head: &str, ms: f64) -> StageRecord {
    StageRecord {
        ms,
        head: head.into(),
        bytes: 1,
    }
}

/// Node `k` powered on at `start` s, booted after 2 s, refreshes as given (status, at).
fn node(k: u32, start: f64, refreshes: &[(u16, f64)]) -> NodeRecord {
    let mut n = NodeRecord {
        mac: format!("02:c4:b0:00:00:{k:02x}"),
        hostname: Some(format!("boot{k:02}")),
        address: Some(format!("10.10.0.{}", 9 + k).parse().unwrap()),
        booted: true,
        attempts: 1,
        started_at: start,
        ..Default::default()
    };
    for s in ["dhcp_rom", "tftp", "dhcp_ipxe"] {
        n.stages.insert(s, stage("10.10.0.1", 10.0));
    }
    for s in ["script", "kernel", "image", "system"] {
        n.stages.insert(s, stage("10.10.0.2:9873", 10.0));
    }
    n.stages.insert("boot", stage("", 2000.0));
    n.refreshes = refreshes
        .iter()
        .map(|&(status, at)| RefreshRecord {
            status,
            at,
            head: (status != 0).then(|| "10.10.0.2:9873".into()),
            error: (status == 0).then(|| "connection reset".into()),
            ..Default::default()
        })
        .collect();
    n.ok = refreshes.last().is_some_and(|r| r.0 != 0);
    n
}

fn report(nodes: Vec<NodeRecord>) -> serde_json::Value {
    serde_json::to_value(Report {
        summary: Summary::default(),
        nodes,
    })
    .unwrap()
}

#[test]
fn nodes_served_their_runtime_overlay_in_time_hold() {
    // wwsim started 5 s into the scenario; node 2 needed two agent cycles.
    let w = parse(
        &report(vec![node(1, 1.0, &[(200, 3.2)]), node(2, 2.0, &[(0, 4.1), (304, 5.1)])]),
        5.0,
    );
    assert_eq!(w.nodes[0].power_on_s, 6.0);
    assert_eq!(w.nodes[0].boot_s, Some(2.0));
    assert_eq!(w.nodes[0].runtime_at_s, Some(8.2));
    assert_eq!(w.nodes[1].runtime_at_s, Some(10.1));
    assert_eq!(w.nodes[1].refreshes_failed, 1);
    assert!(w.nodes[1].heads.contains(&"runtime=10.10.0.2:9873".to_owned()));
    assert!(w.nodes[1].heads.contains(&"dhcp_rom=10.10.0.1".to_owned()));
    let (held, detail) = reached_runtime(&w, 2, 10.1);
    assert!(held, "{detail}");
    assert!(line(&w, 2).starts_with("boot 2/2 at runtime"), "{}", line(&w, 2));
}

#[test]
fn a_node_stuck_before_runtime_breaks_the_invariant() {
    // Booted, but its agent was never served (every cycle reset).
    let stuck = node(2, 2.0, &[(0, 4.0), (0, 5.0), (0, 6.0)]);
    let w = parse(&report(vec![node(1, 1.0, &[(200, 3.0)]), stuck]), 0.0);
    let (held, detail) = reached_runtime(&w, 2, 60.0);
    assert!(!held);
    assert!(detail.starts_with("1 of 2 nodes reached the runtime stage"), "{detail}");
    assert!(
        detail.contains("boot02") && detail.contains("3 runtime refresh(es) not served"),
        "{detail}"
    );
    assert!(line(&w, 2).starts_with("boot 1/2 at runtime"));
}

#[test]
fn a_node_that_never_booted_breaks_the_invariant() {
    let mut dead = node(3, 1.0, &[]);
    dead.booted = false;
    dead.stages.clear();
    dead.error = Some("no DHCP offer".into());
    let w = parse(&report(vec![node(1, 1.0, &[(200, 3.0)]), dead]), 0.0);
    let (held, detail) = reached_runtime(&w, 2, 60.0);
    assert!(!held);
    assert!(
        detail.contains("boot03") && detail.contains("never booted; no DHCP offer"),
        "{detail}"
    );
}

#[test]
fn runtime_after_the_bound_or_a_missing_record_breaks_the_invariant() {
    let w = parse(
        &report(vec![node(1, 1.0, &[(200, 3.0)]), node(2, 1.0, &[(200, 50.0)])]),
        0.0,
    );
    let (held, detail) = reached_runtime(&w, 2, 49.0);
    assert!(!held);
    assert!(detail.contains("runtime only at 50.0 s"), "{detail}");
    // Every node reported in time, but one record missing: three nodes powered on.
    let (held, detail) = reached_runtime(&w, 3, 60.0);
    assert!(!held);
    assert!(detail.contains("2 node records for 3 nodes"), "{detail}");
}

#[test]
fn digest_mismatches_and_shared_addresses_are_carried_over() {
    let mut bad = node(1, 1.0, &[(200, 3.0)]);
    bad.digest_mismatches = vec!["image from 10.10.0.1:9873: sha256 differs".into()];
    let mut r = report(vec![bad]);
    r["summary"]["duplicate_addresses"] = serde_json::json!(["10.10.0.10 to 2 MACs"]);
    let w = parse(&r, 0.0);
    assert_eq!(w.digest_mismatches, vec!["image from 10.10.0.1:9873: sha256 differs"]);
    assert_eq!(w.duplicate_addresses, vec!["10.10.0.10 to 2 MACs"]);
}
