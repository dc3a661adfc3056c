//! The `boot: dhcp:` section of `wulfd.yaml`.
//!
//! Two types, as everywhere in wulfpack: [`DhcpConfigWire`] is exactly what the operator
//! writes (serde, `deny_unknown_fields`, so a typo is an error rather than a silently
//! ignored setting), and [`DhcpConfig`] is the checked form the server uses (parsed
//! networks, indices instead of names, defaults filled in). The conversion
//! ([`TryFrom`]) rejects everything that would make the server answer where it should
//! not or hand out an address that cannot work, with an error naming the key and the fix.
//! `DhcpConfig` deserializes through the wire type, so the daemon can embed it directly.
//!
//! ```yaml
//! boot:
//!   dhcp:
//!     # Interfaces this head answers DHCP on. Empty or absent: DHCP is off.
//!     interfaces:
//!       - name: br0              # Linux interface name (the socket is bound to it)
//!         subnets: [rack1]       # subnets directly on this link
//!     # Warewulf's default HTTP port; the host is each subnet's `server`.
//!     http_port: 9873
//!     # iPXE binary (TFTP path) by client architecture (option 93), like warewulf.conf's
//!     # `tftp: ipxe:`. Keys: "00:0B", "0x0b" or 11. Giving the table replaces the defaults:
//!     # 0 → undionly.kpxe, 7 and 9 → snponly.efi, 0xB → arm64-efi/snponly.efi,
//!     # 0x10 (x64 HTTP) → snponly.efi, 0x13 (arm64 HTTP) → arm64-efi/snponly.efi.
//!     ipxe:
//!       "00:00": undionly.kpxe
//!       "00:07": snponly.efi
//!     # Path of the node's iPXE script, given to clients that already run iPXE;
//!     # {mac} becomes the client's MAC (aa-bb-cc-dd-ee-ff); ${...} is expanded by iPXE.
//!     ipxe_url_path: "/ipxe/{mac}?assetkey=${asset}&uuid=${uuid}"
//!     # Path given to UEFI HTTP boot clients (option 60 "HTTPClient"); {file} becomes the
//!     # `ipxe` table entry for the client's architecture.
//!     http_boot_path: "/efiboot/{file}"
//!     subnets:
//!       rack1:
//!         network: 10.99.0.0/24  # CIDR
//!         server: 10.99.0.1      # this head's address for these clients: server id,
//!                                # siaddr (TFTP next-server), host of the HTTP boot URL
//!         router: 10.99.0.254    # option 3 unless the node's device has a gateway
//!         dns: [10.99.0.1]       # option 6 unless the node has a `dns` tag
//!         domain: cluster.local  # option 15
//!         lease_time: 2h         # option 51; humantime ("90m") or seconds
//!         pool: {start: 10.99.0.100, end: 10.99.0.199}   # addresses for unknown MACs
//!         relayed: false         # also accept relayed requests whose giaddr is in `network`
//!         http_base: "http://10.99.0.1:9873"   # optional; default http://<server>:<http_port>
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Warewulf's default HTTP port.
pub const DEFAULT_HTTP_PORT: u16 = 9873;
/// Default lease: static nodes never change address, so a long lease only saves renewal
/// traffic (10,000 nodes renewing every hour is about 3 requests per second).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(7200);
/// Default path of a node's iPXE script (Warewulf's route and query parameters).
pub const DEFAULT_IPXE_URL_PATH: &str = "/ipxe/{mac}?assetkey=${asset}&uuid=${uuid}";
/// Default path for UEFI HTTP boot clients.
pub const DEFAULT_HTTP_BOOT_PATH: &str = "/efiboot/{file}";

