//! Leader forwarding with deadlines: the one loop that writes, linearizable reads and
//! membership changes share.
//!
//! A call first runs locally. If this head is not the leader, openraft names the
//! leader it knows, and the call is made on that head's admin API with what is left
//! of the deadline. The forward is raced against a change of leader in this head's
//! Raft metrics, so a hung leader costs one election, not a keep-alive timeout: once
//! the followers have elected a new leader, the pending forward is dropped and the
//! call (same request id for writes) goes to the new one. A dead leader refuses the
//! connection at once; the loop then waits for the election in short steps.

use std::fmt;
use std::time::{Duration, Instant};

use openraft::BasicNode;
use tonic::transport::Channel;

use super::{Cluster, ClusterError, MAX_HOPS};
use crate::error::{Classify, ErrorKind};
use crate::pb::admin::admin_client::AdminClient;
use crate::raft::NodeId;

/// Pause between attempts while no leader is known or the leader refused the connection.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What a call was doing, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Write,
    Read,
    Membership,
}

impl Op {
    /// What an operator should know when this kind of call timed out.
    pub(super) fn advice(self) -> &'static str {
        match self {
            Op::Write => {
                "the write may still be applied when a majority of heads is reachable again; check with `wwctl cluster status` and read it back before repeating it"
            }
            Op::Read => "check `wwctl cluster status`: a majority of heads must run and reach each other",
            Op::Membership => {
                "the change may still be applied when a majority is reachable again; check `wwctl cluster status`"
            }
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Write => "write",
            Op::Read => "read",
            Op::Membership => "membership change",
        })
    }
}

/// The local attempt's result: done here, or go to the leader openraft named.
pub(super) enum Local<T> {
    Done(Result<T, ClusterError>),
    Forward(Option<NodeId>, Option<BasicNode>),
}

/// Where the answer came from: this head, or the head at the given address.
pub(super) enum Either<T, R> {
    Local(T),
    Remote(R, String),
}

impl Cluster {
    /// Run `local` here; when this head is not the leader, run `remote` on the leader
    /// (with the hop count and the time left), until `deadline`.
    pub(super) async fn on_leader<T, R, L, LF, RC, RF>(
        &self,
        op: Op,
        hops: u32,
        deadline: Instant,
        local: L,
        remote: RC,
    ) -> Result<Either<T, R>, ClusterError>
    where
        L: Fn() -> LF,
        LF: std::future::Future<Output = Local<T>>,
        RC: Fn(AdminClient<Channel>, u32, Duration) -> RF,
        RF: std::future::Future<Output = Result<R, tonic::Status>>,
    {
        let start = Instant::now();
        let mut last: Option<ClusterError> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(last.unwrap_or(ClusterError::NoLeader));
            }
            let attempt = match tokio::time::timeout(left, local()).await {
                Ok(a) => a,
                // The local call did not finish: this head leads (or believes it does)
                // but no majority confirms.
                Err(_) => {
                    return Err(ClusterError::NoMajority {
                        op,
                        secs: start.elapsed().as_secs_f64(),
                    })
                }
            };
            let (leader_id, node) = match attempt {
                Local::Done(Err(ClusterError::NoMajority { op, .. })) => {
                    return Err(ClusterError::NoMajority {
                        op,
                        secs: start.elapsed().as_secs_f64(),
                    })
                }
                Local::Done(r) => return r.map(Either::Local),
                Local::Forward(id, node) => (id, node),
            };
            let target = node.filter(|n| n.addr != self.inner.addr && hops < MAX_HOPS);
            let Some(node) = target else {
                if hops >= MAX_HOPS {
                    return Err(ClusterError::NoLeader);
                }
                last = Some(ClusterError::NoLeader);
                self.leader_change(leader_id, left.min(RETRY_PAUSE)).await;
                continue;
            };
            let client = self.peer(&node.addr)?;
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::select! {
                r = tokio::time::timeout(left, remote(client, hops + 1, left)) => match r {
                    Ok(Ok(v)) => return Ok(Either::Remote(v, node.addr)),
                    Ok(Err(s)) => {
                        let e = ClusterError::from_status(&s);
                        if !e.kind().is_retryable() {
                            return Err(e);
                        }
                        tracing::debug!(leader = %node.addr, "forwarded {op} not taken: {e}");
                        last = Some(e);
                        self.leader_change(leader_id, left.min(RETRY_PAUSE)).await;
                    }
                    Err(_) => {
                        return Err(last.unwrap_or(ClusterError::Remote {
                            kind: ErrorKind::Unavailable,
                            message: format!(
                                "the leader (head {} at {}) did not answer the {op} within {:.1} s; {}",
                                leader_id.unwrap_or(0),
                                node.addr,
                                start.elapsed().as_secs_f64(),
                                op.advice()
                            ),
                        }))
                    }
                },
                // A new leader was elected (the old one may hang): go there instead.
                _ = self.leader_change(leader_id, left) => {
                    tracing::debug!(old = ?leader_id, "leader changed while a {op} was forwarded; retrying on the new leader");
                }
            }
        }
    }

    /// Resolves when this head knows a leader other than `old`, or after `at_most`.
    async fn leader_change(&self, old: Option<NodeId>, at_most: Duration) {
        let mut m = self.inner.raft.metrics();
        let changed = m.wait_for(|m| m.current_leader.is_some() && m.current_leader != old);
        let _ = tokio::time::timeout(at_most, changed).await;
    }
}

/// The deadline a gRPC caller set (`grpc-timeout` header, as tonic's
/// `Request::set_timeout` sends it), if any.
pub fn grpc_deadline(meta: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(v: &str) -> tonic::metadata::MetadataMap {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("grpc-timeout", v.parse().unwrap());
        m
    }

    #[test]
    fn grpc_timeout_header_is_read_in_every_unit() {
        assert_eq!(grpc_deadline(&meta("1500m")), Some(Duration::from_millis(1500)));
        assert_eq!(grpc_deadline(&meta("3S")), Some(Duration::from_secs(3)));
        assert_eq!(grpc_deadline(&meta("2M")), Some(Duration::from_secs(120)));
        assert_eq!(grpc_deadline(&meta("7u")), Some(Duration::from_micros(7)));
        assert_eq!(grpc_deadline(&meta("x")), None);
        assert_eq!(grpc_deadline(&meta("123456789S")), None, "at most 8 digits");
        assert_eq!(grpc_deadline(&tonic::metadata::MetadataMap::new()), None);
    }
}
