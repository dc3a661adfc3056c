//! Warewulf's node/profile field flags, defined once.
//!
//! Every `--flag` of `wwctl node set|add` and `profile set|add` is a row of
//! [`FIELDS`]: its nodes.conf path and value kind. The same table gives the
//! field names `node unset` accepts, so a new field is one new row. Flags become
//! a [`Patch`] that the state machine applies on the leader, so concurrent `set`s
//! of different fields of one node never overwrite each other.

use clap::{Arg, ArgAction, ArgMatches, Command};
use serde_json::Value;

use crate::model::{NodeConf, Patch, PatchOp};

/// How a flag's text becomes a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueKind {
    Str,
    Bool,
    /// Comma-separated list (flag may repeat); replaces the list.
    List,
    /// `key=value` pairs added to a map.
    TagAdd,
    /// keys removed from a map.
    TagDel,
}

/// Where a field lives: on the object, on the selected network device (`--netname`), on
/// the disk `--diskname`, on its partition `--partname`, or on the filesystem `--fsname`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scope {
    Top,
    NetDev,
    Disk,
    Part,
    Fs,
}

#[derive(Debug, PartialEq)]
pub struct Field {
    pub flag: &'static str,
    pub short: Option<char>,
    pub aliases: &'static [&'static str],
    pub path: &'static [&'static str],
    pub scope: Scope,
    pub kind: ValueKind,
    pub help: &'static str,
}

const fn f(
    flag: &'static str,
    short: Option<char>,
    path: &'static [&'static str],
    scope: Scope,
    kind: ValueKind,
    help: &'static str,
) -> Field {
    Field {
        flag,
        short,
        aliases: &[],
        path,
        scope,
        kind,
        help,
    }
}

use Scope::*;
use ValueKind::*;

/// Warewulf v4.6 flag names.
pub const FIELDS: &[Field] = &[
    f("comment", None, &["comment"], Top, Str, "Set a comment"),
    f(
        "cluster",
        Some('c'),
        &["cluster name"],
        Top,
        Str,
        "Set the cluster group",
    ),
    Field {
        aliases: &["container"],
        ..f(
            "image",
            Some('C'),
            &["image name"],
            Top,
            Str,
            "Set the image (VNFS) name",
        )
    },
    f("ipxe", None, &["ipxe template"], Top, Str, "Set the iPXE template name"),
    f(
        "runtime-overlays",
        Some('R'),
        &["runtime overlay"],
        Top,
        List,
        "Set the runtime overlays (comma separated)",
    ),
    Field {
        aliases: &["wwinit"],
        ..f(
            "system-overlays",
            Some('O'),
            &["system overlay"],
            Top,
            List,
            "Set the system overlays (comma separated)",
        )
    },
    f(
        "kernelversion",
        None,
        &["kernel", "version"],
        Top,
        Str,
        "Pin a kernel version",
    ),
    f(
        "kernelargs",
        Some('A'),
        &["kernel", "args"],
        Top,
        List,
        "Set kernel arguments (comma separated; ~arg removes a profile's)",
    ),
    f(
        "init",
        Some('i'),
        &["init"],
        Top,
        Str,
        "Define the init process to boot",
    ),
    f(
        "root",
        None,
        &["root"],
        Top,
        Str,
        "Define the rootfs (initramfs, tmpfs, ...)",
    ),
    f(
        "asset",
        None,
        &["asset key"],
        Top,
        Str,
        "Set the node's asset tag (key)",
    ),
    f(
        "discoverable",
        Some('e'),
        &["discoverable"],
        Top,
        Bool,
        "Make the node discoverable (true/false)",
    ),
    f(
        "profile",
        Some('P'),
        &["profiles"],
        Top,
        List,
        "Set the profiles (comma separated)",
    ),
    f(
        "primarynet",
        Some('p'),
        &["primary network"],
        Top,
        Str,
        "Set the primary network device name",
    ),
    f(
        "ipmiaddr",
        None,
        &["ipmi", "ipaddr"],
        Top,
        Str,
        "Set the IPMI IP address",
    ),
    f(
        "ipminetmask",
        None,
        &["ipmi", "netmask"],
        Top,
        Str,
        "Set the IPMI netmask",
    ),
    f(
        "ipmigateway",
        None,
        &["ipmi", "gateway"],
        Top,
        Str,
        "Set the IPMI gateway",
    ),
    f("ipmiport", None, &["ipmi", "port"], Top, Str, "Set the IPMI port"),
    f(
        "ipmiuser",
        None,
        &["ipmi", "username"],
        Top,
        Str,
        "Set the IPMI username",
    ),
    f(
        "ipmipass",
        None,
        &["ipmi", "password"],
        Top,
        Str,
        "Set the IPMI password",
    ),
    f(
        "ipmiinterface",
        None,
        &["ipmi", "interface"],
        Top,
        Str,
        "Set the IPMI interface (lan, lanplus)",
    ),
    f(
        "ipmiescapechar",
        None,
        &["ipmi", "escapechar"],
        Top,
        Str,
        "Set the IPMI escape character",
    ),
    f(
        "ipmiwrite",
        None,
        &["ipmi", "write"],
        Top,
        Bool,
        "Write IPMI settings to the BMC at boot (true/false)",
    ),
    f(
        "ipmitemplate",
        None,
        &["ipmi", "template"],
        Top,
        Str,
        "Set the IPMI template",
    ),
    f(
        "ipmitagadd",
        None,
        &["ipmi", "tags"],
        Top,
        TagAdd,
        "Add IPMI tags (key=value, comma separated)",
    ),
    f(
        "ipmitagdel",
        None,
        &["ipmi", "tags"],
        Top,
        TagDel,
        "Delete IPMI tags (keys)",
    ),
    f(
        "tagadd",
        None,
        &["tags"],
        Top,
        TagAdd,
        "Add tags (key=value, comma separated)",
    ),
    f("tagdel", None, &["tags"], Top, TagDel, "Delete tags (keys)"),
    f(
        "type",
        Some('T'),
        &["type"],
        NetDev,
        Str,
        "Set the network device type (ethernet, infiniband)",
    ),
    f(
        "onboot",
        None,
        &["onboot"],
        NetDev,
        Bool,
        "Bring the network device up at boot (true/false)",
    ),
    f(
        "netdev",
        Some('N'),
        &["device"],
        NetDev,
        Str,
        "Set the device name (eth0, ib0)",
    ),
    f(
        "hwaddr",
        Some('H'),
        &["hwaddr"],
        NetDev,
        Str,
        "Set the device's MAC address",
    ),
    f(
        "ipaddr",
        Some('I'),
        &["ipaddr"],
        NetDev,
        Str,
        "Set the device's IPv4 address (auto-increments on `add` of several nodes)",
    ),
    f(
        "netmask",
        Some('M'),
        &["netmask"],
        NetDev,
        Str,
        "Set the device's netmask",
    ),
    f(
        "gateway",
        Some('G'),
        &["gateway"],
        NetDev,
        Str,
        "Set the device's gateway",
    ),
    f(
        "ipaddr6",
        None,
        &["ipaddr6"],
        NetDev,
        Str,
        "Set the device's IPv6 address",
    ),
    f(
        "prefixlen6",
        None,
        &["prefixlen6"],
        NetDev,
        Str,
        "Set the device's IPv6 prefix length",
    ),
    f(
        "gateway6",
        None,
        &["gateway6"],
        NetDev,
        Str,
        "Set the device's IPv6 gateway",
    ),
    f("mtu", None, &["mtu"], NetDev, Str, "Set the device's MTU"),
    f(
        "nettagadd",
        None,
        &["tags"],
        NetDev,
        TagAdd,
        "Add tags to the device (key=value, comma separated)",
    ),
    f(
        "nettagdel",
        None,
        &["tags"],
        NetDev,
        TagDel,
        "Delete tags from the device (keys)",
    ),
    f(
        "netdel",
        None,
        &["network devices"],
        Top,
        TagDel,
        "Delete network devices (names)",
    ),
    f(
        "diskwipe",
        None,
        &["wipe_table"],
        Disk,
        Bool,
        "Wipe the partition table of --diskname (true/false)",
    ),
    f(
        "partnumber",
        None,
        &["number"],
        Part,
        Str,
        "Set the number of partition --partname on --diskname",
    ),
    f(
        "partsize",
        None,
        &["size_mib"],
        Part,
        Str,
        "Set the partition's size in MiB",
    ),
    f(
        "parttype",
        None,
        &["type_guid"],
        Part,
        Str,
        "Set the partition's type GUID",
    ),
    f(
        "partcreate",
        None,
        &["should_exist"],
        Part,
        Bool,
        "Create the partition if it does not exist (true/false)",
    ),
    f(
        "partwipe",
        None,
        &["wipe_partition_entry"],
        Part,
        Bool,
        "Replace a partition that does not match (true/false)",
    ),
    f(
        "fsformat",
        None,
        &["format"],
        Fs,
        Str,
        "Set the format of filesystem --fsname (ext4, btrfs, swap, ...)",
    ),
    f(
        "fspath",
        None,
        &["path"],
        Fs,
        Str,
        "Set the mount point of filesystem --fsname",
    ),
    f(
        "fswipe",
        None,
        &["wipe_filesystem"],
        Fs,
        Bool,
        "Recreate filesystem --fsname at boot (true/false)",
    ),
];

