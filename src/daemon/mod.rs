//! # A head: `wulfd`'s wiring
//!
//! [`Settings`] (validated from `wulfd.yaml`, see [`config`]) is what a head starts
//! from. [`Head::start`] serves the Raft and admin gRPC services at once on the
//! listener the caller bound (tests bind port 0) — answering `Unavailable`
//! ("starting, N of M entries applied") while it opens the store and openraft replays
//! the log — then opens them, and starts the boot services and background tasks, all
//! of which write to the cluster through the head's one [`Cluster`] handle.
//!
//! Cluster lifecycle:
//! - **New cluster:** every founding head lists the same `bootstrap` members. The
//!   head with the lowest id in that list initialises Raft once, when its log is
//!   empty; the others wait to be contacted. Restarting never re-initialises.
//! - **Join:** start a head with no `bootstrap`, then `wwctl cluster join ID ADDR`
//!   on any head: it becomes a learner, catches up and fetches every artifact, then
//!   the leader makes it a voter ([`Cluster::promote_head`]).
//! - **Remove:** `wwctl cluster remove ID`.

pub mod config;
mod http_binds;
pub mod tls;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

pub use config::{HeadConfig, HttpsSettings, Member, Settings};

use crate::api::{AdminService, Gate, GatedRaft, Services};
use crate::boot::status::StatusBoard;
use crate::boot::view::ViewRx;
use crate::cas::sync::ArtifactSync;
use crate::cas::Cas;
use crate::cluster::{Cluster, HeadStatus};
use crate::image::Images;
use crate::overlay::store::Overlays;
use crate::pb;
use crate::raft::{Network, Raft, RaftService, TypeConfig};
use crate::state::{Command, HeadInfo, State};
use crate::store::{self, StateReader};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot read config file {path}: {message}")]
    ReadConfig { path: PathBuf, message: String },
    #[error("config file {path} is not valid: {message}")]
    ParseConfig { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
    #[error("cannot open the data directory {path}: {message}")]
    Store { path: PathBuf, message: String },
    #[error("raft: {0}")]
    Raft(String),
    #[error("gRPC server failed: {0}")]
    Serve(String),
    #[error(
        "Raft stopped on this head ({0}); wulfd exits so that its service manager starts it again \
         (systemd: Restart=on-failure). If the data disk is full, free space in the data directory first"
    )]
    RaftStopped(String),
}

/// The sockets a head serves on, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

/// The parts of a running head (for the daemon's tasks, tests and benchmarks).
#[derive(Clone, Debug)]
pub struct Parts {
    /// The in-process handle every write goes through.
    pub cluster: Cluster,
    /// The locally applied state.
    pub sm: StateReader<State>,
    pub cas: Cas,
    pub images: Images,
    pub overlays: Overlays,
    /// What the boot services read.
    pub view: ViewRx,
    /// Per-node boot status as this head saw it.
    pub status: Arc<StatusBoard>,
    /// Which peer heads are alive and serve which racks.
    pub liveness: Arc<crate::boot::liveness::Liveness>,
    /// Fetches every referenced blob from peers; reports what this head lacks.
    pub artifacts: ArtifactSync,
}

impl Parts {
    pub fn head_status(&self) -> HeadStatus {
        self.cluster.head_status()
    }
}

/// A running head.
#[derive(Debug)]
pub struct Head {
    pub parts: Parts,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Set when Raft stopped on its own (a storage error: the disk full, say).
    fatal: Arc<std::sync::OnceLock<String>>,
}

impl Head {
    /// Serve on `listeners` until `shutdown` resolves; see the module doc.
    pub async fn start(
        cfg: Settings,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Head, DaemonError> {
        let stop = CancellationToken::new();
        // The cluster handle, once Raft is up (the liveness record asks it for quorum;
        // it is created before, with the HTTP server that answers health probes).
        let quorum: Arc<std::sync::OnceLock<Cluster>> = Arc::default();
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });

