//! openraft's RPCs to peers over tonic gRPC, with a deadline on every call and one
//! collapsed log per unreachable peer.
//!
//! - **Deadlines.** openraft gives each RPC a time-to-live in [`RPCOption`] (AppendEntries:
//!   the heartbeat period; Vote: the minimum election timeout; InstallSnapshot:
//!   [`super::settings::INSTALL_SNAPSHOT_TIMEOUT_MS`]) and drops the call at `hard_ttl`. We
//!   give up a little earlier ourselves, so the failure is *ours* to classify and
//!   count, and send the deadline to the peer (`grpc-timeout`) so it stops working on an
//!   answer nobody waits for. A peer that accepts TCP but never answers (SIGSTOP, a frozen
//!   VM) therefore costs one deadline per RPC, not HTTP/2 keep-alive's seconds.
//! - **Error kinds.** A connection failure, or a third missed deadline in a row, is
//!   [`Unreachable`]: openraft then backs off from that peer ([`NetworkClient::backoff`])
//!   instead of retrying at every heartbeat. Fewer missed deadlines are a [`NetworkError`]
//!   (retried at the next heartbeat), because a slow fsync on a healthy peer is normal.
//! - **Logs.** openraft logs every failed replication RPC (WARN and ERROR, several a second
//!   per dead peer); the daemon's default filter silences `openraft::replication` and this
//!   module logs instead, per peer, through an [`OutageLog`]: the first failure, a summary
//!   every [`SUMMARY_EVERY`] while it lasts, and "reachable again after T".

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::Serialize;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

use super::{NodeId, TypeConfig};
use crate::pb::raft as pb;

/// Missed deadlines in a row after which a peer counts as unreachable (openraft backs off).
/// Fewer would back off from a healthy follower during one slow fsync or two.
const MISSED_DEADLINES_UNREACHABLE: u32 = 3;

/// How often a continuing outage of one peer is summarised in the log.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// Creates one [`NetworkClient`] per peer; channels are shared by address, and so is
/// what we know about each peer's reachability (openraft makes a new client per vote and
/// per read check, and one per replication stream).
#[derive(Clone, Default)]
pub struct Network {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    peers: Arc<StdMutex<HashMap<NodeId, PeerHealth>>>,
    /// Mutual TLS with this head's certificate, or plaintext.
    dialer: crate::pki::tls::Dialer,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network").finish_non_exhaustive()
    }
}

impl Network {
    pub fn new(dialer: crate::pki::tls::Dialer) -> Network {
        Network {
            dialer,
            ..Network::default()
        }
    }

    async fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.channels.lock().await;
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let c = self.dialer.lazy(endpoint(addr)?);
        map.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

/// A gRPC endpoint for a head address (`host:port` or a full URL).
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(url)?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5)))
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = NetworkClient;
    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> NetworkClient {
        NetworkClient {
            target,
            node: node.clone(),
            channel: self.channel(&node.addr).await.map_err(|e| e.to_string()),
            peers: self.peers.clone(),
        }
    }
}

/// The connection to one peer.
pub struct NetworkClient {
    target: NodeId,
    node: BasicNode,
    channel: Result<Channel, String>,
    peers: Arc<StdMutex<HashMap<NodeId, PeerHealth>>>,
}

impl std::fmt::Debug for NetworkClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkClient")
            .field("target", &self.target)
            .field("addr", &self.node.addr)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

/// Why one RPC failed, before it is mapped to openraft's error kinds.
enum Failure {
    /// The peer did not answer within the deadline.
    NoAnswer(Duration),
    /// Connection refused/reset, or the peer's gRPC layer failed the call.
    Status(tonic::Status),
}

impl Failure {
    fn reason(&self) -> String {
        match self {
            Failure::NoAnswer(d) => format!("no answer within {} ms", d.as_millis()),
            Failure::Status(s) => status_reason(s),
        }
    }
}

