//! # HTTP boot: iPXE scripts, kernels, images, overlays, `/status`
//!
//! Warewulf's routes and query parameters, so Warewulf's iPXE scripts, `wwclient`
//! habits and operators' curl one-liners keep working:
//!
//! | route | answer |
//! |---|---|
//! | `/ipxe/{wwid}` | the node's iPXE script (template `ipxe template`, default `default`); an unknown MAC gets `unconfigured` |
//! | `/kernel/{wwid}` | the image's kernel blob (or the `kernels` entry the node pins with `kernel.version`) |
//! | `/image/{wwid}` (`/container/…`) | the image's `cpio.gz` artifact blob |
//! | `/system/{wwid}`, `/runtime/{wwid}` (`/overlay-system/…`, `/overlay-runtime/…`) | the node's overlays rendered and packed (`boot::overlays`); runtime only to the node's address and, in secure mode, a privileged port (403 otherwise; the scripts skip what fails) |
//! | `/provision/{wwid}?stage=…` | deprecated form of all of the above |
//! | `/efiboot/{file}` | an iPXE binary for UEFI HTTP boot (DHCP's `http_boot_path`), from the iPXE directory TFTP serves |
//! | `/status` | Warewulf's status JSON: every node's stage, sent, ipaddr, last seen |
//!
//! Every route also takes `?wwid=` instead of the path segment; with neither, the
//! node is found by the client's address (Warewulf looks in the ARP cache; the
//! view's IP index says the same without reading `/proc`). `assetkey` must equal
//! the node's `asset key` when it has one (else 401 and status `BAD_ASSET`);
//! `uuid` is recorded; `compress=gz` is satisfied by the artifacts as they are
//! (they are gzip already) and refused for scripts and kernels, as Warewulf does.
//!
//! Design notes:
//! - **Reads only the [`BootView`]** (merged nodes by MAC/IP, images, heads): a
//!   boot request costs hash lookups, never a Raft round trip, and keeps working
//!   while the cluster has no leader.
//! - **One error type, one mapping to HTTP codes** ([`BootError`]): every refusal
//!   says what is missing and what an operator can do about it, because the only
//!   person who sees a 404 body is the one debugging a node that will not boot.
//! - **Big files stream from the CAS** with Range, `If-None-Match` and `If-Range`
//!   ([`crate::cas::serve`], shared with the peer blob route); the ETag is the content digest.
//! - **A missing blob is not this head's failure to hide**: the response is a 404
//!   naming the blob, the iPXE script moves on to the next head, and the
//!   [`MissingBlobHook`] tells the daemon to fetch it from a peer.
//! - **Status is recorded per send** in the head's [`StatusBoard`] (no Raft write).

pub mod ipxe;
pub mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};

use self::ipxe::{IpxeContext, IpxeError, IpxeTemplates, DEFAULT_TEMPLATE, UNCONFIGURED_TEMPLATE};
use super::files::{file_key, BootDir, FileKey, Refusal};
use super::status::{Stage, StatusBoard};
use super::view::{BootNode, BootView, ViewRx};
use crate::cas::serve::{self, Verifier};
use crate::cas::{Cas, CasError, Digest};
use crate::model;
use crate::overlay::build::OverlayKind;
use crate::state::{ImageEntry, KernelRef};

/// `boot: http:` in `wulfd.yaml` (the boot routes share the head's HTTP listener).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootHttpConfig {
    /// Directory of `<name>.ipxe` Tera templates replacing or adding to the built-ins.
    pub ipxe_templates: Option<PathBuf>,
    /// Warewulf's secure mode: the runtime overlay (it holds keys) only to requests
    /// from a privileged source port (< 1024), as `wwclient` sends them. Default true.
    pub secure: bool,
    /// Boot requests in flight (a response still being sent) from one client address;
    /// beyond: 503 with `Retry-After` ([`crate::boot::limit`]). Default 8.
    pub max_transfers_per_client: usize,
    /// Request line and headers, in bytes, on the head's HTTP listener; beyond: 431.
    /// Default 8192 (8 KiB).
    pub max_head_bytes: usize,
    /// Seconds a connection has to send a complete request head (slowloris); then it
    /// is closed. Default 10.
    pub header_read_timeout_secs: u64,
}

impl Default for BootHttpConfig {
    fn default() -> Self {
        let conn = crate::cas::zerocopy::ConnLimits::default();
        BootHttpConfig {
            ipxe_templates: None,
            secure: true,
            max_transfers_per_client: 8,
            max_head_bytes: conn.max_head_bytes,
            header_read_timeout_secs: conn.header_read_timeout.as_secs(),
        }
    }
}

