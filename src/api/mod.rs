//! # Admin gRPC service (what `wwctl` talks to)
//!
//! Thin on purpose: decode, hand the command to Raft or the read to the local state
//! machine, map errors in one place ([`error`]). Any head accepts any call:
//! - **Writes** go through `client_write`. On a follower openraft answers
//!   `ForwardToLeader`; the head then makes the same call on the leader itself, so
//!   the operator never sees which head leads. `hops` stops a forwarding loop while
//!   a new leader's identity is still spreading.
//! - **Reads** are linearizable when asked (the default for `wwctl`): the leader
//!   confirms with a quorum (`ensure_linearizable`) and answers from its state
//!   machine; a follower forwards. Local reads are for the boot side and status.

pub mod error;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use tokio::sync::Mutex;
use tonic::transport::Channel;
use tonic::{Request as GrpcRequest, Response, Status};

use crate::cas::Cas;
use crate::image::{self, Images, Progress};
use crate::pb::admin as pb;
use crate::pb::admin::admin_client::AdminClient;
use crate::raft::{NodeId, Raft, TypeConfig};
use crate::state::{Query, Request, State};
use crate::store::StateMachineStore;

/// Calls forwarded more often than this are refused (a leader hint is going round).
const MAX_HOPS: u32 = 3;

/// Everything the admin service needs from its head.
#[derive(Clone)]
pub struct HeadCtx {
    pub id: NodeId,
    pub addr: String,
    pub raft: Raft,
    pub sm: StateMachineStore<TypeConfig, State>,
    pub cas: Cas,
    pub data_dir: PathBuf,
    pub images: Images,
    /// What the boot services read.
    pub view: crate::boot::view::ViewRx,
    /// Per-node boot status as this head saw it.
    pub status: Arc<crate::boot::status::StatusBoard>,
    pub started: Instant,
    peers: Arc<Mutex<HashMap<String, Channel>>>,
}

impl HeadCtx {
    pub fn new(
        id: NodeId,
        addr: String,
        raft: Raft,
        sm: StateMachineStore<TypeConfig, State>,
        cas: Cas,
        data_dir: PathBuf,
    ) -> Self {
        let images = Images::new(cas.clone(), &data_dir, addr.clone());
        let view = crate::boot::view::publish_for(&sm);
        let status = Arc::new(crate::boot::status::StatusBoard::new());
        crate::boot::status::forget_deleted_nodes(status.clone(), view.clone());
        HeadCtx {
            view,
            status,
            id,
            addr,
            raft,
            sm,
            cas,
            data_dir,
            images,
            started: Instant::now(),
            peers: Arc::default(),
        }
    }

    async fn peer(&self, addr: &str) -> Result<AdminClient<Channel>, Status> {
        let mut map = self.peers.lock().await;
        let ch = match map.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = crate::raft::endpoint(addr)
                    .map_err(|e| Status::internal(format!("bad head address {addr:?}: {e}")))?
                    .connect_lazy();
                map.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(AdminClient::new(ch).max_decoding_message_size(usize::MAX))
    }