pub const DISKNAME: &str = "diskname";
pub const PARTNAME: &str = "partname";
pub const FSNAME: &str = "fsname";
pub const DISKDEL: &str = "diskdel";
pub const PARTDEL: &str = "partdel";
pub const FSDEL: &str = "fsdel";

/// The entries that scoped fields refer to: `--netname`, `--diskname`, `--partname`, `--fsname`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scopes {
    pub netname: String,
    pub disk: Option<String>,
    pub part: Option<String>,
    pub fs: Option<String>,
}

impl Scopes {
    /// Warewulf's rule: a filesystem is named by its block device; a name that is not a
    /// `/dev` path is only accepted when it is the partition's label (`--fsname=var
    /// --partname=var` is `/dev/disk/by-partlabel/var`).
    pub fn fs_device(&self) -> Result<Option<String>, String> {
        let Some(fs) = &self.fs else { return Ok(None) };
        if fs.starts_with("/dev") {
            return Ok(Some(fs.clone()));
        }
        if self.part.as_deref() == Some(fs.as_str()) {
            return Ok(Some(format!("/dev/disk/by-partlabel/{fs}")));
        }
        Err(format!(
            "--fsname {fs:?}: a filesystem needs a block device; give a /dev path, or the same name as \
             --partname to use /dev/disk/by-partlabel/{fs}"
        ))
    }

    /// The nodes.conf path of `field` under these scopes; an error names the missing scope flag.
    pub fn path(&self, field: &Field) -> Result<Vec<String>, String> {
        let need = |v: &Option<String>, flag: &str| {
            v.clone()
                .ok_or_else(|| format!("--{} needs --{flag} to say which entry it changes", field.flag))
        };
        let mut p: Vec<String> = match field.scope {
            Top => Vec::new(),
            NetDev => vec!["network devices".into(), self.netname.clone()],
            Disk => vec!["disks".into(), need(&self.disk, DISKNAME)?],
            Part => {
                let disk = need(&self.disk, DISKNAME)?;
                let part = need(&self.part, PARTNAME)?;
                vec!["disks".into(), disk, "partitions".into(), part]
            }
            Fs => {
                need(&self.fs, FSNAME)?;
                vec!["filesystems".into(), self.fs_device()?.expect("checked")]
            }
        };
        p.extend(field.path.iter().map(|s| s.to_string()));
        Ok(p)
    }
}

