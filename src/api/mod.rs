//! # Admin gRPC service: a thin adapter over the head's cluster handle
//!
//! Each call decodes its message, hands it to the head's [`Cluster`] handle (writes,
//! reads, membership), its image operations or its status board, and encodes the
//! answer. Leader forwarding, deadlines and the write rules live in the handle; errors
//! become statuses in one place ([`crate::error::status`]). A caller's deadline
//! (`grpc-timeout`) bounds the work done for it, forwards included.
//!
//! Until the head has replayed its log, every call (admin and Raft) is answered
//! `Unavailable` with "starting: N of M entries applied" ([`Gate`]), so clients move on
//! to another head instead of hanging on an open port.

pub mod auth;
mod housekeeping;

pub use housekeeping::{BootFacts, TlsFacts};

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tonic::{Request as GrpcRequest, Response, Status};

use crate::boot::overlays::OverlayServeError;
use crate::boot::status::{merge_status, HeadNodeStatus, StatusBoard};
use crate::cluster::{grpc_deadline, Cluster, HeadStatus, Membership};
use crate::error::{status, Classify, ErrorKind};
use crate::image::{self, Images, Progress};
use crate::overlay::build::OverlayKind;
use crate::overlay::store::{Change, Overlays};
use crate::overlay::tree::{self, EntryKind};
use crate::pb::admin as pb;
use crate::pb::raft as raft_pb;
use crate::raft::RaftService;
use crate::state::{Query, Request, Selector};

/// Deadline of a call whose client sent none.
const DEFAULT_CALL_DEADLINE: Duration = Duration::from_secs(15);
/// How long `cluster status` waits for each other head.
const HEAD_STATUS_WAIT: Duration = Duration::from_secs(1);
/// How long `node status` waits for each other head.
const NODE_STATUS_WAIT: Duration = Duration::from_secs(2);

/// What the admin API serves once its head has started.
#[derive(Clone, Debug)]
pub struct Services {
    pub cluster: Cluster,
    pub images: Images,
    pub overlays: Overlays,
    /// Per-node boot status as this head saw it.
    pub status: Arc<StatusBoard>,
    /// This head's boot view (what `overlay show --render` and `overlay build` read).
    pub view: crate::boot::view::ViewRx,
    /// This head's overlay builder (None: overlays are off on this head).
    pub boot_overlays: Option<Arc<crate::boot::overlays::BootOverlays>>,
    /// The cluster CA with its key, when this head has it (enrolment, credentials).
    pub ca: Option<Arc<crate::pki::Ca>>,
    /// IPMI power and sensors (`wwctl power`, `node sensors`).
    pub power: crate::power::Power,
    /// This head's blob store (`Clean`).
    pub cas: crate::cas::Cas,
    /// What this head's boot services were started with (`BootServices`).
    pub boot: Arc<BootFacts>,
}

/// A service that answers `Unavailable` until its head is ready to serve it.
pub struct Gate<T> {
    ready: Arc<OnceLock<T>>,
    starting: Arc<dyn Fn() -> String + Send + Sync>,
}

impl<T> Clone for Gate<T> {
    fn clone(&self) -> Self {
        Gate {
            ready: self.ready.clone(),
            starting: self.starting.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Gate<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("open", &self.ready.get().is_some())
            .finish_non_exhaustive()
    }
}

impl<T> Gate<T> {
    /// A closed gate; `starting` says how far start-up is (shown to callers).
    pub fn new(starting: impl Fn() -> String + Send + Sync + 'static) -> Self {
        Gate {
            ready: Arc::default(),
            starting: Arc::new(starting),
        }
    }

    /// Serve `v` from now on (only the first call counts).
    pub fn open(&self, v: T) {
        let _ = self.ready.set(v);
    }

