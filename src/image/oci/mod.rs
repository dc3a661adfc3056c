//! # Pulling OCI images into the CAS
//!
//! An image import starts here: whatever the source (a registry, an `oci-archive` or
//! `docker-archive` tar, a plain directory), the result is the same — the image's layer
//! blobs stored in the content-addressed store ([`crate::cas`]), verified against their
//! digests, listed in application order in a [`Pulled`]. Applying the layers to a rootfs
//! is somebody else's job (`image::layers`); this module only produces and describes blobs.
//!
//! Design notes:
//! - **Never a whole layer in memory.** Registry blobs stream through
//!   `oci_client::Client::pull_blob` into [`crate::cas::AsyncBlobWriter`] (never
//!   `Client::pull`, which buffers every layer). Archive blobs are copied from their
//!   offset inside the tar file straight into a [`crate::cas::BlobWriter`]; a directory is
//!   tarred into one. Only manifests, indexes and configs (small JSON, size-capped) are
//!   read whole.
//! - **Verified on the way in.** Every blob whose digest is known beforehand (all registry
//!   and OCI layout blobs, plain-tar docker-archive layers through their `diff_id`) is
//!   committed with that expected digest, so the CAS refuses content that does not match;
//!   gzip docker-archive layers are decompressed while copied and checked against their
//!   `diff_id`. A blob already in the CAS is re-verified (cached) instead of fetched again;
//!   a corrupt one is quarantined by the CAS and fetched anew.
//! - **Our own manifest parsing.** Manifests and indexes are parsed here (OCI and Docker
//!   schema 2 share the same shape), not by `oci-client`'s platform resolver, so that "no
//!   image for your platform" can list the platforms that *are* available, and so the same
//!   selection code serves registries and archives.
//! - **Blocking work off the runtime.** Archive and directory imports are plain blocking
//!   file I/O; they run under `spawn_blocking` and send progress back over a channel (the
//!   caller's progress callback is borrowed, not `'static`). Dropping the `pull` future
//!   sets a cancel flag the blocking copy loops check, so an abandoned import stops soon.
//! - **Platform strictness.** A multi-platform index yields the requested platform's
//!   manifest or an error naming the available ones; a single-platform image whose config
//!   names another platform is refused too (a node cannot boot the wrong architecture), with
//!   the hint to ask for that platform explicitly.

mod archive;
mod dir;
mod registry;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Deserialize;

use crate::cas::{Cas, CasError, Digest};

pub use dir::tar_directory;

/// Uncompressed OCI layer (what a [`Source::Directory`] import produces).
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// gzip-compressed OCI layer.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// zstd-compressed OCI layer.
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_TYPE_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The URI forms [`Source::parse`] accepts, for error messages.
pub const ACCEPTED_FORMS: &str = "docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST] (a registry), \
     oci-archive:/PATH/IMAGE.tar (also oci-archive:///PATH), docker-archive:/PATH/IMAGE.tar, \
     dir:/PATH/ROOTFS or a path to a directory";

/// Manifests, indexes and configs larger than this are refused (they are JSON of a few KiB;
/// the cap keeps a hostile or broken source from making us buffer a layer-sized "manifest").
const MAX_JSON: u64 = 16 << 20;

/// Nested indexes followed at most this deep.
const MAX_NESTING: usize = 4;

/// Progress is reported at least every this many bytes of one blob.
const PROGRESS_STEP: u64 = 1 << 20;

