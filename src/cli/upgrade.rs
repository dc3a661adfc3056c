//! `wwctl upgrade nodes|config`: Warewulf 4.2–4.7 files into today's forms.
//!
//! `nodes`: a `nodes.conf` of any Warewulf 4 shape becomes the `nodes.conf` wulfpack
//! reads and writes (Warewulf 4.7's). Old keys are converted (`container name` → `image
//! name`, `kernel args` string → `kernel: args:` list, `kernel override` → `kernel:
//! version`, flat `ipmi *` keys → `ipmi:`, `keys` → `tags`, `tagsdel` applied, netdev
//! `default`/`primary` → `primary network`, `ipcidr` → `ipaddr` + `netmask`, overlay
//! strings → lists); what has no counterpart (`WW_INTERNAL`, `disabled`, netdev `prefix`,
//! an `asset key` on a profile, unknown keys) is dropped. Every conversion and drop is
//! reported, so nothing is lost silently. The result is then read by the same strict
//! parser as `node import`, so what is written is known to load.
//!
//! `config`: a `warewulf.conf` becomes a `wulfd.yaml` for the head (the boot network as
//! a DHCP subnet with its pool, TFTP root and iPXE table, HTTP port, secure mode), whose
//! `boot.overlays.warewulf_conf` names the original file so overlay templates keep
//! reading its NFS/SSH/... settings as they are. What has no counterpart in a head's
//! settings is reported.
//!
//! Both write `-` to stdout (the report then goes to stderr); a file that exists is kept
//! as `<file>-old` first, as Warewulf does.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use serde_yaml_ng::{Mapping, Value};

#[derive(Subcommand, Debug)]
pub enum UpgradeCmd {
    /// Upgrade a nodes.conf of Warewulf 4.2–4.7 to the current format.
    Nodes {
        /// The legacy nodes.conf.
        #[arg(short = 'i', long)]
        input_path: PathBuf,
        /// Where to write the upgraded nodes.conf (`-`: stdout); an existing file is
        /// kept as `<file>-old`.
        #[arg(long)]
        output_path: PathBuf,
        /// Give the `default` profile Warewulf's defaults where it has none (overlays,
        /// kernel args, init, root, iPXE template, IPMI template).
        #[arg(long)]
        add_defaults: bool,
        /// Replace the `wwinit` and `generic` overlays with the overlays they were split
        /// into (Warewulf 4.6).
        #[arg(long)]
        replace_overlays: bool,
        /// A legacy warewulf.conf whose NFS exports marked `mount: true` become `fstab`
        /// entries of the `default` profile (Warewulf 4.6 moved them there).
        #[arg(long)]
        with_warewulfconf: Option<PathBuf>,
    },
    /// Turn a warewulf.conf into a wulfd.yaml for this head, reporting what has no
    /// counterpart.
    Config {
        /// The legacy warewulf.conf.
        #[arg(short = 'i', long)]
        input_path: PathBuf,
        /// Where to write the wulfd.yaml (`-`: stdout); an existing file is kept as
        /// `<file>-old`.
        #[arg(long)]
        output_path: PathBuf,
    },
}

/// One line of the report: where, and what happened there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub at: String,
    pub kind: NoteKind,
    pub what: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// Converted to its current form.
    Converted,
    /// Dropped: no counterpart here.
    Dropped,
    /// Needs the operator (a value that cannot be derived).
    Check,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let k = match self.kind {
            NoteKind::Converted => "converted",
            NoteKind::Dropped => "dropped  ",
            NoteKind::Check => "check    ",
        };
        write!(f, "{k} {}: {}", self.at, self.what)
    }
}

#[derive(Default)]
struct Report(Vec<Note>);

impl Report {
    fn add(&mut self, at: &str, kind: NoteKind, what: impl Into<String>) {
        self.0.push(Note {
            at: at.to_owned(),
            kind,
            what: what.into(),
        });
    }
}

pub fn run(cmd: UpgradeCmd, out: &mut dyn Write) -> Result<()> {
    let (input, output, text, notes) = match cmd {
        UpgradeCmd::Nodes {
            input_path,
            output_path,
            add_defaults,
            replace_overlays,
            with_warewulfconf,
        } => {
            let text = read(&input_path)?;
            let conf = with_warewulfconf.as_deref().map(read).transpose()?;
            let (yaml, notes) = upgrade_nodes_with(&text, add_defaults, replace_overlays, conf.as_deref())
                .with_context(|| format!("upgrading {}", input_path.display()))?;
            (input_path, output_path, yaml, notes)
        }
        UpgradeCmd::Config {
            input_path,
            output_path,
        } => {
            let text = read(&input_path)?;
            let abs = std::path::absolute(&input_path).unwrap_or(input_path.clone());
            let (yaml, notes) = upgrade_config(&text, &abs, &local_interface)
                .with_context(|| format!("upgrading {}", input_path.display()))?;
            (input_path, output_path, yaml, notes)
        }
    };
    if output == Path::new("-") {
        out.write_all(text.as_bytes())?;
        let mut err = std::io::stderr().lock();
        for n in &notes {
            writeln!(err, "{n}")?;
        }
        return Ok(());
    }
    if output.exists() {
        let old = PathBuf::from(format!("{}-old", output.display()));
        std::fs::copy(&output, &old).with_context(|| format!("keeping {} as {}", output.display(), old.display()))?;
        writeln!(out, "Kept the previous {} as {}", output.display(), old.display())?;
    }
    std::fs::write(&output, &text).with_context(|| format!("writing {}", output.display()))?;
    for n in &notes {
        writeln!(out, "{n}")?;
    }
    writeln!(
        out,
        "Wrote {} from {} ({} notes)",
        output.display(),
        input.display(),
        notes.len()
    )?;
    Ok(())
}