    fn get(&self) -> Result<&T, Status> {
        self.ready
            .get()
            .ok_or_else(|| status(&ApiError::Starting((self.starting)())))
    }
}

/// The admin service (what `wwctl` talks to).
#[derive(Clone, Debug)]
pub struct AdminService {
    pub gate: Gate<Services>,
}

/// The Raft service behind the same gate: peers see a starting head as unreachable.
#[derive(Clone, Debug)]
pub struct GatedRaft {
    pub gate: Gate<RaftService>,
}

/// When the work for `req` must be done by: a little before the caller stops
/// waiting, so that the head's own answer ("no majority…") reaches it in time.
fn deadline<T>(req: &GrpcRequest<T>) -> Instant {
    let budget = grpc_deadline(req.metadata()).unwrap_or(DEFAULT_CALL_DEADLINE);
    Instant::now() + budget - (budget / 10).min(Duration::from_millis(200))
}

/// What the adapter itself refuses (everything else comes from the layers below).
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("malformed {what}: {message}")]
    Malformed { what: &'static str, message: String },
    #[error("this head is starting ({0}); use another head or retry shortly")]
    Starting(String),
}

impl Classify for ApiError {
    fn kind(&self) -> ErrorKind {
        match self {
            ApiError::Malformed { .. } => ErrorKind::Invalid,
            ApiError::Starting(_) => ErrorKind::Unavailable,
        }
    }
}

fn bad_json(what: &'static str, e: serde_json::Error) -> Status {
    status(&ApiError::Malformed {
        what,
        message: e.to_string(),
    })
}

/// A server stream of image progress events.
pub type EventStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ImageEvent, Status>> + Send>>;

fn event_pb(e: image::Event) -> pb::ImageEvent {
    pb::ImageEvent {
        stage: e.stage.into(),
        message: e.message,
        done: e.done,
        total: e.total,
        entry_json: vec![],
        report_json: vec![],
    }
}