/// What went wrong, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("cannot understand image source {uri:?}: {reason}. Accepted forms: {ACCEPTED_FORMS}")]
    BadUri { uri: String, reason: String },

    #[error("bad platform {input:?}: {reason}; write it as OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8")]
    BadPlatform { input: String, reason: String },

    #[error("cannot reach registry {registry} over {scheme}: {detail}. Check that the registry is running and that the address is right{hint}")]
    Unreachable {
        registry: String,
        scheme: &'static str,
        detail: String,
        hint: &'static str,
    },

    #[error("registry {registry} requires credentials to pull {reference}; give a username and password")]
    AuthRequired { registry: String, reference: String },

    #[error("registry {registry} rejected the credentials of user {user:?} for {reference}{detail}; check the username and password")]
    AuthRejected {
        registry: String,
        reference: String,
        user: String,
        detail: String,
    },

    #[error("{what} does not exist on registry {registry} ({detail}); check the repository name and tag")]
    NotFound {
        registry: String,
        what: String,
        detail: String,
    },

    #[error("registry {registry} failed while pulling {what}: {detail}")]
    Registry {
        registry: String,
        what: String,
        detail: String,
    },

    #[error("{image} has no image for platform {wanted}; it offers: {available}. Ask for one of those platforms")]
    NoPlatform {
        image: String,
        wanted: String,
        available: String,
    },

    #[error("{image} is built for {actual}, not for the requested {wanted}; ask for platform {actual} if that image is what you want")]
    WrongPlatform {
        image: String,
        wanted: String,
        actual: String,
    },

    #[error("{image}: {what} is malformed: {reason}")]
    BadManifest {
        image: String,
        what: String,
        reason: String,
    },

    #[error("{image}: {reason}")]
    Unsupported { image: String, reason: String },

    #[error("{path} is not a usable image archive: {reason}")]
    BadArchive { path: PathBuf, reason: String },

    #[error(
        "{path} lacks {name}, which its manifest refers to; the archive is incomplete or damaged, export it again"
    )]
    MissingInArchive { path: PathBuf, name: String },

    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{what} from {image} could not be stored: {source}")]
    Cas {
        what: String,
        image: String,
        #[source]
        source: Box<CasError>,
    },

    #[error("the import was cancelled")]
    Cancelled,

    #[error("internal error during the import: {0}")]
    Internal(String),
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `host[:port]/repo[:tag|@digest]`; `insecure` = plain HTTP; `auth` = basic credentials.
    Registry {
        reference: String,
        insecure: bool,
        auth: Option<(String, String)>,
    },
    /// A tar of an OCI image layout (`skopeo copy ... oci-archive:FILE`).
    OciArchive(PathBuf),
    /// A `docker save` / `skopeo copy ... docker-archive:FILE` tar.
    DockerArchive(PathBuf),
    /// A root filesystem tree; imported as one uncompressed layer.
    Directory(PathBuf),
}

impl Source {
    /// Parse a Warewulf-style image URI: `docker://host/repo:tag`, `oci-archive:/path.tar`
    /// (also `oci-archive:///path`), `docker-archive:/path.tar`, `dir:/path` or a path to a
    /// directory. A bare `host/repo:tag` is not guessed.
    pub fn parse(uri: &str, insecure: bool, auth: Option<(String, String)>) -> Result<Source, OciError> {
        let bad = |reason: String| OciError::BadUri {
            uri: uri.to_string(),
            reason,
        };
        let uri_t = uri.trim();
        if uri_t.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if let Some(rest) = uri_t.strip_prefix("docker://") {
            if rest.is_empty() {
                return Err(bad("no image reference after docker://".into()));
            }
            rest.parse::<oci_client::Reference>()
                .map_err(|e| bad(format!("{rest:?} is not a valid image reference ({e})")))?;
            return Ok(Source::Registry {
                reference: rest.to_string(),
                insecure,
                auth,
            });
        }
        for (scheme, make) in [
            ("oci-archive:", Source::OciArchive as fn(PathBuf) -> Source),
            ("docker-archive:", Source::DockerArchive),
            ("dir:", Source::Directory),
        ] {
            if let Some(rest) = uri_t.strip_prefix(scheme) {
                let path = uri_path(rest).map_err(|r| bad(format!("{r} (after {scheme})")))?;
                if scheme == "dir:" {
                    check_dir(&path).map_err(bad)?;
                } else if let Some(file) = archive_with_ref(&path) {
                    return Err(bad(format!(
                        "{} does not exist, but {} does: choosing an image inside an archive by name is not \
                         supported; export just the one image and import {scheme}{}",
                        path.display(),
                        file.display(),
                        file.display()
                    )));
                }
                return Ok(make(path));
            }
        }
        if let Some((scheme, _)) = uri_t.split_once("://") {
            return Err(bad(format!("unknown scheme {scheme:?}")));
        }
        // A path: explicit (absolute or ./ ../) or an existing directory.
        let looks_like_path = uri_t.starts_with('/') || uri_t.starts_with("./") || uri_t.starts_with("../");
        let p = Path::new(uri_t);
        if looks_like_path || p.is_dir() {
            if p.is_file() {
                return Err(bad(
                    "it is a file, not a directory; if it is an image archive, prefix it with oci-archive: or docker-archive:"
                        .into(),
                ));
            }
            check_dir(p).map_err(bad)?;
            return Ok(Source::Directory(p.to_path_buf()));
        }
        Err(bad(
            "it is neither a URI of a known form nor an existing directory (a bare registry reference is not guessed; \
             prefix it with docker://)"
                .into(),
        ))
    }
}

