//! # The cluster handle: the one in-process way to write to and read from the cluster
//!
//! Everything inside a head that changes replicated state — the admin API on behalf of
//! `wwctl`, image import, DHCP lease recording, head registration, bootstrap — goes
//! through a [`Cluster`]. None of them is a gRPC client of its own head any more; the
//! gRPC admin service is a thin adapter over this handle, so whatever later sits at
//! that seam (authentication, authorization, audit) sits in one place.
//!
//! What the handle adds to openraft:
//! - **Leader forwarding.** openraft answers a follower's `client_write` with
//!   `ForwardToLeader`; the handle makes the call on the leader's admin API itself
//!   (one loop, [`Cluster::on_leader`], for writes, reads and membership changes).
//!   `hops` stops a forwarding loop while a new leader's identity is still spreading.
//! - **Deadlines.** Every operation runs against an absolute deadline. A forward is
//!   raced against a change of leader: when the leader hangs (a stopped process, a path
//!   that drops packets) the followers elect another one, and the pending forward is
//!   abandoned for the new leader instead of waiting on HTTP/2 keep-alive. A write that
//!   cannot reach a majority ends at its deadline with [`ClusterError::NoMajority`],
//!   which says honestly that it may still be applied later.
//! - **Exactly once.** [`Cluster::write`] gives each command a fresh request id, kept
//!   across forwards and retries, so the state machine applies it once.
//! - **Not before `Init`.** Node and profile writes of a brand-new cluster wait
//!   (`Unavailable`) until the founding head's `Init` is applied.

mod forward;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use tonic::transport::Channel;

use crate::error::{Classify, ErrorKind};
use crate::pb::admin as pb;
use crate::raft::{NodeId, Raft};
use crate::state::{Command, CommandError, Outcome, Query, QueryResult, Request, State};
use crate::store::StateReader;

pub use forward::{grpc_deadline, Op};

/// Calls forwarded more often than this are refused (a leader hint is going round).
pub const MAX_HOPS: u32 = 3;

/// Deadline of in-process writes that give none (lease recording, registration).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// Why the cluster could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The state machine refused the command (the state is unchanged).
    #[error(transparent)]
    Refused(#[from] CommandError),
    /// A forwarded call was refused or failed on another head; its message as sent.
    #[error("{message}")]
    Remote { kind: ErrorKind, message: String },
    #[error("no leader is elected right now; retry shortly or use another head")]
    NoLeader,
    #[error("no majority of heads confirmed the {op} within {secs:.1} s; {advice}", advice = op.advice())]
    NoMajority { op: Op, secs: f64 },
    #[error("the cluster is still initialising (its founding head is recording the cluster name and the default profile); retry in a moment")]
    Initialising,
    #[error("this head's Raft stopped ({0}); use another head")]
    Stopped(String),
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("{0}")]
    Invalid(String),
    #[error("this head is applying the log too slowly to answer a read; retry")]
    Lagging,
    #[error("head {addr} sent an undecodable answer: {message}")]
    Decode { addr: String, message: String },
}

impl Classify for ClusterError {
    fn kind(&self) -> ErrorKind {
        match self {
            ClusterError::Refused(e) => e.kind(),
            ClusterError::Remote { kind, .. } => *kind,
            ClusterError::NoLeader
            | ClusterError::NoMajority { .. }
            | ClusterError::Initialising
            | ClusterError::Stopped(_)
            | ClusterError::Lagging => ErrorKind::Unavailable,
            ClusterError::Membership(_) => ErrorKind::InUse,
            ClusterError::Invalid(_) => ErrorKind::Invalid,
            ClusterError::Decode { .. } => ErrorKind::Internal,
        }
    }
}

impl Classify for CommandError {
    fn kind(&self) -> ErrorKind {
        match self {
            CommandError::Exists { .. } => ErrorKind::Exists,
            CommandError::NotFound { .. } => ErrorKind::NotFound,
            CommandError::Conflict { .. } => ErrorKind::Conflict,
            CommandError::InUse { .. } => ErrorKind::InUse,
            CommandError::Invalid(_) => ErrorKind::Invalid,
            CommandError::PoolExhausted { .. } => ErrorKind::Exhausted,
        }
    }
}