/// The default iPXE table (client architecture → binary), Debian's `ipxe` package names.
///
/// x86-64 UEFI gets `snponly.efi`, as in Warewulf's default `warewulf.conf`: it drives the
/// NIC through the firmware's own network interface (SNP), so it works on any NIC the
/// firmware can PXE-boot from. (Debian's `/usr/lib/ipxe/ipxe.efi` is moreover a symlink to
/// `/boot/ipxe.efi`, outside the TFTP root, which the TFTP server refuses to follow.)
pub fn default_ipxe_table() -> BTreeMap<u16, String> {
    [
        (0x00, "undionly.kpxe"),
        (0x07, "snponly.efi"),
        (0x09, "snponly.efi"),
        (0x0B, "arm64-efi/snponly.efi"),
        (0x10, "snponly.efi"),
        (0x13, "arm64-efi/snponly.efi"),
    ]
    .into_iter()
    .map(|(a, f)| (a, f.to_owned()))
    .collect()
}

/// `boot: dhcp:` as written in `wulfd.yaml` (see the module documentation for every key).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpConfigWire {
    /// Interfaces to answer on; empty means DHCP is off.
    #[serde(default)]
    pub interfaces: Vec<InterfaceWire>,
    /// Served subnets by name.
    #[serde(default)]
    pub subnets: BTreeMap<String, SubnetWire>,
    /// HTTP port of the boot server (default 9873).
    #[serde(default)]
    pub http_port: Option<u16>,
    /// iPXE binaries by client architecture; replaces the default table when given.
    #[serde(default)]
    pub ipxe: Option<BTreeMap<ArchKey, String>>,
    /// Path of the iPXE script URL (`{mac}` placeholder).
    #[serde(default)]
    pub ipxe_url_path: Option<String>,
    /// Path of the UEFI HTTP boot URL (`{file}` placeholder).
    #[serde(default)]
    pub http_boot_path: Option<String>,
    /// Requests allowed per client MAC (default 10 per second, bursts of 30).
    #[serde(default)]
    pub rate_limit: Option<RateLimitWire>,
}

/// `rate_limit`: requests per client MAC; `per_mac_per_sec: 0` turns the limit off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitWire {
    #[serde(default)]
    pub per_mac_per_sec: Option<f64>,
    #[serde(default)]
    pub burst: Option<f64>,
}

/// One entry of `interfaces`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceWire {
    /// Linux interface name.
    pub name: String,
    /// Names of subnets (keys of `subnets`) directly attached to this link.
    #[serde(default)]
    pub subnets: Vec<String>,
}

/// One entry of `subnets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetWire {
    /// CIDR, e.g. `10.99.0.0/24`.
    pub network: String,
    /// This head's address as seen by these clients.
    pub server: Ipv4Addr,
    #[serde(default)]
    pub router: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub lease_time: Option<DurationWire>,
    #[serde(default)]
    pub pool: Option<PoolWire>,
    #[serde(default)]
    pub relayed: bool,
    #[serde(default)]
    pub http_base: Option<String>,
}

/// `pool: {start, end}`, both inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolWire {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

/// A duration as seconds or humantime text (`90m`, `2h`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DurationWire {
    Secs(u64),
    Text(String),
}

/// A key of the `ipxe` table: an integer or text (`"00:0B"`, `"0x0b"`, `"11"`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ArchKey {
    Num(u64),
    Text(String),
}

impl ArchKey {
    fn parse(&self) -> Option<u16> {
        match self {
            ArchKey::Num(n) => u16::try_from(*n).ok(),
            ArchKey::Text(t) => {
                let t = t.trim();
                if let Some((hi, lo)) = t.split_once(':') {
                    let hi = u8::from_str_radix(hi, 16).ok()?;
                    let lo = u8::from_str_radix(lo, 16).ok()?;
                    Some(u16::from_be_bytes([hi, lo]))
                } else if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                    u16::from_str_radix(h, 16).ok()
                } else {
                    t.parse().ok()
                }
            }
        }
    }
}

/// A configuration problem: which key, what is wrong, what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("boot.dhcp.{key}: {problem}; {fix}")]
pub struct DhcpConfigError {
    /// Dotted path of the offending key, e.g. `subnets.rack1.pool`.
    pub key: String,
    pub problem: String,
    pub fix: String,
}

