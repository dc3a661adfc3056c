//! Mutual TLS for the heads' gRPC port: rustls configurations, the check a client makes of
//! a head, and the transport glue for tonic (an accept loop that hands tonic finished TLS
//! connections carrying the peer's [`Identity`], and a connector for channels).
//!
//! Why not tonic's own TLS: it checks the server's name and offers no pinned-CA mode.
//! Heads are identified by role, not name (see the parent module), and a joining head
//! must check the CA against its token's hash before it has the CA. With our own
//! rustls configurations both are a verifier; tonic sees plain byte streams.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::{identity_of, sha256_hex, Identity, PkiError, Role};

/// How long a TLS handshake may take on either side.
pub const HANDSHAKE: Duration = Duration::from_secs(5);

/// The one crypto provider (aws-lc-rs, already in the tree through reqwest); named
/// explicitly so that no process-wide default has to be installed.
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let v: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::Invalid(format!("bad PEM certificate: {e}")))?;
    if v.is_empty() {
        return Err(PkiError::Invalid("no certificate in the PEM text".into()));
    }
    Ok(v)
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Invalid(format!("bad PEM private key: {e}")))
}

fn roots(ca_pem: &str) -> Result<RootCertStore, PkiError> {
    let mut r = RootCertStore::empty();
    for c in certs(ca_pem)? {
        r.add(c)
            .map_err(|e| PkiError::Invalid(format!("the CA certificate is not usable: {e}")))?;
    }
    Ok(r)
}

/// A head's certificate and key, replaceable while the server and this head's channels
/// use it (`wwctl cluster rotate`): rustls asks the resolver on every handshake, so the
/// next connection, either way, shows the new certificate; connections already open
/// keep the one they were made with (it stays valid until it expires or is revoked).
#[derive(Debug)]
pub struct LiveCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl LiveCert {
    /// From the head's certificate (then the CA's, sent along) and key.
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<LiveCert>, PkiError> {
        Ok(Arc::new(LiveCert {
            current: std::sync::RwLock::new(certified(ca_pem, cert_pem, key_pem)?),
        }))
    }

    /// Use `cert_pem`/`key_pem` from the next handshake on; refused (and nothing
    /// changed) when the key does not belong to the certificate.
    pub fn replace(&self, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
        let new = certified(ca_pem, cert_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }

    fn get(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The leaf certificate in use (DER).
    pub fn leaf_der(&self) -> Vec<u8> {
        self.get().cert.first().map(|c| c.to_vec()).unwrap_or_default()
    }
}

fn certified(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::sign::CertifiedKey>, PkiError> {
    let mut chain = certs(cert_pem)?;
    chain.extend(certs(ca_pem)?);
    let ck = rustls::sign::CertifiedKey::from_der(chain, key(key_pem)?, &provider())?;
    Ok(Arc::new(ck))
}

impl rustls::server::ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for LiveCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// [`server_config`] with a [`LiveCert`]: a head's server, its certificate rotatable.
pub fn live_server_config(ca_pem: &str, live: Arc<LiveCert>) -> Result<Arc<ServerConfig>, PkiError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Invalid(format!("client verifier: {e}")))?;
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(live);
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(c))
}

/// [`client_config`] with a [`LiveCert`]: a head calling its peers, its certificate
/// rotatable.
pub fn live_client_config(ca_pem: &str, live: Arc<LiveCert>) -> Result<Arc<ClientConfig>, PkiError> {
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(HeadVerifier {
            trust: Trust::Ca(Arc::new(roots(ca_pem)?)),
        }))
        .with_client_cert_resolver(live);
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(c))
}

/// HTTPS for nodes (`https_listen`): the head's rotatable certificate, no client
/// certificate (a node has none; the runtime overlay is guarded by the node's address,
/// secure port and asset key as over HTTP), HTTP/1.1 as `wwclient` and curl speak it.
pub fn node_server_config(live: Arc<LiveCert>) -> Result<Arc<ServerConfig>, PkiError> {
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(live);
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// `wwclient` over HTTPS: trusts a head whose certificate the cluster CA (`ca_pem`,
/// written into the node by the `wwclient` overlay) signed with role `head`, whatever
/// address it answers on, as heads trust each other; HTTP/1.1.
pub fn node_client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, PkiError> {
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(HeadVerifier {
            trust: Trust::Ca(Arc::new(roots(ca_pem)?)),
        }))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// A head's server side: its certificate chain (head, then CA, so that a joining head
/// can find the CA its token pins), TLS 1.3, HTTP/2. A client certificate from the CA
/// is checked when given, but not required at the handshake: a joining head has none
/// yet; which calls need which role is decided per call (`api::auth`).
pub fn server_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, PkiError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Invalid(format!("client verifier: {e}")))?;
    let mut chain = certs(cert_pem)?;
    chain.extend(certs(ca_pem)?);
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key(key_pem)?)?;
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(c))
}

