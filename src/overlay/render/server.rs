//! The head's settings that templates read: Warewulf's `warewulf.conf`, with its keys and
//! Warewulf 4.7's defaults.
//!
//! Design notes:
//! - Keys are Warewulf's (`update interval`, `range start`, `export paths`, ...), so an
//!   operator's `warewulf.conf` loads as it is. Unknown keys are ignored, as Warewulf's YAML
//!   decoder ignores them: this file is read for templates only, and refusing a key Warewulf
//!   accepts would stop overlays from building.
//! - Several documents can be layered ([`ServerConf::from_layers`]): each is applied over the
//!   previous ones, maps key by key, anything else replaced — what Warewulf does when it reads
//!   a second file into the same in-memory config.
//! - Derived values (network from address and netmask, CIDR forms, IPv6 prefix) are computed
//!   once in [`ServerConf::derived`], not per node.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::RenderError;

/// `warewulf.conf` as templates see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConf {
    /// `ipaddr`: the head's address on the cluster network, optionally with `/prefix`.
    #[serde(deserialize_with = "text")]
    pub ipaddr: String,
    /// `ipaddr6`: the head's IPv6 address, optionally with `/prefix`.
    #[serde(deserialize_with = "text")]
    pub ipaddr6: String,
    /// `prefixlen6`: IPv6 prefix length when `ipaddr6` has none.
    #[serde(deserialize_with = "text")]
    pub prefixlen6: String,
    /// `netmask`: the cluster network's mask (computed from `ipaddr`'s prefix when unset).
    #[serde(deserialize_with = "text")]
    pub netmask: String,
    /// `network`: the cluster network's address (computed when unset).
    #[serde(deserialize_with = "text")]
    pub network: String,
    /// `fqdn`: the head's name.
    #[serde(deserialize_with = "text")]
    pub fqdn: String,
    /// `warewulf:` the service settings.
    pub warewulf: WarewulfSection,
    /// `dhcp:` the DHCP service settings.
    pub dhcp: DhcpSection,
    /// `tftp:` the TFTP service settings.
    pub tftp: TftpSection,
    /// `nfs:` the NFS exports.
    pub nfs: NfsSection,
    /// `ssh:` SSH key types.
    pub ssh: SshSection,
    /// `paths:` Warewulf's directories.
    pub paths: PathsSection,
}

/// `warewulf:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WarewulfSection {
    /// `port`: HTTP port the nodes fetch from (9873).
    pub port: u16,
    /// `secure`: runtime overlays only to privileged source ports (true).
    pub secure: bool,
    /// `update interval`: seconds between wwclient fetches (60).
    #[serde(rename = "update interval")]
    pub update_interval: u32,
    /// `autobuild overlays` (true).
    #[serde(rename = "autobuild overlays")]
    pub autobuild_overlays: bool,
    /// `host overlay`: build the head's own overlay (true).
    #[serde(rename = "host overlay")]
    pub host_overlay: bool,
    /// `grubboot`: boot through shim/GRUB instead of iPXE (false).
    pub grubboot: bool,
    /// `tls`: serve TLS too (false).
    pub tls: bool,
    /// `tls port` (9874).
    #[serde(rename = "tls port")]
    pub tls_port: u16,
    /// `datastore`: where Warewulf keeps its data.
    #[serde(deserialize_with = "text")]
    pub datastore: String,
}

impl Default for WarewulfSection {
    fn default() -> Self {
        WarewulfSection {
            port: 9873,
            secure: true,
            update_interval: 60,
            autobuild_overlays: true,
            host_overlay: true,
            grubboot: false,
            tls: false,
            tls_port: 9874,
            datastore: "/usr/share".into(),
        }
    }
}

/// `dhcp:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DhcpSection {
    /// `enabled` (true).
    pub enabled: bool,
    /// `template`: `default` (a range) or `static` (one host entry per node).
    #[serde(deserialize_with = "text")]
    pub template: String,
    /// `range start`.
    #[serde(rename = "range start", deserialize_with = "text")]
    pub range_start: String,
    /// `range end`.
    #[serde(rename = "range end", deserialize_with = "text")]
    pub range_end: String,
    /// `range6 start`.
    #[serde(rename = "range6 start", deserialize_with = "text")]
    pub range6_start: String,
    /// `range6 end`.
    #[serde(rename = "range6 end", deserialize_with = "text")]
    pub range6_end: String,
    /// `systemd name` (dhcpd).
    #[serde(rename = "systemd name", deserialize_with = "text")]
    pub systemd_name: String,
}