        // Serve at once, behind the gate: callers get "starting" instead of a hang.
        let progress = Arc::new(std::sync::OnceLock::<StateReader<State>>::new());
        let starting = {
            let progress = progress.clone();
            move || match progress.get() {
                None => "opening its data directory".to_string(),
                Some(sm) => {
                    let p = sm.replay_progress();
                    format!("replaying its log: {} of {} entries applied", p.applied, p.total)
                }
            }
        };
        let admin_gate: Gate<Services> = Gate::new(starting.clone());
        let raft_gate: Gate<RaftService> = Gate::new(starting);
        // Certificates first: the server needs them, and a joining head enrols here.
        let tls = match &cfg.tls {
            Some(t) => Some(tls::HeadTls::prepare(t, cfg.id).await?),
            None => {
                tracing::warn!(
                    "insecure: true — gRPC is plaintext and takes no credentials: anyone who reaches {} controls the cluster",
                    cfg.listen
                );
                None
            }
        };
        let dialer = tls.as_ref().map(|t| t.dialer.clone()).unwrap_or_default();
        for (what, addr, key) in [
            ("gRPC", &cfg.listen, "listen"),
            ("HTTP", &cfg.http_listen, "http_listen"),
        ] {
            if addr
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.ip().is_unspecified())
            {
                tracing::warn!(
                    "{what} listens on every interface ({addr}, as {key} says); the default is this head's own \
                     addresses only (docs/OPERATIONS.md, \"Addresses a head listens on\")"
                );
            }
        }
        private_dir(&cfg.data_dir)?;
        let cas =
            Cas::open(&cfg.data_dir.join("cas")).map_err(|e| DaemonError::Invalid(format!("content store: {e}")))?;
        let liveness = Arc::new(crate::boot::liveness::Liveness::new(cfg.id, {
            let quorum = quorum.clone();
            move || quorum.get().is_some_and(|c: &Cluster| c.in_quorum())
        }));
        // What heads ask each other besides Raft — blobs and liveness probes — shares
        // the gRPC port and its mutual TLS (`api::auth` lets only heads call them).
        let peer_routes = crate::cas::http::router(cas.clone()).merge(crate::boot::liveness::router(liveness.clone()));
        let router = tonic::transport::Server::builder()
            .layer(crate::api::auth::AuthLayer {
                enabled: tls.is_some(),
                state: progress.clone(),
            })
            .add_routes(tonic::service::Routes::from(peer_routes))
            .add_service(
                pb::raft::raft_server::RaftServer::new(GatedRaft {
                    gate: raft_gate.clone(),
                })
                .max_decoding_message_size(usize::MAX),
            )
            .add_service(
                pb::admin::admin_server::AdminServer::new(AdminService {
                    gate: admin_gate.clone(),
                })
                .max_decoding_message_size(usize::MAX),
            );
        let server = match &tls {
            None => tokio::spawn(router.serve_with_incoming_shutdown(
                TcpIncoming::from(listeners.grpc).with_nodelay(Some(true)),
                stop.clone().cancelled_owned(),
            )),
            Some(t) => tokio::spawn(router.serve_with_incoming_shutdown(
                crate::pki::tls::incoming(listeners.grpc, t.server.clone(), stop.clone()),
                stop.clone().cancelled_owned(),
            )),
        };

        let (log, sm) = open_store_with_retry(&cfg).await?;
        let reader = sm.reader();
        // openraft re-applies the log from the snapshot to `committed` inside `Raft::new`.
        let replay = reader.replay_progress();
        if replay.total > 0 {
            tracing::info!(entries = replay.total, "replaying the log since the last snapshot");
        }
        let _ = progress.set(reader.clone());

        // The boot side reads the state as it is replayed (local reads never wait).
        let view = crate::boot::view::publish_for(&sm);
        let status = Arc::new(StatusBoard::new());
        crate::boot::status::forget_deleted_nodes(status.clone(), view.clone());
        let cluster_ca = tls.as_ref().map(|t| t.cert.ca_pem.clone());
        let boot_overlays = boot_overlays(&cfg, &cas, &view, cluster_ca);
        let peer_link = crate::cas::http::PeerLink::new(dialer.clone(), cfg.artifacts.timeouts.connect)
            .map_err(|e| DaemonError::Invalid(format!("HTTP client for peer heads: {e}")))?;
        // Every referenced blob from the peers, ahead of need (reads the state as it
        // is replayed, like the boot view).
        let artifacts = ArtifactSync::start(
            cas.clone(),
            reader.clone(),
            cfg.id,
            cfg.artifacts.clone(),
            peer_link.clone(),
            stop.clone(),
        );
        // Boot files go out with sendfile(2) (cas::zerocopy); everything else as axum::serve.
        // `/health` here is for operators (heads probe each other on the gRPC port).
        let http_router = crate::boot::liveness::router(liveness.clone()).merge(crate::boot::http::router(
            boot_http_state(&cfg, &cas, &view, &status, boot_overlays.clone(), &liveness, &artifacts),
        ));
        let dhcp_addrs: Vec<(std::net::Ipv4Addr, String)> = cfg
            .dhcp
            .iter()
            .flat_map(|d| d.subnets.iter())
            .map(|sub| (sub.server, format!("DHCP subnet {}", sub.network)))
            .collect();
        // `http_listen: :PORT`: also this head's rack addresses and loopback, as racks change.
        if let (Some(port), Ok(main)) = (cfg.http_follow, listeners.http.local_addr()) {
            tokio::spawn(http_binds::follow(
                view.clone(),
                cfg.id,
                port,
                main,
                dhcp_addrs.clone(),
                (http_router.clone(), cfg.boot_http.conn_limits()),
                None,
                stop.clone(),
            ));
        }
        // `https_listen`: the same routes over TLS for wwclient, on the same addresses.
        if let (Some(h), Some(t)) = (&cfg.https, &tls) {
            let config = crate::pki::tls::node_server_config(t.cert.live.clone())
                .map_err(|e| DaemonError::Invalid(format!("https_listen: {e}")))?;
            let l = TcpListener::bind(&h.listen)
                .await
                .map_err(|e| DaemonError::Invalid(format!("https_listen: cannot listen on {}: {e}", h.listen)))?;
            let main = l.local_addr().map_err(|e| DaemonError::Serve(e.to_string()))?;
            tracing::info!(addr = %main, "HTTPS for wwclient listening on {main}");
            tokio::spawn(crate::boot::http::tls::serve_tls(
                l,
                config.clone(),
                http_router.clone(),
                cfg.boot_http.conn_limits(),
                stop.child_token(),
            ));
            if let Some(port) = h.follow {
                tokio::spawn(http_binds::follow(
                    view.clone(),
                    cfg.id,
                    port,
                    main,
                    dhcp_addrs,
                    (http_router.clone(), cfg.boot_http.conn_limits()),
                    Some(config),
                    stop.clone(),
                ));
            }
        }
        let http = tokio::spawn(crate::cas::zerocopy::serve_with(
            listeners.http,
            http_router,
            cfg.boot_http.conn_limits(),
            stop.clone().cancelled_owned(),
        ));

        let raft = Raft::new(cfg.id, cfg.raft.clone(), Network::new(dialer.clone()), log, sm)
            .await
            .map_err(|e| DaemonError::Raft(e.to_string()))?;
        // Snapshots by apply work, log bytes and age (not only entry count), so the next
        // restart's replay stays short whatever the history.
        store::spawn_snapshot_trigger(
            raft.clone(),
            reader.clone(),
            cfg.snapshots.clone(),
            stop.clone().cancelled_owned(),
        );
        let cluster = Cluster::new(
            cfg.id,
            cfg.advertise.clone(),
            raft.clone(),
            reader.clone(),
            dialer.clone(),
        );
        let _ = quorum.set(cluster.clone());
        cluster.report_artifacts(artifacts.clone());
        cluster.report_racks({
            let liveness = liveness.clone();
            Arc::new(move || liveness.report().racks)
        });
        let images = Images::new(cas.clone(), &cfg.data_dir, cluster.clone())
            .with_host_root(cfg.host_root.clone())
            .with_exec_mounts(cfg.image_mounts.clone())
            .with_peers(peer_link.clone());
        let overlays = Overlays::new(cas.clone(), cluster.clone()).with_peers(peer_link);
        let parts = Parts {
            cluster: cluster.clone(),
            sm: reader,
            cas,
            images: images.clone(),
            overlays: overlays.clone(),
            view: view.clone(),
            status: status.clone(),
            liveness: liveness.clone(),
            artifacts,
        };
        raft_gate.open(RaftService { raft: raft.clone() });
        admin_gate.open(Services {
            cluster: cluster.clone(),
            images,
            overlays: overlays.clone(),
            status,
            view,
            ca: tls.as_ref().and_then(|t| t.ca.clone()),
            power: crate::power::Power::new(cfg.power.clone()),
            boot_overlays: boot_overlays.clone(),
            cas: parts.cas.clone(),
            boot: Arc::new(crate::api::BootFacts {
                dhcp: cfg.dhcp.clone(),
                tftp: cfg.tftp.clone(),
                ipxe_dir: cfg.ipxe_dir.clone(),
                http_listen: cfg.http_listen.clone(),
                http_advertise: cfg.http_advertise.clone(),
                secure: cfg.secure,
                overlays: boot_overlays.is_some(),
                tls: tls.as_ref().map(|t| t.facts.clone()),
            }),
        });
        tracing::info!(id = cfg.id, "serving");

        tokio::spawn(
            liveness
                .clone()
                .run(parts.view.clone(), dialer.clone(), stop.clone().cancelled_owned()),
        );
        let fatal = watch_raft(&raft, stop.clone());
        track_readiness(&parts, stop.clone());
        start_tftp(&cfg, &parts.view, &stop);
        start_dhcp(&cfg, &parts, &stop);
        register(
            cluster.clone(),
            HeadInfo {
                http: cfg.http_advertise.clone(),
                grpc: cfg.advertise.clone(),
                https: cfg.https.as_ref().map(|h| h.advertise.clone()).unwrap_or_default(),
            },
            stop.clone(),
        );
        register_overlays(overlays, cfg.wwclient.clone(), stop.clone());
        if let Some((_, host_root)) = &cfg.overlays {
            register_root_keys(cluster.clone(), host_root.clone(), stop.clone());
        }
        if let Some((every, grace)) = cfg.gc {
            gc_loop(parts.clone(), every, grace, stop);
        }
        if let Some(first) = cfg.bootstrap.iter().map(|m| m.id).min() {
            if first == cfg.id {
                bootstrap(&cluster, &cfg).await?;
            }
        }
        Ok(Head {
            parts,
            server,
            http,
            fatal,
        })
    }

    /// Wait for the gRPC server to stop (after the shutdown future fired), then stop Raft.
    pub async fn join(self) -> Result<(), DaemonError> {
        let served = self.server.await;
        if let Ok(Err(e)) = self.http.await {
            tracing::warn!("HTTP server: {e}");
        }
        // Bounded: after a storage failure Raft's tasks may wait on a disk that never answers.
        if tokio::time::timeout(Duration::from_secs(10), self.parts.cluster.raft().shutdown())
            .await
            .is_err()
        {
            tracing::warn!("Raft did not stop within 10 s; exiting without it");
        }
        if let Some(f) = self.fatal.get() {
            return Err(DaemonError::RaftStopped(f.clone()));
        }
        match served {
            Ok(r) => r.map_err(|e| DaemonError::Serve(e.to_string())),
            Err(e) => Err(DaemonError::Serve(format!("server task failed: {e}"))),
        }
    }
}

