//! The cluster's own certificate authority, and who a certificate says its holder is.
//!
//! # Why a private CA, and why names are not checked
//!
//! Every head and every operator holds a certificate signed by one CA that belongs to
//! the cluster (made once by `wwctl cluster pki init`, its key kept by the heads in their
//! data directories, 0600). The certificate says *who* (common name: `head-3`, `alice`)
//! and *what they may do* (organizational unit: `head`, `admin` or `read`). That is all
//! a head needs to decide a call: the CA is private to the cluster, so a certificate it
//! signed is trusted for exactly what it says; nothing else on the network can obtain
//! one. Host names and addresses are deliberately not checked: `wwctl` reaches heads by
//! whatever name the operator's network gives them, and heads change addresses; a
//! head's certificate is recognised by its role, not by where it answers.
//!
//! Revocation is not a CRL: a revoked serial is written to the replicated state
//! ([`crate::state::access`]), and every head checks each call against its own copy, so
//! a revocation takes effect on every head as soon as the write is applied.
//!
//! # Files
//!
//! A head's directory (`tls.dir`, default `<data_dir>/pki`) holds `ca.crt`, `ca.key`
//! (to issue operators' credentials and joining heads' certificates), `head.crt` and
//! `head.key`. An operator's credential is `ca.crt`, `NAME.crt`, `NAME.key`. Keys are
//! written 0600 in 0700 directories, atomically (a crash leaves the old file or the new).
//!
//! # Join tokens
//!
//! A head that joins later gets its certificate with a one-time, expiring token
//! (`wwctl cluster token create`): `wpj1.<id>.<secret>.<ca>`, where `<ca>` is the
//! SHA-256 of the CA certificate, so the joining head can tell the real cluster from an
//! impostor before it sends the secret (the same idea as kubeadm's CA hash). Only the
//! SHA-256 of the secret is stored in the cluster; the token is used up by the join.

pub mod tls;

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// What the holder of a certificate may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read: list, show, status.
    Read,
    /// Everything an operator can do.
    Admin,
    /// A head: Raft, forwarded writes, enrolment of other heads.
    Head,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
            Role::Head => "head",
        }
    }

    /// Whether a holder of `self` may do what needs `need` (head ⊇ admin ⊇ read).
    pub fn allows(self, need: Role) -> bool {
        self >= need
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Role, PkiError> {
        match s {
            "read" => Ok(Role::Read),
            "admin" => Ok(Role::Admin),
            "head" => Ok(Role::Head),
            _ => Err(PkiError::Invalid(format!("role {s:?}: use admin or read"))),
        }
    }
}

/// Who a verified certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The common name: `head-<id>` for a head, the credential's name for an operator.
    pub name: String,
    pub role: Role,
    /// The certificate's serial number, lowercase hex (what revocation names).
    pub serial: String,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.role)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("making a certificate: {0}")]
    Make(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// `n` bytes from the operating system's CSPRNG (through the TLS provider's).
pub fn random_bytes(n: usize) -> Result<Vec<u8>, PkiError> {
    let mut buf = vec![0u8; n];
    tls::provider()
        .secure_random
        .fill(&mut buf)
        .map_err(|_| PkiError::Invalid("the system's random source failed".into()))?;
    Ok(buf)
}

/// How long certificates are valid, in days.
pub const CA_DAYS: i64 = 3650;
pub const HEAD_DAYS: i64 = 1825;
pub const OPERATOR_DAYS: i64 = 365;

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// Lowercase hex.
    pub serial: String,
}

