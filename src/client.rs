//! # Client of the admin API (used by `wwctl`, tests and benchmarks)
//!
//! Holds a list of heads and fails over between them: a head that cannot be
//! reached, or answers `Unavailable` (no leader yet, shutting down), is skipped for
//! the next one until a deadline. Each write carries a fresh request id that stays
//! the same across retries, so a write whose answer was lost (the head died after
//! committing it) is applied once, not twice (see `state::DEDUP_WINDOW`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::api::error::is_retryable;
use crate::pb::admin as pb;
use crate::pb::admin::admin_client::AdminClient;
use crate::state::{Command, Outcome, Query, QueryResult, Request};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no head given; pass --heads, set WW_HEADS or write heads: in the wwctl config")]
    NoHeads,
    #[error("{message}")]
    Refused { code: Code, message: String },
    #[error("no head answered within {secs} s (last error from {head}: {message}); check `wwctl cluster status` and that a majority of heads run")]
    Unavailable { secs: u64, head: String, message: String },
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
    deadline: Duration,
}

impl Client {
    /// `heads`: `host:port` of each head, in order of preference.
    pub fn new(heads: Vec<String>) -> Self {
        let heads = heads
            .into_iter()
            .filter_map(|h| match crate::raft::endpoint(&h) {
                Ok(e) => Some((h, e.connect_lazy())),
                Err(e) => {
                    tracing::warn!("ignoring head {h:?}: {e}");
                    None
                }
            })
            .collect();
        Client {
            heads: Arc::new(heads),
            current: Arc::default(),
            deadline: Duration::from_secs(15),
        }
    }

    /// How long to keep trying heads before giving up.
    pub fn with_deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }

    /// Run `call` against the current head, moving on to the next on transient errors.
    async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(AdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        if self.heads.is_empty() {
            return Err(ClientError::NoHeads);
        }
        let start = Instant::now();
        let mut i = self.current.load(Ordering::Relaxed) % self.heads.len();
        let mut round = 0usize;
        loop {
            let (name, ch) = &self.heads[i];
            let c = AdminClient::new(ch.clone()).max_decoding_message_size(usize::MAX);
            match call(c).await {
                Ok(r) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(r.into_inner());
                }
                Err(s) if is_retryable(&s) => {
                    if start.elapsed() >= self.deadline {
                        return Err(ClientError::Unavailable {
                            secs: self.deadline.as_secs(),
                            head: name.clone(),
                            message: s.message().to_string(),
                        });
                    }
                    i = (i + 1) % self.heads.len();
                    round += 1;
                    if round.is_multiple_of(self.heads.len()) {
                        // Every head tried: an election is probably running; back off a little.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Err(s) => {
                    return Err(ClientError::Refused {
                        code: s.code(),
                        message: s.message().to_string(),
                    })
                }
            }
        }
    }

    /// Apply a command through Raft (exactly once, even across retries).
    pub async fn write(&self, cmd: Command) -> Result<Written, ClientError> {
        let req = Request {
            id: Some(request_id()),
            cmd,
        };
        let body = serde_json::to_vec(&req)?;
        let r = self
            .retry(|mut c| {
                let body = body.clone();
                async move {
                    c.write(pb::WriteRequest {
                        command_json: body,
                        hops: 0,
                    })
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
        let r = self
            .retry(|mut c| {
                let body = body.clone();
                async move {
                    c.read(pb::ReadRequest {
                        query_json: body,
                        linearizable,
                        hops: 0,
                    })
                    .await
                }
            })
            .await?;
        Ok(serde_json::from_slice(&r.result_json)?)
    }

    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusReply, ClientError> {
        self.retry(|mut c| async move { c.cluster_status(pb::Empty {}).await })
            .await
    }

    pub async fn add_head(&self, id: u64, addr: &str, learner_only: bool) -> Result<pb::MembershipReply, ClientError> {
        let addr = addr.to_string();
        self.retry(|mut c| {
            let addr = addr.clone();
            async move {
                c.add_head(pb::AddHeadRequest {
                    id,
                    addr,
                    learner_only,
                    hops: 0,
                })
                .await
            }
        })
        .await
    }

    pub async fn remove_head(&self, id: u64) -> Result<pb::MembershipReply, ClientError> {
        self.retry(|mut c| async move { c.remove_head(pb::RemoveHeadRequest { id, hops: 0 }).await })
            .await
    }
}

impl Client {
    /// Start an import on the first head that answers; the stream carries progress
    /// and ends with the catalog entry (or an error). The work runs on that head.
    pub async fn image_import(
        &self,
        req: pb::ImageImportRequest,
    ) -> Result<tonic::Streaming<pb::ImageEvent>, ClientError> {
        self.retry(|mut c| {
            let req = req.clone();
            async move { c.image_import(req).await }
        })
        .await
    }

    pub async fn image_build(&self, name: &str, force: bool) -> Result<tonic::Streaming<pb::ImageEvent>, ClientError> {
        let name = name.to_string();
        self.retry(|mut c| {
            let name = name.clone();
            async move { c.image_build(pb::ImageBuildRequest { name, force }).await }
        })
        .await
    }

    pub async fn image_kernels(&self, name: &str) -> Result<pb::ImageKernelsReply, ClientError> {
        let name = name.to_string();
        self.retry(|mut c| {
            let name = name.clone();
            async move { c.image_kernels(pb::ImageNameRequest { name }).await }
        })
        .await
    }

    pub async fn image_exec_prepare(&self, name: &str) -> Result<pb::ImageExecPrepareReply, ClientError> {
        let name = name.to_string();
        self.retry(|mut c| {
            let name = name.clone();
            async move { c.image_exec_prepare(pb::ImageNameRequest { name }).await }
        })
        .await
    }

    /// Boot status of every node, merged over all heads by last-seen time.
    pub async fn node_status(&self) -> Result<(Vec<crate::api::HeadNodeStatus>, Vec<u64>), ClientError> {
        let r = self
            .retry(|mut c| async move { c.node_status(pb::NodeStatusRequest { all_heads: true }).await })
            .await?;
        Ok((serde_json::from_slice(&r.json)?, r.unreachable))
    }

    pub async fn image_exec_finish(
        &self,
        req: pb::ImageExecFinishRequest,
    ) -> Result<tonic::Streaming<pb::ImageEvent>, ClientError> {
        self.retry(|mut c| {
            let req = req.clone();
            async move { c.image_exec_finish(req).await }
        })
        .await
    }
}

/// A request id unique enough across clients: time, process and a counter.
fn request_id() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}-{:x}-{:x}",
        nanos,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