/// The value that clears a field, as in Warewulf.
pub fn is_unset_word(v: &str) -> bool {
    matches!(v, "UNDEF" | "UNSET" | "undef" | "unset")
}

/// Flags whose value is an IP address (or mask).
const IP_FLAGS: &[&str] = &[
    "ipaddr",
    "netmask",
    "gateway",
    "ipaddr6",
    "gateway6",
    "ipmiaddr",
    "ipminetmask",
    "ipmigateway",
];

/// Warewulf keeps addresses as IPs and never stores the unspecified one, so
/// `--ipaddr=0.0.0.0` (or `::`) clears the field like UNDEF does.
fn clears(field: &Field, v: &str) -> bool {
    is_unset_word(v)
        || (IP_FLAGS.contains(&field.flag) && v.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified()))
}

pub const NETNAME: &str = "netname";

/// Field flags parsed from the command line, in table order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldFlags {
    pub scopes: Scopes,
    pub values: Vec<(&'static Field, Vec<String>)>,
    /// `--diskdel`, `--partdel`, `--fsdel`: entries to delete. They must exist, so the
    /// command resolves them against the stored objects ([`FieldFlags::del_ops`]).
    pub diskdel: Vec<String>,
    pub partdel: Vec<String>,
    pub fsdel: Vec<String>,
}

impl FieldFlags {
    pub fn get(&self, flag: &str) -> Option<&[String]> {
        self.values
            .iter()
            .find(|(f, _)| f.flag == flag)
            .map(|(_, v)| v.as_slice())
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && !self.has_dels()
    }

    pub fn has_dels(&self) -> bool {
        !(self.diskdel.is_empty() && self.partdel.is_empty() && self.fsdel.is_empty())
    }

    /// The ops deleting `--diskdel/--partdel/--fsdel` from `conf`, as Warewulf does: a
    /// missing disk or filesystem is an error; `--partdel P` removes P from `--diskname`
    /// when given, else from every disk holding it, and is an error when none does.
    pub fn del_ops(&self, name: &str, conf: &NodeConf) -> Result<Patch, String> {
        let mut ops = Vec::new();
        for d in &self.diskdel {
            if !conf.disks.contains_key(d) {
                return Err(format!("{name}: no disk {d:?} to delete"));
            }
            ops.push(PatchOp::unset(&["disks", d]));
        }
        for p in &self.partdel {
            for d in disks_with_partition(conf, name, self.scopes.disk.as_ref(), p, " to delete")? {
                ops.push(PatchOp::unset(&["disks", d, "partitions", p]));
            }
        }
        for f in &self.fsdel {
            if !conf.filesystems.contains_key(f) {
                return Err(format!("{name}: no filesystem {f:?} to delete"));
            }
            ops.push(PatchOp::unset(&["filesystems", f]));
        }
        Ok(ops)
    }

    /// A boolean flag takes its value only after `=` (Warewulf's rule), so in
    /// `--ipmiwrite true n01` the `true` lands among the names. Warewulf then ignores a
    /// node called `true`; here, when one boolean flag was given bare and one name is a
    /// boolean word, that word becomes the flag's value (so `--onboot false n1` means
    /// false, where Warewulf would set true). Anything more tangled is refused with the fix.
    pub fn take_bool_word(&mut self, names: &mut Vec<String>) -> Result<(), String> {
        let words: Vec<usize> = (0..names.len())
            .filter(|&i| parse_bool("", &names[i]).is_ok())
            .collect();
        if words.is_empty() {
            return Ok(());
        }
        let bools: Vec<usize> = (0..self.values.len())
            .filter(|&i| self.values[i].0.kind == Bool)
            .collect();
        if bools.is_empty() {
            return Ok(());
        }
        if let ([b], [w]) = (bools.as_slice(), words.as_slice()) {
            if self.values[*b].1 == ["true"] {
                self.values[*b].1 = vec![names.remove(*w)];
                return Ok(());
            }
        }
        let flags: Vec<String> = bools.iter().map(|&i| format!("--{}", self.values[i].0.flag)).collect();
        Err(format!(
            "{:?} is read as a name, not as the value of {}: give a boolean flag its value after '=' \
             (e.g. {}={}), or alone for true",
            names[words[0]],
            flags.join("/"),
            flags[0],
            names[words[0]],
        ))
    }

    /// Replace the single value of `flag` (used for IP auto-increment).
    pub fn set_one(&mut self, flag: &str, value: String) {
        if let Some((_, v)) = self.values.iter_mut().find(|(f, _)| f.flag == flag) {
            *v = vec![value];
        }
    }