/// The cluster CA: its certificate, and its key when this process holds it.
pub struct Ca {
    pub cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA for the cluster `cluster`.
    pub fn create(cluster: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("wulfpack cluster CA {cluster}"));
        dn.push(DnType::OrganizationName, "wulfpack");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut p, CA_DAYS);
        p.serial_number = Some(SerialNumber::from(random_bytes(16)?));
        let cert = p.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// The CA of PEM `cert` and `key`.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        // Parse once now, so a broken file is reported at load, not at the first issue.
        Issuer::from_ca_cert_pem(cert_pem, &key)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key,
        })
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// SHA-256 of the CA certificate (DER), hex: what join tokens pin.
    pub fn fingerprint(&self) -> String {
        fingerprint_pem(&self.cert_pem).unwrap_or_default()
    }

    /// A certificate for `name` in `role`, valid `days`, with a new key. A head's
    /// certificate serves and dials (both extended key usages); an operator's only dials.
    pub fn issue(&self, name: &str, role: Role, days: i64) -> Result<Issued, PkiError> {
        check_name(name)?;
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationalUnitName, role.as_str());
        dn.push(DnType::OrganizationName, "wulfpack");
        p.distinguished_name = dn;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = match role {
            Role::Head => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        p.use_authority_key_identifier_extension = true;
        validity(&mut p, days);
        let serial = random_bytes(16)?;
        // A positive INTEGER: x509 readers show the serial without a sign byte then.
        let mut serial = serial;
        serial[0] &= 0x7f;
        serial[0] |= 0x01;
        p.serial_number = Some(SerialNumber::from(serial.clone()));
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = p.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: hex(&serial),
        })
    }
}

fn validity(p: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back: a head whose clock is a little behind still accepts a new certificate.
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days);
}

/// Names of credentials and heads: they appear in certificates, file names and the audit
/// log, so the same rule as node names (letters, digits, `-`, `_`, `.`; not `.`/`..`).
pub fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name != "."
        && name != ".."
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(PkiError::Invalid(format!(
            "{name:?} is not a valid credential name: 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

/// The DER of the first certificate in `pem`.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::{pem::PemObject as _, CertificateDer};
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| PkiError::Invalid("no certificate in the PEM text".into()))?
        .map(|c| c.to_vec())
        .map_err(|e| PkiError::Invalid(format!("bad PEM certificate: {e}")))
}

/// SHA-256 of the first certificate's DER in `pem`, hex.
pub fn fingerprint_pem(pem: &str) -> Result<String, PkiError> {
    Ok(sha256_hex(&first_cert_der(pem)?))
}

/// The unix second after which the certificate `der` is no longer valid.
pub fn not_after(der: &[u8]) -> Result<i64, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Invalid(format!("unreadable certificate: {e}")))?;
    Ok(cert.validity().not_after.timestamp())
}

/// Who the certificate `der` names (common name, role from the organizational unit,
/// serial). Does not verify it: the TLS layer has, against the cluster CA.
pub fn identity_of(der: &[u8]) -> Result<Identity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Invalid(format!("unreadable certificate: {e}")))?;
    let subject = cert.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let name = first(&mut subject.iter_common_name())
        .ok_or_else(|| PkiError::Invalid("certificate without a common name".into()))?;
    let role: Role = first(&mut subject.iter_organizational_unit())
        .ok_or_else(|| PkiError::Invalid(format!("certificate of {name:?} names no role")))?
        .parse()
        .map_err(|_| PkiError::Invalid(format!("certificate of {name:?} names an unknown role")))?;
    Ok(Identity {
        name,
        role,
        serial: hex(cert.raw_serial()).trim_start_matches("00").to_string(),
    })
}

/// The files of a head's or an operator's credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CredFiles {
    /// A head's files in its PKI directory.
    pub fn head(dir: &Path) -> CredFiles {
        CredFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("head.crt"),
            key: dir.join("head.key"),
        }
    }

    /// Operator `name`'s files in `dir`.
    pub fn operator(dir: &Path, name: &str) -> CredFiles {
        CredFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }

    pub fn exist(&self) -> bool {
        self.ca.exists() && self.cert.exists() && self.key.exists()
    }

    /// Write `ca`, `issued` (0600 key, 0644 certificates) into a 0700 directory.
    pub fn write(&self, ca_pem: &str, issued: &Issued) -> Result<(), PkiError> {
        write_file(&self.ca, ca_pem.as_bytes(), 0o644)?;
        write_file(&self.key, issued.key_pem.as_bytes(), 0o600)?;
        write_file(&self.cert, issued.cert_pem.as_bytes(), 0o644)
    }

    pub fn read(&self) -> Result<(String, String, String), PkiError> {
        let r = |p: &Path| fs::read_to_string(p).map_err(io(p));
        Ok((r(&self.ca)?, r(&self.cert)?, r(&self.key)?))
    }
}

/// `ca.key` beside `ca.crt` in a head's PKI directory.
pub fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join("ca.key")
}