fn uri_path(rest: &str) -> Result<PathBuf, String> {
    if rest.is_empty() {
        return Err("no path".into());
    }
    if let Some(abs) = rest.strip_prefix("//") {
        // "scheme:///abs" is a file URI with an empty host; "scheme://x" would name a host.
        if abs.starts_with('/') {
            return Ok(PathBuf::from(abs));
        }
        return Err(format!(
            "{rest:?} names a host; write an absolute path as /PATH or ///PATH"
        ));
    }
    Ok(PathBuf::from(rest))
}

/// skopeo's `oci-archive:FILE:REF` form: FILE exists, FILE:REF does not.
fn archive_with_ref(p: &Path) -> Option<PathBuf> {
    if p.exists() {
        return None;
    }
    let s = p.to_str()?;
    let (file, _reference) = s.rsplit_once(':')?;
    Path::new(file).is_file().then(|| PathBuf::from(file))
}

fn check_dir(p: &Path) -> Result<(), String> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", p.display())),
        Err(e) => Err(format!("directory {} cannot be used: {e}", p.display())),
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Registry { reference, .. } => write!(f, "docker://{reference}"),
            Source::OciArchive(p) => write!(f, "oci-archive:{}", p.display()),
            Source::DockerArchive(p) => write!(f, "docker-archive:{}", p.display()),
            Source::Directory(p) => write!(f, "dir:{}", p.display()),
        }
    }
}

/// An OS/architecture/variant triple as in OCI image indexes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this program runs on (linux/amd64 on x86_64, linux/arm64 on aarch64).
    pub fn host() -> Platform {
        Platform {
            os: std::env::consts::OS.to_string(),
            arch: normalize_arch(std::env::consts::ARCH),
            variant: None,
        }
    }

    /// Parse `os/arch[/variant]`, e.g. `linux/arm64/v8`. Architecture aliases (`x86_64`,
    /// `aarch64`) are normalized to their OCI names.
    pub fn parse(s: &str) -> Result<Platform, OciError> {
        let bad = |reason: &str| OciError::BadPlatform {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = s.trim().split('/').collect();
        if parts.len() < 2 || parts.len() > 3 {
            return Err(bad("expected two or three parts separated by /"));
        }
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("a part is empty"));
        }
        let ok = |p: &str| {
            p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        };
        if !parts.iter().all(|p| ok(p)) {
            return Err(bad("only letters, digits, '.', '_' and '-' are allowed"));
        }
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            arch: normalize_arch(&parts[1].to_ascii_lowercase()),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        })
    }

    /// Does an image for `os/arch/variant` run here? A missing wanted variant accepts any;
    /// arm64's implicit variant is v8.
    pub fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        let arch = normalize_arch(arch);
        if !self.os.eq_ignore_ascii_case(os) || self.arch != arch {
            return false;
        }
        match &self.variant {
            None => true,
            Some(want) => {
                let have = variant
                    .filter(|v| !v.is_empty())
                    .map(str::to_ascii_lowercase)
                    .or_else(|| default_variant(&arch));
                have.as_deref() == Some(want.as_str())
            }
        }
    }
}

fn default_variant(arch: &str) -> Option<String> {
    (arch == "arm64").then(|| "v8".to_string())
}

fn normalize_arch(a: &str) -> String {
    match a {
        "x86_64" | "x86-64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        "x86" | "i386" | "i686" => "386".into(),
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le".into(),
        "loongarch64" => "loong64".into(),
        other => other.into(),
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Platform {
    type Err = OciError;
    fn from_str(s: &str) -> Result<Self, OciError> {
        Platform::parse(s)
    }
}

/// One layer blob, present and verified in the CAS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub digest: Digest,
    /// As the manifest says (registry, OCI archive) or as sniffed (docker-archive, directory):
    /// `...tar`, `...tar+gzip`, `...tar+zstd` (OCI or Docker spelling).
    pub media_type: String,
    pub size: u64,
}

/// The result of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// In application order (lowest first), all present in the CAS and verified.
    pub layers: Vec<Layer>,
    /// The image config blob (also stored in the CAS), if the source has one.
    pub config: Option<Digest>,
    /// The platform of the image, e.g. `linux/amd64`.
    pub platform: String,
    /// Canonical description of what was imported, pinned by digest where the source has
    /// one, e.g. `docker://127.0.0.1:5000/test/bb:latest@sha256:...`.
    pub source: String,
    /// Digest of the platform's image manifest (registry and OCI archive sources).
    pub manifest: Option<Digest>,
}

