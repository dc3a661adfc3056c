//! Template data: Warewulf's `tstruct` as Tera values.
//!
//! Design notes:
//! - Names are Warewulf's (`Id`, `NetDevs`, `Ipmi.UserName`, `Dhcp.RangeStart`, ...), so an
//!   operator who knows Warewulf's templates recognizes every variable. Go method calls that
//!   Tera cannot make are precomputed values: `.OnBoot.BoolDefaultTrue` is
//!   `OnBootDefaultTrue`, `.ThisNode.FileSystemList` is `ThisNode.FileSystemList` (a list
//!   with the map key as `Id`). docs/OVERLAYS.md lists every mapping.
//! - Unset text fields are `""` (Go's zero value), so a template can test and print them
//!   without "undefined" errors.
//! - Cost: one node's value is built once per build ([`BuildData::new`] builds all of them
//!   for `AllNodes`) and shared: Tera values are reference counted, so putting the node into
//!   its own context, into `ThisNode` and into `AllNodes` copies pointers, not data.

use std::collections::BTreeMap;
use std::sync::Arc;

use tera::{Context, Value};

use super::server::{cidr, ServerConf};
use crate::model::NodeConf;

/// Build facts shown to templates (`BuildHost`, `BuildTime`, `BuildSource`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildInfo {
    /// `BuildHost`: the head's host name.
    pub host: String,
    /// `BuildTime`: human-readable build time.
    pub time: String,
    /// `BuildTimeUnix`: seconds since the epoch.
    pub time_unix: u64,
    /// `BuildSource`: what produced the build (e.g. `wulfpack <version>`).
    pub source: String,
}