impl Default for DhcpSection {
    fn default() -> Self {
        DhcpSection {
            enabled: true,
            template: "default".into(),
            range_start: String::new(),
            range_end: String::new(),
            range6_start: String::new(),
            range6_end: String::new(),
            systemd_name: "dhcpd".into(),
        }
    }
}

/// `tftp:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TftpSection {
    /// `enabled` (true).
    pub enabled: bool,
    /// `tftproot` (/var/lib/tftpboot).
    #[serde(deserialize_with = "text")]
    pub tftproot: String,
    /// `systemd name` (tftp).
    #[serde(rename = "systemd name", deserialize_with = "text")]
    pub systemd_name: String,
    /// `ipxe`: DHCP client architecture (e.g. `00:07`) → iPXE binary.
    pub ipxe: BTreeMap<String, String>,
}

impl Default for TftpSection {
    fn default() -> Self {
        TftpSection {
            enabled: true,
            tftproot: "/var/lib/tftpboot".into(),
            systemd_name: "tftp".into(),
            ipxe: [
                ("00:00", "undionly.kpxe"),
                ("00:07", "ipxe-snponly-x86_64.efi"),
                ("00:09", "ipxe-snponly-x86_64.efi"),
                ("00:0B", "arm64-efi/snponly.efi"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        }
    }
}

/// `nfs:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NfsSection {
    /// `enabled` (true).
    pub enabled: bool,
    /// `export paths`.
    #[serde(rename = "export paths")]
    pub export_paths: Vec<NfsExport>,
    /// `systemd name` (nfsd).
    #[serde(rename = "systemd name", deserialize_with = "text")]
    pub systemd_name: String,
}

impl Default for NfsSection {
    fn default() -> Self {
        NfsSection {
            enabled: true,
            export_paths: Vec::new(),
            systemd_name: "nfsd".into(),
        }
    }
}

/// One NFS export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NfsExport {
    /// `path`.
    #[serde(deserialize_with = "text")]
    pub path: String,
    /// `export options` (rw,sync,no_subtree_check).
    #[serde(rename = "export options", deserialize_with = "text")]
    pub export_options: String,
    /// `mount options` (defaults).
    #[serde(rename = "mount options", deserialize_with = "text")]
    pub mount_options: String,
    /// `mount`: nodes mount it (true).
    pub mount: bool,
}

impl Default for NfsExport {
    fn default() -> Self {
        NfsExport {
            path: String::new(),
            export_options: "rw,sync,no_subtree_check".into(),
            mount_options: "defaults".into(),
            mount: true,
        }
    }
}

/// `ssh:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SshSection {
    /// `key types` (ed25519, ecdsa, rsa, dsa).
    #[serde(rename = "key types")]
    pub key_types: Vec<String>,
}

impl Default for SshSection {
    fn default() -> Self {
        SshSection {
            key_types: ["ed25519", "ecdsa", "rsa", "dsa"].map(String::from).to_vec(),
        }
    }
}

/// `paths:` section (Warewulf's compiled-in directories).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PathsSection {
    /// `bindir` (/usr/bin).
    #[serde(deserialize_with = "text")]
    pub bindir: String,
    /// `sysconfdir` (/etc).
    #[serde(deserialize_with = "text")]
    pub sysconfdir: String,
    /// `localstatedir` (/var/lib).
    #[serde(deserialize_with = "text")]
    pub localstatedir: String,
    /// `cachedir` (/var/cache).
    #[serde(deserialize_with = "text")]
    pub cachedir: String,
    /// `ipxesource` (/usr/share/ipxe).
    #[serde(deserialize_with = "text")]
    pub ipxesource: String,
    /// `srvdir` (/var/lib).
    #[serde(deserialize_with = "text")]
    pub srvdir: String,
    /// `firewallddir` (/usr/lib/firewalld/services).
    #[serde(deserialize_with = "text")]
    pub firewallddir: String,
    /// `systemddir` (/usr/lib/systemd/system).
    #[serde(deserialize_with = "text")]
    pub systemddir: String,
    /// `datadir` (/usr/share).
    #[serde(deserialize_with = "text")]
    pub datadir: String,
    /// `wwoverlaydir` (/var/lib/warewulf/overlays).
    #[serde(deserialize_with = "text")]
    pub wwoverlaydir: String,
    /// `wwchrootdir` (/var/lib/warewulf/chroots).
    #[serde(deserialize_with = "text")]
    pub wwchrootdir: String,
    /// `wwprovisiondir` (/var/lib/warewulf/provision).
    #[serde(deserialize_with = "text")]
    pub wwprovisiondir: String,
    /// `wwclientdir` (/warewulf): where the node keeps wwclient and its config.
    #[serde(deserialize_with = "text")]
    pub wwclientdir: String,
}