/// A `boot.http` value that would make a useless server.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {why}")]
pub struct BootHttpConfigError {
    pub field: &'static str,
    pub why: String,
}

impl BootHttpConfig {
    /// Check the limits (zero would refuse every request or close every connection).
    pub fn validate(&self) -> Result<(), BootHttpConfigError> {
        let bad = |field: &'static str, why: &str| {
            Err(BootHttpConfigError {
                field,
                why: why.to_owned(),
            })
        };
        if self.max_transfers_per_client == 0 {
            return bad(
                "max_transfers_per_client",
                "0 would refuse every boot request; the default is 8",
            );
        }
        if self.max_head_bytes < 1024 {
            return bad(
                "max_head_bytes",
                "below 1024 bytes even a plain iPXE request would be refused; the default is 8192",
            );
        }
        if self.header_read_timeout_secs == 0 {
            return bad(
                "header_read_timeout_secs",
                "0 would close every connection before its request; the default is 10",
            );
        }
        Ok(())
    }

    /// The listener's connection limits.
    pub fn conn_limits(&self) -> crate::cas::zerocopy::ConnLimits {
        crate::cas::zerocopy::ConnLimits {
            max_head_bytes: self.max_head_bytes,
            header_read_timeout: std::time::Duration::from_secs(self.header_read_timeout_secs),
        }
    }
}

/// `Retry-After` of a 503 for too many transfers: about the time a node's smaller
/// files take, so a well-behaved client comes back when one has likely ended.
pub const RETRY_AFTER_SECS: u64 = 5;

/// Called with a blob a boot request needed but this head lacks (or had corrupt):
/// the daemon starts a peer fetch (`cas::http::fetch_from_peers`).
pub type MissingBlobHook = Arc<dyn Fn(Digest) + Send + Sync>;

/// What the boot routes read and write.
#[derive(Clone)]
pub struct BootHttp {
    pub view: ViewRx,
    pub cas: Cas,
    pub status: Arc<StatusBoard>,
    /// This head's id (its own address goes first in the scripts' head list).
    pub head_id: u64,
    pub templates: Arc<IpxeTemplates>,
    pub on_missing_blob: Option<MissingBlobHook>,
    /// The iPXE binaries `/efiboot/{file}` serves (the daemon passes `boot.tftp.root`);
    /// None: that route answers 404 saying so.
    pub efi_dir: Option<BootDir>,
    /// Builds the overlay archives of `/system/` and `/runtime/`; None: those routes
    /// answer 404 saying so.
    pub overlays: Option<Arc<super::overlays::BootOverlays>>,
    /// Runtime overlays only to privileged source ports (`boot.http.secure`).
    pub secure: bool,
    /// Which peer heads are down (their URLs go last in a node's iPXE script).
    pub liveness: Option<Arc<crate::boot::liveness::Liveness>>,
    /// Which clients the boot routes answer (`boot::allow`); None: everyone.
    pub allow: Option<Arc<crate::boot::allow::Allow>>,
    /// Transfers in flight per client (`boot.http.max_transfers_per_client`); None: no
    /// limit.
    pub per_client: Option<Arc<crate::boot::limit::PerClient>>,
}

impl std::fmt::Debug for BootHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootHttp")
            .field("head_id", &self.head_id)
            .field("efi_dir", &self.efi_dir)
            .finish_non_exhaustive()
    }
}

impl BootHttp {
    /// Built-in templates, no missing-blob hook.
    pub fn new(view: ViewRx, cas: Cas, status: Arc<StatusBoard>, head_id: u64) -> BootHttp {
        BootHttp {
            view,
            cas,
            status,
            head_id,
            templates: Arc::new(IpxeTemplates::builtin()),
            on_missing_blob: None,
            efi_dir: None,
            overlays: None,
            secure: true,
            liveness: None,
            allow: None,
            per_client: None,
        }
    }
}

struct Shared {
    boot: BootHttp,
    verifier: Verifier,
    /// Digests of `/efiboot/` files by version, so a rack booting at once hashes each
    /// binary once, not once per node.
    efi_digests: std::sync::Mutex<HashMap<PathBuf, (FileKey, Digest)>>,
}

/// Stages a route or `?stage=` can name (Warewulf's, with its aliases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootStage {
    Ipxe,
    Kernel,
    Image,
    System,
    Runtime,
}

