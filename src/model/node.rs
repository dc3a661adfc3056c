//! Node and profile data types, wire-compatible with Warewulf v4.6 `nodes.conf`.
//!
//! Design notes:
//! - One type, [`NodeConf`], serves nodes *and* profiles (Warewulf 4.6 has `Node` embedding
//!   `Profile`; the only node-only keys are `discoverable` and `asset key`, which
//!   [`crate::model::validate_profile_conf`] rejects on profiles).
//! - Field names and YAML keys follow Warewulf's `datastructure.go` exactly (spaced keys such as
//!   `"image name"`), so a `nodes.conf` written by Warewulf loads here and vice versa.
//! - `deny_unknown_fields` everywhere: a typo is an error instead of silently lost configuration
//!   (Warewulf's yaml.v3 decoder ignores unknown keys; we are stricter on purpose).
//! - Input is lenient where Warewulf's own files vary: Warewulf's `WWbool` is a string, so
//!   `"true"`/`"yes"`/`true` are all accepted for booleans; numeric-looking fields (`mtu`,
//!   `prefixlen6`, `port`, partition sizes) are strings in Warewulf and accept YAML integers;
//!   `null`/empty values mean "unset"; `image name` also accepts the pre-4.6 alias
//!   `container name`; `kernel.args` accepts a single string and splits it on whitespace (the
//!   same conversion `wwctl upgrade nodes` performs), and overlay/profile lists accept a single
//!   comma-separated string.
//! - Output is minimal: empty strings/lists/maps and `None` are never written, like Go's
//!   `omitempty`. Empty strings are normalised to `None` on input so parse→emit→parse is stable.
//! - IP addresses and MACs are kept as strings (validated by `validate.rs`), which keeps
//!   serialisation verbatim and makes field patches trivial.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node or a profile (Warewulf's `Node` / `Profile`). Every field is optional; an empty value
/// means "not set here" so that profiles and the node itself can be merged (see `merge.rs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConf {
    /// `discoverable` (nodes only): the node may claim its MAC address on first boot.
    #[serde(
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub discoverable: Option<bool>,
    /// `asset key` (nodes only): asset tag the node must present when booting.
    #[serde(
        rename = "asset key",
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub asset_key: Option<String>,
    /// `profiles`: profiles applied to this node/profile, in order. `~name` removes `name`.
    #[serde(default, deserialize_with = "lenient::list", skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// `comment`: free-form text.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub comment: Option<String>,
    /// `cluster name`: cluster group the node belongs to.
    #[serde(
        rename = "cluster name",
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub cluster_name: Option<String>,
    /// `image name` (input alias `container name`): the node image to boot.
    #[serde(
        rename = "image name",
        alias = "container name",
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub image_name: Option<String>,
    /// `ipxe template`: name of the iPXE template.
    #[serde(
        rename = "ipxe template",
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipxe_template: Option<String>,
    /// `runtime overlay`: overlays applied periodically while running.
    #[serde(
        rename = "runtime overlay",
        default,
        deserialize_with = "lenient::list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub runtime_overlay: Vec<String>,
    /// `system overlay`: overlays applied at boot.
    #[serde(
        rename = "system overlay",
        default,
        deserialize_with = "lenient::list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub system_overlay: Vec<String>,
    /// `kernel`: kernel version and command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelConf>,
    /// `ipmi`: BMC access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipmi: Option<IpmiConf>,
    /// `init`: init process to start (e.g. `/sbin/init`).
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub init: Option<String>,
    /// `root`: root filesystem type (e.g. `initramfs`).
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub root: Option<String>,
    /// `network devices`: network interfaces by name.
    #[serde(
        rename = "network devices",
        default,
        deserialize_with = "lenient::map_of",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub network_devices: BTreeMap<String, NetDev>,
    /// `tags`: free-form key/value pairs for templates.
    #[serde(
        default,
        deserialize_with = "lenient::tags",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tags: BTreeMap<String, String>,
    /// `primary network`: name of the primary network device.
    #[serde(
        rename = "primary network",
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub primary_network: Option<String>,
    /// `disks`: disks to partition, by device path.
    #[serde(
        default,
        deserialize_with = "lenient::map_of",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub disks: BTreeMap<String, Disk>,
    /// `filesystems`: filesystems to create, by device path.
    #[serde(
        default,
        deserialize_with = "lenient::map_of",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub filesystems: BTreeMap<String, FileSystem>,
    /// Free-form per-resource data (e.g. `fstab`), passed to overlay templates.
    #[serde(
        default,
        deserialize_with = "lenient::map_of",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub resources: BTreeMap<String, serde_json::Value>,
}

