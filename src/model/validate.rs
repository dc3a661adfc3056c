//! Validation of names and field values, and cross-node uniqueness of MAC/IP addresses.
//!
//! Design notes:
//! - Syntax checks use only `std` (no regex crate): names follow [`validate_name`] (safe as
//!   hostnames, DNS labels and file names), addresses are parsed with `std::net`, MACs by hand.
//!   Errors name the node/profile and the field in `wwctl node list -a` notation (`NetDevs[default].Hwaddr`) so operators can find them.
//! - Warewulf 4.6 validates very little at load time; we validate on every write instead, so a
//!   replicated state machine never stores a value that later breaks an overlay template.
//! - Uniqueness is factored into [`unique_keys`] (normalised per node) so a state machine holding
//!   10,000 nodes can keep an index `UniqueKey → node` and check only the node being changed;
//!   [`check_unique`] is the batch form. Within one node duplicates are allowed (a VLAN device
//!   `eth0.100` legitimately shares `eth0`'s MAC).
//! - Unspecified addresses (`0.0.0.0`, `::`) count as unset, as in Warewulf.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::{ModelError, NodeConf, NodesConf};

/// A value that must be unique across nodes, in normalised form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum UniqueKey {
    /// Lowercase, colon-separated MAC address (see [`normalize_mac`]).
    Mac(String),
    /// Canonical text of an IPv4 or IPv6 address (`std::net` display form).
    Ip(String),
}

impl fmt::Display for UniqueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UniqueKey::Mac(m) => write!(f, "MAC address {m}"),
            UniqueKey::Ip(i) => write!(f, "IP address {i}"),
        }
    }
}

/// The longest name [`validate_name`] accepts: one DNS label (RFC 1035), and one less
/// than Linux's `HOST_NAME_MAX` (64), so a node name always fits as its hostname.
pub const MAX_NAME_LEN: usize = 63;

/// What [`validate_name`] allows, for error messages.
const NAME_RULE: &str = "a name is 1 to 63 of the characters A-Z a-z 0-9 '-' '.' '_' ':', \
     does not start with '-' or '.', does not end with '.' and has no '..'";

/// Check a node, profile, image, overlay, network device, ... name. `kind` is used in the
/// message ("node", "profile", "image", ...).
///
/// Names become hostnames, DNS labels, file names and path components (overlay and image
/// directories, URLs), so the rule is what all of those accept, within Warewulf's own
/// character set (`[A-Za-z0-9._:-]`, kept so that Warewulf's nodes.conf files import):
/// - 1 to [`MAX_NAME_LEN`] characters;
/// - only ASCII letters, digits, `-`, `.`, `_`, `:` (so no `/`, whitespace, control characters);
/// - no leading `-` (it would read as a command-line option, and is not a hostname);
/// - dots only between labels: no leading or trailing `.`, no `..`, which also rules out
///   `.` and `..` themselves (this and the parent directory in paths).
///
/// Dots inside are allowed: a node called `n1.rack1` is a fully qualified hostname, as in
/// Warewulf (see docs/COMPATIBILITY.md).
pub fn validate_name(kind: &str, name: &str) -> Result<(), ModelError> {
    let bad = |what: String| ModelError::InvalidName {
        kind: kind.to_owned(),
        name: name.to_owned(),
        reason: format!("{what}; {NAME_RULE}"),
    };
    if name.is_empty() {
        return Err(bad("it is empty".to_owned()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':')))
    {
        let what = if c.is_control() {
            format!("it contains the control character {c:?}")
        } else if c.is_whitespace() {
            format!("it contains whitespace ({c:?})")
        } else {
            format!("the character {c:?} is not allowed")
        };
        return Err(bad(what));
    }
    // Only ASCII from here on, so bytes are characters.
    if name.len() > MAX_NAME_LEN {
        return Err(bad(format!("it is {} characters long", name.len())));
    }
    if name.bytes().all(|b| b == b'.') {
        return Err(bad(
            "it consists only of dots ('.' and '..' mean directories in paths)".to_owned()
        ));
    }
    if name.starts_with('-') {
        return Err(bad("it starts with '-'".to_owned()));
    }
    if name.starts_with('.') || name.ends_with('.') {
        return Err(bad("it starts or ends with '.'".to_owned()));
    }
    if name.contains("..") {
        return Err(bad("it contains '..'".to_owned()));
    }
    Ok(())
}

