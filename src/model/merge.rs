//! Merging a node with its profiles, with the origin of every value (`wwctl node list -a`).
//!
//! Design notes — semantics copied from Warewulf 4.6 (`internal/pkg/node/mergo.go`,
//! `fields.go`), re-implemented without reflection:
//! - The profile list is expanded depth-first: a profile's own profiles come before the profile;
//!   a profile already visited is skipped (this removes duplicates and breaks cycles, first
//!   occurrence wins). `~name` entries are kept during expansion and then remove *every*
//!   occurrence of `name` from the expanded list, wherever it appears (Warewulf's `cleanList`).
//! - Sources are applied in that order, then the node itself. Scalars: a later source overrides
//!   (so the right-most profile wins and the node beats every profile); booleans override when
//!   set at all, so a node's `false` beats a profile's `true`. Lists append. Maps merge key by key
//!   and struct-valued maps (network devices, disks, partitions, filesystems) field by field.
//!   Resources: arrays append, objects merge recursively, anything else is replaced.
//! - After merging, `~x` in `system overlay`, `runtime overlay` and `kernel.args` removes every
//!   `x` and the `~x` entries themselves. Duplicates in those lists are kept, as in Warewulf.
//! - `discoverable` and `asset key` are node-only (Warewulf's profile type lacks them); values in
//!   profiles are ignored here and rejected by `validate_profile_conf`.
//! - `comment` is not inherited (Warewulf 4.7): a profile's comment describes the profile, so a
//!   node shows only its own.
//! - `primary network` defaults to the alphabetically first network device when unset or naming
//!   a device that does not exist (Warewulf's `updatePrimaryNetDev`).
//! - Origins follow Warewulf's `Field.Set`: a scalar's origin is the last profile that set it,
//!   or `SUPERSEDED` once the node overrides a profile value, or empty (printed `--`) when only the
//!   node sets it; a list's origin is the comma-joined list of every contributor, including the
//!   node's *name* when the node appends to a profile's list (`default,n1`).
//! - Deviation: an unknown profile is an error (Warewulf only logs a warning and skips it),
//!   because silently dropping configuration on a provisioning system is worse than refusing.
//! - Performance: effective values are built by cloning only what ends up in the result; origin
//!   strings are only built when tracking is requested ([`merge`] vs. [`merge_effective`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use super::{ModelError, NodeConf};

/// One row of `wwctl node list -a`: field (Warewulf's name, e.g. `NetDevs[default].Hwaddr`),
/// origin (profile name(s), `SUPERSEDED` or `--`) and the value as Warewulf prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRow {
    /// Warewulf's field name, e.g. `Kernel.Args` or `NetDevs[default].Hwaddr`.
    pub field: String,
    /// Profile name(s) the value came from, `SUPERSEDED`, or `--` (node only).
    pub origin: String,
    /// The value as Warewulf prints it (`--` when empty).
    pub value: String,
}

/// A node merged with its profiles.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The node's name.
    pub name: String,
    /// Effective configuration. `profiles` holds the node's own profile list (negations applied),
    /// as in Warewulf; see [`Merged::applied_profiles`] for the fully expanded list.
    pub conf: NodeConf,
    /// Profiles actually applied, in application order (nested expanded, negations applied).
    pub applied_profiles: Vec<String>,
    /// Field name → origin ("" = node only).
    origins: HashMap<String, String>,
    /// Values as accumulated before `~x` negations were applied, for display.
    raw: RawValues,
}

/// Pre-cleaning values of lists that negation changed (None = same as the effective value).
#[derive(Debug, Clone, Default, PartialEq)]
struct RawValues {
    profiles: Vec<String>,
    runtime_overlay: Option<Vec<String>>,
    system_overlay: Option<Vec<String>>,
    kernel_args: Option<Vec<String>>,
    primary_network: Option<Option<String>>,
}

/// Merge `node` (named `node_name`) with the profiles it references, recording the origin of
/// every value. Fails if the node or one of its (nested) profiles references a profile that
/// does not exist.
pub fn merge(node_name: &str, node: &NodeConf, profiles: &BTreeMap<String, NodeConf>) -> Result<Merged, ModelError> {
    let mut origins = HashMap::new();
    let (conf, applied, raw) = merge_impl(node_name, node, profiles, Some(&mut origins))?;
    Ok(Merged {
        name: node_name.to_owned(),
        conf,
        applied_profiles: applied,
        origins,
        raw,
    })
}

/// Like [`merge`] but returns only the effective configuration (no origin bookkeeping); use it
/// where origins are not displayed, e.g. rendering overlays or `node list` without `-a`.
pub fn merge_effective(
    node_name: &str,
    node: &NodeConf,
    profiles: &BTreeMap<String, NodeConf>,
) -> Result<NodeConf, ModelError> {
    merge_impl(node_name, node, profiles, None).map(|(conf, _, _)| conf)
}

/// Expand a node's profile list (see module notes). Returns the applied profiles in order.
pub fn expand_profiles<'a>(
    node_name: &str,
    node: &'a NodeConf,
    profiles: &'a BTreeMap<String, NodeConf>,
) -> Result<Vec<&'a str>, ModelError> {
    let mut visited = HashSet::new();
    let mut out = Vec::new();
    expand(("node", node_name), &node.profiles, profiles, &mut visited, &mut out)?;
    clean_refs(&mut out);
    Ok(out)
}