fn bad(key: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> DhcpConfigError {
    DhcpConfigError {
        key: key.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// The checked `boot: dhcp:` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "DhcpConfigWire")]
pub struct DhcpConfig {
    pub interfaces: Vec<Interface>,
    /// Subnets in name order, then racks (see [`DhcpConfig::with_racks`]);
    /// [`Interface::subnets`] index into this.
    pub subnets: Vec<Subnet>,
    /// Port of this head's boot HTTP server (the host is each subnet's `server`).
    pub http_port: u16,
    pub ipxe: BTreeMap<u16, String>,
    pub ipxe_url_path: String,
    pub http_boot_path: String,
    /// Requests per client MAC (None: no limit).
    pub rate_limit: Option<super::limit::RateLimit>,
}

/// An interface this head answers on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// Indices into [`DhcpConfig::subnets`] of the subnets directly on this link.
    pub subnets: Vec<usize>,
}

/// A served subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub name: String,
    pub network: Ipv4Net,
    pub server: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_secs: u32,
    pub pool: Option<Pool>,
    pub relayed: bool,
    /// `http://host:port`, no trailing slash.
    pub http_base: String,
    /// Set when the subnet is a rack of the replicated state: the heads that serve it in
    /// order, so only the first healthy one answers (see `handlers::RackTurn`). `None`
    /// for a subnet of `wulfd.yaml`, which this head always answers.
    pub rack: Option<RackOrder>,
}

/// The order of the heads serving a rack, and this head's place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RackOrder {
    /// Raft ids of the rack's heads, first preferred.
    pub heads: Vec<u64>,
    /// This head's index in `heads`.
    pub me: usize,
}

impl RackOrder {
    /// The heads that answer before this one.
    pub fn before_me(&self) -> &[u64] {
        &self.heads[..self.me]
    }
}

/// A dynamic range, both ends inclusive, inside its subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl Pool {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.start <= ip && ip <= self.end
    }

    /// Number of addresses in the pool.
    pub fn size(&self) -> u64 {
        u64::from(u32::from(self.end)) - u64::from(u32::from(self.start)) + 1
    }
}

impl Default for DhcpConfig {
    /// DHCP off.
    fn default() -> Self {
        DhcpConfig {
            interfaces: Vec::new(),
            subnets: Vec::new(),
            http_port: DEFAULT_HTTP_PORT,
            ipxe: default_ipxe_table(),
            ipxe_url_path: DEFAULT_IPXE_URL_PATH.to_owned(),
            http_boot_path: DEFAULT_HTTP_BOOT_PATH.to_owned(),
            rate_limit: Some(super::limit::RateLimit::default()),
        }
    }
}

impl DhcpConfig {
    /// Whether the server has anything to do.
    pub fn enabled(&self) -> bool {
        !self.interfaces.is_empty()
    }

    pub fn interface(&self, name: &str) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.name == name)
    }

    /// The subnet accepting relayed requests from `giaddr`, if any.
    pub fn relayed_subnet(&self, giaddr: Ipv4Addr) -> Option<&Subnet> {
        self.subnets.iter().find(|s| s.relayed && s.network.contains(&giaddr))
    }

    /// Parse the YAML text of the section alone (tests, tools).
    pub fn from_yaml(text: &str) -> Result<DhcpConfig, DhcpConfigError> {
        let wire: DhcpConfigWire = serde_yaml_ng::from_str(text)
            .map_err(|e| bad("", format!("not valid YAML: {e}"), "fix the section and restart wulfd"))?;
        DhcpConfig::try_from(wire)
    }
}

impl TryFrom<DhcpConfigWire> for DhcpConfig {
    type Error = DhcpConfigError;

