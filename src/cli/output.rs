//! `wwctl` output: aligned plain tables as Warewulf prints them, or YAML/JSON.
//!
//! Tables use comfy-table without borders, so columns line up like Warewulf's
//! and stay greppable/awk-able. Golden files in `tests/golden/` pin the shapes.

use std::io::Write;

use anyhow::Result;
use clap::ValueEnum;
use comfy_table::{presets::NOTHING, CellAlignment, ContentArrangement, Table};

use std::collections::BTreeMap;

use crate::model::{Merged, NodeConf};
use crate::pb::admin::ClusterStatusReply;
use crate::state::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

/// Which columns `node list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Default,
    Long,
    Net,
    Ipmi,
    All,
}

/// A borderless table; the first row is the header.
pub fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_style(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| h.to_string()));
    for r in rows {
        t.add_row(r);
    }
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
        c.set_cell_alignment(CellAlignment::Left);
    }
    // comfy-table pads the last column too; trailing spaces help nobody.
    let mut s: String = t
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n");
    s.push('\n');
    s
}

fn or_dash(v: Option<&str>) -> String {
    match v {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "--".into(),
    }
}

/// `merged`: the objects to show (profiles: as stored, without inheritance);
/// `raw`: the stored objects, for views that show them unmerged.
pub fn list(
    kind: Kind,
    view: View,
    merged: &[Merged],
    raw: &BTreeMap<String, NodeConf>,
    out: &mut dyn Write,
) -> Result<()> {
    let name_col = match kind {
        Kind::Node => "NODE NAME",
        Kind::Profile => "PROFILE NAME",
    };
    // Warewulf heads its `-n` and `-i` tables with a bare NODE (as `-a` does), and the
    // default and `-l` tables with NODE NAME.
    let short_col = match kind {
        Kind::Node => "NODE",
        Kind::Profile => "PROFILE",
    };
    let text = match view {
        View::All => {
            let rows = merged.iter().map(|m| match kind {
                Kind::Node => (m.name.as_str(), m.field_rows()),
                Kind::Profile => (m.name.as_str(), crate::model::profile_field_rows(&raw[&m.name])),
            });
            let head = match kind {
                Kind::Node => ["NODE", "FIELD", "PROFILE", "VALUE"],
                Kind::Profile => ["PROFILE", "FIELD", "PROFILE", "VALUE"],
            };
            table(
                &head,
                rows.flat_map(|(name, rows)| {
                    rows.into_iter()
                        .map(move |r| vec![name.to_string(), r.field, r.origin, r.value])
                }),
            )
        }
        View::Default => match kind {
            Kind::Node => table(
                &[name_col, "PROFILES", "NETWORK"],
                merged.iter().map(|m| {
                    vec![
                        m.name.clone(),
                        or_dash(Some(&m.conf.profiles.join(","))),
                        or_dash(Some(
                            &m.conf.network_devices.keys().cloned().collect::<Vec<_>>().join(","),
                        )),
                    ]
                }),
            ),
            Kind::Profile => table(
                &[name_col, "COMMENT/DESCRIPTION"],
                merged
                    .iter()
                    .map(|m| vec![m.name.clone(), or_dash(m.conf.comment.as_deref())]),
            ),
        },
        View::Long => table(
            &[name_col, "KERNEL VERSION", "IMAGE", "OVERLAYS (S/R)"],
            merged.iter().map(|m| {
                vec![
                    m.name.clone(),
                    or_dash(m.conf.kernel.as_ref().and_then(|k| k.version.as_deref())),
                    or_dash(m.conf.image_name.as_deref()),
                    format!(
                        "{}/{}",
                        or_dash(Some(&m.conf.system_overlay.join(","))),
                        or_dash(Some(&m.conf.runtime_overlay.join(",")))
                    ),
                ]
            }),
        ),
        View::Net => table(
            &[short_col, "NETWORK", "HWADDR", "IPADDR", "GATEWAY", "DEVICE"],
            merged.iter().flat_map(|m| {
                let rows: Vec<Vec<String>> = if m.conf.network_devices.is_empty() {
                    vec![vec![
                        m.name.clone(),
                        "--".into(),
                        "--".into(),
                        "--".into(),
                        "--".into(),
                        "--".into(),
                    ]]
                } else {
                    m.conf
                        .network_devices
                        .iter()
                        .map(|(net, d)| {
                            vec![
                                m.name.clone(),
                                net.clone(),
                                or_dash(d.hwaddr.as_deref()),
                                or_dash(d.ipaddr.as_deref()),
                                or_dash(d.gateway.as_deref()),
                                or_dash(d.device.as_deref()),
                            ]
                        })
                        .collect()
                };
                rows
            }),
        ),
        View::Ipmi => table(
            &[short_col, "IPMI IPADDR", "IPMI PORT", "IPMI USERNAME", "IPMI INTERFACE"],
            merged.iter().map(|m| {
                let i = m.conf.ipmi.clone().unwrap_or_default();
                vec![
                    m.name.clone(),
                    or_dash(i.ipaddr.as_deref()),
                    or_dash(i.port.as_deref()),
                    or_dash(i.username.as_deref()),
                    or_dash(i.interface.as_deref()),
                ]
            }),
        ),
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// One head's answer to `cluster verify`.
#[derive(Debug, serde::Serialize)]
pub struct DigestRow {
    pub id: u64,
    pub addr: String,
    pub applied: Option<u64>,
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// `wwctl cluster verify`: a table of heads, applied index and state digest.
/// A table of `rows` under `header`, or `data` as JSON/YAML.
pub fn rows<T: serde::Serialize + ?Sized>(
    header: &[&str],
    rows: &[Vec<String>],
    data: &T,
    fmt: Format,
    out: &mut dyn Write,
) -> Result<()> {
    match fmt {
        Format::Table => out.write_all(table(header, rows.iter().cloned()).as_bytes())?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, data)?;
            writeln!(out)?;
        }
        Format::Yaml => out.write_all(serde_yaml_ng::to_string(data)?.as_bytes())?,
    }
    Ok(())
}

/// Warewulf's `image list -l` times: Go's RFC822, `02 Jan 06 15:04 UTC`.
pub fn rfc822(secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string();
    // 2026-11-27T10:04:05Z
    let (y, mo, d, hm) = (&t[2..4], &t[5..7], &t[8..10], &t[11..16]);
    let m = MONTHS[mo.parse::<usize>().unwrap_or(1).clamp(1, 12) - 1];
    format!("{d} {m} {y} {hm} UTC")
}

pub fn state_digests(rows: &[DigestRow], fmt: Format, out: &mut dyn Write) -> Result<()> {
    match fmt {
        Format::Table => {
            let lines = rows.iter().map(|r| {
                vec![
                    r.id.to_string(),
                    r.addr.clone(),
                    r.applied.map_or_else(|| "--".to_string(), |a| a.to_string()),
                    r.digest.clone().unwrap_or_else(|| r.error.clone()),
                ]
            });
            out.write_all(table(&["HEAD", "ADDRESS", "APPLIED", "STATE DIGEST"], lines).as_bytes())?;
        }
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, rows)?;
            writeln!(out)?;
        }
        Format::Yaml => out.write_all(serde_yaml_ng::to_string(rows)?.as_bytes())?,
    }
    Ok(())
}