    /// This head's own view of Raft.
    pub fn head_status(&self) -> pb::HeadStatusReply {
        let m = self.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership();
        let voters: Vec<u64> = mem.voter_ids().collect();
        let learners: Vec<u64> = mem.learner_ids().collect();
        let role = match m.state {
            ServerState::Leader => "Leader",
            ServerState::Follower if !voters.contains(&self.id) => "Learner",
            ServerState::Follower => "Follower",
            ServerState::Candidate => "Candidate",
            ServerState::Learner => "Learner",
            ServerState::Shutdown => "Shutdown",
        };
        pb::HeadStatusReply {
            id: self.id,
            addr: self.addr.clone(),
            role: role.into(),
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: m.last_applied.map(|l| l.index).unwrap_or(0).max(committed_index(&m)),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            voters,
            learners,
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }

    /// Every member (voters and learners) with its address, from the local membership.
    pub fn members(&self) -> Vec<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    fn leader_addr(&self, leader: Option<&BasicNode>, hops: u32) -> Result<String, Status> {
        match leader {
            Some(n) if hops < MAX_HOPS && n.addr != self.addr => Ok(n.addr.clone()),
            _ => Err(Status::unavailable(
                "no leader is elected right now; retry shortly or use another head",
            )),
        }
    }
}

/// The commit index as far as this head knows it: on the leader the replication
/// metrics give the quorum-acknowledged index; elsewhere the applied index is the
/// best local lower bound.
fn committed_index(m: &openraft::RaftMetrics<NodeId, BasicNode>) -> u64 {
    match (&m.replication, m.state) {
        (Some(rep), ServerState::Leader) => {
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            let mut acked: Vec<u64> = voters
                .iter()
                .map(|v| {
                    if *v == m.id {
                        m.last_log_index.unwrap_or(0)
                    } else {
                        rep.get(v).and_then(|l| l.map(|l| l.index)).unwrap_or(0)
                    }
                })
                .collect();
            acked.sort_unstable_by(|a, b| b.cmp(a));
            acked.get(voters.len() / 2).copied().unwrap_or(0)
        }
        _ => 0,
    }
}

/// The tonic service.
#[derive(Clone)]
pub struct AdminService {
    pub ctx: HeadCtx,
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
    }
}

/// Run an image operation in its own task (it finishes even if the client goes
/// away) and stream its progress, then its result.
fn streamed<F>(op: impl FnOnce(Progress) -> F) -> EventStream
where
    F: std::future::Future<Output = Result<crate::state::ImageEntry, image::ImageError>> + Send + 'static,
{
    let (etx, mut erx) = tokio::sync::mpsc::channel::<image::Event>(256);
    let (otx, orx) = tokio::sync::mpsc::channel::<Result<pb::ImageEvent, Status>>(256);
    let fut = op(Progress::new(etx));
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
            Ok(entry) => Ok(pb::ImageEvent {
                stage: "done".into(),
                message: String::new(),
                done: 1,
                total: 1,
                entry_json: serde_json::to_vec(&entry).expect("entry serializes"),
            }),
            Err(e) => Err(error::image_status(&e)),
        };
        let _ = otx.send(last).await;
    });
    Box::pin(futures::stream::unfold(orx, |mut rx| async move {
        rx.recv().await.map(|x| (x, rx))
    }))
}

/// One node's boot status as one head saw it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HeadNodeStatus {
    pub head: u64,
    pub status: crate::boot::status::NodeStatus,
}

