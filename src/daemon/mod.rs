//! # A head: `wulfd`'s wiring
//!
//! [`HeadConfig`] is the YAML file a head starts from (`wulfd --config`).
//! [`Head::start`] opens the sled store, starts openraft and serves the Raft and
//! admin gRPC services on a listener the caller bound (tests bind port 0), until
//! the shutdown future resolves.
//!
//! Cluster lifecycle:
//! - **New cluster:** every founding head lists the same `bootstrap` members. The
//!   head with the lowest id in that list initialises Raft once, when its log is
//!   empty; the others wait to be contacted. Restarting never re-initialises.
//! - **Join:** start a head with no `bootstrap`, then `wwctl cluster join ID ADDR`
//!   on any head: it becomes a learner, catches up, then a voter.
//! - **Remove:** `wwctl cluster remove ID`.

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::path::{Path, PathBuf};
use std::time::Duration;

use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::api::{AdminService, HeadCtx};
use crate::cas::Cas;
use crate::client::Client;
use crate::pb;
use crate::raft::{Network, Raft, RaftService, RaftSettings};
use crate::state::{Command, HeadInfo, State};
use crate::store::{self, StoreConfig};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot read config file {path}: {source}")]
    ReadConfig { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {source}")]
    ParseConfig {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("config: {0}")]
    Invalid(String),
    #[error("cannot open the data directory {path}: {source}")]
    Store { path: PathBuf, source: store::StoreError },
    #[error("raft: {0}")]
    Raft(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

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
    /// gRPC listen address (Raft and admin API).
    pub listen: String,
    /// Address peers and `wwctl` use to reach this head (default: `listen`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// HTTP listen address: blobs between heads (and boot files, later).
    #[serde(default = "default_http_listen")]
    pub http_listen: String,
    /// Address peers use for HTTP (default: `http_listen`, with the host of
    /// `advertise` when `http_listen` is a wildcard address).
    #[serde(default)]
    pub http_advertise: Option<String>,
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
}

/// `boot:` in `wulfd.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    #[serde(default)]
    pub dhcp: crate::boot::dhcp::config::DhcpConfigWire,
    #[serde(default)]
    pub tftp: crate::boot::tftp::TftpConfig,
    #[serde(default)]
    pub http: crate::boot::http::BootHttpConfig,
}

fn default_gc_grace() -> u64 {
    3600
}
fn default_gc_interval() -> u64 {
    600
}

fn default_http_listen() -> String {
    "0.0.0.0:9873".into()
}

fn default_cluster_name() -> String {
    "wulfpack".into()
}
fn default_cache_mib() -> u64 {
    64
}