pub fn cluster_status(st: &ClusterStatusReply, fmt: Format, out: &mut dyn Write) -> Result<()> {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        id: u64,
        addr: &'a str,
        reachable: bool,
        error: &'a str,
        role: &'a str,
        term: u64,
        leader: u64,
        last_log: u64,
        commit: u64,
        applied: u64,
        snapshot: u64,
        /// Blobs the catalog references that the head lacks (None: not reported).
        missing_blobs: Option<u64>,
        /// Their bytes, where the catalog records sizes.
        missing_bytes: Option<u64>,
        /// Missing blobs of unrecorded size (not in `missing_bytes`).
        missing_unknown_size: Option<u64>,
        /// The applied index whose catalog the missing counts reflect (a head that has
        /// just restarted counts against what it had applied, until it catches up).
        missing_as_of: Option<u64>,
        /// Entries behind the leader's last log entry (None: no leader answered).
        lag: Option<u64>,
        /// Racks the head serves now (None: unreachable, or not reported).
        racks_served: Option<Vec<String>>,
        /// Racks that list the head.
        racks_listed: &'a [String],
    }
    let rows: Vec<Row> = st
        .heads
        .iter()
        .map(|h| {
            let s = h.status.clone().unwrap_or_default();
            Row {
                id: h.id,
                addr: &h.addr,
                reachable: h.reachable,
                error: &h.error,
                role: if h.reachable { leak_role(&s.role) } else { "--" },
                term: s.term,
                leader: s.leader_id,
                last_log: s.last_log_index,
                commit: s.commit_index,
                applied: s.applied_index,
                snapshot: s.snapshot_index,
                missing_blobs: s.artifacts.map(|a| a.missing),
                missing_bytes: s.artifacts.map(|a| a.missing_bytes),
                missing_unknown_size: s.artifacts.map(|a| a.missing_unknown_size),
                missing_as_of: s.artifacts.map(|a| a.as_of_index),
                lag: h.lag,
                racks_served: (h.reachable && s.racks_reported).then(|| s.racks_served.clone()),
                racks_listed: &h.racks_listed,
            }
        })
        .collect();
    match fmt {
        Format::Json => {
            serde_json::to_writer_pretty(
                &mut *out,
                &serde_json::json!({
                "cluster": st.cluster_name, "answered_by": st.answered_by, "heads": rows }),
            )?;
            writeln!(out)?;
        }
        Format::Yaml => {
            out.write_all(
                serde_yaml_ng::to_string(&serde_json::json!({
                    "cluster": st.cluster_name, "answered_by": st.answered_by, "heads": rows }))?
                .as_bytes(),
            )?;
        }
        Format::Table => {
            writeln!(out, "CLUSTER {} (answered by head {})", st.cluster_name, st.answered_by)?;
            let num = |reach: bool, v: u64| if reach { v.to_string() } else { "--".into() };
            let t = table(
                &[
                    "HEAD", "ADDRESS", "ROLE", "TERM", "LEADER", "LAST LOG", "APPLIED", "LAG", "MISSING", "RACKS",
                    "HEALTH",
                ],
                rows.iter().map(|r| {
                    vec![
                        r.id.to_string(),
                        r.addr.to_string(),
                        r.role.to_string(),
                        num(r.reachable, r.term),
                        num(r.reachable && r.leader != 0, r.leader),
                        num(r.reachable, r.last_log),
                        num(r.reachable, r.applied),
                        r.lag.map_or_else(|| "--".into(), |l| l.to_string()),
                        match (r.reachable, r.missing_blobs) {
                            (true, Some(n)) => missing_cell(n, r.missing_bytes, r.missing_unknown_size),
                            _ => "--".into(),
                        },
                        racks_cell(r.racks_served.as_deref(), r.racks_listed),
                        if r.reachable {
                            "ok".to_string()
                        } else {
                            format!("unreachable: {}", r.error)
                        },
                    ]
                }),
            );
            out.write_all(t.as_bytes())?;
        }
    }
    Ok(())
}

