//! # Images: import, unpack, kernel, build
//!
//! An image is what a node boots: a root filesystem flattened from OCI layers,
//! packed as `cpio` newc + gzip, plus the kernel found in it.
//!
//! | part | job |
//! |---|---|
//! | [`oci`] | sources (registry, oci-archive, docker-archive, directory) → layer blobs in the CAS |
//! | [`layers`] | safe layer application onto a root directory (whiteouts, no escapes) |
//! | [`files`] | one file of an image read from its layers in the CAS, cached (`IncludeFrom`) |
//! | [`kernel`] | kernel detection like Warewulf |
//! | [`build`] | root directory → deterministic `cpio.gz`, parallel single-member gzip |
//! | [`Images`] (here) | the head-side orchestration and the on-disk root trees |
//!
//! Design notes:
//! - **The layers are the truth.** The catalog (Raft) names an image's layers by
//!   digest; any head can rebuild the root tree from them (fetching missing blobs
//!   from peers), so no head is special. `image exec` captures the changed tree as a
//!   new single layer, keeping that true.
//! - **Build key, not mtimes.** The artifact records the key it was built from
//!   (builder version, compression level, layer digests — the excludes file is part
//!   of the tree); `image build` skips when the key and the blob are unchanged.
//! - **Staging then swap.** A root tree is assembled in a staging directory and
//!   swapped in by rename, so a failed import never leaves half a tree under a name.
//! - One operation per image name per head at a time (a lock per name).

pub mod build;
pub mod files;
pub mod kernel;
pub mod layers;
pub mod oci;
pub mod syncuser;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::cas::{self, Cas, Digest};
use crate::cluster::{Cluster, ClusterError};
use crate::error::{Classify, ErrorKind};
use crate::state::unix_now as now;
use crate::state::{Artifact, Command, ImageCommand, ImageEntry, KernelRef, LayerRef, Query, Selector, Versioned};

