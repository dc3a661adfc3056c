//! The boot side's one read model.
//!
//! DHCP, TFTP and HTTP boot never touch Raft or sled: they read an immutable
//! [`BootView`] — nodes already merged with their profiles, indexed by MAC and IP,
//! plus the image catalog and the heads' addresses. A head publishes a new view
//! after applies ([`publish`]), so a boot request costs a hash lookup, never an
//! election or a merge, and keeps working while Raft has no leader. Tests build a
//! view directly from a [`State`].

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::model::{self, NodeConf};
use crate::state::{HeadInfo, ImageEntry, Rack, State};

/// A node as the boot side sees it: merged with its profiles.
#[derive(Debug, Clone, PartialEq)]
pub struct BootNode {
    pub name: String,
    pub conf: NodeConf,
    /// Digest of the versions of what `conf` was merged from (the node and the profiles
    /// it expands to): equal value, equal `conf`, without comparing the fields.
    pub version: model::Digest,
}

impl BootNode {
    pub fn discoverable(&self) -> bool {
        self.conf.discoverable == Some(true)
    }

    /// The network device whose `hwaddr` is `mac` (normalised), with its name.
    pub fn netdev_by_mac(&self, mac: &str) -> Option<(&str, &model::NetDev)> {
        self.conf.network_devices.iter().find_map(|(n, d)| {
            let m = d.hwaddr.as_deref().and_then(|h| model::normalize_mac(h).ok());
            (m.as_deref() == Some(mac)).then_some((n.as_str(), d))
        })
    }
}

/// Immutable snapshot of what boot services need.
#[derive(Debug, Clone, Default)]
pub struct BootView {
    /// Raft index the view was built at.
    pub applied: u64,
    pub cluster: String,
    pub nodes: BTreeMap<String, Arc<BootNode>>,
    /// Normalised MAC (`aa:bb:…`) → node name.
    by_mac: HashMap<String, String>,
    /// IPv4 address of any network device → node name.
    by_ip: HashMap<Ipv4Addr, String>,
    pub images: BTreeMap<String, ImageEntry>,
    pub heads: BTreeMap<u64, HeadInfo>,
    /// Dynamic leases decided through Raft: normalised MAC → (address, expiry).
    pub leases: HashMap<String, (Ipv4Addr, u64)>,
    /// Nodes that failed to merge (e.g. a profile deleted under them), with why.
    pub broken: BTreeMap<String, String>,
    /// The overlay catalog: name → the tree nodes get (site, else distribution).
    pub overlays: BTreeMap<String, model::Digest>,
    /// Digest of every node's and profile's version: equal value, same merged nodes
    /// (what overlay builds share is rebuilt only when this changes).
    pub nodes_version: model::Digest,
    /// Racks by name (`wwctl rack`), shared between views while unchanged.
    pub racks: Arc<BTreeMap<String, Rack>>,
    /// The cluster's SSH host keys by file name (`wwctl configure ssh`), for overlays.
    pub ssh_host_keys: Arc<BTreeMap<String, String>>,
    /// Every head's root public keys, authorized on every node.
    pub root_keys: Arc<Vec<String>>,
}

impl BootView {
    /// Build a view from the replicated state at `applied`.
    pub fn from_state(s: &State, applied: u64) -> BootView {
        BootView::from_state_reusing(s, applied, None)
    }

