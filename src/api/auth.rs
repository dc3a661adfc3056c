//! Who may call what: the per-call check in front of the gRPC services, and the two
//! calls that hand out certificates.
//!
//! The TLS handshake has already verified the client's certificate against the cluster
//! CA (or the client showed none: allowed at the handshake only so that a joining head
//! can enrol). Here, on every call, before any service sees it: the method's required
//! role ([`needed_role`]) against the role the certificate names, and the certificate's
//! serial against the revocations in this head's replicated state, so a revocation
//! holds on every head as soon as it is applied, for connections already open too.
//! Plaintext heads (`insecure: true`) have no such layer: everyone may do everything.

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tonic::codegen::http;
use tonic::{Response, Status};

use super::Services;
use crate::error::{status, Classify, ErrorKind};
use crate::pb::admin as pb;
use crate::pki::tls::PeerInfo;
use crate::pki::{Ca, Identity, Role};
use crate::state::{AccessCommand, Command, Request, State};
use crate::store::StateReader;

/// What a call needs: `None` for the calls anyone with a TLS connection may make.
pub fn needed_role(path: &str) -> Option<Role> {
    // Raft, and what heads fetch from each other over HTTP/2 on this port (blobs:
    // every image and overlay tree of the cluster; liveness probes).
    if path.starts_with("/wulfpack.raft.v1.Raft/") || is_peer_route(path) {
        return Some(Role::Head);
    }
    let method = path.strip_prefix("/wulfpack.admin.v1.Admin/").unwrap_or("");
    match method {
        "Enroll" => None,
        "Read" | "HeadStatus" | "ClusterStatus" | "StateDigest" | "ImageKernels" | "NodeStatus" | "OverlayList"
        | "OverlayFile" | "OverlayRender" => Some(Role::Read),
        // Writes, membership, image and overlay work, credentials, and any call added
        // later until it is named above: admin.
        _ => Some(Role::Admin),
    }
}

/// The plain HTTP routes of the gRPC port (`cas::http`, `boot::liveness`): refused with
/// an HTTP status, not a gRPC one, since their clients read the status line.
fn is_peer_route(path: &str) -> bool {
    path.starts_with("/blob/") || path == "/health"
}

/// Why a call is refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no client certificate: {what} needs a credential of this cluster (see docs/OPERATIONS.md, \"Certificates and credentials\": `wwctl --cert NAME.crt`)")]
    NoCertificate { what: String },
    #[error("the credential of {who} (serial {serial}) was revoked; ask an admin for a new one (`wwctl cluster credentials add`)")]
    Revoked { who: String, serial: String },
    #[error("{who} may not call {what}: it needs the {need} role")]
    Forbidden { who: String, what: String, need: Role },
    #[error("this head has no CA key ({0}); ask a head that has one (every founding head does)")]
    NoCa(String),
    #[error("{0}")]
    Invalid(String),
    /// This head failed at something that is not the caller's doing (a task, the disk).
    #[error("{0}")]
    Internal(String),
}