/// Version of the build recipe; part of every build key.
/// Includes the gzip level and block size the builder uses: changing them changes the bytes.
const BUILDER: &str = "wulfpack-build-1/level5/block128k";
/// Marker in an image directory naming the layers its root tree was made from.
const LAYERS_MARKER: &str = "layers.lock";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {0:?} already exists; pass --force to replace it")]
    Exists(String),
    #[error("image {0:?} does not exist; see `wwctl image list`")]
    NotFound(String),
    #[error("image {0:?} is busy with another import/build/exec on this head; try again when it is done")]
    Busy(String),
    #[error(transparent)]
    Oci(#[from] oci::OciError),
    #[error(transparent)]
    Layer(#[from] layers::LayerError),
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    Build(#[from] build::BuildError),
    #[error(transparent)]
    Cas(#[from] cas::CasError),
    #[error("catalog: {0}")]
    Catalog(#[from] ClusterError),
    #[error("image {name}: {path}: {source}")]
    Io {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Syncuser(#[from] syncuser::SyncuserError),
    #[error("{0}")]
    Invalid(String),
}

/// How long a catalog read or write may wait for the cluster (an election, a lagging
/// majority) before the operation fails.
const CATALOG_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

impl Classify for ImageError {
    fn kind(&self) -> ErrorKind {
        match self {
            ImageError::Exists(_) => ErrorKind::Exists,
            ImageError::NotFound(_) => ErrorKind::NotFound,
            ImageError::Busy(_) => ErrorKind::Conflict,
            ImageError::Invalid(_) | ImageError::Layer(_) | ImageError::Oci(_) => ErrorKind::Invalid,
            ImageError::Kernel(_) | ImageError::Build(_) => ErrorKind::InUse,
            ImageError::Catalog(e) => e.kind(),
            // Conflicting ids or an image without /etc/passwd: the operator fixes the
            // head's or the image's files first.
            ImageError::Syncuser(syncuser::SyncuserError::Conflicts(_) | syncuser::SyncuserError::Read { .. }) => {
                ErrorKind::InUse
            }
            ImageError::Syncuser(_) => ErrorKind::Internal,
            ImageError::Cas(_) | ImageError::Io { .. } => ErrorKind::Internal,
        }
    }
}

/// A progress report to whoever started the operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub stage: &'static str,
    pub message: String,
    pub done: u64,
    pub total: u64,
}

/// What `import` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct ImportRequest {
    pub source: String,
    pub name: String,
    pub nohttps: bool,
    pub auth: Option<(String, String)>,
    pub platform: Option<String>,
    pub force: bool,
    pub build: bool,
    /// Make the image's user and group ids the head's before building (`--syncuser`).
    pub syncuser: bool,
}

/// Sends progress without ever blocking the work (a slow client just misses updates).
#[derive(Debug, Clone)]
pub struct Progress(Option<mpsc::Sender<Event>>);

impl Progress {
    pub fn new(tx: mpsc::Sender<Event>) -> Self {
        Progress(Some(tx))
    }
    pub fn none() -> Self {
        Progress(None)
    }
    pub fn send(&self, stage: &'static str, message: impl Into<String>, done: u64, total: u64) {
        if let Some(tx) = &self.0 {
            let _ = tx.try_send(Event {
                stage,
                message: message.into(),
                done,
                total,
            });
        }
    }
}

/// Head-side image operations.
#[derive(Clone)]
pub struct Images {
    cas: Cas,
    dir: PathBuf,
    /// The head's cluster handle: catalog reads and writes (forwarded to the leader).
    catalog: Cluster,
    /// Peers' blob routes, for layers this head lacks.
    peers: cas::http::PeerLink,
    busy: Arc<Mutex<HashMap<String, ()>>>,
    /// Open `image exec` sessions: name → token.
    sessions: Arc<Mutex<HashMap<String, String>>>,
    /// Where this head's own `/etc/passwd` and `/etc/group` are (`syncuser`), and the
    /// sources of `image mounts`: `/` in production, a directory in tests.
    host_root: PathBuf,
    /// `images.mounts` as `--bind` specs, handed to `wwctl image exec|shell`.
    exec_mounts: Vec<String>,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// Where `wwctl image exec` may run its command.
#[derive(Debug, Clone)]
pub struct ExecPrep {
    pub rootfs: PathBuf,
    pub token: String,
    pub version: u64,
    /// The head's `images.mounts` (`SOURCE:DEST[:ro|copy]`), for wwctl to bind.
    pub mounts: Vec<String>,
}

/// Name of the file beside an image's tree that holds the exec token.
pub const EXEC_TOKEN_FILE: &str = "exec.token";

/// Holds the per-name lock; released on drop.
struct Busy {
    map: Arc<Mutex<HashMap<String, ()>>>,
    name: String,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.map.lock().expect("busy map").remove(&self.name);
    }
}

impl Images {
    /// `data_dir`: the head's data directory; `catalog`: its cluster handle.
    pub fn new(cas: Cas, data_dir: &Path, catalog: Cluster) -> Self {
        Images {
            cas,
            dir: data_dir.join("images"),
            catalog,
            peers: cas::http::PeerLink::default(),
            busy: Arc::default(),
            sessions: Arc::default(),
            host_root: PathBuf::from("/"),
            exec_mounts: Vec::new(),
        }
    }

    /// Reach the peers' blob routes through `link` (the head's TLS identity).
    pub fn with_peers(mut self, link: cas::http::PeerLink) -> Self {
        self.peers = link;
        self
    }

    /// Read the head's account files under `root` instead of `/`.
    pub fn with_host_root(mut self, root: PathBuf) -> Self {
        self.host_root = root;
        self
    }

    /// Paths of this head to bind into an image during `exec` (`SOURCE:DEST[:ro|copy]`).
    pub fn with_exec_mounts(mut self, mounts: Vec<String>) -> Self {
        self.exec_mounts = mounts;
        self
    }

    fn lock(&self, name: &str) -> Result<Busy, ImageError> {
        let mut m = self.busy.lock().expect("busy map");
        if m.contains_key(name) {
            return Err(ImageError::Busy(name.into()));
        }
        m.insert(name.into(), ());
        Ok(Busy {
            map: self.busy.clone(),
            name: name.into(),
        })
    }

    /// Where an image's root tree lives on this head.
    pub fn rootfs(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("rootfs")
    }

    fn io(&self, name: &str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
        let (name, path) = (name.to_string(), path.to_path_buf());
        move |source| ImageError::Io { name, path, source }
    }

    async fn entry(&self, name: &str) -> Result<Versioned<ImageEntry>, ImageError> {
        let q = Query::images(Selector::Names(vec![name.into()]));
        let (r, _) = self
            .catalog
            .read(&q, true, 0, Instant::now() + CATALOG_DEADLINE)
            .await?;
        r.images
            .get(name)
            .cloned()
            .ok_or_else(|| ImageError::NotFound(name.into()))
    }

    /// HTTP addresses of the other heads, for blob fetches.
    fn peers(&self) -> Vec<String> {
        self.catalog
            .state()
            .read(|s| self.peers.bases(s.cluster.heads.values()))
    }

    /// Import an image from a source and (by default) build it.
    pub async fn import(&self, req: ImportRequest, progress: Progress) -> Result<ImageEntry, ImageError> {
        crate::model::validate_name("image", &req.name).map_err(|e| ImageError::Invalid(e.to_string()))?;
        let _busy = self.lock(&req.name)?;
        let existing = match self.entry(&req.name).await {
            Ok(v) => Some(v.version),
            Err(ImageError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        if existing.is_some() && !req.force {
            return Err(ImageError::Exists(req.name));
        }
        let source = oci::Source::parse(&req.source, req.nohttps, req.auth.clone())?;
        let platform = match &req.platform {
            Some(p) if !p.is_empty() => oci::Platform::parse(p)?,
            _ => oci::Platform::host(),
        };
        progress.send("pull", format!("pulling {}", req.source), 0, 0);
        let p2 = progress.clone();
        let pulled = oci::pull(&source, &self.cas, &platform, &move |ev| match ev {
            oci::PullProgress::Layer {
                index,
                count,
                digest,
                done,
                total,
            } => p2.send(
                "pull",
                format!("layer {}/{} {}", index + 1, count, short(&digest)),
                done,
                total,
            ),
            oci::PullProgress::Message(m) => p2.send("pull", m, 0, 0),
        })
        .await?;
        let layers: Vec<LayerRef> = pulled.layers.iter().map(LayerRef::from).collect();
        let t = now();
        let mut entry = ImageEntry {
            source: pulled.source.clone(),
            platform: pulled.platform.clone(),
            layers,
            config: pulled.config,
            rootfs_size: 0,
            files: 0,
            artifact: None,
            kernel: None,
            kernels: vec![],
            created: t,
            updated: t,
        };
        self.assemble(&req.name, &entry.layers, &progress).await?;
        if req.syncuser {
            let report = self.syncuser_tree(&req.name, true, &progress).await?;
            if report.written {
                self.capture(&req.name, &mut entry, " +syncuser", &progress).await?;
            }
        }
        if req.build {
            self.build_into(&req.name, &mut entry, &progress).await?;
        }
        progress.send("catalog", "recording the image in the cluster catalog", 0, 0);
        self.record(&req.name, entry, existing.unwrap_or(0)).await
    }

    /// Write `entry` to the replicated catalog, conditional on the version read
    /// (0: the name must still be free), so a concurrent change is never overwritten.
    async fn record(&self, name: &str, entry: ImageEntry, expect: u64) -> Result<ImageEntry, ImageError> {
        self.catalog
            .write_within(
                Command::Image(ImageCommand::Put {
                    name: name.into(),
                    entry: Box::new(entry.clone()),
                    expect: Some(expect),
                }),
                CATALOG_DEADLINE,
            )
            .await?;
        Ok(entry)
    }

    /// Build (or confirm up to date) the artifact of an existing image.
    pub async fn build(&self, name: &str, force: bool, progress: Progress) -> Result<ImageEntry, ImageError> {
        let _busy = self.lock(name)?;
        let cur = self.entry(name).await?;
        self.build_locked(name, cur, force, &progress).await
    }

    /// [`Images::build`] with the name's lock held and its entry read.
    async fn build_locked(
        &self,
        name: &str,
        cur: Versioned<ImageEntry>,
        force: bool,
        progress: &Progress,
    ) -> Result<ImageEntry, ImageError> {
        let mut entry = cur.value.clone();
        let key = build_key(&entry.layers);
        if !force {
            if let Some(a) = &entry.artifact {
                if a.build_key == key && self.cas.contains(&a.digest) {
                    progress.send("build", "up to date", 1, 1);
                    return Ok(entry);
                }
            }
        }
        self.ensure_rootfs(name, &entry.layers, progress).await?;
        self.build_into(name, &mut entry, progress).await?;
        entry.updated = now();
        self.record(name, entry, cur.version).await
    }

    /// `wwctl image syncuser`: compare the image's user and group ids with this head's
    /// and, with `write`, make them the head's (files re-owned, passwd/group rewritten),
    /// capture the tree as the image's layer and, with `build`, rebuild.
    pub async fn syncuser(
        &self,
        name: &str,
        write: bool,
        build: bool,
        progress: Progress,
    ) -> Result<(ImageEntry, syncuser::SyncReport), ImageError> {
        let _busy = self.lock(name)?;
        // An open `image exec` has a command working in the tree; its finish captures
        // the tree and would record (or lose) these changes with its own.
        if self.sessions.lock().expect("sessions").contains_key(name) {
            return Err(ImageError::Busy(name.into()));
        }
        let cur = self.entry(name).await?;
        self.ensure_rootfs(name, &cur.value.layers, &progress).await?;
        let report = self.syncuser_tree(name, write, &progress).await?;
        if !report.written {
            // Nothing changed; `--build` still builds when the artifact is stale.
            let entry = if write && build {
                self.build_locked(name, cur, false, &progress).await?
            } else {
                cur.value
            };
            return Ok((entry, report));
        }
        let mut entry = cur.value.clone();
        self.capture(name, &mut entry, " +syncuser", &progress).await?;
        if build {
            self.build_into(name, &mut entry, &progress).await?;
        }
        entry.updated = now();
        Ok((self.record(name, entry, cur.version).await?, report))
    }

    /// Run syncuser on the image's tree (the name's lock held).
    async fn syncuser_tree(
        &self,
        name: &str,
        write: bool,
        progress: &Progress,
    ) -> Result<syncuser::SyncReport, ImageError> {
        progress.send("syncuser", "comparing user and group ids with the head's", 0, 0);
        let host_root = self.host_root.clone();
        let root = self.rootfs(name);
        let report = tokio::task::spawn_blocking(move || syncuser::syncuser(&host_root, &root, write))
            .await
            .map_err(|e| ImageError::Invalid(format!("syncuser task failed: {e}")))??;
        for w in report.passwd.warnings.iter().chain(&report.group.warnings) {
            tracing::warn!(image = name, "syncuser: {w}");
        }
        Ok(report)
    }

    /// Capture the on-disk tree as the image's only layer (the layers stay the truth),
    /// marking the source with what changed it.
    async fn capture(
        &self,
        name: &str,
        entry: &mut ImageEntry,
        mark: &str,
        progress: &Progress,
    ) -> Result<(), ImageError> {
        progress.send("capture", "capturing the changed tree", 0, 0);
        let pulled = oci::pull(
            &oci::Source::Directory(self.rootfs(name)),
            &self.cas,
            &oci::Platform::host(),
            &|_| {},
        )
        .await?;
        entry.layers = pulled.layers.iter().map(LayerRef::from).collect();
        if !entry.source.ends_with(mark) {
            entry.source.push_str(mark);
        }
        // The tree on disk is exactly the captured layer.
        let marker = self.dir.join(name).join(LAYERS_MARKER);
        fs::write(&marker, layers_text(&entry.layers)).map_err(self.io(name, &marker))
    }

    /// Kernels found in an image, newest first, and the one a node would boot.
    pub async fn kernels(&self, name: &str) -> Result<(Vec<kernel::KernelInfo>, Option<String>), ImageError> {
        let _busy = self.lock(name)?;
        let cur = self.entry(name).await?;
        self.ensure_rootfs(name, &cur.value.layers, &Progress::none()).await?;
        let root = self.rootfs(name);
        let list = tokio::task::spawn_blocking(move || kernel::list_kernels(&root))
            .await
            .map_err(|e| ImageError::Invalid(e.to_string()))??;
        Ok((list, cur.value.kernel.map(|k| k.version)))
    }

    /// Open an `exec` session: the tree is present and a token written beside it.
    pub async fn exec_prepare(&self, name: &str) -> Result<ExecPrep, ImageError> {
        let _busy = self.lock(name)?;
        if self.sessions.lock().expect("sessions").contains_key(name) {
            return Err(ImageError::Busy(name.into()));
        }
        let cur = self.entry(name).await?;
        self.ensure_rootfs(name, &cur.value.layers, &Progress::none()).await?;
        let token = Digest::of(format!("{name}-{}-{:?}", std::process::id(), SystemTime::now()).as_bytes()).hex();
        let path = self.dir.join(name).join(EXEC_TOKEN_FILE);
        fs::write(&path, &token).map_err(self.io(name, &path))?;
        self.sessions
            .lock()
            .expect("sessions")
            .insert(name.into(), token.clone());
        Ok(ExecPrep {
            rootfs: self.rootfs(name),
            token,
            version: cur.version,
            mounts: self.exec_mounts.clone(),
        })
    }

    /// Close an `exec` session: capture the changed tree as the image's only layer
    /// and rebuild, conditional on the catalog version read at prepare time.
    pub async fn exec_finish(
        &self,
        name: &str,
        token: &str,
        version: u64,
        changed: bool,
        build: bool,
        progress: Progress,
    ) -> Result<ImageEntry, ImageError> {
        {
            let mut s = self.sessions.lock().expect("sessions");
            if s.get(name).map(String::as_str) != Some(token) {
                return Err(ImageError::Invalid(format!(
                    "no open exec session for image {name:?} with that token"
                )));
            }
            s.remove(name);
        }
        let _ = fs::remove_file(self.dir.join(name).join(EXEC_TOKEN_FILE));
        let _busy = self.lock(name)?;
        let cur = self.entry(name).await?;
        if !changed {
            // The command may have touched the tree before failing: forget that the
            // tree matches the layers, so the next use reassembles it cleanly.
            let _ = fs::remove_file(self.dir.join(name).join(LAYERS_MARKER));
            return Ok(cur.value);
        }
        let mut entry = cur.value.clone();
        self.capture(name, &mut entry, " +exec", &progress).await?;
        // Without a build the archive stays the previous one; its build key no longer
        // matches the layers, so the next `image build` builds.
        if build {
            self.build_into(name, &mut entry, &progress).await?;
        }
        entry.updated = now();
        self.record(name, entry, version).await
    }

    /// Make sure this head has the root tree of `layers` under `name`.
    pub async fn ensure_rootfs(&self, name: &str, layers: &[LayerRef], progress: &Progress) -> Result<(), ImageError> {
        let marker = self.dir.join(name).join(LAYERS_MARKER);
        if fs::read_to_string(&marker).ok().as_deref() == Some(layers_text(layers).as_str())
            && self.rootfs(name).is_dir()
        {
            return Ok(());
        }
        let missing: Vec<Digest> = layers
            .iter()
            .map(|l| l.digest)
            .filter(|d| !self.cas.contains(d))
            .collect();
        if !missing.is_empty() {
            let peers = self.peers();
            for (i, d) in missing.iter().enumerate() {
                progress.send(
                    "fetch",
                    format!("layer {} from a peer head", short(&d.to_string())),
                    i as u64,
                    missing.len() as u64,
                );
                cas::http::fetch_from_peers(&self.cas, self.peers.client(), d, &peers).await?;
            }
        }
        self.assemble(name, layers, progress).await
    }

    /// Apply `layers` into a staging tree, then swap it in as the image's tree.
    async fn assemble(&self, name: &str, layers: &[LayerRef], progress: &Progress) -> Result<(), ImageError> {
        let this = self.clone();
        let name = name.to_string();
        let layers = layers.to_vec();
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || this.assemble_blocking(&name, &layers, &progress))
            .await
            .map_err(|e| ImageError::Invalid(format!("unpack task failed: {e}")))?
    }

    fn assemble_blocking(&self, name: &str, layers: &[LayerRef], progress: &Progress) -> Result<(), ImageError> {
        fs::create_dir_all(&self.dir).map_err(self.io(name, &self.dir))?;
        let staging = self.dir.join(format!(".staging-{name}-{}", std::process::id()));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(self.io(name, &staging))?;
        }
        let root = staging.join("rootfs");
        fs::create_dir_all(&root).map_err(self.io(name, &root))?;
        let opts = layers::ApplyOptions { same_owner: is_root() };
        let result = (|| {
            for (i, l) in layers.iter().enumerate() {
                progress.send(
                    "unpack",
                    format!("layer {}/{}", i + 1, layers.len()),
                    i as u64,
                    layers.len() as u64,
                );
                let f = self.cas.open_verified(&l.digest)?;
                let comp = layers::Compression::from_media_type(&l.media_type)?;
                layers::apply_layer(&root, std::io::BufReader::new(f), comp, &l.digest.to_string(), &opts)?;
            }
            let marker = staging.join(LAYERS_MARKER);
            fs::write(&marker, layers_text(layers)).map_err(self.io(name, &marker))?;
            Ok::<(), ImageError>(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        // Swap: old tree aside, new one in, old one removed.
        let target = self.dir.join(name);
        let old = self.dir.join(format!(".old-{name}-{}", std::process::id()));
        if target.exists() {
            fs::rename(&target, &old).map_err(self.io(name, &target))?;
        }
        fs::rename(&staging, &target).map_err(self.io(name, &target))?;
        if old.exists() {
            fs::remove_dir_all(&old).map_err(self.io(name, &old))?;
        }
        Ok(())
    }

    /// Detect the kernel and build the artifact from the on-disk tree into `entry`.
    async fn build_into(&self, name: &str, entry: &mut ImageEntry, progress: &Progress) -> Result<(), ImageError> {
        let this = self.clone();
        let name_s = name.to_string();
        let layers = entry.layers.clone();
        let task_progress = progress.clone();
        let (kernels, artifact, stats) = tokio::task::spawn_blocking(move || {
            let progress = task_progress;
            let root = this.rootfs(&name_s);
            progress.send("kernel", "looking for kernels", 0, 0);
            // Newest first; the first is what nodes boot unless they pin a version.
            let mut kernels = Vec::new();
            for k in kernel::list_kernels(&root)? {
                let d = this.cas.put_file(&root.join(&k.path))?;
                kernels.push(KernelRef {
                    digest: d,
                    version: k.version.clone(),
                    release: k.release.clone(),
                    path: k.path.to_string_lossy().into_owned(),
                    size: this.cas.size(&d)?,
                });
            }
            let opts = build::BuildOptions {
                excludes: build::read_excludes(&root)?,
                ..Default::default()
            };
            let writer = this.cas.writer()?;
            let (tx, rx) = std::sync::mpsc::channel();
            let sink = SendBack {
                inner: Some(writer),
                back: tx,
            };
            let p = progress.clone();
            let stats = build::build_cpio_gz(&root, &opts, sink, &move |done| p.send("build", "packing", done, 0))?;
            let writer = rx
                .recv()
                .map_err(|_| ImageError::Invalid("the builder did not hand back its output".into()))?;
            let digest = writer.commit(None)?;
            let artifact = Artifact {
                digest,
                size: stats.bytes_out,
                uncompressed: stats.bytes_in,
                build_key: build_key(&layers),
            };
            Ok::<_, ImageError>((kernels, artifact, stats))
        })
        .await
        .map_err(|e| ImageError::Invalid(format!("build task failed: {e}")))??;
        progress.send(
            "build",
            format!(
                "{} files, {} → {}",
                stats.files,
                human(stats.bytes_in),
                human(stats.bytes_out)
            ),
            stats.bytes_in,
            stats.bytes_in,
        );
        entry.kernel = kernels.first().cloned();
        entry.kernels = kernels;
        entry.artifact = Some(artifact);
        entry.rootfs_size = stats.bytes_in;
        entry.files = stats.files;
        Ok(())
    }
}

impl From<&oci::Layer> for LayerRef {
    fn from(l: &oci::Layer) -> LayerRef {
        LayerRef {
            digest: l.digest,
            media_type: l.media_type.clone(),
            size: l.size,
        }
    }
}

/// The builder takes its output writer by value (it runs on other threads);
/// this wrapper hands the CAS writer back when the builder drops it, so the blob
/// can be committed.
struct SendBack {
    inner: Option<cas::BlobWriter>,
    back: std::sync::mpsc::Sender<cas::BlobWriter>,
}

impl std::io::Write for SendBack {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.as_mut().expect("open").write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.as_mut().expect("open").flush()
    }
}

impl Drop for SendBack {
    fn drop(&mut self) {
        if let Some(w) = self.inner.take() {
            let _ = self.back.send(w);
        }
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn layers_text(layers: &[LayerRef]) -> String {
    layers.iter().map(|l| format!("{}\n", l.digest)).collect()
}

/// What an artifact is built from: recipe version and layers (the excludes file is
/// part of the tree, hence of the layers).
pub fn build_key(layers: &[LayerRef]) -> String {
    let mut h = Sha256::new();
    h.update(BUILDER.as_bytes());
    for l in layers {
        h.update(l.digest.to_string().as_bytes());
        h.update(b"\n");
    }
    Digest(h.finalize().into()).to_string()
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// Human-readable byte count (binary units), as `wwctl` prints sizes.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(773 * 1024 * 1024), "773.0 MiB");
    }

    #[test]
    fn build_key_follows_layers_only() {
        let l = |s: &[u8]| LayerRef {
            digest: Digest::of(s),
            media_type: "x".into(),
            size: 1,
        };
        let a = build_key(&[l(b"1"), l(b"2")]);
        assert_eq!(a, build_key(&[l(b"1"), l(b"2")]));
        assert_ne!(a, build_key(&[l(b"2"), l(b"1")]));
        assert_ne!(a, build_key(&[l(b"1")]));
    }
}