/// The CA of a head's PKI directory (certificate and key).
pub fn load_ca(dir: &Path) -> Result<Ca, PkiError> {
    let cert = dir.join("ca.crt");
    let key = ca_key_path(dir);
    let c = fs::read_to_string(&cert).map_err(io(&cert))?;
    let k = fs::read_to_string(&key).map_err(io(&key))?;
    Ca::from_pem(&c, &k)
}

/// Write `bytes` to `path` with `mode`, atomically, the directory made 0700 if new.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// A head's own certificate as it serves it ([`tls::LiveCert`]) and keeps it on disk
/// (`tls.dir`), rotatable while the head runs (`wwctl cluster rotate`).
#[derive(Debug)]
pub struct HeadCert {
    pub dir: PathBuf,
    pub id: u64,
    pub ca_pem: String,
    pub live: Arc<tls::LiveCert>,
}

/// What one rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    pub old_serial: String,
    pub new_serial: String,
    /// Unix second the new certificate expires.
    pub not_after: i64,
}

/// Where a rotation stages the new key and certificate before they replace the old ones.
const PENDING: &str = "rotate.pending";

impl HeadCert {
    /// The certificate in use now.
    pub fn identity(&self) -> Result<Identity, PkiError> {
        identity_of(&self.live.leaf_der())
    }

    pub fn not_after(&self) -> Result<i64, PkiError> {
        not_after(&self.live.leaf_der())
    }

    /// A new key and certificate for this head from `ca` (valid [`HEAD_DAYS`]): written
    /// to `tls.dir` so that a crash at any point leaves either the old pair or the new one
    /// (staged in `rotate.pending/`, key first, certificate last; [`finish_rotation`]
    /// completes a staged pair at the next start), then served from the next handshake
    /// on. The old certificate is not revoked: connections made with it (other heads'
    /// channels to this one, this head's to them) keep working until they reconnect.
    pub fn rotate(&self, ca: &Ca) -> Result<Rotated, PkiError> {
        let old = self.identity()?;
        let issued = ca.issue(&format!("head-{}", self.id), Role::Head, HEAD_DAYS)?;
        let pending = self.dir.join(PENDING);
        write_file(&pending.join("head.key"), issued.key_pem.as_bytes(), 0o600)?;
        write_file(&pending.join("head.crt"), issued.cert_pem.as_bytes(), 0o644)?;
        // Check the pair before it replaces anything; a pair rustls refuses is not kept.
        if let Err(e) = self.live.replace(&self.ca_pem, &issued.cert_pem, &issued.key_pem) {
            let _ = fs::remove_dir_all(&pending);
            return Err(e);
        }
        finish_rotation(&self.dir)?;
        Ok(Rotated {
            old_serial: old.serial,
            new_serial: issued.serial,
            not_after: not_after(&first_cert_der(&issued.cert_pem)?)?,
        })
    }
}

/// Complete a rotation staged in `dir/rotate.pending/`. The staging writes the key
/// first and the certificate last, so a certificate there means the pair is whole: move
/// the key (unless an earlier attempt already moved it) and then the certificate over
/// `head.key` and `head.crt`. No certificate there: the staging was cut short and the
/// old pair is still whole and in place; drop what was staged.
/// Returns whether a staged pair was installed.
pub fn finish_rotation(dir: &Path) -> Result<bool, PkiError> {
    let pending = dir.join(PENDING);
    if !pending.exists() {
        return Ok(false);
    }
    let (key, crt) = (pending.join("head.key"), pending.join("head.crt"));
    let complete = crt.exists();
    if complete {
        if key.exists() {
            fs::rename(&key, dir.join("head.key")).map_err(io(&key))?;
        }
        fs::rename(&crt, dir.join("head.crt")).map_err(io(&crt))?;
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    }
    fs::remove_dir_all(&pending).map_err(io(&pending))?;
    Ok(complete)
}