/// Keep, per node, the most recent event of any head.
pub fn merge_status(all: impl IntoIterator<Item = HeadNodeStatus>) -> Vec<HeadNodeStatus> {
    let mut best: std::collections::BTreeMap<String, HeadNodeStatus> = std::collections::BTreeMap::new();
    for s in all {
        match best.get(&s.status.node) {
            Some(b) if b.status.last_seen >= s.status.last_seen => {}
            _ => {
                best.insert(s.status.node.clone(), s);
            }
        }
    }
    best.into_values().collect()
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn node_status(
        &self,
        req: GrpcRequest<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusReply>, Status> {
        let own = self.ctx.status.snapshot().into_iter().map(|status| HeadNodeStatus {
            head: self.ctx.id,
            status,
        });
        let mut all: Vec<HeadNodeStatus> = own.collect();
        let mut unreachable = Vec::new();
        if req.into_inner().all_heads {
            let asks = self
                .ctx
                .members()
                .into_iter()
                .filter(|(id, _)| *id != self.ctx.id)
                .map(|(id, addr)| {
                    let ctx = self.ctx.clone();
                    async move {
                        let r = async {
                            let mut c = ctx.peer(&addr).await?;
                            tokio::time::timeout(
                                Duration::from_secs(2),
                                c.node_status(pb::NodeStatusRequest { all_heads: false }),
                            )
                            .await
                            .map_err(|_| Status::deadline_exceeded("no answer within 2 s"))?
                        }
                        .await;
                        (id, r)
                    }
                });
            for (id, r) in futures::future::join_all(asks).await {
                match r
                    .ok()
                    .and_then(|r| serde_json::from_slice::<Vec<HeadNodeStatus>>(&r.into_inner().json).ok())
                {
                    Some(v) => all.extend(v),
                    None => unreachable.push(id),
                }
            }
        }
        Ok(Response::new(pb::NodeStatusReply {
            json: serde_json::to_vec(&merge_status(all)).expect("status serializes"),
            unreachable,
        }))
    }

    type ImageImportStream = EventStream;
    type ImageBuildStream = EventStream;
    type ImageExecFinishStream = EventStream;

    async fn image_import(&self, req: GrpcRequest<pb::ImageImportRequest>) -> Result<Response<EventStream>, Status> {
        let r = req.into_inner();
        let ir = image::ImportRequest {
            source: r.source,
            name: r.name,
            nohttps: r.nohttps,
            auth: (!r.username.is_empty()).then_some((r.username, r.password)),
            platform: (!r.platform.is_empty()).then_some(r.platform),
            force: r.force,
            build: r.build,
        };
        let images = self.ctx.images.clone();
        Ok(Response::new(streamed(
            move |p| async move { images.import(ir, p).await },
        )))
    }

    async fn image_build(&self, req: GrpcRequest<pb::ImageBuildRequest>) -> Result<Response<EventStream>, Status> {
        let r = req.into_inner();
        let images = self.ctx.images.clone();
        Ok(Response::new(streamed(move |p| async move {
            images.build(&r.name, r.force, p).await
        })))
    }

    async fn image_kernels(
        &self,
        req: GrpcRequest<pb::ImageNameRequest>,
    ) -> Result<Response<pb::ImageKernelsReply>, Status> {
        let name = req.into_inner().name;
        let (list, chosen) = self
            .ctx
            .images
            .kernels(&name)
            .await
            .map_err(|e| error::image_status(&e))?;
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
        let name = req.into_inner().name;
        let p = self
            .ctx
            .images
            .exec_prepare(&name)
            .await
            .map_err(|e| error::image_status(&e))?;
        Ok(Response::new(pb::ImageExecPrepareReply {
            rootfs: p.rootfs.to_string_lossy().into_owned(),
            token: p.token,
            version: p.version,
        }))
    }

    async fn image_exec_finish(
        &self,
        req: GrpcRequest<pb::ImageExecFinishRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let r = req.into_inner();
        let images = self.ctx.images.clone();
        Ok(Response::new(streamed(move |p| async move {
            images.exec_finish(&r.name, &r.token, r.version, r.changed, p).await
        })))
    }

    async fn write(&self, req: GrpcRequest<pb::WriteRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let req = req.into_inner();
        let cmd: Request = serde_json::from_slice(&req.command_json).map_err(|e| error::bad_json("command", e))?;
        // A brand-new cluster answers before its founding head's `Init` (name and
        // `default` profile) is applied; a node write then would fail with "profile
        // default does not exist". Unavailable makes the client retry until it is.
        if cmd.cmd.needs_init() && !self.ctx.sm.read(State::initialised) {
            return Err(Status::unavailable(
                "the cluster is still initialising (its founding head is recording the cluster name and the default profile); retry in a moment",
            ));
        }
        match self.ctx.raft.client_write(cmd).await {
            Ok(resp) => match resp.data.0 {
                Ok(outcome) => Ok(Response::new(pb::WriteReply {
                    result_json: serde_json::to_vec(&outcome).expect("outcome serializes"),
                    log_index: resp.log_id.index,
                })),
                Err(e) => Err(error::command_status(&e)),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let addr = self.ctx.leader_addr(f.leader_node.as_ref(), req.hops)?;
                let mut c = self.ctx.peer(&addr).await?;
                c.write(pb::WriteRequest {
                    command_json: req.command_json,
                    hops: req.hops + 1,
                })
                .await
            }
            Err(e) => Err(error::write_status(&e)),
        }
    }

    async fn read(&self, req: GrpcRequest<pb::ReadRequest>) -> Result<Response<pb::ReadReply>, Status> {
        let req = req.into_inner();
        let q: Query = serde_json::from_slice(&req.query_json).map_err(|e| error::bad_json("query", e))?;
        if req.linearizable {
            match self.ctx.raft.ensure_linearizable().await {
                Ok(read_log_id) => {
                    // The leader has confirmed the read index; wait until it is applied locally.
                    if let Some(l) = read_log_id {
                        let mut w = self.ctx.sm.applied_watch();
                        let deadline = Duration::from_secs(5);
                        tokio::time::timeout(deadline, w.wait_for(|a| *a >= l.index))
                            .await
                            .map_err(|_| Status::unavailable("this head is applying the log too slowly; retry"))?
                            .map_err(|_| Status::unavailable("this head is shutting down"))?;
                    }
                }
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    let addr = self.ctx.leader_addr(f.leader_node.as_ref(), req.hops)?;
                    let mut c = self.ctx.peer(&addr).await?;
                    return c
                        .read(pb::ReadRequest {
                            hops: req.hops + 1,
                            ..req
                        })
                        .await;
                }
                Err(e) => return Err(error::read_status(&e)),
            }
        }
        let (result, applied) = self
            .ctx
            .sm
            .reader()
            .read_with_applied(|s, applied| (s.query(&q), applied.map(|l| l.index).unwrap_or(0)));
        Ok(Response::new(pb::ReadReply {
            result_json: serde_json::to_vec(&result).expect("query result serializes"),
            applied_index: applied,
        }))
    }

    async fn head_status(&self, _req: GrpcRequest<pb::Empty>) -> Result<Response<pb::HeadStatusReply>, Status> {
        Ok(Response::new(self.ctx.head_status()))
    }

    async fn cluster_status(&self, _req: GrpcRequest<pb::Empty>) -> Result<Response<pb::ClusterStatusReply>, Status> {
        let members = self.ctx.members();
        let asks = members.into_iter().map(|(id, addr)| {
            let ctx = self.ctx.clone();
            async move {
                if id == ctx.id {
                    return pb::HeadHealth {
                        id,
                        addr,
                        reachable: true,
                        error: String::new(),
                        status: Some(ctx.head_status()),
                    };
                }
                let res = async {
                    let mut c = ctx.peer(&addr).await?;
                    tokio::time::timeout(Duration::from_secs(1), c.head_status(pb::Empty {}))
                        .await
                        .map_err(|_| Status::deadline_exceeded("no answer within 1 s"))?
                }
                .await;
                match res {
                    Ok(r) => pb::HeadHealth {
                        id,
                        addr,
                        reachable: true,
                        error: String::new(),
                        status: Some(r.into_inner()),
                    },
                    Err(s) => pb::HeadHealth {
                        id,
                        addr,
                        reachable: false,
                        error: s.message().to_string(),
                        status: None,
                    },
                }
            }
        });
        let heads = futures::future::join_all(asks).await;
        let cluster_name = self.ctx.sm.read(|s| s.cluster.name.clone());
        Ok(Response::new(pb::ClusterStatusReply {
            cluster_name,
            answered_by: self.ctx.id,
            heads,
        }))
    }

    async fn add_head(&self, req: GrpcRequest<pb::AddHeadRequest>) -> Result<Response<pb::MembershipReply>, Status> {
        let req = req.into_inner();
        if req.id == 0 {
            return Err(Status::invalid_argument("head id 0 is reserved; use 1 or more"));
        }
        if req.addr.parse::<std::net::SocketAddr>().is_err() && !req.addr.contains(':') {
            return Err(Status::invalid_argument(format!(
                "head address {:?} is not host:port",
                req.addr
            )));
        }
        let node = BasicNode { addr: req.addr.clone() };
        // Learner first: it catches up (blocking) before it can count in a quorum.
        let r = match self.ctx.raft.add_learner(req.id, node, true).await {
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let addr = self.ctx.leader_addr(f.leader_node.as_ref(), req.hops)?;
                let mut c = self.ctx.peer(&addr).await?;
                return c
                    .add_head(pb::AddHeadRequest {
                        hops: req.hops + 1,
                        ..req
                    })
                    .await;
            }
            r => r.map_err(|e| error::write_status(&e))?,
        };
        let r = if req.learner_only {
            r
        } else {
            let ids = [req.id].into_iter().collect();
            self.ctx
                .raft
                .change_membership(ChangeMembers::AddVoterIds(ids), false)
                .await
                .map_err(|e| error::write_status(&e))?
        };
        Ok(Response::new(membership_reply(&r)))
    }

    async fn remove_head(
        &self,
        req: GrpcRequest<pb::RemoveHeadRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let req = req.into_inner();
        let mem = self.ctx.raft.metrics().borrow().membership_config.clone();
        let membership = mem.membership();
        let ids: std::collections::BTreeSet<u64> = [req.id].into_iter().collect();
        let change = if membership.voter_ids().any(|v| v == req.id) {
            if membership.voter_ids().count() == 1 {
                return Err(Status::failed_precondition(
                    "cannot remove the last voting head; add another head first",
                ));
            }
            ChangeMembers::RemoveVoters(ids)
        } else if membership.learner_ids().any(|v| v == req.id) {
            ChangeMembers::RemoveNodes(ids)
        } else {
            return Err(Status::not_found(format!(
                "head {} is not a member; see `wwctl cluster status`",
                req.id
            )));
        };
        match self.ctx.raft.change_membership(change, false).await {
            Ok(r) => Ok(Response::new(membership_reply(&r))),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let addr = self.ctx.leader_addr(f.leader_node.as_ref(), req.hops)?;
                let mut c = self.ctx.peer(&addr).await?;
                c.remove_head(pb::RemoveHeadRequest {
                    hops: req.hops + 1,
                    ..req
                })
                .await
            }
            Err(e) => Err(error::write_status(&e)),
        }
    }
}