impl Classify for AuthError {
    fn kind(&self) -> ErrorKind {
        match self {
            AuthError::NoCertificate { .. } | AuthError::Revoked { .. } => ErrorKind::Unauthenticated,
            AuthError::Forbidden { .. } => ErrorKind::Forbidden,
            AuthError::NoCa(_) => ErrorKind::Unavailable,
            AuthError::Invalid(_) => ErrorKind::Invalid,
            AuthError::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// Decide one call.
pub fn decide(path: &str, who: Option<&Identity>, state: Option<&State>) -> Result<(), AuthError> {
    let what = path.rsplit('/').next().unwrap_or(path).to_string();
    let Some(need) = needed_role(path) else {
        return Ok(());
    };
    let Some(id) = who else {
        return Err(AuthError::NoCertificate { what });
    };
    if state.is_some_and(|s| s.access.is_revoked(&id.serial)) {
        return Err(AuthError::Revoked {
            who: id.to_string(),
            serial: id.serial.clone(),
        });
    }
    if !id.role.allows(need) {
        return Err(AuthError::Forbidden {
            who: id.to_string(),
            what,
            need,
        });
    }
    Ok(())
}

/// The tower layer that runs [`decide`] on every call of a TLS server (`enabled`; a
/// plaintext head lets everything through). `state` is set once the head has opened its
/// store (until then the services answer "starting").
#[derive(Clone, Debug)]
pub struct AuthLayer {
    pub enabled: bool,
    pub state: Arc<OnceLock<StateReader<State>>>,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            enabled: self.enabled,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    enabled: bool,
    state: Arc<OnceLock<StateReader<State>>>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<S::Future, std::future::Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if !self.enabled {
            return futures::future::Either::Left(self.inner.call(req));
        }
        let who = req.extensions().get::<PeerInfo>().and_then(|p| p.identity.as_ref());
        let verdict = match self.state.get() {
            Some(sm) => sm.read(|s| decide(req.uri().path(), who, Some(s))),
            None => decide(req.uri().path(), who, None),
        };
        match verdict {
            Ok(()) => futures::future::Either::Left(self.inner.call(req)),
            Err(e) => {
                refused(&req, &e);
                let answer = if is_peer_route(req.uri().path()) {
                    let mut r = http::Response::new(RB::default());
                    *r.status_mut() =
                        http::StatusCode::from_u16(e.kind().http()).unwrap_or(http::StatusCode::FORBIDDEN);
                    r
                } else {
                    status(&e).into_http()
                };
                futures::future::Either::Right(std::future::ready(Ok(answer)))
            }
        }
    }
}

/// Refusals leave a trace, at most one line per 10 s with a count.
fn refused<B>(req: &http::Request<B>, e: &AuthError) {
    static EVERY: crate::logging::Every = crate::logging::Every::new(std::time::Duration::from_secs(10));
    if let Some(n) = EVERY.tick() {
        let from = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.remote)
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::warn!(%from, refused_since_last_report = n, "call refused: {e}");
    }
}

/// Who made a call, for the audit log: the verified certificate's name and role when
/// there is one; the name `wwctl` claims and the address otherwise.
pub fn operator_of(ext: &http::Extensions, claimed: &str, remote: Option<std::net::SocketAddr>) -> String {
    match ext.get::<PeerInfo>() {
        Some(PeerInfo {
            identity: Some(id),
            remote,
        }) => match remote {
            Some(a) => format!("{} ({}; {claimed} from {})", id.name, id.role, a.ip()),
            None => format!("{} ({}; {claimed})", id.name, id.role),
        },
        _ => match remote {
            Some(a) => format!("{claimed} (unauthenticated, from {})", a.ip()),
            None => format!("{claimed} (unauthenticated)"),
        },
    }
}

/// The role of the verified certificate of a call (None: no TLS, or no certificate).
pub fn caller_role(ext: &http::Extensions) -> Option<Role> {
    ext.get::<PeerInfo>().and_then(|p| p.identity.as_ref()).map(|i| i.role)
}

/// Secrets in a read answer that did not ask for them (`--show-secrets`, honoured for
/// admins only): BMC passwords of nodes and profiles, blanked to
/// [`crate::state::SECRET_MASK`] so it shows that one is set (and written back, means
/// "unchanged"). SSH host keys are never in a read answer.
pub fn hide_secrets(r: &mut crate::state::QueryResult) {
    for v in r.nodes.values_mut().chain(r.profiles.values_mut()) {
        if let Some(p) = v.value.ipmi.as_mut().and_then(|i| i.password.as_mut()) {
            *p = crate::state::SECRET_MASK.into();
        }
    }
}

fn ca(s: &Services) -> Result<&Arc<Ca>, Status> {
    s.ca.as_ref().ok_or_else(|| {
        status(&AuthError::NoCa(
            "it runs without tls, or its tls.dir has no ca.key".into(),
        ))
    })
}

/// A joining head: use its token (through Raft: once, cluster-wide), then issue its
/// certificate and hand it the CA.
pub(super) async fn enroll(
    s: &Services,
    r: pb::EnrollRequest,
    deadline: std::time::Instant,
) -> Result<Response<pb::EnrollReply>, Status> {
    let ca = ca(s)?;
    if r.head_id == 0 {
        return Err(status(&AuthError::Invalid("head id must be 1 or more".into())));
    }
    if s.cluster.state().read(|st| st.cluster.removed.contains(&r.head_id)) {
        return Err(status(&AuthError::Invalid(format!(
            "head id {} was removed from this cluster and is never reused; give the new head another id",
            r.head_id
        ))));
    }
    let use_token = Command::Access(AccessCommand::UseToken {
        id: r.token_id.to_ascii_lowercase(),
        secret_hash: crate::pki::sha256_hex(r.secret.to_ascii_lowercase().as_bytes()),
        head: r.head_id,
        now: crate::state::unix_now(),
    });
    let stamp = format!("head {} (enrolment with a join token)", r.head_id);
    crate::cluster::OPERATOR
        .scope(stamp, s.cluster.submit(Request::with_new_id(use_token), 0, deadline))
        .await
        .map_err(|e| status(&e))?;
    let issued = ca
        .issue(&format!("head-{}", r.head_id), Role::Head, crate::pki::HEAD_DAYS)
        .map_err(|e| Status::internal(e.to_string()))?;
    tracing::info!(head = r.head_id, serial = %issued.serial, "enrolled a joining head");
    Ok(Response::new(pb::EnrollReply {
        ca_cert: ca.cert_pem.clone(),
        ca_key: ca.key_pem(),
        cert: issued.cert_pem,
        key: issued.key_pem,
    }))
}

/// A new operator credential: issued here, recorded through Raft (so that it can be
/// listed and revoked by name), returned once. The key is not kept by the head.
pub(super) async fn issue_credential(
    s: &Services,
    who: String,
    r: pb::IssueCredentialRequest,
    deadline: std::time::Instant,
) -> Result<Response<pb::IssueCredentialReply>, Status> {
    let ca = ca(s)?;
    let role: Role = r
        .role
        .parse()
        .map_err(|e: crate::pki::PkiError| status(&AuthError::Invalid(e.to_string())))?;
    if role == Role::Head {
        return Err(status(&AuthError::Invalid(
            "heads get certificates by joining (`wwctl cluster token create`), not as credentials".into(),
        )));
    }
    crate::pki::check_name(&r.name).map_err(|e| status(&AuthError::Invalid(e.to_string())))?;
    let days = if r.days == 0 {
        crate::pki::OPERATOR_DAYS
    } else {
        i64::from(r.days.min(3650))
    };
    let issued = ca
        .issue(&r.name, role, days)
        .map_err(|e| Status::internal(e.to_string()))?;
    let add = Command::Access(AccessCommand::AddCredential {
        name: r.name.clone(),
        role,
        serial: issued.serial.clone(),
        now: crate::state::unix_now(),
    });
    crate::cluster::OPERATOR
        .scope(who, s.cluster.submit(Request::with_new_id(add), 0, deadline))
        .await
        .map_err(|e| status(&e))?;
    Ok(Response::new(pb::IssueCredentialReply {
        ca_cert: ca.cert_pem.clone(),
        cert: issued.cert_pem,
        key: issued.key_pem,
        serial: issued.serial,
    }))
}

/// `wwctl cluster rotate`, on this head: a new key and certificate from the CA, live.
pub(super) async fn rotate_certificate(
    s: &Services,
    who: String,
) -> Result<Response<pb::RotateCertificateReply>, Status> {
    let ca = ca(s)?.clone();
    let cert = s.boot.tls.as_ref().map(|t| t.cert.clone()).ok_or_else(|| {
        status(&AuthError::Invalid(
            "this head runs without TLS (insecure: true): it has no certificate to rotate".into(),
        ))
    })?;
    let id = cert.id;
    let r = tokio::task::spawn_blocking(move || cert.rotate(&ca))
        .await
        .map_err(|e| status(&AuthError::Internal(format!("rotation task: {e}"))))?
        .map_err(|e| status(&AuthError::Internal(format!("rotating head-{id}'s certificate: {e}"))))?;
    tracing::info!(
        by = %who,
        old_serial = %r.old_serial,
        new_serial = %r.new_serial,
        "certificate rotated: new connections use the new one"
    );
    Ok(Response::new(pb::RotateCertificateReply {
        head_id: id,
        old_serial: r.old_serial,
        new_serial: r.new_serial,
        not_after: r.not_after,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(role: Role) -> Identity {
        Identity {
            name: "x".into(),
            role,
            serial: "1f".into(),
        }
    }

    #[test]
    fn each_role_may_do_what_it_names_and_no_more() {
        let w = "/wulfpack.admin.v1.Admin/Write";
        let r = "/wulfpack.admin.v1.Admin/Read";
        let raft = "/wulfpack.raft.v1.Raft/AppendEntries";
        assert!(decide(r, Some(&id(Role::Read)), None).is_ok());
        assert!(matches!(
            decide(w, Some(&id(Role::Read)), None),
            Err(AuthError::Forbidden { .. })
        ));
        assert!(decide(w, Some(&id(Role::Admin)), None).is_ok());
        assert!(matches!(
            decide(raft, Some(&id(Role::Admin)), None),
            Err(AuthError::Forbidden { .. })
        ));
        assert!(decide(raft, Some(&id(Role::Head)), None).is_ok());
        assert!(matches!(decide(r, None, None), Err(AuthError::NoCertificate { .. })));
        assert!(decide("/wulfpack.admin.v1.Admin/Enroll", None, None).is_ok());
        // A method nobody listed needs admin.
        assert_eq!(needed_role("/wulfpack.admin.v1.Admin/SomethingNew"), Some(Role::Admin));
        assert_eq!(needed_role("/other.Service/X"), Some(Role::Admin));
    }

    #[test]
    fn blobs_and_probes_are_for_heads_only() {
        let blob = "/blob/sha256:00";
        for path in [blob, "/health"] {
            assert!(decide(path, Some(&id(Role::Head)), None).is_ok(), "{path}");
            assert!(matches!(
                decide(path, Some(&id(Role::Admin)), None),
                Err(AuthError::Forbidden { .. })
            ));
            assert!(matches!(decide(path, None, None), Err(AuthError::NoCertificate { .. })));
        }
        // Only those paths: a longer one is not a probe.
        assert!(is_peer_route("/health") && !is_peer_route("/healthz") && !is_peer_route("/blobs"));
    }

    #[test]
    fn a_revoked_serial_is_refused_whatever_its_role() {
        let mut s = State::default();
        s.access.revoked.insert("1f".into());
        let e = decide("/wulfpack.admin.v1.Admin/Read", Some(&id(Role::Head)), Some(&s)).unwrap_err();
        assert!(matches!(e, AuthError::Revoked { .. }), "{e}");
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    }
}
