//! Per-node boot status, kept in this head's memory.
//!
//! Every file the boot servers send (an iPXE script, a kernel, an image, an overlay)
//! and every refusal (a wrong asset key) is recorded here: node, stage, what was
//! sent, the client's address and the time. `wwctl node status` and Warewulf's
//! `/status` JSON read it.
//!
//! Why in memory and per head: boot status is soft, high-rate state. A cluster of
//! 10,000 nodes booting at once produces tens of thousands of events a minute;
//! writing each through Raft would put an fsync on every majority member in the path
//! of every download, for data nobody needs to survive a restart. Each head keeps
//! only what *it* served, and the status call merges the heads' answers by last-seen
//! time (a node whose first head died mid-boot shows the head that finished it).
//!
//! Why a plain `Mutex<HashMap>`: a record is one hash insert of a small struct under
//! a lock held for nanoseconds, a few times per boot and node — contention is not a
//! concern at these rates, and a snapshot is a clone of at most one entry per node.
//! Memory is bounded by the number of configured nodes: only known nodes are
//! recorded (an unknown MAC is logged, not stored, so a flood of made-up MACs cannot
//! grow the map).
//!
//! Besides the last event, each node keeps its last [`HISTORY`] events, so that a
//! failed system overlay is not hidden behind the image download that followed it
//! (`wwctl node status --history`). An event from an address that is not the node's
//! (a request that names the node's MAC or name from elsewhere) goes into the history,
//! marked, but never replaces the node's row: a stray or forged request cannot make a
//! node look booted, or hide that it is not.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::view::ViewRx;

/// What a boot request asked for (Warewulf's status stages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Stage {
    Ipxe,
    Kernel,
    Image,
    SystemOverlay,
    RuntimeOverlay,
    /// The node presented the wrong asset key; nothing was sent.
    BadAsset,
    /// UEFI HTTP boot fetched its first program (`/efiboot/{file}`), as Warewulf's `EFI`.
    Efi,
}

impl Stage {
    /// The name shown by `wwctl node status` and in `/status` (`IPXE`, `KERNEL`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Ipxe => "IPXE",
            Stage::Kernel => "KERNEL",
            Stage::Image => "IMAGE",
            Stage::SystemOverlay => "SYSTEM_OVERLAY",
            Stage::RuntimeOverlay => "RUNTIME_OVERLAY",
            Stage::BadAsset => "BAD_ASSET",
            Stage::Efi => "EFI",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last boot event of one node on this head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub stage: Stage,
    /// What was sent: a file name (`kernel`, `image.cpio.gz`, the template name),
    /// or why nothing was (`NOT_FOUND`, the refused stage for `BAD_ASSET`).
    pub sent: String,
    /// The client's address as this head saw it.
    pub client: IpAddr,
    /// The SMBIOS UUID the node reported (`uuid=` query parameter), if any.
    pub uuid: Option<String>,
    pub last_seen: SystemTime,
    /// The request did not come from one of the node's addresses (kept in the history
    /// only; see the module notes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub foreign: bool,
}

