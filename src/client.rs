//! # Client of the admin API (used by `wwctl`, tests and benchmarks)
//!
//! Holds a list of heads and fails over between them. A call goes to the head that
//! answered last; if it has not answered within [`HEDGE_AFTER`], the same call also
//! goes to the next head, and so on: the first answer wins. So a head that accepts TCP
//! but never answers (a stopped process, a frozen VM) costs a fraction of a second,
//! though `wwctl` remembers nothing between runs. A head that answers `Unavailable`
//! (no leader, no majority, starting) is skipped at once for the next.
//!
//! Sending one write to two heads is safe: each write carries a request id that stays
//! the same across heads and retries, and the state machine applies an id once and
//! answers repeats with the first outcome (see `state::DEDUP_WINDOW`).
//!
//! Deadlines: every call ends by its deadline ([`Client::with_deadline`], per call) and
//! by the client's overall end ([`Client::until`], what `wwctl --timeout` sets for the
//! whole command). Each attempt tells the head how long is left (`grpc-timeout`), so the
//! head stops forwarding or waiting for a majority at the same moment.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::error::{is_retryable, ErrorKind};
use crate::pb::admin as pb;
use crate::pb::admin::admin_client::AdminClient;
use crate::state::{Command, Outcome, Query, QueryResult, Request};

/// A call not answered within this goes to the next head as well.
pub const HEDGE_AFTER: Duration = Duration::from_millis(400);
/// Streaming calls (image operations) are not sent twice: an attempt that has not
/// started streaming within this is abandoned for the next head.
const STREAM_ATTEMPT: Duration = Duration::from_secs(2);
/// Pause after every head refused a call (an election is probably running).
const ROUND_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no head given; pass --heads, set WW_HEADS or write heads: in the wwctl config")]
    NoHeads,
    #[error("{message}")]
    Refused { code: Code, message: String },
    #[error("no head answered within {secs:.1} s (last error from {head}: {message}); check `wwctl cluster status` and that a majority of heads run")]
    Unavailable { secs: f64, head: String, message: String },
    #[error("head sent an undecodable answer: {0}")]
    Decode(#[from] serde_json::Error),
}

impl ClientError {
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl crate::error::Classify for ClientError {
    fn kind(&self) -> ErrorKind {
        match self {
            ClientError::NoHeads => ErrorKind::Invalid,
            ClientError::Refused { code, .. } => ErrorKind::from_grpc(*code),
            ClientError::Unavailable { .. } => ErrorKind::Unavailable,
            ClientError::Decode(_) => ErrorKind::Internal,
        }
    }
}

/// A written command's result.
#[derive(Debug, Clone)]
pub struct Written {
    pub outcome: Outcome,
    pub log_index: u64,
}

/// Admin API client over a list of heads.
#[derive(Clone)]
pub struct Client {
    heads: Arc<Vec<(String, Channel)>>,
    /// Index of the head that answered last; tried first next time.
    current: Arc<AtomicUsize>,
    per_call: Duration,
    until: Option<Instant>,
    /// How channels connect (kept for [`Client::one`]).
    dialer: crate::pki::tls::Dialer,
    /// Ask for BMC passwords in clear (`wwctl --show-secrets`; heads honour it for
    /// admins only).
    show_secrets: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let heads: Vec<&str> = self.heads.iter().map(|(h, _)| h.as_str()).collect();
        f.debug_struct("Client").field("heads", &heads).finish_non_exhaustive()
    }
}

/// How a call may be spread over heads.
#[derive(Clone, Copy, PartialEq)]
enum Spread {
    /// Idempotent (reads, writes with request ids): a slow head gets company.
    Hedged,
    /// Not to be started twice (streams): a slow head is abandoned for the next.
    OneAtATime,
    /// Long work that another head would only repeat (`overlay build`): one head at a
    /// time, each given all the time left; the next only after a refusal.
    Whole,
}

impl Client {
    /// `heads`: `host:port` of each head, in order of preference; plaintext (heads
    /// with `insecure: true`).
    pub fn new(heads: Vec<String>) -> Self {
        Client::with_dialer(heads, &crate::pki::tls::Dialer::plain())
    }