impl HeadConfig {
    pub fn load(path: &Path) -> Result<Self, DaemonError> {
        let text = std::fs::read_to_string(path).map_err(|source| DaemonError::ReadConfig {
            path: path.into(),
            source,
        })?;
        let cfg: HeadConfig = serde_yaml_ng::from_str(&text).map_err(|source| DaemonError::ParseConfig {
            path: path.into(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), DaemonError> {
        if self.id == 0 {
            return Err(DaemonError::Invalid("id must be 1 or more".into()));
        }
        let mut ids = std::collections::BTreeSet::new();
        for m in &self.bootstrap {
            if m.id == 0 || !ids.insert(m.id) {
                return Err(DaemonError::Invalid(format!(
                    "bootstrap member id {} is 0 or listed twice",
                    m.id
                )));
            }
        }
        if !self.bootstrap.is_empty() && !ids.contains(&self.id) {
            return Err(DaemonError::Invalid(format!(
                "bootstrap lists ids {ids:?} but this head is id {}; a founding head must list itself",
                self.id
            )));
        }
        crate::model::validate_name("cluster", &self.cluster_name)
            .map_err(|e| DaemonError::Invalid(format!("cluster_name: {e}")))?;
        self.raft
            .to_config(&self.cluster_name)
            .map_err(|e| DaemonError::Invalid(format!("raft: {e}")))?;
        crate::boot::dhcp::config::DhcpConfig::try_from(self.boot.dhcp.clone())
            .map_err(|e| DaemonError::Invalid(format!("boot.dhcp: {e}")))?;
        if self.boot.tftp.enabled {
            self.boot
                .tftp
                .validate()
                .map_err(|e| DaemonError::Invalid(format!("boot.tftp: {e}")))?;
        }
        Ok(())
    }

    pub fn advertise_addr(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.listen.clone())
    }

    pub fn http_advertise_addr(&self) -> String {
        if let Some(a) = &self.http_advertise {
            return a.clone();
        }
        match self.http_listen.parse::<std::net::SocketAddr>() {
            Ok(sa) if sa.ip().is_unspecified() => {
                let host = self
                    .advertise_addr()
                    .rsplit_once(':')
                    .map(|(h, _)| h.to_string())
                    .unwrap_or_else(|| "127.0.0.1".into());
                format!("{host}:{}", sa.port())
            }
            _ => self.http_listen.clone(),
        }
    }
}

/// The sockets a head serves on, bound by the caller (tests bind port 0).
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

/// A running head.
pub struct Head {
    pub ctx: HeadCtx,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Head {
    /// Open the store, start Raft and serve on `listener` until `shutdown` resolves.
    pub async fn start(
        cfg: HeadConfig,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Head, DaemonError> {
        cfg.validate()?;
        let advertise = cfg.advertise_addr();
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let cas_dir = cfg.data_dir.join("cas");
        let cas = Cas::open(&cas_dir).map_err(|e| DaemonError::Invalid(format!("content store: {e}")))?;
        let (log, sm) = open_store_with_retry(&cfg).await?;
        let config = cfg
            .raft
            .to_config(&cfg.cluster_name)
            .map_err(|e| DaemonError::Raft(e.to_string()))?;
        let raft = Raft::new(cfg.id, config.into(), Network::default(), log, sm.clone())
            .await
            .map_err(|e| DaemonError::Raft(e.to_string()))?;
        let ctx = HeadCtx::new(
            cfg.id,
            advertise.clone(),
            raft.clone(),
            sm,
            cas.clone(),
            cfg.data_dir.clone(),
        );

        let incoming = TcpIncoming::from(listeners.grpc).with_nodelay(Some(true));
        let server = tonic::transport::Server::builder()
            .add_service(
                pb::raft::raft_server::RaftServer::new(RaftService { raft: raft.clone() })
                    .max_decoding_message_size(usize::MAX),
            )
            .add_service(
                pb::admin::admin_server::AdminServer::new(AdminService { ctx: ctx.clone() })
                    .max_decoding_message_size(usize::MAX),
            )
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
        let server = tokio::spawn(server);
        let boot_http = boot_http_state(&cfg, &ctx)?;
        let app = crate::cas::http::router(cas).merge(crate::boot::http::router(boot_http));
        let http = tokio::spawn(
            axum::serve(
                listeners.http,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
        );
        start_tftp(&cfg, &stop)?;
        start_dhcp(&cfg, &ctx, &stop)?;
        register(cfg.id, advertise, cfg.http_advertise_addr(), stop.clone());
        if cfg.cas_gc_interval_secs > 0 {
            gc_loop(
                ctx.clone(),
                Duration::from_secs(cfg.cas_gc_interval_secs),
                Duration::from_secs(cfg.cas_gc_grace_secs),
                stop,
            );
        }

        if let Some(first) = cfg.bootstrap.iter().map(|m| m.id).min() {
            if first == cfg.id {
                bootstrap(&raft, &cfg).await?;
            }
        }
        Ok(Head { ctx, server, http })
    }

    /// Wait for the gRPC server to stop (after the shutdown future fired), then stop Raft.
    pub async fn join(self) -> Result<(), DaemonError> {
        let served = self.server.await;
        if let Ok(Err(e)) = self.http.await {
            tracing::warn!("HTTP server: {e}");
        }
        let _ = self.ctx.raft.shutdown().await;
        match served {
            Ok(r) => r.map_err(DaemonError::from),
            Err(e) => Err(DaemonError::Raft(format!("server task failed: {e}"))),
        }
    }
}

/// sled locks its directory; a head restarted in the same process (tests) may
/// find the previous instance still releasing it for a moment.
async fn open_store_with_retry(
    cfg: &HeadConfig,
) -> Result<
    (
        store::LogStore<crate::raft::TypeConfig>,
        store::StateMachineStore<crate::raft::TypeConfig, State>,
    ),
    DaemonError,
> {
    let scfg = StoreConfig {
        cache_capacity_bytes: cfg.cache_mib * 1024 * 1024,
    };
    let mut tries = 0;
    loop {
        match store::open(&cfg.data_dir, &scfg) {
            Ok(s) => return Ok(s),
            Err(e) if tries < 50 && e.is_locked() => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(source) => {
                return Err(DaemonError::Store {
                    path: cfg.data_dir.clone(),
                    source,
                })
            }
        }
    }
}

/// The boot routes' state: this head's view, CAS and status board; a blob a node
/// asks for that this head lacks is fetched from a peer in the background.
fn boot_http_state(cfg: &HeadConfig, ctx: &HeadCtx) -> Result<crate::boot::http::BootHttp, DaemonError> {
    let templates = crate::boot::http::ipxe::IpxeTemplates::load(cfg.boot.http.ipxe_templates.as_deref())
        .map_err(|e| DaemonError::Invalid(format!("boot.http.ipxe_templates: {e}")))?;
    let mut b = crate::boot::http::BootHttp::new(ctx.view.clone(), ctx.cas.clone(), ctx.status.clone(), ctx.id);
    b.templates = std::sync::Arc::new(templates);
    // `/efiboot/` serves the same iPXE directory as TFTP, whether or not TFTP is on
    // (a UEFI HTTP boot needs no TFTP at all).
    b.efi_dir = match crate::boot::files::BootDir::new(&cfg.boot.tftp.root) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(root = %cfg.boot.tftp.root.display(), "no iPXE directory for /efiboot/ (UEFI HTTP boot): {e}");
            None
        }
    };
    let (cas, view) = (ctx.cas.clone(), ctx.view.clone());
    let http = reqwest::Client::new();
    b.on_missing_blob = Some(std::sync::Arc::new(move |d| {
        let (cas, http) = (cas.clone(), http.clone());
        let peers: Vec<String> = view.borrow().heads.values().map(|h| h.http.clone()).collect();
        tokio::spawn(async move {
            if let Err(e) = crate::cas::http::fetch_from_peers(&cas, &http, &d, &peers).await {
                tracing::warn!("boot: {e}");
            }
        });
    }));
    Ok(b)
}

/// TFTP on `boot.tftp.listen`. A bad configuration stops start-up; an address that
/// cannot be bound yet (the rack interface is not up, another TFTP server holds the
/// port) is logged and retried every 2 s, so the head keeps serving Raft, `wwctl`
/// and its other racks meanwhile.
fn start_tftp(cfg: &HeadConfig, stop: &CancellationToken) -> Result<(), DaemonError> {
    if !cfg.boot.tftp.enabled {
        return Ok(());
    }
    cfg.boot
        .tftp
        .validate()
        .map_err(|e| DaemonError::Invalid(format!("boot.tftp: {e}")))?;
    let (tcfg, stop) = (cfg.boot.tftp.clone(), stop.clone());
    tokio::spawn(async move {
        let what = format!("TFTP cannot start yet on {}", tcfg.listen);
        let bind = || std::future::ready(crate::boot::tftp::bind(&tcfg));
        let Some(socket) = crate::boot::retry::retry_every(Duration::from_secs(2), &what, stop.cancelled(), bind).await
        else {
            return;
        };
        if let Err(e) = crate::boot::tftp::run(socket, tcfg, stop.cancelled_owned()).await {
            tracing::error!("TFTP stopped: {e}");
        }
    });
    Ok(())
}

fn start_dhcp(cfg: &HeadConfig, ctx: &HeadCtx, stop: &CancellationToken) -> Result<(), DaemonError> {
    let dcfg = crate::boot::dhcp::config::DhcpConfig::try_from(cfg.boot.dhcp.clone())
        .map_err(|e| DaemonError::Invalid(format!("boot.dhcp: {e}")))?;
    if !dcfg.enabled() {
        return Ok(());
    }
    let leases = std::sync::Arc::new(crate::boot::dhcp::raft_leases::RaftLeases::start(
        ctx.addr.clone(),
        cfg.id,
        &dcfg,
        tokio::runtime::Handle::current(),
    ));
    let (view, stop) = (ctx.view.clone(), stop.clone());
    tokio::spawn(async move {
        if let Err(e) = crate::boot::dhcp::DhcpServer::new(dcfg, view, leases)
            .run(stop.cancelled_owned())
            .await
        {
            tracing::error!("DHCP stopped: {e}");
        }
    });
    Ok(())
}

/// Periodically delete blobs that no catalog entry references (after the grace period).
fn gc_loop(ctx: HeadCtx, every: Duration, grace: Duration, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let referenced: std::collections::HashSet<crate::cas::Digest> = ctx
                .sm
                .read(|s| s.images.values().flat_map(|v| v.value.blobs()).collect());
            let cas = ctx.cas.clone();
            match tokio::task::spawn_blocking(move || cas.gc(&referenced, grace)).await {
                Ok(Ok(st)) if st.removed + st.temp_removed > 0 => tracing::info!(
                    removed = st.removed,
                    bytes = st.bytes_freed,
                    temp = st.temp_removed,
                    kept = st.kept,
                    "blob GC"
                ),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("blob GC: {e}"),
                Err(e) => tracing::warn!("blob GC task: {e}"),
            }
        }
    });
}