impl BootStage {
    pub fn parse(s: &str) -> Option<BootStage> {
        Some(match s {
            "ipxe" | "provision" => BootStage::Ipxe,
            "kernel" => BootStage::Kernel,
            "image" | "container" => BootStage::Image,
            "system" | "overlay-system" => BootStage::System,
            "runtime" | "overlay-runtime" => BootStage::Runtime,
            _ => return None,
        })
    }

    fn status(self) -> Stage {
        match self {
            BootStage::Ipxe => Stage::Ipxe,
            BootStage::Kernel => Stage::Kernel,
            BootStage::Image => Stage::Image,
            BootStage::System => Stage::SystemOverlay,
            BootStage::Runtime => Stage::RuntimeOverlay,
        }
    }
}

/// Everything that stops a boot request, each with its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no node has wwid {0:?} (a MAC address or node name); add the node with its hwaddr (`wwctl node set NODE --hwaddr MAC`)")]
    UnknownNode(String),
    #[error("asset key presented by {ip} does not match node {node}'s `asset key`; boot refused")]
    BadAssetKey { node: String, ip: IpAddr },
    #[error("node {0} has no `image name`; set one with `wwctl node set {0} --image NAME`")]
    NoImage(String),
    #[error("node {node} boots image {image:?}, which is not in the catalog; import it (`wwctl image import`) or change the node's image")]
    UnknownImage { node: String, image: String },
    #[error("image {0} has no built artifact yet; build it (`wwctl image build {0}`)")]
    NotBuilt(String),
    #[error("image {0} contains no bootable kernel; install one in the image (e.g. a kernel package) and rebuild")]
    NoKernel(String),
    #[error("node {node} pins kernel.version {version:?}, which image {image} does not have (it has: {available}); change the pin or install that kernel")]
    KernelVersion {
        node: String,
        image: String,
        version: String,
        available: String,
    },
    #[error("compress={compress} is not available for the {what}; request it without `compress`")]
    Compress { what: &'static str, compress: String },
    #[error("{kind} overlay for node {node}: this head serves no overlays (it was started without an overlay builder); the iPXE script boots without it")]
    NoOverlay { kind: &'static str, node: String },
    #[error("runtime overlay of node {node} refused to {client}: {why}")]
    Forbidden {
        node: String,
        client: SocketAddr,
        why: String,
    },
    #[error("{kind} overlay for node {node}: {source}")]
    Overlay {
        kind: &'static str,
        node: String,
        #[source]
        source: super::overlays::OverlayServeError,
    },
    #[error("{what} (blob {digest}) is not on this head yet; it has been requested from a peer head — retry, or let the iPXE script use the next head")]
    BlobMissing { what: String, digest: Digest },
    #[error(transparent)]
    Template(#[from] IpxeError),
    #[error("reading {what}: {source}")]
    Cas { what: String, source: CasError },
    #[error("UEFI HTTP boot file: {0}")]
    EfiFile(Refusal),
    #[error("this head has no iPXE directory to serve /efiboot/ from; set `boot.tftp.root` to a directory holding the iPXE binaries (Debian: /usr/lib/ipxe)")]
    NoEfiDir,
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl BootError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            BootError::BadRequest(_) => StatusCode::BAD_REQUEST,
            BootError::BadAssetKey { .. } => StatusCode::UNAUTHORIZED,
            BootError::Forbidden { .. } => StatusCode::FORBIDDEN,
            BootError::Overlay { source, .. } => match source {
                super::overlays::OverlayServeError::TreeMissing { .. }
                | super::overlays::OverlayServeError::LayerMissing { .. } => StatusCode::NOT_FOUND,
                super::overlays::OverlayServeError::Build(e) => match crate::error::Classify::kind(e) {
                    crate::error::ErrorKind::NotFound => StatusCode::NOT_FOUND,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                },
                super::overlays::OverlayServeError::Tree { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            },
            BootError::UnknownNode(_)
            | BootError::NoImage(_)
            | BootError::UnknownImage { .. }
            | BootError::NotBuilt(_)
            | BootError::NoKernel(_)
            | BootError::KernelVersion { .. }
            | BootError::Compress { .. }
            | BootError::NoOverlay { .. }
            | BootError::BlobMissing { .. }
            | BootError::NoEfiDir
            | BootError::Template(IpxeError::Unknown { .. }) => StatusCode::NOT_FOUND,
            BootError::EfiFile(r) => match r {
                Refusal::Absolute(_) | Refusal::ParentDir(_) | Refusal::Escapes(_) | Refusal::ReadOnly => {
                    StatusCode::FORBIDDEN
                }
                Refusal::Empty | Refusal::NotFound(_) | Refusal::NotAFile(_) => StatusCode::NOT_FOUND,
            },
            BootError::Template(_) | BootError::Cas { .. } | BootError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for BootError {
    fn into_response(self) -> Response {
        let mut msg = self.to_string();
        msg.push('\n');
        (
            self.status_code(),
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            msg,
        )
            .into_response()
    }
}

/// Routes of Warewulf's stages (each also without the `{wwid}` segment).
const STAGE_ROUTES: [&str; 9] = [
    "ipxe",
    "kernel",
    "image",
    "container",
    "system",
    "overlay-system",
    "runtime",
    "overlay-runtime",
    "provision",
];

/// The boot routes, to be merged with the blob router on the head's HTTP listener.
/// Serve with `into_make_service_with_connect_info::<SocketAddr>()` so status
/// records client addresses (without it they show as `0.0.0.0`).
pub fn router(state: BootHttp) -> Router {
    let allow = state.allow.clone();
    let per_client = state.per_client.clone();
    let shared = Arc::new(Shared {
        verifier: Verifier::new(state.cas.clone()),
        boot: state,
        efi_digests: Default::default(),
    });
    let mut r = Router::new()
        .route("/status", get(status_json))
        .route("/efiboot/{*file}", get(efiboot));
    for s in STAGE_ROUTES {
        r = r
            .route(&format!("/{s}"), get(handle))
            .route(&format!("/{s}/{{wwid}}"), get(handle));
    }
    let mut r = r.with_state(shared);
    // Added before the allow check, so it runs after it: a client outside the racks
    // gets its 403 and takes no place.
    if let Some(l) = per_client {
        r = r.route_layer(axum::middleware::from_fn_with_state(l, limit_transfers));
    }
    match allow {
        None => r,
        Some(a) => r.route_layer(axum::middleware::from_fn(
            move |req: Request, next: axum::middleware::Next| {
                let a = a.clone();
                async move {
                    // Served without connect info, the client is unknown: refused.
                    let ip = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
                    match ip {
                        Some(ip) if a.check(ip, "HTTP boot") => next.run(req).await,
                        _ => StatusCode::FORBIDDEN.into_response(),
                    }
                }
            },
        )),
    }
}

/// One place of the client's ([`crate::boot::limit`]) for the request and its response
/// body: the place is given back when the body has been sent or dropped (a client
/// leaving mid-transfer, a HEAD request).
async fn limit_transfers(
    State(l): State<Arc<crate::boot::limit::PerClient>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    // Served without connect info (never by the head), the client is unknown: no limit.
    let Some(ip) = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()) else {
        return next.run(req).await;
    };
    let Some(slot) = l.acquire(ip) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()),
                (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            ],
            format!(
                "too many transfers from this client (at most {} at once); retry when one ends\n",
                l.max()
            ),
        )
            .into_response();
    };
    let (parts, body) = next.run(req).await.into_parts();
    Response::from_parts(parts, Body::new(Held { body, _slot: slot }))
}