    /// Like [`Client::new`], connecting as `dialer` says (mutual TLS with a credential).
    pub fn with_dialer(heads: Vec<String>, dialer: &crate::pki::tls::Dialer) -> Self {
        let heads = heads
            .into_iter()
            .filter_map(|h| match crate::raft::endpoint(&h) {
                Ok(e) => Some((h, dialer.lazy(e))),
                Err(e) => {
                    tracing::warn!("ignoring head {h:?}: {e}");
                    None
                }
            })
            .collect();
        Client {
            heads: Arc::new(heads),
            current: Arc::default(),
            per_call: Duration::from_secs(15),
            until: None,
            dialer: dialer.clone(),
            show_secrets: false,
        }
    }

    /// A client of the head at `addr` alone, connecting the same way, with the same
    /// per-call deadline and no end of its own: the caller bounds it (`cluster verify`
    /// gives each round's asks what is left of the command, at least 200 ms, so a head
    /// that answers is shown as answering even in the last round).
    pub fn one(&self, addr: &str) -> Client {
        Client {
            per_call: self.per_call,
            show_secrets: self.show_secrets,
            ..Client::with_dialer(vec![addr.to_string()], &self.dialer)
        }
    }

    /// How long one call may take, over all heads and retries.
    pub fn with_deadline(mut self, d: Duration) -> Self {
        self.per_call = d;
        self
    }

    /// Ask for secrets in clear on reads (admins only; see `api::auth::hide_secrets`).
    pub fn showing_secrets(mut self, show: bool) -> Self {
        self.show_secrets = show;
        self
    }

    /// No call of this client runs past `end` (a whole `wwctl` command's budget).
    pub fn until(mut self, end: Instant) -> Self {
        self.until = Some(end);
        self
    }

    fn deadline(&self) -> Instant {
        let d = Instant::now() + self.per_call;
        self.until.map_or(d, |u| u.min(d))
    }