/// A status's message and its causes, e.g. "tcp connect error: Connection refused (os error 111)".
fn status_reason(s: &tonic::Status) -> String {
    let mut out = s.message().to_string();
    let mut cause = std::error::Error::source(s);
    while let Some(c) = cause {
        let text = c.to_string();
        // Transport errors often repeat their inner error's text; print each part once.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// `RUST_LOG` directives for openraft that leave peer RPC failures to this module: without
/// them openraft logs every failed RPC to a down peer at WARN/ERROR (replication stream,
/// progress update), several lines a second for as long as it is down. Storage errors are
/// not lost: the replication stream hands them to openraft's core, which logs them and stops.
pub const OPENRAFT_LOG_DIRECTIVES: &str =
    "openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=error";

/// openraft's core logs a failed RPC to one peer at ERROR as an event with exactly the fields
/// `target`, `error` and `message`: the leadership check behind every linearizable read
/// ("timeout while confirming leadership", once per read while a head is down) and the vote
/// requests of an election. Those failures are logged here, collapsed; a log filter drops
/// these events by this test (their text is not visible to a filter, their fields are).
pub fn is_openraft_peer_rpc_error(meta: &tracing::Metadata<'_>) -> bool {
    if !meta.is_event() || *meta.level() != tracing::Level::ERROR || meta.target() != "openraft::core::raft_core" {
        return false;
    }
    let mut names: Vec<&str> = meta.fields().iter().map(|f| f.name()).collect();
    names.sort_unstable();
    names == ["error", "message", "target"]
}

/// Per-peer state shared by all clients of one peer.
#[derive(Debug, Default)]
struct PeerHealth {
    log: OutageLog,
    missed_deadlines: u32,
}

impl NetworkClient {
    fn client(&self) -> Result<pb::raft_client::RaftClient<Channel>, Unreachable> {
        match &self.channel {
            Ok(c) => Ok(pb::raft_client::RaftClient::new(c.clone()).max_decoding_message_size(usize::MAX)),
            Err(e) => Err(Unreachable::new(&TransportError(format!(
                "bad address {:?} for head {}: {e}",
                self.node.addr, self.target
            )))),
        }
    }

    /// The deadline we hold an RPC to: 9/10 of openraft's `hard_ttl`, so that we, not
    /// openraft's outer timer (started a moment before ours), see the failure and can count
    /// and classify it. Not `soft_ttl` (3/4): AppendEntries' TTL is only the heartbeat
    /// period, and a follower's fsync needs every millisecond of it.
    fn deadline(option: &RPCOption) -> Duration {
        (option.hard_ttl() * 9 / 10).max(Duration::from_millis(1))
    }

    /// Run one RPC under `deadline`, record the outcome for this peer, and decode the answer.
    async fn call<T, E, F>(&self, deadline: Duration, rpc: F) -> Result<T, RpcErr<E>>
    where
        T: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
        F: std::future::Future<Output = Result<tonic::Response<pb::RaftPayload>, tonic::Status>>,
    {
        let res = match tokio::time::timeout(deadline, rpc).await {
            Err(_elapsed) => Err(Failure::NoAnswer(deadline)),
            // The peer enforcing the same deadline (`grpc-timeout`) is the same failure.
            Ok(Err(s)) if s.code() == tonic::Code::DeadlineExceeded => Err(Failure::NoAnswer(deadline)),
            Ok(Err(s)) => Err(Failure::Status(s)),
            Ok(Ok(reply)) => Ok(reply.into_inner()),
        };
        match res {
            Ok(reply) => {
                self.succeeded(Instant::now());
                self.decode(&reply.json)
            }
            Err(f) => Err(self.failed(Instant::now(), f)),
        }
    }

    fn succeeded(&self, now: Instant) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let peer = peers.entry(self.target).or_default();
        peer.missed_deadlines = 0;
        if let Some(line) = peer.log.success(now) {
            self.emit(&line);
        }
    }

    /// Note a failure for this peer, log what the [`OutageLog`] says to log, and return
    /// the openraft error kind (see the module docs).
    fn failed<E: std::error::Error>(&self, now: Instant, failure: Failure) -> RpcErr<E> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let peer = peers.entry(self.target).or_default();
        let reason = failure.reason();
        if let Some(line) = peer.log.failure(now, &reason) {
            self.emit(&line);
        }
        let e = TransportError(format!("head {} at {}: {reason}", self.target, self.node.addr));
        match failure {
            Failure::NoAnswer(_) => {
                peer.missed_deadlines += 1;
                if peer.missed_deadlines >= MISSED_DEADLINES_UNREACHABLE {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            }
            Failure::Status(s) => {
                peer.missed_deadlines = 0;
                match s.code() {
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                        RPCError::Unreachable(Unreachable::new(&e))
                    }
                    _ => RPCError::Network(NetworkError::new(&e)),
                }
            }
        }
    }

    fn emit(&self, line: &OutageLine) {
        let (id, addr) = (self.target, &self.node.addr);
        match line {
            OutageLine::Down { reason, blips } if *blips > 0 => tracing::warn!(
                peer = id, %addr,
                "head {id} at {addr} unreachable: {reason} ({blips} shorter outages since the last message)"
            ),
            OutageLine::Down { reason, .. } => {
                tracing::warn!(peer = id, %addr, "head {id} at {addr} unreachable: {reason}")
            }
            OutageLine::Still {
                lasted,
                failures,
                reason,
            } => tracing::warn!(
                peer = id, %addr,
                "head {id} at {addr} still unreachable for {} s, {failures} failed RPCs (last: {reason})",
                lasted.as_secs()
            ),
            OutageLine::Back { lasted, failures } => tracing::info!(
                peer = id, %addr,
                "head {id} at {addr} reachable again after {}, {failures} failed RPCs",
                human(*lasted)
            ),
        }
    }

    fn decode<T, E>(&self, bytes: &[u8]) -> Result<T, RpcErr<E>>
    where
        T: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let r: Result<T, RaftError<NodeId, E>> =
            serde_json::from_slice(bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

/// `850 ms`, `4.2 s`, `3 min 5 s`.
fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} min {} s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("openraft messages always serialize")
}