    fn try_from(w: DhcpConfigWire) -> Result<Self, Self::Error> {
        let http_port = w.http_port.unwrap_or(DEFAULT_HTTP_PORT);
        if http_port == 0 {
            return Err(bad(
                "http_port",
                "port 0 cannot be reached",
                "give the boot HTTP server's port",
            ));
        }
        let mut subnets = Vec::with_capacity(w.subnets.len());
        for (name, s) in &w.subnets {
            subnets.push(check_subnet(name, s, http_port)?);
        }
        for (i, a) in subnets.iter().enumerate() {
            for b in &subnets[i + 1..] {
                if a.network.contains(&b.network.network()) || b.network.contains(&a.network.network()) {
                    return Err(bad(
                        format!("subnets.{}.network", b.name),
                        format!("{} overlaps subnet {} ({})", b.network, a.name, a.network),
                        "give each subnet its own network so a client's subnet is unambiguous",
                    ));
                }
            }
        }
        let index: BTreeMap<&str, usize> = subnets.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
        let mut interfaces: Vec<Interface> = Vec::with_capacity(w.interfaces.len());
        let mut used = BTreeSet::new();
        for (n, i) in w.interfaces.iter().enumerate() {
            let key = format!("interfaces[{n}]");
            check_ifname(&i.name).map_err(|p| bad(format!("{key}.name"), p, "give the Linux name, e.g. eth1"))?;
            if interfaces.iter().any(|x| x.name == i.name) {
                return Err(bad(
                    format!("{key}.name"),
                    format!("interface {} is listed twice", i.name),
                    "list each interface once, with all its subnets",
                ));
            }
            // No subnets: the interface serves the racks (`wwctl rack`) whose address of
            // this head is on it, and relayed requests that arrive on it.
            let mut idx = Vec::new();
            for s in &i.subnets {
                let Some(&k) = index.get(s.as_str()) else {
                    return Err(bad(
                        format!("{key}.subnets"),
                        format!("subnet {s:?} is not defined"),
                        "define it under boot.dhcp.subnets or fix the name",
                    ));
                };
                if !idx.contains(&k) {
                    idx.push(k);
                }
                used.insert(k);
            }
            interfaces.push(Interface {
                name: i.name.clone(),
                subnets: idx,
            });
        }
        for (k, s) in subnets.iter().enumerate() {
            if !used.contains(&k) && !s.relayed {
                return Err(bad(
                    format!("subnets.{}", s.name),
                    "the subnet is neither on an interface nor relayed, so it would never be served",
                    "add it to an interface's subnets or set relayed: true",
                ));
            }
        }
        let ipxe = match &w.ipxe {
            None => default_ipxe_table(),
            Some(t) => {
                let mut out = BTreeMap::new();
                for (k, f) in t {
                    let arch = k.parse().ok_or_else(|| {
                        bad(
                            "ipxe",
                            format!("{k:?} is not a client architecture"),
                            "write it as \"00:0B\", \"0x0b\" or 11 (RFC 4578 option 93)",
                        )
                    })?;
                    if f.is_empty() || f.len() > 127 || f.contains("..") {
                        return Err(bad(
                            format!("ipxe.{arch:#06x}"),
                            format!("{f:?} is not a usable TFTP path"),
                            "give a relative path of at most 127 bytes inside the TFTP root",
                        ));
                    }
                    out.insert(arch, f.clone());
                }
                out
            }
        };
        let ipxe_url_path = check_path(
            "ipxe_url_path",
            w.ipxe_url_path.as_deref(),
            DEFAULT_IPXE_URL_PATH,
            "{mac}",
        )?;
        let http_boot_path = check_path(
            "http_boot_path",
            w.http_boot_path.as_deref(),
            DEFAULT_HTTP_BOOT_PATH,
            "{file}",
        )?;
        let rate_limit = check_rate_limit(w.rate_limit.as_ref())?;
        Ok(DhcpConfig {
            interfaces,
            subnets,
            http_port,
            ipxe,
            ipxe_url_path,
            http_boot_path,
            rate_limit,
        })
    }
}