/// The racks a head serves, then those that list it but it does not serve:
/// `r1,r2`, `r1 (not r3)`, `- (not r3)`; `--` for unknown (`-- (not r3)` when racks list it).
fn racks_cell(served: Option<&[String]>, listed: &[String]) -> String {
    let not: Vec<&str> = listed
        .iter()
        .filter(|l| !served.is_some_and(|s| s.contains(l)))
        .map(String::as_str)
        .collect();
    let first = match served {
        None => "--".to_string(),
        Some([]) => "-".to_string(),
        Some(s) => s.join(","),
    };
    if !not.is_empty() {
        format!("{first} (not {})", not.join(","))
    } else {
        first
    }
}

/// `0`, or `3 (1.5 GiB)`, or `3 (1.5 GiB + 1 of unknown size)`.
fn missing_cell(n: u64, bytes: Option<u64>, unknown: Option<u64>) -> String {
    if n == 0 {
        return "0".into();
    }
    let unknown = unknown.unwrap_or(0);
    let bytes = human_bytes(bytes.unwrap_or(0));
    match (n == unknown, unknown) {
        (true, _) => format!("{n} (size unknown)"),
        (false, 0) => format!("{n} ({bytes})"),
        (false, u) => format!("{n} ({bytes} + {u} of unknown size)"),
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn leak_role(s: &str) -> &'static str {
    match s {
        "Leader" => "Leader",
        "Follower" => "Follower",
        "Candidate" => "Candidate",
        "Learner" => "Learner",
        "Shutdown" => "Shutdown",
        _ => "Unknown",
    }
}

/// One row of `wwctl node status`: a node and an event (`None`: no head has seen it).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusRow {
    pub node: String,
    #[serde(flatten)]
    pub event: Option<crate::boot::status::HeadNodeStatus>,
}