/// A request carrying its deadline to the peer (`grpc-timeout`).
fn request<T>(msg: T, deadline: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(deadline);
    r
}

impl RaftNetwork<TypeConfig> for NetworkClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let mut c = self.client()?;
        let d = Self::deadline(&option);
        self.call(d, c.append_entries(request(pb::RaftPayload { json: encode(&rpc) }, d)))
            .await
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let mut c = self.client()?;
        let d = Self::deadline(&option);
        let data = std::mem::take(&mut rpc.data);
        let chunk = pb::SnapshotChunk {
            header_json: encode(&rpc),
            data,
        };
        self.call(d, c.install_snapshot(request(chunk, d))).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        let mut c = self.client()?;
        let d = Self::deadline(&option);
        self.call(d, c.vote(request(pb::RaftPayload { json: encode(&rpc) }, d)))
            .await
    }

    /// After [`Unreachable`]: wait 250 ms, 500 ms, then 1 s between attempts until one
    /// succeeds. A restarted head is found again within a second; a dead one costs one
    /// RPC a second instead of one per heartbeat.
    fn backoff(&self) -> Backoff {
        let steps = [250, 500].into_iter().chain(std::iter::repeat(1000));
        Backoff::new(steps.map(Duration::from_millis))
    }
}

/// One line the transport logs about a peer's reachability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutageLine {
    /// The first failure after the peer was reachable; `blips` counts earlier outages that
    /// were too close to the previous message to get their own line.
    Down { reason: String, blips: u64 },
    /// The outage continues; a summary.
    Still {
        lasted: Duration,
        failures: u64,
        reason: String,
    },
    /// The peer answered again.
    Back { lasted: Duration, failures: u64 },
}

/// Collapses a stream of RPC outcomes to one peer into few log lines: the first failure,
/// then at most one summary per `every` while failures continue, then one "back" line.
/// Rate-limited: an outage that starts within `every / 6` (5 s by default) of the previous
/// Down/Still line is not announced by itself (a flapping peer); it is counted and
/// mentioned in the next line. (Not the whole `every`: a head that died a few seconds
/// after a start-up blip must be reported at once, not half a minute later.)
/// Pure (the caller passes the time), so it is tested without sleeping.
#[derive(Debug)]
pub struct OutageLog {
    every: Duration,
    outage: Option<Outage>,
    last_warn: Option<Instant>,
    blips: u64,
}

#[derive(Debug)]
struct Outage {
    since: Instant,
    failures: u64,
    announced: bool,
}

impl Default for OutageLog {
    fn default() -> Self {
        OutageLog::new(SUMMARY_EVERY)
    }
}

impl OutageLog {
    pub fn new(every: Duration) -> Self {
        OutageLog {
            every,
            outage: None,
            last_warn: None,
            blips: 0,
        }
    }

    fn may_warn(&self, now: Instant, after: Duration) -> bool {
        self.last_warn.is_none_or(|t| now.saturating_duration_since(t) >= after)
    }

