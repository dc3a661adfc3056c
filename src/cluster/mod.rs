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

use std::collections::{BTreeMap, HashMap};
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

/// How often a waiting promotion asks the learner again.
pub const PROMOTE_POLL: Duration = Duration::from_millis(250);
/// How long the leader waits for a learner's status answer.
pub const PROMOTE_ASK: Duration = Duration::from_secs(2);
/// Time kept after a promotion's wait for the membership change and the answer.
const PROMOTE_RESERVE: Duration = Duration::from_millis(500);

/// Deadline of in-process writes that give none (lease recording, registration).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

tokio::task_local! {
    /// The operator on whose behalf the current task writes, set by the admin API
    /// around an operator's call: writes submitted inside it get an audit stamp (see
    /// `state::audit`). Internal writers (leases, registration) run outside any scope.
    pub static OPERATOR: String;
}

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
    /// A learner was not made a voter: it has not caught up or lacks artifacts. It
    /// stays a learner and keeps catching up.
    #[error("head {id} stays a learner: {why}; it keeps catching up by itself — make it a voter with `wwctl cluster promote {id}` once `wwctl cluster status` shows it with LAG 0 and MISSING 0 (or run `wwctl --timeout 600 cluster join {id} ADDR` again to wait longer)")]
    NotReady { id: NodeId, why: String },
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
            ClusterError::Membership(_) | ClusterError::NotReady { .. } => ErrorKind::InUse,
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
    /// Racks this head serves now (DHCP can, and it holds their nodes' artifacts), from
    /// its liveness record (None: no liveness record reports to this handle).
    pub racks_served: Option<Vec<String>>,
    /// On the leader: the last log index each other member is known to hold
    /// (openraft's replication metrics); empty elsewhere.
    pub matched: BTreeMap<NodeId, u64>,
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
    /// The applied log index whose catalog these counts reflect.
    pub as_of_index: u64,
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
    /// How those channels connect (mutual TLS with this head's certificate, or plaintext).
    dialer: crate::pki::tls::Dialer,
    started: Instant,
    /// The artifact sync, once the daemon connects it.
    artifacts: std::sync::OnceLock<crate::cas::sync::ArtifactSync>,
    /// The racks this head serves now, once the daemon connects its liveness record.
    racks: std::sync::OnceLock<RacksServed>,
}

/// The racks a head serves now (the daemon passes its liveness record's).
pub type RacksServed = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