/// openraft stops a head's Raft for good on a storage error (a write to a full disk, an
/// I/O error): the process would stay up with its ports open yet never vote or apply
/// again, even once the disk has room (the chaos suite's disk-full scenario found two
/// such heads leave the cluster without a majority). So a stopped Raft stops the head:
/// shutdown is triggered, `Head::join` returns [`DaemonError::RaftStopped`] and `wulfd`
/// exits 1 for its service manager to restart it, which reopens the store from disk.
fn watch_raft(raft: &Raft, stop: CancellationToken) -> Arc<std::sync::OnceLock<String>> {
    let fatal: Arc<std::sync::OnceLock<String>> = Arc::default();
    let mut metrics = raft.metrics();
    let out = fatal.clone();
    tokio::spawn(async move {
        loop {
            let state = metrics.borrow().running_state.clone();
            if let Err(f) = state {
                if !stop.is_cancelled() {
                    tracing::error!("Raft stopped on this head: {f}; stopping wulfd so that it can be restarted");
                    let _ = out.set(f.to_string());
                    stop.cancel();
                }
                return;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                r = metrics.changed() => if r.is_err() { return },
            }
        }
    });
    fatal
}

/// The data dir holds secrets (SSH host keys and IPMI passwords in the replicated state
/// and its snapshots): created 0700, and tightened to 0700 when found looser.
fn private_dir(dir: &std::path::Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |e: std::io::Error| DaemonError::Store {
        path: dir.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        tracing::info!(dir = %dir.display(), "data dir was mode {mode:o}; set to 700 (it holds secrets)");
    }
    Ok(())
}