/// Kernel selection (`kernel:` block).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelConf {
    /// `version`: kernel version or path inside the image.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub version: Option<String>,
    /// Kernel command line arguments, one per entry. A single string is split on whitespace.
    #[serde(default, deserialize_with = "lenient::args", skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// BMC settings (`ipmi:` block).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpmiConf {
    /// `username`: BMC user.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub username: Option<String>,
    /// `password`: BMC password.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub password: Option<String>,
    /// `ipaddr`: BMC IP address.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipaddr: Option<String>,
    /// `gateway`: BMC gateway.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway: Option<String>,
    /// `netmask`: BMC netmask.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub netmask: Option<String>,
    /// `port`: BMC port (text, e.g. `"623"`).
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<String>,
    /// `interface`: ipmitool interface (Warewulf default `lan`).
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub interface: Option<String>,
    /// `escapechar`: serial-over-LAN escape character (Warewulf default `~`).
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub escapechar: Option<String>,
    /// `write`: whether Warewulf writes this configuration to the BMC.
    #[serde(
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub write: Option<bool>,
    /// `template`: template used for IPMI commands.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub template: Option<String>,
    /// `tags`: free-form key/value pairs.
    #[serde(
        default,
        deserialize_with = "lenient::tags",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tags: BTreeMap<String, String>,
}

/// One network device (`network devices: {name: ...}`).
///
/// Warewulf's computed `primary` flag is not stored; see `Merged::primary_netdev`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetDev {
    /// `type`: device type (e.g. `ethernet`, `infiniband`).
    #[serde(
        rename = "type",
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub r#type: Option<String>,
    /// `onboot`: bring the device up at boot.
    #[serde(
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub onboot: Option<bool>,
    /// `device`: kernel interface name (e.g. `eth0`).
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub device: Option<String>,
    /// `hwaddr`: MAC address.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub hwaddr: Option<String>,
    /// `ipaddr`: IPv4 address.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipaddr: Option<String>,
    /// `netmask`: IPv4 netmask.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub netmask: Option<String>,
    /// `gateway`: IPv4 gateway.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway: Option<String>,
    /// `ipaddr6`: IPv6 address (without prefix).
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipaddr6: Option<String>,
    /// `prefixlen6`: IPv6 prefix length (text).
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub prefixlen6: Option<String>,
    /// `gateway6`: IPv6 gateway.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway6: Option<String>,
    /// `mtu`: MTU (text).
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub mtu: Option<String>,
    /// `tags`: free-form key/value pairs.
    #[serde(
        default,
        deserialize_with = "lenient::tags",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tags: BTreeMap<String, String>,
}

/// A disk to partition, keyed by device path (e.g. `/dev/vda`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// `wipe_table`: wipe the partition table.
    #[serde(
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub wipe_table: Option<bool>,
    /// `partitions`: partitions by label.
    #[serde(
        default,
        deserialize_with = "lenient::map_of",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub partitions: BTreeMap<String, Partition>,
}

/// A partition, keyed by its (unique) label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// `number`: partition number (text); next free slot when unset.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub number: Option<String>,
    /// `size_mib`: size in MiB (text); maximum when unset.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub size_mib: Option<String>,
    /// `start_mib`: start offset in MiB (text).
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub start_mib: Option<String>,
    /// `type_guid`: partition type GUID.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub type_guid: Option<String>,
    /// `guid`: unique partition GUID.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub guid: Option<String>,
    /// `wipe_partition_entry`: replace an existing partition that does not match.
    #[serde(
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub wipe_partition_entry: Option<bool>,
    /// `should_exist`: create the partition if missing.
    #[serde(
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub should_exist: Option<bool>,
    /// `resize`: resize an existing partition.
    #[serde(
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub resize: Option<bool>,
}

/// A filesystem, keyed by device path (e.g. `/dev/disk/by-partlabel/scratch`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSystem {
    /// `format`: filesystem type (e.g. `ext4`, `btrfs`, `swap`).
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub format: Option<String>,
    /// `path`: mount point.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub path: Option<String>,
    /// `wipe_filesystem`: recreate the filesystem at boot.
    #[serde(
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub wipe_filesystem: Option<bool>,
    /// `label`: filesystem label.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub label: Option<String>,
    /// `uuid`: filesystem UUID.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub uuid: Option<String>,
    /// `options`: extra arguments for mkfs.
    #[serde(default, deserialize_with = "lenient::list", skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// `mount_options`: mount options.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub mount_options: Option<String>,
}

