//! `wulfd.yaml`: the wire form ([`HeadConfig`], what the file says) and the validated
//! form ([`Settings`], what a head starts from).
//!
//! The file is parsed and checked once, completely, before anything starts: every
//! section is converted to its module's validated type (`raft` → openraft's config,
//! `boot.dhcp` → `DhcpConfig`, `boot.tftp` checked, `boot.http.ipxe_templates` parsed),
//! so a typo in an iPXE template is reported with the other config errors, not after
//! Raft is up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::DaemonError;
use crate::boot::dhcp::config::DhcpConfig;
use crate::boot::http::ipxe::IpxeTemplates;
use crate::raft::RaftSettings;
use crate::store::StoreConfig;

/// A founding member of a new cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: u64,
    pub addr: String,
}

/// `wulfd.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    /// This head's Raft id (≥ 1, unique in the cluster, never reused).
    pub id: u64,
    /// Where the sled database lives.
    pub data_dir: PathBuf,
    /// gRPC listen address (Raft, blobs between heads, admin API); default: `advertise`.
    /// A wildcard (`0.0.0.0:9701`) only when written here.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub listen: String,
    /// Address peers and `wwctl` use to reach this head (default: `listen`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// HTTP (boot files, `/health`): `:PORT` (the default, `:9873`) listens on this
    /// head's own addresses — `advertise`'s host, loopback, and its address on every rack
    /// that lists it, following rack changes; `HOST:PORT` on exactly that address
    /// (`0.0.0.0:9873`: every interface, as Warewulf).
    #[serde(default = "default_http_listen")]
    pub http_listen: String,
    /// Address peers use for HTTP (default: `http_listen`, with the host of
    /// `advertise` when `http_listen` is a wildcard address).
    #[serde(default)]
    pub http_advertise: Option<String>,
    /// HTTPS for `wwclient`: the boot routes over TLS with this head's certificate, so
    /// nodes fetch their runtime overlay from a head they can verify (the `wwclient`
    /// overlay then lists this head as `https://` and writes the cluster CA into the
    /// node). `:PORT` listens on the same addresses as `http_listen: :PORT` (following
    /// racks); `HOST:PORT` on exactly that address. Off unless set; needs TLS (not
    /// `insecure: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_listen: Option<String>,
    /// Cluster name, set once by the bootstrapping head.
    #[serde(default = "default_cluster_name")]
    pub cluster_name: String,
    /// Founding members of a new cluster; empty for a head that will be joined.
    #[serde(default)]
    pub bootstrap: Vec<Member>,
    #[serde(default)]
    pub raft: RaftSettings,
    /// Bound on sled's page cache.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: u64,
    /// Longest a write or flush of the Raft store may take before this head counts its
    /// disk as failed (full, failing or hung): Raft stops and wulfd exits 1 for its
    /// service manager to restart it. Default 60.
    #[serde(default = "default_storage_deadline_secs")]
    pub storage_deadline_secs: u64,
    /// Blobs no catalog entry references are deleted once older than this, so an
    /// import in progress (blobs written, entry not yet committed) keeps its blobs.
    #[serde(default = "default_gc_grace")]
    pub cas_gc_grace_secs: u64,
    /// How often the blob GC runs (0 = never).
    #[serde(default = "default_gc_interval")]
    pub cas_gc_interval_secs: u64,
    /// Boot services: DHCP and TFTP are off unless configured here.
    #[serde(default)]
    pub boot: BootConfig,
    /// The artifact sync: every referenced blob fetched from peers ahead of need, and
    /// the scrub that re-verifies stored blobs.
    #[serde(default)]
    pub artifacts: crate::cas::sync::ArtifactsConfig,
    /// IPMI power and sensors run by this head (`wwctl power`, `wwctl node sensors`).
    #[serde(default)]
    pub power: crate::power::PowerConfig,
    /// Image operations on this head (`wwctl image exec|shell`).
    #[serde(default)]
    pub images: ImagesConfig,
    /// Mutual TLS on the gRPC port (Raft and admin API); required unless `insecure`.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Serve gRPC in plaintext, with no credentials: anyone who reaches `listen`
    /// controls the cluster. For the demo and tests; wulfd warns at start.
    #[serde(default)]
    pub insecure: bool,
}