/// sled locks its directory; a head restarted in the same process (tests) may
/// find the previous instance still releasing it for a moment.
async fn open_store_with_retry(
    cfg: &Settings,
) -> Result<(store::LogStore<TypeConfig>, store::StateMachineStore<TypeConfig, State>), DaemonError> {
    let mut tries = 0;
    loop {
        match store::open(&cfg.data_dir, &cfg.store) {
            Ok(s) => return Ok(s),
            Err(e) if tries < 50 && e.is_locked() => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(DaemonError::Store {
                    path: cfg.data_dir.clone(),
                    message: e.to_string(),
                })
            }
        }
    }
}

/// The overlay builder this head's boot routes and `wwctl overlay show --render|build`
/// share (none when `boot.overlays.enabled` is false).
fn boot_overlays(
    cfg: &Settings,
    cas: &Cas,
    view: &ViewRx,
    cluster_ca: Option<String>,
) -> Option<Arc<crate::boot::overlays::BootOverlays>> {
    let (server, host_root) = cfg.overlays.as_ref()?;
    let access = Arc::new(crate::overlay::render::HostFs {
        host_root: host_root.clone(),
        // Not read: `IncludeFrom` reads the images' layers (ClusterFiles below).
        images_dir: cfg.data_dir.join("images"),
        policy: crate::overlay::render::AccessPolicy::default(),
    });
    // The cluster's SSH host keys are read before the head's own /etc/warewulf/keys;
    // image files (`IncludeFrom`) come from the images' layers in the CAS.
    let images = crate::image::files::ImageFiles::new(cas.clone(), crate::image::files::Limits::default());
    let access = Arc::new(crate::overlay::render::ClusterFiles::new(access).with_images(Arc::new(images)));
    let overlays = Arc::new(
        crate::boot::overlays::BootOverlays::new(
            cfg.id,
            cas.clone(),
            server.clone(),
            access.clone(),
            crate::overlay::render::AccessPolicy::default(),
        )
        .with_cluster_files(access)
        .with_cluster_ca(cluster_ca),
    );
    crate::boot::overlays::forget_stale(overlays.clone(), view.clone());
    Some(overlays)
}