/// Parse a MAC address and return it in lowercase colon form (`aa:bb:cc:dd:ee:ff`).
///
/// Accepts the forms Go's `net.ParseMAC` accepts (which Warewulf uses): 6, 8 or 20 octets
/// separated by `:` or `-`, or groups of four hex digits separated by `.` (`aabb.ccdd.eeff`).
pub fn normalize_mac(mac: &str) -> Result<String, ModelError> {
    parse_mac(mac).ok_or_else(|| ModelError::InvalidValue {
        owner: "MAC address".to_owned(),
        field: "hardware address".to_owned(),
        value: mac.to_owned(),
        reason: MAC_HINT.to_owned(),
    })
}

const MAC_HINT: &str = "expected six hex octets such as aa:bb:cc:dd:ee:ff (8 or 20 octets for InfiniBand)";

fn parse_mac(mac: &str) -> Option<String> {
    let mut octets: Vec<u8> = Vec::with_capacity(20);
    if mac.contains('.') {
        for group in mac.split('.') {
            if group.len() != 4 {
                return None;
            }
            let v = u16::from_str_radix(group, 16).ok()?;
            if !group.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            octets.extend(v.to_be_bytes());
        }
    } else {
        let sep = if mac.contains('-') { '-' } else { ':' };
        for part in mac.split(sep) {
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            octets.push(u8::from_str_radix(part, 16).ok()?);
        }
    }
    if !matches!(octets.len(), 6 | 8 | 20) {
        return None;
    }
    let mut out = String::with_capacity(octets.len() * 3);
    for (i, o) in octets.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{o:02x}"));
    }
    Some(out)
}

/// Field-level checker that remembers which node/profile it is looking at.
struct Checker<'a> {
    owner: &'a str,
}

impl Checker<'_> {
    fn invalid(&self, field: &str, value: &str, reason: &str) -> ModelError {
        ModelError::InvalidValue {
            owner: self.owner.to_owned(),
            field: field.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        }
    }

    fn mac(&self, field: &str, v: &Option<String>) -> Result<(), ModelError> {
        match v {
            Some(s) if parse_mac(s).is_none() => Err(self.invalid(field, s, MAC_HINT)),
            _ => Ok(()),
        }
    }

    fn ipv4(&self, field: &str, v: &Option<String>) -> Result<(), ModelError> {
        match v {
            Some(s) if s.parse::<Ipv4Addr>().is_err() => {
                Err(self.invalid(field, s, "expected an IPv4 address such as 10.0.0.1"))
            }
            _ => Ok(()),
        }
    }

    fn ipv6(&self, field: &str, v: &Option<String>) -> Result<(), ModelError> {
        match v {
            Some(s) if s.parse::<Ipv6Addr>().is_err() => Err(self.invalid(
                field,
                s,
                "expected an IPv6 address such as fd00::1 (without a /prefix; set prefixlen6 separately)",
            )),
            _ => Ok(()),
        }
    }

    fn ip(&self, field: &str, v: &Option<String>) -> Result<(), ModelError> {
        match v {
            Some(s) if s.parse::<IpAddr>().is_err() => {
                Err(self.invalid(field, s, "expected an IPv4 or IPv6 address such as 10.0.0.1"))
            }
            _ => Ok(()),
        }
    }

    fn netmask(&self, field: &str, v: &Option<String>) -> Result<(), ModelError> {
        let Some(s) = v else { return Ok(()) };
        let hint = "expected a dotted IPv4 netmask with contiguous ones, such as 255.255.255.0";
        let mask = s.parse::<Ipv4Addr>().map_err(|_| self.invalid(field, s, hint))?;
        let bits = u32::from(mask);
        // Contiguous: the inverted mask plus one is a power of two (or zero for /0).
        if (!bits).wrapping_add(1) & !bits != 0 {
            return Err(self.invalid(field, s, hint));
        }
        Ok(())
    }

    fn uint(&self, field: &str, v: &Option<String>, min: u64, max: u64) -> Result<(), ModelError> {
        let Some(s) = v else { return Ok(()) };
        match s.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(()),
            _ => Err(self.invalid(field, s, &format!("expected a whole number from {min} to {max}"))),
        }
    }

    fn name(&self, kind: &str, name: &str) -> Result<(), ModelError> {
        validate_name(kind, name).map_err(|e| match e {
            ModelError::InvalidName { kind, name, reason } => ModelError::InvalidName {
                kind: format!("{kind} (in {})", self.owner),
                name,
                reason,
            },
            other => other,
        })
    }

    fn non_empty_key(&self, field: &str, key: &str) -> Result<(), ModelError> {
        if key.trim().is_empty() {
            return Err(self.invalid(field, key, "keys must not be empty"));
        }
        Ok(())
    }
}