/// `tls:` in `wulfd.yaml` (docs/OPERATIONS.md, "Certificates and credentials").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// `ca.crt`, `ca.key`, `head.crt`, `head.key` (default `<data_dir>/pki`): a founding
    /// head's come from `wwctl cluster pki init`; a joining head writes them itself.
    pub dir: Option<PathBuf>,
    /// A head joining an existing cluster: the token from `wwctl cluster token create`,
    /// used once, when `dir` holds no certificate yet.
    pub join_token: Option<String>,
    /// Heads of the cluster to enrol with (`host:port`, tried in order).
    pub join_via: Vec<String>,
}

/// Validated `tls:`.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub dir: PathBuf,
    /// The token and the heads to enrol with, when the head still needs certificates.
    pub join: Option<(crate::pki::JoinToken, Vec<String>)>,
}

/// `boot:` in `wulfd.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// Networks whose clients HTTP boot and TFTP answer besides the racks' networks, this
    /// head's DHCP subnets, the nodes' own addresses and loopback (`boot::allow`);
    /// `[0.0.0.0/0]` answers everyone, as Warewulf does.
    #[serde(default)]
    pub allow: Vec<ipnet::Ipv4Net>,
    #[serde(default)]
    pub dhcp: crate::boot::dhcp::config::DhcpConfigWire,
    #[serde(default)]
    pub tftp: crate::boot::tftp::TftpConfig,
    #[serde(default)]
    pub http: crate::boot::http::BootHttpConfig,
    #[serde(default)]
    pub overlays: OverlaysConfig,
}

/// `boot: overlays:` in `wulfd.yaml`: what overlay templates read on this head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverlaysConfig {
    /// Build and serve `/system/` and `/runtime/` (default true).
    pub enabled: bool,
    /// Settings templates read (`Nfs`, `Ssh`, `Dhcp`, `Warewulf`, ...) as a Warewulf
    /// `warewulf.conf`; an existing Warewulf file can be named as it is. Unset: Warewulf's
    /// defaults. Either way the head's own address, port and secure mode come from this
    /// file's other sections (`ipaddr` from the first DHCP subnet's `server` when the
    /// file has none).
    pub warewulf_conf: Option<PathBuf>,
    /// The file system templates' `Include` reads host files from (tests point it at a
    /// directory; only Warewulf's config dir, the account files, root's SSH keys and the
    /// zone link are readable under it).
    pub host_root: PathBuf,
    /// The `wwclient` binary the `wwclient` overlay installs on nodes as
    /// `/warewulf/wwclient` (a static build: `.ci/run` shows how). Unset: `wwclient`
    /// beside the running `wulfd`, if there is one.
    pub wwclient: Option<PathBuf>,
}

impl Default for OverlaysConfig {
    fn default() -> Self {
        OverlaysConfig {
            enabled: true,
            warewulf_conf: None,
            host_root: PathBuf::from("/"),
            wwclient: None,
        }
    }
}

/// `images:` in `wulfd.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagesConfig {
    /// Warewulf's `image mounts`: paths of this head bound into an image while `wwctl
    /// image exec|shell` runs, so that e.g. a package manager resolves names; nothing of
    /// them stays in the image. Sources are read under `boot.overlays.host_root`. A
    /// source that does not exist, or a destination that is a symlink in the image, is
    /// skipped with a warning. Default: the head's `/etc/resolv.conf`.
    pub mounts: Vec<ImageMount>,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            mounts: vec![ImageMount {
                source: PathBuf::from("/etc/resolv.conf"),
                dest: Some(PathBuf::from("/etc/resolv.conf")),
                readonly: false,
                copy: false,
            }],
        }
    }
}