/// The boot routes' state: this head's view, CAS and status board; a blob a node
/// asks for that this head lacks goes to the front of the artifact sync's queue.
fn boot_http_state(
    cfg: &Settings,
    cas: &Cas,
    view: &ViewRx,
    status: &Arc<StatusBoard>,
    overlays: Option<Arc<crate::boot::overlays::BootOverlays>>,
    liveness: &Arc<crate::boot::liveness::Liveness>,
    artifacts: &ArtifactSync,
) -> crate::boot::http::BootHttp {
    let mut b = crate::boot::http::BootHttp::new(view.clone(), cas.clone(), status.clone(), cfg.id);
    b.templates = cfg.ipxe_templates.clone();
    // `/efiboot/` serves the same iPXE directory as TFTP, whether or not TFTP is on
    // (a UEFI HTTP boot needs no TFTP at all).
    b.efi_dir = match crate::boot::files::BootDir::new(&cfg.ipxe_dir) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(root = %cfg.ipxe_dir.display(), "no iPXE directory for /efiboot/ (UEFI HTTP boot): {e}");
            None
        }
    };
    b.secure = cfg.secure;
    b.overlays = overlays;
    b.liveness = Some(liveness.clone());
    let artifacts = artifacts.clone();
    b.on_missing_blob = Some(Arc::new(move |d| artifacts.want(d)));
    b.allow = Some(boot_allow(cfg, view));
    b.per_client = Some(crate::boot::limit::PerClient::new(
        cfg.boot_http.max_transfers_per_client,
        "HTTP boot",
        "boot.http.max_transfers_per_client",
    ));
    b
}

/// Which clients HTTP boot and TFTP answer: `boot.allow`, this head's DHCP subnets, and
/// (read from the view at each request) the racks' networks and the nodes' addresses.
fn boot_allow(cfg: &Settings, view: &ViewRx) -> Arc<crate::boot::allow::Allow> {
    let mut nets = cfg.boot_allow.clone();
    if let Some(d) = &cfg.dhcp {
        nets.extend(d.subnets.iter().map(|s| s.network));
    }
    Arc::new(crate::boot::allow::Allow::new(view.clone(), nets))
}

/// Keep the liveness record's unready racks current: a rack is not ready while one of
/// its nodes needs a blob this head lacks (its image's blobs, or an overlay tree). DHCP
/// then leaves the rack to its next head and `/health` stops listing it, so a head that
/// joined or lost a blob never answers a node it cannot boot.
fn track_readiness(parts: &Parts, stop: CancellationToken) {
    let (liveness, mut view, mut missing) = (parts.liveness.clone(), parts.view.clone(), parts.artifacts.missing());
    let me = parts.cluster.id();
    tokio::spawn(async move {
        loop {
            let lacking = missing.borrow_and_update().clone();
            let v = view.borrow_and_update().clone();
            let mut not_ready = std::collections::BTreeSet::new();
            if lacking.count() > 0 {
                let overlay_missing = v.overlays.values().any(|d| lacking.blobs.contains_key(d));
                for name in v.racks.iter().filter(|(_, r)| r.position(me).is_some()).map(|(n, _)| n) {
                    let needs_missing = overlay_missing
                        || v.nodes.values().any(|n| {
                            v.rack_of(n).is_some_and(|(r, _)| r == name)
                                && v.image_of(n)
                                    .is_some_and(|i| i.blobs().any(|d| lacking.blobs.contains_key(&d)))
                        });
                    if needs_missing {
                        not_ready.insert(name.clone());
                    }
                }
            }
            liveness.set_not_ready(not_ready);
            tokio::select! {
                _ = stop.cancelled() => return,
                r = missing.changed() => if r.is_err() { return },
                r = view.changed() => if r.is_err() { return },
            }
        }
    });
}