    /// [`BootView::from_state`], taking from `prev` every merged node whose node and
    /// profile versions are unchanged (the same `Arc`, not a copy): a rebuild after a
    /// write merges only what the write changed, and consecutive views share the rest,
    /// so a head holds one copy of its merged nodes however often it republishes.
    pub fn from_state_reusing(s: &State, applied: u64, prev: Option<&BootView>) -> BootView {
        let profiles: BTreeMap<String, NodeConf> =
            s.profiles.iter().map(|(n, v)| (n.clone(), v.value.clone())).collect();
        let mut view = BootView {
            applied,
            cluster: s.cluster.name.clone(),
            images: s.images.iter().map(|(n, v)| (n.clone(), v.value.clone())).collect(),
            heads: s.cluster.heads.clone(),
            ssh_host_keys: Arc::new(s.ssh.host.clone()),
            root_keys: Arc::new(s.ssh.root_keys()),
            racks: Arc::new(
                s.cluster
                    .racks
                    .iter()
                    .map(|(n, r)| (n.clone(), r.value.clone()))
                    .collect(),
            ),
            overlays: s
                .overlays
                .iter()
                .filter_map(|(n, v)| v.value.effective().map(|d| (n.clone(), d)))
                .collect(),
            leases: s
                .pool
                .leases()
                .map(|(ip, l)| (l.mac.clone(), (ip, l.expires)))
                .collect(),
            ..Default::default()
        };
        let mut versions = Vec::with_capacity((s.nodes.len() + s.profiles.len()) * 16);
        for (kind, objs) in [(b'n', &s.nodes), (b'p', &s.profiles)] {
            for (name, v) in objs {
                versions.push(kind);
                versions.extend_from_slice(name.as_bytes());
                versions.push(0);
                versions.extend_from_slice(&v.version.to_le_bytes());
            }
        }
        view.nodes_version = model::Digest::of(&versions);
        for (name, v) in &s.nodes {
            let mut version = Vec::with_capacity(64);
            version.extend_from_slice(&v.version.to_le_bytes());
            for p in model::expand_profiles(name, &v.value, &profiles).unwrap_or_default() {
                version.extend_from_slice(p.as_bytes());
                version.push(0);
                let pv = s.profiles.get(p).map(|p| p.version).unwrap_or(0);
                version.extend_from_slice(&pv.to_le_bytes());
            }
            let version = model::Digest::of(&version);
            let reused = prev
                .and_then(|p| p.nodes.get(name))
                .filter(|n| n.version == version)
                .cloned();
            let node = match reused {
                Some(n) => n,
                None => match model::merge_effective(name, &v.value, &profiles) {
                    Ok(conf) => Arc::new(BootNode {
                        name: name.clone(),
                        conf,
                        version,
                    }),
                    Err(e) => {
                        view.broken.insert(name.clone(), e.to_string());
                        continue;
                    }
                },
            };
            for d in node.conf.network_devices.values() {
                if let Some(mac) = d.hwaddr.as_deref().and_then(|h| model::normalize_mac(h).ok()) {
                    view.by_mac.insert(mac, name.clone());
                }
                if let Some(ip) = d.ipaddr.as_deref().and_then(|i| i.parse::<Ipv4Addr>().ok()) {
                    view.by_ip.insert(ip, name.clone());
                }
            }
            view.nodes.insert(name.clone(), node);
        }
        view
    }

    /// The node owning `mac` (any notation `normalize_mac` accepts).
    pub fn node_by_mac(&self, mac: &str) -> Option<&Arc<BootNode>> {
        let mac = model::normalize_mac(mac).ok()?;
        self.by_mac.get(&mac).and_then(|n| self.nodes.get(n))
    }

    pub fn node_by_ip(&self, ip: Ipv4Addr) -> Option<&Arc<BootNode>> {
        self.by_ip.get(&ip).and_then(|n| self.nodes.get(n))
    }

    /// Warewulf's lookup for a boot request's `wwid`: a MAC, else a node name.
    pub fn node_by_wwid(&self, wwid: &str) -> Option<&Arc<BootNode>> {
        self.node_by_mac(wwid).or_else(|| self.nodes.get(wwid))
    }

    /// Discoverable nodes in Warewulf's order (by name), for assigning unknown MACs.
    pub fn discoverable(&self) -> impl Iterator<Item = &Arc<BootNode>> {
        self.nodes.values().filter(|n| n.discoverable())
    }