    /// The patch these flags describe.
    pub fn to_patch(&self) -> Result<Patch, String> {
        let mut patch = Vec::new();
        // A bad --fsname is an error even when no filesystem field is given.
        self.scopes.fs_device()?;
        for (field, raw) in &self.values {
            let path = self.scopes.path(field)?;
            match field.kind {
                Str => {
                    let v = last(raw);
                    patch.push(if clears(field, v) {
                        PatchOp::Unset { path }
                    } else {
                        PatchOp::Set {
                            path,
                            value: Value::String(v.to_string()),
                        }
                    });
                }
                Bool => {
                    let v = last(raw);
                    patch.push(if is_unset_word(v) {
                        PatchOp::Unset { path }
                    } else {
                        PatchOp::Set {
                            path,
                            value: Value::Bool(parse_bool(field.flag, v)?),
                        }
                    });
                }
                List => {
                    let items = split_list(raw);
                    patch.push(if items.len() == 1 && is_unset_word(&items[0]) {
                        PatchOp::Unset { path }
                    } else {
                        PatchOp::Set {
                            path,
                            value: Value::Array(items.into_iter().map(Value::String).collect()),
                        }
                    });
                }
                TagAdd => {
                    for kv in split_list(raw) {
                        let (k, v) = kv
                            .split_once('=')
                            .ok_or_else(|| format!("--{} {kv:?}: expected key=value", field.flag))?;
                        let mut p = path.clone();
                        p.push(k.to_string());
                        patch.push(PatchOp::Set {
                            path: p,
                            value: Value::String(v.to_string()),
                        });
                    }
                }
                TagDel => {
                    for k in split_list(raw) {
                        let mut p = path.clone();
                        p.push(k);
                        patch.push(PatchOp::Unset { path: p });
                    }
                }
            }
        }
        Ok(patch)
    }
}

fn last(raw: &[String]) -> &str {
    raw.last().map(String::as_str).unwrap_or("")
}

/// Fields `node unset NAME FIELD` takes by name; disk fields need their scope flags, so
/// they are cleared with the flag form (`unset --partnumber --diskname D --partname P`).
fn positional_unset(f: &Field) -> bool {
    f.kind != TagAdd && f.kind != TagDel && matches!(f.scope, Top | NetDev)
}

fn full_path(field: &Field, netname: &str) -> Vec<String> {
    let mut p = Vec::new();
    if field.scope == NetDev {
        p.push("network devices".to_string());
        p.push(netname.to_string());
    }
    p.extend(field.path.iter().map(|s| s.to_string()));
    p
}

fn split_list(raw: &[String]) -> Vec<String> {
    raw.iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

pub fn parse_bool(flag: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Ok(true),
        "false" | "no" | "0" | "off" => Ok(false),
        _ => Err(format!("--{flag} {v:?}: expected true or false")),
    }
}

/// The path `node unset FIELD` clears: a flag name from [`FIELDS`] (tag flags
/// excepted), `tags`, or `network` for the whole selected network device.
pub fn unset_path(name: &str, netname: &str) -> Result<Vec<String>, String> {
    let name = name.trim_start_matches('-');
    match name {
        "network" | "netname" => return Ok(vec!["network devices".into(), netname.into()]),
        "ipmi" => return Ok(vec!["ipmi".into()]),
        "kernel" => return Ok(vec!["kernel".into()]),
        _ => {}
    }
    FIELDS
        .iter()
        .filter(|f| positional_unset(f))
        .find(|f| f.flag == name || f.aliases.contains(&name))
        .map(|f| full_path(f, netname))
        .or_else(|| match name {
            "tags" => Some(vec!["tags".into()]),
            "nettags" => Some(vec!["network devices".into(), netname.into(), "tags".into()]),
            "ipmitags" => Some(vec!["ipmi".into(), "tags".into()]),
            _ => None,
        })
        .ok_or_else(|| {
            let names: Vec<&str> = FIELDS.iter().filter(|f| positional_unset(f)).map(|f| f.flag).collect();
            format!(
                "unknown field {name:?}; known fields: {}, tags, nettags, ipmitags, network, ipmi, kernel",
                names.join(", ")
            )
        })
}

impl clap::Args for FieldFlags {
    fn augment_args(mut cmd: Command) -> Command {
        cmd = cmd.arg(
            Arg::new(NETNAME)
                .long(NETNAME)
                .short('n')
                .default_value("default")
                .help("Network device the network flags apply to")
                .help_heading("Network"),
        );
        for (name, help) in [
            (DISKNAME, "Disk the disk and partition flags apply to (e.g. /dev/vda)"),
            (PARTNAME, "Partition (label) the partition flags apply to"),
            (
                FSNAME,
                "Filesystem the filesystem flags apply to (a /dev path, or the --partname)",
            ),
        ] {
            cmd = cmd.arg(
                Arg::new(name)
                    .long(name)
                    .value_name("NAME")
                    .help(help)
                    .help_heading("Disks"),
            );
        }
        for (name, help) in [
            (DISKDEL, "Delete disks"),
            (
                PARTDEL,
                "Delete partitions (from --diskname, or from every disk holding them)",
            ),
            (FSDEL, "Delete filesystems"),
        ] {
            cmd = cmd.arg(
                Arg::new(name)
                    .long(name)
                    .value_name("NAME")
                    .help(help)
                    .action(ArgAction::Append)
                    .help_heading("Disks"),
            );
        }
        for field in FIELDS {
            let mut a = Arg::new(field.flag)
                .long(field.flag)
                .value_name(match field.kind {
                    Bool => "BOOL",
                    List => "LIST",
                    TagAdd => "KEY=VALUE",
                    TagDel => "KEY",
                    Str => "VALUE",
                })
                .help(field.help)
                .action(ArgAction::Append)
                .help_heading(match field.scope {
                    NetDev => "Network",
                    Disk | Part | Fs => "Disks",
                    Top if field.path.first() == Some(&"ipmi") => "IPMI",
                    Top => "Fields",
                });
            if let Some(s) = field.short {
                a = a.short(s);
            }
            for alias in field.aliases {
                a = a.alias(*alias);
            }
            if field.kind == Bool {
                // `--discoverable` alone means true, and a value needs `=`, as in Warewulf:
                // `--ipmiwrite n01` sets the flag on n01 instead of reading `n01` as a boolean.
                a = a.num_args(0..=1).require_equals(true).default_missing_value("true");
            }
            cmd = cmd.arg(a);
        }
        cmd
    }
    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for FieldFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let many = |n: &str| -> Vec<String> {
            m.get_many::<String>(n)
                .map(|v| v.cloned().collect())
                .unwrap_or_default()
        };
        let mut out = FieldFlags {
            scopes: Scopes {
                netname: m
                    .get_one::<String>(NETNAME)
                    .cloned()
                    .unwrap_or_else(|| "default".into()),
                disk: m.get_one::<String>(DISKNAME).cloned(),
                part: m.get_one::<String>(PARTNAME).cloned(),
                fs: m.get_one::<String>(FSNAME).cloned(),
            },
            values: Vec::new(),
            diskdel: many(DISKDEL),
            partdel: many(PARTDEL),
            fsdel: many(FSDEL),
        };
        for field in FIELDS {
            if let Some(vals) = m.get_many::<String>(field.flag) {
                out.values.push((field, vals.cloned().collect()));
            }
        }
        Ok(out)
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// Warewulf's flag form of `unset`: each field flag of `set` given bare (`--image`,
/// `--partnumber`), `--tag/--nettag/--ipmitag KEY`, and the scope flags. Naming only an
/// entry (`--diskname D`, `--partname P`, `--fsname F`, `--netname N`) removes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnsetFlags {
    /// `--netname` as given (None: the `default` device, and no device removal).
    pub netname: Option<String>,
    pub disk: Option<String>,
    pub part: Option<String>,
    pub fs: Option<String>,
    pub fields: Vec<&'static Field>,
    pub tags: Vec<String>,
    pub nettags: Vec<String>,
    pub ipmitags: Vec<String>,
}