fn read(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

const NODE_KEYS: &[&str] = &[
    "discoverable",
    "asset key",
    "profiles",
    "comment",
    "cluster name",
    "image name",
    "ipxe template",
    "runtime overlay",
    "system overlay",
    "kernel",
    "ipmi",
    "init",
    "root",
    "network devices",
    "tags",
    "primary network",
    "disks",
    "filesystems",
    "resources",
];
const KERNEL_KEYS: &[&str] = &["version", "args"];
const IPMI_KEYS: &[&str] = &[
    "username",
    "password",
    "ipaddr",
    "gateway",
    "netmask",
    "port",
    "interface",
    "escapechar",
    "write",
    "template",
    "tags",
];
const NETDEV_KEYS: &[&str] = &[
    "type",
    "onboot",
    "device",
    "hwaddr",
    "ipaddr",
    "netmask",
    "gateway",
    "ipaddr6",
    "prefixlen6",
    "gateway6",
    "mtu",
    "tags",
];
const DISK_KEYS: &[&str] = &["wipe_table", "partitions"];
const PART_KEYS: &[&str] = &[
    "number",
    "size_mib",
    "start_mib",
    "type_guid",
    "guid",
    "wipe_partition_entry",
    "should_exist",
    "resize",
];
const FS_KEYS: &[&str] = &[
    "format",
    "path",
    "wipe_filesystem",
    "label",
    "uuid",
    "options",
    "mount_options",
];

/// The overlays Warewulf 4.6 split `wwinit` and `generic` into.
const WWINIT_SPLIT: &[&str] = &[
    "wwinit",
    "wwclient",
    "fstab",
    "hostname",
    "ssh.host_keys",
    "issue",
    "resolv",
    "udev.netname",
    "systemd.netname",
    "ifcfg",
    "ifupdown",
    "NetworkManager",
    "wicked",
    "ignition",
];
const GENERIC_SPLIT: &[&str] = &["hosts", "ssh.authorized_keys", "syncuser"];

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

/// A scalar as text (YAML may give a number or a bool where Warewulf meant a string).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(t) => Some(t.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn truthy(v: &Value) -> bool {
    text(v).is_some_and(|t| matches!(t.to_ascii_lowercase().as_str(), "true" | "yes" | "1" | "y"))
}

fn map_mut<'a>(m: &'a mut Mapping, key: &str) -> &'a mut Mapping {
    let e = m.entry(s(key)).or_insert_with(|| Value::Mapping(Mapping::new()));
    if !e.is_mapping() {
        *e = Value::Mapping(Mapping::new());
    }
    e.as_mapping_mut().expect("made a mapping")
}

/// Set `key` in `m` unless it is set there already (the nested form wins over the old
/// flat one, as in Warewulf's own upgrade).
fn set_if_unset(m: &mut Mapping, key: &str, v: Value) -> bool {
    match m.get(key) {
        Some(old) if !old.is_null() && old.as_str() != Some("") => false,
        _ => {
            m.insert(s(key), v);
            true
        }
    }
}

/// Drop keys not in `known` (reported), then `tagsdel` applied to `tags`.
fn prune(m: &mut Mapping, known: &[&str], at: &str, r: &mut Report) {
    if let Some(del) = m.remove("tagsdel") {
        let names: Vec<String> = del
            .as_sequence()
            .map(|q| q.iter().filter_map(text).collect())
            .unwrap_or_default();
        if let Some(tags) = m.get_mut("tags").and_then(Value::as_mapping_mut) {
            for n in &names {
                tags.remove(n.as_str());
            }
        }
        r.add(at, NoteKind::Converted, format!("tagsdel {names:?} applied to tags"));
    }
    let unknown: Vec<String> = m
        .keys()
        .filter_map(|k| k.as_str())
        .filter(|k| !known.contains(k))
        .map(str::to_owned)
        .collect();
    for k in unknown {
        let v = m.remove(k.as_str()).unwrap_or(Value::Null);
        let shown = text(&v).map(|t| format!(" = {t:?}")).unwrap_or_default();
        r.add(at, NoteKind::Dropped, format!("`{k}`{shown} has no counterpart"));
    }
}

/// Overlay lists: a comma separated string becomes a list.
fn overlay_list(m: &mut Mapping, key: &str, at: &str, r: &mut Report) {
    if let Some(Value::String(t)) = m.get(key).cloned() {
        let list: Vec<Value> = t.split(',').map(str::trim).filter(|x| !x.is_empty()).map(s).collect();
        m.insert(s(key), Value::Sequence(list));
        r.add(at, NoteKind::Converted, format!("`{key}` string {t:?} → list"));
    }
}