/// Everything `wwctl cluster pki init` makes: the CA and one directory per founding
/// head (`head-<id>/`: copy it to that head's `tls.dir`). The first operator credential
/// is made on a head afterwards (`wwctl cluster credentials add NAME --local`), so that
/// the cluster records it.
pub fn init_dir(out: &Path, cluster: &str, heads: &[u64]) -> Result<Ca, PkiError> {
    if out.join("ca.crt").exists() {
        return Err(PkiError::Invalid(format!(
            "{} already holds a CA: a second one would split the cluster; use another directory",
            out.display()
        )));
    }
    let ca = Ca::create(cluster)?;
    write_file(&out.join("ca.crt"), ca.cert_pem.as_bytes(), 0o644)?;
    write_file(&ca_key_path(out), ca.key_pem().as_bytes(), 0o600)?;
    for id in heads {
        let dir = out.join(format!("head-{id}"));
        let issued = ca.issue(&format!("head-{id}"), Role::Head, HEAD_DAYS)?;
        CredFiles::head(&dir).write(&ca.cert_pem, &issued)?;
        write_file(&ca_key_path(&dir), ca.key_pem().as_bytes(), 0o600)?;
    }
    Ok(ca)
}

/// A join token (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    pub secret: String,
    /// SHA-256 of the CA certificate, hex.
    pub ca: String,
}

impl JoinToken {
    /// A new token for the cluster of CA fingerprint `ca`.
    pub fn new(ca: &str) -> Result<JoinToken, PkiError> {
        Ok(JoinToken {
            id: hex(&random_bytes(4)?),
            secret: hex(&random_bytes(16)?),
            ca: ca.to_string(),
        })
    }

    /// SHA-256 of the secret: what the cluster stores.
    pub fn secret_hash(&self) -> String {
        sha256_hex(self.secret.as_bytes())
    }

    pub fn parse(s: &str) -> Result<JoinToken, PkiError> {
        let bad = || {
            PkiError::Invalid(
                "not a join token: expected wpj1.<id>.<secret>.<ca>, as `wwctl cluster token create` prints".into(),
            )
        };
        let mut it = s.trim().split('.');
        if it.next() != Some("wpj1") {
            return Err(bad());
        }
        let (id, secret, ca) = match (it.next(), it.next(), it.next(), it.next()) {
            (Some(a), Some(b), Some(c), None) => (a, b, c),
            _ => return Err(bad()),
        };
        let hexok = |x: &str, n: usize| x.len() == n && x.bytes().all(|b| b.is_ascii_hexdigit());
        if !hexok(id, 8) || !hexok(secret, 32) || !hexok(ca, 64) {
            return Err(bad());
        }
        Ok(JoinToken {
            id: id.to_ascii_lowercase(),
            secret: secret.to_ascii_lowercase(),
            ca: ca.to_ascii_lowercase(),
        })
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wpj1.{}.{}.{}", self.id, self.secret, self.ca)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_certificate_names_its_holder_and_role() {
        let ca = Ca::create("t").unwrap();
        let i = ca.issue("alice", Role::Read, 10).unwrap();
        let id = identity_of(&first_cert_der(&i.cert_pem).unwrap()).unwrap();
        assert_eq!(id.name, "alice");
        assert_eq!(id.role, Role::Read);
        assert_eq!(id.serial, i.serial);
        let h = ca.issue("head-2", Role::Head, 10).unwrap();
        assert_eq!(
            identity_of(&first_cert_der(&h.cert_pem).unwrap()).unwrap().role,
            Role::Head
        );
        assert_ne!(i.serial, h.serial, "serials are random");
    }

    #[test]
    fn a_ca_reloads_from_its_files_and_issues_the_same_chain() {
        let ca = Ca::create("t").unwrap();
        let again = Ca::from_pem(&ca.cert_pem, &ca.key_pem()).unwrap();
        assert_eq!(ca.fingerprint(), again.fingerprint());
        assert_eq!(ca.fingerprint().len(), 64);
        assert!(Ca::from_pem(&ca.cert_pem, "junk").is_err());
    }