fn expand<'a>(
    referrer: (&str, &str),
    list: &'a [String],
    profiles: &'a BTreeMap<String, NodeConf>,
    visited: &mut HashSet<&'a str>,
    out: &mut Vec<&'a str>,
) -> Result<(), ModelError> {
    for id in list {
        if id.starts_with('~') {
            out.push(id);
            continue;
        }
        if !visited.insert(id) {
            continue;
        }
        let Some(p) = profiles.get(id) else {
            return Err(ModelError::UnknownProfile {
                kind: referrer.0.to_owned(),
                name: referrer.1.to_owned(),
                profile: id.clone(),
            });
        };
        expand(("profile", id), &p.profiles, profiles, visited, out)?;
        out.push(id);
    }
    Ok(())
}

/// Warewulf's `cleanList` on borrowed names: drop every `x` for which `~x` appears, and the `~x`.
fn clean_refs(list: &mut Vec<&str>) {
    if !list.iter().any(|s| s.starts_with('~')) {
        return;
    }
    let negated: Vec<&str> = list.iter().filter_map(|s| s.strip_prefix('~')).collect();
    list.retain(|s| !s.starts_with('~') && !negated.contains(s));
}

/// Warewulf's `cleanList`: returns the cleaned list if it contained a negation.
fn clean_list(list: &mut Vec<String>) -> Option<Vec<String>> {
    if !list.iter().any(|s| s.starts_with('~')) {
        return None;
    }
    let raw = list.clone();
    let negated: Vec<&str> = raw.iter().filter_map(|s| s.strip_prefix('~')).collect();
    list.retain(|s| !s.starts_with('~') && !negated.contains(&s.as_str()));
    Some(raw)
}

type MergeResult = (NodeConf, Vec<String>, RawValues);

fn merge_impl(
    node_name: &str,
    node: &NodeConf,
    profiles: &BTreeMap<String, NodeConf>,
    mut origins: Option<&mut HashMap<String, String>>,
) -> Result<MergeResult, ModelError> {
    let applied = expand_profiles(node_name, node, profiles)?;
    let mut conf = NodeConf::default();
    for id in &applied {
        let mut pass = Pass {
            origins: origins.as_deref_mut(),
            src: id,
            multi: id,
        };
        pass.merge_into(&mut conf, &profiles[*id], false);
    }
    let mut pass = Pass {
        origins: origins.as_deref_mut(),
        src: "",
        multi: node_name,
    };
    pass.merge_into(&mut conf, node, true);

    let mut raw = RawValues::default();
    if let Some(o) = origins {
        if node.profiles.is_empty() {
            o.remove("Profiles");
        } else {
            o.insert("Profiles".to_owned(), String::new());
            raw.profiles = node.profiles.clone();
        }
    }
    conf.profiles = node.profiles.clone();
    clean_list(&mut conf.profiles);
    raw.runtime_overlay = clean_list(&mut conf.runtime_overlay);
    raw.system_overlay = clean_list(&mut conf.system_overlay);
    if let Some(k) = &mut conf.kernel {
        raw.kernel_args = clean_list(&mut k.args);
    }
    if let Some(first) = conf.network_devices.keys().next() {
        let ok = conf
            .primary_network
            .as_ref()
            .is_some_and(|p| conf.network_devices.contains_key(p));
        if !ok {
            let old = conf.primary_network.replace(first.clone());
            raw.primary_network = Some(old);
        }
    }
    let applied = applied.into_iter().map(str::to_owned).collect();
    Ok((conf, applied, raw))
}

/// One source being merged into the result: `src` is the origin recorded for scalars ("" for
/// the node), `multi` the name appended to list origins (profile or node name).
struct Pass<'a> {
    origins: Option<&'a mut HashMap<String, String>>,
    src: &'a str,
    multi: &'a str,
}