/// TFTP on each address of `boot.tftp.listen` (one per rack the head serves). An
/// address that cannot be bound yet (the rack interface is not up, another TFTP server
/// holds the port) is logged and retried every 2 s, so the head keeps serving Raft,
/// `wwctl`, its other racks and its other TFTP addresses meanwhile.
fn start_tftp(cfg: &Settings, view: &ViewRx, stop: &CancellationToken) {
    let Some(tcfg) = cfg.tftp.clone() else { return };
    let allow = boot_allow(cfg, view);
    for addr in tcfg.listen.addrs() {
        let (tcfg, stop, addr, allow) = (tcfg.clone(), stop.clone(), addr.to_owned(), allow.clone());
        tokio::spawn(async move {
            let what = format!("TFTP cannot start yet on {addr}");
            let bind = || std::future::ready(crate::boot::tftp::bind_addr(&addr));
            let Some(socket) =
                crate::boot::retry::retry_every(Duration::from_secs(2), &what, stop.cancelled(), bind).await
            else {
                return;
            };
            if let Err(e) = crate::boot::tftp::run(socket, tcfg, Some(allow), stop.cancelled_owned()).await {
                tracing::error!("TFTP on {addr} stopped: {e}");
            }
        });
    }
}

fn start_dhcp(cfg: &Settings, parts: &Parts, stop: &CancellationToken) {
    let Some(dcfg) = cfg.dhcp.clone() else {
        warn_racks_without_dhcp(parts, stop.clone());
        return;
    };
    let leases = Arc::new(crate::boot::dhcp::raft_leases::RaftLeases::start(
        parts.cluster.clone(),
        &dcfg,
        tokio::runtime::Handle::current(),
    ));
    let (view, stop) = (parts.view.clone(), stop.clone());
    let mut server = crate::boot::dhcp::DhcpServer::new(dcfg, view, leases);
    server.head_id = Some(cfg.id);
    server.health = parts.liveness.clone();
    tokio::spawn(async move {
        if let Err(e) = server.run(stop.cancelled_owned()).await {
            tracing::error!("DHCP stopped: {e}");
        }
    });
}

/// A head with DHCP off that racks list as one of their heads: say so (once per change
/// of those racks), since the operator meant it to serve them. Its `/health` lists no
/// rack, so the racks' other heads answer meanwhile.
fn warn_racks_without_dhcp(parts: &Parts, stop: CancellationToken) {
    let (mut view, me) = (parts.view.clone(), parts.cluster.id());
    tokio::spawn(async move {
        let mut said: Vec<String> = Vec::new();
        loop {
            let listed: Vec<String> = {
                let v = view.borrow_and_update();
                v.racks
                    .iter()
                    .filter(|(_, r)| r.position(me).is_some())
                    .map(|(n, _)| n.clone())
                    .collect()
            };
            if !listed.is_empty() && listed != said {
                tracing::warn!(
                    racks = %listed.join(","),
                    "racks list this head, but DHCP is off here (boot.dhcp.interfaces is empty): it answers \
                     none of their requests and their other heads serve them; add the rack interfaces to \
                     boot.dhcp.interfaces and restart wulfd, or take the head out with `wwctl rack set`"
                );
            }
            said = listed;
            tokio::select! {
                _ = stop.cancelled() => return,
                r = view.changed() => if r.is_err() { return },
            }
        }
    });
}

/// Periodically delete blobs that no catalog entry references (after the grace period).
fn gc_loop(parts: Parts, every: Duration, grace: Duration, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            // The same set the artifact sync fetches: what one keeps the other never deletes.
            let referenced: std::collections::HashSet<crate::cas::Digest> =
                parts.sm.read(|s| crate::cas::sync::referenced(s).into_keys().collect());
            let cas = parts.cas.clone();
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

/// Record this head's HTTP, gRPC and HTTPS addresses in the replicated state, retrying until the head
/// is part of a cluster with a leader — a head waiting to be joined may wait a long
/// time — or stops. Skipped when the state already has it (a restart).
fn register(cluster: Cluster, info: HeadInfo, stop: CancellationToken) {
    tokio::spawn(async move {
        let id = cluster.id();
        // Bounded: one attempt every 2 s for a day, or until shutdown.
        if cluster.state().read(|s| s.cluster.heads.get(&id) == Some(&info)) {
            return;
        }
        let cmd = Command::RegisterHead { id, info };
        crate::boot::retry::RetryEvery::new(Duration::from_secs(2))
            .at_most(43_200)
            .first_failure_at(tracing::Level::DEBUG)
            .run("registering its addresses", stop.cancelled(), || {
                cluster.write(cmd.clone())
            })
            .await;
    });
}

/// The head's root public keys (`<host_root>/root/.ssh/id_*.pub`, one line each).
fn read_root_keys(host_root: &std::path::Path) -> Vec<String> {
    let dir = host_root.join("root/.ssh");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("id_") && n.ends_with(".pub"))
        })
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|t| t.lines().next().map(|l| l.trim().to_owned()))
        .filter(|l| !l.is_empty())
        .take(16)
        .collect()
}

