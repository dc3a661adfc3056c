//! A head's certificates: loaded from `tls.dir`, or obtained once by enrolling with a
//! join token; checked before anything serves (a head with another head's directory, or
//! with an operator's certificate, would be refused by every peer anyway — better to say
//! so at start).

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;

use super::config::TlsSettings;
use super::DaemonError;
use crate::pb::admin as pb;
use crate::pki::tls::{live_client_config, live_server_config, pinned_client_config, Dialer, LiveCert};
use crate::pki::{
    first_cert_der, identity_of, load_ca, write_file, Ca, CredFiles, HeadCert, Identity, JoinToken, Role,
};

/// How long a joining head keeps trying the heads it enrols with (they may be starting).
const ENROL_FOR: Duration = Duration::from_secs(120);
/// Deadline of one enrolment call.
const ENROL_CALL: Duration = Duration::from_secs(10);

/// What the gRPC server and this head's own calls to peers use.
pub struct HeadTls {
    pub server: Arc<ServerConfig>,
    pub dialer: Dialer,
    /// The certificate both use, rotatable (`wwctl cluster rotate`).
    pub cert: Arc<HeadCert>,
    /// The CA with its key (to enrol heads and issue credentials), when `ca.key` is here.
    pub ca: Option<Arc<Ca>>,
    pub identity: Identity,
    /// What `wwctl configure tls` reports.
    pub facts: crate::api::TlsFacts,
}

impl std::fmt::Debug for HeadTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadTls")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn pki_err(dir: &std::path::Path) -> impl Fn(crate::pki::PkiError) -> DaemonError + '_ {
    move |e| DaemonError::Invalid(format!("tls.dir {}: {e}", dir.display()))
}

impl HeadTls {
    /// Load this head's certificates, enrolling first when there are none and a join
    /// token is configured.
    pub async fn prepare(t: &TlsSettings, id: u64) -> Result<HeadTls, DaemonError> {
        // A rotation cut short by a crash: complete it (or drop a half-staged pair).
        if crate::pki::finish_rotation(&t.dir).map_err(pki_err(&t.dir))? {
            tracing::info!(dir = %t.dir.display(), "installed the certificate of a rotation interrupted by a stop");
        }
        let files = CredFiles::head(&t.dir);
        if !files.exist() {
            match &t.join {
                Some((token, via)) => enroll(t, token, via, id).await?,
                None => {
                    return Err(DaemonError::Invalid(format!(
                        "tls.dir {} holds no certificates (ca.crt, head.crt, head.key). A founding head: \
                         copy head-{id}/ made by `wwctl cluster pki init` there. A joining head: set \
                         tls.join_token and tls.join_via. A demo without credentials: insecure: true",
                        t.dir.display()
                    )))
                }
            }
        }
        let err = pki_err(&t.dir);
        let (ca_pem, cert, key) = files.read().map_err(&err)?;
        let ca = ca_pem.as_str();
        let identity = identity_of(&first_cert_der(&cert).map_err(&err)?).map_err(&err)?;
        let me = format!("head-{id}");
        if identity.role != Role::Head || identity.name != me {
            return Err(DaemonError::Invalid(format!(
                "tls.dir {}: head.crt is the certificate of {identity}, but this is {me}; copy the head-{id}/ \
                 directory of `wwctl cluster pki init`, not another",
                t.dir.display()
            )));
        }
        let live = LiveCert::new(ca, &cert, &key).map_err(&err)?;
        let server = live_server_config(ca, live.clone()).map_err(&err)?;
        let dialer = Dialer::tls(live_client_config(ca, live.clone()).map_err(&err)?);
        let head_cert = Arc::new(HeadCert {
            dir: t.dir.clone(),
            id,
            ca_pem: ca_pem.clone(),
            live,
        });
        let ca = if crate::pki::ca_key_path(&t.dir).exists() {
            Some(Arc::new(load_ca(&t.dir).map_err(&err)?))
        } else {
            tracing::warn!(
                dir = %t.dir.display(),
                "no ca.key: this head cannot enrol joining heads or issue credentials (other heads can)"
            );
            None
        };
        let facts = crate::api::TlsFacts {
            dir: t.dir.clone(),
            cert: head_cert.clone(),
            ca_fingerprint: crate::pki::fingerprint_pem(&ca_pem).map_err(&err)?,
            ca_key: ca.is_some(),
        };
        Ok(HeadTls {
            server,
            dialer,
            cert: head_cert,
            ca,
            identity,
            facts,
        })
    }
}