/// The whole `nodes.conf` document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesConf {
    /// `nodeprofiles`: profiles by name.
    #[serde(
        default,
        deserialize_with = "lenient::map_of",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub nodeprofiles: BTreeMap<String, NodeConf>,
    /// `nodes`: nodes by name.
    #[serde(
        default,
        deserialize_with = "lenient::map_of",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub nodes: BTreeMap<String, NodeConf>,
}

impl NodeConf {
    /// True when nothing at all is set.
    pub fn is_empty(&self) -> bool {
        *self == NodeConf::default()
    }
}

/// Lenient deserialisers shared by the types above. All treat YAML `null` as "unset".
pub(crate) mod lenient {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde::Deserialize;

    /// A YAML scalar of any type, kept as the text Warewulf would store in a Go string.
    struct ScalarText;

    impl<'de> Visitor<'de> for ScalarText {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string, number or boolean")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(if v.is_empty() { None } else { Some(v.to_owned()) })
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(if v.is_empty() { None } else { Some(v) })
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(ScalarText)
        }
    }

    /// Optional string; numbers and booleans are accepted and kept as text; `""` is unset.
    pub(crate) fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(ScalarText)
    }

    /// Parse Warewulf's boolean spellings (Go `strconv.ParseBool` plus yes/no).
    pub(crate) fn parse_bool(s: &str) -> Option<bool> {
        match s.to_ascii_lowercase().as_str() {
            "true" | "t" | "1" | "yes" | "y" | "on" => Some(true),
            "false" | "f" | "0" | "no" | "n" | "off" => Some(false),
            _ => None,
        }
    }

    /// Optional boolean accepting `true`, `"true"`, `"yes"`, ... (Warewulf's `WWbool` is a string).
    pub(crate) fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<bool>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a boolean (true/false, yes/no)")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Some(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v.is_empty() {
                    return Ok(None);
                }
                parse_bool(v).map(Some).ok_or_else(|| {
                    E::custom(format_args!(
                        "invalid boolean {v:?}: use true or false (yes/no also accepted)"
                    ))
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                match v {
                    0 => Ok(Some(false)),
                    1 => Ok(Some(true)),
                    _ => Err(E::custom(format_args!("invalid boolean {v}: use true or false"))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                match v {
                    0 => Ok(Some(false)),
                    1 => Ok(Some(true)),
                    _ => Err(E::custom(format_args!("invalid boolean {v}: use true or false"))),
                }
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(V)
            }
        }
        d.deserialize_any(V)
    }

    /// List of strings, split on `sep` when given a single string; scalars become text.
    fn list_with<'de, D: Deserializer<'de>>(d: D, split: fn(&str) -> Vec<String>) -> Result<Vec<String>, D::Error> {
        struct V(fn(&str) -> Vec<String>);
        impl<'de> Visitor<'de> for V {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok((self.0)(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Vec::new())
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Vec::new())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element::<Scalar>()? {
                    if let Some(s) = item.0 {
                        out.push(s);
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_any(V(split))
    }

    /// One list element: any scalar, kept as text.
    struct Scalar(Option<String>);
    impl<'de> Deserialize<'de> for Scalar {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(ScalarText).map(Scalar)
        }
    }

    fn split_commas(s: &str) -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn split_whitespace(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    /// Profiles, overlays, mkfs options: a list, or one comma-separated string.
    pub(crate) fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        list_with(d, split_commas)
    }

    /// Kernel args: a list, or one string split on whitespace (like `wwctl upgrade nodes`).
    pub(crate) fn args<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        list_with(d, split_whitespace)
    }

    /// A string→string map whose values may be any scalar; `null` map is empty.
    pub(crate) fn tags<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
        let m: Option<BTreeMap<String, Scalar>> = Option::deserialize(d)?;
        Ok(m.unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0.unwrap_or_default()))
            .collect())
    }

    /// A map whose values may be `null` (meaning an empty entry, e.g. `n1:` with no body).
    pub(crate) fn map_of<'de, D, T>(d: D) -> Result<BTreeMap<String, T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Default,
    {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Default> Visitor<'de> for V<T> {
            type Value = BTreeMap<String, T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(BTreeMap::new())
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(BTreeMap::new())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_map(self)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, Option<T>>()? {
                    if out.contains_key(&k) {
                        return Err(de::Error::custom(format_args!(
                            "duplicate key {k:?}: each name may appear only once, merge the two entries"
                        )));
                    }
                    out.insert(k, v.unwrap_or_default());
                }
                Ok(out)
            }
        }
        d.deserialize_option(V(std::marker::PhantomData))
    }
}