/// Check the syntax of every value in one node or profile: the names it refers to (profiles,
/// image, overlays, network devices, partitions), MAC and IP addresses, netmasks, MTU, IPMI
/// port, partition numbers and sizes.
pub fn validate_conf(name: &str, conf: &NodeConf) -> Result<(), ModelError> {
    let c = Checker { owner: name };
    // `~x` in a list removes an inherited `x` (see merge), so the name is what follows `~`.
    for p in &conf.profiles {
        c.name("profile", p.strip_prefix('~').unwrap_or(p))?;
    }
    if let Some(image) = &conf.image_name {
        c.name("image", image)?;
    }
    for o in conf.system_overlay.iter().chain(&conf.runtime_overlay) {
        c.name("overlay", o.strip_prefix('~').unwrap_or(o))?;
    }
    if let Some(ipmi) = &conf.ipmi {
        c.ip("Ipmi.Ipaddr", &ipmi.ipaddr)?;
        c.ip("Ipmi.Gateway", &ipmi.gateway)?;
        c.netmask("Ipmi.Netmask", &ipmi.netmask)?;
        c.uint("Ipmi.Port", &ipmi.port, 1, 65535)?;
        for k in ipmi.tags.keys() {
            c.non_empty_key("Ipmi.Tags", k)?;
        }
    }
    for (dev, nd) in &conf.network_devices {
        c.name("network device", dev)?;
        let f = |x: &str| format!("NetDevs[{dev}].{x}");
        c.mac(&f("Hwaddr"), &nd.hwaddr)?;
        c.ipv4(&f("Ipaddr"), &nd.ipaddr)?;
        c.netmask(&f("Netmask"), &nd.netmask)?;
        c.ipv4(&f("Gateway"), &nd.gateway)?;
        c.ipv6(&f("Ipaddr6"), &nd.ipaddr6)?;
        c.uint(&f("PrefixLen6"), &nd.prefixlen6, 0, 128)?;
        c.ipv6(&f("Gateway6"), &nd.gateway6)?;
        c.uint(&f("MTU"), &nd.mtu, 68, 65535)?;
        for k in nd.tags.keys() {
            c.non_empty_key(&f("Tags"), k)?;
        }
    }
    if let Some(p) = &conf.primary_network {
        c.name("primary network", p)?;
    }
    for k in conf.tags.keys() {
        c.non_empty_key("Tags", k)?;
    }
    for (disk, d) in &conf.disks {
        c.non_empty_key("Disks", disk)?;
        for (part, p) in &d.partitions {
            c.name("partition", part)?;
            let f = |x: &str| format!("Disks[{disk}].Partitions[{part}].{x}");
            c.uint(&f("Number"), &p.number, 1, 128)?;
            c.uint(&f("SizeMiB"), &p.size_mib, 0, u64::MAX)?;
            c.uint(&f("StartMiB"), &p.start_mib, 0, u64::MAX)?;
        }
    }
    for fs in conf.filesystems.keys() {
        c.non_empty_key("FileSystems", fs)?;
    }
    for r in conf.resources.keys() {
        c.non_empty_key("Resources", r)?;
    }
    Ok(())
}