/// Warewulf's selection and order for `node status`: every known node (never-seen
/// ones as `--`), filtered by names, `--time` and `--unknown`, sorted by name,
/// reversed with `--reverse`, or most recent first with `--last`. With `--history`
/// each event is a row (oldest first within a node).
pub fn status_rows(
    events: Vec<crate::boot::status::HeadNodeStatus>,
    known: &[String],
    names: Option<&std::collections::HashSet<String>>,
    args: &super::objects::StatusArgs,
) -> Vec<StatusRow> {
    let wanted = |n: &str| names.is_none_or(|f| f.contains(n));
    let mut seen = std::collections::HashSet::new();
    let mut rows: Vec<StatusRow> = Vec::new();
    for e in events {
        if !wanted(&e.status.node) {
            continue;
        }
        seen.insert(e.status.node.clone());
        if args.unknown {
            continue;
        }
        let at = e.status.last_seen_unix() as i64;
        if args.time.is_some_and(|t| at < t) {
            continue;
        }
        rows.push(StatusRow {
            node: e.status.node.clone(),
            event: Some(e),
        });
    }
    // `--time` asks for check-ins after a moment; a node never seen has none.
    if args.time.is_none() {
        for n in known.iter().filter(|n| wanted(n) && !seen.contains(*n)) {
            rows.push(StatusRow {
                node: n.clone(),
                event: None,
            });
        }
    }
    let last_seen = |r: &StatusRow| r.event.as_ref().map(|e| e.status.last_seen);
    // A stable sort keeps each node's history in time order.
    if args.last {
        rows.sort_by(|a, b| last_seen(b).cmp(&last_seen(a)).then_with(|| a.node.cmp(&b.node)));
    } else if args.reverse {
        rows.sort_by(|a, b| b.node.cmp(&a.node));
    } else {
        rows.sort_by(|a, b| a.node.cmp(&b.node));
    }
    rows
}