/// A client of heads (an operator, or a head calling another): trusts heads whose
/// certificate the CA signed with role `head`, and shows `identity` (certificate, key).
pub fn client_config(ca_pem: &str, identity: Option<(&str, &str)>) -> Result<Arc<ClientConfig>, PkiError> {
    build_client(Trust::Ca(Arc::new(roots(ca_pem)?)), identity)
}

/// A joining head's first call: trusts a head whose chain holds a CA certificate of
/// SHA-256 `ca_fingerprint` (from the join token) that signed its certificate.
pub fn pinned_client_config(ca_fingerprint: &str) -> Result<Arc<ClientConfig>, PkiError> {
    build_client(Trust::Pinned(ca_fingerprint.to_ascii_lowercase()), None)
}

fn build_client(trust: Trust, identity: Option<(&str, &str)>) -> Result<Arc<ClientConfig>, PkiError> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(HeadVerifier { trust }));
    let mut c = match identity {
        Some((cert, k)) => b.with_client_auth_cert(certs(cert)?, key(k)?)?,
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(c))
}

#[derive(Debug)]
enum Trust {
    Ca(Arc<RootCertStore>),
    Pinned(String),
}

/// Checks that the server is a head of this cluster (see the module doc for why the
/// name is not checked).
#[derive(Debug)]
struct HeadVerifier {
    trust: Trust,
}

fn general(msg: impl Into<String>) -> rustls::Error {
    rustls::Error::General(msg.into())
}

impl ServerCertVerifier for HeadVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned;
        let roots: &RootCertStore = match &self.trust {
            Trust::Ca(r) => r,
            Trust::Pinned(want) => {
                let ca = intermediates.iter().find(|c| &sha256_hex(c) == want).ok_or_else(|| {
                    general("this head's CA is not the one the join token names (wrong cluster, or someone in between)")
                })?;
                let mut r = RootCertStore::empty();
                r.add(ca.clone().into_owned())
                    .map_err(|e| general(format!("pinned CA: {e}")))?;
                pinned = r;
                &pinned
            }
        };
        let parsed = ParsedCertificate::try_from(end_entity)?;
        // The CA itself is sent in the chain; as an "intermediate" it would be the
        // trust anchor twice, harmless for webpki.
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        match identity_of(end_entity) {
            Ok(id) if id.role == Role::Head => Ok(ServerCertVerified::assertion()),
            Ok(id) => Err(general(format!(
                "the server shows the certificate of {id}, not a head's: refusing to talk to it"
            ))),
            Err(e) => Err(general(e.to_string())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// Who is on the other end of a server connection (a request extension under TLS).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// From the client certificate the handshake verified; `None` without one.
    pub identity: Option<Identity>,
}

/// A server-side TLS connection as tonic serves it.
#[derive(Debug)]
pub struct TlsConn {
    io: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl TlsConn {
    /// Who is on the other end.
    pub fn peer(&self) -> &PeerInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accept on `listener` until `stop`, each handshake in its own task (a slow client never
/// holds up the next) within [`HANDSHAKE`]; finished connections come out of the stream.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    stop: CancellationToken,
) -> impl futures::Stream<Item = std::io::Result<TlsConn>> + Send + 'static {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<TlsConn>(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    // Refused handshakes leave a trace, not a flood (a scanner, a misconfigured client).
    let failures = Arc::new(crate::logging::Every::new(Duration::from_secs(10)));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("accepting a TLS connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, failures) = (acceptor.clone(), tx.clone(), failures.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                    Ok(Ok(io)) => {
                        let identity = io
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| identity_of(c).ok());
                        let _ = tx
                            .send(TlsConn {
                                io,
                                info: PeerInfo {
                                    remote: Some(remote),
                                    identity,
                                },
                            })
                            .await;
                    }
                    Ok(Err(e)) => refused(&failures, remote, &e.to_string()),
                    Err(_) => refused(&failures, remote, "no handshake within 5 s"),
                }
            });
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|c| c.map(Ok)))
}

fn refused(every: &crate::logging::Every, from: SocketAddr, why: &str) {
    if let Some(n) = every.tick() {
        tracing::warn!(
            %from,
            failed_since_last_report = n,
            "TLS handshake refused: {why} (a client without this cluster's certificates, or not speaking TLS)"
        );
    }
}

/// Makes TLS connections to heads for tonic channels.
#[derive(Clone, Debug)]
struct Connector {
    config: Arc<ClientConfig>,
}