fn upgrade_conf(m: &mut Mapping, profile: bool, at: &str, replace_overlays: bool, r: &mut Report) {
    if let Some(v) = m.remove("container name") {
        if set_if_unset(m, "image name", v) {
            r.add(at, NoteKind::Converted, "`container name` → `image name`");
        } else {
            r.add(at, NoteKind::Dropped, "`container name` (`image name` is set)");
        }
    }
    if profile && m.remove("asset key").is_some() {
        r.add(at, NoteKind::Dropped, "`asset key` is for nodes only");
    }
    if let Some(v) = m.remove("disabled") {
        r.add(
            at,
            NoteKind::Dropped,
            format!("`disabled: {}` is obsolete", text(&v).unwrap_or_default()),
        );
    }
    // Flat kernel keys of Warewulf ≤ 4.4.
    for (old, new) in [
        ("kernel args", "args"),
        ("kernel version", "version"),
        ("kernel override", "override"),
    ] {
        if let Some(v) = m.remove(old) {
            if set_if_unset(map_mut(m, "kernel"), new, v) {
                r.add(at, NoteKind::Converted, format!("`{old}` → `kernel: {new}`"));
            }
        }
    }
    if let Some(k) = m.get_mut("kernel").and_then(Value::as_mapping_mut) {
        let kat = format!("{at}.kernel");
        if let Some(Value::String(a)) = k.get("args").cloned() {
            let list: Vec<Value> = a.split_whitespace().map(s).collect();
            k.insert(s("args"), Value::Sequence(list));
            r.add(&kat, NoteKind::Converted, format!("args string {a:?} → list"));
        }
        // `override` named a kernel (a version or a path in the image) to boot instead
        // of the image's default: today's `version` means the same.
        if let Some(o) = k.remove("override") {
            if set_if_unset(k, "version", o.clone()) {
                r.add(
                    &kat,
                    NoteKind::Converted,
                    format!(
                        "override {:?} → version (check `wwctl image kernels` lists it)",
                        text(&o).unwrap_or_default()
                    ),
                );
            } else {
                r.add(&kat, NoteKind::Dropped, "override (version is set)");
            }
        }
        prune(k, KERNEL_KEYS, &kat, r);
    }
    // Flat IPMI keys of Warewulf ≤ 4.4.
    for f in [
        "escapechar",
        "gateway",
        "interface",
        "ipaddr",
        "netmask",
        "password",
        "port",
        "username",
        "write",
    ] {
        if let Some(v) = m.remove(format!("ipmi {f}").as_str()) {
            if set_if_unset(map_mut(m, "ipmi"), f, v) {
                r.add(at, NoteKind::Converted, format!("`ipmi {f}` → `ipmi: {f}`"));
            }
        }
    }
    if let Some(i) = m.get_mut("ipmi").and_then(Value::as_mapping_mut) {
        prune(i, IPMI_KEYS, &format!("{at}.ipmi"), r);
    }
    if let Some(Value::Mapping(keys)) = m.remove("keys") {
        let tags = map_mut(m, "tags");
        for (k, v) in keys {
            tags.entry(k).or_insert(v);
        }
        r.add(at, NoteKind::Converted, "`keys` → `tags`");
    }
    if m.get("ipxe template").and_then(Value::as_str) == Some("dracut") {
        let tags = map_mut(m, "tags");
        if !tags.contains_key("IPXEMenuEntry") {
            tags.insert(s("IPXEMenuEntry"), s("dracut"));
            m.insert(s("ipxe template"), s("default"));
            r.add(
                at,
                NoteKind::Converted,
                "`ipxe template: dracut` → `default` with tag IPXEMenuEntry=dracut",
            );
        }
    }
    overlay_list(m, "runtime overlay", at, r);
    overlay_list(m, "system overlay", at, r);
    if replace_overlays {
        for (key, old, split) in [
            ("system overlay", "wwinit", WWINIT_SPLIT),
            ("runtime overlay", "generic", GENERIC_SPLIT),
        ] {
            if let Some(list) = m.get_mut(key).and_then(Value::as_sequence_mut) {
                if let Some(pos) = list.iter().position(|v| v.as_str() == Some(old)) {
                    list.splice(pos..=pos, split.iter().map(|x| s(x)));
                    r.add(at, NoteKind::Converted, format!("`{key}`: {old} → {}", split.join(",")));
                }
            }
        }
    }
    let mut primary = None;
    if let Some(nets) = m.get_mut("network devices").and_then(Value::as_mapping_mut) {
        for (name, dev) in nets.iter_mut() {
            let name = text(name).unwrap_or_default();
            let Some(d) = dev.as_mapping_mut() else { continue };
            let nat = format!("{at}.network devices.{name}");
            for flag in ["primary", "default"] {
                if let Some(v) = d.remove(flag) {
                    if truthy(&v) && primary.is_none() {
                        primary = Some(name.clone());
                        r.add(
                            &nat,
                            NoteKind::Converted,
                            format!("`{flag}: true` → `primary network: {name}`"),
                        );
                    }
                }
            }
            if let Some(v) = d.remove("ip6addr") {
                if set_if_unset(d, "ipaddr6", v) {
                    r.add(&nat, NoteKind::Converted, "`ip6addr` → `ipaddr6`");
                }
            }
            if let Some(v) = d.remove("ipcidr") {
                let c = text(&v).unwrap_or_default();
                match c.parse::<ipnet::Ipv4Net>() {
                    Ok(net) => {
                        set_if_unset(d, "ipaddr", s(&net.addr().to_string()));
                        set_if_unset(d, "netmask", s(&net.netmask().to_string()));
                        r.add(&nat, NoteKind::Converted, format!("`ipcidr: {c}` → ipaddr + netmask"));
                    }
                    Err(_) => r.add(&nat, NoteKind::Dropped, format!("`ipcidr: {c}` is not an IPv4 CIDR")),
                }
            }
            prune(d, NETDEV_KEYS, &nat, r);
        }
    }
    if let Some(p) = primary {
        if set_if_unset(m, "primary network", s(&p)) {
            // reported above, with the device
        }
    }
    if let Some(disks) = m.get_mut("disks").and_then(Value::as_mapping_mut) {
        for (name, disk) in disks.iter_mut() {
            let dat = format!("{at}.disks.{}", text(name).unwrap_or_default());
            let Some(d) = disk.as_mapping_mut() else { continue };
            if let Some(parts) = d.get_mut("partitions").and_then(Value::as_mapping_mut) {
                for (pn, part) in parts.iter_mut() {
                    if let Some(p) = part.as_mapping_mut() {
                        prune(
                            p,
                            PART_KEYS,
                            &format!("{dat}.partitions.{}", text(pn).unwrap_or_default()),
                            r,
                        );
                    }
                }
            }
            prune(d, DISK_KEYS, &dat, r);
        }
    }
    if let Some(fss) = m.get_mut("filesystems").and_then(Value::as_mapping_mut) {
        for (name, fs) in fss.iter_mut() {
            if let Some(f) = fs.as_mapping_mut() {
                prune(
                    f,
                    FS_KEYS,
                    &format!("{at}.filesystems.{}", text(name).unwrap_or_default()),
                    r,
                );
            }
        }
    }
    prune(m, NODE_KEYS, at, r);
}

/// Warewulf's `--add-defaults` for the `default` profile: only what it lacks. The
/// overlays are the lists Warewulf's upgrade splits `wwinit` and `generic` into (not
/// quite the shipped profile's: no `hosts` among the system overlays, `syncuser` among
/// the runtime ones); every other value is the shipped profile's
/// ([`crate::model::default_profile`]), so the two cannot drift apart.
fn add_defaults(p: &mut Mapping, r: &mut Report) {
    let at = "nodeprofiles.default";
    let list = |v: &[&str]| Value::Sequence(v.iter().map(|x| s(x)).collect());
    let shipped = serde_yaml_ng::to_value(crate::model::default_profile()).expect("a profile serializes");
    let from_shipped = |path: &[&str]| -> Value {
        path.iter()
            .try_fold(&shipped, |v, k| v.get(*k))
            .cloned()
            .unwrap_or_else(|| panic!("the shipped default profile has {path:?}"))
    };
    let is_empty = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::Sequence(q)) => q.is_empty(),
        Some(Value::String(t)) => t.is_empty(),
        _ => false,
    };
    let mut set = |p: &mut Mapping, k: &str, v: Value, what: &str| {
        if is_empty(p.get(k)) {
            p.insert(s(k), v);
            r.add(at, NoteKind::Converted, format!("default `{what}` added"));
        }
    };
    set(p, "system overlay", list(WWINIT_SPLIT), "system overlay");
    set(p, "runtime overlay", list(GENERIC_SPLIT), "runtime overlay");
    for k in ["init", "root", "ipxe template"] {
        set(p, k, from_shipped(&[k]), k);
    }
    set(
        map_mut(p, "kernel"),
        "args",
        from_shipped(&["kernel", "args"]),
        "kernel: args",
    );
    let ipmi = map_mut(p, "ipmi");
    if ipmi.get("template").is_none() {
        set(ipmi, "template", from_shipped(&["ipmi", "template"]), "ipmi: template");
    }
    let resources = map_mut(p, "resources");
    if resources.get("fstab").is_none() {
        set(
            resources,
            "fstab",
            from_shipped(&["resources", "fstab"]),
            "resources: fstab",
        );
    }
}