/// Progress of a pull (an import's first step). `total` is 0 when unknown (a directory being tarred).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullProgress {
    Layer {
        index: usize,
        count: usize,
        digest: String,
        done: u64,
        total: u64,
    },
    Message(String),
}

/// Import `source` into `cas`, choosing `platform` from multi-platform images.
pub async fn pull(
    source: &Source,
    cas: &Cas,
    platform: &Platform,
    progress: &(dyn Fn(PullProgress) + Send + Sync),
) -> Result<Pulled, OciError> {
    match source {
        Source::Registry {
            reference,
            insecure,
            auth,
        } => registry::pull(reference, *insecure, auth.as_ref(), cas, platform, progress).await,
        Source::OciArchive(path) => {
            let (path, cas, platform) = (absolute(path), cas.clone(), platform.clone());
            run_blocking(progress, move |r| archive::pull_oci_archive(&path, &cas, &platform, r)).await
        }
        Source::DockerArchive(path) => {
            let (path, cas, platform) = (absolute(path), cas.clone(), platform.clone());
            run_blocking(progress, move |r| {
                archive::pull_docker_archive(&path, &cas, &platform, r)
            })
            .await
        }
        Source::Directory(path) => {
            let (path, cas, platform) = (absolute(path), cas.clone(), platform.clone());
            run_blocking(progress, move |r| dir::pull_directory(&path, &cas, &platform, r)).await
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

// ---------------------------------------------------------------------------------------
// Blocking work with progress and cancellation.

/// Handed to blocking import code: sends progress to the async side, tells of cancellation.
pub(crate) struct Reporter {
    tx: Option<tokio::sync::mpsc::UnboundedSender<PullProgress>>,
    cancel: Arc<AtomicBool>,
}

impl Reporter {
    /// A reporter that reports nowhere (for synchronous callers and tests).
    pub(crate) fn silent() -> Reporter {
        Reporter {
            tx: None,
            cancel: Arc::default(),
        }
    }

    pub(crate) fn send(&self, p: PullProgress) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(p);
        }
    }

    pub(crate) fn check(&self) -> Result<(), OciError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(OciError::Cancelled)
        } else {
            Ok(())
        }
    }
}

struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn run_blocking<T, F>(progress: &(dyn Fn(PullProgress) + Send + Sync), f: F) -> Result<T, OciError>
where
    T: Send + 'static,
    F: FnOnce(&Reporter) -> Result<T, OciError> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(cancel.clone());
    let handle = tokio::task::spawn_blocking(move || {
        let reporter = Reporter { tx: Some(tx), cancel };
        f(&reporter)
    });
    // The sender lives in the blocking closure: the channel closes when it returns.
    while let Some(p) = rx.recv().await {
        progress(p);
    }
    match handle.await {
        Ok(r) => r,
        Err(e) if e.is_panic() => Err(OciError::Internal(format!("the import task panicked: {e}"))),
        Err(e) => Err(OciError::Internal(format!("the import task failed: {e}"))),
    }
}