impl BuildInfo {
    /// Facts for a build now, on this host.
    pub fn now() -> BuildInfo {
        let now = std::time::SystemTime::now();
        let unix = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        BuildInfo {
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            time: humantime::format_rfc3339_seconds(now).to_string(),
            time_unix: unix,
            source: format!("wulfpack {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// The part of the template data shared by every node of one build: the head's settings,
/// build facts and `AllNodes`. Build it once per build.
#[derive(Debug, Clone)]
pub struct BuildData {
    base: Context,
    /// Names are shared between generations (a new generation's map copies pointers).
    nodes: Arc<BTreeMap<Arc<str>, Value>>,
}

/// One node's template data (the shared part plus the node's fields).
#[derive(Debug, Clone)]
pub struct NodeData {
    pub(crate) ctx: Context,
}

impl BuildData {
    /// The shared data for `nodes` (each already merged with its profiles).
    pub fn new<'a>(
        server: &ServerConf,
        nodes: impl IntoIterator<Item = (&'a str, &'a NodeConf)>,
        build: &BuildInfo,
    ) -> BuildData {
        let values: Vec<(Arc<str>, Value)> = nodes
            .into_iter()
            .map(|(name, conf)| (Arc::from(name), node_value(name, conf)))
            .collect();
        Self::from_values(server, build, values)
    }

    /// [`BuildData::new`], taking the value of each node whose `reuse` is true from
    /// `prev` (the node is the same as in `prev`): a generation after one node changed
    /// recomputes one value, not every node's. Nodes in name order (as a boot view
    /// holds them) are matched with `prev`'s in one pass; out of order, a node is
    /// looked up, so the result is the same either way.
    pub fn new_reusing<'a>(
        server: &ServerConf,
        nodes: impl IntoIterator<Item = (&'a str, &'a NodeConf, bool)>,
        build: &BuildInfo,
        prev: &BuildData,
    ) -> BuildData {
        let mut old = prev.nodes.iter().peekable();
        let values: Vec<(Arc<str>, Value)> = nodes
            .into_iter()
            .map(|(name, conf, reuse)| {
                while old.next_if(|(k, _)| &***k < name).is_some() {}
                let found = match old.peek() {
                    Some((k, v)) if &***k == name => Some(((*k).clone(), (*v).clone())),
                    _ => prev.nodes.get_key_value(name).map(|(k, v)| (k.clone(), v.clone())),
                };
                match found {
                    Some(kv) if reuse => kv,
                    Some((k, _)) => (k, node_value(name, conf)),
                    None => (Arc::from(name), node_value(name, conf)),
                }
            })
            .collect();
        Self::from_values(server, build, values)
    }

    fn from_values(server: &ServerConf, build: &BuildInfo, values: Vec<(Arc<str>, Value)>) -> BuildData {
        // Built from sorted input in one pass (a later duplicate name wins, as inserts did).
        let values: BTreeMap<Arc<str>, Value> = values.into_iter().collect();
        let all: Vec<Value> = values.values().cloned().collect();
        let mut base = server_context(server, build);
        base.insert_value("AllNodes", Value::from(all));
        BuildData {
            base,
            nodes: Arc::new(values),
        }
    }

    /// The data for node `name`: its precomputed value when it is one of the build's nodes,
    /// else built from `conf` (Warewulf renders an unknown node as a new empty one).
    pub fn node(&self, name: &str, conf: Option<&NodeConf>) -> NodeData {
        let value = match (self.nodes.get(name), conf) {
            (Some(v), None) => v.clone(),
            (_, Some(c)) => node_value(name, c),
            (None, None) => node_value(name, &NodeConf::default()),
        };
        let mut ctx = self.base.clone();
        if let Some(m) = value.as_map() {
            for (k, v) in m {
                if let Some(k) = k.as_str() {
                    ctx.insert_value(k.to_owned(), v.clone());
                }
            }
        }
        ctx.insert_value("ThisNode", value);
        NodeData { ctx }
    }
}

impl NodeData {
    /// Set a variable (e.g. to override `ClusterName` for a host render).
    pub fn set(&mut self, name: &str, value: impl serde::Serialize) {
        self.ctx.insert(name.to_owned(), &value);
    }

    /// A variable's value, if set.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.ctx.get(name)
    }
}

fn s(v: &Option<String>) -> Value {
    Value::from(v.clone().unwrap_or_default())
}

fn bool_text(v: Option<bool>) -> Value {
    Value::from(v.map(|b| b.to_string()).unwrap_or_default())
}

fn strings(v: &[String]) -> Value {
    Value::from(v.iter().map(|x| Value::from(x.as_str())).collect::<Vec<_>>())
}

fn tags(t: &BTreeMap<String, String>) -> Value {
    Value::from(
        t.iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect::<BTreeMap<_, _>>(),
    )
}

type Fields = BTreeMap<&'static str, Value>;

fn obj(f: Fields) -> Value {
    Value::from(f)
}

/// One node as Warewulf's template sees it (also the element type of `AllNodes`).
pub fn node_value(name: &str, c: &NodeConf) -> Value {
    let mut f = Fields::new();
    f.insert("Id", Value::from(name));
    f.insert("Hostname", Value::from(name));
    f.insert("Comment", s(&c.comment));
    f.insert("ClusterName", s(&c.cluster_name));
    f.insert("ImageName", s(&c.image_name));
    f.insert("ContainerName", s(&c.image_name));
    f.insert("Ipxe", s(&c.ipxe_template));
    f.insert("RuntimeOverlay", strings(&c.runtime_overlay));
    f.insert("SystemOverlay", strings(&c.system_overlay));
    f.insert("Init", s(&c.init));
    f.insert("Root", s(&c.root));
    f.insert("AssetKey", s(&c.asset_key));
    f.insert("Discoverable", bool_text(c.discoverable));
    f.insert("Profiles", strings(&c.profiles));
    f.insert("Tags", tags(&c.tags));
    let k = c.kernel.clone().unwrap_or_default();
    f.insert(
        "Kernel",
        obj(Fields::from([
            ("Version", s(&k.version)),
            ("Args", Value::from(k.args.join(" "))),
            ("ArgsList", strings(&k.args)),
        ])),
    );
    let i = c.ipmi.clone().unwrap_or_default();
    f.insert(
        "Ipmi",
        obj(Fields::from([
            ("UserName", s(&i.username)),
            ("Password", s(&i.password)),
            ("Ipaddr", s(&i.ipaddr)),
            ("Netmask", s(&i.netmask)),
            ("Gateway", s(&i.gateway)),
            ("Port", s(&i.port)),
            ("Interface", s(&i.interface)),
            ("EscapeChar", s(&i.escapechar)),
            ("Write", bool_text(i.write)),
            ("WriteBool", Value::from(i.write.unwrap_or(false))),
            ("Template", s(&i.template)),
            ("Tags", tags(&i.tags)),
        ])),
    );
    let primary = c
        .primary_network
        .as_deref()
        .filter(|p| c.network_devices.contains_key(*p))
        .or_else(|| c.network_devices.keys().next().map(String::as_str))
        .unwrap_or("");
    f.insert("PrimaryNetDev", Value::from(primary));
    let mut netdevs = BTreeMap::new();
    for (n, d) in &c.network_devices {
        let ipaddr = d.ipaddr.clone().unwrap_or_default();
        let netmask = d.netmask.clone().unwrap_or_default();
        let ipaddr6 = d.ipaddr6.clone().unwrap_or_default();
        let (addr6, pfx6) = super::server::split_prefix(&ipaddr6);
        let prefix6 = pfx6
            .map(str::to_owned)
            .or_else(|| d.prefixlen6.clone())
            .unwrap_or_default();
        let cidr6 = if addr6.is_empty() || prefix6.is_empty() {
            String::new()
        } else {
            format!("{addr6}/{prefix6}")
        };
        let ip_cidr = cidr(&ipaddr, &netmask);
        let prefix = ip_cidr.split_once('/').map(|(_, p)| p.to_owned()).unwrap_or_default();
        netdevs.insert(
            n.clone(),
            obj(Fields::from([
                ("Name", Value::from(n.as_str())),
                ("Type", s(&d.r#type)),
                ("OnBoot", bool_text(d.onboot)),
                ("OnBootDefaultTrue", Value::from(d.onboot.unwrap_or(true))),
                ("Device", s(&d.device)),
                ("Hwaddr", s(&d.hwaddr)),
                ("Ipaddr", Value::from(ipaddr)),
                ("Netmask", Value::from(netmask)),
                ("IpCIDR", Value::from(ip_cidr)),
                ("Prefix", Value::from(prefix)),
                ("Gateway", s(&d.gateway)),
                ("Ipaddr6", Value::from(addr6)),
                ("PrefixLen6", Value::from(prefix6)),
                ("IpCIDR6", Value::from(cidr6)),
                ("Gateway6", s(&d.gateway6)),
                ("MTU", s(&d.mtu)),
                ("Primary", Value::from(n == primary)),
                ("Tags", tags(&d.tags)),
            ])),
        );
    }
    f.insert("NetDevs", Value::from(netdevs));
    f.insert(
        "Resources",
        Value::from(
            c.resources
                .iter()
                .map(|(k, v)| (k.clone(), Value::from_serializable(v)))
                .collect::<BTreeMap<_, _>>(),
        ),
    );
    let mut disks = BTreeMap::new();
    let mut disk_list = Vec::new();
    for (path, d) in &c.disks {
        let mut parts = BTreeMap::new();
        let mut part_list = Vec::new();
        for (label, p) in partition_order(&d.partitions) {
            let pv = obj(Fields::from([
                ("Id", Value::from(label.as_str())),
                ("Number", s(&p.number)),
                ("SizeMiB", s(&p.size_mib)),
                ("StartMiB", s(&p.start_mib)),
                ("TypeGuid", s(&p.type_guid)),
                ("Guid", s(&p.guid)),
                (
                    "WipePartitionEntry",
                    Value::from(p.wipe_partition_entry.unwrap_or(false)),
                ),
                ("ShouldExist", Value::from(p.should_exist.unwrap_or(false))),
                ("Resize", Value::from(p.resize.unwrap_or(false))),
            ]));
            parts.insert(label.clone(), pv.clone());
            part_list.push(pv);
        }
        let dv = obj(Fields::from([
            ("Id", Value::from(path.as_str())),
            ("WipeTable", Value::from(d.wipe_table.unwrap_or(false))),
            ("Partitions", Value::from(parts)),
            ("PartitionList", Value::from(part_list)),
        ]));
        disks.insert(path.clone(), dv.clone());
        disk_list.push(dv);
    }
    f.insert("Disks", Value::from(disks));
    f.insert("DiskList", Value::from(disk_list));
    let mut fss = BTreeMap::new();
    let mut fs_list = Vec::new();
    for (path, x) in &c.filesystems {
        let v = obj(Fields::from([
            ("Id", Value::from(path.as_str())),
            ("Format", s(&x.format)),
            ("Path", s(&x.path)),
            ("WipeFileSystem", Value::from(x.wipe_filesystem.unwrap_or(false))),
            ("Label", s(&x.label)),
            ("Uuid", s(&x.uuid)),
            ("Options", strings(&x.options)),
            ("MountOptions", s(&x.mount_options)),
        ]));
        fss.insert(path.clone(), v.clone());
        fs_list.push(v);
    }
    f.insert("FileSystems", Value::from(fss));
    f.insert("FileSystemList", Value::from(fs_list));
    obj(f)
}

/// Partitions in Warewulf's `PartitionList` order: those with a numeric `number` first, by
/// number; then the rest; ties by label. Scripts that list partitions without numbers
/// (sfdisk) rely on it: the n-th line becomes partition n.
fn partition_order(parts: &BTreeMap<String, crate::model::Partition>) -> Vec<(&String, &crate::model::Partition)> {
    let mut v: Vec<_> = parts.iter().collect();
    // Stable over the map's label order, so equal numbers keep label order.
    v.sort_by_key(|(_, p)| {
        let n = p.number.as_deref().and_then(|n| n.parse::<i64>().ok());
        (n.is_none(), n)
    });
    v
}

fn server_context(c: &ServerConf, b: &BuildInfo) -> Context {
    let d = c.derived();
    let mut ctx = Context::new();
    let put = |ctx: &mut Context, k: &'static str, v: Value| ctx.insert_value(k, v);
    put(&mut ctx, "BuildHost", Value::from(b.host.as_str()));
    put(&mut ctx, "BuildTime", Value::from(b.time.as_str()));
    put(&mut ctx, "BuildTimeUnix", Value::from(b.time_unix.to_string()));
    put(&mut ctx, "BuildSource", Value::from(b.source.as_str()));
    put(&mut ctx, "Overlay", Value::from(""));
    put(&mut ctx, "Ipaddr", Value::from(d.ipaddr));
    put(&mut ctx, "IpCIDR", Value::from(d.ip_cidr));
    put(&mut ctx, "Netmask", Value::from(d.netmask));
    put(&mut ctx, "Network", Value::from(d.network));
    put(&mut ctx, "NetworkCIDR", Value::from(d.network_cidr));
    put(&mut ctx, "Ipv6", Value::from(!d.ipaddr6.is_empty()));
    put(&mut ctx, "Ipaddr6", Value::from(d.ipaddr6));
    put(&mut ctx, "PrefixLen6", Value::from(d.prefixlen6));
    put(&mut ctx, "IpCIDR6", Value::from(d.ip_cidr6));
    put(&mut ctx, "Network6", Value::from(d.network6));
    put(&mut ctx, "NetworkCIDR6", Value::from(d.network_cidr6));
    put(&mut ctx, "Fqdn", Value::from(c.fqdn.as_str()));
    let w = &c.warewulf;
    put(
        &mut ctx,
        "Warewulf",
        obj(Fields::from([
            ("Port", Value::from(w.port)),
            ("Secure", Value::from(w.secure)),
            ("UpdateInterval", Value::from(w.update_interval)),
            ("AutobuildOverlays", Value::from(w.autobuild_overlays)),
            ("EnableHostOverlay", Value::from(w.host_overlay)),
            ("GrubBoot", Value::from(w.grubboot)),
            ("EnableTLS", Value::from(w.tls)),
            ("TLSPort", Value::from(w.tls_port)),
            ("DataStore", Value::from(w.datastore.as_str())),
        ])),
    );
    let h = &c.dhcp;
    put(
        &mut ctx,
        "Dhcp",
        obj(Fields::from([
            ("Enabled", Value::from(h.enabled)),
            ("Template", Value::from(h.template.as_str())),
            ("RangeStart", Value::from(h.range_start.as_str())),
            ("RangeEnd", Value::from(h.range_end.as_str())),
            ("Range6Start", Value::from(h.range6_start.as_str())),
            ("Range6End", Value::from(h.range6_end.as_str())),
            ("SystemdName", Value::from(h.systemd_name.as_str())),
        ])),
    );
    let t = &c.tftp;
    put(
        &mut ctx,
        "Tftp",
        obj(Fields::from([
            ("Enabled", Value::from(t.enabled)),
            ("TftpRoot", Value::from(t.tftproot.as_str())),
            ("SystemdName", Value::from(t.systemd_name.as_str())),
            ("IpxeBinaries", Value::from(t.ipxe.clone())),
        ])),
    );
    let exports: Vec<Value> = c
        .nfs
        .export_paths
        .iter()
        .map(|e| {
            obj(Fields::from([
                ("Path", Value::from(e.path.as_str())),
                ("ExportOptions", Value::from(e.export_options.as_str())),
                ("MountOptions", Value::from(e.mount_options.as_str())),
                ("Mount", Value::from(e.mount)),
            ]))
        })
        .collect();
    put(
        &mut ctx,
        "Nfs",
        obj(Fields::from([
            ("Enabled", Value::from(c.nfs.enabled)),
            ("SystemdName", Value::from(c.nfs.systemd_name.as_str())),
            ("ExportsExtended", Value::from(exports)),
        ])),
    );
    put(
        &mut ctx,
        "Ssh",
        obj(Fields::from([
            ("KeyTypes", strings(&c.ssh.key_types)),
            (
                "FirstKeyType",
                Value::from(c.ssh.key_types.first().cloned().unwrap_or_default()),
            ),
        ])),
    );
    let p = &c.paths;
    put(
        &mut ctx,
        "Paths",
        obj(Fields::from([
            ("Bindir", Value::from(p.bindir.as_str())),
            ("Sysconfdir", Value::from(p.sysconfdir.as_str())),
            ("Localstatedir", Value::from(p.localstatedir.as_str())),
            ("Cachedir", Value::from(p.cachedir.as_str())),
            ("Ipxesource", Value::from(p.ipxesource.as_str())),
            ("Srvdir", Value::from(p.srvdir.as_str())),
            ("Firewallddir", Value::from(p.firewallddir.as_str())),
            ("Systemddir", Value::from(p.systemddir.as_str())),
            ("Datadir", Value::from(p.datadir.as_str())),
            ("WWOverlaydir", Value::from(p.wwoverlaydir.as_str())),
            ("WWChrootdir", Value::from(p.wwchrootdir.as_str())),
            ("WWProvisiondir", Value::from(p.wwprovisiondir.as_str())),
            ("WWClientdir", Value::from(p.wwclientdir.as_str())),
        ])),
    );
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_list_is_in_number_order_then_label() {
        let conf = crate::model::parse_nodes_conf(
            "nodes:\n  n1:\n    disks:\n      /dev/sda:\n        partitions:\n          a-last:\n            size_mib: \"1\"\n          boot:\n            number: \"3\"\n          root:\n            number: \"1\"\n          swap:\n            number: \"2\"\n          z-data:\n            number: \"10\"\n          b-last: {}\n",
        )
        .unwrap();
        let v = node_value("n1", &conf.nodes["n1"]);
        let parts = v.get_from_path("DiskList.0.PartitionList").unwrap();
        let ids: Vec<String> = parts
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.get_from_path("Id").unwrap().as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["root", "swap", "boot", "z-data", "a-last", "b-last"]);
    }
}