    /// Whether `ip` is one of `node`'s addresses: a configured one of any network
    /// device, or one a dynamic lease gave one of its MACs. `None` when the node has no
    /// known address at all (then nobody can tell who is asking).
    pub fn is_node_address(&self, node: &BootNode, ip: std::net::IpAddr) -> Option<bool> {
        let mut known = false;
        for d in node.conf.network_devices.values() {
            let configured = [d.ipaddr.as_deref(), d.ipaddr6.as_deref()];
            for a in configured.into_iter().flatten() {
                // An address may carry a prefix length (`10.0.0.5/24`).
                let a = a.split('/').next().unwrap_or(a);
                if let Ok(a) = a.parse::<std::net::IpAddr>() {
                    known = true;
                    if a == ip {
                        return Some(true);
                    }
                }
            }
            let leased = d
                .hwaddr
                .as_deref()
                .and_then(|h| model::normalize_mac(h).ok())
                .and_then(|m| self.leases.get(&m));
            if let Some((a, _)) = leased {
                known = true;
                if std::net::IpAddr::V4(*a) == ip {
                    return Some(true);
                }
            }
        }
        known.then_some(false)
    }

    /// Base URLs of every head for a node (iPXE scripts, `wwclient`'s config): `host`
    /// first — the address the node reached this head at, so one it can reach — else
    /// head `me`'s registered one, then the others in id order. Heads registered under
    /// a wildcard address are skipped.
    pub fn head_urls(&self, me: u64, host: Option<&str>) -> Vec<String> {
        self.head_urls_by_id(me, host).into_iter().map(|(_, u)| u).collect()
    }

    /// [`BootView::head_urls`] with the id of each head.
    pub fn head_urls_by_id(&self, me: u64, host: Option<&str>) -> Vec<(u64, String)> {
        let view = self;
        let base = |a: &str| {
            if a.contains("://") {
                a.trim_end_matches('/').to_owned()
            } else {
                format!("http://{a}")
            }
        };
        let reachable = |a: &str| {
            let host = a.split_once("://").map(|(_, r)| r).unwrap_or(a);
            match host.parse::<std::net::SocketAddr>() {
                Ok(sa) => !sa.ip().is_unspecified(),
                Err(_) => !host.is_empty(),
            }
        };
        let mut out: Vec<(u64, String)> = Vec::new();
        match host {
            Some(h) => out.push((me, base(h))),
            None => {
                if let Some(h) = view.heads.get(&me).filter(|h| reachable(&h.http)) {
                    out.push((me, base(&h.http)));
                }
            }
        }
        for (id, h) in &view.heads {
            let url = base(&h.http);
            if *id != me && reachable(&h.http) && !out.iter().any(|(_, u)| *u == url) {
                out.push((*id, url));
            }
        }
        out
    }

    /// Where `wwclient` fetches from, given head `id`'s plain-HTTP base URL `url`: the
    /// same host at the head's HTTPS port when the head serves HTTPS (`https_listen`),
    /// else `url` itself.
    pub fn agent_url(&self, id: u64, url: &str) -> String {
        let port = self
            .heads
            .get(&id)
            .and_then(|h| h.https.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<u16>().ok());
        let Some(port) = port else {
            return url.to_owned();
        };
        let hostport = url.split_once("://").map_or(url, |(_, r)| r);
        let hostport = hostport.split('/').next().unwrap_or(hostport);
        // `[v6]:port` or `host:port`; a host without a port is all host.
        let host = match hostport.rfind(']') {
            Some(b) => &hostport[..=b],
            None => hostport.rsplit_once(':').map_or(hostport, |(h, _)| h),
        };
        format!("https://{host}:{port}")
    }

    /// Base URLs of a rack's heads in the rack's order, each at its address on the rack
    /// and its registered HTTP port (Warewulf's 9873 if it registered none).
    pub fn rack_urls(&self, rack: &Rack) -> Vec<(u64, String)> {
        rack.heads
            .iter()
            .map(|h| {
                let port = self
                    .heads
                    .get(&h.id)
                    .and_then(|i| {
                        let hostport = i.http.split_once("://").map(|(_, r)| r).unwrap_or(&i.http);
                        hostport.trim_end_matches('/').rsplit_once(':')?.1.parse::<u16>().ok()
                    })
                    .unwrap_or(crate::boot::dhcp::config::DEFAULT_HTTP_PORT);
                (h.id, format!("http://{}:{port}", h.addr))
            })
            .collect()
    }