/// Copy exactly `size` bytes from `src` to `dst` (and `tee`, if any), reporting progress as
/// layer `index` of `count`. A short source is an error (the blob is truncated).
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_exact(
    src: &mut dyn Read,
    dst: &mut dyn Write,
    mut tee: Option<&mut dyn Write>,
    size: u64,
    reporter: &Reporter,
    index: usize,
    count: usize,
    digest: &str,
) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let mut last = 0u64;
    let layer = |done| PullProgress::Layer {
        index,
        count,
        digest: digest.to_string(),
        done,
        total: size,
    };
    reporter.send(layer(0));
    while done < size {
        if reporter.check().is_err() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "import cancelled"));
        }
        let want = (size - done).min(buf.len() as u64) as usize;
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("blob ends after {done} of {size} bytes"),
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        if let Some(t) = tee.as_mut() {
            t.write_all(&buf[..n])?;
        }
        done += n as u64;
        if done - last >= PROGRESS_STEP && done < size {
            last = done;
            reporter.send(layer(done));
        }
    }
    reporter.send(layer(size));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Manifests, indexes and configs (OCI and Docker schema 2 share these shapes).

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<PlatformJson>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    fn is_index(&self) -> bool {
        self.media_type == MEDIA_TYPE_OCI_INDEX || self.media_type == MEDIA_TYPE_DOCKER_LIST
    }

    /// Index entries that are not runnable images: BuildKit attestations and the like.
    fn is_attachment(&self) -> bool {
        let annotated = self
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("vnd.docker.reference.type"));
        let unknown = self
            .platform
            .as_ref()
            .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown");
        annotated || unknown
    }

    /// The sha256 digest as the CAS names it.
    pub(crate) fn cas_digest(&self, image: &str) -> Result<Digest, OciError> {
        if !self.digest.starts_with("sha256:") {
            return Err(OciError::Unsupported {
                image: image.to_string(),
                reason: format!(
                    "blob {} uses a digest algorithm other than sha256, which the store does not support",
                    self.digest
                ),
            });
        }
        self.digest.parse().map_err(|_| OciError::BadManifest {
            image: image.to_string(),
            what: "a descriptor".into(),
            reason: format!("{:?} is not a valid sha256 digest", self.digest),
        })
    }

    pub(crate) fn ref_name(&self) -> Option<&str> {
        self.annotations
            .as_ref()?
            .get("org.opencontainers.image.ref.name")
            .map(String::as_str)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PlatformJson {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl PlatformJson {
    fn describe(&self) -> String {
        describe_platform(&self.os, &self.architecture, self.variant.as_deref())
    }
}

fn describe_platform(os: &str, arch: &str, variant: Option<&str>) -> String {
    match variant {
        Some(v) if !v.is_empty() => format!("{os}/{arch}/{v}"),
        _ => format!("{os}/{arch}"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDocument {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// A parsed manifest or index.
#[derive(Debug, Clone)]
pub(crate) enum Document {
    Index(Vec<Descriptor>),
    Manifest {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

pub(crate) fn parse_document(bytes: &[u8], image: &str, what: &str) -> Result<Document, OciError> {
    let bad = |reason: String| OciError::BadManifest {
        image: image.to_string(),
        what: what.to_string(),
        reason,
    };
    let raw: RawDocument = serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid JSON ({e})")))?;
    match raw.schema_version {
        Some(2) => {}
        Some(1) => {
            return Err(OciError::Unsupported {
                image: image.to_string(),
                reason: "it uses the obsolete Docker schema 1 manifest; push it again with a current docker or skopeo"
                    .into(),
            })
        }
        Some(v) => return Err(bad(format!("unknown schemaVersion {v}"))),
        None => return Err(bad("no schemaVersion".into())),
    }
    let mt = raw.media_type.as_deref().unwrap_or("");
    let is_index =
        mt == MEDIA_TYPE_OCI_INDEX || mt == MEDIA_TYPE_DOCKER_LIST || (mt.is_empty() && raw.manifests.is_some());
    if is_index {
        return Ok(Document::Index(raw.manifests.unwrap_or_default()));
    }
    if !(mt.is_empty() || mt == MEDIA_TYPE_OCI_MANIFEST || mt == MEDIA_TYPE_DOCKER_MANIFEST) {
        return Err(OciError::Unsupported {
            image: image.to_string(),
            reason: format!("{what} has media type {mt:?}, which is not an image manifest or index"),
        });
    }
    let config = raw.config.ok_or_else(|| bad("no config descriptor".into()))?;
    if !(config.media_type.is_empty()
        || config.media_type == MEDIA_TYPE_OCI_CONFIG
        || config.media_type == MEDIA_TYPE_DOCKER_CONFIG)
    {
        return Err(OciError::Unsupported {
            image: image.to_string(),
            reason: format!(
                "its config has media type {:?}: this is an OCI artifact, not a container image",
                config.media_type
            ),
        });
    }
    let layers = raw.layers.unwrap_or_default();
    for l in &layers {
        let m = l.media_type.as_str();
        let layerish = m.is_empty() || m.contains(".layer.") || m.contains(".rootfs.diff.") || m.contains(".layer.v1.");
        if !layerish {
            return Err(OciError::Unsupported {
                image: image.to_string(),
                reason: format!(
                    "layer {} has media type {m:?}, which is not a filesystem layer",
                    l.digest
                ),
            });
        }
    }
    Ok(Document::Manifest { config, layers })
}

/// Pick the entry of an index for `wanted`. Entries without a platform count only when they
/// are the sole runnable entry (single-image OCI layouts written by skopeo/umoci).
pub(crate) fn select_manifest<'a>(
    entries: &'a [Descriptor],
    wanted: &Platform,
    image: &str,
) -> Result<&'a Descriptor, OciError> {
    let runnable: Vec<&Descriptor> = entries.iter().filter(|d| !d.is_attachment()).collect();
    if runnable.is_empty() {
        return Err(OciError::BadManifest {
            image: image.to_string(),
            what: "the image index".into(),
            reason: "it lists no image manifests".into(),
        });
    }
    if runnable.len() == 1 && runnable[0].platform.is_none() {
        return Ok(runnable[0]);
    }
    let matching: Vec<&Descriptor> = runnable
        .iter()
        .copied()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| wanted.matches(&p.os, &p.architecture, p.variant.as_deref()))
        })
        .collect();
    // Without a wanted variant, prefer an entry without one (the baseline), else the first.
    let best = matching
        .iter()
        .find(|d| wanted.variant.is_some() || d.platform.as_ref().is_some_and(|p| p.variant.is_none()))
        .or(matching.first());
    if let Some(d) = best {
        return Ok(d);
    }
    let available: Vec<String> = runnable
        .iter()
        .map(|d| {
            d.platform
                .as_ref()
                .map(PlatformJson::describe)
                .unwrap_or_else(|| "(unspecified)".into())
        })
        .collect();
    Err(OciError::NoPlatform {
        image: image.to_string(),
        wanted: wanted.to_string(),
        available: available.join(", "),
    })
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ImageConfig {
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ImageConfig {
    pub(crate) fn parse(bytes: &[u8], image: &str) -> Result<ImageConfig, OciError> {
        serde_json::from_slice(bytes).map_err(|e| OciError::BadManifest {
            image: image.to_string(),
            what: "the image config".into(),
            reason: format!("invalid JSON ({e})"),
        })
    }

    /// `os/arch[/variant]` if the config says.
    pub(crate) fn platform(&self) -> Option<String> {
        match (&self.os, &self.architecture) {
            (Some(os), Some(arch)) if !os.is_empty() && !arch.is_empty() => {
                Some(describe_platform(os, arch, self.variant.as_deref()))
            }
            _ => None,
        }
    }

    /// Refuse an image built for another platform than `wanted`.
    pub(crate) fn check_platform(&self, wanted: &Platform, image: &str) -> Result<(), OciError> {
        match (&self.os, &self.architecture) {
            (Some(os), Some(arch)) if !os.is_empty() && !arch.is_empty() => {
                if wanted.matches(os, arch, self.variant.as_deref()) {
                    Ok(())
                } else {
                    Err(OciError::WrongPlatform {
                        image: image.to_string(),
                        wanted: wanted.to_string(),
                        actual: self.platform().unwrap_or_default(),
                    })
                }
            }
            _ => Ok(()),
        }
    }
}

/// The platform string a [`Pulled`] reports: the index entry's, else the config's, else the
/// requested one.
pub(crate) fn reported_platform(entry: Option<&PlatformJson>, config: &ImageConfig, wanted: &Platform) -> String {
    entry
        .map(PlatformJson::describe)
        .or_else(|| config.platform())
        .unwrap_or_else(|| wanted.to_string())
}

pub(crate) fn cas_err(what: impl Into<String>, image: &str) -> impl FnOnce(CasError) -> OciError + '_ {
    let what = what.into();
    move |source| OciError::Cas {
        what,
        image: image.to_string(),
        source: Box::new(source),
    }
}

pub(crate) fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> OciError + 'a {
    move |source| OciError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Media type of a layer from its first bytes (for docker-archive layers, whose manifest
/// does not say).
pub(crate) fn sniff_layer_media_type(head: &[u8]) -> &'static str {
    if head.starts_with(&[0x1f, 0x8b]) {
        MEDIA_TYPE_LAYER_GZIP
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        MEDIA_TYPE_LAYER_ZSTD
    } else {
        MEDIA_TYPE_LAYER_TAR
    }
}