impl Default for PathsSection {
    fn default() -> Self {
        PathsSection {
            bindir: "/usr/bin".into(),
            sysconfdir: "/etc".into(),
            localstatedir: "/var/lib".into(),
            cachedir: "/var/cache".into(),
            ipxesource: "/usr/share/ipxe".into(),
            srvdir: "/var/lib".into(),
            firewallddir: "/usr/lib/firewalld/services".into(),
            systemddir: "/usr/lib/systemd/system".into(),
            datadir: "/usr/share".into(),
            wwoverlaydir: "/var/lib/warewulf/overlays".into(),
            wwchrootdir: "/var/lib/warewulf/chroots".into(),
            wwprovisiondir: "/var/lib/warewulf/provision".into(),
            wwclientdir: "/warewulf".into(),
        }
    }
}

/// Values computed from the address settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Derived {
    /// The address without prefix.
    pub ipaddr: String,
    /// `address/prefix`, or "" when the prefix is unknown.
    pub ip_cidr: String,
    /// Netmask (given, or from the prefix).
    pub netmask: String,
    /// Network address (given, or address & mask).
    pub network: String,
    /// `network/prefix`.
    pub network_cidr: String,
    /// IPv6 address without prefix.
    pub ipaddr6: String,
    /// IPv6 prefix length.
    pub prefixlen6: String,
    /// `address6/prefix`.
    pub ip_cidr6: String,
    /// IPv6 network address.
    pub network6: String,
    /// `network6/prefix`.
    pub network_cidr6: String,
}

impl ServerConf {
    /// Parse one `warewulf.conf` document over the defaults.
    pub fn from_yaml(text: &str) -> Result<ServerConf, RenderError> {
        Self::from_layers([text])
    }

    /// Apply several `warewulf.conf` documents in order, each over the previous ones (maps
    /// merged key by key, other values replaced), then over the defaults.
    pub fn from_layers<'a>(layers: impl IntoIterator<Item = &'a str>) -> Result<ServerConf, RenderError> {
        let mut merged = serde_yaml_ng::Value::Mapping(Default::default());
        for text in layers {
            let doc: serde_yaml_ng::Value =
                serde_yaml_ng::from_str(text).map_err(|e| RenderError::Config { message: e.to_string() })?;
            merge_yaml(&mut merged, doc);
        }
        serde_yaml_ng::from_value(merged).map_err(|e| RenderError::Config { message: e.to_string() })
    }

    /// Addresses and networks in the forms templates use.
    pub fn derived(&self) -> Derived {
        let mut d = Derived::default();
        let (addr, prefix) = split_prefix(&self.ipaddr);
        d.ipaddr = addr.to_owned();
        let v4: Option<Ipv4Addr> = addr.parse().ok();
        d.netmask = if !self.netmask.is_empty() {
            self.netmask.clone()
        } else if let Some(p) = prefix.and_then(|p| p.parse::<u8>().ok()).filter(|p| *p <= 32) {
            mask_from_prefix(p).to_string()
        } else {
            String::new()
        };
        let mask: Option<Ipv4Addr> = d.netmask.parse().ok();
        let plen = mask.map(prefix_of_mask);
        if let (Some(a), Some(p)) = (v4, plen) {
            d.ip_cidr = format!("{a}/{p}");
        }
        d.network = if !self.network.is_empty() {
            self.network.clone()
        } else if let (Some(a), Some(m)) = (v4, mask) {
            Ipv4Addr::from(u32::from(a) & u32::from(m)).to_string()
        } else {
            String::new()
        };
        if let (false, Some(p)) = (d.network.is_empty(), plen) {
            d.network_cidr = format!("{}/{p}", d.network);
        }
        let (addr6, prefix6) = split_prefix(&self.ipaddr6);
        d.ipaddr6 = addr6.to_owned();
        d.prefixlen6 = prefix6.map(str::to_owned).unwrap_or_else(|| self.prefixlen6.clone());
        if let (Ok(a), Ok(p)) = (addr6.parse::<Ipv6Addr>(), d.prefixlen6.parse::<u8>()) {
            if p <= 128 {
                d.ip_cidr6 = format!("{a}/{p}");
                let bits = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                let net = Ipv6Addr::from(u128::from(a) & bits);
                d.network6 = net.to_string();
                d.network_cidr6 = format!("{net}/{p}");
            }
        }
        d
    }
}