impl ClusterError {
    /// The error a remote head's status stands for.
    pub fn from_status(s: &tonic::Status) -> ClusterError {
        ClusterError::Remote {
            kind: ErrorKind::from_grpc(s.code()),
            message: s.message().to_string(),
        }
    }
}

/// A written command's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub outcome: Outcome,
    pub log_index: u64,
}

/// One head's own view of Raft.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadStatus {
    pub id: NodeId,
    pub addr: String,
    pub role: &'static str,
    pub term: u64,
    pub leader_id: Option<NodeId>,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub uptime: Duration,
    /// What this head lacks of the blobs the catalog references (None: no artifact
    /// sync reports to this handle).
    pub artifacts: Option<ArtifactsStatus>,
}

/// A head's artifact completeness, from its artifact sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArtifactsStatus {
    /// Blobs the catalog references.
    pub referenced: u64,
    /// Of those, blobs not on this head.
    pub missing: u64,
    /// Bytes of the missing blobs whose size the catalog records.
    pub missing_bytes: u64,
    /// Missing blobs whose size the catalog does not record (OCI configs, overlay trees).
    pub missing_unknown_size: u64,
}

/// A leader whose quorum last acknowledged it longer ago than this is cut off (ten
/// heartbeats at the default timing; an election among the others takes about as long).
pub const QUORUM_FRESH: Duration = Duration::from_millis(1000);

/// The in-process handle of one head to the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.inner.id)
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

struct Inner {
    id: NodeId,
    /// This head's advertised admin/Raft address (never forwarded to).
    addr: String,
    raft: Raft,
    sm: StateReader<State>,
    /// Admin API channels to other heads, by address.
    peers: Mutex<HashMap<String, Channel>>,
    started: Instant,
    /// The artifact sync's missing set, once the daemon connects it.
    artifacts: std::sync::OnceLock<tokio::sync::watch::Receiver<Arc<crate::cas::sync::Missing>>>,
}