impl tonic::codegen::Service<tonic::codegen::http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: {m}"));
            let host = uri
                .host()
                .ok_or_else(|| bad("no host"))?
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri.port_u16().ok_or_else(|| bad("no port"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            // Names are not checked (see the module doc); SNI carries the host for logs.
            let name = ServerName::try_from(host.clone()).map_err(|_| bad("not a host name"))?;
            let tls = tokio::time::timeout(HANDSHAKE, tokio_rustls::TlsConnector::from(config).connect(name, tcp))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// How this process dials heads: plaintext (`insecure`), or mutual TLS with the
/// cluster's CA and this process's certificate.
#[derive(Clone, Debug, Default)]
pub struct Dialer {
    tls: Option<Arc<ClientConfig>>,
}

impl Dialer {
    pub fn plain() -> Dialer {
        Dialer { tls: None }
    }

    pub fn tls(config: Arc<ClientConfig>) -> Dialer {
        Dialer { tls: Some(config) }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// An HTTP/2 client for what heads ask each other outside gRPC (blobs, liveness
    /// probes) on the gRPC port: the same TLS configuration as the channels, so a peer
    /// is trusted only with a `head` certificate of the cluster CA and shows ours; h2c
    /// when plaintext (`insecure`). HTTP/2 is known beforehand: the port speaks nothing
    /// else. Frames up to 256 KiB and an adaptive window, so a blob streams at the
    /// link's speed rather than at one 64 KiB window per round trip.
    pub fn http(&self, connect: Duration) -> Result<reqwest::Client, PkiError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(connect)
            .tcp_nodelay(true)
            .http2_prior_knowledge()
            .http2_adaptive_window(true)
            .http2_max_frame_size(256 * 1024);
        if let Some(c) = &self.tls {
            b = b.tls_backend_preconfigured((**c).clone());
        }
        b.build()
            .map_err(|e| PkiError::Invalid(format!("HTTP client for peers: {e}")))
    }

    /// The base URL of a head's gRPC port `addr` (`host:port`) for [`Dialer::http`].
    pub fn base_url(&self, addr: &str) -> String {
        match self.tls {
            Some(_) => format!("https://{addr}"),
            None => format!("http://{addr}"),
        }
    }

    /// A channel to `endpoint` that connects on first use.
    pub fn lazy(&self, endpoint: Endpoint) -> Channel {
        match &self.tls {
            None => endpoint.connect_lazy(),
            Some(c) => endpoint.connect_with_connector_lazy(Connector { config: c.clone() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Ca, Role};
    use super::*;

    fn verify(v: &HeadVerifier, ca: &Ca, leaf: &super::super::Issued) -> Result<ServerCertVerified, rustls::Error> {
        let leaf = certs(&leaf.cert_pem).unwrap().remove(0);
        let chain = certs(&ca.cert_pem).unwrap();
        v.verify_server_cert(&leaf, &chain, &ServerName::try_from("x").unwrap(), &[], UnixTime::now())
    }

    #[test]
    fn a_client_trusts_heads_of_its_ca_only() {
        let ca = Ca::create("a").unwrap();
        let other = Ca::create("b").unwrap();
        let v = HeadVerifier {
            trust: Trust::Ca(Arc::new(roots(&ca.cert_pem).unwrap())),
        };
        verify(&v, &ca, &ca.issue("head-1", Role::Head, 1).unwrap()).unwrap();
        let e = verify(&v, &ca, &ca.issue("mallory", Role::Admin, 1).unwrap()).unwrap_err();
        // webpki refuses it first (an operator's certificate is not for servers); the role
        // check stands behind that.
        assert!(
            e.to_string().contains("not a head") || e.to_string().contains("server authentication"),
            "{e}"
        );
        assert!(verify(&v, &other, &other.issue("head-1", Role::Head, 1).unwrap()).is_err());
    }

    #[test]
    fn a_pinned_client_needs_the_ca_of_its_token() {
        let ca = Ca::create("a").unwrap();
        let other = Ca::create("b").unwrap();
        let v = HeadVerifier {
            trust: Trust::Pinned(ca.fingerprint()),
        };
        verify(&v, &ca, &ca.issue("head-1", Role::Head, 1).unwrap()).unwrap();
        let e = verify(&v, &other, &other.issue("head-1", Role::Head, 1).unwrap()).unwrap_err();
        assert!(e.to_string().contains("join token"), "{e}");
        // The right CA in the chain, but a leaf some other CA signed.
        let forged = other.issue("head-1", Role::Head, 1).unwrap();
        assert!(verify(&v, &ca, &forged).is_err());
    }

    #[test]
    fn an_expired_head_certificate_is_refused() {
        let ca = Ca::create("a").unwrap();
        let v = HeadVerifier {
            trust: Trust::Ca(Arc::new(roots(&ca.cert_pem).unwrap())),
        };
        let h = ca.issue("head-1", Role::Head, 1).unwrap();
        let leaf = certs(&h.cert_pem).unwrap().remove(0);
        let later = UnixTime::since_unix_epoch(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                + Duration::from_secs(3 * 86400),
        );
        let e = v
            .verify_server_cert(&leaf, &[], &ServerName::try_from("x").unwrap(), &[], later)
            .unwrap_err();
        assert!(e.to_string().to_lowercase().contains("expired"), "{e}");
    }
}