/// `a/b` → (`a`, Some(`b`)); `a` → (`a`, None).
pub(crate) fn split_prefix(s: &str) -> (&str, Option<&str>) {
    match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    }
}

pub(crate) fn mask_from_prefix(p: u8) -> Ipv4Addr {
    let bits = if p == 0 { 0 } else { u32::MAX << (32 - u32::from(p)) };
    Ipv4Addr::from(bits)
}

pub(crate) fn prefix_of_mask(m: Ipv4Addr) -> u32 {
    u32::from(m).leading_ones()
}

/// `address/prefix` from an address and a dotted netmask ("" when either is missing).
pub(crate) fn cidr(addr: &str, netmask: &str) -> String {
    match (addr.parse::<IpAddr>(), netmask.parse::<Ipv4Addr>()) {
        (Ok(a), Ok(m)) => format!("{a}/{}", prefix_of_mask(m)),
        _ => String::new(),
    }
}

/// A YAML scalar of any type as text (`prefixlen6: 64` is a number in YAML, a string in
/// Warewulf's struct); `null` is "".
fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string, number or boolean")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<String, E> {
            Ok(String::new())
        }
    }
    d.deserialize_any(V)
}

fn merge_yaml(dst: &mut serde_yaml_ng::Value, src: serde_yaml_ng::Value) {
    use serde_yaml_ng::Value;
    match (dst, src) {
        (Value::Mapping(d), Value::Mapping(s)) => {
            for (k, v) in s {
                match d.get_mut(&k) {
                    Some(dv) => merge_yaml(dv, v),
                    None => {
                        d.insert(k, v);
                    }
                }
            }
        }
        // An empty document (or `~`) changes nothing.
        (_, Value::Null) => {}
        (d, s) => *d = s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_warewulfs() {
        let c = ServerConf::from_yaml("").unwrap();
        assert_eq!(c.warewulf.port, 9873);
        assert!(c.warewulf.secure);
        assert_eq!(c.dhcp.template, "default");
        assert_eq!(c.ssh.key_types, ["ed25519", "ecdsa", "rsa", "dsa"]);
        assert_eq!(c.paths.sysconfdir, "/etc");
        assert_eq!(c.tftp.ipxe["00:0B"], "arm64-efi/snponly.efi");
    }

    #[test]
    fn layers_merge_maps_and_keep_earlier_keys() {
        let c = ServerConf::from_layers([
            "ipaddr6: 2001:db8::1/64\ndhcp:\n  template: static\n  range start: 10.0.0.1\n",
            "ipaddr: 10.0.0.254\ndhcp:\n  range start: 10.0.0.5\nnfs:\n  export paths:\n  - path: /home\n",
        ])
        .unwrap();
        assert_eq!(c.ipaddr6, "2001:db8::1/64");
        assert_eq!(c.dhcp.template, "static");
        assert_eq!(c.dhcp.range_start, "10.0.0.5");
        assert_eq!(c.nfs.export_paths[0].export_options, "rw,sync,no_subtree_check");
        assert!(c.nfs.export_paths[0].mount);
    }

    #[test]
    fn derived_networks() {
        let c = ServerConf::from_yaml("ipaddr: 192.168.0.1/24\nipaddr6: 2001:db8::1/64\n").unwrap();
        let d = c.derived();
        assert_eq!(d.ipaddr, "192.168.0.1");
        assert_eq!(d.netmask, "255.255.255.0");
        assert_eq!(d.network, "192.168.0.0");
        assert_eq!(d.network_cidr, "192.168.0.0/24");
        assert_eq!(d.ip_cidr, "192.168.0.1/24");
        assert_eq!(d.ipaddr6, "2001:db8::1");
        assert_eq!(d.network_cidr6, "2001:db8::/64");
        let c = ServerConf::from_yaml("ipaddr: 192.168.1.254\nnetmask: 255.255.255.0\nnetwork: 192.168.1.0\n").unwrap();
        assert_eq!(c.derived().network_cidr, "192.168.1.0/24");
    }

    #[test]
    fn bad_yaml_is_an_error() {
        assert!(ServerConf::from_yaml("warewulf: [").is_err());
        assert!(ServerConf::from_yaml("warewulf:\n  port: notanumber\n").is_err());
    }
}