fn membership_reply(r: &openraft::raft::ClientWriteResponse<TypeConfig>) -> pb::MembershipReply {
    let (voters, learners) = match &r.membership {
        Some(m) => (m.voter_ids().collect(), m.learner_ids().collect()),
        None => (vec![], vec![]),
    };
    pb::MembershipReply {
        log_index: r.log_id.index,
        voters,
        learners,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::status::{NodeStatus, Stage};
    use std::time::{Duration, UNIX_EPOCH};

    fn st(head: u64, node: &str, stage: Stage, secs: u64) -> HeadNodeStatus {
        HeadNodeStatus {
            head,
            status: NodeStatus {
                node: node.into(),
                stage,
                sent: "x".into(),
                client: "10.0.0.1".parse().unwrap(),
                uuid: None,
                last_seen: UNIX_EPOCH + Duration::from_secs(secs),
            },
        }
    }

    #[test]
    fn merged_status_keeps_the_latest_event_per_node() {
        let m = merge_status([
            st(1, "n1", Stage::Ipxe, 10),
            st(2, "n1", Stage::Image, 30),
            st(3, "n1", Stage::Kernel, 20),
            st(3, "n2", Stage::Ipxe, 5),
        ]);
        let got: Vec<(String, Stage, u64)> = m
            .iter()
            .map(|s| (s.status.node.clone(), s.status.stage, s.head))
            .collect();
        assert_eq!(got, vec![("n1".into(), Stage::Image, 2), ("n2".into(), Stage::Ipxe, 3)]);
    }
}