/// Who made an admin call, for the audit log: the verified certificate's name and role
/// (under TLS), with the name `wwctl` sends (`USER@HOST`, as the caller claims it) and the
/// address it came from.
fn operator<T>(req: &GrpcRequest<T>) -> String {
    let claimed: String = req
        .metadata()
        .get(OPERATOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    auth::operator_of(req.extensions(), &claimed, req.remote_addr())
}

/// The metadata key `wwctl` names its user in (see [`operator`]).
pub const OPERATOR_HEADER: &str = "x-wulfpack-operator";

/// Run an image operation in its own task (it finishes even if the client goes
/// away) and stream its progress, then its result. Its writes are the operator's.
fn streamed<F>(who: String, op: impl FnOnce(Progress) -> F) -> EventStream
where
    F: std::future::Future<Output = Result<crate::state::ImageEntry, image::ImageError>> + Send + 'static,
{
    streamed_with(who, move |p| {
        let fut = op(p);
        async move { fut.await.map(|e| (e, Vec::new())) }
    })
}

/// [`streamed`] for operations that also return a report (JSON, on the last event).
fn streamed_with<F>(who: String, op: impl FnOnce(Progress) -> F) -> EventStream
where
    F: std::future::Future<Output = Result<(crate::state::ImageEntry, Vec<u8>), image::ImageError>> + Send + 'static,
{
    let (etx, mut erx) = tokio::sync::mpsc::channel::<image::Event>(256);
    let (otx, orx) = tokio::sync::mpsc::channel::<Result<pb::ImageEvent, Status>>(256);
    let fut = crate::cluster::OPERATOR.scope(who, op(Progress::new(etx)));
    tokio::spawn(async move {
        let mut fut = std::pin::pin!(fut);
        let result = loop {
            tokio::select! {
                Some(ev) = erx.recv() => { let _ = otx.send(Ok(event_pb(ev))).await; }
                r = &mut fut => break r,
            }
        };
        while let Ok(ev) = erx.try_recv() {
            let _ = otx.send(Ok(event_pb(ev))).await;
        }
        let last = match result {
            Ok((entry, report_json)) => Ok(pb::ImageEvent {
                stage: "done".into(),
                message: String::new(),
                done: 1,
                total: 1,
                entry_json: serde_json::to_vec(&entry).expect("entry serializes"),
                report_json,
            }),
            Err(e) => Err(status(&e)),
        };
        let _ = otx.send(last).await;
    });
    Box::pin(futures::stream::unfold(orx, |mut rx| async move {
        rx.recv().await.map(|x| (x, rx))
    }))
}

fn head_status_pb(h: HeadStatus) -> pb::HeadStatusReply {
    pb::HeadStatusReply {
        id: h.id,
        addr: h.addr,
        role: h.role.into(),
        term: h.term,
        leader_id: h.leader_id.unwrap_or(0),
        last_log_index: h.last_log_index,
        commit_index: h.commit_index,
        applied_index: h.applied_index,
        snapshot_index: h.snapshot_index,
        voters: h.voters,
        learners: h.learners,
        uptime_secs: h.uptime.as_secs(),
        artifacts: h.artifacts.map(|a| pb::ArtifactsStatus {
            referenced: a.referenced,
            missing: a.missing,
            missing_bytes: a.missing_bytes,
            missing_unknown_size: a.missing_unknown_size,
            as_of_index: a.as_of_index,
        }),
        racks_reported: h.racks_served.is_some(),
        racks_served: h.racks_served.unwrap_or_default(),
        matched: h.matched.into_iter().collect(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Each head's lag behind the leader's last log entry: from its applied index when it
/// answered, else from the leader's replication record; none without a leader's answer.
fn fill_lag(heads: &mut [pb::HeadHealth]) {
    let leader = heads
        .iter()
        .filter_map(|h| h.status.as_ref())
        .filter(|s| s.role == "Leader")
        .max_by_key(|s| s.term)
        .cloned();
    let Some(l) = leader else { return };
    for h in heads.iter_mut() {
        h.lag = match &h.status {
            Some(s) => Some(l.last_log_index.saturating_sub(s.applied_index)),
            None => l.matched.get(&h.id).map(|m| l.last_log_index.saturating_sub(*m)),
        };
    }
}

fn overlay_path_pb(path: &str, e: &tree::Entry) -> pb::OverlayPath {
    let (target, size) = match &e.kind {
        EntryKind::Symlink(t) => (t.clone(), 0),
        EntryKind::File(c) => (String::new(), c.len() as u64),
        EntryKind::Dir => (String::new(), 0),
    };
    pb::OverlayPath {
        path: path.to_string(),
        kind: e.kind_name().into(),
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        target,
        size,
    }
}

fn membership_pb(m: Membership) -> pb::MembershipReply {
    pb::MembershipReply {
        log_index: m.log_index,
        voters: m.voters,
        learners: m.learners,
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn enroll(&self, req: GrpcRequest<pb::EnrollRequest>) -> Result<Response<pb::EnrollReply>, Status> {
        let s = self.gate.get()?;
        let deadline = deadline(&req);
        auth::enroll(s, req.into_inner(), deadline).await
    }

    async fn issue_credential(
        &self,
        req: GrpcRequest<pb::IssueCredentialRequest>,
    ) -> Result<Response<pb::IssueCredentialReply>, Status> {
        let s = self.gate.get()?;
        let deadline = deadline(&req);
        let who = operator(&req);
        auth::issue_credential(s, who, req.into_inner(), deadline).await
    }

    async fn rotate_certificate(
        &self,
        req: GrpcRequest<pb::Empty>,
    ) -> Result<Response<pb::RotateCertificateReply>, Status> {
        let s = self.gate.get()?;
        let who = operator(&req);
        auth::rotate_certificate(s, who).await
    }

    async fn node_status(
        &self,
        req: GrpcRequest<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusReply>, Status> {
        let s = self.gate.get()?;
        let wait = deadline(&req)
            .saturating_duration_since(Instant::now())
            .min(NODE_STATUS_WAIT);
        let me = s.cluster.id();
        let r = req.into_inner();
        let history = r.history;
        let mine = if history {
            s.status.history(None)
        } else {
            s.status.snapshot()
        };
        let mut all: Vec<HeadNodeStatus> = mine
            .into_iter()
            .map(|status| HeadNodeStatus { head: me, status })
            .collect();
        let mut unreachable = Vec::new();
        if r.all_heads {
            let answers = s
                .cluster
                .ask_peers(wait, |mut c| async move {
                    c.node_status(pb::NodeStatusRequest {
                        all_heads: false,
                        history,
                    })
                    .await
                })
                .await;
            for (id, _, r) in answers {
                match r
                    .ok()
                    .and_then(|r| serde_json::from_slice::<Vec<HeadNodeStatus>>(&r.json).ok())
                {
                    Some(v) => all.extend(v),
                    None => unreachable.push(id),
                }
            }
        }
        let rows = if history {
            // Every head's events of a node, interleaved in time.
            all.sort_by(|a, b| (&a.status.node, a.status.last_seen).cmp(&(&b.status.node, b.status.last_seen)));
            all
        } else {
            merge_status(all)
        };
        Ok(Response::new(pb::NodeStatusReply {
            json: serde_json::to_vec(&rows).expect("status serializes"),
            unreachable,
        }))
    }

    async fn power(&self, req: GrpcRequest<pb::PowerRequest>) -> Result<Response<pb::PowerReply>, Status> {
        let s = self.gate.get()?;
        let deadline = deadline(&req);
        let r = crate::power::Request::from_pb(req.into_inner()).map_err(|e| status(&e))?;
        let view = s.view.borrow().clone();
        let results = s
            .power
            .execute(&s.cluster, &view, r, deadline)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::PowerReply { results }))
    }

    async fn overlay_list(
        &self,
        req: GrpcRequest<pb::OverlayListRequest>,
    ) -> Result<Response<pb::OverlayListReply>, Status> {
        let s = self.gate.get()?;
        let r = req.into_inner();
        let catalog = s.overlays.catalog().await.map_err(|e| status(&e))?;
        let missing: Vec<String> = r.names.iter().filter(|n| !catalog.contains_key(*n)).cloned().collect();
        let mut overlays = Vec::new();
        for (name, v) in &catalog {
            if !r.names.is_empty() && !r.names.contains(name) {
                continue;
            }
            let Some(d) = v.value.effective() else { continue };
            let t = s.overlays.tree(&d).await.map_err(|e| status(&e))?;
            overlays.push(pb::OverlayInfo {
                name: name.clone(),
                site: v.value.is_site(),
                distribution: v.value.distribution.is_some(),
                digest: d.to_string(),
                version: v.version,
                updated: v.value.updated,
                count: t.entries.len() as u64,
                paths: if r.files {
                    t.walk().into_iter().map(|(p, e)| overlay_path_pb(p, e)).collect()
                } else {
                    vec![]
                },
            });
        }
        Ok(Response::new(pb::OverlayListReply { overlays, missing }))
    }

    async fn overlay_file(
        &self,
        req: GrpcRequest<pb::OverlayFileRequest>,
    ) -> Result<Response<pb::OverlayFileReply>, Status> {
        let s = self.gate.get()?;
        let r = req.into_inner();
        let (v, e) = s.overlays.file(&r.name, &r.path).await.map_err(|e| status(&e))?;
        let key = tree::normalize(&r.path).unwrap_or(r.path);
        Ok(Response::new(pb::OverlayFileReply {
            path: Some(overlay_path_pb(&key, &e)),
            content: match e.kind {
                EntryKind::File(c) => c,
                _ => vec![],
            },
            version: v.version,
            site: v.value.is_site(),
        }))
    }

    async fn overlay_render(
        &self,
        req: GrpcRequest<pb::OverlayRenderRequest>,
    ) -> Result<Response<pb::OverlayRenderReply>, Status> {
        let s = self.gate.get()?;
        let r = req.into_inner();
        let ov = s.boot_overlays.clone().ok_or_else(overlays_off)?;
        // The overlay as of the latest write (linearizable); nodes from this head's view.
        let (entry, tree) = s.overlays.get(&r.name).await.map_err(|e| status(&e))?;
        let digest = entry
            .value
            .effective()
            .ok_or_else(|| Status::not_found(format!("overlay {} has no tree", r.name)))?;
        let path = tree::normalize(&r.path).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let view = s.view.borrow().clone();
        let files = tokio::task::spawn_blocking(move || {
            let compiled = ov.builder().compiled(&r.name, digest, || tree)?;
            if !compiled.tree.entries.contains_key(&path) {
                return Err(crate::overlay::build::BuildError::Render(
                    crate::overlay::render::RenderError::Unknown {
                        overlay: r.name.clone(),
                        file: format!("/{path}"),
                    },
                ));
            }
            let g = ov.generation(&view);
            let conf = view.nodes.get(&r.node).map(|n| n.conf.clone());
            // Warewulf renders a node that does not exist as a new, empty one.
            let mut data = g.node_data(&r.node, conf.as_ref());
            Ok(compiled.render(&path, &mut data)?)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| status(&e))?;
        Ok(Response::new(pb::OverlayRenderReply {
            files: files
                .into_iter()
                .map(|f| pb::RenderedFile {
                    name: f.name,
                    backup: f.backup,
                    write: f.write,
                    symlink: f.symlink,
                    content: f.content,
                })
                .collect(),
        }))
    }

    async fn clean(&self, req: GrpcRequest<pb::CleanRequest>) -> Result<Response<pb::CleanReply>, Status> {
        let s = self.gate.get()?;
        let r = req.into_inner();
        // The same set the artifact sync fetches and the periodic GC keeps.
        let referenced: std::collections::HashSet<crate::cas::Digest> = s
            .cluster
            .state()
            .read(|st| crate::cas::sync::referenced(st).into_keys().collect());
        let (cas, id) = (s.cas.clone(), s.cluster.id());
        let min_age = Duration::from_secs(r.min_age_secs);
        let reply = tokio::task::spawn_blocking(move || housekeeping::clean(id, &cas, &referenced, r.dry_run, min_age))
            .await
            .map_err(|e| Status::internal(format!("clean: {e}")))??;
        Ok(Response::new(reply))
    }

    async fn boot_services(&self, _req: GrpcRequest<pb::Empty>) -> Result<Response<pb::BootServicesReply>, Status> {
        let s = self.gate.get()?;
        let me = s.cluster.id();
        let racks: Vec<String> = {
            let v = s.view.borrow();
            v.racks
                .iter()
                .filter(|(_, r)| r.position(me).is_some())
                .map(|(n, _)| n.clone())
                .collect()
        };
        Ok(Response::new(housekeeping::boot_services(me, &s.boot, racks).await))
    }

    async fn overlay_build(
        &self,
        req: GrpcRequest<pb::OverlayBuildRequest>,
    ) -> Result<Response<pb::OverlayBuildReply>, Status> {
        let s = self.gate.get()?;
        let r = req.into_inner();
        let ov = s.boot_overlays.clone().ok_or_else(overlays_off)?;
        let view = s.view.borrow().clone();
        for n in &r.nodes {
            if !view.nodes.contains_key(n) {
                return Err(Status::not_found(format!(
                    "node {n} does not exist (on this head's view); check the name with `wwctl node list`"
                )));
            }
        }
        let reply = tokio::task::spawn_blocking(move || crate::boot::overlays::build_all(&ov, &view, &r.nodes))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::OverlayBuildReply {
            nodes: reply.nodes,
            built: reply.built,
            cached: reply.cached,
            failed: reply.failed,
            millis: reply.elapsed.as_millis() as u64,
            bytes: reply.bytes,
        }))
    }

    async fn overlay_archives(
        &self,
        req: GrpcRequest<pb::OverlayArchivesRequest>,
    ) -> Result<Response<pb::OverlayArchivesReply>, Status> {
        let s = self.gate.get()?;
        let deadline = deadline(&req);
        let r = req.into_inner();
        let ov = s.boot_overlays.clone().ok_or_else(overlays_off)?;
        // The node as of every acknowledged write (a node added just before is there),
        // then this head's view once it has caught up with that read.
        let (found, applied) = s
            .cluster
            .read(&Query::nodes(Selector::Names(vec![r.node.clone()])), true, 0, deadline)
            .await
            .map_err(|e| status(&e))?;
        if !found.missing.is_empty() {
            return Err(Status::not_found(format!(
                "node {} does not exist; check the name with `wwctl node list`",
                r.node
            )));
        }
        let mut rx = s.view.clone();
        let left = deadline.saturating_duration_since(Instant::now());
        let view = match tokio::time::timeout(left, rx.wait_for(|v| v.applied >= applied)).await {
            Ok(Ok(v)) => v.clone(),
            _ => return Err(Status::unavailable("this head's boot view lags the cluster; retry")),
        };
        let node = view
            .nodes
            .get(&r.node)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("node {} does not exist", r.node)))?;
        let built = tokio::task::spawn_blocking(move || {
            let mut out = [Vec::new(), Vec::new()];
            for (i, kind) in [OverlayKind::System, OverlayKind::Runtime].into_iter().enumerate() {
                if kind.names(&node.conf).is_empty() {
                    continue;
                }
                out[i] = ov
                    .build(&view, &node, kind)
                    .map_err(|e| {
                        let why = format!("{} overlay of {}: {e}", kind.as_str(), node.name);
                        match e {
                            // Fetched from a peer meanwhile: the client may ask another head.
                            OverlayServeError::TreeMissing { .. } => Status::unavailable(why),
                            _ => Status::failed_precondition(why),
                        }
                    })?
                    .to_vec();
            }
            Ok::<_, Status>(out)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        let [system, runtime] = built;
        Ok(Response::new(pb::OverlayArchivesReply { system, runtime }))
    }

    async fn overlay_change(
        &self,
        req: GrpcRequest<pb::OverlayChangeRequest>,
    ) -> Result<Response<pb::OverlayChangeReply>, Status> {
        let s = self.gate.get()?;
        let who = operator(&req);
        let r = req.into_inner();
        let id = (!r.request_id.is_empty()).then_some(r.request_id);
        let done = crate::cluster::OPERATOR
            .scope(who, async {
                match r.op.as_str() {
                    "create" => s.overlays.create(&r.name, id).await,
                    "delete" => s.overlays.delete(&r.name, r.force, r.expect, id).await,
                    "change" => {
                        let change: Change =
                            serde_json::from_slice(&r.change_json).map_err(|e| bad_json("overlay change", e))?;
                        s.overlays.change(&r.name, &change, r.expect, id).await
                    }
                    other => {
                        return Err(status(&ApiError::Malformed {
                            what: "overlay change",
                            message: format!("unknown op {other:?} (create, delete, change)"),
                        }))
                    }
                }
                .map_err(|e| status(&e))
            })
            .await?;
        Ok(Response::new(pb::OverlayChangeReply {
            digest: done.digest.map(|d| d.to_string()).unwrap_or_default(),
            version: done.version,
            site_created: done.site_created,
        }))
    }

    type ImageImportStream = EventStream;
    type ImageBuildStream = EventStream;
    type ImageExecFinishStream = EventStream;
    type ImageSyncuserStream = EventStream;

    async fn image_syncuser(
        &self,
        req: GrpcRequest<pb::ImageSyncuserRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let images = self.gate.get()?.images.clone();
        let who = operator(&req);
        let r = req.into_inner();
        Ok(Response::new(streamed_with(who, move |p| async move {
            let (entry, report) = images.syncuser(&r.name, r.write, r.build, p).await?;
            Ok((entry, serde_json::to_vec(&report).expect("report serializes")))
        })))
    }

    async fn image_import(&self, req: GrpcRequest<pb::ImageImportRequest>) -> Result<Response<EventStream>, Status> {
        let images = self.gate.get()?.images.clone();
        let who = operator(&req);
        let r = req.into_inner();
        let ir = image::ImportRequest {
            source: r.source,
            name: r.name,
            nohttps: r.nohttps,
            auth: (!r.username.is_empty()).then_some((r.username, r.password)),
            platform: (!r.platform.is_empty()).then_some(r.platform),
            force: r.force,
            build: r.build,
            syncuser: r.syncuser,
        };
        Ok(Response::new(streamed(who, move |p| async move {
            images.import(ir, p).await
        })))
    }

    async fn image_build(&self, req: GrpcRequest<pb::ImageBuildRequest>) -> Result<Response<EventStream>, Status> {
        let images = self.gate.get()?.images.clone();
        let who = operator(&req);
        let r = req.into_inner();
        Ok(Response::new(streamed(who, move |p| async move {
            images.build(&r.name, r.force, p).await
        })))
    }

    async fn image_kernels(
        &self,
        req: GrpcRequest<pb::ImageNameRequest>,
    ) -> Result<Response<pb::ImageKernelsReply>, Status> {
        let s = self.gate.get()?;
        let (list, chosen) = s.images.kernels(&req.into_inner().name).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::ImageKernelsReply {
            kernels: list
                .into_iter()
                .map(|k| pb::KernelInfo {
                    version: k.version,
                    path: k.path.to_string_lossy().into_owned(),
                })
                .collect(),
            chosen: chosen.unwrap_or_default(),
        }))
    }

    async fn image_exec_prepare(
        &self,
        req: GrpcRequest<pb::ImageNameRequest>,
    ) -> Result<Response<pb::ImageExecPrepareReply>, Status> {
        let s = self.gate.get()?;
        let p = s
            .images
            .exec_prepare(&req.into_inner().name)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::ImageExecPrepareReply {
            rootfs: p.rootfs.to_string_lossy().into_owned(),
            token: p.token,
            version: p.version,
            mounts: p.mounts,
        }))
    }

    async fn image_exec_finish(
        &self,
        req: GrpcRequest<pb::ImageExecFinishRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let images = self.gate.get()?.images.clone();
        let who = operator(&req);
        let r = req.into_inner();
        Ok(Response::new(streamed(who, move |p| async move {
            images
                .exec_finish(&r.name, &r.token, r.version, r.changed, !r.skip_build, p)
                .await
        })))
    }

    async fn write(&self, req: GrpcRequest<pb::WriteRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let s = self.gate.get()?;
        let deadline = deadline(&req);
        let who = operator(&req);
        let req = req.into_inner();
        let cmd: Request = serde_json::from_slice(&req.command_json).map_err(|e| bad_json("command", e))?;
        let w = crate::cluster::OPERATOR
            .scope(who, s.cluster.submit(cmd, req.hops, deadline))
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::WriteReply {
            result_json: serde_json::to_vec(&w.outcome).expect("outcome serializes"),
            log_index: w.log_index,
        }))
    }

    async fn read(&self, req: GrpcRequest<pb::ReadRequest>) -> Result<Response<pb::ReadReply>, Status> {
        let s = self.gate.get()?;
        let deadline = deadline(&req);
        // Secrets in clear only when asked, and only to an admin (or a head forwarding
        // for its caller, or anyone on a plaintext head, where everyone is admin).
        let may_see = auth::caller_role(req.extensions()).is_none_or(|r| r.allows(crate::pki::Role::Admin));
        let req = req.into_inner();
        let hide = !(req.show_secrets && may_see);
        let q: Query = serde_json::from_slice(&req.query_json).map_err(|e| bad_json("query", e))?;
        let (mut result, applied) = s
            .cluster
            .read(&q, req.linearizable, req.hops, deadline)
            .await
            .map_err(|e| status(&e))?;
        if hide {
            auth::hide_secrets(&mut result);
        }
        Ok(Response::new(pb::ReadReply {
            result_json: serde_json::to_vec(&result).expect("query result serializes"),
            applied_index: applied,
        }))
    }

    async fn head_status(&self, _req: GrpcRequest<pb::Empty>) -> Result<Response<pb::HeadStatusReply>, Status> {
        Ok(Response::new(head_status_pb(self.gate.get()?.cluster.head_status())))
    }

    async fn state_digest(&self, _req: GrpcRequest<pb::Empty>) -> Result<Response<pb::StateDigestReply>, Status> {
        let s = self.gate.get()?;
        let cluster = s.cluster.clone();
        // Encoding 10,000 nodes takes some milliseconds: off the async workers.
        let (applied_index, digest) = tokio::task::spawn_blocking(move || cluster.state_digest())
            .await
            .map_err(|e| Status::internal(format!("state digest: {e}")))?;
        Ok(Response::new(pb::StateDigestReply {
            id: s.cluster.id(),
            applied_index,
            digest,
        }))
    }

    async fn cluster_status(&self, req: GrpcRequest<pb::Empty>) -> Result<Response<pb::ClusterStatusReply>, Status> {
        let s = self.gate.get()?;
        let wait = deadline(&req)
            .saturating_duration_since(Instant::now())
            .min(HEAD_STATUS_WAIT);
        let mut heads = vec![pb::HeadHealth {
            id: s.cluster.id(),
            addr: s.cluster.addr().to_string(),
            reachable: true,
            error: String::new(),
            status: Some(head_status_pb(s.cluster.head_status())),
            lag: None,
            racks_listed: Vec::new(),
        }];
        let answers = s
            .cluster
            .ask_peers(wait, |mut c| async move { c.head_status(pb::Empty {}).await })
            .await;
        heads.extend(answers.into_iter().map(|(id, addr, r)| match r {
            Ok(st) => pb::HeadHealth {
                id,
                addr,
                reachable: true,
                error: String::new(),
                status: Some(st),
                lag: None,
                racks_listed: Vec::new(),
            },
            Err(e) => pb::HeadHealth {
                id,
                addr,
                reachable: false,
                error: e.to_string(),
                status: None,
                lag: None,
                racks_listed: Vec::new(),
            },
        }));
        heads.sort_by_key(|h| h.id);
        fill_lag(&mut heads);
        // The applied state, not the boot view (rebuilt up to 100 ms later): what
        // `rack list` on this head shows.
        s.cluster.state().read(|st| {
            for h in heads.iter_mut() {
                h.racks_listed = st
                    .cluster
                    .racks
                    .iter()
                    .filter(|(_, r)| r.value.position(h.id).is_some())
                    .map(|(n, _)| n.clone())
                    .collect();
            }
        });
        Ok(Response::new(pb::ClusterStatusReply {
            cluster_name: s.cluster.name(),
            answered_by: s.cluster.id(),
            heads,
        }))
    }

    async fn add_head(&self, req: GrpcRequest<pb::AddHeadRequest>) -> Result<Response<pb::MembershipReply>, Status> {
        let s = self.gate.get()?;
        let deadline = deadline(&req);
        let r = req.into_inner();
        let m = s
            .cluster
            .add_head(r.id, &r.addr, r.learner_only, r.hops, deadline)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(membership_pb(m)))
    }

    async fn promote_head(
        &self,
        req: GrpcRequest<pb::PromoteHeadRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let s = self.gate.get()?;
        let deadline = deadline(&req);
        let r = req.into_inner();
        let m = s
            .cluster
            .promote_head(r.id, r.wait, r.hops, deadline)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(membership_pb(m)))
    }

    async fn remove_head(
        &self,
        req: GrpcRequest<pb::RemoveHeadRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let s = self.gate.get()?;
        let deadline = deadline(&req);
        let who = operator(&req);
        let r = req.into_inner();
        let m = crate::cluster::OPERATOR
            .scope(who, s.cluster.remove_head(r.id, r.hops, deadline))
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(membership_pb(m)))
    }
}