    /// Base URLs a node downloads from (iPXE scripts): for a node of a rack, the rack's
    /// heads at their addresses on it — this head first, then the rack's order, heads
    /// `down` says are down last (still listed: a stale verdict must not strand a node);
    /// otherwise every head ([`BootView::head_urls`]).
    pub fn boot_urls(
        &self,
        node: Option<&BootNode>,
        me: u64,
        host: Option<&str>,
        down: impl Fn(u64) -> bool,
    ) -> Vec<String> {
        let Some((_, rack)) = node.and_then(|n| self.rack_of(n)) else {
            return self.head_urls(me, host);
        };
        let urls = self.rack_urls(rack);
        let mut out: Vec<String> = urls
            .iter()
            .filter(|(id, _)| *id == me)
            .map(|(_, u)| u.clone())
            .collect();
        if out.is_empty() {
            // This head does not serve the node's rack but was asked: the address the
            // node used reaches it.
            if let Some(h) = host {
                out.push(format!("http://{h}"));
            }
        }
        for (_, u) in urls.iter().filter(|(id, _)| *id != me && !down(*id)) {
            out.push(u.clone());
        }
        for (_, u) in urls.iter().filter(|(id, _)| *id != me && down(*id)) {
            out.push(u.clone());
        }
        out.dedup();
        out
    }

    /// The rack a node belongs to: the one whose network holds one of its IPv4 addresses
    /// (the first device in name order that has one in a rack).
    pub fn rack_of(&self, node: &BootNode) -> Option<(&str, &Rack)> {
        node.conf.network_devices.values().find_map(|d| {
            let ip = d.ipaddr.as_deref()?.split('/').next()?.parse::<Ipv4Addr>().ok()?;
            self.racks
                .iter()
                .find(|(_, r)| r.holds(ip))
                .map(|(n, r)| (n.as_str(), r))
        })
    }

    /// The image a node boots, if it names one that exists.
    pub fn image_of(&self, node: &BootNode) -> Option<&ImageEntry> {
        node.conf.image_name.as_deref().and_then(|i| self.images.get(i))
    }
}

/// Readers of the latest view.
pub type ViewRx = watch::Receiver<Arc<BootView>>;

/// Publish the view of a head's state machine, rebuilt at most every 100 ms. The
/// state is cloned under the read lock (cheap) and merged outside it, so a rebuild
/// of 10,000 nodes never holds up Raft applies.
pub fn publish_for(sm: &crate::store::StateMachineStore<crate::raft::TypeConfig, State>) -> ViewRx {
    let reader = sm.reader();
    // The last view built: its unchanged nodes go into the next one as they are. Built
    // under the state's read lock without copying the state (a copy of 10,000 nodes is
    // ~50 MiB, and freed copies stay in the heap as fragmentation): the lock is held for
    // the merge of what changed, the rest is a version check per node.
    let last: std::sync::Mutex<Option<Arc<BootView>>> = std::sync::Mutex::new(None);
    publish(
        move || {
            let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
            let view = Arc::new(reader.read_with_applied(|s, a| {
                BootView::from_state_reusing(s, a.map(|l| l.index).unwrap_or(0), last.as_deref())
            }));
            *last = Some(view.clone());
            view
        },
        sm.applied_watch(),
        Duration::from_millis(100),
    )
}