/// `wwctl node status`: the most recent boot event per node over all heads, or with
/// `history` every recent event.
pub fn node_status(rows: &[StatusRow], unreachable: &[u64], history: bool, fmt: Format) -> Result<String> {
    let now = std::time::SystemTime::now();
    Ok(match fmt {
        Format::Json => serde_json::to_string_pretty(rows)? + "\n",
        Format::Yaml => serde_yaml_ng::to_string(rows)?,
        Format::Table => {
            let mut header = vec!["NODE NAME", "STAGE", "SENT", "IPADDR", "LAST SEEN (s)", "HEAD"];
            if history {
                header.push("NOTE");
            }
            let mut t = table(
                &header,
                rows.iter().map(|r| match &r.event {
                    None => {
                        let mut v = vec![r.node.clone()];
                        v.extend(std::iter::repeat_n("--".to_string(), if history { 6 } else { 5 }));
                        v
                    }
                    Some(e) => {
                        let ago = now.duration_since(e.status.last_seen).map(|d| d.as_secs()).unwrap_or(0);
                        let mut v = vec![
                            r.node.clone(),
                            e.status.stage.to_string(),
                            e.status.sent.clone(),
                            e.status.client.to_string(),
                            ago.to_string(),
                            e.head.to_string(),
                        ];
                        if history {
                            v.push(if e.status.foreign {
                                "not from the node's address".to_string()
                            } else {
                                String::new()
                            });
                        }
                        v
                    }
                }),
            );
            if !unreachable.is_empty() {
                t.push_str(&format!(
                    "(heads {unreachable:?} did not answer; their events are missing)\n"
                ));
            }
            t
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_artifacts_cell_counts_bytes_and_unknown_sizes() {
        assert_eq!(missing_cell(0, Some(0), Some(0)), "0");
        assert_eq!(missing_cell(2, Some(3 << 29), Some(0)), "2 (1.5 GiB)");
        assert_eq!(missing_cell(3, Some(512), Some(1)), "3 (512 B + 1 of unknown size)");
        assert_eq!(missing_cell(2, Some(0), Some(2)), "2 (size unknown)");
    }

    #[test]
    fn cluster_status_shows_missing_per_head_and_dashes_for_the_unreachable() {
        use crate::pb::admin::{ArtifactsStatus, HeadHealth, HeadStatusReply};
        let head = |id: u64, reachable: bool, missing: u64| HeadHealth {
            id,
            addr: format!("10.0.0.{id}:9701"),
            reachable,
            error: if reachable { String::new() } else { "refused".into() },
            status: reachable.then(|| HeadStatusReply {
                id,
                role: "Follower".into(),
                artifacts: Some(ArtifactsStatus {
                    referenced: 10,
                    missing,
                    missing_bytes: missing * 1024,
                    missing_unknown_size: 0,
                    as_of_index: 7,
                }),
                ..Default::default()
            }),
            lag: None,
            racks_listed: Vec::new(),
        };
        let st = ClusterStatusReply {
            cluster_name: "hpc".into(),
            answered_by: 1,
            heads: vec![head(1, true, 0), head(2, true, 2), head(3, false, 0)],
        };
        let mut out = Vec::new();
        cluster_status(&st, Format::Table, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("MISSING"), "{text}");
        let row = |id: &str| {
            text.lines()
                .find(|l| l.split_whitespace().next() == Some(id))
                .unwrap_or_else(|| panic!("{text}"))
                .to_string()
        };
        assert!(row("2").contains("2 (2.0 KiB)"), "{text}");
        assert!(row("3").contains("--") && row("3").contains("unreachable"), "{text}");
        let mut out = Vec::new();
        cluster_status(&st, Format::Json, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["heads"][0]["missing_blobs"], 0);
        assert_eq!(v["heads"][1]["missing_bytes"], 2048);
        assert!(v["heads"][2]["missing_blobs"].is_null());
    }

    #[test]
    fn racks_cell_names_served_racks_and_listed_ones_not_served() {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(racks_cell(Some(&v(&["r1", "r2"])), &v(&["r1", "r2"])), "r1,r2");
        assert_eq!(racks_cell(Some(&v(&["r1"])), &v(&["r1", "r3"])), "r1 (not r3)");
        assert_eq!(racks_cell(Some(&[]), &v(&["r3"])), "- (not r3)");
        assert_eq!(racks_cell(Some(&[]), &[]), "-");
        assert_eq!(racks_cell(None, &v(&["r1"])), "-- (not r1)");
        assert_eq!(racks_cell(None, &[]), "--");
    }

    #[test]
    fn cluster_status_shows_lag_and_racks_per_head() {
        use crate::pb::admin::{HeadHealth, HeadStatusReply};
        let head = |id: u64, reachable: bool, lag: Option<u64>, served: &[&str], listed: &[&str]| HeadHealth {
            id,
            addr: format!("10.0.0.{id}:9701"),
            reachable,
            error: if reachable { String::new() } else { "refused".into() },
            status: reachable.then(|| HeadStatusReply {
                id,
                role: if id == 4 { "Learner" } else { "Follower" }.into(),
                racks_served: served.iter().map(|s| s.to_string()).collect(),
                racks_reported: true,
                ..Default::default()
            }),
            lag,
            racks_listed: listed.iter().map(|s| s.to_string()).collect(),
        };
        let st = ClusterStatusReply {
            cluster_name: "hpc".into(),
            answered_by: 1,
            heads: vec![
                head(1, true, Some(0), &["rack1"], &["rack1", "rack2"]),
                head(2, false, Some(42), &[], &["rack1"]),
                head(4, true, Some(1234), &[], &[]),
            ],
        };
        let mut out = Vec::new();
        cluster_status(&st, Format::Table, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let header = text.lines().nth(1).unwrap();
        let cols: Vec<&str> = header.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "HEAD", "ADDRESS", "ROLE", "TERM", "LEADER", "LAST", "LOG", "APPLIED", "LAG", "MISSING", "RACKS",
                "HEALTH"
            ],
            "{text}"
        );
        let row = |id: &str| {
            text.lines()
                .find(|l| l.split_whitespace().next() == Some(id))
                .unwrap_or_else(|| panic!("{text}"))
                .to_string()
        };
        // Cells sit under their headers.
        let at = |l: &str, h: &str| {
            l[header.find(h).unwrap()..]
                .split("  ")
                .next()
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(at(&row("1"), "LAG"), "0", "{text}");
        assert_eq!(at(&row("1"), "RACKS"), "rack1 (not rack2)", "{text}");
        assert_eq!(at(&row("2"), "LAG"), "42", "{text}");
        assert_eq!(at(&row("2"), "RACKS"), "-- (not rack1)", "{text}");
        assert_eq!(at(&row("4"), "LAG"), "1234", "{text}");
        assert_eq!(at(&row("4"), "RACKS"), "-", "{text}");
        assert_eq!(at(&row("4"), "ROLE"), "Learner", "{text}");
        let mut out = Vec::new();
        cluster_status(&st, Format::Json, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["heads"][0]["lag"], 0);
        assert_eq!(v["heads"][0]["racks_served"], serde_json::json!(["rack1"]));
        assert_eq!(v["heads"][0]["racks_listed"], serde_json::json!(["rack1", "rack2"]));
        assert!(v["heads"][1]["racks_served"].is_null());
        assert_eq!(v["heads"][2]["lag"], 1234);
    }
}