/// A response body holding its client's place until it is done.
struct Held {
    body: Body,
    _slot: crate::boot::limit::Slot,
}

impl hyper::body::Body for Held {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, axum::Error>>> {
        // Frames pass as they are (zero-copy placeholders keep their address).
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

async fn status_json(State(s): State<Arc<Shared>>) -> Response {
    let view = s.boot.view.borrow().clone();
    let doc = s.boot.status.warewulf_json(view.nodes.keys().map(String::as_str));
    let body = serde_json::to_string_pretty(&doc).expect("status serializes");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A parsed boot request.
#[derive(Debug)]
struct BootRequest {
    stage: BootStage,
    /// Normalised MAC if the wwid is one, else the wwid as given (lower case).
    wwid: String,
    client: IpAddr,
    /// The client's source port (secure mode wants < 1024 for runtime overlays).
    port: u16,
    assetkey: Option<String>,
    uuid: Option<String>,
    compress: Option<String>,
}

fn first<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Warewulf's `parseHwaddr`: `-` → `:`, lower case; a MAC in any notation is normalised.
fn parse_wwid(raw: &str) -> String {
    let w = raw.trim().replace('-', ":").to_lowercase();
    model::normalize_mac(&w).unwrap_or(w)
}

fn parse_request(parts: &axum::http::request::Parts, view: &BootView) -> Result<BootRequest, BootError> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    let client = peer.ip();
    let q: Vec<(String, String)> = match parts.uri.query() {
        Some(_) => Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|Query(q)| q)
            .map_err(|e| BootError::BadRequest(format!("bad query string: {e}")))?,
        None => Vec::new(),
    };
    let mut segs = parts.uri.path().split('/').filter(|s| !s.is_empty());
    let route = segs.next().unwrap_or_default();
    let path_wwid = segs.next().map(percent_decode);
    let stage_name = match route {
        "provision" => first(&q, "stage").unwrap_or("ipxe"),
        other => other,
    };
    let stage = BootStage::parse(stage_name).ok_or_else(|| {
        BootError::BadRequest(format!(
            "unknown stage {stage_name:?}; wulfpack serves ipxe, kernel, image, system and runtime"
        ))
    })?;
    let wwid = match path_wwid.as_deref().or_else(|| first(&q, "wwid")) {
        Some(w) if !w.trim().is_empty() => parse_wwid(w),
        _ => match client {
            // No wwid: the node configured with the client's address (Warewulf
            // asks the ARP cache for the same answer).
            IpAddr::V4(ip) => view
                .node_by_ip(ip)
                .and_then(|n| primary_mac(n))
                .ok_or_else(|| {
                    BootError::BadRequest(format!(
                        "no wwid in the request and no node is configured with address {ip}; add /{stage_name}/<MAC> or ?wwid=<MAC>"
                    ))
                })?,
            IpAddr::V6(ip) => {
                return Err(BootError::BadRequest(format!(
                    "no wwid in the request from {ip}; add /{stage_name}/<MAC> or ?wwid=<MAC>"
                )))
            }
        },
    };
    let nonempty = |k| first(&q, k).filter(|v| !v.is_empty()).map(str::to_owned);
    Ok(BootRequest {
        stage,
        wwid,
        client,
        port: peer.port(),
        assetkey: first(&q, "assetkey").map(str::to_owned),
        uuid: nonempty("uuid"),
        compress: nonempty("compress"),
    })
}

/// The MAC of a node's primary network device (else of any device with one).
fn primary_mac(n: &BootNode) -> Option<String> {
    let devs = &n.conf.network_devices;
    let primary = n.conf.primary_network.as_deref().and_then(|p| devs.get(p));
    primary
        .into_iter()
        .chain(devs.values())
        .find_map(|d| d.hwaddr.as_deref().and_then(|h| model::normalize_mac(h).ok()))
}

/// Record a boot event on the status board; a request from an address that is not the
/// node's goes only into its history (see `boot::status`).
fn record(s: &Shared, view: &BootView, n: &BootNode, stage: Stage, sent: &str, r: &BootRequest) {
    let uuid = r.uuid.as_deref();
    if view.is_node_address(n, r.client) == Some(false) {
        s.boot.status.record_foreign(&n.name, stage, sent, r.client, uuid);
    } else {
        s.boot.status.record(&n.name, stage, sent, r.client, uuid);
    }
}

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, _body) = req.into_parts();
    let view = s.boot.view.borrow().clone();
    let r = match parse_request(&parts, &view) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(uri = %parts.uri, "boot request refused: {e}");
            return e.into_response();
        }
    };
    let node = view.node_by_wwid(&r.wwid).cloned();
    match serve(&s, &view, node.as_ref(), &r, &parts).await {
        Ok((resp, sent)) => {
            if let Some(n) = &node {
                record(&s, &view, n, r.stage.status(), &sent, &r);
                tracing::info!(node = %n.name, client = %r.client, stage = ?r.stage, "send {sent}");
            } else {
                tracing::info!(wwid = %r.wwid, client = %r.client, "send {sent} to an unknown MAC");
            }
            resp
        }
        Err(e) => {
            if let Some(n) = &node {
                let (stage, sent) = match &e {
                    BootError::BadAssetKey { .. } => (Stage::BadAsset, r.stage.status().as_str().to_owned()),
                    e if e.status_code() == StatusCode::NOT_FOUND => (r.stage.status(), "NOT_FOUND".to_owned()),
                    BootError::Forbidden { .. } => (r.stage.status(), "FORBIDDEN".to_owned()),
                    _ => (r.stage.status(), "ERROR".to_owned()),
                };
                record(&s, &view, n, stage, &sent, &r);
            }
            let missing = match &e {
                BootError::BlobMissing { digest, .. } => Some(*digest),
                BootError::Overlay {
                    source:
                        super::overlays::OverlayServeError::TreeMissing { digest, .. }
                        | super::overlays::OverlayServeError::LayerMissing { digest, .. },
                    ..
                } => Some(*digest),
                _ => None,
            };
            if let (Some(d), Some(hook)) = (missing, &s.boot.on_missing_blob) {
                hook(d);
            }
            if matches!(e, BootError::Forbidden { .. }) {
                // Expected once per boot in secure mode (iPXE fetches from an
                // unprivileged port); the status board keeps the event.
                tracing::info!(wwid = %r.wwid, client = %r.client, port = r.port, "boot request refused: {e}");
            } else {
                tracing::warn!(wwid = %r.wwid, client = %r.client, stage = ?r.stage, "boot request failed: {e}");
            }
            e.into_response()
        }
    }
}