fn check_rate_limit(w: Option<&RateLimitWire>) -> Result<Option<super::limit::RateLimit>, DhcpConfigError> {
    let d = super::limit::RateLimit::default();
    let Some(w) = w else { return Ok(Some(d)) };
    let per_sec = w.per_mac_per_sec.unwrap_or(d.per_sec);
    if per_sec == 0.0 {
        return Ok(None);
    }
    let burst = w.burst.unwrap_or(d.burst.max(per_sec * 3.0));
    if !per_sec.is_finite() || per_sec < 0.0 {
        return Err(bad(
            "rate_limit.per_mac_per_sec",
            format!("{per_sec} is not a rate"),
            "give requests per second per MAC (default 10), or 0 for no limit",
        ));
    }
    if !burst.is_finite() || burst < 1.0 {
        return Err(bad(
            "rate_limit.burst",
            format!("{burst} lets no request through"),
            "give how many requests one MAC may send at once (default 30, at least 1)",
        ));
    }
    Ok(Some(super::limit::RateLimit { per_sec, burst }))
}

fn check_path(key: &str, given: Option<&str>, default: &str, placeholder: &str) -> Result<String, DhcpConfigError> {
    let p = given.unwrap_or(default);
    if !p.starts_with('/') || !p.contains(placeholder) {
        return Err(bad(
            key,
            format!("{p:?} must start with '/' and contain {placeholder}"),
            format!("for example {default:?}"),
        ));
    }
    // The URL goes into option 67 (at most 255 bytes with a long http base).
    if p.len() > 160 {
        return Err(bad(key, "the path is longer than 160 bytes", "shorten it"));
    }
    Ok(p.to_owned())
}

fn check_ifname(name: &str) -> Result<(), String> {
    // IFNAMSIZ is 16 including the NUL.
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a Linux interface name"))
    }
}

