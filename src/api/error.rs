//! The one place where domain errors become gRPC statuses (and back, for `wwctl`).
//!
//! Codes are chosen so a client can act without parsing messages:
//! `Unavailable` means "try another head / retry shortly" (no leader, head
//! shutting down); every other code is final and its message is for the operator.

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::BasicNode;
use tonic::{Code, Status};

use crate::state::CommandError;

/// Map a refused command to a status.
pub fn command_status(e: &CommandError) -> Status {
    let code = match e {
        CommandError::Exists { .. } => Code::AlreadyExists,
        CommandError::NotFound { .. } => Code::NotFound,
        CommandError::Conflict { .. } => Code::Aborted,
        CommandError::InUse { .. } => Code::FailedPrecondition,
        CommandError::Invalid(_) => Code::InvalidArgument,
        CommandError::PoolExhausted { .. } => Code::ResourceExhausted,
    };
    Status::new(code, e.to_string())
}

/// Map a Raft failure that is not a redirect (those are handled by forwarding).
pub fn write_status(e: &RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            Status::unavailable("no leader is elected right now; retrying against another head usually helps")
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Status::failed_precondition(format!("membership change refused: {e}"))
        }
        RaftError::Fatal(f) => Status::unavailable(format!("this head's Raft stopped ({f}); use another head")),
    }
}

pub fn read_status(e: &RaftError<u64, CheckIsLeaderError<u64, BasicNode>>) -> Status {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)) => {
            Status::unavailable("no leader is elected right now; retry shortly")
        }
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => Status::unavailable(format!(
            "the leader cannot reach a majority of heads ({q}); check `wwctl cluster status`"
        )),
        RaftError::Fatal(f) => Status::unavailable(format!("this head's Raft stopped ({f}); use another head")),
    }
}

/// Whether a client should retry the call on another head.
pub fn is_retryable(s: &Status) -> bool {
    // Unknown is what tonic reports for a connection cut mid-call (the head died);
    // retrying is safe because writes carry request ids (exactly once).
    matches!(
        s.code(),
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown
    )
}

pub fn bad_json(what: &str, e: serde_json::Error) -> Status {
    Status::invalid_argument(format!("malformed {what}: {e}"))
}

/// Map an image operation's failure.
pub fn image_status(e: &crate::image::ImageError) -> Status {
    use crate::client::ClientError;
    use crate::image::ImageError as E;
    let code = match e {
        E::Exists(_) => Code::AlreadyExists,
        E::NotFound(_) => Code::NotFound,
        E::Busy(_) => Code::Aborted,
        E::Invalid(_) | E::Layer(_) | E::Oci(_) => Code::InvalidArgument,
        E::Kernel(_) | E::Build(_) => Code::FailedPrecondition,
        E::Catalog(ClientError::Refused { code, .. }) => *code,
        E::Catalog(_) => Code::Unavailable,
        E::Cas(_) | E::Io { .. } => Code::Internal,
    };
    Status::new(code, e.to_string())
}