#[tonic::async_trait]
impl raft_pb::raft_server::Raft for GatedRaft {
    async fn append_entries(
        &self,
        req: GrpcRequest<raft_pb::RaftPayload>,
    ) -> Result<Response<raft_pb::RaftPayload>, Status> {
        self.gate.get()?.append_entries(req).await
    }

    async fn vote(&self, req: GrpcRequest<raft_pb::RaftPayload>) -> Result<Response<raft_pb::RaftPayload>, Status> {
        self.gate.get()?.vote(req).await
    }

    async fn install_snapshot(
        &self,
        req: GrpcRequest<raft_pb::SnapshotChunk>,
    ) -> Result<Response<raft_pb::RaftPayload>, Status> {
        self.gate.get()?.install_snapshot(req).await
    }
}

fn overlays_off() -> Status {
    Status::failed_precondition(
        "overlays are off on this head (boot.overlays.enabled: false); ask another head or turn them on",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_gate_says_how_far_start_up_is_then_opens() {
        let applied = Arc::new(std::sync::atomic::AtomicU64::new(3));
        let a = applied.clone();
        let gate: Gate<&str> = Gate::new(move || {
            format!(
                "replaying its log: {} of 10 entries applied",
                a.load(std::sync::atomic::Ordering::Relaxed)
            )
        });
        let e = gate.get().unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "clients move on to another head");
        assert!(
            e.message()
                .contains("starting (replaying its log: 3 of 10 entries applied)"),
            "{e}"
        );
        applied.store(7, std::sync::atomic::Ordering::Relaxed);
        assert!(gate.get().unwrap_err().message().contains("7 of 10"));
        gate.clone().open("served");
        assert_eq!(gate.get().unwrap(), &"served", "clones share the gate");
    }
}