    #[test]
    fn roles_are_ordered_head_admin_read() {
        assert!(Role::Head.allows(Role::Admin));
        assert!(Role::Admin.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Admin));
        assert!(!Role::Admin.allows(Role::Head));
        assert!("owner".parse::<Role>().is_err());
    }

    #[test]
    fn join_tokens_round_trip_and_reject_garbage() {
        let t = JoinToken::new(&"ab".repeat(32)).unwrap();
        let s = t.to_string();
        assert_eq!(JoinToken::parse(&s).unwrap(), t);
        for bad in [
            "",
            "wpj1",
            "wpj1.x.y.z",
            &s.replace("wpj1", "wpj2"),
            &format!("{s}.extra"),
            &s[..s.len() - 1],
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?}");
        }
        assert_ne!(t.secret_hash(), t.secret);
    }

    #[test]
    fn names_that_would_escape_a_directory_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", "-x", &"a".repeat(64), "a b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("alice.smith-2").unwrap();
    }

    #[test]
    fn init_writes_keys_private_and_refuses_a_second_ca() {
        let d = tempfile::tempdir().unwrap();
        init_dir(d.path(), "c", &[1, 2]).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d.path().join("ca.key")), 0o600);
        assert_eq!(mode(&d.path().join("head-2/head.key")), 0o600);
        assert_eq!(mode(&d.path().join("head-2")), 0o700);
        assert!(CredFiles::head(&d.path().join("head-1")).exist());
        load_ca(&d.path().join("head-1")).unwrap();
        assert!(init_dir(d.path(), "c", &[1]).is_err());
    }

    fn head_cert(dir: &Path, id: u64) -> HeadCert {
        let (ca_pem, cert, key) = CredFiles::head(dir).read().unwrap();
        HeadCert {
            dir: dir.to_path_buf(),
            id,
            live: tls::LiveCert::new(&ca_pem, &cert, &key).unwrap(),
            ca_pem,
        }
    }

    #[test]
    fn rotation_serves_and_stores_a_new_pair_of_the_same_head() {
        let d = tempfile::tempdir().unwrap();
        init_dir(d.path(), "c", &[1]).unwrap();
        let dir = d.path().join("head-1");
        let ca = load_ca(&dir).unwrap();
        let hc = head_cert(&dir, 1);
        let before = hc.identity().unwrap();
        let r = hc.rotate(&ca).unwrap();
        assert_eq!(r.old_serial, before.serial);
        assert_ne!(r.new_serial, r.old_serial);
        let now = hc.identity().unwrap();
        assert_eq!(
            (now.serial.as_str(), now.name.as_str(), now.role),
            (r.new_serial.as_str(), "head-1", Role::Head)
        );
        // On disk too, so a restart serves the new one; the key stays private.
        let reread = head_cert(&dir, 1).identity().unwrap();
        assert_eq!(reread.serial, r.new_serial);
        assert_eq!(
            fs::metadata(dir.join("head.key")).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!dir.join(PENDING).exists());
    }

    #[test]
    fn a_rotation_cut_short_leaves_a_whole_pair() {
        let d = tempfile::tempdir().unwrap();
        init_dir(d.path(), "c", &[1]).unwrap();
        let dir = d.path().join("head-1");
        let ca = load_ca(&dir).unwrap();
        let old = head_cert(&dir, 1).identity().unwrap().serial;
        let new = ca.issue("head-1", Role::Head, HEAD_DAYS).unwrap();
        let pending = dir.join(PENDING);
        let stage_key = || write_file(&pending.join("head.key"), new.key_pem.as_bytes(), 0o600).unwrap();
        let stage_crt = || write_file(&pending.join("head.crt"), new.cert_pem.as_bytes(), 0o644).unwrap();

        // Cut after the key: the old pair stays.
        stage_key();
        assert!(!finish_rotation(&dir).unwrap());
        assert_eq!(head_cert(&dir, 1).identity().unwrap().serial, old);
        assert!(!pending.exists());

        // Cut after the certificate was staged: the new pair is installed at start.
        stage_key();
        stage_crt();
        assert!(finish_rotation(&dir).unwrap());
        assert_eq!(head_cert(&dir, 1).identity().unwrap().serial, new.serial);

        // A key and certificate that disagree are refused (what the next case guards).
        let other = ca.issue("head-1", Role::Head, HEAD_DAYS).unwrap();
        assert!(tls::LiveCert::new(&ca.cert_pem, &new.cert_pem, &other.key_pem).is_err());

        // Cut between moving the key and the certificate: the certificate follows.
        let newer = ca.issue("head-1", Role::Head, HEAD_DAYS).unwrap();
        write_file(&dir.join("head.key"), newer.key_pem.as_bytes(), 0o600).unwrap();
        write_file(&pending.join("head.crt"), newer.cert_pem.as_bytes(), 0o644).unwrap();
        assert!(finish_rotation(&dir).unwrap());
        // head_cert() builds a rustls key pair: it fails if key and certificate disagree.
        assert_eq!(head_cert(&dir, 1).identity().unwrap().serial, newer.serial);
        assert!(!finish_rotation(&dir).unwrap(), "nothing staged any more");
    }
}