impl Cluster {
    pub fn new(
        id: NodeId,
        addr: String,
        raft: Raft,
        sm: StateReader<State>,
        dialer: crate::pki::tls::Dialer,
    ) -> Cluster {
        Cluster {
            inner: Arc::new(Inner {
                id,
                addr,
                raft,
                sm,
                peers: Mutex::default(),
                dialer,
                started: Instant::now(),
                artifacts: std::sync::OnceLock::new(),
                racks: std::sync::OnceLock::new(),
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
    pub async fn submit(&self, mut req: Request, hops: u32, deadline: Instant) -> Result<Written, ClusterError> {
        // Stamped once, by the head the operator reached; a forwarded request keeps it.
        if hops == 0 && req.audit.is_none() {
            if let Ok(who) = OPERATOR.try_with(Clone::clone) {
                req.audit = Some(crate::state::audit::AuditStamp {
                    who,
                    at: crate::state::unix_now(),
                    via: self.inner.id,
                });
            }
        }
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
                            // The head that took the call applies its caller's policy.
                            show_secrets: true,
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

    /// Add head `id` at `addr` as a learner, then (unless `learner_only`) make it a
    /// voter once it has caught up and holds every artifact ([`Cluster::promote_head`],
    /// waiting until `deadline`). A learner that is not ready by then stays a learner
    /// (visible in `wwctl cluster status`) and the error says how to finish.
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
        let known = self.members().into_iter().find(|(m, _)| *m == id).map(|(_, a)| a);
        if let Some(at) = known.as_ref().filter(|at| at.as_str() != addr) {
            return Err(ClusterError::Invalid(format!(
                "head {id} is a member at {at} already; to move it, remove it and join the new head with a new id"
            )));
        }
        let member = known.is_some();
        if !member
            && self
                .inner
                .sm
                .read(|s| s.cluster.removed.contains(&id) || s.cluster.heads.contains_key(&id))
        {
            return Err(ClusterError::Invalid(format!(
                "head id {id} belonged to a head that was removed; ids are never reused (Raft would \
                 take the new head's empty log and votes for the old one's); start the new head \
                 with an unused id and join that"
            )));
        }
        let raft = &self.inner.raft;
        if member && learner_only {
            // Joined already (a repeated `join`, or a hedged copy of this call): no
            // membership entry that could collide with the first call's.
            let m = self.inner.raft.metrics().borrow().membership_config.clone();
            return Ok(Membership {
                log_index: m.log_id().map_or(0, |l| l.index),
                voters: m.membership().voter_ids().collect(),
                learners: m.membership().learner_ids().collect(),
            });
        }
        if member {
            return self.promote_head(id, true, hops, deadline).await;
        }
        // The head at `addr` must be running and be head `id`: a typo in either would
        // otherwise add a learner that never catches up, or another head twice.
        let ask = deadline.saturating_duration_since(Instant::now()).min(PROMOTE_ASK);
        let mut c = self.peer(addr)?;
        let mut req = tonic::Request::new(pb::Empty {});
        req.set_timeout(ask);
        match tokio::time::timeout(ask, c.head_status(req)).await {
            Ok(Ok(st)) if st.get_ref().id == id => {}
            Ok(Ok(st)) => {
                return Err(ClusterError::Invalid(format!(
                    "the head at {addr} is head {}, not {id}; join it as {} or give the right address",
                    st.get_ref().id,
                    st.get_ref().id
                )))
            }
            Ok(Err(e)) => {
                return Err(ClusterError::Remote {
                    kind: ErrorKind::Unavailable,
                    message: format!("head {id} does not answer at {addr} ({}); start it first", e.message()),
                })
            }
            Err(_) => {
                return Err(ClusterError::Remote {
                    kind: ErrorKind::Unavailable,
                    message: format!(
                        "head {id} does not answer at {addr} within {} ms; start it first",
                        ask.as_millis()
                    ),
                })
            }
        }
        // Not blocking: catching up is part of being ready to vote (checked by the
        // promotion, shown as LAG in `cluster status`), so the learner is visible at once.
        let learner = self
            .membership_op(
                hops,
                deadline,
                || async move { raft.add_learner(id, BasicNode { addr: addr.to_string() }, false).await },
                move |mut c, hops, timeout| async move {
                    let mut r = tonic::Request::new(pb::AddHeadRequest {
                        id,
                        addr: addr.to_string(),
                        learner_only: true,
                        hops,
                    });
                    r.set_timeout(timeout);
                    Ok(c.add_head(r).await?.into_inner())
                },
            )
            .await?;
        if learner_only {
            return Ok(learner);
        }
        self.promote_head(id, true, hops, deadline).await
    }

    /// Make learner `id` a voter, on the leader, once the learner reports (gRPC
    /// `HeadStatus`, asked by the leader) that it has applied the leader's log as it
    /// was when asked and lacks no blob the catalog references ([`voter_ready`]). With
    /// `wait`, asks again every [`PROMOTE_POLL`] until shortly before `deadline`;
    /// otherwise refuses at once. A head that is a voter already is left as it is.
    pub async fn promote_head(
        &self,
        id: NodeId,
        wait: bool,
        hops: u32,
        deadline: Instant,
    ) -> Result<Membership, ClusterError> {
        let r = self
            .on_leader(
                Op::Membership,
                hops,
                deadline,
                || self.promote_local(id, wait, deadline),
                move |mut c, hops, timeout| async move {
                    let mut r = tonic::Request::new(pb::PromoteHeadRequest { id, wait, hops });
                    r.set_timeout(timeout);
                    Ok(c.promote_head(r).await?.into_inner())
                },
            )
            .await?;
        Ok(match r {
            forward::Either::Local(m) => m,
            forward::Either::Remote(r, _) => r.into(),
        })
    }

    async fn promote_local(&self, id: NodeId, wait: bool, deadline: Instant) -> forward::Local<Membership> {
        let m = self.inner.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            let node = m
                .current_leader
                .and_then(|l| m.membership_config.membership().get_node(&l).cloned());
            return forward::Local::Forward(m.current_leader, node);
        }
        let mem = m.membership_config.membership();
        let current = || Membership {
            log_index: m.membership_config.log_id().map_or(0, |l| l.index),
            voters: mem.voter_ids().collect(),
            learners: mem.learner_ids().collect(),
        };
        if mem.voter_ids().any(|v| v == id) {
            return forward::Local::Done(Ok(current()));
        }
        let Some(addr) = mem.get_node(&id).map(|n| n.addr.clone()) else {
            return forward::Local::Done(Err(ClusterError::Remote {
                kind: ErrorKind::NotFound,
                message: format!(
                    "head {id} is not a member; add it with `wwctl cluster join {id} ADDR` (see `wwctl cluster status`)"
                ),
            }));
        };
        // Leave time for the membership change itself (and the answer) after the wait.
        let stop_waiting = deadline.checked_sub(PROMOTE_RESERVE).unwrap_or(deadline);
        let mut last_why = String::new();
        loop {
            let target = self.inner.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
            let ask = stop_waiting
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(200), PROMOTE_ASK);
            match voter_ready(self, id, &addr, target, ask).await {
                Ok(()) => break,
                Err(why) => {
                    if why != last_why {
                        tracing::info!(head = id, "learner not made a voter yet: {why}");
                    }
                    if !wait || Instant::now() + PROMOTE_POLL >= stop_waiting {
                        return forward::Local::Done(Err(ClusterError::NotReady { id, why }));
                    }
                    last_why = why;
                    tokio::time::sleep(PROMOTE_POLL).await;
                }
            }
        }
        let raft = &self.inner.raft;
        let promote = || raft.change_membership(ChangeMembers::AddVoterIds([id].into_iter().collect()), false);
        match retry_in_progress(deadline, promote).await {
            Ok(r) => {
                tracing::info!(head = id, "learner made a voter: it has the log and every artifact");
                forward::Local::Done(Ok(Membership::of(&r)))
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                forward::Local::Forward(f.leader_id, f.leader_node)
            }
            Err(e) => forward::Local::Done(Err(write_error(e))),
        }
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
        let removed = self
            .membership_op(
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
            .await?;
        // Out of the membership: forget its address (no head fetches blobs from or
        // probes it any more) and retire the id. Written once the membership change is
        // committed; a repeated `cluster remove` writes it again harmlessly.
        self.submit(Request::with_new_id(Command::HeadRemoved { id }), 0, deadline)
            .await?;
        Ok(removed)
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
                    match retry_in_progress(deadline, &local).await {
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
            forward::Either::Remote(r, _) => r.into(),
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

    /// Report this artifact sync in [`Cluster::head_status`] (once; later calls are
    /// ignored).
    pub fn report_artifacts(&self, sync: crate::cas::sync::ArtifactSync) {
        let _ = self.inner.artifacts.set(sync);
    }

    /// Report the racks this head serves in [`Cluster::head_status`] (once; later calls
    /// are ignored).
    pub fn report_racks(&self, served: RacksServed) {
        let _ = self.inner.racks.set(served);
    }

    /// This head's own view of Raft.
    /// This head's applied index and the digest of its state at that index: heads that
    /// hold the same state at the same index give the same digest.
    pub fn state_digest(&self) -> (u64, String) {
        let (index, bytes) = self
            .inner
            .sm
            .read_with_applied(|s, applied| (applied.map_or(0, |l| l.index), s.canonical_bytes()));
        (index, crate::state::state_digest(&bytes))
    }

    pub fn head_status(&self) -> HeadStatus {
        // Before the metrics: the artifact counts then reflect at least this index.
        let artifacts = self.inner.artifacts.get().map(|sync| {
            let as_of_index = sync.as_of();
            let m = sync.current();
            ArtifactsStatus {
                referenced: m.referenced as u64,
                missing: m.count() as u64,
                missing_bytes: m.known_bytes(),
                missing_unknown_size: m.unknown_sizes() as u64,
                as_of_index,
            }
        });
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
        let matched = match (&m.replication, m.state) {
            (Some(rep), ServerState::Leader) => rep
                .iter()
                .filter(|(id, _)| **id != self.inner.id)
                .map(|(id, l)| (*id, l.map_or(0, |l| l.index)))
                .collect(),
            _ => BTreeMap::new(),
        };
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
            artifacts,
            racks_served: self.inner.racks.get().map(|f| f()),
            matched,
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
                let c = self.inner.dialer.lazy(
                    crate::raft::endpoint(addr)
                        .map_err(|e| ClusterError::Invalid(format!("bad head address {addr:?}: {e}")))?,
                );
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

/// Pause before a membership change is tried again after "a change is in progress".
const IN_PROGRESS_PAUSE: Duration = Duration::from_millis(50);

/// Run a membership change, again while another change is still being committed
/// (openraft allows one at a time: two `join`s, or a hedged copy of one, would
/// otherwise refuse each other), until `deadline`.
async fn retry_in_progress<F, Fut>(
    deadline: Instant,
    change: F,
) -> Result<openraft::raft::ClientWriteResponse<crate::raft::TypeConfig>, WriteErr>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<openraft::raft::ClientWriteResponse<crate::raft::TypeConfig>, WriteErr>>,
{
    loop {
        match change().await {
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                openraft::error::ChangeMembershipError::InProgress(_),
            ))) if Instant::now() + IN_PROGRESS_PAUSE < deadline => tokio::time::sleep(IN_PROGRESS_PAUSE).await,
            r => return r,
        }
    }
}

/// Whether learner `id` at `addr` may vote: it answers its status within `ask`, has
/// applied the log up to `target` (the leader's applied index when asked), its artifact
/// sync has checked the catalog at that index, and it lacks no referenced blob.
/// Otherwise why not, in words for the operator.
async fn voter_ready(cluster: &Cluster, id: NodeId, addr: &str, target: u64, ask: Duration) -> Result<(), String> {
    let mut c = cluster.peer(addr).map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(pb::Empty {});
    req.set_timeout(ask);
    let st = match tokio::time::timeout(ask, c.head_status(req)).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => return Err(format!("it does not answer at {addr}: {}", s.message())),
        Err(_) => return Err(format!("it does not answer at {addr} within {} ms", ask.as_millis())),
    };
    if st.id != id {
        return Err(format!(
            "the head at {addr} says it is head {}, not {id}; remove {id} and join it with its own id",
            st.id
        ));
    }
    if st.applied_index < target {
        return Err(format!(
            "it has applied the log up to entry {} of {target}",
            st.applied_index
        ));
    }
    let Some(a) = st.artifacts else {
        return Err("it does not report its artifacts (a wulfd without the artifact sync)".into());
    };
    if a.as_of_index < target {
        return Err(format!(
            "its artifact sync has not checked the catalog of entry {target} yet"
        ));
    }
    if a.missing > 0 {
        let mib = a.missing_bytes as f64 / (1u64 << 20) as f64;
        let bytes = match a.missing_unknown_size {
            0 => format!("{mib:.1} MiB"),
            u => format!("{mib:.1} MiB + {u} of unknown size"),
        };
        return Err(format!(
            "it still lacks {} of the {} blobs the catalog references ({bytes}); it fetches them from the other heads",
            a.missing, a.referenced
        ));
    }
    Ok(())
}

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

impl From<pb::MembershipReply> for Membership {
    /// A membership change another head made (the call was forwarded to it).
    fn from(r: pb::MembershipReply) -> Membership {
        Membership {
            log_index: r.log_index,
            voters: r.voters,
            learners: r.learners,
        }
    }
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