/// Keep this head's root public keys registered in the cluster, so every node authorizes
/// root of every head (`ssh.authorized_keys`). Checked at start and every minute; written
/// only when they differ from what the cluster has (an idle head writes nothing).
fn register_root_keys(cluster: Cluster, host_root: PathBuf, stop: CancellationToken) {
    tokio::spawn(async move {
        let id = cluster.id();
        loop {
            let keys = read_root_keys(&host_root);
            let have = cluster
                .state()
                .read(|s| s.ssh.root.get(&id).cloned().unwrap_or_default());
            // Every 2 s until the cluster has this head's keys (it may not be initialised
            // or have a leader yet), then every minute.
            let mut next = Duration::from_secs(60);
            if keys != have {
                let cmd = Command::Ssh(crate::state::SshCommand::SetRootKeys { head: id, keys });
                if !cluster.state().read(|s| s.initialised()) {
                    next = Duration::from_secs(2);
                } else if let Err(e) = cluster.write(cmd).await {
                    tracing::debug!("registering root's SSH keys (retried in 2 s): {e}");
                    next = Duration::from_secs(2);
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(next) => {}
            }
        }
    });
}

/// Store the distribution overlays compiled into this binary in the CAS and register
/// them in the catalog where it differs (like the cluster name's `Init`, in the
/// background, retrying until the head is part of a cluster with a leader).
fn register_overlays(overlays: Overlays, wwclient: Option<PathBuf>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut set = match crate::overlay::store::distribution() {
            Ok(s) => s,
            Err(e) => {
                // A build with a broken distribution overlay: serve the rest.
                tracing::error!("distribution overlays not registered: {e}");
                return;
            }
        };
        // The node agent travels in the `wwclient` overlay, as in Warewulf.
        if let Some(t) = set.get_mut("wwclient") {
            // The size first: a debug build of wwclient is over 100 MB, and reading it
            // only to refuse it would leave that much in the head's heap.
            let read = |p: &std::path::Path| match std::fs::metadata(p) {
                Ok(m) if m.len() > crate::overlay::tree::MAX_FILE_BYTES as u64 => Err(std::io::Error::other(format!(
                    "it is {} bytes, over the {} an overlay file may hold; build it small and static \
                     (cargo build --profile node --target x86_64-unknown-linux-musl --bin wwclient) and name it in \
                     boot.overlays.wwclient",
                    m.len(),
                    crate::overlay::tree::MAX_FILE_BYTES
                ))),
                _ => std::fs::read(p),
            };
            match wwclient.as_deref().map(|p| (p, read(p))) {
                Some((p, Ok(bin))) => {
                    if let Err(e) = t.put_file("warewulf/wwclient", bin, Some(0o755), None, true, true) {
                        tracing::error!(
                            "the wwclient binary {} cannot go into the wwclient overlay: {e}; build it small and static (cargo build --profile node --target x86_64-unknown-linux-musl --bin wwclient) and name it in boot.overlays.wwclient",
                            p.display()
                        );
                    }
                }
                Some((p, Err(e))) => tracing::error!("cannot use the wwclient binary {}: {e}", p.display()),
                None => tracing::warn!(
                    "no wwclient binary beside wulfd and none in boot.overlays.wwclient: the wwclient overlay ships without it, so nodes will not refresh their runtime overlays"
                ),
            }
        }
        // Bounded: one attempt every 2 s for a day, or until shutdown.
        let changed = crate::boot::retry::RetryEvery::new(Duration::from_secs(2))
            .at_most(43_200)
            .first_failure_at(tracing::Level::DEBUG)
            .run("registering the distribution overlays", stop.cancelled(), || {
                overlays.register_distribution(&set)
            })
            .await;
        if let Some(names) = changed.filter(|n| !n.is_empty()) {
            tracing::info!(
                overlays = names.len(),
                "registered distribution overlays: {}",
                names.join(", ")
            );
        }
    });
}