/// `/efiboot/{file}`: the first program of a UEFI HTTP boot, from the iPXE directory.
///
/// The firmware sends no wwid, so the node (for status) is the one configured with the
/// client's address — the address our DHCP just gave it. The ETag is the file's digest
/// (the files are small, a hash costs well under a millisecond), which gives HEAD,
/// Range and conditional requests the same semantics as the CAS routes.
async fn efiboot(
    State(s): State<Arc<Shared>>,
    axum::extract::Path(file): axum::extract::Path<String>,
    req: Request,
) -> Response {
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let node = match client {
        IpAddr::V4(ip) => s.boot.view.borrow().node_by_ip(ip).map(|n| n.name.clone()),
        IpAddr::V6(_) => None,
    };
    let result = match &s.boot.efi_dir {
        None => Err(BootError::NoEfiDir),
        Some(dir) => match dir.resolve(&file) {
            Err(r) => Err(BootError::EfiFile(r)),
            Ok(path) => open_hashed(&s, path).await,
        },
    };
    let (sent, resp) = match result {
        Ok((f, len, digest)) => (
            file.clone(),
            serve::respond(f, len, &digest, req.headers(), req.extensions().get()),
        ),
        Err(e) => {
            tracing::warn!(%client, file = %file, "UEFI HTTP boot request refused: {e}");
            ("NOT_FOUND".to_owned(), e.into_response())
        }
    };
    if let Some(n) = node {
        s.boot.status.record(&n, Stage::Efi, &sent, client, None);
    }
    resp
}

