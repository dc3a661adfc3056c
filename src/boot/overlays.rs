//! Overlays on the boot side: a node's system and runtime overlay archives, built from
//! the boot view on first request and cached (see `overlay::build`).
//!
//! Design notes:
//! - **Only the view.** The overlay catalog (name → tree digest) comes with the
//!   [`BootView`]; the trees are CAS blobs, read once per digest and kept. Building
//!   never touches Raft, so a head without a majority still serves overlays.
//! - **One generation per node set.** The shared template data (`AllNodes`, the
//!   head's settings) is rebuilt only when nodes or profiles change, not on every
//!   applied entry (DHCP leases move the applied index all the time).
//! - **CPU off the async threads.** A build renders templates and compresses; the
//!   HTTP handler runs it on the blocking pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::view::{BootNode, BootView};
use crate::cas::{Cas, CasError};
use crate::model::Digest;
use crate::overlay::build::{BuildError, Builder, Compiled, Generation, NodeArchive, OverlayKind};
use crate::overlay::render::{AccessPolicy, BuildInfo, ClusterFiles, FileAccess, ServerConf};
use crate::overlay::tree::OverlayTree;

/// Why a node's overlay could not be built here.
#[derive(Debug, thiserror::Error)]
pub enum OverlayServeError {
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The tree's blob is not on this head (yet): the caller starts a peer fetch.
    #[error("overlay {name} (tree {digest}) is not on this head yet; it has been requested from a peer head — retry, or let the node use the next head")]
    TreeMissing { name: String, digest: Digest },
    /// A layer of the node's image is not on this head (yet) and the node's overlays read
    /// image files (`IncludeFrom`): the caller starts a peer fetch.
    #[error("image {image}: layer {digest} is not on this head yet (the node's overlays read files of the image); it has been requested from a peer head — retry, or let the node use the next head")]
    LayerMissing { image: String, digest: Digest },
    #[error("overlay {name}: reading its tree {digest}: {source}")]
    Tree {
        name: String,
        digest: Digest,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Builds and caches the overlay archives this head serves.
pub struct BootOverlays {
    /// This head (its own address goes first in `Heads`).
    head_id: u64,
    builder: Builder,
    cas: Cas,
    server: ServerConf,
    trees: Mutex<HashMap<Digest, Arc<OverlayTree>>>,
    /// The generation for the view's node set (`BootView::nodes_version`).
    generation: Mutex<Option<(Digest, Arc<Generation>)>>,
    /// Where the cluster's replicated host files (SSH host keys) are handed to `Include`.
    cluster_files: Option<Arc<ClusterFiles>>,
    /// Warewulf's config dir (`/etc/warewulf`): the SSH host keys are `<it>/keys/<name>`.
    config_dir: String,
    /// The cluster CA's certificate (PEM), `ClusterCa` in templates: the `wwclient`
    /// overlay writes it for `https://` heads. `None` on an `insecure` head.
    cluster_ca: Option<String>,
}

impl std::fmt::Debug for BootOverlays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootOverlays")
            .field("builder", &self.builder)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Map inserts and lookups only: a panic cannot leave them half-done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BootOverlays {
    /// `server`: the head's settings as templates see them (warewulf.conf's form).
    pub fn new(
        head_id: u64,
        cas: Cas,
        server: ServerConf,
        access: Arc<dyn FileAccess>,
        policy: AccessPolicy,
    ) -> BootOverlays {
        BootOverlays {
            head_id,
            config_dir: policy.config_dir.clone(),
            builder: Builder::new(access, policy),
            cas,
            server,
            trees: Mutex::default(),
            generation: Mutex::default(),
            cluster_files: None,
            cluster_ca: None,
        }
    }

    /// Give templates the cluster CA's certificate as `ClusterCa`.
    pub fn with_cluster_ca(mut self, pem: Option<String>) -> BootOverlays {
        self.cluster_ca = pem;
        self
    }

    /// Serve the cluster's SSH host keys to `Include` through `files` (the same value
    /// given to [`BootOverlays::new`] as `access`, or one wrapped by it).
    pub fn with_cluster_files(mut self, files: Arc<ClusterFiles>) -> BootOverlays {
        self.cluster_files = Some(files);
        self
    }

    pub fn builder(&self) -> &Builder {
        &self.builder
    }

    pub fn server(&self) -> &ServerConf {
        &self.server
    }

    /// The shared template data for `view`'s nodes (made once per node set and head
    /// list). Besides Warewulf's variables every node gets `Heads`: the base URLs of
    /// the heads (this one first, at its address in `ipaddr`), which `wwclient`'s
    /// config lists.
    pub fn generation(&self, view: &BootView) -> Arc<Generation> {
        let ip = self.server.derived().ipaddr;
        let me = (!ip.is_empty()).then(|| format!("{ip}:{}", self.server.warewulf.port));
        // Where wwclient fetches: HTTPS at heads that serve it (`https_listen`).
        let heads: Vec<String> = view
            .head_urls_by_id(self.head_id, me.as_deref())
            .into_iter()
            .map(|(id, u)| view.agent_url(id, &u))
            .collect();
        // `Racks`: each rack's network and heads (at their rack addresses, in the rack's
        // order), so `wwclient.conf` lists only the heads of the node's own rack.
        let racks: Vec<serde_json::Value> = view
            .racks
            .iter()
            .map(|(name, r)| {
                let urls: Vec<String> = view
                    .rack_urls(r)
                    .into_iter()
                    .map(|(id, u)| view.agent_url(id, &u))
                    .collect();
                serde_json::json!({"name": name, "network": r.network.to_string(), "heads": urls})
            })
            .collect();
        let mut key = view.nodes_version.0.to_vec();
        key.extend(heads.join("\n").bytes());
        key.extend(serde_json::to_vec(&racks).unwrap_or_default());
        // The SSH keys: a change makes a new generation (a rebuild of every node that
        // reads them), and `Include` of `keys/…` reads the cluster's copy.
        let keys_digest =
            Digest::of(&serde_json::to_vec(&(&*view.ssh_host_keys, &*view.root_keys)).unwrap_or_default());
        key.extend(keys_digest.0);
        // The images' layers: a re-imported image makes a new generation, whose builds of
        // overlays that call `IncludeFrom` are keyed by it (see `Generation::with_images`).
        let images_digest = images_digest(view);
        key.extend(images_digest.0);
        let key = Digest::of(&key);
        let mut g = lock(&self.generation);
        if let Some((v, gen)) = g.as_ref() {
            if *v == key {
                return gen.clone();
            }
        }
        let prev = g.as_ref().map(|(_, p)| p.clone());
        if let Some(files) = &self.cluster_files {
            files.set_images(Arc::new(
                view.images
                    .iter()
                    .map(|(name, e)| (name.clone(), e.layers.clone()))
                    .collect(),
            ));
            let dir = self.config_dir.trim_end_matches('/');
            files.set(Arc::new(
                view.ssh_host_keys
                    .iter()
                    .map(|(name, content)| (format!("{dir}/keys/{name}"), content.clone()))
                    .collect(),
            ));
        }
        let gen = Arc::new(
            Generation::next(
                prev.as_deref(),
                &self.server,
                view.nodes.iter().map(|(n, b)| (n.as_str(), &b.conf, b.version)),
                &BuildInfo::now(),
                [
                    ("Heads".to_owned(), serde_json::json!(heads)),
                    ("Racks".to_owned(), serde_json::Value::Array(racks)),
                    ("RootKeys".to_owned(), serde_json::json!(*view.root_keys)),
                    ("SshKeysDigest".to_owned(), serde_json::json!(keys_digest.to_string())),
                ]
                .into_iter()
                .chain(
                    self.cluster_ca
                        .iter()
                        .map(|pem| ("ClusterCa".to_owned(), serde_json::json!(pem))),
                )
                .collect(),
            )
            .with_images(images_digest),
        );
        *g = Some((key, gen.clone()));
        gen
    }

    /// Overlay `name` of the view's catalog, compiled; `None` when the catalog has no
    /// such overlay.
    pub fn compiled(&self, view: &BootView, name: &str) -> Option<Result<Arc<Compiled>, OverlayServeError>> {
        let digest = *view.overlays.get(name)?;
        let tree = match self.tree(name, digest) {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        Some(self.builder.compiled(name, digest, || tree).map_err(Into::into))
    }

    /// The tree with `digest`, from memory or the CAS.
    pub fn tree(&self, name: &str, digest: Digest) -> Result<Arc<OverlayTree>, OverlayServeError> {
        if let Some(t) = lock(&self.trees).get(&digest) {
            return Ok(t.clone());
        }
        // Verified (a corrupt blob is quarantined and then missing, like any blob).
        let read = self.cas.open_verified(&digest).and_then(|mut f| {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut bytes).map_err(|source| CasError::Io {
                path: self.cas.path(&digest),
                source,
            })?;
            Ok(bytes)
        });
        let bytes = match read {
            Ok(b) => b,
            Err(CasError::Missing(_)) => {
                return Err(OverlayServeError::TreeMissing {
                    name: name.to_owned(),
                    digest,
                })
            }
            Err(e) => {
                return Err(OverlayServeError::Tree {
                    name: name.to_owned(),
                    digest,
                    source: Box::new(e),
                })
            }
        };
        let tree = OverlayTree::from_canonical(&bytes).map_err(|e| OverlayServeError::Tree {
            name: name.to_owned(),
            digest,
            source: Box::new(e),
        })?;
        let tree = Arc::new(tree);
        lock(&self.trees).insert(digest, tree.clone());
        Ok(tree)
    }

    /// Build (or find cached) `node`'s `kind` overlay archive.
    pub fn build(
        &self,
        view: &BootView,
        node: &BootNode,
        kind: OverlayKind,
    ) -> Result<Arc<NodeArchive>, OverlayServeError> {
        let generation = self.generation(view);
        // Resolve every overlay first: a tree this head lacks is reported as such (the
        // caller fetches it from a peer), not as a build error.
        let mut compiled: HashMap<&str, Arc<Compiled>> = HashMap::new();
        for name in kind.names(&node.conf) {
            match self.compiled(view, name) {
                None => {} // the build names the missing overlay
                Some(Ok(c)) => {
                    compiled.insert(name, c);
                }
                Some(Err(e)) => return Err(e),
            }
        }
        // Overlays that read the node's image (`syncuser`) need its layers here: a head
        // that lacks one says so (the caller fetches it from a peer), as for a tree.
        if compiled.values().any(|c| c.reads_images()) {
            let image = node.conf.image_name.as_deref().unwrap_or_default();
            if let Some(e) = view.images.get(image) {
                if let Some(l) = e.layers.iter().find(|l| !self.cas.contains(&l.digest)) {
                    return Err(OverlayServeError::LayerMissing {
                        image: image.to_owned(),
                        digest: l.digest,
                    });
                }
            }
        }
        let resolve = |name: &str| compiled.get(name).cloned().map(Ok);
        Ok(self
            .builder
            .build(&generation, &node.name, &node.conf, kind, &resolve)?)
    }

    /// Drop cached builds of deleted nodes and trees no longer in the catalog.
    pub fn retain(&self, view: &BootView) {
        self.builder.retain(
            |n| view.nodes.contains_key(n),
            |name, d| view.overlays.get(name) == Some(d),
        );
        let live: std::collections::HashSet<Digest> = view.overlays.values().copied().collect();
        lock(&self.trees).retain(|d, _| live.contains(d));
    }
}

/// Every image's name and layer digests, as one digest.
fn images_digest(view: &BootView) -> Digest {
    let mut text = Vec::with_capacity(view.images.len() * 160);
    for (name, e) in &view.images {
        text.extend_from_slice(name.as_bytes());
        text.push(0);
        text.extend_from_slice(crate::image::files::image_key(&e.layers).0.as_slice());
    }
    Digest::of(&text)
}

/// Keep `overlays`' caches to the cluster: after every new view, drop builds of
/// deleted nodes and trees the catalog no longer names. Ends with the view's publisher.
pub fn forget_stale(overlays: Arc<BootOverlays>, mut view: super::view::ViewRx) {
    tokio::spawn(async move {
        while view.changed().await.is_ok() {
            let v = view.borrow_and_update().clone();
            overlays.retain(&v);
        }
    });
}

/// What [`build_all`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BuildReport {
    /// Nodes asked for.
    pub nodes: u64,
    /// Archives rendered now, and those that were current already.
    pub built: u64,
    pub cached: u64,
    /// `node kind: why` for each archive that failed.
    pub failed: Vec<String>,
    /// Bytes of all the archives.
    pub bytes: u64,
    pub elapsed: std::time::Duration,
}

/// Build the system and runtime overlays of `nodes` (every node when empty) into the
/// cache, on every core (`wwctl overlay build`; a boot storm then renders nothing).
pub fn build_all(ov: &BootOverlays, view: &BootView, nodes: &[String]) -> BuildReport {
    let started = std::time::Instant::now();
    let names: Vec<&BootNode> = if nodes.is_empty() {
        view.nodes.values().map(|n| &**n).collect()
    } else {
        nodes.iter().filter_map(|n| view.nodes.get(n)).map(|n| &**n).collect()
    };
    // Compile once, before the threads race for it.
    ov.generation(view);
    let before = ov.builder.stats();
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let chunk = names.len().div_ceil(workers).max(1);
    let results: Vec<(Vec<String>, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let (mut failed, mut bytes) = (Vec::new(), 0u64);
                    for n in part {
                        for kind in [OverlayKind::System, OverlayKind::Runtime] {
                            if kind.names(&n.conf).is_empty() {
                                continue;
                            }
                            match ov.build(view, n, kind) {
                                Ok(a) => bytes += a.len(),
                                Err(e) => failed.push(format!("{} {}: {e}", n.name, kind.as_str())),
                            }
                        }
                    }
                    (failed, bytes)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("build threads do not panic"))
            .collect()
    });
    let after = ov.builder.stats();
    let mut report = BuildReport {
        nodes: names.len() as u64,
        built: after.builds - before.builds,
        cached: after.hits - before.hits,
        elapsed: started.elapsed(),
        ..Default::default()
    };
    for (f, b) in results {
        report.failed.extend(f);
        report.bytes += b;
    }
    report
}