/// Upgrade a legacy `nodes.conf`: the new text and the report.
pub fn upgrade_nodes(text_in: &str, defaults: bool, replace_overlays: bool) -> Result<(String, Vec<Note>)> {
    upgrade_nodes_with(text_in, defaults, replace_overlays, None)
}

/// The NFS mounts of a legacy `warewulf.conf` as `fstab` resource entries: `exports`
/// (4.2: every export mounted) and `export paths` with `mount: true`.
fn nfs_fstab(conf: &str) -> Result<Vec<Value>> {
    let doc: Value = serde_yaml_ng::from_str(conf).context("the warewulf.conf is not YAML")?;
    let mut out = Vec::new();
    let entry = |path: &str, opts: Option<String>| {
        let mut m = Mapping::new();
        m.insert(s("spec"), s(&format!("warewulf:{path}")));
        m.insert(s("file"), s(path));
        m.insert(s("vfstype"), s("nfs"));
        if let Some(o) = opts.filter(|o| !o.is_empty()) {
            m.insert(s("mntops"), s(&o));
        }
        Value::Mapping(m)
    };
    let Some(nfs) = doc.get("nfs") else { return Ok(out) };
    for e in nfs.get("exports").and_then(Value::as_sequence).into_iter().flatten() {
        if let Some(p) = text(e) {
            out.push(entry(&p, None));
        }
    }
    for e in nfs
        .get("export paths")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        if e.get("mount").is_some_and(truthy) {
            if let Some(p) = e.get("path").and_then(text) {
                out.push(entry(&p, e.get("mount options").and_then(text)));
            }
        }
    }
    Ok(out)
}

/// [`upgrade_nodes`], with the NFS mounts of a legacy `warewulf.conf`.
pub fn upgrade_nodes_with(
    text_in: &str,
    defaults: bool,
    replace_overlays: bool,
    warewulf_conf: Option<&str>,
) -> Result<(String, Vec<Note>)> {
    let doc: Value = serde_yaml_ng::from_str(text_in).context("the file is not YAML")?;
    let mut top = match doc {
        Value::Mapping(m) => m,
        Value::Null => Mapping::new(),
        _ => bail!("a nodes.conf is a mapping with `nodeprofiles:` and `nodes:`"),
    };
    let mut r = Report::default();
    for (section, profile) in [("nodeprofiles", true), ("nodes", false)] {
        if let Some(objs) = top.get_mut(section).and_then(Value::as_mapping_mut) {
            for (name, body) in objs.iter_mut() {
                let at = format!("{section}.{}", text(name).unwrap_or_default());
                if body.is_null() {
                    *body = Value::Mapping(Mapping::new());
                }
                let Some(m) = body.as_mapping_mut() else {
                    bail!("{at} is not a mapping");
                };
                upgrade_conf(m, profile, &at, replace_overlays, &mut r);
            }
        }
    }
    if let Some(conf) = warewulf_conf {
        let fstab = nfs_fstab(conf)?;
        if !fstab.is_empty() {
            let n = fstab.len();
            let profiles = map_mut(&mut top, "nodeprofiles");
            let resources = map_mut(map_mut(profiles, "default"), "resources");
            match resources.get_mut("fstab") {
                None => {
                    resources.insert(s("fstab"), Value::Sequence(fstab));
                }
                Some(Value::Sequence(q)) => q.extend(fstab),
                Some(_) => r.add(
                    "nodeprofiles.default.resources.fstab",
                    NoteKind::Check,
                    "is not a list: the NFS mounts of warewulf.conf were not added",
                ),
            }
            r.add(
                "nodeprofiles.default.resources.fstab",
                NoteKind::Converted,
                format!("{n} NFS mount(s) from warewulf.conf"),
            );
        }
    }
    if defaults {
        let profiles = map_mut(&mut top, "nodeprofiles");
        add_defaults(map_mut(profiles, "default"), &mut r);
        if let Some(nodes) = top.get("nodes").and_then(Value::as_mapping) {
            for (name, body) in nodes {
                let has = body
                    .get("profiles")
                    .and_then(Value::as_sequence)
                    .is_some_and(|q| q.iter().any(|p| p.as_str() == Some("default")));
                if !has {
                    r.add(
                        &format!("nodes.{}", text(name).unwrap_or_default()),
                        NoteKind::Check,
                        "does not use the `default` profile: check its settings by hand",
                    );
                }
            }
        }
    }
    prune(&mut top, &["nodeprofiles", "nodes"], "(top)", &mut r);
    let yaml = serde_yaml_ng::to_string(&top)?;
    // Read back by the strict parser: what is written is known to load.
    let conf = crate::model::parse_nodes_conf(&yaml).context("the upgraded nodes.conf does not load")?;
    Ok((crate::model::to_nodes_conf_yaml(&conf)?, r.0))
}

/// The interface of this machine that has `addr` (the upgrade runs on the Warewulf
/// server, whose `ipaddr` is on its boot network's interface).
fn local_interface(addr: std::net::Ipv4Addr) -> Option<String> {
    if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .find(|i| i.ip() == std::net::IpAddr::V4(addr))
        .map(|i| i.name)
}

/// What `boot.dhcp.interfaces` names when no interface of this machine has `ipaddr`:
/// a valid name that exists nowhere, so wulfd refuses to start DHCP until it is fixed.
pub const PLACEHOLDER_INTERFACE: &str = "CHANGE-ME";