/// Keep a [`BootView`] current: rebuild after the applied index moves, at most once
/// per `every` and never more often than twice the last rebuild's duration (a
/// burst of writes costs one rebuild, not one per write).
pub fn publish(
    read: impl Fn() -> Arc<BootView> + Send + 'static,
    mut applied: watch::Receiver<u64>,
    every: Duration,
) -> ViewRx {
    let first = read();
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        let mut last_build = Duration::ZERO;
        loop {
            if applied.changed().await.is_err() || tx.is_closed() {
                return;
            }
            // Wait at least twice as long as the last rebuild took, so rebuilding
            // (a merge of every node) never takes more than a third of a core
            // during a long burst of writes, however large the cluster.
            tokio::time::sleep(every.max(last_build * 2)).await;
            applied.borrow_and_update();
            let started = std::time::Instant::now();
            let view = read();
            last_build = started.elapsed();
            if tx.send(view).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_belongs_to_the_rack_whose_network_holds_its_address() {
        use crate::state::{Command, RackCommand, RackHead, Request};
        let mut s = State::default();
        for (i, (name, net, head)) in [("r1", "10.1.0.0/24", "10.1.0.1"), ("r2", "10.2.0.0/24", "10.2.0.1")]
            .into_iter()
            .enumerate()
        {
            let rack = Rack {
                network: net.parse().unwrap(),
                relayed: false,
                router: None,
                dns: vec![],
                domain: None,
                lease_secs: None,
                pool: None,
                heads: vec![RackHead {
                    id: i as u64 + 1,
                    addr: head.parse().unwrap(),
                }],
            };
            let cmd = Command::Rack(RackCommand::Put {
                name: name.into(),
                rack,
                expect: None,
            });
            s.apply(
                i as u64 + 1,
                &Request {
                    id: None,
                    cmd,
                    audit: None,
                },
            )
            .0
            .unwrap();
        }
        let conf = model::parse_nodes_conf(
            "nodes:\n  a: {network devices: {default: {ipaddr: 10.2.0.77}}}\n  b: {network devices: {default: {ipaddr: 10.3.0.1}}}\n",
        )
        .unwrap();
        s.apply(
            3,
            &Request {
                audit: None,
                id: None,
                cmd: Command::Import { conf },
            },
        )
        .0
        .unwrap();
        let v = BootView::from_state(&s, 3);
        assert_eq!(v.rack_of(&v.nodes["a"]).unwrap().0, "r2");
        assert!(v.rack_of(&v.nodes["b"]).is_none());
    }

    #[test]
    fn wwclient_uses_https_where_a_head_serves_it() {
        use crate::state::HeadInfo;
        let mut v = BootView::default();
        v.heads.insert(
            1,
            HeadInfo {
                http: "10.0.0.1:9873".into(),
                https: "10.0.0.1:9874".into(),
                ..Default::default()
            },
        );
        v.heads.insert(
            2,
            HeadInfo {
                http: "10.0.0.2:9873".into(),
                ..Default::default()
            },
        );
        assert_eq!(v.agent_url(1, "http://10.5.0.1:9873"), "https://10.5.0.1:9874");
        assert_eq!(v.agent_url(1, "http://[fd00::1]:9873/"), "https://[fd00::1]:9874");
        assert_eq!(v.agent_url(2, "http://10.5.0.2:9873"), "http://10.5.0.2:9873");
        assert_eq!(v.agent_url(9, "http://h:1"), "http://h:1");
        assert_eq!(
            v.head_urls_by_id(2, Some("wulf2:9873"))[0],
            (2, "http://wulf2:9873".to_string())
        );
    }

    #[test]
    fn head_urls_put_the_answering_head_first_and_skip_wildcards() {
        use crate::state::HeadInfo;
        let mut v = BootView::default();
        for (id, http) in [
            (1, "10.0.0.1:9870"),
            (2, "10.0.0.2:9870"),
            (3, "0.0.0.0:9870"),
            (4, "http://h4:80/"),
        ] {
            v.heads.insert(
                id,
                HeadInfo {
                    http: http.into(),
                    grpc: String::new(),
                    https: String::new(),
                },
            );
        }
        assert_eq!(
            v.head_urls(2, Some("wulf2:9870")),
            ["http://wulf2:9870", "http://10.0.0.1:9870", "http://h4:80"]
        );
        assert_eq!(
            v.head_urls(2, None),
            ["http://10.0.0.2:9870", "http://10.0.0.1:9870", "http://h4:80"]
        );
        assert_eq!(
            v.head_urls(1, Some("10.0.0.1:9870")).len(),
            3,
            "no duplicate of this head"
        );
    }
    use crate::state::{Command, Request};

    fn state() -> State {
        let mut s = State::default();
        let yaml = r#"
nodeprofiles:
  default:
    image name: rocky9
    network devices:
      default:
        netmask: 255.255.255.0
nodes:
  n1:
    profiles: [default]
    network devices:
      default:
        hwaddr: "AA:BB:CC:DD:EE:01"
        ipaddr: 10.0.0.1
  spare:
    profiles: [default]
    discoverable: true
"#;
        let conf = model::parse_nodes_conf(yaml).unwrap();
        let r = s.apply(
            1,
            &Request {
                audit: None,
                id: None,
                cmd: Command::Import { conf },
            },
        );
        assert!(r.0.is_ok(), "{r:?}");
        s
    }

    #[test]
    fn a_rebuild_shares_unchanged_nodes_and_merges_changed_ones() {
        let mut s = state();
        let v1 = BootView::from_state(&s, 1);
        let same = BootView::from_state_reusing(&s, 1, Some(&v1));
        assert!(Arc::ptr_eq(&v1.nodes["n1"], &same.nodes["n1"]));
        assert!(Arc::ptr_eq(&v1.nodes["spare"], &same.nodes["spare"]));
        let import = |s: &mut State, idx: u64, yaml: &str| {
            let conf = model::parse_nodes_conf(yaml).unwrap();
            let r = s.apply(
                idx,
                &Request {
                    audit: None,
                    id: None,
                    cmd: Command::Import { conf },
                },
            );
            assert!(r.0.is_ok(), "{r:?}");
        };
        // One node changed: it alone is merged again, with the new value.
        import(
            &mut s,
            2,
            "nodes:\n  spare: {profiles: [default], discoverable: true, comment: changed}\n",
        );
        let v2 = BootView::from_state_reusing(&s, 2, Some(&v1));
        assert!(Arc::ptr_eq(&v1.nodes["n1"], &v2.nodes["n1"]));
        assert!(!Arc::ptr_eq(&v1.nodes["spare"], &v2.nodes["spare"]));
        assert_eq!(v2.nodes["spare"].conf.comment.as_deref(), Some("changed"));
        assert_eq!(
            v2.node_by_mac("aa:bb:cc:dd:ee:01").unwrap().name,
            "n1",
            "indexes of shared nodes"
        );
        // A profile changed: every node using it is merged again, and equals a fresh build.
        import(
            &mut s,
            3,
            "nodeprofiles:\n  default: {image name: rocky10, network devices: {default: {netmask: 255.255.255.0}}}\n",
        );
        let v3 = BootView::from_state_reusing(&s, 3, Some(&v2));
        let fresh = BootView::from_state(&s, 3);
        for n in ["n1", "spare"] {
            assert!(!Arc::ptr_eq(&v2.nodes[n], &v3.nodes[n]), "{n}");
            assert_eq!(v3.nodes[n], fresh.nodes[n], "{n}");
            assert_eq!(v3.nodes[n].conf.image_name.as_deref(), Some("rocky10"));
        }
    }

    #[test]
    fn lookups_by_mac_ip_and_wwid_see_merged_nodes() {
        let v = BootView::from_state(&state(), 1);
        let n = v.node_by_mac("aa-bb-cc-dd-ee-01").expect("any MAC notation");
        assert_eq!(n.name, "n1");
        assert_eq!(n.conf.image_name.as_deref(), Some("rocky9"), "merged from the profile");
        let (net, dev) = n.netdev_by_mac("aa:bb:cc:dd:ee:01").unwrap();
        assert_eq!((net, dev.netmask.as_deref()), ("default", Some("255.255.255.0")));
        assert_eq!(v.node_by_ip("10.0.0.1".parse().unwrap()).unwrap().name, "n1");
        assert_eq!(v.node_by_wwid("n1").unwrap().name, "n1");
        assert!(v.node_by_mac("aa:bb:cc:dd:ee:99").is_none());
        assert_eq!(v.discoverable().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["spare"]);
    }

    #[tokio::test]
    async fn publish_rebuilds_after_applies() {
        let (atx, arx) = watch::channel(0u64);
        let shared = Arc::new(std::sync::Mutex::new(state()));
        let s2 = shared.clone();
        let mut rx = publish(
            move || {
                let s = s2.lock().unwrap();
                Arc::new(BootView::from_state(&s, 0))
            },
            arx,
            Duration::from_millis(10),
        );
        assert!(rx.borrow().nodes.contains_key("n1"));
        shared.lock().unwrap().nodes.remove("n1");
        atx.send(2).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(!rx.borrow().nodes.contains_key("n1"));
    }
}