/// Initialise a new cluster once; then (on every start of this founder) make sure
/// the cluster is named and has its `default` profile. `Init` is idempotent, and
/// repeating it covers a crash between `initialize` and the first commit.
async fn bootstrap(cluster: &Cluster, cfg: &Settings) -> Result<(), DaemonError> {
    let raft = cluster.raft();
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
    // In the background, so start-up does not wait for the other founders; the
    // handle forwards to whichever head leads.
    let (cluster, name) = (cluster.clone(), cfg.cluster_name.clone());
    tokio::spawn(async move {
        if cluster.state().read(|s| s.cluster.name == name) {
            return;
        }
        if let Err(e) = cluster
            .write_within(
                Command::Init {
                    name,
                    // The content travels in the command: every head, and every replay
                    // of the log, creates the profile this head's version ships.
                    default_profile: Some(Box::new(crate::model::default_profile())),
                },
                Duration::from_secs(120),
            )
            .await
        {
            tracing::warn!("could not record the cluster name: {e}");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Settings, String> {
        let c: HeadConfig = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        Settings::try_from(c).map_err(|e| e.to_string())
    }

    #[test]
    fn example_config_is_valid() {
        let c = parse(include_str!("../../cluster/examples/wulfd.yaml")).unwrap();
        assert_eq!(c.bootstrap.len(), 3);
        assert_eq!(c.advertise, "10.0.0.1:9701");
        // No wildcard unless written: gRPC on the advertised address, HTTP on the head's
        // own addresses (the advertised host, then its racks as they come).
        assert_eq!(c.listen, "10.0.0.1:9701");
        assert_eq!((c.http_listen.as_str(), c.http_follow), ("10.0.0.1:9873", Some(9873)));
        assert_eq!(c.http_advertise, "10.0.0.1:9873");
    }

    #[test]
    fn https_listen_is_off_unless_set_and_needs_tls_and_a_port_of_its_own() {
        let base = "id: 1\ndata_dir: /tmp/x\nadvertise: 10.0.0.2:9701\n";
        assert_eq!(parse(base).unwrap().https, None);
        let c = parse(&format!("{base}https_listen: \":9874\"\n")).unwrap();
        assert_eq!(
            c.https,
            Some(HttpsSettings {
                listen: "10.0.0.2:9874".into(),
                follow: Some(9874),
                advertise: "10.0.0.2:9874".into(),
            })
        );
        let c = parse(&format!("{base}https_listen: 0.0.0.0:443\n")).unwrap();
        let h = c.https.unwrap();
        assert_eq!(
            (h.listen.as_str(), h.follow, h.advertise.as_str()),
            ("0.0.0.0:443", None, "10.0.0.2:443")
        );
        for (extra, want) in [
            (
                "https_listen: \":9874\"\ninsecure: true\n",
                "insecure: true runs without one",
            ),
            ("https_listen: \":9873\"\n", "a port of its own"),
            ("https_listen: \":x\"\n", "give :PORT"),
            ("https_listen: somewhere\n", "give :PORT"),
        ] {
            let e = parse(&format!("{base}{extra}")).unwrap_err();
            assert!(e.contains(want) && e.contains("https_listen"), "{extra}: {e}");
        }
    }

    #[test]
    fn listen_addresses_default_to_the_heads_own() {
        let c = parse(
            "id: 1
data_dir: /tmp/x
advertise: 10.0.0.2:9701
",
        )
        .unwrap();
        assert_eq!(
            (c.listen.as_str(), c.http_listen.as_str()),
            ("10.0.0.2:9701", "10.0.0.2:9873")
        );
        // Written wildcards and single addresses are kept as written, and do not follow racks.
        let c = parse(
            "id: 1
data_dir: /tmp/x
listen: 0.0.0.0:9701
advertise: 10.0.0.2:9701
http_listen: 0.0.0.0:80
",
        )
        .unwrap();
        assert_eq!(
            (c.listen.as_str(), c.http_listen.as_str(), c.http_follow),
            ("0.0.0.0:9701", "0.0.0.0:80", None)
        );
        assert_eq!(c.http_advertise, "10.0.0.2:80");
        let c = parse(
            "id: 1
data_dir: /tmp/x
advertise: 10.0.0.2:9701
http_listen: \":8080\"\n",
        )
        .unwrap();
        assert_eq!((c.http_listen.as_str(), c.http_follow), ("10.0.0.2:8080", Some(8080)));
        let e = parse(
            "id: 1
data_dir: /tmp/x
",
        )
        .unwrap_err();
        assert!(e.contains("give advertise"), "{e}");
        let e = parse(
            "id: 1
data_dir: /tmp/x
listen: 0.0.0.0:9701
",
        )
        .unwrap_err();
        assert!(e.contains("no peer can reach"), "{e}");
        let e = parse(
            "id: 1
data_dir: /tmp/x
advertise: a:1
http_listen: \":x\"\n",
        )
        .unwrap_err();
        assert!(e.contains(":PORT"), "{e}");
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

    #[test]
    fn a_broken_ipxe_template_is_a_config_error_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("default.ipxe"), "#!ipxe\n{{ broken\n").unwrap();
        let e = parse(&format!(
            "id: 1\ndata_dir: /nonexistent/never-created\nlisten: 127.0.0.1:1\nboot:\n  http:\n    ipxe_templates: {}\n",
            dir.path().display()
        ))
        .unwrap_err();
        assert!(e.contains("boot.http.ipxe_templates"), "{e}");
        assert!(e.contains("default.ipxe"), "names the file: {e}");
        assert!(!std::path::Path::new("/nonexistent/never-created").exists());
    }
}