/// Upgrade a `warewulf.conf` into a head's `wulfd.yaml`: the new text and the report.
/// `source` is the file's absolute path (templates keep reading it); `iface` finds the
/// local interface that has an address.
pub fn upgrade_config(
    text_in: &str,
    source: &Path,
    iface: &dyn Fn(std::net::Ipv4Addr) -> Option<String>,
) -> Result<(String, Vec<Note>)> {
    use crate::boot::dhcp::config::{DhcpConfigWire, PoolWire, SubnetWire};
    let doc: Value = serde_yaml_ng::from_str(text_in).context("the file is not YAML")?;
    let Value::Mapping(mut top) = doc else {
        bail!("a warewulf.conf is a YAML mapping");
    };
    let mut r = Report::default();
    let take = |m: &mut Mapping, k: &str| m.remove(k).filter(|v| !v.is_null());
    let ipaddr = take(&mut top, "ipaddr").and_then(|v| text(&v));
    let netmask = take(&mut top, "netmask").and_then(|v| text(&v));
    let network = take(&mut top, "network").and_then(|v| text(&v));
    let mut ww = match take(&mut top, "warewulf") {
        Some(Value::Mapping(m)) => m,
        _ => Mapping::new(),
    };
    let mut dhcp = match take(&mut top, "dhcp") {
        Some(Value::Mapping(m)) => m,
        _ => Mapping::new(),
    };
    let mut tftp_in = match take(&mut top, "tftp") {
        Some(Value::Mapping(m)) => m,
        _ => Mapping::new(),
    };
    let port: u16 = take(&mut ww, "port")
        .and_then(|v| text(&v))
        .and_then(|t| t.parse().ok())
        .unwrap_or(9873);
    let secure = take(&mut ww, "secure").map(|v| truthy(&v)).unwrap_or(true);

    let server: Option<std::net::Ipv4Addr> = ipaddr.as_deref().and_then(|a| a.parse().ok());
    let mut dhcp_wire = DhcpConfigWire {
        http_port: Some(port),
        ..Default::default()
    };
    match (server, &netmask) {
        (Some(server), Some(mask)) => {
            let mask: std::net::Ipv4Addr = mask.parse().with_context(|| format!("netmask {mask:?}"))?;
            let prefix = u32::from(mask).leading_ones() as u8;
            let net = ipnet::Ipv4Net::new(server, prefix)
                .with_context(|| format!("netmask {mask}"))?
                .trunc();
            if let Some(n) = &network {
                if n.parse::<std::net::Ipv4Addr>().ok() != Some(net.network()) {
                    r.add(
                        "network",
                        NoteKind::Check,
                        format!("{n} differs from ipaddr/netmask's {net}; used {net}"),
                    );
                }
            }
            let start = take(&mut dhcp, "range start").and_then(|v| text(&v));
            let end = take(&mut dhcp, "range end").and_then(|v| text(&v));
            let pool = match (start, end) {
                (Some(a), Some(b)) => Some(PoolWire {
                    start: a.parse().with_context(|| format!("dhcp range start {a:?}"))?,
                    end: b.parse().with_context(|| format!("dhcp range end {b:?}"))?,
                }),
                _ => None,
            };
            dhcp_wire.subnets.insert(
                "warewulf".into(),
                SubnetWire {
                    network: net.to_string(),
                    server,
                    router: None,
                    dns: Vec::new(),
                    domain: None,
                    lease_time: None,
                    pool,
                    relayed: false,
                    http_base: None,
                },
            );
            r.add(
                "ipaddr, netmask, dhcp range",
                NoteKind::Converted,
                format!("boot.dhcp.subnets.warewulf ({net})"),
            );
        }
        _ => r.add(
            "ipaddr, netmask",
            NoteKind::Check,
            "missing or not IPv4: no DHCP subnet written; add boot.dhcp.subnets",
        ),
    }
    let dhcp_on = take(&mut dhcp, "enabled").map(|v| truthy(&v)).unwrap_or(true);
    if !dhcp_on {
        // A subnet on no interface is refused; DHCP off means no interface at all.
        dhcp_wire.subnets.clear();
        r.add(
            "dhcp.enabled",
            NoteKind::Converted,
            "false: boot.dhcp.interfaces left empty (DHCP off)",
        );
    } else if let Some(server) = server.filter(|_| !dhcp_wire.subnets.is_empty()) {
        let name = match iface(server) {
            Some(n) => {
                r.add(
                    "dhcp",
                    NoteKind::Converted,
                    format!("served on {n} (the interface with {server})"),
                );
                n
            }
            None => {
                r.add(
                    "dhcp",
                    NoteKind::Check,
                    format!("no interface here has {server}: boot.dhcp.interfaces names {PLACEHOLDER_INTERFACE}; put the boot network's interface there"),
                );
                PLACEHOLDER_INTERFACE.to_owned()
            }
        };
        dhcp_wire.interfaces.push(crate::boot::dhcp::config::InterfaceWire {
            name,
            subnets: vec!["warewulf".into()],
        });
    }
    if let Some(Value::Mapping(ipxe)) = take(&mut tftp_in, "ipxe") {
        let mut table = BTreeMap::new();
        for (k, v) in ipxe {
            let (Some(k), Some(v)) = (text(&k), text(&v)) else {
                continue;
            };
            let key: crate::boot::dhcp::config::ArchKey =
                serde_yaml_ng::from_value(Value::String(k.clone())).with_context(|| format!("tftp ipxe key {k:?}"))?;
            table.insert(key, v);
        }
        r.add("tftp.ipxe", NoteKind::Converted, "boot.dhcp.ipxe");
        dhcp_wire.ipxe = Some(table);
    }
    let mut tftp = crate::boot::tftp::TftpConfig {
        enabled: take(&mut tftp_in, "enabled").map(|v| truthy(&v)).unwrap_or(true),
        ..Default::default()
    };
    if let Some(root) = take(&mut tftp_in, "tftproot").and_then(|v| text(&v)) {
        r.add(
            "tftp.tftproot",
            NoteKind::Check,
            format!("{root} → boot.tftp.root: wulfd serves the iPXE binaries from it; check they are there (`wwctl configure tftp`)"),
        );
        tftp.root = root.into();
    }
    if let Some(a) = server {
        tftp.listen = crate::boot::tftp::Listen::One(format!("{a}:69"));
    }
    // `..Default::default()`: a boot section added later keeps its default here.
    #[allow(clippy::needless_update)]
    let boot = crate::daemon::config::BootConfig {
        dhcp: dhcp_wire,
        tftp,
        http: crate::boot::http::BootHttpConfig {
            secure,
            ..Default::default()
        },
        overlays: crate::daemon::config::OverlaysConfig {
            warewulf_conf: Some(source.to_path_buf()),
            ..Default::default()
        },
        ..Default::default()
    };
    r.add(
        "nfs, ssh, fqdn, warewulf.autobuild overlays|host overlay|datastore",
        NoteKind::Converted,
        format!(
            "read by overlay templates from {} (boot.overlays.warewulf_conf)",
            source.display()
        ),
    );
    let advertise = server
        .map(|a| format!("{a}:9701"))
        .unwrap_or_else(|| "127.0.0.1:9701".into());
    // Built as YAML and read back as a `HeadConfig`: serde fills in every other key's
    // default, and the file written is known to parse.
    let mut head = Mapping::new();
    head.insert(s("id"), Value::from(1));
    head.insert(s("data_dir"), s("/var/lib/wulfpack"));
    // gRPC on the advertised address, HTTP on this head's own addresses (Warewulf's
    // warewulfd listens on every interface; docs/COMPATIBILITY.md).
    head.insert(s("advertise"), s(&advertise));
    head.insert(s("http_listen"), s(&format!(":{port}")));
    let mut member = Mapping::new();
    member.insert(s("id"), Value::from(1));
    member.insert(s("addr"), s(&advertise));
    head.insert(s("bootstrap"), Value::Sequence(vec![Value::Mapping(member)]));
    head.insert(s("boot"), serde_yaml_ng::to_value(&boot)?);
    // Warewulf's bind mounts of `image exec|shell` (`image mounts`, `container mounts`
    // before 4.6) are `images.mounts`.
    for key in ["image mounts", "container mounts"] {
        let Some(v) = take(&mut top, key) else { continue };
        if head.contains_key("images") {
            r.add(key, NoteKind::Dropped, "ignored: `image mounts` is converted instead");
            continue;
        }
        let mounts = image_mounts(&v).with_context(|| format!("{key}: a list of {{source, dest, readonly, copy}}"))?;
        if mounts.is_empty() {
            r.add(
                key,
                NoteKind::Check,
                "an empty list: wulfd's default (the head's /etc/resolv.conf) applies",
            );
            continue;
        }
        r.add(
            key,
            NoteKind::Converted,
            format!("images.mounts ({} mount(s))", mounts.len()),
        );
        let images = crate::daemon::config::ImagesConfig { mounts };
        head.insert(s("images"), serde_yaml_ng::to_value(&images)?);
    }
    let cfg: crate::daemon::HeadConfig = serde_yaml_ng::from_value(Value::Mapping(head))?;
    r.add(
        "id, bootstrap",
        NoteKind::Check,
        "a single founding head (id 1); for more heads give each its id and list all in bootstrap",
    );
    // The rest: kept by the overlays' reading of the original file where templates use
    // it, otherwise without a counterpart in a head's settings.
    let templates_read = ["nfs", "ssh", "fqdn"];
    for (k, v) in top {
        let k = text(&k).unwrap_or_default();
        if templates_read.contains(&k.as_str()) {
            continue;
        }
        let shown = text(&v).map(|t| format!(" = {t:?}")).unwrap_or_default();
        r.add(&k, NoteKind::Dropped, format!("no counterpart in wulfd.yaml{shown}"));
    }
    for (section, rest) in [("warewulf", ww), ("dhcp", dhcp), ("tftp", tftp_in)] {
        for (k, v) in rest {
            let k = text(&k).unwrap_or_default();
            // Templates read these from the original file.
            if section == "warewulf" && matches!(k.as_str(), "autobuild overlays" | "host overlay" | "datastore") {
                continue;
            }
            let shown = text(&v).map(|t| format!(" = {t:?}")).unwrap_or_default();
            r.add(
                &format!("{section}.{k}"),
                NoteKind::Dropped,
                format!("no counterpart in wulfd.yaml{shown}"),
            );
        }
    }
    // Unset keys (null, empty lists) are left out: the defaults apply, as in a file
    // written by hand.
    let mut v = serde_yaml_ng::to_value(&cfg)?;
    drop_unset(&mut v);
    let yaml = serde_yaml_ng::to_string(&v)?;
    let header = format!(
        "# wulfd.yaml written by `wwctl upgrade config` from {}.\n# Check the notes it printed; every key is explained in cluster/examples/wulfd.yaml.\n",
        source.display()
    );
    Ok((header + &yaml, r.0))
}