impl Pass<'_> {
    fn tracking(&self) -> bool {
        self.origins.is_some()
    }

    /// Record a scalar contribution (Warewulf's `Field.Set`).
    fn scalar_origin(&mut self, field: impl FnOnce() -> String) {
        if let Some(o) = self.origins.as_deref_mut() {
            let e = o.entry(field()).or_default();
            *e = if !e.is_empty() && self.src.is_empty() {
                "SUPERSEDED".to_owned()
            } else {
                self.src.to_owned()
            };
        }
    }

    /// Record a list contribution: origins accumulate as "a,b,node".
    fn list_origin(&mut self, field: impl FnOnce() -> String) {
        if let Some(o) = self.origins.as_deref_mut() {
            let e = o.entry(field()).or_default();
            if e.is_empty() {
                self.src.clone_into(e);
            } else {
                e.push(',');
                e.push_str(self.multi);
            }
        }
    }

    fn opt<T: Clone>(&mut self, dst: &mut Option<T>, src: &Option<T>, field: impl FnOnce() -> String) {
        if let Some(v) = src {
            *dst = Some(v.clone());
            self.scalar_origin(field);
        }
    }

    fn list(&mut self, dst: &mut Vec<String>, src: &[String], field: impl FnOnce() -> String) {
        if !src.is_empty() {
            dst.extend_from_slice(src);
            self.list_origin(field);
        }
    }

    fn string_map(&mut self, dst: &mut BTreeMap<String, String>, src: &BTreeMap<String, String>, prefix: &str) {
        for (k, v) in src {
            if v.is_empty() {
                continue;
            }
            match dst.get_mut(k) {
                Some(d) => v.clone_into(d),
                None => {
                    dst.insert(k.clone(), v.clone());
                }
            }
            self.scalar_origin(|| format!("{prefix}[{k}]"));
        }
    }

    fn prefix(&self, f: impl FnOnce() -> String) -> String {
        if self.tracking() {
            f()
        } else {
            String::new()
        }
    }

    fn merge_into(&mut self, dst: &mut NodeConf, src: &NodeConf, is_node: bool) {
        if is_node {
            self.opt(&mut dst.discoverable, &src.discoverable, || "Discoverable".into());
            self.opt(&mut dst.asset_key, &src.asset_key, || "AssetKey".into());
            // Warewulf 4.7 stopped inheriting a profile's comment: it describes the profile.
            self.opt(&mut dst.comment, &src.comment, || "Comment".into());
        }
        self.opt(&mut dst.cluster_name, &src.cluster_name, || "ClusterName".into());
        self.opt(&mut dst.image_name, &src.image_name, || "ImageName".into());
        self.opt(&mut dst.ipxe_template, &src.ipxe_template, || "Ipxe".into());
        self.list(&mut dst.runtime_overlay, &src.runtime_overlay, || {
            "RuntimeOverlay".into()
        });
        self.list(&mut dst.system_overlay, &src.system_overlay, || "SystemOverlay".into());
        if let Some(k) = &src.kernel {
            let d = dst.kernel.get_or_insert_with(Default::default);
            self.opt(&mut d.version, &k.version, || "Kernel.Version".into());
            self.list(&mut d.args, &k.args, || "Kernel.Args".into());
        }
        if let Some(i) = &src.ipmi {
            let d = dst.ipmi.get_or_insert_with(Default::default);
            self.opt(&mut d.username, &i.username, || "Ipmi.UserName".into());
            self.opt(&mut d.password, &i.password, || "Ipmi.Password".into());
            self.opt(&mut d.ipaddr, &i.ipaddr, || "Ipmi.Ipaddr".into());
            self.opt(&mut d.gateway, &i.gateway, || "Ipmi.Gateway".into());
            self.opt(&mut d.netmask, &i.netmask, || "Ipmi.Netmask".into());
            self.opt(&mut d.port, &i.port, || "Ipmi.Port".into());
            self.opt(&mut d.interface, &i.interface, || "Ipmi.Interface".into());
            self.opt(&mut d.escapechar, &i.escapechar, || "Ipmi.EscapeChar".into());
            self.opt(&mut d.write, &i.write, || "Ipmi.Write".into());
            self.opt(&mut d.template, &i.template, || "Ipmi.Template".into());
            self.string_map(&mut d.tags, &i.tags, "Ipmi.Tags");
        }
        self.opt(&mut dst.init, &src.init, || "Init".into());
        self.opt(&mut dst.root, &src.root, || "Root".into());
        for (name, s) in &src.network_devices {
            let d = match dst.network_devices.get_mut(name) {
                Some(d) => d,
                None => dst.network_devices.entry(name.clone()).or_default(),
            };
            let p = self.prefix(|| format!("NetDevs[{name}]."));
            self.opt(&mut d.r#type, &s.r#type, || format!("{p}Type"));
            self.opt(&mut d.onboot, &s.onboot, || format!("{p}OnBoot"));
            self.opt(&mut d.device, &s.device, || format!("{p}Device"));
            self.opt(&mut d.hwaddr, &s.hwaddr, || format!("{p}Hwaddr"));
            self.opt(&mut d.ipaddr, &s.ipaddr, || format!("{p}Ipaddr"));
            self.opt(&mut d.netmask, &s.netmask, || format!("{p}Netmask"));
            self.opt(&mut d.gateway, &s.gateway, || format!("{p}Gateway"));
            self.opt(&mut d.ipaddr6, &s.ipaddr6, || format!("{p}Ipaddr6"));
            self.opt(&mut d.prefixlen6, &s.prefixlen6, || format!("{p}PrefixLen6"));
            self.opt(&mut d.gateway6, &s.gateway6, || format!("{p}Gateway6"));
            self.opt(&mut d.mtu, &s.mtu, || format!("{p}MTU"));
            self.string_map(&mut d.tags, &s.tags, &format!("{p}Tags"));
        }
        self.string_map(&mut dst.tags, &src.tags, "Tags");
        self.opt(&mut dst.primary_network, &src.primary_network, || {
            "PrimaryNetDev".into()
        });
        for (name, s) in &src.disks {
            let d = dst.disks.entry(name.clone()).or_default();
            let p = self.prefix(|| format!("Disks[{name}]."));
            self.opt(&mut d.wipe_table, &s.wipe_table, || format!("{p}WipeTable"));
            for (pname, sp) in &s.partitions {
                let dp = d.partitions.entry(pname.clone()).or_default();
                let p = self.prefix(|| format!("{p}Partitions[{pname}]."));
                self.opt(&mut dp.number, &sp.number, || format!("{p}Number"));
                self.opt(&mut dp.size_mib, &sp.size_mib, || format!("{p}SizeMiB"));
                self.opt(&mut dp.start_mib, &sp.start_mib, || format!("{p}StartMiB"));
                self.opt(&mut dp.type_guid, &sp.type_guid, || format!("{p}TypeGuid"));
                self.opt(&mut dp.guid, &sp.guid, || format!("{p}Guid"));
                self.opt(&mut dp.wipe_partition_entry, &sp.wipe_partition_entry, || {
                    format!("{p}WipePartitionEntry")
                });
                self.opt(&mut dp.should_exist, &sp.should_exist, || format!("{p}ShouldExist"));
                self.opt(&mut dp.resize, &sp.resize, || format!("{p}Resize"));
            }
        }
        for (name, s) in &src.filesystems {
            let d = dst.filesystems.entry(name.clone()).or_default();
            let p = self.prefix(|| format!("FileSystems[{name}]."));
            self.opt(&mut d.format, &s.format, || format!("{p}Format"));
            self.opt(&mut d.path, &s.path, || format!("{p}Path"));
            self.opt(&mut d.wipe_filesystem, &s.wipe_filesystem, || {
                format!("{p}WipeFileSystem")
            });
            self.opt(&mut d.label, &s.label, || format!("{p}Label"));
            self.opt(&mut d.uuid, &s.uuid, || format!("{p}Uuid"));
            self.list(&mut d.options, &s.options, || format!("{p}Options"));
            self.opt(&mut d.mount_options, &s.mount_options, || format!("{p}MountOptions"));
        }
        for (name, s) in &src.resources {
            if s.is_null() {
                continue;
            }
            match dst.resources.get_mut(name) {
                Some(d) => merge_json(d, s),
                None => {
                    dst.resources.insert(name.clone(), s.clone());
                }
            }
            if s.is_array() {
                self.list_origin(|| format!("Resources[{name}]"));
            } else {
                self.scalar_origin(|| format!("Resources[{name}]"));
            }
        }
    }
}

