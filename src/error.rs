//! # One error classification
//!
//! Every module has its own `thiserror` enum with the context an operator needs. What a
//! *caller* needs is smaller: may I retry elsewhere, was my input wrong, is the object
//! missing, taken, changed under me, still used, or is the cluster out of something?
//! That is [`ErrorKind`]. Each module's error says its kind ([`Classify`]), and this
//! module is the one place a kind becomes a transport code: gRPC today
//! ([`ErrorKind::grpc`], [`status`]), HTTP for a later REST adapter ([`ErrorKind::http`]).
//! The reverse mapping ([`ErrorKind::from_grpc`]) is what clients and forwarding heads use
//! to decide whether to try another head.
//!
//! ## How errors are displayed
//! An error's message says what was wrong and what to do. Library errors usually embed
//! their cause's message (`"cannot read {path}: {cause}"`), so that a message logged
//! alone is complete; binaries add context with `anyhow`. Printing both the message
//! and its `source()` chain would then repeat causes — which `wulfd` and `wwctl` did.
//! So binaries print errors only through [`report`]: the top message, then each cause
//! in the chain *whose text the line does not already contain*. Every cause appears
//! exactly once, whichever style the error that carries it uses.

use tonic::{Code, Status};

/// What kind of failure an error is, for callers that must act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    /// The request is malformed or breaks a rule; retrying it unchanged cannot help.
    Invalid,
    /// A named object does not exist.
    NotFound,
    /// The object to create exists already.
    Exists,
    /// The object changed since it was read, or another operation holds it.
    Conflict,
    /// The object is still referenced (or otherwise not in a state to allow this).
    InUse,
    /// A finite resource (addresses of a pool, ...) is used up.
    Exhausted,
    /// Nothing wrong with the request: this head cannot serve it now (no leader, no
    /// majority, still starting, shutting down, a peer did not answer). Another head,
    /// or the same one shortly, may succeed; writes are safe to retry (request ids).
    Unavailable,
    /// A bug or a local fault (disk, corrupted data) that the caller cannot fix.
    Internal,
    /// The caller showed no valid credential (no client certificate from the cluster CA,
    /// or a revoked one).
    Unauthenticated,
    /// The caller's credential does not allow this (a `read` credential writing).
    Forbidden,
}

impl ErrorKind {
    /// The gRPC code of this kind.
    pub fn grpc(self) -> Code {
        match self {
            ErrorKind::Invalid => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::Exists => Code::AlreadyExists,
            ErrorKind::Conflict => Code::Aborted,
            ErrorKind::InUse => Code::FailedPrecondition,
            ErrorKind::Exhausted => Code::ResourceExhausted,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::Internal => Code::Internal,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::Forbidden => Code::PermissionDenied,
        }
    }

    /// The kind of a gRPC status a peer or head sent. Transport failures (a cut
    /// connection is `Unknown` in tonic, a missed deadline `DeadlineExceeded`) are
    /// `Unavailable`: the call may be retried on another head.
    pub fn from_grpc(code: Code) -> ErrorKind {
        match code {
            Code::InvalidArgument | Code::OutOfRange | Code::Unimplemented => ErrorKind::Invalid,
            Code::NotFound => ErrorKind::NotFound,
            Code::AlreadyExists => ErrorKind::Exists,
            Code::Aborted => ErrorKind::Conflict,
            Code::FailedPrecondition => ErrorKind::InUse,
            Code::ResourceExhausted => ErrorKind::Exhausted,
            Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown => ErrorKind::Unavailable,
            Code::Unauthenticated => ErrorKind::Unauthenticated,
            Code::PermissionDenied => ErrorKind::Forbidden,
            Code::Ok | Code::Internal | Code::DataLoss => ErrorKind::Internal,
        }
    }

    /// The HTTP status code of this kind (for a REST adapter).
    pub fn http(self) -> u16 {
        match self {
            ErrorKind::Invalid => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Exists | ErrorKind::Conflict | ErrorKind::InUse => 409,
            ErrorKind::Exhausted => 507,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::Forbidden => 403,
        }
    }

    /// Whether a caller should try again (another head, or shortly).
    pub fn is_retryable(self) -> bool {
        self == ErrorKind::Unavailable
    }
}

/// An error that knows its [`ErrorKind`].
pub trait Classify: std::fmt::Display {
    fn kind(&self) -> ErrorKind;
}

/// The gRPC status of a classified error: its kind's code and its complete message.
pub fn status<E: Classify + ?Sized>(e: &E) -> Status {
    Status::new(e.kind().grpc(), e.to_string())
}

/// Whether a status a head sent (or the transport made up) is worth retrying elsewhere.
pub fn is_retryable(s: &Status) -> bool {
    ErrorKind::from_grpc(s.code()).is_retryable()
}

/// An error and its causes on one line, each cause once (see the module doc).
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("disk full")]
        Full,
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        /// Embeds its cause's text and exposes it as source (thiserror's `source` field).
        #[error("cannot write /x: {source}")]
        Embeds { source: Inner },
        /// Only exposes it.
        #[error("cannot write /y")]
        Chains { source: Inner },
    }

    #[test]
    fn report_prints_every_cause_once() {
        assert_eq!(
            report(&Outer::Embeds { source: Inner::Full }),
            "cannot write /x: disk full"
        );
        assert_eq!(
            report(&Outer::Chains { source: Inner::Full }),
            "cannot write /y: disk full"
        );
        let a = anyhow::Error::new(Outer::Embeds { source: Inner::Full }).context("import failed");
        assert_eq!(report(a.as_ref()), "import failed: cannot write /x: disk full");
    }

    const ALL: [ErrorKind; 8] = [
        ErrorKind::Invalid,
        ErrorKind::NotFound,
        ErrorKind::Exists,
        ErrorKind::Conflict,
        ErrorKind::InUse,
        ErrorKind::Exhausted,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];

    #[test]
    fn every_kind_survives_a_trip_through_grpc() {
        for k in ALL {
            assert_eq!(ErrorKind::from_grpc(k.grpc()), k, "{k:?}");
        }
    }

    #[test]
    fn only_unavailable_and_transport_failures_are_retried() {
        let retried: Vec<ErrorKind> = ALL.into_iter().filter(|k| k.is_retryable()).collect();
        assert_eq!(retried, vec![ErrorKind::Unavailable]);
        for c in [
            Code::Unknown,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Unavailable,
        ] {
            assert!(is_retryable(&Status::new(c, "x")), "{c:?}");
        }
        assert!(!is_retryable(&Status::new(Code::InvalidArgument, "x")));
    }

    #[test]
    fn http_codes_are_distinct_where_a_client_acts_differently() {
        assert_eq!(ErrorKind::NotFound.http(), 404);
        assert_eq!(ErrorKind::Unavailable.http(), 503);
        assert_eq!(ErrorKind::Invalid.http(), 400);
    }
}