impl Cluster {
    pub fn new(id: NodeId, addr: String, raft: Raft, sm: StateReader<State>) -> Cluster {
        Cluster {
            inner: Arc::new(Inner {
                id,
                addr,
                raft,
                sm,
                peers: Mutex::default(),
                started: Instant::now(),
                artifacts: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The cluster's name: the replicated one, or (on a head that has not applied the
    /// `Init` entry yet, e.g. a follower still catching up) the configured one, which is
    /// what `Init` records.
    pub fn name(&self) -> String {
        let replicated = self.inner.sm.read(|s| s.cluster.name.clone());
        if replicated.is_empty() {
            self.inner.raft.config().cluster_name.clone()
        } else {
            replicated
        }
    }

    /// The locally applied state (never waits for the network; boot side, status).
    pub fn state(&self) -> &StateReader<State> {
        &self.inner.sm
    }

    /// Apply `cmd` exactly once, with [`DEFAULT_DEADLINE`].
    pub async fn write(&self, cmd: Command) -> Result<Written, ClusterError> {
        self.write_within(cmd, DEFAULT_DEADLINE).await
    }

    /// Apply `cmd` exactly once, giving up after `within`.
    pub async fn write_within(&self, cmd: Command, within: Duration) -> Result<Written, ClusterError> {
        self.submit(Request::with_new_id(cmd), 0, Instant::now() + within).await
    }

    /// Apply a request that carries its own id (from a client or another head).
    pub async fn submit(&self, req: Request, hops: u32, deadline: Instant) -> Result<Written, ClusterError> {
        if req.cmd.needs_init() && !self.inner.sm.read(State::initialised) {
            return Err(ClusterError::Initialising);
        }
        // Encoded only when forwarded (a bulk command is large; the leader never needs it).
        let body = std::sync::OnceLock::<Vec<u8>>::new();
        self.on_leader(
            Op::Write,
            hops,
            deadline,
            || async {
                match self.inner.raft.client_write(req.clone()).await {
                    Ok(resp) => forward::Local::Done(match resp.data.0 {
                        Ok(outcome) => Ok(Written {
                            outcome,
                            log_index: resp.log_id.index,
                        }),
                        Err(e) => Err(e.into()),
                    }),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                        forward::Local::Forward(f.leader_id, f.leader_node)
                    }
                    Err(e) => forward::Local::Done(Err(write_error(e))),
                }
            },
            |mut c, hops, timeout| {
                let body = body
                    .get_or_init(|| serde_json::to_vec(&req).expect("requests serialize"))
                    .clone();
                async move {
                    let mut r = tonic::Request::new(pb::WriteRequest {
                        command_json: body,
                        hops,
                    });
                    r.set_timeout(timeout);
                    let r = c.write(r).await?.into_inner();
                    Ok((r.result_json, r.log_index))
                }
            },
        )
        .await
        .and_then(|either| match either {
            forward::Either::Local(w) => Ok(w),
            forward::Either::Remote((json, log_index), addr) => Ok(Written {
                outcome: serde_json::from_slice(&json).map_err(|e| ClusterError::Decode {
                    addr,
                    message: e.to_string(),
                })?,
                log_index,
            }),
        })
    }

    /// Answer `q`; `linearizable` first confirms with a majority (on the leader) that
    /// this answer includes every write acknowledged before the call. Returns the
    /// result and the applied index it reflects.
    pub async fn read(
        &self,
        q: &Query,
        linearizable: bool,
        hops: u32,
        deadline: Instant,
    ) -> Result<(QueryResult, u64), ClusterError> {
        if !linearizable {
            return Ok(self.local_query(q));
        }
        let body = std::sync::OnceLock::<Vec<u8>>::new();
        let r = self
            .on_leader(
                Op::Read,
                hops,
                deadline,
                || async {
                    match self.inner.raft.ensure_linearizable().await {
                        Ok(read_log_id) => {
                            if let Some(l) = read_log_id {
                                // The read index is confirmed; wait until it is applied here.
                                let mut w = self.inner.sm.applied_watch();
                                let left = deadline.saturating_duration_since(Instant::now());
                                let applied = tokio::time::timeout(left, w.wait_for(|a| *a >= l.index))
                                    .await
                                    .map(|r| r.is_ok())
                                    .unwrap_or(false);
                                if !applied {
                                    return forward::Local::Done(Err(ClusterError::Lagging));
                                }
                            }
                            forward::Local::Done(Ok(self.local_query(q)))
                        }
                        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                            forward::Local::Forward(f.leader_id, f.leader_node)
                        }
                        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                            forward::Local::Done(Err(ClusterError::NoMajority {
                                op: Op::Read,
                                secs: 0.0,
                            }))
                        }
                        Err(RaftError::Fatal(f)) => forward::Local::Done(Err(ClusterError::Stopped(f.to_string()))),
                    }
                },
                |mut c, hops, timeout| {
                    let body = body
                        .get_or_init(|| serde_json::to_vec(q).expect("queries serialize"))
                        .clone();
                    async move {
                        let mut r = tonic::Request::new(pb::ReadRequest {
                            query_json: body,
                            linearizable: true,
                            hops,
                        });
                        r.set_timeout(timeout);
                        let r = c.read(r).await?.into_inner();
                        Ok((r.result_json, r.applied_index))
                    }
                },
            )
            .await?;
        match r {
            forward::Either::Local(x) => Ok(x),
            forward::Either::Remote((json, applied), addr) => Ok((
                serde_json::from_slice(&json).map_err(|e| ClusterError::Decode {
                    addr,
                    message: e.to_string(),
                })?,
                applied,
            )),
        }
    }

    fn local_query(&self, q: &Query) -> (QueryResult, u64) {
        self.inner
            .sm
            .read_with_applied(|s, applied| (s.query(q), applied.map(|l| l.index).unwrap_or(0)))
    }

    /// Add head `id` at `addr`: as a learner that catches up first, then (unless
    /// `learner_only`) as a voter.
    pub async fn add_head(
        &self,
        id: NodeId,
        addr: &str,
        learner_only: bool,
        hops: u32,
        deadline: Instant,
    ) -> Result<Membership, ClusterError> {
        if id == 0 {
            return Err(ClusterError::Invalid("head id 0 is reserved; use 1 or more".into()));
        }
        if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
            return Err(ClusterError::Invalid(format!("head address {addr:?} is not host:port")));
        }
        let raft = &self.inner.raft;
        self.membership_op(
            hops,
            deadline,
            || async move {
                let node = BasicNode { addr: addr.to_string() };
                let r = raft.add_learner(id, node, true).await?;
                if learner_only {
                    return Ok(r);
                }
                let ids = [id].into_iter().collect();
                raft.change_membership(ChangeMembers::AddVoterIds(ids), false).await
            },
            move |mut c, hops, timeout| async move {
                let mut r = tonic::Request::new(pb::AddHeadRequest {
                    id,
                    addr: addr.to_string(),
                    learner_only,
                    hops,
                });
                r.set_timeout(timeout);
                Ok(c.add_head(r).await?.into_inner())
            },
        )
        .await
    }