/// Merge free-form resource data: arrays append, objects merge key by key, else replace.
fn merge_json(dst: &mut Value, src: &Value) {
    match (dst, src) {
        (Value::Array(d), Value::Array(s)) => d.extend(s.iter().cloned()),
        (Value::Object(d), Value::Object(s)) => {
            for (k, v) in s {
                match d.get_mut(k) {
                    Some(dv) => merge_json(dv, v),
                    None => {
                        d.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (_, Value::Null) => {}
        (d, s) => *d = s.clone(),
    }
}

impl Merged {
    /// The network device marked primary (Warewulf's `NetDev.Primary()`), if the node has any.
    pub fn primary_netdev(&self) -> Option<&str> {
        self.conf
            .primary_network
            .as_deref()
            .filter(|p| self.conf.network_devices.contains_key(*p))
    }

    /// The origin of one field (Warewulf name, e.g. `NetDevs[default].Hwaddr`): `Some("")` when
    /// only the node sets it, `None` when nothing sets it.
    pub fn origin(&self, field: &str) -> Option<&str> {
        self.origins.get(field).map(String::as_str)
    }

    /// Rows for `wwctl node list -a`, in Warewulf 4.6's order and naming. Only fields that some
    /// source sets are listed (Warewulf prints nothing for unset fields); an empty origin is
    /// printed `--`. List values are shown as accumulated, including `~x` negations, exactly as
    /// Warewulf 4.6 shows them (e.g. `rop1,rop2,nop1,~rop1`); `conf` holds the cleaned lists.
    pub fn field_rows(&self) -> Vec<FieldRow> {
        let mut rows = Rows {
            origins: Some(&self.origins),
            out: Vec::with_capacity(self.origins.len()),
        };
        rows.collect(&self.conf, &self.raw, true);
        rows.out
    }
}

/// Rows for `wwctl profile list -a`: every field of one profile as Warewulf 4.6's
/// `GetFieldList` lists it — all scalar and list fields even when unset (value `--`), the
/// `kernel`/`ipmi` fields only when that block exists, map entries only when present. There is
/// no origin column in that view; `origin` is always `--`.
pub fn profile_field_rows(conf: &NodeConf) -> Vec<FieldRow> {
    let mut rows = Rows {
        origins: None,
        out: Vec::new(),
    };
    let raw = RawValues {
        profiles: conf.profiles.clone(),
        ..RawValues::default()
    };
    rows.collect(conf, &raw, false);
    rows.out
}

/// Builder for [`Merged::field_rows`] and [`profile_field_rows`].
/// With `origins`, emits a row only for fields that have an origin; without, emits every field.
struct Rows<'a> {
    origins: Option<&'a HashMap<String, String>>,
    out: Vec<FieldRow>,
}

impl Rows<'_> {
    /// Walk `c` in Warewulf's field order (`listFields` on its `Node` type).
    fn collect(&mut self, c: &NodeConf, raw: &RawValues, node: bool) {
        if node {
            self.bool("Discoverable", c.discoverable);
            self.opt("AssetKey", &c.asset_key);
        }
        self.list("Profiles", &raw.profiles);
        self.opt("Comment", &c.comment);
        self.opt("ClusterName", &c.cluster_name);
        self.opt("ImageName", &c.image_name);
        self.opt("Ipxe", &c.ipxe_template);
        self.list(
            "RuntimeOverlay",
            raw.runtime_overlay.as_ref().unwrap_or(&c.runtime_overlay),
        );
        self.list(
            "SystemOverlay",
            raw.system_overlay.as_ref().unwrap_or(&c.system_overlay),
        );
        if let Some(k) = &c.kernel {
            self.opt("Kernel.Version", &k.version);
            self.list("Kernel.Args", raw.kernel_args.as_ref().unwrap_or(&k.args));
        }
        if let Some(i) = &c.ipmi {
            self.opt("Ipmi.UserName", &i.username);
            self.opt("Ipmi.Password", &i.password);
            self.opt("Ipmi.Ipaddr", &i.ipaddr);
            self.opt("Ipmi.Gateway", &i.gateway);
            self.opt("Ipmi.Netmask", &i.netmask);
            self.opt("Ipmi.Port", &i.port);
            self.opt("Ipmi.Interface", &i.interface);
            self.opt("Ipmi.EscapeChar", &i.escapechar);
            self.bool("Ipmi.Write", i.write);
            self.opt("Ipmi.Template", &i.template);
            self.tags("Ipmi.Tags", &i.tags);
        }
        self.opt("Init", &c.init);
        self.opt("Root", &c.root);
        for (name, d) in &c.network_devices {
            let p = format!("NetDevs[{name}].");
            self.opt(&format!("{p}Type"), &d.r#type);
            self.bool(&format!("{p}OnBoot"), d.onboot);
            self.opt(&format!("{p}Device"), &d.device);
            self.opt(&format!("{p}Hwaddr"), &d.hwaddr);
            self.opt(&format!("{p}Ipaddr"), &d.ipaddr);
            self.opt(&format!("{p}Netmask"), &d.netmask);
            self.opt(&format!("{p}Gateway"), &d.gateway);
            self.opt(&format!("{p}Ipaddr6"), &d.ipaddr6);
            self.opt(&format!("{p}PrefixLen6"), &d.prefixlen6);
            self.opt(&format!("{p}Gateway6"), &d.gateway6);
            self.opt(&format!("{p}MTU"), &d.mtu);
            self.tags(&format!("{p}Tags"), &d.tags);
        }
        self.tags("Tags", &c.tags);
        self.opt(
            "PrimaryNetDev",
            raw.primary_network.as_ref().unwrap_or(&c.primary_network),
        );
        for (name, d) in &c.disks {
            let p = format!("Disks[{name}].");
            self.bool(&format!("{p}WipeTable"), d.wipe_table);
            for (pname, part) in &d.partitions {
                let p = format!("{p}Partitions[{pname}].");
                self.opt(&format!("{p}Number"), &part.number);
                self.opt(&format!("{p}SizeMiB"), &part.size_mib);
                self.opt(&format!("{p}StartMiB"), &part.start_mib);
                self.opt(&format!("{p}TypeGuid"), &part.type_guid);
                self.opt(&format!("{p}Guid"), &part.guid);
                self.bool(&format!("{p}WipePartitionEntry"), part.wipe_partition_entry);
                self.bool(&format!("{p}ShouldExist"), part.should_exist);
                self.bool(&format!("{p}Resize"), part.resize);
            }
        }
        for (name, f) in &c.filesystems {
            let p = format!("FileSystems[{name}].");
            self.opt(&format!("{p}Format"), &f.format);
            self.opt(&format!("{p}Path"), &f.path);
            self.bool(&format!("{p}WipeFileSystem"), f.wipe_filesystem);
            self.opt(&format!("{p}Label"), &f.label);
            self.opt(&format!("{p}Uuid"), &f.uuid);
            self.list(&format!("{p}Options"), &f.options);
            self.opt(&format!("{p}MountOptions"), &f.mount_options);
        }
        for (name, v) in &c.resources {
            self.push(&format!("Resources[{name}]"), || {
                let mut out = String::new();
                canonical_json(v, &mut out);
                out
            });
        }
    }

    fn push(&mut self, field: &str, value: impl FnOnce() -> String) {
        let origin = match self.origins {
            Some(o) => match o.get(field) {
                Some(origin) => origin.clone(),
                None => return,
            },
            None => String::new(),
        };
        self.out.push(FieldRow {
            field: field.to_owned(),
            origin: dash(origin),
            value: dash(value()),
        });
    }
    fn opt(&mut self, field: &str, v: &Option<String>) {
        self.push(field, || v.clone().unwrap_or_default());
    }
    fn bool(&mut self, field: &str, v: Option<bool>) {
        self.push(field, || v.map(|b| b.to_string()).unwrap_or_default());
    }
    fn list(&mut self, field: &str, v: &[String]) {
        self.push(field, || v.join(","));
    }
    fn tags(&mut self, prefix: &str, m: &BTreeMap<String, String>) {
        for (k, v) in m {
            self.push(&format!("{prefix}[{k}]"), || v.clone());
        }
    }
}

/// Compact JSON with object keys sorted, like Go's `json.Marshal` of a map (independent of
/// whether serde_json's `preserve_order` feature is enabled somewhere in the build).
fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&map[k], out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Warewulf's table printer shows empty cells as `--`.
fn dash(s: String) -> String {
    if s.is_empty() {
        "--".to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_nodes_conf;

    /// Merge node `node` of a nodes.conf given as YAML.
    fn m(yaml: &str, node: &str) -> Merged {
        let conf = parse_nodes_conf(yaml).unwrap();
        merge(node, &conf.nodes[node], &conf.nodeprofiles).unwrap()
    }

    fn row(mg: &Merged, field: &str) -> Option<(String, String)> {
        mg.field_rows()
            .into_iter()
            .find(|r| r.field == field)
            .map(|r| (r.origin, r.value))
    }

    fn rv(origin: &str, value: &str) -> Option<(String, String)> {
        Some((origin.to_owned(), value.to_owned()))
    }

    #[test]
    fn single_profile() {
        let mg = m(
            "nodeprofiles:\n  default:\n    comment: profilecomment\nnodes:\n  n01:\n    profiles:\n    - default\n",
            "n01",
        );
        // A profile's comment is not inherited (Warewulf 4.7).
        assert_eq!(mg.conf.comment, None);
        assert_eq!(mg.applied_profiles, ["default"]);
        let rows = mg.field_rows();
        assert_eq!(
            rows,
            vec![FieldRow {
                field: "Profiles".into(),
                origin: "--".into(),
                value: "default".into()
            },]
        );
    }

    #[test]
    fn right_most_profile_wins_and_node_supersedes() {
        let y = "nodeprofiles:\n  p1:\n    comment: p1 comment\n    init: /p1\n  p2:\n    comment: p2 comment\nnodes:\n  n1:\n    profiles: [p1, p2]\n  n2:\n    profiles: [p1, p2]\n    comment: n2 comment\n";
        let a = m(y, "n1");
        assert_eq!(a.conf.comment, None, "comments are not inherited");
        assert_eq!(row(&a, "Comment"), None);
        assert_eq!(row(&a, "Init"), rv("p1", "/p1"));
        let b = m(y, "n2");
        assert_eq!(b.conf.comment.as_deref(), Some("n2 comment"));
        // The node's own comment supersedes nothing: profiles' comments do not take part.
        assert_eq!(row(&b, "Comment"), rv("--", "n2 comment"));
        assert_eq!(b.origin("Comment"), Some(""));
    }

    #[test]
    fn node_only_values_have_dash_origin() {
        let mg = m("nodes:\n  n1:\n    comment: mine\n    discoverable: false\n", "n1");
        assert_eq!(row(&mg, "Comment"), rv("--", "mine"));
        assert_eq!(row(&mg, "Discoverable"), rv("--", "false"));
        assert_eq!(mg.origin("Comment"), Some(""));
        assert_eq!(mg.origin("Root"), None);
        assert_eq!(row(&mg, "Profiles"), None);
    }

    #[test]
    fn booleans_override_when_set() {
        let y = "nodeprofiles:\n  p:\n    ipmi:\n      write: true\n    network devices:\n      default:\n        onboot: true\nnodes:\n  n1:\n    profiles: [p]\n    ipmi:\n      write: false\n";
        let mg = m(y, "n1");
        assert_eq!(mg.conf.ipmi.as_ref().unwrap().write, Some(false));
        assert_eq!(row(&mg, "Ipmi.Write"), rv("SUPERSEDED", "false"));
        assert_eq!(row(&mg, "NetDevs[default].OnBoot"), rv("p", "true"));
    }

    #[test]
    fn nested_profiles_depth_first() {
        let y = "nodeprofiles:\n  p1:\n    profiles: [p2]\n    comment: p1\n  p2:\n    profiles: [p3]\n    comment: p2\n    root: p2root\n  p3:\n    root: p3root\n    init: p3init\nnodes:\n  n1:\n    profiles: [p1]\n";
        let mg = m(y, "n1");
        assert_eq!(mg.applied_profiles, ["p3", "p2", "p1"]);
        assert_eq!(row(&mg, "Comment"), None);
        assert_eq!(row(&mg, "Root"), rv("p2", "p2root"));
        assert_eq!(row(&mg, "Init"), rv("p3", "p3init"));
        // The node's own profile list is what Warewulf keeps in the merged node.
        assert_eq!(mg.conf.profiles, ["p1"]);
    }

    fn applied(yaml: &str) -> Vec<String> {
        m(yaml, "n1").applied_profiles
    }

    #[test]
    fn profile_expansion_matches_warewulf() {
        // Cases from Warewulf 4.6's Test_getNodeProfiles.
        assert_eq!(applied("nodes:\n  n1: {}\n"), Vec::<String>::new());
        assert_eq!(
            applied("nodes:\n  n1:\n    profiles: [p1, p2]\nnodeprofiles:\n  p1: {}\n  p2:\n    profiles: ['~p1']\n"),
            ["p2"]
        );
        assert_eq!(
            applied("nodes:\n  n1:\n    profiles: [p1, p2]\nnodeprofiles:\n  p1: {}\n  p2:\n    profiles: ['~p3']\n"),
            ["p1", "p2"]
        );
        // circular
        assert_eq!(
            applied("nodes:\n  n1:\n    profiles: [p1]\nnodeprofiles:\n  p1:\n    profiles: [p2]\n  p2:\n    profiles: [p3]\n  p3:\n    profiles: [p1]\n"),
            ["p3", "p2", "p1"]
        );
        // circular with negation
        assert_eq!(
            applied("nodes:\n  n1:\n    profiles: [p1]\nnodeprofiles:\n  p1:\n    profiles: [p2]\n  p2:\n    profiles: ['~p1', p3]\n  p3:\n    profiles: [p1]\n"),
            ["p3", "p2"]
        );
        // negated nested
        assert_eq!(
            applied("nodes:\n  n1:\n    profiles: [p1, p4]\nnodeprofiles:\n  p1:\n    profiles: [p2]\n  p2:\n    profiles: [p3]\n  p3: {}\n  p4:\n    profiles: ['~p2']\n"),
            ["p3", "p1", "p4"]
        );
        // repeated nested: first occurrence wins, then negation removes it everywhere
        assert_eq!(
            applied("nodes:\n  n1:\n    profiles: [pa1, pb1]\nnodeprofiles:\n  pa1:\n    profiles: [pa2]\n  pa2: {}\n  pb1:\n    profiles: ['~pa2', pb2]\n  pb2:\n    profiles: [pa2]\n"),
            ["pa1", "pb2", "pb1"]
        );
        // duplicates
        assert_eq!(
            applied("nodes:\n  n1:\n    profiles: [a, b, a]\nnodeprofiles:\n  a:\n    profiles: [b]\n  b: {}\n"),
            ["b", "a"]
        );
    }

    #[test]
    fn lists_append_in_order_with_origins() {
        let y = "nodeprofiles:\n  p1:\n    system overlay: [po1, po2]\n    kernel:\n      args: [p1arg]\n  p2:\n    system overlay: [po3]\n    kernel:\n      args: [p2arg]\nnodes:\n  n1:\n    profiles: [p1, p2]\n    system overlay: [no1]\n    runtime overlay: [nro]\n";
        let mg = m(y, "n1");
        assert_eq!(mg.conf.system_overlay, ["po1", "po2", "po3", "no1"]);
        assert_eq!(row(&mg, "SystemOverlay"), rv("p1,p2,n1", "po1,po2,po3,no1"));
        assert_eq!(row(&mg, "RuntimeOverlay"), rv("--", "nro"));
        assert_eq!(row(&mg, "Kernel.Args"), rv("p1,p2", "p1arg,p2arg"));
    }

    #[test]
    fn negation_in_lists() {
        let y = "nodeprofiles:\n  p1:\n    system overlay: [sop1]\n    runtime overlay: [rop1, rop2]\n    kernel:\n      version: v1.0.0\n      args: [arg1, arg2]\nnodes:\n  n01:\n    profiles: [p1]\n    runtime overlay: [nop1, '~rop1']\n    kernel:\n      args: ['~arg2', arg3]\n";
        let mg = m(y, "n01");
        assert_eq!(mg.conf.runtime_overlay, ["rop2", "nop1"]);
        assert_eq!(mg.conf.system_overlay, ["sop1"]);
        assert_eq!(mg.conf.kernel.as_ref().unwrap().args, ["arg1", "arg3"]);
        // Warewulf 4.6 displays the accumulated list including the negation.
        assert_eq!(row(&mg, "RuntimeOverlay"), rv("p1,n01", "rop1,rop2,nop1,~rop1"));
        assert_eq!(row(&mg, "Kernel.Args"), rv("p1,n01", "arg1,arg2,~arg2,arg3"));
        assert_eq!(row(&mg, "Kernel.Version"), rv("p1", "v1.0.0"));
        // A profile can negate what another profile contributed, and the node's own entries.
        let y2 = "nodeprofiles:\n  a:\n    system overlay: [x, y]\n  b:\n    system overlay: ['~x', '~z']\nnodes:\n  n1:\n    profiles: [a, b]\n    system overlay: [z, w]\n";
        assert_eq!(m(y2, "n1").conf.system_overlay, ["y", "w"]);
    }

    #[test]
    fn maps_merge_key_by_key() {
        let y = "nodeprofiles:\n  p1:\n    tags:\n      p1: p1 tag\n      shared: from p1\n  p2:\n    tags:\n      p2: p2 tag\n      shared: from p2\nnodes:\n  n1:\n    profiles: [p1, p2]\n    tags:\n      n1: n1 tag\n      p1: overridden\n";
        let mg = m(y, "n1");
        assert_eq!(mg.conf.tags.len(), 4);
        assert_eq!(row(&mg, "Tags[n1]"), rv("--", "n1 tag"));
        assert_eq!(row(&mg, "Tags[p1]"), rv("SUPERSEDED", "overridden"));
        assert_eq!(row(&mg, "Tags[p2]"), rv("p2", "p2 tag"));
        assert_eq!(row(&mg, "Tags[shared]"), rv("p2", "from p2"));
    }

    #[test]
    fn network_devices_merge_field_by_field() {
        let y = "nodeprofiles:\n  p1:\n    network devices:\n      default:\n        netmask: 255.255.255.0\n        device: eth0\n        tags:\n          p1: x\n  p2:\n    network devices:\n      default:\n        device: eth1\n      ib0:\n        type: infiniband\nnodes:\n  n1:\n    profiles: [p1, p2]\n    network devices:\n      default:\n        ipaddr: 192.168.1.1\n        device: ens1\n        tags:\n          n1: y\n";
        let mg = m(y, "n1");
        let d = &mg.conf.network_devices["default"];
        assert_eq!(d.netmask.as_deref(), Some("255.255.255.0"));
        assert_eq!(d.ipaddr.as_deref(), Some("192.168.1.1"));
        assert_eq!(d.device.as_deref(), Some("ens1"));
        assert_eq!(d.tags.len(), 2);
        assert!(mg.conf.network_devices.contains_key("ib0"));
        assert_eq!(row(&mg, "NetDevs[default].Netmask"), rv("p1", "255.255.255.0"));
        assert_eq!(row(&mg, "NetDevs[default].Ipaddr"), rv("--", "192.168.1.1"));
        assert_eq!(row(&mg, "NetDevs[default].Device"), rv("SUPERSEDED", "ens1"));
        assert_eq!(row(&mg, "NetDevs[default].Tags[p1]"), rv("p1", "x"));
        assert_eq!(row(&mg, "NetDevs[default].Tags[n1]"), rv("--", "y"));
        assert_eq!(row(&mg, "NetDevs[ib0].Type"), rv("p2", "infiniband"));
        // Primary defaults to the first device, without producing a row.
        assert_eq!(mg.primary_netdev(), Some("default"));
        assert_eq!(row(&mg, "PrimaryNetDev"), None);
    }

    #[test]
    fn empty_network_device_produces_no_rows() {
        let mg = m(
            "nodes:\n  wwnode1:\n    network devices:\n      default: {}\n",
            "wwnode1",
        );
        assert!(mg.field_rows().is_empty());
        assert!(mg.conf.network_devices.contains_key("default"));
    }

    #[test]
    fn node_only_fields_ignored_in_profiles() {
        let y = "nodeprofiles:\n  p:\n    asset key: nope\n    discoverable: true\nnodes:\n  n1:\n    profiles: [p]\n";
        let mg = m(y, "n1");
        assert_eq!(mg.conf.asset_key, None);
        assert_eq!(mg.conf.discoverable, None);
    }

    #[test]
    fn resources_append_and_merge() {
        let y = "nodeprofiles:\n  p1:\n    resources:\n      fstab:\n        - spec: warewulf:/home\n          file: /home\n          vfstype: nfs\n      cfg:\n        a: 1\n        b: {x: 1}\nnodes:\n  n1:\n    profiles: [p1]\n    resources:\n      fstab:\n        - spec: warewulf:/opt\n          file: /opt\n          vfstype: nfs\n      cfg:\n        b: {y: 2}\n";
        let mg = m(y, "n1");
        assert_eq!(
            row(&mg, "Resources[fstab]"),
            rv(
                "p1,n1",
                r#"[{"file":"/home","spec":"warewulf:/home","vfstype":"nfs"},{"file":"/opt","spec":"warewulf:/opt","vfstype":"nfs"}]"#
            )
        );
        assert_eq!(
            row(&mg, "Resources[cfg]"),
            rv("SUPERSEDED", r#"{"a":1,"b":{"x":1,"y":2}}"#)
        );
    }

    #[test]
    fn unknown_profile_is_an_error() {
        let conf = parse_nodes_conf("nodes:\n  n1:\n    profiles: [gpu]\n").unwrap();
        let e = merge("n1", &conf.nodes["n1"], &conf.nodeprofiles).unwrap_err();
        assert_eq!(
            e.to_string(),
            "node \"n1\" uses profile \"gpu\", which does not exist; create the profile or remove it from the node's profile list"
        );
        let conf =
            parse_nodes_conf("nodeprofiles:\n  a:\n    profiles: [b]\nnodes:\n  n1:\n    profiles: [a]\n").unwrap();
        let e = merge_effective("n1", &conf.nodes["n1"], &conf.nodeprofiles).unwrap_err();
        assert!(e.to_string().starts_with("profile \"a\" uses profile \"b\""), "{e}");
    }

    #[test]
    fn effective_equals_tracked() {
        let conf = parse_nodes_conf(include_str!("testdata/nodes.conf")).unwrap();
        for (name, n) in &conf.nodes {
            let a = merge(name, n, &conf.nodeprofiles).unwrap();
            let b = merge_effective(name, n, &conf.nodeprofiles).unwrap();
            assert_eq!(a.conf, b);
        }
    }

    /// Format rows like `wwctl node list -a` (tabwriter, two spaces of padding).
    fn table(rows: &[[String; 4]]) -> String {
        let mut widths = [0usize; 4];
        for r in rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in rows {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                line.push_str(c);
                if i < 3 {
                    line.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    #[test]
    fn golden_field_rows() {
        let conf = parse_nodes_conf(include_str!("testdata/nodes.conf")).unwrap();
        let header = ["NODE", "FIELD", "PROFILE", "VALUE"];
        let mut rows = vec![header.map(String::from), header.map(|h| "-".repeat(h.len()))];
        for name in ["n0001", "n0002", "n0003"] {
            let mg = merge(name, &conf.nodes[name], &conf.nodeprofiles).unwrap();
            for r in mg.field_rows() {
                rows.push([name.to_owned(), r.field, r.origin, r.value]);
            }
        }
        let text = table(&rows);
        let golden = include_str!("testdata/field_rows.golden");
        if text != golden {
            // Print the actual output so a deliberate change can be pasted into the file.
            eprintln!("----- actual field rows -----\n{text}-----");
        }
        assert_eq!(text, golden);
    }

    #[test]
    fn profile_rows_list_every_field() {
        let conf = parse_nodes_conf("nodeprofiles:\n  p:\n    comment: c\n    kernel:\n      args: [quiet]\n    network devices:\n      default:\n        device: eth0\n").unwrap();
        let rows = profile_field_rows(&conf.nodeprofiles["p"]);
        let fields: Vec<&str> = rows.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(&fields[..4], ["Profiles", "Comment", "ClusterName", "ImageName"]);
        assert!(fields.contains(&"Kernel.Version"));
        assert!(!fields.iter().any(|f| f.starts_with("Ipmi.")));
        assert!(!fields.contains(&"Discoverable"));
        assert_eq!(fields.iter().filter(|f| f.starts_with("NetDevs[default].")).count(), 11);
        assert_eq!(
            rows[1],
            FieldRow {
                field: "Comment".into(),
                origin: "--".into(),
                value: "c".into()
            }
        );
        assert_eq!(rows[0].value, "--");
        assert!(rows.iter().all(|r| r.origin == "--"));
        assert_eq!(profile_field_rows(&NodeConf::default()).len(), 10);
    }

    #[test]
    fn merge_is_cheap() {
        // Sanity check (not a timing assertion): 2,000 realistic merges with origins.
        let conf = parse_nodes_conf(include_str!("testdata/nodes.conf")).unwrap();
        let n = &conf.nodes["n0002"];
        let start = std::time::Instant::now();
        for i in 0..2000 {
            let mg = merge(&format!("n{i}"), n, &conf.nodeprofiles).unwrap();
            assert!(!mg.conf.system_overlay.is_empty());
        }
        let per = start.elapsed() / 2000;
        eprintln!("merge with origins: {per:?} per node");
    }
}