/// [`validate_conf`] plus the profile-only rule: `asset key` and `discoverable` belong to nodes
/// (Warewulf 4.6's profile type does not have them and would silently drop them).
pub fn validate_profile_conf(name: &str, conf: &NodeConf) -> Result<(), ModelError> {
    let node_only = |field: &str| ModelError::NodeOnlyField {
        profile: name.to_owned(),
        field: field.to_owned(),
    };
    if conf.asset_key.is_some() {
        return Err(node_only("asset key"));
    }
    if conf.discoverable.is_some() {
        return Err(node_only("discoverable"));
    }
    validate_conf(name, conf)
}

/// Validate a whole document: every name, every node and profile, every profile reference, and
/// cross-node uniqueness of MAC and IP addresses.
pub fn validate_nodes_conf(conf: &NodesConf) -> Result<(), ModelError> {
    for (name, p) in &conf.nodeprofiles {
        validate_name("profile", name)?;
        validate_profile_conf(name, p)?;
        check_profile_refs("profile", name, p, conf)?;
    }
    for (name, n) in &conf.nodes {
        validate_name("node", name)?;
        validate_conf(name, n)?;
        check_profile_refs("node", name, n, conf)?;
    }
    check_unique(conf.nodes.iter().map(|(k, v)| (k.as_str(), v)))
}

fn check_profile_refs(kind: &str, name: &str, c: &NodeConf, conf: &NodesConf) -> Result<(), ModelError> {
    for p in &c.profiles {
        if !p.starts_with('~') && !conf.nodeprofiles.contains_key(p) {
            return Err(ModelError::UnknownProfile {
                kind: kind.to_owned(),
                name: name.to_owned(),
                profile: p.clone(),
            });
        }
    }
    Ok(())
}

fn ip_key(s: &str) -> Option<UniqueKey> {
    match s.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => None,
        Ok(ip) => Some(UniqueKey::Ip(ip.to_string())),
        Err(_) => Some(UniqueKey::Ip(s.to_ascii_lowercase())),
    }
}

/// The normalised MACs and IPs (`ipaddr`, `ipaddr6` of every network device and the IPMI
/// address) that must not appear on any other node; sorted and without duplicates.
pub fn unique_keys(conf: &NodeConf) -> Vec<UniqueKey> {
    let mut keys = BTreeSet::new();
    for nd in conf.network_devices.values() {
        if let Some(mac) = &nd.hwaddr {
            keys.insert(UniqueKey::Mac(
                parse_mac(mac).unwrap_or_else(|| mac.to_ascii_lowercase()),
            ));
        }
        keys.extend(nd.ipaddr.as_deref().and_then(ip_key));
        keys.extend(nd.ipaddr6.as_deref().and_then(ip_key));
    }
    if let Some(ipmi) = &conf.ipmi {
        keys.extend(ipmi.ipaddr.as_deref().and_then(ip_key));
    }
    keys.into_iter().collect()
}