    /// An RPC to the peer failed at `now` because of `reason`.
    pub fn failure(&mut self, now: Instant, reason: &str) -> Option<OutageLine> {
        // A new outage may be announced sooner than a summary of a known one.
        let announced = self.outage.as_ref().is_some_and(|o| o.announced);
        let may_warn = self.may_warn(now, if announced { self.every } else { self.every / 6 });
        match &mut self.outage {
            None => {
                self.outage = Some(Outage {
                    since: now,
                    failures: 1,
                    announced: may_warn,
                });
                if !may_warn {
                    return None;
                }
                self.last_warn = Some(now);
                Some(OutageLine::Down {
                    reason: reason.to_string(),
                    blips: std::mem::take(&mut self.blips),
                })
            }
            Some(o) => {
                o.failures += 1;
                if !may_warn {
                    return None;
                }
                self.last_warn = Some(now);
                let line = if o.announced {
                    OutageLine::Still {
                        lasted: now.saturating_duration_since(o.since),
                        failures: o.failures,
                        reason: reason.to_string(),
                    }
                } else {
                    OutageLine::Down {
                        reason: reason.to_string(),
                        blips: std::mem::take(&mut self.blips),
                    }
                };
                o.announced = true;
                Some(line)
            }
        }
    }

    /// An RPC to the peer got an answer at `now`.
    pub fn success(&mut self, now: Instant) -> Option<OutageLine> {
        let o = self.outage.take()?;
        if !o.announced {
            self.blips += 1;
            return None;
        }
        Some(OutageLine::Back {
            lasted: now.saturating_duration_since(o.since),
            failures: o.failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_long_outage_is_one_line_then_one_summary_per_period_then_back() {
        let t0 = Instant::now();
        let mut log = OutageLog::new(Duration::from_secs(30));
        let mut lines = Vec::new();
        // A dead peer: a failed RPC every 100 ms for 65 s, then it answers.
        for i in 0..650u64 {
            if let Some(l) = log.failure(t0 + ms(i * 100), "connection refused") {
                lines.push((i, l));
            }
        }
        lines.extend(log.success(t0 + ms(65_000)).map(|l| (650, l)));
        assert_eq!(
            lines,
            vec![
                (
                    0,
                    OutageLine::Down {
                        reason: "connection refused".into(),
                        blips: 0
                    }
                ),
                (
                    300,
                    OutageLine::Still {
                        lasted: ms(30_000),
                        failures: 301,
                        reason: "connection refused".into()
                    }
                ),
                (
                    600,
                    OutageLine::Still {
                        lasted: ms(60_000),
                        failures: 601,
                        reason: "connection refused".into()
                    }
                ),
                (
                    650,
                    OutageLine::Back {
                        lasted: ms(65_000),
                        failures: 650
                    }
                ),
            ]
        );
    }

    #[test]
    fn successes_while_reachable_log_nothing() {
        let t0 = Instant::now();
        let mut log = OutageLog::new(Duration::from_secs(30));
        for i in 0..100 {
            assert_eq!(log.success(t0 + ms(i * 100)), None);
        }
    }

    #[test]
    fn a_flapping_peer_is_rate_limited_and_its_blips_counted() {
        let t0 = Instant::now();
        let mut log = OutageLog::new(Duration::from_secs(30));
        // Down at 0 s, back at 1 s: two lines.
        assert!(matches!(
            log.failure(t0, "timeout"),
            Some(OutageLine::Down { blips: 0, .. })
        ));
        assert!(matches!(log.success(t0 + ms(1000)), Some(OutageLine::Back { .. })));
        // Four more short outages within the next 5 s: silent.
        for k in 0..4u64 {
            let at = t0 + ms(1500 + k * 800);
            assert_eq!(log.failure(at, "timeout"), None);
            assert_eq!(log.success(at + ms(300)), None);
        }
        // The next outage after the flap window is announced, the silent ones counted.
        assert_eq!(
            log.failure(t0 + ms(5_000), "timeout"),
            Some(OutageLine::Down {
                reason: "timeout".into(),
                blips: 4
            })
        );
    }

    #[test]
    fn an_outage_that_started_silently_is_announced_once_the_period_allows() {
        let t0 = Instant::now();
        let mut log = OutageLog::new(Duration::from_secs(30));
        assert!(log.failure(t0, "refused").is_some());
        assert!(log.success(t0 + ms(100)).is_some());
        // Starts within the flap window (5 s): silent, but it goes on; at 5 s it gets a
        // Down line (not "still", since nothing said it began), and the end is reported.
        assert_eq!(log.failure(t0 + ms(1000), "refused"), None);
        assert_eq!(log.failure(t0 + ms(3000), "refused"), None);
        assert_eq!(
            log.failure(t0 + ms(5000), "refused"),
            Some(OutageLine::Down {
                reason: "refused".into(),
                blips: 0
            })
        );
        // Then summaries only every 30 s.
        assert_eq!(log.failure(t0 + ms(20_000), "refused"), None);
        assert_eq!(
            log.success(t0 + ms(21_000)),
            Some(OutageLine::Back {
                lasted: ms(20_000),
                failures: 4
            })
        );
    }
}