impl NodeStatus {
    /// Unix seconds of `last_seen` (what Warewulf's JSON carries).
    pub fn last_seen_unix(&self) -> u64 {
        self.last_seen
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// Events kept per node for `--history` (a boot is 4–6 events; this holds the last
/// two or three boots, or a few runtime-overlay refreshes after one).
pub const HISTORY: usize = 16;

#[derive(Debug)]
struct Record {
    /// The last event from the node's own address (`None`: only foreign ones so far).
    last: Option<NodeStatus>,
    /// The last [`HISTORY`] events, oldest first, foreign ones included.
    history: VecDeque<NodeStatus>,
}

/// One head's boot status board. Cheap to share (`Arc<StatusBoard>`).
#[derive(Debug, Default)]
pub struct StatusBoard {
    nodes: Mutex<HashMap<String, Record>>,
}

impl StatusBoard {
    pub fn new() -> StatusBoard {
        StatusBoard::default()
    }

    /// Record an event now.
    pub fn record(&self, node: &str, stage: Stage, sent: &str, client: IpAddr, uuid: Option<&str>) {
        self.record_at(node, stage, sent, client, uuid, SystemTime::now());
    }

    /// Record an event at a given time (tests, replay).
    pub fn record_at(&self, node: &str, stage: Stage, sent: &str, client: IpAddr, uuid: Option<&str>, at: SystemTime) {
        self.record_event(node, stage, sent, client, uuid, at, false);
    }

    /// Record an event whose request came from an address that is not the node's: it
    /// joins the node's history but does not replace its row.
    pub fn record_foreign(&self, node: &str, stage: Stage, sent: &str, client: IpAddr, uuid: Option<&str>) {
        self.record_event(node, stage, sent, client, uuid, SystemTime::now(), true);
    }

    #[allow(clippy::too_many_arguments)]
    fn record_event(
        &self,
        node: &str,
        stage: Stage,
        sent: &str,
        client: IpAddr,
        uuid: Option<&str>,
        at: SystemTime,
        foreign: bool,
    ) {
        let st = NodeStatus {
            node: node.to_owned(),
            stage,
            sent: sent.to_owned(),
            client,
            uuid: uuid.filter(|u| !u.is_empty()).map(str::to_owned),
            last_seen: at,
            foreign,
        };
        let mut nodes = self.lock();
        let rec = nodes.entry(node.to_owned()).or_insert_with(|| Record {
            last: None,
            history: VecDeque::with_capacity(4),
        });
        if rec.history.len() == HISTORY {
            rec.history.pop_front();
        }
        rec.history.push_back(st.clone());
        if !foreign {
            rec.last = Some(st);
        }
    }

    /// The last event of one node (from its own address).
    pub fn get(&self, node: &str) -> Option<NodeStatus> {
        self.lock().get(node).and_then(|r| r.last.clone())
    }

    /// Every node's last event, by node name.
    pub fn snapshot(&self) -> Vec<NodeStatus> {
        let mut v: Vec<NodeStatus> = self.lock().values().filter_map(|r| r.last.clone()).collect();
        v.sort_by(|a, b| a.node.cmp(&b.node));
        v
    }

    /// The recent events of the named nodes (all nodes when `nodes` is `None`), oldest
    /// first per node, nodes by name.
    pub fn history(&self, nodes: Option<&std::collections::HashSet<String>>) -> Vec<NodeStatus> {
        let map = self.lock();
        let mut names: Vec<&String> = map.keys().filter(|n| nodes.is_none_or(|f| f.contains(*n))).collect();
        names.sort();
        names.into_iter().flat_map(|n| map[n].history.iter().cloned()).collect()
    }

    /// Forget nodes that no longer exist (see [`forget_deleted_nodes`]).
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.lock().retain(|n, _| keep(n));
    }

    /// Warewulf's `/status` document: every known node (an empty entry for nodes
    /// never seen, as warewulfd does) merged with what this head recorded.
    pub fn warewulf_json<'a>(&self, known: impl IntoIterator<Item = &'a str>) -> WarewulfStatus {
        let recorded = self.lock();
        let mut nodes: BTreeMap<String, WarewulfNodeStatus> = known
            .into_iter()
            .map(|n| {
                (
                    n.to_owned(),
                    WarewulfNodeStatus {
                        node_name: n.to_owned(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        for st in recorded.values().filter_map(|r| r.last.as_ref()) {
            nodes.insert(
                st.node.clone(),
                WarewulfNodeStatus {
                    node_name: st.node.clone(),
                    stage: st.stage.as_str().to_owned(),
                    sent: st.sent.clone(),
                    ipaddr: st.client.to_string(),
                    last_seen: st.last_seen_unix() as i64,
                },
            );
        }
        WarewulfStatus { nodes }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        // A panic while holding this lock cannot leave the map half-updated (one
        // insert), so a poisoned lock is still safe to use.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// warewulfd's `allStatus`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WarewulfStatus {
    pub nodes: BTreeMap<String, WarewulfNodeStatus>,
}

/// warewulfd's `NodeStatus` (its JSON keys have spaces).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WarewulfNodeStatus {
    #[serde(rename = "node name")]
    pub node_name: String,
    pub stage: String,
    pub sent: String,
    pub ipaddr: String,
    #[serde(rename = "last seen")]
    pub last_seen: i64,
}

/// One node's boot status as one head saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadNodeStatus {
    pub head: u64,
    pub status: NodeStatus,
}

/// Keep, per node, the most recent event of any head.
pub fn merge_status(all: impl IntoIterator<Item = HeadNodeStatus>) -> Vec<HeadNodeStatus> {
    let mut best: BTreeMap<String, HeadNodeStatus> = BTreeMap::new();
    for s in all {
        match best.get(&s.status.node) {
            Some(b) if b.status.last_seen >= s.status.last_seen => {}
            _ => {
                best.insert(s.status.node.clone(), s);
            }
        }
    }
    best.into_values().collect()
}

/// Keep `board` to the nodes in the cluster: after every new view, drop what was
/// recorded for nodes that were deleted, so `node status` and `/status` stop showing
/// them and a head that sees many short-lived nodes does not keep them forever.
/// Ends when the view's publisher stops.
pub fn forget_deleted_nodes(board: Arc<StatusBoard>, mut view: ViewRx) {
    tokio::spawn(async move {
        while view.changed().await.is_ok() {
            let v = view.borrow_and_update().clone();
            board.retain(|n| v.nodes.contains_key(n));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn st(head: u64, node: &str, stage: Stage, secs: u64) -> HeadNodeStatus {
        HeadNodeStatus {
            head,
            status: NodeStatus {
                node: node.into(),
                stage,
                sent: "x".into(),
                client: "10.0.0.1".parse().unwrap(),
                uuid: None,
                last_seen: UNIX_EPOCH + Duration::from_secs(secs),
                foreign: false,
            },
        }
    }

    #[test]
    fn merged_status_keeps_the_latest_event_per_node() {
        let m = merge_status([
            st(1, "n1", Stage::Ipxe, 10),
            st(2, "n1", Stage::Image, 30),
            st(3, "n1", Stage::Kernel, 20),
            st(3, "n2", Stage::Ipxe, 5),
        ]);
        let got: Vec<(String, Stage, u64)> = m
            .iter()
            .map(|s| (s.status.node.clone(), s.status.stage, s.head))
            .collect();
        assert_eq!(got, vec![("n1".into(), Stage::Image, 2), ("n2".into(), Stage::Ipxe, 3)]);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn record_keeps_the_last_event_per_node() {
        let b = StatusBoard::new();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        b.record_at("n1", Stage::Ipxe, "default", ip("10.0.0.1"), Some("u-1"), t0);
        b.record_at(
            "n1",
            Stage::Kernel,
            "kernel",
            ip("10.0.0.1"),
            None,
            t0 + Duration::from_secs(2),
        );
        b.record_at("n0", Stage::BadAsset, "IMAGE", ip("10.0.0.9"), Some(""), t0);
        let s = b.snapshot();
        assert_eq!(s.iter().map(|s| s.node.as_str()).collect::<Vec<_>>(), ["n0", "n1"]);
        let n1 = b.get("n1").unwrap();
        assert_eq!((n1.stage, n1.sent.as_str()), (Stage::Kernel, "kernel"));
        assert_eq!(n1.last_seen_unix(), 1_700_000_002);
        assert_eq!(n1.uuid, None, "the newer event replaces the whole entry");
        assert_eq!(b.get("n0").unwrap().uuid, None, "an empty uuid is no uuid");
        assert!(b.get("nx").is_none());
    }

    #[test]
    fn history_keeps_the_last_events_and_a_foreign_request_never_replaces_the_row() {
        let b = StatusBoard::new();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        b.record_at("n1", Stage::SystemOverlay, "NOT_FOUND", ip("10.0.0.1"), None, at(1));
        b.record_at("n1", Stage::Image, "image", ip("10.0.0.1"), None, at(2));
        // Someone else asks with n1's MAC: in the history, marked, not in the row.
        b.record_foreign("n1", Stage::RuntimeOverlay, "runtime", ip("10.9.9.9"), None);
        let row = b.get("n1").unwrap();
        assert_eq!((row.stage, row.client), (Stage::Image, ip("10.0.0.1")));
        let h = b.history(None);
        let got: Vec<(Stage, &str, bool)> = h.iter().map(|e| (e.stage, e.sent.as_str(), e.foreign)).collect();
        assert_eq!(
            got,
            [
                (Stage::SystemOverlay, "NOT_FOUND", false),
                (Stage::Image, "image", false),
                (Stage::RuntimeOverlay, "runtime", true)
            ],
            "the failed system overlay is still visible after the image download"
        );
        // A node seen only from elsewhere has history but no row.
        b.record_foreign("n2", Stage::Ipxe, "ipxe", ip("10.9.9.9"), None);
        assert!(b.get("n2").is_none());
        assert_eq!(b.snapshot().len(), 1);
        assert!(b.warewulf_json(["n2"]).nodes["n2"].stage.is_empty());
        // Bounded: only the last HISTORY events stay, oldest dropped first.
        for i in 0..(HISTORY as u64 + 5) {
            b.record_at(
                "n1",
                Stage::RuntimeOverlay,
                &format!("r{i}"),
                ip("10.0.0.1"),
                None,
                at(10 + i),
            );
        }
        let only: std::collections::HashSet<String> = ["n1".to_string()].into();
        let h = b.history(Some(&only));
        assert_eq!(h.len(), HISTORY);
        assert_eq!(h.first().unwrap().sent, "r5");
        assert_eq!(h.last().unwrap().sent, format!("r{}", HISTORY + 4));
    }

    #[test]
    fn stage_names_are_warewulfs() {
        let names: Vec<&str> = [
            Stage::Ipxe,
            Stage::Kernel,
            Stage::Image,
            Stage::SystemOverlay,
            Stage::RuntimeOverlay,
            Stage::BadAsset,
            Stage::Efi,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect();
        assert_eq!(
            names,
            [
                "IPXE",
                "KERNEL",
                "IMAGE",
                "SYSTEM_OVERLAY",
                "RUNTIME_OVERLAY",
                "BAD_ASSET",
                "EFI"
            ]
        );
        assert_eq!(
            serde_json::to_string(&Stage::SystemOverlay).unwrap(),
            "\"SYSTEM_OVERLAY\""
        );
    }

    #[test]
    fn warewulf_json_lists_known_nodes_and_uses_warewulfs_keys() {
        let b = StatusBoard::new();
        let t = UNIX_EPOCH + Duration::from_secs(42);
        b.record_at("n1", Stage::Image, "image", ip("10.0.0.1"), None, t);
        let doc = serde_json::to_value(b.warewulf_json(["n1", "n2"])).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({"nodes": {
                "n1": {"node name": "n1", "stage": "IMAGE", "sent": "image", "ipaddr": "10.0.0.1", "last seen": 42},
                "n2": {"node name": "n2", "stage": "", "sent": "", "ipaddr": "", "last seen": 0},
            }})
        );
    }

    #[test]
    fn retain_forgets_deleted_nodes_and_concurrent_records_are_safe() {
        let b = Arc::new(StatusBoard::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        b.record(
                            &format!("n{}", i % 50),
                            Stage::Kernel,
                            &format!("t{t}"),
                            ip("::1"),
                            None,
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.snapshot().len(), 50);
        b.retain(|n| n == "n7");
        assert_eq!(b.snapshot().len(), 1);
    }

    #[tokio::test]
    async fn deleted_nodes_are_forgotten_when_the_view_changes() {
        use crate::boot::view::BootView;
        let view_of = |yaml: &str| {
            let mut st = crate::state::State::default();
            let conf = crate::model::parse_nodes_conf(yaml).unwrap();
            let r = st.apply(
                1,
                &crate::state::Request {
                    audit: None,
                    id: None,
                    cmd: crate::state::Command::Import { conf },
                },
            );
            assert!(r.0.is_ok(), "{r:?}");
            Arc::new(BootView::from_state(&st, 1))
        };
        let (tx, rx) = tokio::sync::watch::channel(view_of("nodes:\n  n1: {}\n  n2: {}\n"));
        let b = Arc::new(StatusBoard::new());
        forget_deleted_nodes(b.clone(), rx);
        b.record("n1", Stage::Ipxe, "ipxe", ip("10.0.0.1"), None);
        b.record("n2", Stage::Ipxe, "ipxe", ip("10.0.0.2"), None);
        tx.send(view_of("nodes:\n  n1: {}\n")).unwrap();
        // The trim runs on its own task: wait (bounded) for it to see the new view.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while b.get("n2").is_some() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(b.get("n2").is_none(), "n2 was deleted");
        assert!(b.get("n1").is_some(), "n1 is still a node");
    }
}
