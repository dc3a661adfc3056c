//! The boot wave's invariant, read from `wwsim`'s JSON report (`--json`): every node
//! that powered on during the faults reached the runtime stage (booted through DHCP,
//! TFTP, the iPXE script, kernel, image and system overlay, then had its node agent's
//! runtime overlay served) by a bound after the last heal. No I/O here, so
//! `tests/it/chaos_checker.rs` checks it on made-up reports, a stuck node among them.

use serde::Serialize;
use serde_json::Value;

/// One simulated node of the wave, on the scenario's clock (seconds since the clients
/// started, as the fault timeline).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeBoot {
    /// The node's name (option 12 of its lease), if it got that far.
    pub name: Option<String>,
    pub mac: String,
    pub address: Option<String>,
    pub power_on_s: f64,
    /// From power-on to iPXE's `boot` (failed boots and reboots included).
    pub boot_s: Option<f64>,
    /// When the first runtime overlay the agent was served arrived.
    pub runtime_at_s: Option<f64>,
    /// Boots started (1 + reboots).
    pub attempts: u64,
    /// DHCP, TFTP and HTTP retries and reboots.
    pub retries: u64,
    /// Agent refresh cycles no head served, before the one that was.
    pub refreshes_failed: u64,
    /// Who answered: `stage=head` for DHCP, TFTP, script, kernel, image, system overlay
    /// and the first served refresh.
    pub heads: Vec<String>,
    pub error: Option<String>,
}

/// What the wave's report says, on the scenario's clock.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Wave {
    pub nodes: Vec<NodeBoot>,
    /// Served bytes that did not match their digest (wwsim's checks).
    pub digest_mismatches: Vec<String>,
    /// Addresses leased to more than one MAC.
    pub duplicate_addresses: Vec<String>,
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Read `wwsim`'s report; `offset_s` is when wwsim started on the scenario's clock.
pub fn parse(report: &Value, offset_s: f64) -> Wave {
    let round = |s: f64| (s * 1000.0).round() / 1000.0;
    let nodes = report["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|n| {
            let refreshes = n["refreshes"].as_array().map(Vec::as_slice).unwrap_or_default();
            let served = refreshes.iter().position(|r| r["status"] == 200 || r["status"] == 304);
            let mut heads: Vec<String> = ["dhcp_rom", "tftp", "dhcp_ipxe", "script", "kernel", "image", "system"]
                .iter()
                .filter_map(|s| n["stages"][s]["head"].as_str().map(|h| format!("{s}={h}")))
                .collect();
            if let Some(h) = served.and_then(|i| refreshes[i]["head"].as_str()) {
                heads.push(format!("runtime={h}"));
            }
            let r = &n["retries"];
            NodeBoot {
                name: n["hostname"].as_str().map(Into::into),
                mac: n["mac"].as_str().unwrap_or_default().into(),
                address: n["address"].as_str().map(Into::into),
                power_on_s: round(offset_s + f(&n["started_at"]).unwrap_or(0.0)),
                boot_s: (n["booted"] == true)
                    .then(|| f(&n["stages"]["boot"]["ms"]).map(|ms| round(ms / 1000.0)))
                    .flatten(),
                runtime_at_s: served.and_then(|i| f(&refreshes[i]["at"])).map(|s| round(offset_s + s)),
                attempts: n["attempts"].as_u64().unwrap_or(0),
                retries: ["dhcp", "tftp", "http", "reboots"]
                    .iter()
                    .filter_map(|k| r[k].as_u64())
                    .sum(),
                refreshes_failed: served.unwrap_or(refreshes.len()) as u64,
                heads,
                error: n["error"].as_str().map(Into::into),
            }
        })
        .collect();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|s| s.as_str().map_or_else(|| s.to_string(), Into::into))
            .collect()
    };
    Wave {
        nodes,
        digest_mismatches: report["nodes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .flat_map(|n| strings(&n["digest_mismatches"]))
            .collect(),
        duplicate_addresses: strings(&report["summary"]["duplicate_addresses"]),
    }
}

/// "Every booting node reaches the runtime stage": all `expected` nodes reported, each
/// with a served runtime overlay no later than `by_s` (the last heal plus the bound).
/// Returns whether it held and what was seen.
pub fn reached_runtime(wave: &Wave, expected: usize, by_s: f64) -> (bool, String) {
    let late: Vec<&NodeBoot> = wave
        .nodes
        .iter()
        .filter(|n| n.runtime_at_s.is_none_or(|t| t > by_s))
        .collect();
    let reached = wave.nodes.len() - late.len();
    if wave.nodes.len() == expected && late.is_empty() {
        let last = wave.nodes.iter().filter_map(|n| n.runtime_at_s).fold(0.0, f64::max);
        return (
            true,
            format!("all {expected} nodes reached the runtime stage, the last at {last:.1} s (bound {by_s:.1} s)"),
        );
    }
    let mut why: Vec<String> = late
        .iter()
        .take(3)
        .map(|n| {
            let stage = match (n.boot_s, n.runtime_at_s) {
                (None, _) => "never booted".to_owned(),
                (Some(_), None) => format!("booted, {} runtime refresh(es) not served", n.refreshes_failed),
                (Some(_), Some(t)) => format!("runtime only at {t:.1} s"),
            };
            format!(
                "{} ({}): {stage}{}",
                n.name.as_deref().unwrap_or("?"),
                n.mac,
                n.error.as_ref().map(|e| format!("; {e}")).unwrap_or_default()
            )
        })
        .collect();
    if wave.nodes.len() != expected {
        why.insert(0, format!("{} node records for {expected} nodes", wave.nodes.len()));
    }
    (
        false,
        format!(
            "{reached} of {expected} nodes reached the runtime stage by {by_s:.1} s: {}",
            why.join("; ")
        ),
    )
}

/// The wave in one line: nodes at runtime, boot times, retries.
pub fn line(wave: &Wave, expected: usize) -> String {
    let mut boots: Vec<f64> = wave.nodes.iter().filter_map(|n| n.boot_s).collect();
    boots.sort_by(f64::total_cmp);
    let at = wave.nodes.iter().filter(|n| n.runtime_at_s.is_some()).count();
    let retries: u64 = wave.nodes.iter().map(|n| n.retries + n.refreshes_failed).sum();
    let p50 = boots.get(boots.len() / 2).copied().unwrap_or(0.0);
    let max = boots.last().copied().unwrap_or(0.0);
    format!("boot {at}/{expected} at runtime, boot p50 {p50:.1} s max {max:.1} s, {retries} retries")
}