/// Open a small file (on the blocking pool) with its length and digest; the file is
/// hashed only the first time this version of it is served.
async fn open_hashed(s: &Shared, path: PathBuf) -> Result<(std::fs::File, u64, Digest), BootError> {
    let shown = path.display().to_string();
    let known = s.efi_digests.lock().expect("efi digests").get(&path).copied();
    let res = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        use sha2::Digest as _;
        use std::io::{Read, Seek};
        let mut f = std::fs::File::open(&path)?;
        let key = file_key(&f.metadata()?);
        if let Some((k, d)) = known.filter(|(k, _)| *k == key) {
            return Ok((f, k.2, d, path, k));
        }
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut len = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            len += n as u64;
        }
        f.rewind()?;
        Ok((f, len, Digest(h.finalize().into()), path, key))
    })
    .await;
    match res {
        Ok(Ok((f, len, digest, path, key))) => {
            // Only a file that did not change while it was hashed is remembered.
            if key.2 == len {
                s.efi_digests.lock().expect("efi digests").insert(path, (key, digest));
            }
            Ok((f, len, digest))
        }
        Ok(Err(source)) => Err(BootError::Io { path: shown, source }),
        Err(e) => Err(BootError::Io {
            path: shown,
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// Answer one parsed request: the response and what to record as sent.
async fn serve(
    s: &Shared,
    view: &Arc<BootView>,
    node: Option<&Arc<BootNode>>,
    r: &BootRequest,
    parts: &axum::http::request::Parts,
) -> Result<(Response, String), BootError> {
    let headers = &parts.headers;
    if let Some(n) = node {
        if let Some(key) = n.conf.asset_key.as_deref().filter(|k| !k.is_empty()) {
            if r.assetkey.as_deref() != Some(key) {
                return Err(BootError::BadAssetKey {
                    node: n.name.clone(),
                    ip: r.client,
                });
            }
        }
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty());
    match r.stage {
        BootStage::Ipxe => {
            if let Some(c) = &r.compress {
                return Err(BootError::Compress {
                    what: "iPXE script",
                    compress: c.clone(),
                });
            }
            let down = s.boot.liveness.as_ref().map(|l| l.down_peers()).unwrap_or_default();
            let heads = view.boot_urls(node.map(|n| &**n), s.boot.head_id, host, |id| down.contains(&id));
            let (name, ctx) = match node {
                None => (
                    UNCONFIGURED_TEMPLATE.to_owned(),
                    IpxeContext::unconfigured(&view.cluster, &r.wwid, heads),
                ),
                Some(n) => {
                    // `wwid=` on the kernel command line must be a MAC (wwclient
                    // finds its interface by it): for a request by node name, the
                    // node's primary MAC.
                    let hwaddr = match n.netdev_by_mac(&r.wwid) {
                        Some(_) => r.wwid.clone(),
                        None => primary_mac(n).unwrap_or_else(|| r.wwid.clone()),
                    };
                    let kver = view
                        .image_of(n)
                        .and_then(|i| i.kernel.as_ref())
                        .map(|k| k.version.as_str());
                    let ctx = IpxeContext::for_node(&view.cluster, &n.name, &n.conf, &hwaddr, kver, heads);
                    (
                        n.conf
                            .ipxe_template
                            .clone()
                            .unwrap_or_else(|| DEFAULT_TEMPLATE.to_owned()),
                        ctx,
                    )
                }
            };
            let script = s.boot.templates.render(&name, &ctx)?;
            let resp = Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .header(header::CACHE_CONTROL, "no-store")
                .body(Body::from(script))
                .expect("valid response");
            Ok((resp, format!("{name}.ipxe")))
        }
        BootStage::Kernel => {
            let n = node.ok_or_else(|| BootError::UnknownNode(r.wwid.clone()))?;
            if let Some(c) = &r.compress {
                return Err(BootError::Compress {
                    what: "kernel",
                    compress: c.clone(),
                });
            }
            let (image, entry) = image_of(view, n)?;
            let k = pick_kernel(n, image, entry)?;
            let sent = k.path.rsplit('/').next().unwrap_or("kernel").to_owned();
            let what = format!("kernel {} of image {image}", k.version);
            Ok((send_blob(s, k.digest, &what, parts).await?, sent))
        }
        BootStage::Image => {
            let n = node.ok_or_else(|| BootError::UnknownNode(r.wwid.clone()))?;
            if let Some(c) = r.compress.as_deref().filter(|c| *c != "gz") {
                return Err(BootError::Compress {
                    what: "image (it is stored as gzip only)",
                    compress: c.to_owned(),
                });
            }
            let (image, entry) = image_of(view, n)?;
            let a = entry
                .artifact
                .as_ref()
                .ok_or_else(|| BootError::NotBuilt(image.to_owned()))?;
            let what = format!("image {image}");
            Ok((send_blob(s, a.digest, &what, parts).await?, format!("{image}.img.gz")))
        }
        BootStage::System | BootStage::Runtime => {
            let n = node.ok_or_else(|| BootError::UnknownNode(r.wwid.clone()))?;
            let kind = if r.stage == BootStage::System {
                OverlayKind::System
            } else {
                authorize_runtime(s, view, n, r)?;
                OverlayKind::Runtime
            };
            let Some(overlays) = s.boot.overlays.clone() else {
                return Err(BootError::NoOverlay {
                    kind: kind.as_str(),
                    node: n.name.clone(),
                });
            };
            let (v, node_arc) = (view.clone(), n.clone());
            let built = tokio::task::spawn_blocking(move || overlays.build(&v, &node_arc, kind))
                .await
                .map_err(|e| BootError::Io {
                    path: format!("{} overlay build", kind.as_str()),
                    source: std::io::Error::other(e.to_string()),
                })?
                .map_err(|source| BootError::Overlay {
                    kind: kind.as_str(),
                    node: n.name.clone(),
                    source,
                })?;
            let names = kind.names(&n.conf).join(",");
            Ok((
                overlay_response(&built, headers),
                format!("{} overlay ({names})", kind.as_str()),
            ))
        }
    }
}

/// The runtime overlay holds a node's secrets (SSH host keys, passwords): only to the
/// node itself. Its address must be one of the node's (configured, or leased to one of
/// its MACs), and in secure mode the request must come from a privileged port, which
/// only root on the node can bind (what `wwclient` does).
fn authorize_runtime(s: &Shared, view: &BootView, n: &BootNode, r: &BootRequest) -> Result<(), BootError> {
    let refuse = |why: String| BootError::Forbidden {
        node: n.name.clone(),
        client: SocketAddr::new(r.client, r.port),
        why,
    };
    match view.is_node_address(n, r.client) {
        Some(true) => {}
        Some(false) => {
            return Err(refuse(format!(
                "{} is not an address of {} (runtime overlays go only to the node they are for)",
                r.client, n.name
            )))
        }
        None => {
            return Err(refuse(format!(
                "{} has no configured or leased address to check the request against; set its ipaddr",
                n.name
            )))
        }
    }
    if s.boot.secure && r.port >= 1024 {
        return Err(refuse(format!(
            "secure mode: the request came from port {}, not a privileged port (< 1024) as wwclient sends it; \
             iPXE's boot-time fetch is expected to be refused (set boot.http.secure: false to allow it)",
            r.port
        )));
    }
    Ok(())
}

/// A built overlay archive as an HTTP response (its build key is the ETag).
fn overlay_response(built: &crate::overlay::build::NodeArchive, headers: &HeaderMap) -> Response {
    let etag = format!("\"{}\"", built.key.hex());
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let body = Body::from_stream(futures::stream::iter(
        built.parts().map(Ok::<_, std::convert::Infallible>),
    ));
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, built.len().to_string()),
            (header::ETAG, etag),
        ],
        body,
    )
        .into_response()
}