    /// Remove head `id` (voter or learner).
    pub async fn remove_head(&self, id: NodeId, hops: u32, deadline: Instant) -> Result<Membership, ClusterError> {
        let mem = self.inner.raft.metrics().borrow().membership_config.clone();
        let membership = mem.membership();
        let ids: std::collections::BTreeSet<u64> = [id].into_iter().collect();
        let change = if membership.voter_ids().any(|v| v == id) {
            if membership.voter_ids().count() == 1 {
                return Err(ClusterError::Membership(
                    "cannot remove the last voting head; add another head first".into(),
                ));
            }
            ChangeMembers::RemoveVoters(ids)
        } else if membership.learner_ids().any(|v| v == id) {
            ChangeMembers::RemoveNodes(ids)
        } else {
            return Err(ClusterError::Remote {
                kind: ErrorKind::NotFound,
                message: format!("head {id} is not a member; see `wwctl cluster status`"),
            });
        };
        let raft = &self.inner.raft;
        self.membership_op(
            hops,
            deadline,
            || {
                let change = change.clone();
                async move { raft.change_membership(change, false).await }
            },
            move |mut c, hops, timeout| async move {
                let mut r = tonic::Request::new(pb::RemoveHeadRequest { id, hops });
                r.set_timeout(timeout);
                Ok(c.remove_head(r).await?.into_inner())
            },
        )
        .await
    }