const UNSET_TAG_FLAGS: [(&str, &str); 3] = [
    ("tag", "Delete a tag (key)"),
    ("nettag", "Delete a tag of the --netname device (key)"),
    ("ipmitag", "Delete an IPMI tag (key)"),
];

impl UnsetFlags {
    pub fn is_empty(&self) -> bool {
        self.netname.is_none()
            && self.disk.is_none()
            && self.part.is_none()
            && self.fs.is_none()
            && self.fields.is_empty()
            && self.tags.is_empty()
            && self.nettags.is_empty()
            && self.ipmitags.is_empty()
    }

    pub fn netname(&self) -> &str {
        self.netname.as_deref().unwrap_or("default")
    }

    fn scopes(&self) -> Scopes {
        Scopes {
            netname: self.netname().to_owned(),
            disk: self.disk.clone(),
            part: self.part.clone(),
            fs: self.fs.clone(),
        }
    }

    /// The ops clearing what these flags name on `conf` (object `name`), as Warewulf 4.7
    /// does: a field flag of a disk, partition or filesystem clears that field of the entry
    /// its scope flags name; without one, the named entries go. A missing disk or
    /// filesystem is no error, a partition that is not there is (unscoped: on no disk); a
    /// disk left with nothing goes too.
    /// `positional`: the field names given the positional way (`unset n1 -n eth hwaddr`);
    /// `--netname` then only scopes them.
    pub fn ops(&self, name: &str, conf: &NodeConf, positional: &[String]) -> Result<Patch, String> {
        let scopes = self.scopes();
        let mut ops = Vec::new();
        for f in positional {
            ops.push(PatchOp::Unset {
                path: unset_path(f, self.netname())?,
            });
        }
        for field in &self.fields {
            ops.push(PatchOp::Unset {
                path: scopes.path(field)?,
            });
        }
        for k in &self.tags {
            ops.push(PatchOp::unset(&["tags", k]));
        }
        for k in &self.nettags {
            ops.push(PatchOp::unset(&["network devices", self.netname(), "tags", k]));
        }
        for k in &self.ipmitags {
            ops.push(PatchOp::unset(&["ipmi", "tags", k]));
        }
        let entry_fields = self.fields.iter().any(|f| matches!(f.scope, Disk | Part | Fs));
        let net_fields = self.fields.iter().any(|f| f.scope == NetDev) || !self.nettags.is_empty();
        if !entry_fields {
            if let Some(p) = &self.part {
                for d in disks_with_partition(conf, name, self.disk.as_ref(), p, "")? {
                    let mut left = conf.disks[d].clone();
                    left.partitions.remove(p);
                    ops.push(if left == crate::model::Disk::default() {
                        PatchOp::unset(&["disks", d])
                    } else {
                        PatchOp::unset(&["disks", d, "partitions", p])
                    });
                }
            } else if let Some(d) = &self.disk {
                ops.push(PatchOp::unset(&["disks", d]));
            }
            if let Some(fs) = scopes.fs_device()? {
                ops.push(PatchOp::unset(&["filesystems", &fs]));
            }
        }
        if let Some(n) = &self.netname {
            if !net_fields && positional.is_empty() {
                ops.push(PatchOp::unset(&["network devices", n]));
            }
        }
        Ok(ops)
    }
}