/// Fail if two different nodes share a MAC or IP address (see [`unique_keys`]). The error names
/// the value and both nodes (the first one seen, in iteration order, and the later one).
pub fn check_unique<'a>(nodes: impl IntoIterator<Item = (&'a str, &'a NodeConf)>) -> Result<(), ModelError> {
    let mut seen: HashMap<UniqueKey, &'a str> = HashMap::new();
    for (name, conf) in nodes {
        for key in unique_keys(conf) {
            match seen.get(&key) {
                Some(first) if *first != name => {
                    return Err(ModelError::Duplicate {
                        key,
                        first: (*first).to_owned(),
                        second: name.to_owned(),
                    })
                }
                Some(_) => {}
                None => {
                    seen.insert(key, name);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{parse_node_conf, parse_nodes_conf, IpmiConf, NetDev};

    fn node_with(dev: NetDev) -> NodeConf {
        let mut n = NodeConf::default();
        n.network_devices.insert("default".into(), dev);
        n
    }

    fn name_error(name: &str) -> String {
        validate_name("node", name).unwrap_err().to_string()
    }

    #[test]
    fn accepted_names() {
        let longest = "a".repeat(MAX_NAME_LEN);
        let dotted_longest = format!("n1.{}", "b".repeat(MAX_NAME_LEN - 3));
        for ok in [
            "n1",
            "node-001",
            "a.b_c:d",
            "N0",
            "n0001.rack12.cluster",
            "x",
            "0",
            "_x",
            "n1-",
            longest.as_str(),
            dotted_longest.as_str(),
        ] {
            validate_name("node", ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn every_rejected_class_says_what_is_wrong_and_what_is_allowed() {
        let rule = "1 to 63 of the characters A-Z a-z 0-9";
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "it is empty"),
            (".".into(), "only of dots"),
            ("..".into(), "only of dots"),
            ("...".into(), "only of dots"),
            ("a".repeat(64), "64 characters long"),
            ("a".repeat(300), "300 characters long"),
            ("p/1".into(), "'/' is not allowed"),
            ("../etc".into(), "'/' is not allowed"),
            ("bad name".into(), "whitespace (' ')"),
            ("n1\t".into(), "control character '\\t'"),
            ("n\n1".into(), "control character '\\n'"),
            ("n1\0".into(), "control character '\\0'"),
            ("n\u{7f}".into(), "control character '\\u{7f}'"),
            ("n\u{a0}1".into(), "whitespace"),
            ("~p".into(), "'~' is not allowed"),
            ("nöde".into(), "'ö' is not allowed"),
            ("-n1".into(), "starts with '-'"),
            (".hidden".into(), "starts or ends with '.'"),
            ("n1.".into(), "starts or ends with '.'"),
            ("a..b".into(), "contains '..'"),
        ];
        for (name, what) in &cases {
            let e = name_error(name);
            assert!(e.starts_with("invalid node name \""), "{name:?}: {e}");
            assert!(e.contains(what), "{name:?}: expected {what:?} in {e}");
            assert!(e.contains(rule), "{name:?}: the rule is missing from {e}");
        }
        // A long name is cut short in the message; the reason gives its length.
        let e = name_error(&"a".repeat(300));
        assert!(e.len() < 300, "{e}");
        assert!(e.contains(&format!("\"{}\"...", "a".repeat(40))), "{e}");
        // The kind is part of the message.
        let e = validate_name("image", "..").unwrap_err().to_string();
        assert!(e.starts_with("invalid image name \"..\""), "{e}");
    }

    #[test]
    fn names_a_node_refers_to_are_checked() {
        let refs = |f: &dyn Fn(&mut NodeConf)| {
            let mut n = NodeConf::default();
            f(&mut n);
            validate_conf("n1", &n).map_err(|e| e.to_string())
        };
        let e = refs(&|n| n.image_name = Some("../rocky".into())).unwrap_err();
        assert!(e.contains("image (in n1) name \"../rocky\""), "{e}");
        let e = refs(&|n| n.system_overlay = vec!["wwinit".into(), "..".into()]).unwrap_err();
        assert!(e.contains("overlay (in n1) name \"..\""), "{e}");
        let e = refs(&|n| n.runtime_overlay = vec!["~a/b".into()]).unwrap_err();
        assert!(e.contains("overlay (in n1) name \"a/b\""), "{e}");
        let long = "o".repeat(64);
        let e = refs(&|n| n.runtime_overlay = vec![long.clone()]).unwrap_err();
        assert!(e.contains("64 characters long"), "{e}");
        refs(&|n| {
            n.image_name = Some("rockylinux-9".into());
            n.system_overlay = vec!["wwinit".into(), "~generic".into()];
            n.runtime_overlay = vec!["ssh.authorized_keys".into()];
        })
        .unwrap();
    }

    #[test]
    fn macs() {
        assert_eq!(normalize_mac("AA:BB:CC:DD:EE:0F").unwrap(), "aa:bb:cc:dd:ee:0f");
        assert_eq!(normalize_mac("aa-bb-cc-dd-ee-ff").unwrap(), "aa:bb:cc:dd:ee:ff");
        assert_eq!(normalize_mac("aabb.ccdd.eeff").unwrap(), "aa:bb:cc:dd:ee:ff");
        assert_eq!(
            normalize_mac("00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01")
                .unwrap()
                .len(),
            59
        );
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:gg",
            "aabbccddeeff",
            "a:b:c:d:e:f",
            "aa:bb-cc:dd:ee:ff",
            "+a:bb:cc:dd:ee:ff",
            "aabb.ccdd.+eff",
        ] {
            let e = normalize_mac(bad).unwrap_err().to_string();
            assert!(e.contains("aa:bb:cc:dd:ee:ff"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        let n = node_with(NetDev {
            hwaddr: Some("zz:bb:cc:dd:ee:ff".into()),
            ..Default::default()
        });
        let e = validate_conf("n1", &n).unwrap_err().to_string();
        assert!(
            e.starts_with("n1: invalid NetDevs[default].Hwaddr \"zz:bb:cc:dd:ee:ff\""),
            "{e}"
        );

        let n = node_with(NetDev {
            ipaddr: Some("10.0.0.256".into()),
            ..Default::default()
        });
        let e = validate_conf("n1", &n).unwrap_err().to_string();
        assert!(e.contains("NetDevs[default].Ipaddr") && e.contains("IPv4"), "{e}");

        let n = node_with(NetDev {
            ipaddr6: Some("fd00::1/64".into()),
            ..Default::default()
        });
        assert!(validate_conf("n1", &n).unwrap_err().to_string().contains("prefixlen6"));

        let n = node_with(NetDev {
            netmask: Some("255.0.255.0".into()),
            ..Default::default()
        });
        assert!(validate_conf("n1", &n).unwrap_err().to_string().contains("contiguous"));
        let n = node_with(NetDev {
            netmask: Some("255.255.240.0".into()),
            ..Default::default()
        });
        validate_conf("n1", &n).unwrap();

        let n = node_with(NetDev {
            mtu: Some("jumbo".into()),
            ..Default::default()
        });
        assert!(validate_conf("n1", &n).unwrap_err().to_string().contains("MTU"));
        let n = node_with(NetDev {
            mtu: Some("9000".into()),
            prefixlen6: Some("64".into()),
            ..Default::default()
        });
        validate_conf("n1", &n).unwrap();

        let mut n = NodeConf::default();
        n.network_devices.insert("eth 0".into(), NetDev::default());
        let e = validate_conf("n1", &n).unwrap_err().to_string();
        assert!(e.contains("network device (in n1) name \"eth 0\""), "{e}");

        let n = NodeConf {
            profiles: vec!["ok".into(), "~gone".into(), "b@d".into()],
            ..Default::default()
        };
        assert!(validate_conf("n1", &n).unwrap_err().to_string().contains("b@d"));

        let n = NodeConf {
            ipmi: Some(IpmiConf {
                ipaddr: Some("bmc-1".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(validate_conf("n1", &n).unwrap_err().to_string().contains("Ipmi.Ipaddr"));
        let n = NodeConf {
            ipmi: Some(IpmiConf {
                port: Some("70000".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(validate_conf("n1", &n).unwrap_err().to_string().contains("Ipmi.Port"));
    }

    #[test]
    fn profile_rules() {
        let p = parse_node_conf("asset key: x\n").unwrap();
        let e = validate_profile_conf("default", &p).unwrap_err().to_string();
        assert!(e.contains("asset key can only be set on nodes"), "{e}");
        validate_conf("n1", &p).unwrap();
    }

    #[test]
    fn realistic_document_is_valid() {
        let conf = parse_nodes_conf(include_str!("testdata/nodes.conf")).unwrap();
        validate_nodes_conf(&conf).unwrap();
        let mut broken = conf.clone();
        broken.nodes.get_mut("n0003").unwrap().profiles.push("nope".into());
        let e = validate_nodes_conf(&broken).unwrap_err().to_string();
        assert!(e.contains("node \"n0003\" uses profile \"nope\""), "{e}");
    }

    #[test]
    fn duplicates_across_nodes() {
        let a = node_with(NetDev {
            hwaddr: Some("AA:BB:CC:DD:EE:FF".into()),
            ipaddr: Some("10.0.0.1".into()),
            ..Default::default()
        });
        let b = node_with(NetDev {
            hwaddr: Some("aa-bb-cc-dd-ee-ff".into()),
            ..Default::default()
        });
        let e = check_unique([("n1", &a), ("n2", &b)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "MAC address aa:bb:cc:dd:ee:ff is used by both node \"n1\" and node \"n2\"; every node needs its own, change or unset one of them"
        );

        let c = node_with(NetDev {
            ipaddr: Some("10.0.0.1".into()),
            ..Default::default()
        });
        let e = check_unique([("n1", &a), ("n3", &c)]).unwrap_err().to_string();
        assert!(e.contains("IP address 10.0.0.1") && e.contains("n3"), "{e}");

        // IPv6 is compared in canonical form, IPMI addresses count too.
        let d = node_with(NetDev {
            ipaddr6: Some("fd00:0::1".into()),
            ..Default::default()
        });
        let f = node_with(NetDev {
            ipaddr6: Some("FD00::1".into()),
            ..Default::default()
        });
        assert!(check_unique([("d", &d), ("f", &f)]).is_err());
        let g = NodeConf {
            ipmi: Some(IpmiConf {
                ipaddr: Some("10.0.0.1".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(check_unique([("n1", &a), ("g", &g)]).is_err());

        // Same MAC on two devices of one node (VLAN) is fine; unspecified addresses are unset.
        let mut vlan = a.clone();
        vlan.network_devices.insert(
            "eth0.100".into(),
            NetDev {
                hwaddr: Some("aa:bb:cc:dd:ee:ff".into()),
                ..Default::default()
            },
        );
        let z1 = node_with(NetDev {
            ipaddr: Some("0.0.0.0".into()),
            ..Default::default()
        });
        let z2 = z1.clone();
        check_unique([("n1", &vlan), ("z1", &z1), ("z2", &z2)]).unwrap();
    }

    #[test]
    fn unique_keys_are_normalised_and_sorted() {
        let mut n = node_with(NetDev {
            hwaddr: Some("AA:BB:CC:DD:EE:FF".into()),
            ipaddr: Some("10.0.0.1".into()),
            ipaddr6: Some("FD00::0:1".into()),
            ..Default::default()
        });
        n.ipmi = Some(IpmiConf {
            ipaddr: Some("10.1.0.1".into()),
            ..Default::default()
        });
        assert_eq!(
            unique_keys(&n),
            vec![
                UniqueKey::Mac("aa:bb:cc:dd:ee:ff".into()),
                UniqueKey::Ip("10.0.0.1".into()),
                UniqueKey::Ip("10.1.0.1".into()),
                UniqueKey::Ip("fd00::1".into()),
            ]
        );
    }
}