/// Why the TLS handshake under `e` refused the server's certificate, if it did (the
/// verifier's error travels as an `io::Error` inside hyper's and tonic's errors).
fn certificate_refusal(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let refused = |e: &(dyn std::error::Error + 'static)| match e.downcast_ref::<rustls::Error>() {
        Some(r @ (rustls::Error::General(_) | rustls::Error::InvalidCertificate(_))) => Some(r.to_string()),
        _ => None,
    };
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(why) = refused(err) {
            return Some(why);
        }
        // io::Error's source() skips the error it wraps; look at that one too.
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            if let Some(why) = refused(inner) {
                return Some(why);
            }
        }
        cur = err.source();
    }
    None
}

/// Ask the heads in `via` for this head's certificate with `token`, checking that each
/// is a head of the CA the token pins before the secret is sent; write what comes back.
async fn enroll(t: &TlsSettings, token: &JoinToken, via: &[String], id: u64) -> Result<(), DaemonError> {
    let config = pinned_client_config(&token.ca).map_err(pki_err(&t.dir))?;
    let dialer = Dialer::tls(config);
    let until = tokio::time::Instant::now() + ENROL_FOR;
    let mut last = String::new();
    while tokio::time::Instant::now() < until {
        for addr in via {
            let endpoint = match crate::raft::endpoint(addr) {
                Ok(e) => e,
                Err(e) => return Err(DaemonError::Invalid(format!("tls.join_via: {addr:?}: {e}"))),
            };
            let mut c = pb::admin_client::AdminClient::new(dialer.lazy(endpoint));
            let mut req = tonic::Request::new(pb::EnrollRequest {
                token_id: token.id.clone(),
                secret: token.secret.clone(),
                head_id: id,
            });
            req.set_timeout(ENROL_CALL);
            match tokio::time::timeout(ENROL_CALL, c.enroll(req)).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    // Check what came back before keeping it: the CA the token pins.
                    let got = crate::pki::fingerprint_pem(&r.ca_cert).map_err(pki_err(&t.dir))?;
                    if got != token.ca {
                        return Err(DaemonError::Invalid(format!(
                            "head {addr} sent a CA ({got}) that is not the token's; refusing it"
                        )));
                    }
                    let w = |name: &str, text: &str, mode: u32| {
                        write_file(&t.dir.join(name), text.as_bytes(), mode).map_err(pki_err(&t.dir))
                    };
                    w("ca.crt", &r.ca_cert, 0o644)?;
                    w("ca.key", &r.ca_key, 0o600)?;
                    w("head.key", &r.key, 0o600)?;
                    // Last: head.crt is what says "enrolled" (CredFiles::exist).
                    w("head.crt", &r.cert, 0o644)?;
                    tracing::info!(via = %addr, dir = %t.dir.display(), "enrolled: this head has its certificate");
                    return Ok(());
                }
                Ok(Err(s)) if !crate::error::is_retryable(&s) => {
                    return Err(DaemonError::Invalid(format!(
                        "enrolment refused by {addr}: {}",
                        s.message()
                    )));
                }
                // The head answered with a certificate the token does not vouch for:
                // another cluster (or someone in between). Trying again cannot help.
                Ok(Err(s)) => {
                    if let Some(why) = certificate_refusal(&s) {
                        return Err(DaemonError::Invalid(format!(
                            "refusing to enrol through {addr}: {why}; check that tls.join_token comes from this cluster (`wwctl cluster token create`) and tls.join_via names its heads"
                        )));
                    }
                    last = format!("{addr}: {}", s.message())
                }
                Err(_) => last = format!("{addr}: no answer within {ENROL_CALL:?}"),
            }
        }
        tracing::info!("enrolment not done yet ({last}); trying again");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Err(DaemonError::Invalid(format!(
        "could not enrol within {ENROL_FOR:?} (last: {last}); check tls.join_via and that those heads run"
    )))
}