impl clap::Args for UnsetFlags {
    fn augment_args(mut cmd: Command) -> Command {
        cmd = cmd.arg(
            Arg::new(NETNAME)
                .long(NETNAME)
                .short('n')
                .value_name("NAME")
                .help("Network device the network fields refer to (default: default); alone, remove it"),
        );
        for (name, help) in [
            (
                DISKNAME,
                "Disk the disk and partition fields refer to; alone, remove the disk",
            ),
            (
                PARTNAME,
                "Partition the partition fields refer to; alone, remove the partition",
            ),
            (FSNAME, "Filesystem the filesystem fields refer to; alone, remove it"),
        ] {
            cmd = cmd.arg(Arg::new(name).long(name).value_name("NAME").help(help));
        }
        for (name, help) in UNSET_TAG_FLAGS {
            cmd = cmd.arg(
                Arg::new(name)
                    .long(name)
                    .value_name("KEY")
                    .help(help)
                    .action(ArgAction::Append),
            );
        }
        for field in FIELDS.iter().filter(|f| f.kind != TagAdd && f.kind != TagDel) {
            let mut a = Arg::new(field.flag)
                .long(field.flag)
                .action(ArgAction::SetTrue)
                .help_heading("Fields to clear");
            if let Some(s) = field.short {
                a = a.short(s);
            }
            for alias in field.aliases {
                a = a.alias(*alias);
            }
            cmd = cmd.arg(a);
        }
        cmd
    }
    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for UnsetFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let one = |n: &str| m.get_one::<String>(n).cloned();
        let many = |n: &str| -> Vec<String> {
            m.get_many::<String>(n)
                .map(|v| v.cloned().collect())
                .unwrap_or_default()
        };
        Ok(UnsetFlags {
            netname: one(NETNAME),
            disk: one(DISKNAME),
            part: one(PARTNAME),
            fs: one(FSNAME),
            fields: FIELDS
                .iter()
                .filter(|f| f.kind != TagAdd && f.kind != TagDel && m.get_flag(f.flag))
                .collect(),
            // Comma-separated like Warewulf's string slices: `--tag=a,b`.
            tags: split_list(&many("tag")),
            nettags: split_list(&many("nettag")),
            ipmitags: split_list(&many("ipmitag")),
        })
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// The disks of `conf` that partition `part` is on: `disk` alone when given (an error if
/// it lacks the partition), else every disk that has it (an error if none does).
/// `what` ends the error messages (" to delete").
fn disks_with_partition<'a>(
    conf: &'a NodeConf,
    name: &str,
    disk: Option<&'a String>,
    part: &str,
    what: &str,
) -> Result<Vec<&'a String>, String> {
    let disks: Vec<&String> = match disk {
        Some(d) => {
            let found = conf.disks.get(d).ok_or_else(|| format!("{name}: no disk {d:?}"))?;
            if !found.partitions.contains_key(part) {
                return Err(format!("{name}: disk {d:?} has no partition {part:?}{what}"));
            }
            vec![d]
        }
        None => conf
            .disks
            .iter()
            .filter(|(_, found)| found.partitions.contains_key(part))
            .map(|(d, _)| d)
            .collect(),
    };
    if disks.is_empty() {
        return Err(format!("{name}: no disk has a partition {part:?}{what}"));
    }
    Ok(disks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        f: FieldFlags,
    }

    fn patch(args: &[&str]) -> Result<Patch, String> {
        let mut v = vec!["t"];
        v.extend_from_slice(args);
        T::try_parse_from(v).map_err(|e| e.to_string())?.f.to_patch()
    }

    fn set(path: &[&str], value: Value) -> PatchOp {
        PatchOp::Set {
            path: path.iter().map(|s| s.to_string()).collect(),
            value,
        }
    }

    #[test]
    fn scalar_list_and_bool_flags() {
        let p = patch(&["--image", "rocky9", "-A", "quiet,crashkernel=no", "--discoverable"]).unwrap();
        assert_eq!(
            p,
            vec![
                set(&["image name"], Value::String("rocky9".into())),
                set(&["kernel", "args"], serde_json::json!(["quiet", "crashkernel=no"])),
                set(&["discoverable"], Value::Bool(true)),
            ]
        );
    }

    #[test]
    fn warewulf_short_options_e_and_p() {
        // Warewulf's `sopt`: -e discoverable, -p primarynet.
        assert_eq!(
            patch(&["-e", "-p", "eth1"]).unwrap(),
            vec![
                set(&["discoverable"], Value::Bool(true)),
                set(&["primary network"], Value::String("eth1".into())),
            ]
        );
    }

    #[test]
    fn container_alias_and_unset_word() {
        let p = patch(&["--container", "UNDEF"]).unwrap();
        assert_eq!(
            p,
            vec![PatchOp::Unset {
                path: vec!["image name".into()]
            }]
        );
    }

    #[test]
    fn netdev_flags_use_netname() {
        let p = patch(&["-n", "ib", "--hwaddr", "AA:BB:CC:DD:EE:FF", "--nettagadd", "a=1"]).unwrap();
        assert_eq!(
            p,
            vec![
                set(
                    &["network devices", "ib", "hwaddr"],
                    Value::String("AA:BB:CC:DD:EE:FF".into())
                ),
                set(&["network devices", "ib", "tags", "a"], Value::String("1".into())),
            ]
        );
    }

    #[test]
    fn tags_add_and_delete() {
        let p = patch(&["--tagadd", "x=1,y=2", "--tagdel", "z"]).unwrap();
        assert_eq!(p.len(), 3);
        assert!(patch(&["--tagadd", "novalue"]).unwrap_err().contains("key=value"));
    }

    #[test]
    fn unspecified_address_clears() {
        let p = patch(&["--ipaddr=0.0.0.0", "--ipaddr6", "::", "--ipmiaddr", "0.0.0.0"]).unwrap();
        assert_eq!(
            p,
            vec![
                PatchOp::Unset {
                    path: vec!["ipmi".into(), "ipaddr".into()]
                },
                PatchOp::Unset {
                    path: vec!["network devices".into(), "default".into(), "ipaddr".into()]
                },
                PatchOp::Unset {
                    path: vec!["network devices".into(), "default".into(), "ipaddr6".into()]
                },
            ]
        );
        // Only for addresses: other fields keep the text.
        assert_eq!(
            patch(&["--comment", "0.0.0.0"]).unwrap(),
            vec![set(&["comment"], Value::String("0.0.0.0".into()))]
        );
    }

    #[derive(Parser)]
    struct WithNames {
        names: Vec<String>,
        #[command(flatten)]
        f: FieldFlags,
    }

    #[test]
    fn bool_flag_value_needs_equals() {
        let t = WithNames::try_parse_from(["t", "--ipmiwrite", "n01"]).unwrap();
        assert_eq!(t.names, ["n01"]);
        assert_eq!(
            t.f.to_patch().unwrap(),
            vec![set(&["ipmi", "write"], Value::Bool(true))]
        );
        let t = WithNames::try_parse_from(["t", "--discoverable=false", "n01"]).unwrap();
        assert_eq!(t.names, ["n01"]);
        assert_eq!(
            t.f.to_patch().unwrap(),
            vec![set(&["discoverable"], Value::Bool(false))]
        );

        let t = WithNames::try_parse_from(["t", "n01", "--onboot"]).unwrap();
        assert_eq!(t.names, ["n01"]);
        assert_eq!(
            t.f.to_patch().unwrap(),
            vec![set(&["network devices", "default", "onboot"], Value::Bool(true))]
        );
    }

    #[test]
    fn a_bare_bool_flag_takes_a_boolean_word_from_the_names() {
        let take = |args: &[&str]| {
            let mut v = vec!["t"];
            v.extend_from_slice(args);
            let mut t = WithNames::try_parse_from(v).unwrap();
            t.f.take_bool_word(&mut t.names)
                .map(|()| (t.names, t.f.to_patch().unwrap()))
        };
        // Warewulf's own case: `--ipmiwrite true n01`.
        let (names, p) = take(&["--ipmiwrite", "true", "n01"]).unwrap();
        assert_eq!(names, ["n01"]);
        assert_eq!(p, vec![set(&["ipmi", "write"], Value::Bool(true))]);
        let (names, p) = take(&["--onboot", "false", "n01"]).unwrap();
        assert_eq!(names, ["n01"]);
        assert_eq!(
            p,
            vec![set(&["network devices", "default", "onboot"], Value::Bool(false))]
        );
        // Without a bare boolean flag, names are names.
        let (names, _) = take(&["--comment", "x", "no"]).unwrap();
        assert_eq!(names, ["no"]);
        // Ambiguous: two boolean flags, or one given a value other than the bare `true`.
        for args in [
            &["--onboot", "--ipmiwrite", "false", "n01"][..],
            &["--onboot=no", "false", "n01"],
        ] {
            let e = take(args).unwrap_err();
            assert!(e.contains("\"false\" is read as a name") && e.contains("=false"), "{e}");
        }
    }

    #[test]
    fn bad_bool_is_an_error() {
        assert!(patch(&["--onboot=maybe"]).unwrap_err().contains("true or false"));
    }

    #[test]
    fn disk_partition_and_filesystem_flags_use_their_scopes() {
        let p = patch(&[
            "--fsname=var",
            "--fspath=/var",
            "--fsformat=btrfs",
            "--partname=var",
            "--partnumber=1",
            "--diskname=/dev/vda",
            "--diskwipe",
            "--partwipe=false",
        ])
        .unwrap();
        assert_eq!(
            p,
            vec![
                set(&["disks", "/dev/vda", "wipe_table"], Value::Bool(true)),
                set(
                    &["disks", "/dev/vda", "partitions", "var", "number"],
                    Value::String("1".into())
                ),
                set(
                    &["disks", "/dev/vda", "partitions", "var", "wipe_partition_entry"],
                    Value::Bool(false)
                ),
                set(
                    &["filesystems", "/dev/disk/by-partlabel/var", "format"],
                    Value::String("btrfs".into())
                ),
                set(
                    &["filesystems", "/dev/disk/by-partlabel/var", "path"],
                    Value::String("/var".into())
                ),
            ]
        );
        // A /dev path is used as it is.
        assert_eq!(
            patch(&["--fsname=/dev/vda1", "--fspath=/var"]).unwrap(),
            vec![set(&["filesystems", "/dev/vda1", "path"], Value::String("/var".into()))]
        );
    }

    #[test]
    fn scoped_fields_without_their_scope_are_refused() {
        assert!(patch(&["--fsname=dev/vda1", "--fspath=/var"])
            .unwrap_err()
            .contains("needs a block device"));
        assert!(patch(&["--partnumber=1", "--diskname=/dev/vda"])
            .unwrap_err()
            .contains("--partnumber needs --partname"));
        assert!(patch(&["--diskwipe"])
            .unwrap_err()
            .contains("--diskwipe needs --diskname"));
        assert!(patch(&["--fswipe"]).unwrap_err().contains("--fswipe needs --fsname"));
    }

    fn dels(args: &[&str], conf: &str) -> Result<Patch, String> {
        let mut v = vec!["t"];
        v.extend_from_slice(args);
        let f = T::try_parse_from(v).unwrap().f;
        f.del_ops("n01", &crate::model::parse_node_conf(conf).unwrap())
    }

    #[test]
    fn deletions_resolve_against_the_object() {
        let conf = "disks:\n  /dev/vda:\n    partitions:\n      var: {number: '1'}\n  /dev/vdb:\n    partitions:\n      var: {}\n      boot: {}\nfilesystems:\n  /dev/vda1: {path: /var}\n";
        // Unscoped: from every disk holding it.
        assert_eq!(
            dels(&["--partdel=var"], conf).unwrap(),
            vec![
                PatchOp::unset(&["disks", "/dev/vda", "partitions", "var"]),
                PatchOp::unset(&["disks", "/dev/vdb", "partitions", "var"]),
            ]
        );
        assert_eq!(
            dels(&["--partdel=boot"], conf).unwrap(),
            vec![PatchOp::unset(&["disks", "/dev/vdb", "partitions", "boot"])]
        );
        // Scoped to --diskname.
        assert_eq!(
            dels(&["--partdel=var", "--diskname=/dev/vdb"], conf).unwrap(),
            vec![PatchOp::unset(&["disks", "/dev/vdb", "partitions", "var"])]
        );
        assert_eq!(
            dels(&["--diskdel=/dev/vda", "--fsdel=/dev/vda1"], conf).unwrap(),
            vec![
                PatchOp::unset(&["disks", "/dev/vda"]),
                PatchOp::unset(&["filesystems", "/dev/vda1"]),
            ]
        );
        // What is not there is an error, as in Warewulf.
        for args in [
            &["--partdel=nope"][..],
            &["--partdel=boot", "--diskname=/dev/vda"],
            &["--partdel=var", "--diskname=/dev/vdz"],
            &["--diskdel=/dev/vdz"],
            &["--fsdel=foo"],
        ] {
            assert!(dels(args, conf).is_err(), "{args:?}");
        }
    }

    #[test]
    fn netdel_removes_devices() {
        assert_eq!(
            patch(&["--netdel", "ib0,eth1"]).unwrap(),
            vec![
                PatchOp::unset(&["network devices", "ib0"]),
                PatchOp::unset(&["network devices", "eth1"]),
            ]
        );
    }

    #[derive(Parser)]
    struct U {
        fields: Vec<String>,
        #[command(flatten)]
        u: UnsetFlags,
    }

    fn unset_ops(args: &[&str], conf: &str) -> Result<Patch, String> {
        let mut v = vec!["t"];
        v.extend_from_slice(args);
        let t = U::try_parse_from(v).map_err(|e| e.to_string())?;
        t.u.ops("n01", &crate::model::parse_node_conf(conf).unwrap(), &t.fields)
    }

    #[test]
    fn unset_flags_clear_fields_and_tags() {
        assert_eq!(
            unset_ops(&["--image", "--tag=a,b", "--ipmitag", "c"], "").unwrap(),
            vec![
                PatchOp::unset(&["image name"]),
                PatchOp::unset(&["tags", "a"]),
                PatchOp::unset(&["tags", "b"]),
                PatchOp::unset(&["ipmi", "tags", "c"]),
            ]
        );
        // --netname scopes the network fields and tags; alone it removes the device.
        assert_eq!(
            unset_ops(&["--netname=ib", "--nettag=x", "-I"], "").unwrap(),
            vec![
                PatchOp::unset(&["network devices", "ib", "ipaddr"]),
                PatchOp::unset(&["network devices", "ib", "tags", "x"]),
            ]
        );
        assert_eq!(
            unset_ops(&["--netname=ib"], "").unwrap(),
            vec![PatchOp::unset(&["network devices", "ib"])]
        );
        // The positional form is unchanged by -n.
        assert_eq!(
            unset_ops(&["-n", "ib", "hwaddr"], "").unwrap(),
            vec![PatchOp::unset(&["network devices", "ib", "hwaddr"])]
        );
    }

    #[test]
    fn unset_flags_remove_disks_partitions_and_filesystems() {
        let conf = "disks:\n  /dev/vda:\n    partitions:\n      swap: {number: '1'}\n      root: {number: '2'}\n  /dev/vdb:\n    partitions:\n      swap: {number: '1'}\nfilesystems:\n  /dev/disk/by-partlabel/root: {format: ext4}\n";
        // A disk left empty goes with its last partition.
        assert_eq!(
            unset_ops(&["--partname=swap"], conf).unwrap(),
            vec![
                PatchOp::unset(&["disks", "/dev/vda", "partitions", "swap"]),
                PatchOp::unset(&["disks", "/dev/vdb"]),
            ]
        );
        assert_eq!(
            unset_ops(&["--partname=swap", "--diskname=/dev/vda"], conf).unwrap(),
            vec![PatchOp::unset(&["disks", "/dev/vda", "partitions", "swap"])]
        );
        assert_eq!(
            unset_ops(&["--diskname=/dev/vdz"], conf).unwrap(),
            vec![PatchOp::unset(&["disks", "/dev/vdz"])]
        );
        // Field flags clear one field of the named entry instead.
        assert_eq!(
            unset_ops(&["--partnumber", "--diskname=/dev/vda", "--partname=root"], conf).unwrap(),
            vec![PatchOp::unset(&["disks", "/dev/vda", "partitions", "root", "number"])]
        );
        assert_eq!(
            unset_ops(&["--fsformat", "--fsname=root", "--partname=root"], conf).unwrap(),
            vec![PatchOp::unset(&[
                "filesystems",
                "/dev/disk/by-partlabel/root",
                "format"
            ])]
        );
        assert_eq!(
            unset_ops(&["--fsname=/dev/disk/by-partlabel/root"], conf).unwrap(),
            vec![PatchOp::unset(&["filesystems", "/dev/disk/by-partlabel/root"])]
        );
        for args in [
            &["--partname=nopart"][..],
            &["--partname=swap", "--diskname=/dev/nonexistent"],
            &["--partname=nopart", "--diskname=/dev/vda"],
            &["--partnumber"],
            &["--diskwipe"],
            &["--fsformat"],
        ] {
            assert!(unset_ops(args, conf).is_err(), "{args:?}");
        }
    }

    #[test]
    fn unset_paths() {
        assert_eq!(unset_path("image", "default").unwrap(), vec!["image name"]);
        assert_eq!(
            unset_path("hwaddr", "eth").unwrap(),
            vec!["network devices", "eth", "hwaddr"]
        );
        assert_eq!(unset_path("network", "eth").unwrap(), vec!["network devices", "eth"]);
        assert!(unset_path("bogus", "default").unwrap_err().contains("unknown field"));
    }
}