/// Record this head's HTTP address in the replicated state (through its own admin
/// API, which forwards to the leader), retrying until the head is part of a cluster
/// with a leader — a head waiting to be joined may wait a long time — or stops.
fn register(id: u64, grpc: String, http: String, stop: CancellationToken) {
    tokio::spawn(async move {
        let client = Client::new(vec![grpc]).with_deadline(Duration::from_secs(10));
        let cmd = Command::RegisterHead {
            id,
            info: HeadInfo { http },
        };
        // Bounded: one attempt every 2 s for a day, or until shutdown.
        crate::boot::retry::RetryEvery::new(Duration::from_secs(2))
            .at_most(43_200)
            .first_failure_at(tracing::Level::DEBUG)
            .run("registering HTTP address", stop.cancelled(), || {
                client.write(cmd.clone())
            })
            .await;
    });
}

/// Initialise a new cluster once; then (on every start of this founder) make sure
/// the cluster is named and has its `default` profile. `Init` is idempotent, and
/// repeating it covers a crash between `initialize` and the first commit.
async fn bootstrap(raft: &Raft, cfg: &HeadConfig) -> Result<(), DaemonError> {
    if !raft
        .is_initialized()
        .await
        .map_err(|e| DaemonError::Raft(e.to_string()))?
    {
        let members: BTreeMap<u64, BasicNode> = cfg
            .bootstrap
            .iter()
            .map(|m| (m.id, BasicNode { addr: m.addr.clone() }))
            .collect();
        tracing::info!(?members, "initialising a new cluster");
        raft.initialize(members)
            .await
            .map_err(|e| DaemonError::Raft(format!("initialise: {e}")))?;
    }
    // Through any founder (the client forwards to the leader), in the background so
    // start-up does not wait for the other founders.
    let heads = cfg.bootstrap.iter().map(|m| m.addr.clone()).collect();
    let name = cfg.cluster_name.clone();
    tokio::spawn(async move {
        let client = Client::new(heads).with_deadline(Duration::from_secs(120));
        if let Err(e) = client.write(Command::Init { name }).await {
            tracing::warn!("could not record the cluster name: {e}");
        }
    });
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<HeadConfig, String> {
        let c: HeadConfig = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn example_config_is_valid() {
        let c = parse(include_str!("../../cluster/examples/wulfd.yaml")).unwrap();
        assert_eq!(c.bootstrap.len(), 3);
        assert_eq!(c.advertise_addr(), "10.0.0.1:9701");
    }

    #[test]
    fn bad_configs_are_refused_with_reasons() {
        let base = "data_dir: /tmp/x\nlisten: 127.0.0.1:1\n";
        assert!(parse(&format!("id: 0\n{base}")).unwrap_err().contains("1 or more"));
        assert!(parse(&format!("id: 1\n{base}bogus: 1\n"))
            .unwrap_err()
            .contains("bogus"));
        let e = parse(&format!("id: 4\n{base}bootstrap:\n  - {{id: 1, addr: a:1}}\n")).unwrap_err();
        assert!(e.contains("must list itself"), "{e}");
        let e = parse(&format!(
            "id: 1\n{base}bootstrap:\n  - {{id: 1, addr: a:1}}\n  - {{id: 1, addr: b:1}}\n"
        ))
        .unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
        let e = parse(&format!(
            "id: 1\n{base}raft: {{election_timeout_min_ms: 500, election_timeout_max_ms: 100}}\n"
        ))
        .unwrap_err();
        assert!(e.contains("raft"), "{e}");
    }
}