/// Warewulf `MountEntry`s (`source`, `dest`, `readonly`, `copy`; `options` is ignored by
/// Warewulf too).
fn image_mounts(v: &Value) -> Result<Vec<crate::daemon::config::ImageMount>> {
    let Value::Sequence(list) = v else {
        bail!("not a list");
    };
    let flag = |e: &Value, k: &str| e.get(k).and_then(Value::as_bool).unwrap_or(false);
    list.iter()
        .map(|e| {
            let source = e
                .get("source")
                .and_then(text)
                .ok_or_else(|| anyhow!("an entry without source"))?;
            Ok(crate::daemon::config::ImageMount {
                source: source.into(),
                dest: e.get("dest").and_then(text).map(Into::into),
                readonly: flag(e, "readonly"),
                copy: flag(e, "copy"),
            })
        })
        .collect()
}

/// Remove null values and empty lists from every mapping.
fn drop_unset(v: &mut Value) {
    match v {
        Value::Mapping(m) => {
            m.retain(|_, x| !(x.is_null() || x.as_sequence().is_some_and(|q| q.is_empty())));
            m.iter_mut().for_each(|(_, x)| drop_unset(x));
        }
        Value::Sequence(q) => q.iter_mut().for_each(drop_unset),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(notes: &[Note], kind: NoteKind, at: &str, what: &str) -> bool {
        notes
            .iter()
            .any(|n| n.kind == kind && n.at == at && n.what.contains(what))
    }

    /// Warewulf 4.2/4.3: flat kernel and IPMI keys, `container name`, `keys`, netdev
    /// `default`, a string overlay list, `disabled`.
    #[test]
    fn warewulf_4_2_shape() {
        let old = "WW_INTERNAL: 43\nnodeprofiles:\n  default:\n    comment: This profile is automatically included for each node\n    container name: rocky-8\n    kernel version: 4.18.0-305\n    kernel args: quiet crashkernel=no vga=791\n    ipmi username: admin\n    ipmi password: secret\n    ipmi netmask: 255.255.255.0\n    system overlay: wwinit\n    runtime overlay: generic\n    disabled: false\nnodes:\n  n0000:\n    profiles:\n    - default\n    ipmi ipaddr: 192.168.1.100\n    keys:\n      rack: a1\n    network devices:\n      eth0:\n        default: true\n        hwaddr: 00:11:22:33:44:55\n        ipaddr: 10.0.0.1\n        netmask: 255.255.252.0\n        prefix: 22\n";
        let (yaml, notes) = upgrade_nodes(old, false, false).unwrap();
        let conf = crate::model::parse_nodes_conf(&yaml).unwrap();
        let d = &conf.nodeprofiles["default"];
        assert_eq!(d.image_name.as_deref(), Some("rocky-8"));
        let k = d.kernel.as_ref().unwrap();
        assert_eq!(k.version.as_deref(), Some("4.18.0-305"));
        assert_eq!(k.args, ["quiet", "crashkernel=no", "vga=791"]);
        let i = d.ipmi.as_ref().unwrap();
        assert_eq!(
            (i.username.as_deref(), i.password.as_deref(), i.netmask.as_deref()),
            (Some("admin"), Some("secret"), Some("255.255.255.0"))
        );
        assert_eq!(d.system_overlay, ["wwinit"]);
        let n = &conf.nodes["n0000"];
        assert_eq!(n.ipmi.as_ref().unwrap().ipaddr.as_deref(), Some("192.168.1.100"));
        assert_eq!(n.tags["rack"], "a1");
        assert_eq!(n.primary_network.as_deref(), Some("eth0"));
        let e = &n.network_devices["eth0"];
        assert_eq!(e.hwaddr.as_deref(), Some("00:11:22:33:44:55"));
        assert!(has(&notes, NoteKind::Dropped, "(top)", "WW_INTERNAL"));
        assert!(has(&notes, NoteKind::Dropped, "nodeprofiles.default", "disabled"));
        assert!(has(
            &notes,
            NoteKind::Dropped,
            "nodes.n0000.network devices.eth0",
            "prefix"
        ));
        assert!(has(
            &notes,
            NoteKind::Converted,
            "nodeprofiles.default",
            "`container name` → `image name`"
        ));
    }

    /// Warewulf 4.4/4.5: nested kernel with `override` and a string `args`, nested
    /// IPMI, `primary` netdev flag, `ipcidr`, `tagsdel`, `ipxe template: dracut`.
    #[test]
    fn warewulf_4_4_shape() {
        let old = "WW_INTERNAL: 45\nnodeprofiles:\n  default:\n    container name: rocky-9\n    ipxe template: dracut\n    kernel:\n      override: 5.14.0-362.el9.x86_64\n      args: quiet crashkernel=no\n    ipmi:\n      username: root\n      write: \"true\"\nnodes:\n  n1:\n    profiles: [default]\n    tags: {a: \"1\", b: \"2\"}\n    tagsdel: [b]\n    network devices:\n      ib0:\n        type: infiniband\n        ipcidr: 10.1.0.5/16\n      eth0:\n        primary: \"true\"\n        ipaddr: 10.0.0.5\n        ip6addr: fd00::5\n";
        let (yaml, notes) = upgrade_nodes(old, false, false).unwrap();
        let conf = crate::model::parse_nodes_conf(&yaml).unwrap();
        let d = &conf.nodeprofiles["default"];
        assert_eq!(
            d.kernel.as_ref().unwrap().version.as_deref(),
            Some("5.14.0-362.el9.x86_64")
        );
        assert_eq!(d.kernel.as_ref().unwrap().args, ["quiet", "crashkernel=no"]);
        assert_eq!(d.ipxe_template.as_deref(), Some("default"));
        assert_eq!(d.tags["IPXEMenuEntry"], "dracut");
        assert_eq!(d.ipmi.as_ref().unwrap().write, Some(true));
        let n = &conf.nodes["n1"];
        assert_eq!(n.tags.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(n.primary_network.as_deref(), Some("eth0"));
        let ib = &n.network_devices["ib0"];
        assert_eq!(
            (ib.ipaddr.as_deref(), ib.netmask.as_deref()),
            (Some("10.1.0.5"), Some("255.255.0.0"))
        );
        assert_eq!(n.network_devices["eth0"].ipaddr6.as_deref(), Some("fd00::5"));
        assert!(has(
            &notes,
            NoteKind::Converted,
            "nodeprofiles.default.kernel",
            "override"
        ));
    }

    /// Warewulf 4.6/4.7: already current; nothing converted, nothing dropped, the
    /// content unchanged (`--replace-overlays` splits wwinit/generic, `--add-defaults`
    /// fills in the default profile).
    #[test]
    fn warewulf_4_6_shape_and_options() {
        let cur = "nodeprofiles:\n  default:\n    image name: rocky-9\n    system overlay: [wwinit, extra]\n    runtime overlay: [generic]\n    kernel:\n      args: [quiet]\nnodes:\n  n1:\n    profiles: [default]\n    primary network: eth0\n    network devices:\n      eth0:\n        ipaddr: 10.0.0.5\n    disks:\n      /dev/vda:\n        wipe_table: true\n        partitions:\n          scratch:\n            number: \"1\"\n    filesystems:\n      /dev/disk/by-partlabel/scratch:\n        format: btrfs\n        path: /scratch\n";
        let (yaml, notes) = upgrade_nodes(cur, false, false).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(
            crate::model::parse_nodes_conf(&yaml).unwrap(),
            crate::model::parse_nodes_conf(cur).unwrap()
        );
        let (yaml, _) = upgrade_nodes(cur, true, true).unwrap();
        let conf = crate::model::parse_nodes_conf(&yaml).unwrap();
        let d = &conf.nodeprofiles["default"];
        assert_eq!(d.system_overlay.len(), WWINIT_SPLIT.len() + 1);
        assert_eq!(d.system_overlay.last().map(String::as_str), Some("extra"));
        assert_eq!(d.runtime_overlay, GENERIC_SPLIT);
        assert_eq!(d.init.as_deref(), Some("/sbin/init"));
        assert_eq!(d.kernel.as_ref().unwrap().args, ["quiet"], "existing args are kept");
    }

    /// `--with-warewulfconf`: NFS exports to mount become `fstab` entries of `default`,
    /// after any it has.
    #[test]
    fn nfs_mounts_from_warewulf_conf() {
        let nodes = "nodeprofiles:\n  default:\n    resources:\n      fstab:\n      - {spec: /dev/sda1, file: /scratch, vfstype: xfs}\n";
        let conf = "nfs:\n  export paths:\n  - {path: /home, mount options: \"defaults,nofail\", mount: true}\n  - {path: /srv, mount: false}\n";
        let (yaml, notes) = upgrade_nodes_with(nodes, false, false, Some(conf)).unwrap();
        let c = crate::model::parse_nodes_conf(&yaml).unwrap();
        let fstab = c.nodeprofiles["default"].resources["fstab"].as_array().unwrap().clone();
        assert_eq!(fstab.len(), 2);
        assert_eq!(fstab[0]["file"], "/scratch");
        assert_eq!(fstab[1]["spec"], "warewulf:/home");
        assert_eq!(fstab[1]["mntops"], "defaults,nofail");
        assert!(has(
            &notes,
            NoteKind::Converted,
            "nodeprofiles.default.resources.fstab",
            "1 NFS mount"
        ));
        // Warewulf 4.2: a plain list of exports, every one mounted.
        let (yaml, _) =
            upgrade_nodes_with("nodes: {}\n", false, false, Some("nfs:\n  exports: [/home, /opt]\n")).unwrap();
        let c = crate::model::parse_nodes_conf(&yaml).unwrap();
        assert_eq!(
            c.nodeprofiles["default"].resources["fstab"].as_array().unwrap().len(),
            2
        );
    }

    #[test]
    fn unknown_keys_are_dropped_and_reported() {
        let old = "nodes:\n  n1:\n    frobnicate: yes\n    kernel: {args: quiet, colour: red}\n";
        let (yaml, notes) = upgrade_nodes(old, false, false).unwrap();
        assert!(!yaml.contains("frobnicate") && !yaml.contains("colour"));
        assert!(has(&notes, NoteKind::Dropped, "nodes.n1", "`frobnicate`"));
        assert!(has(&notes, NoteKind::Dropped, "nodes.n1.kernel", "`colour`"));
        assert!(upgrade_nodes("- a list\n", false, false).is_err());
    }

    #[test]
    fn warewulf_conf_becomes_head_settings() {
        let conf = "WW_INTERNAL: 45\nipaddr: 10.0.0.1\nnetmask: 255.255.252.0\nnetwork: 10.0.0.0\nwarewulf:\n  port: 9983\n  secure: false\n  update interval: 60\n  autobuild overlays: true\n  syslog: false\ndhcp:\n  enabled: true\n  range start: 10.0.1.1\n  range end: 10.0.1.255\n  systemd name: dhcpd\ntftp:\n  enabled: true\n  tftproot: /srv/tftp\n  systemd name: tftp\n  ipxe:\n    \"00:00\": undionly.kpxe\n    \"00:07\": ipxe-snponly-x86_64.efi\nnfs:\n  export paths:\n  - path: /home\napi:\n  enabled: false\n";
        // Settings validation reads the file `boot.overlays.warewulf_conf` names.
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("warewulf.conf");
        std::fs::write(&src, conf).unwrap();
        let (yaml, notes) = upgrade_config(conf, &src, &|_| None).unwrap();
        let cfg: crate::daemon::HeadConfig = serde_yaml_ng::from_str(&yaml).unwrap();
        let s = crate::daemon::Settings::try_from(cfg.clone());
        assert!(s.is_ok(), "{:?}", s.err());
        let sub = &cfg.boot.dhcp.subnets["warewulf"];
        assert_eq!(sub.network, "10.0.0.0/22");
        assert_eq!(sub.server.to_string(), "10.0.0.1");
        assert_eq!(sub.pool.unwrap().end.to_string(), "10.0.1.255");
        assert_eq!(cfg.boot.dhcp.http_port, Some(9983));
        assert_eq!(cfg.http_listen, ":9983");
        assert!(!cfg.boot.http.secure);
        assert_eq!(cfg.boot.tftp.root, Path::new("/srv/tftp"));
        assert_eq!(cfg.boot.dhcp.ipxe.as_ref().unwrap().len(), 2);
        assert_eq!(cfg.boot.overlays.warewulf_conf.as_deref(), Some(src.as_path()));
        for (at, what) in [
            ("WW_INTERNAL", "no counterpart"),
            ("api", "no counterpart"),
            ("warewulf.update interval", "no counterpart"),
            ("warewulf.syslog", "no counterpart"),
            ("dhcp.systemd name", "no counterpart"),
            ("tftp.systemd name", "no counterpart"),
        ] {
            assert!(has(&notes, NoteKind::Dropped, at, what), "{at}: {notes:?}");
        }
        assert!(!notes
            .iter()
            .any(|n| n.at == "nfs" || n.at == "warewulf.autobuild overlays"));
        assert!(has(&notes, NoteKind::Check, "dhcp", PLACEHOLDER_INTERFACE));
        assert_eq!(cfg.boot.dhcp.interfaces[0].name, PLACEHOLDER_INTERFACE);
        // On the Warewulf server itself the interface is found.
        let (yaml, _) = upgrade_config(conf, &src, &|a| {
            (a.to_string() == "10.0.0.1").then(|| "ens3".to_owned())
        })
        .unwrap();
        let cfg: crate::daemon::HeadConfig = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(cfg.boot.dhcp.interfaces[0].name, "ens3");
        assert_eq!(cfg.boot.dhcp.interfaces[0].subnets, ["warewulf"]);
        // DHCP disabled: no interface, no subnet; still a valid file.
        let off = conf.replace("dhcp:\n  enabled: true", "dhcp:\n  enabled: false");
        let (yaml, _) = upgrade_config(&off, &src, &|_| None).unwrap();
        let cfg: crate::daemon::HeadConfig = serde_yaml_ng::from_str(&yaml).unwrap();
        assert!(cfg.boot.dhcp.interfaces.is_empty());
        assert!(crate::daemon::Settings::try_from(cfg).is_ok());
    }
}