/// One entry of `images.mounts` (Warewulf's `image mounts` entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageMount {
    /// Absolute path on this head (under `boot.overlays.host_root`).
    pub source: PathBuf,
    /// Absolute path in the image (default: `source`).
    #[serde(default)]
    pub dest: Option<PathBuf>,
    /// Bind read-only.
    #[serde(default)]
    pub readonly: bool,
    /// Copy the file in for the command and remove it afterwards, instead of binding.
    #[serde(default)]
    pub copy: bool,
}

impl ImageMount {
    /// The `--bind` form (`SOURCE:DEST[:ro|copy]`) `wwctl` parses, with the source under
    /// `host_root`; `None` when a path is not absolute or not UTF-8.
    pub fn bind_spec(&self, host_root: &Path) -> Option<String> {
        let rel = self.source.strip_prefix("/").ok()?;
        let source = host_root.join(rel);
        let dest = self.dest.as_deref().unwrap_or(&self.source);
        if !dest.is_absolute() {
            return None;
        }
        let mode = match (self.copy, self.readonly) {
            (true, _) => ":copy",
            (false, true) => ":ro",
            (false, false) => "",
        };
        let (source, dest) = (source.to_str()?, dest.to_str()?);
        if source.contains(':') || dest.contains(':') {
            return None;
        }
        Some(format!("{source}:{dest}{mode}"))
    }
}

fn default_gc_grace() -> u64 {
    3600
}
fn default_gc_interval() -> u64 {
    600
}

fn default_http_listen() -> String {
    ":9873".into()
}

/// The host part of `host:port` (`[v6]` kept in brackets), or 127.0.0.1.
fn host_of(addr: &str) -> String {
    addr.rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap_or_else(|| "127.0.0.1".into())
}

fn default_cluster_name() -> String {
    "wulfpack".into()
}
fn default_storage_deadline_secs() -> u64 {
    crate::store::STORAGE_DEADLINE.as_secs()
}

fn default_cache_mib() -> u64 {
    64
}

impl HeadConfig {
    /// Parse a config file (not yet validated: see [`Settings::load`]).
    pub fn load(path: &Path) -> Result<Self, DaemonError> {
        let text = std::fs::read_to_string(path).map_err(|e| DaemonError::ReadConfig {
            path: path.into(),
            message: e.to_string(),
        })?;
        serde_yaml_ng::from_str(&text).map_err(|e| DaemonError::ParseConfig {
            path: path.into(),
            message: e.to_string(),
        })
    }

    pub fn advertise_addr(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.listen.clone())
    }

    /// The gRPC listen address: `listen`, else `advertise`.
    pub fn listen_addr(&self) -> String {
        if self.listen.is_empty() {
            self.advertise.clone().unwrap_or_default()
        } else {
            self.listen.clone()
        }
    }

    /// `:PORT` form of `http_listen`: the port, when HTTP follows this head's addresses.
    pub fn http_follow_port(&self) -> Option<u16> {
        self.http_listen.strip_prefix(':').and_then(|p| p.parse().ok())
    }

    /// The first HTTP listen address: `http_listen`, or in its `:PORT` form `advertise`'s
    /// host at that port.
    pub fn http_listen_addr(&self) -> String {
        match self.http_follow_port() {
            Some(port) => format!("{}:{port}", host_of(&self.advertise_addr())),
            None => self.http_listen.clone(),
        }
    }

    pub fn http_advertise_addr(&self) -> String {
        if let Some(a) = &self.http_advertise {
            return a.clone();
        }
        let listen = self.http_listen_addr();
        match listen.parse::<std::net::SocketAddr>() {
            Ok(sa) if sa.ip().is_unspecified() => format!("{}:{}", host_of(&self.advertise_addr()), sa.port()),
            _ => listen,
        }
    }
}

/// `https_listen`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsSettings {
    /// The first address (the caller binds it): `HOST:PORT`, or `advertise`'s host.
    pub listen: String,
    /// `:PORT`: also on the addresses HTTP follows (loopback, DHCP subnets, racks).
    pub follow: Option<u16>,
    /// What nodes are told (registered as `HeadInfo::https`).
    pub advertise: String,
}