    async fn membership_op<L, LF, R, RF>(
        &self,
        hops: u32,
        deadline: Instant,
        local: L,
        remote: R,
    ) -> Result<Membership, ClusterError>
    where
        L: Fn() -> LF,
        LF: std::future::Future<
            Output = Result<openraft::raft::ClientWriteResponse<crate::raft::TypeConfig>, WriteErr>,
        >,
        R: Fn(pb::admin_client::AdminClient<Channel>, u32, Duration) -> RF,
        RF: std::future::Future<Output = Result<pb::MembershipReply, tonic::Status>>,
    {
        let r = self
            .on_leader(
                Op::Membership,
                hops,
                deadline,
                || async {
                    match local().await {
                        Ok(r) => forward::Local::Done(Ok(Membership::of(&r))),
                        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                            forward::Local::Forward(f.leader_id, f.leader_node)
                        }
                        Err(e) => forward::Local::Done(Err(write_error(e))),
                    }
                },
                remote,
            )
            .await?;
        Ok(match r {
            forward::Either::Local(m) => m,
            forward::Either::Remote(r, _) => Membership {
                log_index: r.log_index,
                voters: r.voters,
                learners: r.learners,
            },
        })
    }

    /// Whether this head is in contact with a quorum now: a leader whose last quorum
    /// acknowledgement is recent ([`QUORUM_FRESH`]), or a follower or learner that knows a
    /// leader (a follower cut off from it turns candidate within an election timeout and
    /// forgets it). Boot services ask this before taking over another head's rack.
    pub fn in_quorum(&self) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        match m.state {
            ServerState::Leader => m
                .millis_since_quorum_ack
                .is_some_and(|ms| ms < QUORUM_FRESH.as_millis() as u64),
            ServerState::Follower | ServerState::Learner => m.current_leader.is_some_and(|l| l != self.inner.id),
            ServerState::Candidate | ServerState::Shutdown => false,
        }
    }

    /// Report this artifact sync's missing set in [`Cluster::head_status`] (once; later
    /// calls are ignored).
    pub fn report_artifacts(&self, missing: tokio::sync::watch::Receiver<Arc<crate::cas::sync::Missing>>) {
        let _ = self.inner.artifacts.set(missing);
    }

    /// This head's own view of Raft.
    pub fn head_status(&self) -> HeadStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership();
        let voters: Vec<u64> = mem.voter_ids().collect();
        let learners: Vec<u64> = mem.learner_ids().collect();
        let role = match m.state {
            ServerState::Leader => "Leader",
            ServerState::Follower if !voters.contains(&self.inner.id) => "Learner",
            ServerState::Follower => "Follower",
            ServerState::Candidate => "Candidate",
            ServerState::Learner => "Learner",
            ServerState::Shutdown => "Shutdown",
        };
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        HeadStatus {
            id: self.inner.id,
            addr: self.inner.addr.clone(),
            role,
            term: m.current_term,
            leader_id: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: applied.max(committed_index(&m)),
            applied_index: applied,
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            voters,
            learners,
            uptime: self.inner.started.elapsed(),
            artifacts: self.inner.artifacts.get().map(|rx| {
                let m = rx.borrow();
                ArtifactsStatus {
                    referenced: m.referenced as u64,
                    missing: m.count() as u64,
                    missing_bytes: m.known_bytes(),
                    missing_unknown_size: m.unknown_sizes() as u64,
                }
            }),
        }
    }

    /// Every member (voters and learners) with its address, from the local membership.
    pub fn members(&self) -> Vec<(NodeId, String)> {
        let m = self.inner.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// An admin API client of the head at `addr` (channels are kept per address).
    pub fn peer(&self, addr: &str) -> Result<pb::admin_client::AdminClient<Channel>, ClusterError> {
        let mut map = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        let ch = match map.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = crate::raft::endpoint(addr)
                    .map_err(|e| ClusterError::Invalid(format!("bad head address {addr:?}: {e}")))?
                    .connect_lazy();
                map.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(pb::admin_client::AdminClient::new(ch).max_decoding_message_size(usize::MAX))
    }

    /// Ask every other member for `call`'s answer at once, each within `each`; a head
    /// that does not answer in time is reported with its error, never waited for longer.
    pub async fn ask_peers<T, F, Fut>(&self, each: Duration, call: F) -> Vec<(NodeId, String, Result<T, ClusterError>)>
    where
        F: Fn(pb::admin_client::AdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let asks = self
            .members()
            .into_iter()
            .filter(|(id, _)| *id != self.inner.id)
            .map(|(id, addr)| {
                let c = self.peer(&addr);
                let call = &call;
                async move {
                    let r = match c {
                        Ok(c) => match tokio::time::timeout(each, call(c)).await {
                            Ok(Ok(r)) => Ok(r.into_inner()),
                            Ok(Err(s)) => Err(ClusterError::from_status(&s)),
                            Err(_) => Err(ClusterError::Remote {
                                kind: ErrorKind::Unavailable,
                                message: format!("no answer within {} ms", each.as_millis()),
                            }),
                        },
                        Err(e) => Err(e),
                    };
                    (id, addr, r)
                }
            });
        futures::future::join_all(asks).await
    }
}

type WriteErr = RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>;

fn write_error(e: WriteErr) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ClusterError::NoLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => ClusterError::Membership(e.to_string()),
        RaftError::Fatal(f) => ClusterError::Stopped(f.to_string()),
    }
}

/// The result of a membership change.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    pub log_index: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl Membership {
    fn of(r: &openraft::raft::ClientWriteResponse<crate::raft::TypeConfig>) -> Membership {
        let (voters, learners) = match &r.membership {
            Some(m) => (m.voter_ids().collect(), m.learner_ids().collect()),
            None => (vec![], vec![]),
        };
        Membership {
            log_index: r.log_id.index,
            voters,
            learners,
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