fn check_subnet(name: &str, s: &SubnetWire, http_port: u16) -> Result<Subnet, DhcpConfigError> {
    let key = |k: &str| format!("subnets.{name}.{k}");
    let network: Ipv4Net = s.network.parse().map_err(|_| {
        bad(
            key("network"),
            format!("{:?} is not an IPv4 CIDR", s.network),
            "write it as 10.99.0.0/24",
        )
    })?;
    if network != network.trunc() {
        return Err(bad(
            key("network"),
            format!("{network} has host bits set"),
            format!("write the network address, {}", network.trunc()),
        ));
    }
    if network.prefix_len() > 30 {
        return Err(bad(
            key("network"),
            format!("/{} leaves no room for clients", network.prefix_len()),
            "use a prefix of /30 or shorter",
        ));
    }
    let inside = |ip: Ipv4Addr| network.contains(&ip) && ip != network.network() && ip != network.broadcast();
    if !s.relayed && !inside(s.server) {
        return Err(bad(
            key("server"),
            format!("{} is not a host address in {network}", s.server),
            "give this head's own address on that link",
        ));
    }
    if s.server.is_unspecified() || s.server.is_broadcast() || s.server.is_multicast() {
        return Err(bad(
            key("server"),
            format!("{} cannot be a server address", s.server),
            "give this head's address",
        ));
    }
    if let Some(r) = s.router {
        if !inside(r) {
            return Err(bad(
                key("router"),
                format!("{r} is not a host address in {network}"),
                "give the gateway's address on that network, or leave router out",
            ));
        }
    }
    let lease = match &s.lease_time {
        None => DEFAULT_LEASE,
        Some(DurationWire::Secs(n)) => Duration::from_secs(*n),
        Some(DurationWire::Text(t)) => match t.trim().parse::<u64>() {
            Ok(n) => Duration::from_secs(n),
            Err(_) => humantime::parse_duration(t).map_err(|e| {
                bad(
                    key("lease_time"),
                    format!("{t:?} is not a duration ({e})"),
                    "write e.g. 2h, 90m or 3600",
                )
            })?,
        },
    };
    let lease_secs = u32::try_from(lease.as_secs())
        .ok()
        .filter(|&n| (60..u32::MAX).contains(&n))
        .ok_or_else(|| {
            bad(
                key("lease_time"),
                format!("{} s is out of range", lease.as_secs()),
                "give between 60 s and 136 years",
            )
        })?;
    let pool = match s.pool {
        None => None,
        Some(p) => {
            if !inside(p.start) || !inside(p.end) || p.start > p.end {
                return Err(bad(
                    key("pool"),
                    format!(
                        "{}-{} is not an ascending range of host addresses in {network}",
                        p.start, p.end
                    ),
                    "give start <= end, both inside the network (not its network or broadcast address)",
                ));
            }
            let pool = Pool {
                start: p.start,
                end: p.end,
            };
            for (what, ip) in [("server", Some(s.server)), ("router", s.router)] {
                if let Some(ip) = ip.filter(|&ip| pool.contains(ip)) {
                    return Err(bad(
                        key("pool"),
                        format!("the pool contains the {what} address {ip}"),
                        format!("shrink the pool so it excludes {ip}"),
                    ));
                }
            }
            Some(pool)
        }
    };
    if let Some(d) = &s.domain {
        if d.is_empty() || d.len() > 253 || !d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
            return Err(bad(
                key("domain"),
                format!("{d:?} is not a domain name"),
                "write e.g. cluster.local",
            ));
        }
    }
    if s.dns.len() > 16 {
        return Err(bad(key("dns"), "more than 16 DNS servers", "list at most 16"));
    }
    let http_base = match &s.http_base {
        None => format!("http://{}:{http_port}", s.server),
        Some(b) => {
            let b = b.trim_end_matches('/');
            if !(b.starts_with("http://") || b.starts_with("https://"))
                || b.len() > 80
                || b.contains(char::is_whitespace)
            {
                return Err(bad(
                    key("http_base"),
                    format!("{b:?} is not an http(s) URL base of at most 80 bytes"),
                    format!("write e.g. http://{}:{http_port}", s.server),
                ));
            }
            b.to_owned()
        }
    };
    Ok(Subnet {
        name: name.to_owned(),
        network,
        server: s.server,
        router: s.router,
        dns: s.dns.clone(),
        domain: s.domain.clone(),
        lease_secs,
        pool,
        relayed: s.relayed,
        http_base,
        rack: None,
    })
}

/// Interface name → its IPv4 addresses, as the system has them now.
pub type IfAddrs = BTreeMap<String, Vec<Ipv4Addr>>;

/// What [`DhcpConfig::with_racks`] made of the racks for this head.
#[derive(Debug, Clone, PartialEq)]
pub struct RackPlan {
    /// The head's config with the racks it serves added as subnets.
    pub config: DhcpConfig,
    /// Racks listing this head that it can serve from its interfaces now.
    pub served: BTreeSet<String>,
    /// Why a rack listing this head is not served (for a warning each time it changes).
    pub problems: Vec<String>,
}