/// A head's validated settings: everything [`super::Head::start`] needs, checked.
#[derive(Clone)]
pub struct Settings {
    pub id: u64,
    pub data_dir: PathBuf,
    /// gRPC listen address (the caller binds it).
    pub listen: String,
    /// How peers and `wwctl` reach this head's gRPC.
    pub advertise: String,
    /// HTTP listen address (the caller binds it).
    pub http_listen: String,
    /// `http_listen: :PORT`: HTTP also on loopback and on this head's rack addresses at
    /// this port (the head binds those as racks change).
    pub http_follow: Option<u16>,
    /// How peers reach this head's HTTP (blobs).
    pub http_advertise: String,
    /// HTTPS for `wwclient` (`https_listen`), when set.
    pub https: Option<HttpsSettings>,
    pub cluster_name: String,
    /// Founding members of a new cluster; empty for a head that will be joined.
    pub bootstrap: Vec<Member>,
    pub raft: Arc<openraft::Config>,
    /// When to snapshot besides openraft's entry count (bounds restart replay).
    pub snapshots: crate::store::SnapshotPolicy,
    pub store: StoreConfig,
    /// How often the blob GC runs and the age below which it keeps unreferenced
    /// blobs; `None`: never.
    pub gc: Option<(Duration, Duration)>,
    /// DHCP, when configured on at least one interface.
    pub dhcp: Option<DhcpConfig>,
    /// TFTP, when enabled.
    pub tftp: Option<crate::boot::tftp::TftpConfig>,
    /// The iPXE directory: served by TFTP and at `/efiboot/` (UEFI HTTP boot).
    pub ipxe_dir: PathBuf,
    pub ipxe_templates: Arc<IpxeTemplates>,
    /// Runtime overlays only to privileged source ports.
    pub secure: bool,
    /// `boot.http`, validated: the per-client transfer limit and the HTTP listener's
    /// connection limits.
    pub boot_http: crate::boot::http::BootHttpConfig,
    /// Overlay builds, when enabled: the settings templates read, and the host root.
    pub overlays: Option<(crate::overlay::render::ServerConf, PathBuf)>,
    /// The `wwclient` binary to ship in the `wwclient` overlay (see `OverlaysConfig`).
    pub wwclient: Option<PathBuf>,
    /// The artifact sync and scrub.
    pub artifacts: crate::cas::sync::SyncConfig,
    /// Mutual TLS; `None`: plaintext (`insecure: true`).
    pub tls: Option<TlsSettings>,
    /// `boot.allow` (see [`crate::boot::allow`]).
    pub boot_allow: Vec<ipnet::Ipv4Net>,
    /// ipmitool and the forward probe of `wwctl power`.
    pub power: crate::power::PowerConfig,
    /// Where the head's own files are (`boot.overlays.host_root`): syncuser's passwd and
    /// group, the sources of `image_mounts`.
    pub host_root: PathBuf,
    /// `images.mounts` as `--bind` specs for `wwctl image exec|shell`.
    pub image_mounts: Vec<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("id", &self.id)
            .field("data_dir", &self.data_dir)
            .field("advertise", &self.advertise)
            .field("http_advertise", &self.http_advertise)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Settings, DaemonError> {
        Settings::try_from(HeadConfig::load(path)?).map_err(|e| match e {
            DaemonError::Invalid(m) => DaemonError::Invalid(format!("{}: {m}", path.display())),
            e => e,
        })
    }
}

impl TryFrom<HeadConfig> for Settings {
    type Error = DaemonError;