fn image_of<'v>(view: &'v BootView, n: &BootNode) -> Result<(&'v str, &'v ImageEntry), BootError> {
    let name = n
        .conf
        .image_name
        .as_deref()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| BootError::NoImage(n.name.clone()))?;
    view.images
        .get_key_value(name)
        .map(|(k, v)| (k.as_str(), v))
        .ok_or_else(|| BootError::UnknownImage {
            node: n.name.clone(),
            image: name.to_owned(),
        })
}

/// The kernel a node boots: its `kernel.version` pin (a version, release or path
/// inside the image), else the image's default.
pub fn pick_kernel<'e>(n: &BootNode, image: &str, entry: &'e ImageEntry) -> Result<&'e KernelRef, BootError> {
    let pinned = n
        .conf
        .kernel
        .as_ref()
        .and_then(|k| k.version.as_deref())
        .filter(|v| !v.is_empty());
    let all = || entry.kernels.iter().chain(entry.kernel.as_ref());
    match pinned {
        None => entry
            .kernel
            .as_ref()
            .or(entry.kernels.first())
            .ok_or_else(|| BootError::NoKernel(image.to_owned())),
        Some(v) => {
            let path = v.trim_start_matches('/');
            all()
                .find(|k| {
                    k.version == v
                        || (!k.release.is_empty() && k.release == v)
                        || k.path.trim_start_matches('/') == path
                })
                .ok_or_else(|| {
                    let mut have: Vec<&str> = all().map(|k| k.version.as_str()).collect();
                    have.dedup();
                    BootError::KernelVersion {
                        node: n.name.clone(),
                        image: image.to_owned(),
                        version: v.to_owned(),
                        available: if have.is_empty() {
                            "no kernels".into()
                        } else {
                            have.join(", ")
                        },
                    }
                })
        }
    }
}