impl DhcpConfig {
    /// This head's (`me`) configuration with the racks of the replicated state added: a
    /// rack listing this head becomes a subnet whose `server` is the head's address on the
    /// rack. A direct rack is served on the configured interface that holds that address
    /// (`addrs`), a relayed rack wherever its relay's requests arrive (an interface of
    /// `boot.dhcp.interfaces`). A rack this head cannot serve is left out, with the reason
    /// in [`RackPlan::problems`] — never served on some other link.
    pub fn with_racks(&self, me: u64, racks: &BTreeMap<String, crate::state::Rack>, addrs: &IfAddrs) -> RackPlan {
        let mut config = self.clone();
        let mut served = BTreeSet::new();
        let mut problems = Vec::new();
        let on_iface = |ip: Ipv4Addr| addrs.iter().find(|(_, a)| a.contains(&ip)).map(|(n, _)| n.clone());
        for (name, rack) in racks {
            let (Some(me_at), Some(addr)) = (rack.position(me), rack.addr_of(me)) else {
                continue;
            };
            if let Some(s) = self.subnets.iter().find(|s| {
                s.name == *name
                    || s.network.contains(&rack.network.network())
                    || rack.network.contains(&s.network.network())
            }) {
                problems.push(format!(
                    "rack {name} ({}) clashes with boot.dhcp.subnets.{} ({}) of wulfd.yaml; remove one of them",
                    rack.network, s.name, s.network
                ));
                continue;
            }
            let Some(iface) = on_iface(addr) else {
                problems.push(format!(
                    "rack {name}: this head's address on the rack, {addr}, is on none of its interfaces; \
                     configure it, or correct it with `wwctl rack set {name} --head {me}={addr}`"
                ));
                continue;
            };
            let Some(k) = config.interfaces.iter().position(|i| i.name == iface) else {
                problems.push(format!(
                    "rack {name}: this head's address {addr} is on interface {iface}, which is not in \
                     boot.dhcp.interfaces; add `- {{name: {iface}}}` there to serve the rack"
                ));
                continue;
            };
            let idx = config.subnets.len();
            config.subnets.push(Subnet {
                name: name.clone(),
                network: rack.network,
                server: addr,
                router: rack.router,
                dns: rack.dns.clone(),
                domain: rack.domain.clone(),
                lease_secs: rack.lease_secs.unwrap_or(DEFAULT_LEASE.as_secs() as u32),
                pool: rack.pool.map(|p| Pool {
                    start: p.start,
                    end: p.end,
                }),
                relayed: rack.relayed,
                http_base: format!("http://{addr}:{}", self.http_port),
                rack: Some(RackOrder {
                    heads: rack.heads.iter().map(|h| h.id).collect(),
                    me: me_at,
                }),
            });
            if !rack.relayed {
                config.interfaces[k].subnets.push(idx);
            }
            served.insert(name.clone());
        }
        RackPlan {
            config,
            served,
            problems,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
interfaces:
  - name: br0
    subnets: [rack1]
http_port: 8080
ipxe:
  "00:00": undionly.kpxe
  "0x07": ipxe.efi
  11: arm64-efi/snponly.efi
subnets:
  rack1:
    network: 10.99.0.0/24
    server: 10.99.0.1
    router: 10.99.0.254
    dns: [10.99.0.1, 10.99.0.2]
    domain: cluster.local
    lease_time: 90m
    pool: {start: 10.99.0.100, end: 10.99.0.199}
  remote:
    network: 10.50.0.0/16
    server: 192.0.2.1
    relayed: true
    lease_time: 600
"#;

    #[test]
    fn full_section_parses_with_defaults_filled_in() {
        let c = DhcpConfig::from_yaml(FULL).unwrap();
        assert!(c.enabled());
        assert_eq!(c.subnets.len(), 2);
        let r = &c.subnets[c.interface("br0").unwrap().subnets[0]];
        assert_eq!(r.name, "rack1");
        assert_eq!(r.lease_secs, 5400);
        assert_eq!(r.http_base, "http://10.99.0.1:8080");
        assert_eq!(r.pool.unwrap().size(), 100);
        assert_eq!(c.ipxe.get(&0x0B).map(String::as_str), Some("arm64-efi/snponly.efi"));
        assert_eq!(c.ipxe.get(&0x09), None, "a given table replaces the defaults");
        assert_eq!(c.relayed_subnet("10.50.3.1".parse().unwrap()).unwrap().name, "remote");
        assert!(
            c.relayed_subnet("10.99.0.7".parse().unwrap()).is_none(),
            "rack1 is not relayed"
        );
        assert_eq!(c.ipxe_url_path, DEFAULT_IPXE_URL_PATH);
    }

    #[test]
    fn rate_limit_defaults_settings_and_mistakes() {
        use crate::boot::dhcp::limit::RateLimit;
        let base = "interfaces: [{name: br0}]\n";
        assert_eq!(
            DhcpConfig::from_yaml(base).unwrap().rate_limit,
            Some(RateLimit::default())
        );
        let c = DhcpConfig::from_yaml(&format!("{base}rate_limit: {{per_mac_per_sec: 50}}")).unwrap();
        assert_eq!(
            c.rate_limit,
            Some(RateLimit {
                per_sec: 50.0,
                burst: 150.0
            })
        );
        let off = DhcpConfig::from_yaml(&format!("{base}rate_limit: {{per_mac_per_sec: 0}}")).unwrap();
        assert_eq!(off.rate_limit, None);
        let e = DhcpConfig::from_yaml(&format!("{base}rate_limit: {{burst: 0}}")).unwrap_err();
        assert!(e.to_string().contains("rate_limit.burst"), "{e}");
        let e = DhcpConfig::from_yaml(&format!("{base}rate_limit: {{per_mac: 5}}")).unwrap_err();
        assert!(e.to_string().contains("per_mac"), "{e}");
    }

    #[test]
    fn absent_or_empty_section_is_off() {
        assert!(!DhcpConfig::default().enabled());
        assert!(!DhcpConfig::from_yaml("{}").unwrap().enabled());
        let c: DhcpConfig = serde_yaml_ng::from_str("interfaces: []").unwrap();
        assert!(!c.enabled());
        assert_eq!(c.ipxe.get(&7).map(String::as_str), Some("snponly.efi"));
    }

    fn err(yaml: &str) -> String {
        DhcpConfig::from_yaml(yaml).unwrap_err().to_string()
    }

    #[test]
    fn mistakes_name_the_key_and_the_fix() {
        let base = "interfaces: [{name: br0, subnets: [a]}]\nsubnets:\n  a:\n";
        let cases = [
            ("    network: 10.0.0.0/24\n    server: 10.0.1.1\n", "subnets.a.server"),
            ("    network: 10.0.0.1/24\n    server: 10.0.0.1\n", "host bits"),
            (
                "    network: 10.0.0.0/24\n    server: 10.0.0.1\n    pool: {start: 10.0.0.0, end: 10.0.0.9}\n",
                "subnets.a.pool",
            ),
            (
                "    network: 10.0.0.0/24\n    server: 10.0.0.5\n    pool: {start: 10.0.0.2, end: 10.0.0.9}\n",
                "server address",
            ),
            (
                "    network: 10.0.0.0/24\n    server: 10.0.0.1\n    lease_time: 1s\n",
                "lease_time",
            ),
            (
                "    network: 10.0.0.0/24\n    server: 10.0.0.1\n    bogus: 1\n",
                "unknown field",
            ),
            (
                "    network: 10.0.0.0/24\n    server: 10.0.0.1\n    router: 10.0.1.1\n",
                "subnets.a.router",
            ),
        ];
        for (tail, want) in cases {
            let e = err(&format!("{base}{tail}"));
            assert!(e.contains(want), "{tail}: {e}");
            assert!(e.contains("boot.dhcp."), "{e}");
        }
        let e = err("interfaces: [{name: br0, subnets: [nope]}]");
        assert!(e.contains("not defined"), "{e}");
        let e = err("subnets: {a: {network: 10.0.0.0/24, server: 10.0.0.1}}");
        assert!(e.contains("never be served"), "{e}");
        let e = err(
            "interfaces: [{name: br0, subnets: [a, b]}]\nsubnets: {a: {network: 10.0.0.0/16, server: 10.0.0.1}, b: {network: 10.0.5.0/24, server: 10.0.5.1}}",
        );
        assert!(e.contains("overlaps"), "{e}");
        let e = err("interfaces: [{name: this-name-is-too-long, subnets: []}]");
        assert!(e.contains("interfaces[0].name"), "{e}");
        let e = err("ipxe: {\"zz\": a.efi}");
        assert!(e.contains("client architecture"), "{e}");
        let e = err("ipxe_url_path: /ipxe/static");
        assert!(e.contains("{mac}"), "{e}");
    }
}