    /// Run `call` on the heads until one answers or the deadline passes (see the
    /// module doc). `call` gets the time left, to send as the call's own deadline.
    async fn retry<T, F, Fut>(&self, spread: Spread, call: F) -> Result<T, ClientError>
    where
        F: Fn(AdminClient<Channel>, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let n = self.heads.len();
        if n == 0 {
            return Err(ClientError::NoHeads);
        }
        let begun = Instant::now();
        let deadline = self.deadline();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut started = 0usize;
        let mut attempts = FuturesUnordered::new();
        let mut next_start = Instant::now();
        let mut last: Option<(usize, Status)> = None;
        let give_up = |last: Option<(usize, Status)>| {
            let (head, message) = match last {
                Some((i, s)) => (self.heads[i].0.clone(), s.message().to_string()),
                None => (self.heads[first].0.clone(), "no answer".to_string()),
            };
            ClientError::Unavailable {
                secs: begun.elapsed().as_secs_f64(),
                head,
                message,
            }
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(give_up(last));
            }
            if now >= next_start && (attempts.is_empty() || spread == Spread::Hedged) {
                let i = (first + started) % n;
                started += 1;
                let left = deadline - now;
                let budget = match spread {
                    Spread::Hedged | Spread::Whole => left,
                    Spread::OneAtATime => left.min(STREAM_ATTEMPT),
                };
                let c = AdminClient::new(self.heads[i].1.clone()).max_decoding_message_size(usize::MAX);
                let fut = call(c, budget);
                attempts.push(async move {
                    let r = match tokio::time::timeout(budget, fut).await {
                        Ok(r) => r,
                        Err(_) => Err(Status::deadline_exceeded(format!(
                            "no answer within {:.1} s",
                            budget.as_secs_f64()
                        ))),
                    };
                    (i, r)
                });
                // After a whole round of refusals, pause before the next round.
                next_start = if started.is_multiple_of(n) {
                    Instant::now() + ROUND_PAUSE.max(HEDGE_AFTER)
                } else {
                    Instant::now() + HEDGE_AFTER
                };
            }
            let wake = if attempts.is_empty() || spread == Spread::Hedged {
                next_start.min(deadline)
            } else {
                deadline
            };
            tokio::select! {
                Some((i, r)) = attempts.next(), if !attempts.is_empty() => match r {
                    Ok(r) => {
                        self.current.store(i, Ordering::Relaxed);
                        return Ok(r.into_inner());
                    }
                    Err(s) if is_retryable(&s) => {
                        tracing::debug!(head = %self.heads[i].0, "{}", s.message());
                        // A head's own answer ("no majority…") says more than a
                        // missed deadline of another head: keep it for the report.
                        let silent = matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled);
                        if !silent || last.as_ref().is_none_or(|(_, l)| matches!(l.code(), Code::DeadlineExceeded | Code::Cancelled)) {
                            last = Some((i, s));
                        }
                        // Move on at once, unless a whole round has just failed.
                        if attempts.is_empty() && !started.is_multiple_of(n) {
                            next_start = Instant::now();
                        } else if attempts.is_empty() {
                            next_start = next_start.min(Instant::now() + ROUND_PAUSE);
                        }
                    }
                    Err(s) => {
                        return Err(ClientError::Refused {
                            code: s.code(),
                            message: s.message().to_string(),
                        })
                    }
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// Apply a command through Raft (exactly once, even across retries and heads).
    pub async fn write(&self, cmd: Command) -> Result<Written, ClientError> {
        let body = serde_json::to_vec(&Request::with_new_id(cmd))?;
        let r = self
            .retry(Spread::Hedged, |mut c, t| {
                let body = body.clone();
                async move {
                    c.write(timed(
                        pb::WriteRequest {
                            command_json: body,
                            hops: 0,
                        },
                        t,
                    ))
                    .await
                }
            })
            .await?;
        Ok(Written {
            outcome: serde_json::from_slice(&r.result_json)?,
            log_index: r.log_index,
        })
    }

    /// Read nodes/profiles; `linearizable` confirms with a quorum of heads first.
    pub async fn read(&self, q: &Query, linearizable: bool) -> Result<QueryResult, ClientError> {
        let body = serde_json::to_vec(q)?;
        let show_secrets = self.show_secrets;
        let r = self
            .retry(Spread::Hedged, |mut c, t| {
                let body = body.clone();
                async move {
                    c.read(timed(
                        pb::ReadRequest {
                            query_json: body,
                            linearizable,
                            hops: 0,
                            show_secrets,
                        },
                        t,
                    ))
                    .await
                }
            })
            .await?;
        Ok(serde_json::from_slice(&r.result_json)?)
    }

    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusReply, ClientError> {
        self.retry(Spread::Hedged, |mut c, t| async move {
            c.cluster_status(timed(pb::Empty {}, t)).await
        })
        .await
    }

    /// The first head that answers: its applied index and state digest (ask a client of
    /// one head to learn that head's).
    pub async fn state_digest(&self) -> Result<pb::StateDigestReply, ClientError> {
        self.retry(Spread::OneAtATime, |mut c, t| async move {
            c.state_digest(timed(pb::Empty {}, t)).await
        })
        .await
    }

    /// A new operator credential from the first head that answers (not retried on
    /// another head once one answered: each would issue a different certificate).
    pub async fn issue_credential(
        &self,
        name: &str,
        role: &str,
        days: u32,
    ) -> Result<pb::IssueCredentialReply, ClientError> {
        self.retry(Spread::OneAtATime, |mut c, t| {
            let (name, role) = (name.to_string(), role.to_string());
            async move {
                c.issue_credential(timed(pb::IssueCredentialRequest { name, role, days }, t))
                    .await
            }
        })
        .await
    }

    /// A new certificate for the head this client names (use [`Client::one`]): the head
    /// answers with its old and new serial.
    pub async fn rotate_certificate(&self) -> Result<pb::RotateCertificateReply, ClientError> {
        self.retry(Spread::Whole, |mut c, t| async move {
            c.rotate_certificate(timed(pb::Empty {}, t)).await
        })
        .await
    }

    pub async fn add_head(&self, id: u64, addr: &str, learner_only: bool) -> Result<pb::MembershipReply, ClientError> {
        self.retry(Spread::Hedged, |mut c, t| {
            let addr = addr.to_string();
            async move {
                c.add_head(timed(
                    pb::AddHeadRequest {
                        id,
                        addr,
                        learner_only,
                        hops: 0,
                    },
                    t,
                ))
                .await
            }
        })
        .await
    }

    /// Make learner `id` a voter once it has the log and every artifact; with `wait`,
    /// the leader asks again until this call's deadline.
    pub async fn promote_head(&self, id: u64, wait: bool) -> Result<pb::MembershipReply, ClientError> {
        self.retry(Spread::Hedged, |mut c, t| async move {
            c.promote_head(timed(pb::PromoteHeadRequest { id, wait, hops: 0 }, t))
                .await
        })
        .await
    }

    /// When this client's calls end at the latest (`wwctl --timeout`), if bounded.
    pub fn ends_at(&self) -> Option<Instant> {
        self.until
    }

    pub async fn remove_head(&self, id: u64) -> Result<pb::MembershipReply, ClientError> {
        self.retry(Spread::Hedged, |mut c, t| async move {
            c.remove_head(timed(pb::RemoveHeadRequest { id, hops: 0 }, t)).await
        })
        .await
    }

    /// Boot status of every node, merged over all heads by last-seen time (with
    /// `history`: every recent event of every head, by node and time), and the heads
    /// that did not answer.
    pub async fn node_status(
        &self,
        history: bool,
    ) -> Result<(Vec<crate::boot::status::HeadNodeStatus>, Vec<u64>), ClientError> {
        let r = self
            .retry(Spread::Hedged, |mut c, t| async move {
                c.node_status(timed(
                    pb::NodeStatusRequest {
                        all_heads: true,
                        history,
                    },
                    t,
                ))
                .await
            })
            .await?;
        Ok((serde_json::from_slice(&r.json)?, r.unreachable))
    }

    /// Overlays with their file counts (and paths, with `files`), and the requested
    /// names that do not exist.
    pub async fn overlay_list(&self, names: &[String], files: bool) -> Result<pb::OverlayListReply, ClientError> {
        self.retry(Spread::Hedged, |mut c, t| {
            let names = names.to_vec();
            async move { c.overlay_list(timed(pb::OverlayListRequest { names, files }, t)).await }
        })
        .await
    }

    /// One path of an overlay, with the catalog version read.
    pub async fn overlay_file(&self, name: &str, path: &str) -> Result<pb::OverlayFileReply, ClientError> {
        self.retry(Spread::Hedged, |mut c, t| {
            let (name, path) = (name.to_string(), path.to_string());
            async move { c.overlay_file(timed(pb::OverlayFileRequest { name, path }, t)).await }
        })
        .await
    }

    /// Render one template of an overlay for a node, on the head that answers.
    pub async fn overlay_render(
        &self,
        name: &str,
        path: &str,
        node: &str,
    ) -> Result<Vec<pb::RenderedFile>, ClientError> {
        let r = self
            .retry(Spread::Hedged, |mut c, t| {
                let (name, path, node) = (name.to_string(), path.to_string(), node.to_string());
                async move {
                    c.overlay_render(timed(pb::OverlayRenderRequest { name, path, node }, t))
                        .await
                }
            })
            .await?;
        Ok(r.files)
    }

    /// Build nodes' overlays (all when `nodes` is empty) into one head's cache. Not
    /// hedged: a second head would only build the same again.
    pub async fn overlay_build(&self, nodes: Vec<String>) -> Result<pb::OverlayBuildReply, ClientError> {
        self.retry(Spread::Whole, |mut c, t| {
            let nodes = nodes.clone();
            async move { c.overlay_build(timed(pb::OverlayBuildRequest { nodes }, t)).await }
        })
        .await
    }

    /// A node's system and runtime overlay archives, rendered by one head.
    pub async fn overlay_archives(&self, node: &str) -> Result<pb::OverlayArchivesReply, ClientError> {
        self.retry(Spread::Whole, |mut c, t| {
            let node = node.to_owned();
            async move { c.overlay_archives(timed(pb::OverlayArchivesRequest { node }, t)).await }
        })
        .await
    }

    /// IPMI power or sensors for nodes (see `crate::power`). Not hedged, and no
    /// second head once one has taken it: a power cycle must run once.
    pub async fn power(&self, req: pb::PowerRequest) -> Result<pb::PowerReply, ClientError> {
        self.retry(Spread::Whole, |mut c, t| {
            let req = req.clone();
            async move { c.power(timed(req, t)).await }
        })
        .await
    }

    /// `wwctl clean` on the first head that answers (a client of one head: that head).
    /// Not hedged: two heads would answer for two stores.
    pub async fn clean(&self, dry_run: bool, min_age_secs: u64) -> Result<pb::CleanReply, ClientError> {
        self.retry(Spread::Whole, |mut c, t| async move {
            c.clean(timed(pb::CleanRequest { dry_run, min_age_secs }, t)).await
        })
        .await
    }

    /// The boot services check of the first head that answers (`wwctl configure`).
    pub async fn boot_services(&self) -> Result<pb::BootServicesReply, ClientError> {
        self.retry(Spread::Whole, |mut c, t| async move {
            c.boot_services(timed(pb::Empty {}, t)).await
        })
        .await
    }

    /// Create, delete or change an overlay. Runs on one head at a time (the head does
    /// a read-modify-write); the request id makes a retry on another head apply once.
    pub async fn overlay_change(
        &self,
        mut req: pb::OverlayChangeRequest,
    ) -> Result<pb::OverlayChangeReply, ClientError> {
        if req.request_id.is_empty() {
            req.request_id = Request::new_id();
        }
        self.retry(Spread::OneAtATime, |mut c, t| {
            let req = req.clone();
            async move { c.overlay_change(timed(req, t)).await }
        })
        .await
    }

    pub async fn image_kernels(&self, name: &str) -> Result<pb::ImageKernelsReply, ClientError> {
        self.retry(Spread::Hedged, |mut c, t| {
            let name = name.to_string();
            async move { c.image_kernels(timed(pb::ImageNameRequest { name }, t)).await }
        })
        .await
    }

    /// Start an import on the first head that answers; the stream carries progress
    /// and ends with the catalog entry (or an error). The work runs on that head, and
    /// the stream is not bound by the call's deadline (imports take minutes).
    pub async fn image_import(
        &self,
        req: pb::ImageImportRequest,
    ) -> Result<tonic::Streaming<pb::ImageEvent>, ClientError> {
        self.retry(Spread::OneAtATime, |mut c, _| {
            let req = req.clone();
            async move { c.image_import(req).await }
        })
        .await
    }

    pub async fn image_build(&self, name: &str, force: bool) -> Result<tonic::Streaming<pb::ImageEvent>, ClientError> {
        self.retry(Spread::OneAtATime, |mut c, _| {
            let name = name.to_string();
            async move { c.image_build(pb::ImageBuildRequest { name, force }).await }
        })
        .await
    }

    pub async fn image_syncuser(
        &self,
        req: pb::ImageSyncuserRequest,
    ) -> Result<tonic::Streaming<pb::ImageEvent>, ClientError> {
        self.retry(Spread::OneAtATime, |mut c, _| {
            let req = req.clone();
            async move { c.image_syncuser(req).await }
        })
        .await
    }

    pub async fn image_exec_prepare(&self, name: &str) -> Result<pb::ImageExecPrepareReply, ClientError> {
        self.retry(Spread::OneAtATime, |mut c, t| {
            let name = name.to_string();
            async move { c.image_exec_prepare(timed(pb::ImageNameRequest { name }, t)).await }
        })
        .await
    }

    pub async fn image_exec_finish(
        &self,
        req: pb::ImageExecFinishRequest,
    ) -> Result<tonic::Streaming<pb::ImageEvent>, ClientError> {
        self.retry(Spread::OneAtATime, |mut c, _| {
            let req = req.clone();
            async move { c.image_exec_finish(req).await }
        })
        .await
    }
}

/// A request that tells the head how long the caller waits, and who calls (for the
/// audit log: `USER@HOST` as this process sees it).
fn timed<T>(msg: T, t: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(t);
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(caller()) {
        r.metadata_mut().insert(crate::api::OPERATOR_HEADER, v);
    }
    r
}

/// `USER@HOST` of this process (`SUDO_USER` first: the person behind `sudo wwctl`).
fn caller() -> &'static str {
    static CALLER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CALLER.get_or_init(|| {
        let user = ["SUDO_USER", "USER", "LOGNAME"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| "unknown".into());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let who: String = format!("{user}@{host}")
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        who
    })
}
