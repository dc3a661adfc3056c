//! # Raft wiring: type config, tonic transport, settings
//!
//! openraft (stable 0.9 line) drives consensus; this module only plugs it into the
//! rest of wulfpack:
//! - [`TypeConfig`] binds openraft to [`crate::state::Request`] / [`crate::state::ApplyResult`].
//! - [`Network`] sends openraft's RPCs to peers over tonic gRPC ([`RaftService`] receives
//!   them). openraft's messages are serde types, so they travel as JSON inside a
//!   protobuf envelope; snapshot chunk bytes travel raw.
//! - [`RaftSettings`] holds the timing knobs with defaults chosen for a rack LAN and
//!   the failover goal (writes accepted again ≤ 2 s after the leader dies). openraft
//!   0.9 lets a follower that knew a leader start an election only after the leader
//!   lease (= `election_timeout_max`) *plus* a random election timeout, i.e. after
//!   `max + rand(min..max)` of silence. Heartbeat 100 ms and timeouts 400–800 ms give
//!   1.2–1.6 s; measured in docs/PERFORMANCE.md.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::pb::raft as pb;
use crate::state::{ApplyResult, Request, State};
use crate::store::StateMachineCore;

openraft::declare_raft_types!(
    /// openraft types of wulfpack: commands are [`Request`]s, answers [`ApplyResult`]s.
    pub TypeConfig:
        D = Request,
        R = ApplyResult,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;

impl StateMachineCore for State {
    type Request = Request;
    type Response = ApplyResult;
    fn apply(&mut self, index: u64, req: &Request) -> ApplyResult {
        State::apply(self, index, req)
    }
    fn rebuilt(&mut self) {
        self.rebuild_index()
    }
}

/// Raft timing, configurable per head in `wulfd.yaml` (`raft:` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSettings {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log before it) after this many applied entries.
    pub snapshot_after_logs: u64,
    /// Log entries kept behind a snapshot, so a briefly lagging head catches up from
    /// the log instead of receiving the whole snapshot.
    pub keep_logs_after_snapshot: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_after_logs: 5000,
            keep_logs_after_snapshot: 500,
        }
    }
}

impl RaftSettings {
    /// openraft's config, validated.
    pub fn to_config(&self, cluster_name: &str) -> Result<openraft::Config, openraft::ConfigError> {
        openraft::Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_after_logs),
            max_in_snapshot_log_to_keep: self.keep_logs_after_snapshot,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
    }
}

/// Creates one [`NetworkClient`] per peer; channels are shared by address.
#[derive(Clone, Default)]
pub struct Network {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Network {
    async fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.channels.lock().await;
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let c = endpoint(addr)?.connect_lazy();
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
        }
    }
}

/// The connection to one peer.
pub struct NetworkClient {
    target: NodeId,
    node: BasicNode,
    channel: Result<Channel, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

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

    /// Map a gRPC failure: connection problems make openraft back off, others retry.
    fn status_err<E: std::error::Error>(&self, s: tonic::Status) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        let e = TransportError(format!("head {} at {}: {}", self.target, self.node.addr, s.message()));
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            _ => RPCError::Network(NetworkError::new(&e)),
        }
    }

    fn decode<T, E>(&self, bytes: &[u8]) -> Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        T: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let r: Result<T, RaftError<NodeId, E>> =
            serde_json::from_slice(bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("openraft messages always serialize")
}

impl RaftNetwork<TypeConfig> for NetworkClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let mut c = self.client()?;
        let reply = c
            .append_entries(pb::RaftPayload { json: encode(&rpc) })
            .await
            .map_err(|s| self.status_err(s))?;
        self.decode(&reply.into_inner().json)
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let mut c = self.client()?;
        let data = std::mem::take(&mut rpc.data);
        let reply = c
            .install_snapshot(pb::SnapshotChunk {
                header_json: encode(&rpc),
                data,
            })
            .await
            .map_err(|s| self.status_err(s))?;
        self.decode(&reply.into_inner().json)
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, _option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        let mut c = self.client()?;
        let reply = c
            .vote(pb::RaftPayload { json: encode(&rpc) })
            .await
            .map_err(|s| self.status_err(s))?;
        self.decode(&reply.into_inner().json)
    }
}

/// Receives openraft RPCs from peers and hands them to the local [`Raft`].
#[derive(Clone)]
pub struct RaftService {
    pub raft: Raft,
}

fn bad_request(e: serde_json::Error) -> tonic::Status {
    tonic::Status::invalid_argument(format!("undecodable raft message: {e}"))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: tonic::Request<pb::RaftPayload>,
    ) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> =
            serde_json::from_slice(&req.into_inner().json).map_err(bad_request)?;
        let r = self.raft.append_entries(rpc).await;
        Ok(tonic::Response::new(pb::RaftPayload { json: encode(&r) }))
    }

    async fn vote(
        &self,
        req: tonic::Request<pb::RaftPayload>,
    ) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
        let rpc: VoteRequest<NodeId> = serde_json::from_slice(&req.into_inner().json).map_err(bad_request)?;
        let r = self.raft.vote(rpc).await;
        Ok(tonic::Response::new(pb::RaftPayload { json: encode(&r) }))
    }

    async fn install_snapshot(
        &self,
        req: tonic::Request<pb::SnapshotChunk>,
    ) -> Result<tonic::Response<pb::RaftPayload>, tonic::Status> {
        let chunk = req.into_inner();
        let mut rpc: InstallSnapshotRequest<TypeConfig> =
            serde_json::from_slice(&chunk.header_json).map_err(bad_request)?;
        rpc.data = chunk.data;
        let r = self.raft.install_snapshot(rpc).await;
        Ok(tonic::Response::new(pb::RaftPayload { json: encode(&r) }))
    }
}