async fn send_blob(
    s: &Shared,
    digest: Digest,
    what: &str,
    req: &axum::http::request::Parts,
) -> Result<Response, BootError> {
    match s.verifier.open(digest).await {
        Ok((file, len)) => Ok(serve::respond(file, len, &digest, &req.headers, req.extensions.get())),
        // A corrupt blob was quarantined by `verify`: it is now missing here too.
        Err(CasError::Missing(_)) | Err(CasError::Corrupt { .. }) => Err(BootError::BlobMissing {
            what: what.to_owned(),
            digest,
        }),
        Err(source) => Err(BootError::Cas {
            what: what.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wwids_and_stages_parse_like_warewulf() {
        assert_eq!(parse_wwid("AA-BB-CC-DD-EE-01"), "aa:bb:cc:dd:ee:01");
        assert_eq!(parse_wwid("N1"), "n1");
        assert_eq!(percent_decode("aa%3Abb%3acc"), "aa:bb:cc");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%é%"), "%é%", "no panic inside a multi-byte character");
        assert_eq!(BootStage::parse("container"), Some(BootStage::Image));
        assert_eq!(BootStage::parse("overlay-runtime"), Some(BootStage::Runtime));
        assert_eq!(BootStage::parse("provision"), Some(BootStage::Ipxe));
        assert_eq!(BootStage::parse("grub"), None);
    }

    #[test]
    fn errors_map_to_http_codes() {
        assert_eq!(BootError::UnknownNode("x".into()).status_code(), StatusCode::NOT_FOUND);
        let bad = BootError::BadAssetKey {
            node: "n".into(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        assert_eq!(bad.status_code(), StatusCode::UNAUTHORIZED);
        assert_eq!(BootError::BadRequest("x".into()).status_code(), StatusCode::BAD_REQUEST);
        let e = BootError::NoOverlay {
            kind: "system",
            node: "n1".into(),
        };
        assert!(e.to_string().contains("serves no overlays"), "{e}");
    }
}