    fn try_from(c: HeadConfig) -> Result<Settings, DaemonError> {
        let invalid = |section: &str, e: &dyn std::fmt::Display| DaemonError::Invalid(format!("{section}: {e}"));
        if c.id == 0 {
            return Err(DaemonError::Invalid("id must be 1 or more".into()));
        }
        let mut ids = std::collections::BTreeSet::new();
        for m in &c.bootstrap {
            if m.id == 0 || !ids.insert(m.id) {
                return Err(DaemonError::Invalid(format!(
                    "bootstrap member id {} is 0 or listed twice",
                    m.id
                )));
            }
        }
        if !c.bootstrap.is_empty() && !ids.contains(&c.id) {
            return Err(DaemonError::Invalid(format!(
                "bootstrap lists ids {ids:?} but this head is id {}; a founding head must list itself",
                c.id
            )));
        }
        crate::model::validate_name("cluster", &c.cluster_name).map_err(|e| invalid("cluster_name", &e))?;
        if c.storage_deadline_secs == 0 {
            return Err(DaemonError::Invalid(
                "storage_deadline_secs must be 1 or more (seconds a disk write may take before the head counts its disk as failed; default 60)".into(),
            ));
        }
        let listen = c.listen_addr();
        if listen.is_empty() {
            return Err(DaemonError::Invalid(
                "neither advertise nor listen is set: give advertise, the address (host:port) other heads and wwctl reach this head at; wulfd listens there".into(),
            ));
        }
        let advertise = c.advertise_addr();
        let http_listen = c.http_listen_addr();
        let http_follow = c.http_follow_port();
        if advertise
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_unspecified())
        {
            return Err(DaemonError::Invalid(format!(
                "advertise is {advertise}, which no peer can reach: set advertise to this head's address on the management network (listen may stay a wildcard)"
            )));
        }
        if c.http_listen.starts_with(':') && c.http_follow_port().is_none() {
            return Err(DaemonError::Invalid(format!(
                "http_listen {:?}: give :PORT (this head's own addresses) or HOST:PORT",
                c.http_listen
            )));
        }
        let https = https_settings(&c, &advertise, &http_listen)?;
        let raft = c.raft.to_config(&c.cluster_name).map_err(|e| invalid("raft", &e))?;
        let dhcp = DhcpConfig::try_from(c.boot.dhcp.clone()).map_err(|e| invalid("boot.dhcp", &e))?;
        let tftp = if c.boot.tftp.enabled {
            c.boot.tftp.validate().map_err(|e| invalid("boot.tftp", &e))?;
            Some(c.boot.tftp.clone())
        } else {
            None
        };
        c.boot.http.validate().map_err(|e| invalid("boot.http", &e))?;
        let ipxe_templates = IpxeTemplates::load(c.boot.http.ipxe_templates.as_deref())
            .map_err(|e| invalid("boot.http.ipxe_templates", &e))?;
        let overlays = if c.boot.overlays.enabled {
            Some((server_conf(&c, &dhcp)?, c.boot.overlays.host_root.clone()))
        } else {
            None
        };
        let wwclient = match &c.boot.overlays.wwclient {
            Some(p) if !p.is_file() => {
                return Err(DaemonError::Invalid(format!(
                    "boot.overlays.wwclient: {} is not a file; build it (cargo build --profile node --target x86_64-unknown-linux-musl --bin wwclient) or unset it",
                    p.display()
                )))
            }
            Some(p) => Some(p.clone()),
            None => std::env::current_exe()
                .ok()
                .map(|e| e.with_file_name("wwclient"))
                .filter(|p| p.is_file()),
        };
        let artifacts = c.artifacts.validate().map_err(|e| invalid("artifacts", &e))?;
        let tls = tls_settings(&c)?;
        let host_root = c.boot.overlays.host_root.clone();
        let image_mounts = c
            .images
            .mounts
            .iter()
            .map(|m| {
                m.bind_spec(&host_root).ok_or_else(|| {
                    DaemonError::Invalid(format!(
                        "images.mounts: {} → {}: give absolute paths without ':'",
                        m.source.display(),
                        m.dest.as_deref().unwrap_or(&m.source).display()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Settings {
            host_root,
            image_mounts,
            tls,
            boot_allow: c.boot.allow.clone(),
            artifacts,
            power: c.power.clone(),
            wwclient,
            secure: c.boot.http.secure,
            boot_http: c.boot.http.clone(),
            overlays,
            http_advertise: c.http_advertise_addr(),
            https,
            advertise,
            id: c.id,
            data_dir: c.data_dir,
            listen,
            http_listen,
            http_follow,
            cluster_name: c.cluster_name,
            bootstrap: c.bootstrap,
            raft: Arc::new(raft),
            snapshots: crate::store::SnapshotPolicy::default(),
            store: StoreConfig {
                cache_capacity_bytes: c.cache_mib * 1024 * 1024,
                write_deadline: Duration::from_secs(c.storage_deadline_secs),
            },
            gc: (c.cas_gc_interval_secs > 0).then(|| {
                (
                    Duration::from_secs(c.cas_gc_interval_secs),
                    Duration::from_secs(c.cas_gc_grace_secs),
                )
            }),
            dhcp: dhcp.enabled().then_some(dhcp),
            tftp,
            ipxe_dir: c.boot.tftp.root,
            ipxe_templates: Arc::new(ipxe_templates),
        })
    }
}
fn https_settings(c: &HeadConfig, advertise: &str, http_listen: &str) -> Result<Option<HttpsSettings>, DaemonError> {
    let Some(h) = c.https_listen.as_deref().map(str::trim) else {
        return Ok(None);
    };
    let bad = |why: String| Err(DaemonError::Invalid(format!("https_listen {h:?}: {why}")));
    if c.insecure {
        return bad(
            "HTTPS needs this head's certificate, and insecure: true runs without one; remove one of the two".into(),
        );
    }
    let follow = match h.strip_prefix(':') {
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port != 0 => Some(port),
            _ => return bad("give :PORT (this head's own addresses) or HOST:PORT".into()),
        },
        None => None,
    };
    let listen = match follow {
        Some(port) => format!("{}:{port}", host_of(advertise)),
        None => {
            if !h
                .rsplit_once(':')
                .is_some_and(|(host, p)| !host.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0))
            {
                return bad("give :PORT (this head's own addresses) or HOST:PORT".into());
            }
            h.to_owned()
        }
    };
    let port_of = |a: &str| a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
    if port_of(&listen) == port_of(http_listen) {
        return bad(format!(
            "the same port as http_listen ({http_listen}); HTTPS needs a port of its own (e.g. :9874)"
        ));
    }
    let advertise = match listen.parse::<std::net::SocketAddr>() {
        Ok(sa) if sa.ip().is_unspecified() => format!("{}:{}", host_of(advertise), sa.port()),
        _ => listen.clone(),
    };
    Ok(Some(HttpsSettings {
        listen,
        follow,
        advertise,
    }))
}

fn tls_settings(c: &HeadConfig) -> Result<Option<TlsSettings>, DaemonError> {
    let t = &c.tls;
    if c.insecure {
        if t != &TlsConfig::default() {
            return Err(DaemonError::Invalid(
                "insecure: true and a tls: section are both set; remove one (insecure serves plaintext without credentials)"
                    .into(),
            ));
        }
        return Ok(None);
    }
    let join = match &t.join_token {
        None => None,
        Some(tok) => {
            let token =
                crate::pki::JoinToken::parse(tok).map_err(|e| DaemonError::Invalid(format!("tls.join_token: {e}")))?;
            if t.join_via.is_empty() {
                return Err(DaemonError::Invalid(
                    "tls.join_token needs tls.join_via: the heads (host:port) to enrol with".into(),
                ));
            }
            if !c.bootstrap.is_empty() {
                return Err(DaemonError::Invalid(
                    "tls.join_token is for a head joining an existing cluster, but bootstrap lists founders; a founder's certificates come from `wwctl cluster pki init`".into(),
                ));
            }
            Some((token, t.join_via.clone()))
        }
    };
    Ok(Some(TlsSettings {
        dir: t.dir.clone().unwrap_or_else(|| c.data_dir.join("pki")),
        join,
    }))
}

/// What overlay templates read as the head's settings: `boot.overlays.warewulf_conf`
/// (or Warewulf's defaults), with this head's HTTP port and secure mode, and its address
/// on the first DHCP subnet when the file names none.
fn server_conf(c: &HeadConfig, dhcp: &DhcpConfig) -> Result<crate::overlay::render::ServerConf, DaemonError> {
    let text = match &c.boot.overlays.warewulf_conf {
        Some(p) => std::fs::read_to_string(p).map_err(|e| {
            DaemonError::Invalid(format!("boot.overlays.warewulf_conf: cannot read {}: {e}", p.display()))
        })?,
        None => String::new(),
    };
    let mut server = crate::overlay::render::ServerConf::from_yaml(&text)
        .map_err(|e| DaemonError::Invalid(format!("boot.overlays.warewulf_conf: {e}")))?;
    if let Some(port) = c.http_listen.rsplit_once(':').and_then(|(_, p)| p.parse().ok()) {
        server.warewulf.port = port;
    }
    server.warewulf.secure = c.boot.http.secure;
    if server.ipaddr.is_empty() {
        if let Some(sub) = dhcp.subnets.first() {
            server.ipaddr = sub.server.to_string();
            server.netmask = sub.network.netmask().to_string();
            server.network = sub.network.network().to_string();
        }
    }
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_mounts_become_bind_specs_under_the_host_root() {
        let m = |source: &str, dest: Option<&str>, readonly, copy| ImageMount {
            source: source.into(),
            dest: dest.map(Into::into),
            readonly,
            copy,
        };
        let root = Path::new("/srv/head");
        assert_eq!(
            ImagesConfig::default().mounts[0].bind_spec(root).as_deref(),
            Some("/srv/head/etc/resolv.conf:/etc/resolv.conf")
        );
        assert_eq!(
            m("/etc/hosts", None, true, false).bind_spec(Path::new("/")).as_deref(),
            Some("/etc/hosts:/etc/hosts:ro")
        );
        assert_eq!(
            m("/etc/a", Some("/opt/b"), true, true).bind_spec(root).as_deref(),
            Some("/srv/head/etc/a:/opt/b:copy")
        );
        assert_eq!(m("etc/a", None, false, false).bind_spec(root), None, "relative source");
        assert_eq!(
            m("/etc/a", Some("b"), false, false).bind_spec(root),
            None,
            "relative dest"
        );
        assert_eq!(m("/etc/a:b", None, false, false).bind_spec(root), None, "':' in a path");
    }

    #[test]
    fn boot_limits_of_zero_are_config_errors_naming_the_setting() {
        let base = "id: 1\ndata_dir: /nonexistent/wulfd\nadvertise: 127.0.0.1:9701\ninsecure: true\n";
        let ok: HeadConfig = serde_yaml_ng::from_str(base).unwrap();
        let s = Settings::try_from(ok).unwrap();
        assert_eq!(s.boot_http.max_transfers_per_client, 8);
        assert_eq!(s.boot_http.max_head_bytes, 8192);
        assert_eq!(s.boot_http.header_read_timeout_secs, 10);
        for (section, want) in [
            (
                "boot: {http: {max_transfers_per_client: 0}}",
                "boot.http: max_transfers_per_client",
            ),
            ("boot: {http: {max_head_bytes: 0}}", "boot.http: max_head_bytes"),
            (
                "boot: {http: {header_read_timeout_secs: 0}}",
                "boot.http: header_read_timeout_secs",
            ),
            (
                "boot: {tftp: {enabled: true, max_transfers_per_client: 0}}",
                "boot.tftp.max_transfers_per_client",
            ),
            (
                "boot: {tftp: {enabled: true, idle_timeout_ms: 0}}",
                "boot.tftp.idle_timeout_ms",
            ),
        ] {
            let c: HeadConfig = serde_yaml_ng::from_str(&format!("{base}{section}\n")).unwrap();
            let e = Settings::try_from(c).unwrap_err().to_string();
            assert!(e.contains(want), "{section}: {e}");
        }
    }
}
