//! # Raft wiring: type config, tonic transport, settings
//!
//! openraft (stable 0.9 line) drives consensus; this module only plugs it into the
//! rest of wulfpack:
//! - [`TypeConfig`] binds openraft to [`crate::state::Request`] / [`crate::state::ApplyResult`].
//! - [`Network`] sends openraft's RPCs to peers over tonic gRPC ([`RaftService`] receives
//!   them). openraft's messages are serde types, so they travel as JSON inside a
//!   protobuf envelope; snapshot chunk bytes travel raw.
//!   Every RPC has a deadline; unreachable peers are logged collapsed (see [`network`]).
//! - [`RaftSettings`] holds the timing knobs with defaults chosen for a rack LAN, the
//!   failover goal (writes accepted again ≤ 2 s after the leader dies) and no elections
//!   on a healthy cluster; how openraft uses them is in [`settings`], the measurements in
//!   docs/DECISIONS.md ("Raft timing") and docs/PERFORMANCE.md.

use std::io::Cursor;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::BasicNode;
use serde::Serialize;

use crate::pb::raft as pb;
use crate::state::{ApplyResult, Request, State};
use crate::store::StateMachineCore;

pub mod network;
pub mod settings;

pub use network::{
    endpoint, is_openraft_peer_rpc_error, Network, NetworkClient, OutageLine, OutageLog, OPENRAFT_LOG_DIRECTIVES,
    SUMMARY_EVERY,
};
pub use settings::{RaftSettings, INSTALL_SNAPSHOT_TIMEOUT_MS};

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

/// Receives openraft RPCs from peers and hands them to the local [`Raft`].
#[derive(Clone)]
pub struct RaftService {
    pub raft: Raft,
}

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService").finish_non_exhaustive()
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("openraft messages always serialize")
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
