//! Per-node overlay builds: a node's system or runtime overlays rendered for it and
//! packed as one `cpio` newc archive in one gzip member.
//!
//! Design notes:
//! - **Cached by content.** A build's key is the digest of everything it reads: the
//!   kind, the node's overlay list with each overlay's tree digest, the node's merged
//!   fields, the head's settings, and — only when one of those overlays has a template
//!   that reads `AllNodes` — every node's fields. Equal key, no render: a boot storm
//!   renders each node once, and a change to one node rebuilds that node plus exactly
//!   the nodes whose overlays read all nodes (`hosts`, `host`). Whether a template reads
//!   `AllNodes` is decided from its variables (Tera lists the names a template uses),
//!   so it errs towards rebuilding. Likewise an overlay that calls `IncludeFrom` is
//!   keyed by the images' contents (their layer digests): a re-imported image rebuilds
//!   the nodes whose overlays read image files, and no others.
//! - **One render per key, whatever the concurrency.** Builds of one node and kind are
//!   serialized by a per-key lock; the second caller finds the first one's result.
//! - **The shared part is compressed once.** The files that are not templates (a
//!   multi-megabyte `wwclient` binary, scripts) are the same for every node with the
//!   same overlay list. They go first in the archive and are deflated once, ended with a
//!   full flush; each node's rendered files are deflated after them as a separate run of
//!   blocks, and the gzip member's CRC and length are combined from the two parts. The
//!   result is still one gzip member holding one newc archive (what the kernel, iPXE and
//!   `wwclient` expect), but a node costs only its own rendered bytes. The shared part
//!   is itself joined from runs ended by full flushes: the trees' files (cached per
//!   overlay list) and each shared template's output (`hosts`), deflated once and kept
//!   with the output, so after a change `hosts` is deflated once for every list that
//!   includes it and the trees' files not at all.
//! - **Nothing escapes.** Rendered names are validated like every overlay path; a
//!   `file` output lands beside its template.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use flate2::{Compress, Compression, FlushCompress};
use sha2::{Digest as _, Sha256};

use super::archive::{self, ArchiveError};
use super::render::{AccessPolicy, BuildData, BuildInfo, FileAccess, RenderError, ServerConf, Templates};
use super::tree::{Entry, EntryKind, OverlayTree};
use crate::model::{Digest, NodeConf};

/// Which of a node's overlay lists a build is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OverlayKind {
    /// Built at boot and unpacked by the kernel over the image (`system overlay`).
    System,
    /// Fetched again by `wwclient` while the node runs (`runtime overlay`).
    Runtime,
}

impl OverlayKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OverlayKind::System => "system",
            OverlayKind::Runtime => "runtime",
        }
    }

    /// The node's overlay names for this kind, in order.
    pub fn names(self, conf: &NodeConf) -> &[String] {
        match self {
            OverlayKind::System => &conf.system_overlay,
            OverlayKind::Runtime => &conf.runtime_overlay,
        }
    }
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("node {node} lists {kind} overlay {overlay:?}, which does not exist; create it (`wwctl overlay create`) or remove it from the node or its profile")]
    NoSuchOverlay {
        node: String,
        kind: &'static str,
        overlay: String,
    },
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("overlay {overlay}: {source}")]
    Archive {
        overlay: String,
        #[source]
        source: ArchiveError,
    },
    #[error(
        "node {node}: template {overlay}:{file} wrote {name:?}, which is not a valid path inside an overlay: {source}"
    )]
    BadOutput {
        node: String,
        overlay: String,
        file: String,
        name: String,
        #[source]
        source: ArchiveError,
    },
}

impl crate::error::Classify for BuildError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            BuildError::NoSuchOverlay { .. } => ErrorKind::NotFound,
            BuildError::Render(_) | BuildError::BadOutput { .. } | BuildError::Archive { .. } => ErrorKind::Invalid,
        }
    }
}

/// Variables that differ from node to node by nature (names, addresses, the whole
/// node): a template that reads one is rendered for each node; one that reads none is
/// rendered once per distinct value of what it does read (see [`Builder`]'s outputs).
const IDENTITY_VARS: &[&str] = &["Id", "Hostname", "ThisNode", "NetDevs", "Ipmi", "AssetKey"];

/// An overlay ready to build with: its tree and its templates compiled once.
pub struct Compiled {
    pub name: String,
    pub digest: Digest,
    pub tree: Arc<OverlayTree>,
    templates: Templates,
    /// The tree's templates (relative paths) and whether each reads the node's own
    /// fields: a template that does not (`hosts`) renders the same for every node, so
    /// it is rendered once per generation and shared.
    template_paths: Vec<(String, bool)>,
    /// Templates that read none of a node's identity fields ([`IDENTITY_VARS`]), with
    /// the variables each reads: the output is a function of those values (and the
    /// generation's settings), so the nodes that agree on them (same image, tags and
    /// resources for `syncuser`) share one render, and a shared template (`hosts`) in
    /// two overlay lists is rendered once for both.
    group_vars: HashMap<String, Vec<String>>,
    /// A template reads `AllNodes`: its output depends on every node.
    reads_all_nodes: bool,
    /// A per-node template reads `AllNodes`: each node's own part depends on every node.
    per_node_reads_all: bool,
    /// A template calls `IncludeFrom`: its output depends on the images' contents.
    reads_images: bool,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("templates", &self.template_paths.len())
            .field("reads_all_nodes", &self.reads_all_nodes)
            .finish()
    }
}

fn is_template(path: &str, e: &Entry) -> bool {
    path.ends_with(".ww") && matches!(e.kind, EntryKind::File(_))
}

impl Compiled {
    /// Compile every `.ww` file of `tree`.
    pub fn new(
        name: &str,
        digest: Digest,
        tree: Arc<OverlayTree>,
        access: Arc<dyn FileAccess>,
        policy: AccessPolicy,
    ) -> Result<Compiled, BuildError> {
        let mut templates = Templates::new(access, policy);
        let mut template_paths = Vec::new();
        let mut group_vars = HashMap::new();
        let (mut reads_all_nodes, mut per_node_reads_all, mut reads_images) = (false, false, false);
        for (path, e) in &tree.entries {
            if !is_template(path, e) {
                continue;
            }
            let EntryKind::File(bytes) = &e.kind else { continue };
            let text = String::from_utf8_lossy(bytes);
            // Textual, so it errs towards rebuilding (a mention in a comment counts).
            reads_images |= text.contains("IncludeFrom");
            let abs = format!("/{path}");
            templates.add(name, &abs, &text)?;
            let vars = templates.variables(name, &abs)?;
            let all = vars.iter().any(|v| v == "AllNodes");
            let per_node = templates.reads_node(name, &abs)?;
            reads_all_nodes |= all;
            per_node_reads_all |= all && per_node;
            if !vars.iter().any(|v| IDENTITY_VARS.contains(&v.as_str())) {
                group_vars.insert(path.clone(), vars);
            }
            template_paths.push((path.clone(), per_node));
        }
        Ok(Compiled {
            name: name.to_owned(),
            digest,
            tree,
            templates,
            template_paths,
            group_vars,
            reads_all_nodes,
            per_node_reads_all,
            reads_images,
        })
    }

    pub fn reads_all_nodes(&self) -> bool {
        self.reads_all_nodes
    }

    /// A template of this overlay reads files of node images (`IncludeFrom`).
    pub fn reads_images(&self) -> bool {
        self.reads_images
    }

    /// Render one template of this overlay for a node (`wwctl overlay show --render`).
    pub fn render(
        &self,
        path: &str,
        data: &mut super::render::NodeData,
    ) -> Result<Vec<super::render::RenderedFile>, RenderError> {
        self.templates
            .render(&self.name, &format!("/{}", path.trim_start_matches('/')), data)
    }

    /// The variables template `path` reads (`wwctl overlay info`).
    pub fn variables(&self, path: &str) -> Result<Vec<String>, RenderError> {
        self.templates
            .variables(&self.name, &format!("/{}", path.trim_start_matches('/')))
    }

    /// Render `path` and add its written outputs to `into` (the template's mode and
    /// owner kept; a `file` output lands beside the template).
    fn render_into(
        &self,
        node: &str,
        path: &str,
        data: &mut super::render::NodeData,
        into: &mut BTreeMap<String, Entry>,
    ) -> Result<(), BuildError> {
        let t = &self.tree.entries[path];
        let dir = path.rsplit_once('/').map(|(d, _)| d);
        let default = path.strip_suffix(".ww").unwrap_or(path);
        for f in self.render(path, data)?.into_iter().filter(|f| f.write) {
            let out = if f.name == default || f.name.contains('/') {
                f.name.trim_start_matches('/').to_owned()
            } else {
                match dir {
                    Some(d) => format!("{d}/{}", f.name),
                    None => f.name.clone(),
                }
            };
            archive::validate_name(&out).map_err(|source| BuildError::BadOutput {
                node: node.to_owned(),
                overlay: self.name.clone(),
                file: path.to_owned(),
                name: out.clone(),
                source,
            })?;
            let (kind, mode) = match f.symlink {
                Some(target) => (EntryKind::Symlink(target), 0o777),
                None => (EntryKind::File(f.content.into_bytes()), t.mode),
            };
            into.insert(
                out,
                Entry {
                    kind,
                    mode,
                    uid: t.uid,
                    gid: t.gid,
                },
            );
        }
        Ok(())
    }
}

/// The cluster as one generation of builds sees it: the shared template data
/// (settings, `AllNodes`) and the digests that key builds. Make one per boot view.
pub struct Generation {
    data: BuildData,
    /// Variables every node gets besides Warewulf's (e.g. `Heads`).
    extra: Vec<(String, tera::Value)>,
    /// The head's settings and `extra`.
    server: Digest,
    /// Every node's merged fields, by name (names shared with the template data).
    node_digests: BTreeMap<Arc<str>, Digest>,
    /// All of the above at once (for overlays that read `AllNodes`).
    all_nodes: Digest,
    /// The images' contents (for overlays that read image files with `IncludeFrom`).
    images: Digest,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("nodes", &self.node_digests.len())
            .field("all_nodes", &self.all_nodes)
            .finish()
    }
}

fn json_digest<T: serde::Serialize>(v: &T) -> Digest {
    Digest::of(&serde_json::to_vec(v).expect("node fields serialize"))
}

impl Generation {
    /// The next generation after `prev`: `nodes` carry a version digest each (equal
    /// digest, equal fields; the boot view has one per node), so nothing is serialized
    /// to be compared, and the template data of every node whose version is unchanged
    /// is taken from `prev`. One node changed costs one node's data, not every node's.
    pub fn next<'a>(
        prev: Option<&Generation>,
        server: &ServerConf,
        nodes: impl IntoIterator<Item = (&'a str, &'a NodeConf, Digest)> + Clone,
        build: &BuildInfo,
        extra: Vec<(String, serde_json::Value)>,
    ) -> Generation {
        let server_digest = json_digest(&(server, &extra));
        // In name order (a boot view's already is): one pass over this generation's nodes
        // and the previous one's, with no lookups.
        let mut sorted: Vec<(&str, &NodeConf, Digest)> = nodes.into_iter().collect();
        if !sorted.is_sorted_by(|a, b| a.0 <= b.0) {
            sorted.sort_by(|a, b| a.0.cmp(b.0));
        }
        // Reuse only within the same settings: `node_value` does not read them today,
        // but a generation is a unit.
        let prev = prev.filter(|p| p.server == server_digest);
        let mut old = prev.map(|p| p.node_digests.iter().peekable());
        let mut all = Sha256::new();
        let mut digests = Vec::with_capacity(sorted.len());
        let mut reuse = Vec::with_capacity(sorted.len());
        for (name, _, d) in &sorted {
            all.update(name.as_bytes());
            all.update([0]);
            all.update(d.0);
            let mut same = None;
            if let Some(old) = old.as_mut() {
                while old.next_if(|(k, _)| &***k < *name).is_some() {}
                same = old
                    .peek()
                    .filter(|(k, _)| &***k == *name)
                    .map(|(k, od)| ((*k).clone(), *od == d));
            }
            let (key, same) = same.unwrap_or_else(|| (Arc::from(*name), false));
            digests.push((key, *d));
            reuse.push(same);
        }
        let data = match prev {
            Some(p) => BuildData::new_reusing(
                server,
                sorted.iter().zip(&reuse).map(|((n, c, _), r)| (*n, *c, *r)),
                build,
                &p.data,
            ),
            None => BuildData::new(server, sorted.iter().map(|(n, c, _)| (*n, *c)), build),
        };
        let node_digests = digests.into_iter().collect();
        Generation {
            data,
            extra: extra
                .into_iter()
                .map(|(k, v)| (k, tera::Value::from_serializable(&v)))
                .collect(),
            server: server_digest,
            node_digests,
            all_nodes: Digest(all.finalize().into()),
            images: Digest([0; 32]),
        }
    }

    /// `nodes`: every node of the cluster, merged with its profiles.
    pub fn new<'a>(
        server: &ServerConf,
        nodes: impl IntoIterator<Item = (&'a str, &'a NodeConf)> + Clone,
        build: &BuildInfo,
    ) -> Generation {
        Self::with_vars(server, nodes, build, Vec::new())
    }

    /// [`Generation::new`] with more variables for every node (wulfpack's own, such as
    /// `Heads`, the heads' base URLs that `wwclient`'s config lists).
    pub fn with_vars<'a>(
        server: &ServerConf,
        nodes: impl IntoIterator<Item = (&'a str, &'a NodeConf)> + Clone,
        build: &BuildInfo,
        extra: Vec<(String, serde_json::Value)>,
    ) -> Generation {
        let data = BuildData::new(server, nodes.clone(), build);
        let mut node_digests = BTreeMap::new();
        let mut all = Sha256::new();
        let mut sorted: Vec<(&str, &NodeConf)> = nodes.into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        for (name, conf) in sorted {
            let d = json_digest(conf);
            all.update(name.as_bytes());
            all.update([0]);
            all.update(d.0);
            node_digests.insert(Arc::from(name), d);
        }
        let server = json_digest(&(server, &extra));
        Generation {
            data,
            extra: extra
                .into_iter()
                .map(|(k, v)| {
                    let v = tera::Value::from_serializable(&v);
                    (k, v)
                })
                .collect(),
            server,
            node_digests,
            all_nodes: Digest(all.finalize().into()),
            images: Digest([0; 32]),
        }
    }

    /// This generation's image contents are `images` (a digest of every image's name and
    /// layers): builds of overlays that call `IncludeFrom` are keyed by it, so a changed
    /// image re-renders them, and only them.
    pub fn with_images(mut self, images: Digest) -> Generation {
        self.images = images;
        self
    }

    /// Template data for one node (`overlay show --render`).
    pub fn node_data(&self, name: &str, conf: Option<&NodeConf>) -> super::render::NodeData {
        let mut d = self.data.node(name, conf);
        for (k, v) in &self.extra {
            d.set(k, v);
        }
        d
    }
}

/// A node's built overlay archive: the shared, pre-compressed head of the gzip member,
/// this node's own deflate blocks, and the trailer. Serve `parts()` in order.
#[derive(Debug)]
pub struct NodeArchive {
    shared: Arc<SharedPart>,
    own: Arc<NodePart>,
    /// CRC-32 and length of the whole member (RFC 1952 trailer).
    trailer: [u8; 8],
    /// Equal keys, equal bytes (an HTTP ETag).
    pub key: Digest,
}

impl NodeArchive {
    /// The gzip member's bytes, in order.
    pub fn parts(&self) -> [bytes::Bytes; 3] {
        [
            self.shared.head.clone(),
            self.own.deflate.clone(),
            bytes::Bytes::copy_from_slice(&self.trailer),
        ]
    }

    pub fn len(&self) -> u64 {
        (self.shared.head.len() + self.own.deflate.len() + self.trailer.len()) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Files rendered for this node alone (not counting the shared ones).
    pub fn rendered(&self) -> usize {
        self.own.paths.len()
    }

    /// The whole gzip member in one buffer (tests, `overlay build` output to a file).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len() as usize);
        for p in self.parts() {
            v.extend_from_slice(&p);
        }
        v
    }
}

/// What every node with one overlay list shares in one generation: the plain files and
/// the outputs of templates that do not read the node, compressed once.
#[derive(Debug)]
struct SharedPart {
    key: Digest,
    /// gzip header, then deflate blocks of the shared newc records ended by a full
    /// flush (or, for a node built alone, its whole member without the trailer).
    head: bytes::Bytes,
    /// CRC-32 and length of the uncompressed shared records.
    crc: crc32fast::Hasher,
    len: u64,
    /// The shared entries, for the check that no node repeats a path.
    entries: BTreeMap<String, Entry>,
    /// The first inode number the shared records left free.
    inodes: u32,
}

/// One node's own files: rendered, packed and deflated (raw, ended), without the
/// archive trailer record's neighbours: re-linked to a new shared part without
/// rendering again when only the shared part changed.
#[derive(Debug)]
struct NodePart {
    key: Digest,
    deflate: bytes::Bytes,
    crc: crc32fast::Hasher,
    len: u64,
    paths: Vec<String>,
}

/// A node and kind: what one cached build is for.
type Slot = (String, OverlayKind);

/// Resolves an overlay name to its compiled form; `None`: no such overlay.
pub type Resolve<'a> = &'a dyn Fn(&str) -> Option<Result<Arc<Compiled>, BuildError>>;

/// Counters of a builder (the benchmark and tests read them).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BuildStats {
    /// Node parts rendered (cache misses).
    pub builds: u64,
    /// Template renders, shared ones included.
    pub renders: u64,
    /// Per-node template outputs taken from another node's render with the same inputs
    /// (no render).
    pub reused: u64,
    /// Node builds answered without rendering (their part was current).
    pub hits: u64,
    /// Shared parts made (once per overlay list and generation).
    pub shared: u64,
    /// Outputs of shared templates deflated (once per output, whatever the number of
    /// overlay lists that include it).
    pub runs: u64,
}

/// Builds and caches per-node overlay archives for one head.
pub struct Builder {
    access: Arc<dyn FileAccess>,
    policy: AccessPolicy,
    /// Deflate level of the shared parts (made once, served to every node).
    level: u32,
    /// Deflate level of each node's own part (made per node: speed over the last bytes).
    node_level: std::sync::atomic::AtomicU32,
    compiled: Mutex<HashMap<(String, Digest), Arc<Compiled>>>,
    shared: Mutex<HashMap<Digest, Arc<SharedPart>>>,
    built: Mutex<HashMap<Slot, Arc<NodePart>>>,
    locks: Mutex<HashMap<Slot, Arc<Mutex<()>>>>,
    shared_lock: Mutex<()>,
    /// Plain runs of shared parts (the trees' files; see `shared_part`) by their inputs:
    /// a new generation's shared part deflates only the outputs that changed.
    plain_runs: Mutex<HashMap<Digest, Arc<Run>>>,
    /// Outputs of group templates (see [`Compiled`]'s `group_vars`) by the digest of
    /// their inputs; each slot is filled by the first caller while the others wait.
    outputs: Mutex<OutputCache>,
    /// Off: every per-node template is rendered for each node (for comparison).
    group_outputs: std::sync::atomic::AtomicBool,
    builds: AtomicU64,
    renders: AtomicU64,
    reused: AtomicU64,
    hits: AtomicU64,
    shared_builds: AtomicU64,
    runs: AtomicU64,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a map lookup or insert: a panic cannot leave
    // a map half-changed, so a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Shared parts kept at once (overlay lists × recent generations).
const SHARED_KEPT: usize = 64;

/// The deflate level of node parts. Level 6 spent more than half of a 10,000-node cold
/// build in deflate (`benches/overlay_build.rs`, docs/PERFORMANCE.md); a node part is a
/// few kB of text sent once per boot, so the faster matcher's slightly larger output
/// costs the network next to nothing.
const NODE_LEVEL: u32 = 2;

/// The deflate level of shared templates' outputs, deflated again whenever what they read
/// changes (`hosts`: after any node's change). On a 10,000-node `hosts` (650 kB)
/// zlib-rs at level 3 gives 118.7 kB in 2.2 ms, level 6 118.8 kB in 8.2 ms (the
/// matchers of levels 4–6 find nothing more in such text); the trees' files, deflated
/// once per overlay list, stay at level 6.
const OUTPUT_LEVEL: u32 = 3;

/// Group template outputs kept at once (templates × distinct inputs, e.g. images × tag
/// sets for `syncuser`; `hosts` of recent generations), by count and by bytes; past
/// either the cache starts again (a render more, never a wrong one).
const OUTPUTS_KEPT: usize = 4096;
const OUTPUT_BYTES_KEPT: usize = 64 << 20;

/// The files one group template rendered, as they go into a node's or a shared part;
/// and, once a shared part has taken them whole, their records deflated as one run, so
/// the next shared part with the same output (`hosts` in both of a node's lists, or in
/// every list of the cluster) copies the run instead of deflating the files again.
struct Outputs {
    /// The digest of the template's inputs (the output cache's key).
    key: Digest,
    files: BTreeMap<String, Entry>,
    /// The run's first inode number (see [`output_inodes`]).
    ino: u32,
    run: std::sync::OnceLock<Arc<Run>>,
}

/// Where an entry of a shared part comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A file of an overlay's tree (not a template).
    Tree,
    /// The output of a group template: an index into the part's outputs.
    Output(usize),
    /// A template rendered for this part alone.
    Rendered,
}

/// Newc records deflated into a run of blocks ended by a full flush (byte-aligned, no
/// back-reference before it or past it), so runs can be joined in any order into one
/// deflate stream; with the records' CRC-32 and length to combine into the member's.
#[derive(Debug)]
struct Run {
    deflate: bytes::Bytes,
    crc: crc32fast::Hasher,
    len: u64,
    /// The inode number after the run's last record.
    next_ino: u32,
}

impl Run {
    fn new(entries: &BTreeMap<String, Entry>, first_ino: u32, level: u32) -> Result<Run, ArchiveError> {
        let mut records = Vec::new();
        let next_ino = archive::newc_records(entries, first_ino, &mut records)?;
        let mut deflate = Vec::new();
        deflate_into(&records, level, FlushCompress::Full, &mut deflate);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&records);
        Ok(Run {
            deflate: deflate.into(),
            crc,
            len: records.len() as u64,
            next_ino,
        })
    }
}

/// Inode numbers of the outputs' runs: slots of [`OUTPUT_SLOT`] numbers from 2^28 up,
/// one per template (by its overlay and path), so a run's records are the same in every
/// shared part that joins it. Plain runs number from 1 and node parts from 2^20
/// (`Builder::node_part`); two templates of one list whose slots collide (1 in 4,096
/// for a pair) are packed with the plain files instead. Numbers only tell hard links
/// apart (nlink > 1 on a file), which overlays do not have: keeping them unique is care,
/// not a need of the kernel's or `wwclient`'s unpacker.
const OUTPUT_SLOT: u32 = 1 << 16;

fn output_inodes(overlay: &str, path: &str) -> u32 {
    let mut h = Sha256::new();
    h.update(overlay.as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    let d = h.finalize();
    let slot = u32::from_le_bytes([d[0], d[1], 0, 0]) & 0x0fff;
    (1 << 28) + slot * OUTPUT_SLOT
}

/// Group template outputs by input digest, and the bytes they hold.
#[derive(Default)]
struct OutputCache {
    slots: HashMap<Digest, Arc<Mutex<Option<Arc<Outputs>>>>>,
    bytes: usize,
}

/// Feeds what is written into a hash (values hashed as their JSON, without a buffer).
struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Builder {
    /// Templates read host and image files through `access`, within `policy`.
    pub fn new(access: Arc<dyn FileAccess>, policy: AccessPolicy) -> Builder {
        Builder {
            access,
            policy,
            level: 6,
            node_level: std::sync::atomic::AtomicU32::new(NODE_LEVEL),
            compiled: Mutex::default(),
            shared: Mutex::default(),
            built: Mutex::default(),
            locks: Mutex::default(),
            shared_lock: Mutex::default(),
            plain_runs: Mutex::default(),
            outputs: Mutex::default(),
            group_outputs: std::sync::atomic::AtomicBool::new(true),
            builds: AtomicU64::new(0),
            renders: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            shared_builds: AtomicU64::new(0),
            runs: AtomicU64::new(0),
        }
    }

    /// Share the outputs of per-node templates between nodes with the same inputs (on by
    /// default); off, every node renders its own (the benchmark's comparison, and a test
    /// that both give the same bytes).
    pub fn set_group_outputs(&self, on: bool) {
        self.group_outputs.store(on, Ordering::Relaxed);
    }

    /// The deflate level of node parts (default [`NODE_LEVEL`]; the benchmark compares
    /// with 6, the level of the shared parts).
    pub fn set_node_level(&self, level: u32) {
        self.node_level.store(level.min(9), Ordering::Relaxed);
    }

    pub fn stats(&self) -> BuildStats {
        BuildStats {
            builds: self.builds.load(Ordering::Relaxed),
            renders: self.renders.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            shared: self.shared_builds.load(Ordering::Relaxed),
            runs: self.runs.load(Ordering::Relaxed),
        }
    }

    /// The compiled form of overlay `name` at `digest` (compiled once, then shared).
    pub fn compiled(
        &self,
        name: &str,
        digest: Digest,
        tree: impl FnOnce() -> Arc<OverlayTree>,
    ) -> Result<Arc<Compiled>, BuildError> {
        let k = (name.to_owned(), digest);
        if let Some(c) = lock(&self.compiled).get(&k) {
            return Ok(c.clone());
        }
        let c = Arc::new(Compiled::new(
            name,
            digest,
            tree(),
            self.access.clone(),
            self.policy.clone(),
        )?);
        lock(&self.compiled).insert(k, c.clone());
        Ok(c)
    }

    /// Forget cached builds of nodes that are gone and compiled overlays no longer
    /// in the catalog (call when the view changes).
    pub fn retain(&self, node: impl Fn(&str) -> bool, overlay: impl Fn(&str, &Digest) -> bool) {
        lock(&self.built).retain(|(n, _), _| node(n));
        lock(&self.locks).retain(|(n, _), _| node(n));
        lock(&self.compiled).retain(|(n, d), _| overlay(n, d));
    }

    /// Build (or find cached) the `kind` overlay archive of node `name`. `overlay`
    /// resolves a name to its compiled form (see [`Builder::compiled`]).
    pub fn build(
        &self,
        generation: &Generation,
        name: &str,
        conf: &NodeConf,
        kind: OverlayKind,
        overlay: Resolve<'_>,
    ) -> Result<Arc<NodeArchive>, BuildError> {
        let mut list = Vec::new();
        for o in kind.names(conf) {
            match overlay(o) {
                Some(c) => list.push(c?),
                None => {
                    return Err(BuildError::NoSuchOverlay {
                        node: name.to_owned(),
                        kind: kind.as_str(),
                        overlay: o.clone(),
                    })
                }
            }
        }
        let shared = self.shared_part(generation, &list)?;
        let key = self.node_key(generation, name, conf, kind, &list);
        let slot = (name.to_owned(), kind);
        let per_key = lock(&self.locks).entry(slot.clone()).or_default().clone();
        let own = {
            let _one_at_a_time = lock(&per_key);
            let cached = lock(&self.built).get(&slot).filter(|b| b.key == key).cloned();
            match cached {
                Some(b) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    b
                }
                None => {
                    let part = Arc::new(self.node_part(generation, name, conf, &list, key, shared.inodes)?);
                    self.builds.fetch_add(1, Ordering::Relaxed);
                    lock(&self.built).insert(slot, part.clone());
                    part
                }
            }
        };
        // A rendered file that repeats a shared path (a `file` output over a plain file
        // of an earlier overlay): build this node alone, so no path appears twice.
        if own.paths.iter().any(|p| shared.entries.contains_key(p)) {
            return self.alone(generation, name, conf, &list, &shared);
        }
        Ok(Arc::new(link(shared, own)))
    }

    /// What a node's own part depends on: the kind, the overlays, the node's fields,
    /// the settings, and every node's fields only when one of its per-node templates
    /// reads `AllNodes`.
    fn node_key(
        &self,
        g: &Generation,
        name: &str,
        conf: &NodeConf,
        kind: OverlayKind,
        list: &[Arc<Compiled>],
    ) -> Digest {
        let mut h = Sha256::new();
        h.update(b"wulfpack overlay node part v2\0");
        h.update(kind.as_str());
        h.update(name.as_bytes());
        h.update([0]);
        for c in list {
            h.update(c.name.as_bytes());
            h.update([0]);
            h.update(c.digest.0);
        }
        match g.node_digests.get(name) {
            Some(d) => h.update(d.0),
            None => h.update(json_digest(conf).0),
        }
        h.update(g.server.0);
        if list.iter().any(|c| c.per_node_reads_all) {
            h.update(g.all_nodes.0);
        }
        if list.iter().any(|c| c.reads_images) {
            h.update(g.images.0);
        }
        Digest(h.finalize().into())
    }

    /// The shared part for an overlay list in a generation: every non-template entry and
    /// the outputs of the templates that do not read the node (a later overlay winning a
    /// path; a template's output replaces a plain file of the same name).
    fn shared_part(&self, g: &Generation, list: &[Arc<Compiled>]) -> Result<Arc<SharedPart>, BuildError> {
        let mut h = Sha256::new();
        h.update(b"wulfpack overlay shared part v2\0");
        for c in list {
            h.update(c.name.as_bytes());
            h.update([0]);
            h.update(c.digest.0);
        }
        let renders_shared = list
            .iter()
            .any(|c| c.template_paths.iter().any(|(_, per_node)| !per_node));
        if renders_shared {
            h.update(g.server.0);
            h.update(g.all_nodes.0);
            if list.iter().any(|c| c.reads_images) {
                h.update(g.images.0);
            }
        }
        let k = Digest(h.finalize().into());
        if let Some(s) = lock(&self.shared).get(&k) {
            return Ok(s.clone());
        }
        // One builder of a shared part at a time: a storm's first requests wait for it
        // instead of rendering it each.
        let _one = lock(&self.shared_lock);
        if let Some(s) = lock(&self.shared).get(&k) {
            return Ok(s.clone());
        }
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        // Where each path's entry comes from: an index into `outputs`, or not an output.
        let mut from: HashMap<String, Source> = HashMap::new();
        let mut outputs: Vec<Arc<Outputs>> = Vec::new();
        let mut data = g.node_data("", Some(&NodeConf::default()));
        for c in list {
            for (path, e) in &c.tree.entries {
                if is_template(path, e) {
                    let out = path.strip_suffix(".ww").unwrap_or(path);
                    entries.remove(out);
                    from.remove(out);
                } else {
                    entries.insert(path.clone(), e.clone());
                    from.insert(path.clone(), Source::Tree);
                }
            }
            for (path, per_node) in &c.template_paths {
                if *per_node {
                    continue;
                }
                match c.group_vars.get(path) {
                    Some(vars) => {
                        let out = self.group_output(g, c, path, vars, "(shared)", &mut data)?;
                        for (p, e) in &out.files {
                            entries.insert(p.clone(), e.clone());
                            from.insert(p.clone(), Source::Output(outputs.len()));
                        }
                        outputs.push(out);
                    }
                    None => {
                        let mut one = BTreeMap::new();
                        c.render_into("(shared)", path, &mut data, &mut one)?;
                        self.renders.fetch_add(1, Ordering::Relaxed);
                        for (p, e) in one {
                            from.insert(p.clone(), Source::Rendered);
                            entries.insert(p, e);
                        }
                    }
                }
            }
        }
        // An output is joined as its run when all of its files are in the part (no later
        // overlay replaced one) and its inodes are its own in this list; the rest are
        // packed with the plain files.
        let mut whole = vec![false; outputs.len()];
        let mut slots = std::collections::HashSet::new();
        for (i, o) in outputs.iter().enumerate() {
            whole[i] = o.files.len() < OUTPUT_SLOT as usize
                && o.files.keys().all(|p| from.get(p) == Some(&Source::Output(i)))
                && slots.insert(o.ino);
        }
        let archive_err = |source| BuildError::Archive {
            overlay: names(list),
            source,
        };
        // The plain run: the trees' files (keyed by the overlays' digests and the paths
        // taken), outputs not joined whole (by their keys), anything else by content.
        let mut h = Sha256::new();
        h.update(b"wulfpack overlay plain run v1\0");
        for c in list {
            h.update(c.name.as_bytes());
            h.update([0]);
            h.update(c.digest.0);
        }
        let in_plain = |p: &String| match from[p] {
            Source::Output(i) => !whole[i],
            _ => true,
        };
        for (p, e) in entries.iter().filter(|(p, _)| in_plain(p)) {
            h.update(p.as_bytes());
            h.update([0]);
            match from[p] {
                Source::Tree => h.update([0]),
                Source::Output(i) => h.update(outputs[i].key.0),
                Source::Rendered => {
                    h.update([1]);
                    serde_json::to_writer(HashWriter(&mut h), e).expect("entries serialize");
                }
            }
        }
        let plain_key = Digest(h.finalize().into());
        let cached = lock(&self.plain_runs).get(&plain_key).cloned();
        let plain = match cached {
            Some(r) => r,
            None => {
                let taken: BTreeMap<String, Entry> = entries
                    .iter()
                    .filter(|(p, _)| in_plain(p))
                    .map(|(p, e)| (p.clone(), e.clone()))
                    .collect();
                let r = Arc::new(Run::new(&taken, 1, self.level).map_err(archive_err)?);
                let mut map = lock(&self.plain_runs);
                if map.len() >= SHARED_KEPT {
                    map.clear();
                }
                map.insert(plain_key, r.clone());
                r
            }
        };
        let mut runs = vec![plain.clone()];
        for (o, _) in outputs.iter().zip(&whole).filter(|(_, w)| **w) {
            let run = match o.run.get() {
                Some(r) => r.clone(),
                None => {
                    let r = Arc::new(Run::new(&o.files, o.ino, OUTPUT_LEVEL).map_err(archive_err)?);
                    self.runs.fetch_add(1, Ordering::Relaxed);
                    lock(&self.outputs).bytes += r.deflate.len();
                    o.run.get_or_init(|| r).clone()
                }
            };
            runs.push(run);
        }
        let mut head = gzip_header();
        head.reserve(runs.iter().map(|r| r.deflate.len()).sum());
        let mut crc = crc32fast::Hasher::new();
        let mut len = 0;
        for r in &runs {
            head.extend_from_slice(&r.deflate);
            crc.combine(&r.crc);
            len += r.len;
        }
        let part = Arc::new(SharedPart {
            key: k,
            head: head.into(),
            crc,
            len,
            entries,
            inodes: plain.next_ino,
        });
        self.shared_builds.fetch_add(1, Ordering::Relaxed);
        let mut map = lock(&self.shared);
        if map.len() >= SHARED_KEPT {
            map.clear();
        }
        map.insert(k, part.clone());
        Ok(part)
    }

    /// Render a node's per-node templates into its own part.
    fn node_part(
        &self,
        g: &Generation,
        name: &str,
        conf: &NodeConf,
        list: &[Arc<Compiled>],
        key: Digest,
        first_ino: u32,
    ) -> Result<NodePart, BuildError> {
        let rendered = self.render_own(g, name, conf, list)?;
        let mut records = Vec::new();
        // Inode numbers only tell hard links apart (nlink > 1), which overlays do not
        // have; starting after the shared part's keeps them unique anyway.
        archive::newc_records(&rendered, first_ino.max(1 << 20), &mut records).map_err(|source| {
            BuildError::Archive {
                overlay: name.to_owned(),
                source,
            }
        })?;
        archive::newc_trailer(&mut records);
        let mut deflate = Vec::with_capacity(records.len() / 3 + 64);
        let level = self.node_level.load(Ordering::Relaxed);
        deflate_into(&records, level, FlushCompress::Finish, &mut deflate);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&records);
        Ok(NodePart {
            key,
            deflate: deflate.into(),
            crc,
            len: records.len() as u64,
            paths: rendered.into_keys().collect(),
        })
    }

    fn render_own(
        &self,
        g: &Generation,
        name: &str,
        conf: &NodeConf,
        list: &[Arc<Compiled>],
    ) -> Result<BTreeMap<String, Entry>, BuildError> {
        let known = g.node_digests.contains_key(name);
        let mut data = g.node_data(name, if known { None } else { Some(conf) });
        let mut rendered: BTreeMap<String, Entry> = BTreeMap::new();
        let group = self.group_outputs.load(Ordering::Relaxed);
        for c in list {
            for (path, per_node) in &c.template_paths {
                if !*per_node {
                    continue;
                }
                let Some(vars) = c.group_vars.get(path).filter(|_| group) else {
                    c.render_into(name, path, &mut data, &mut rendered)?;
                    self.renders.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                // Later outputs win a path, as when rendered in place.
                let out = self.group_output(g, c, path, vars, name, &mut data)?;
                rendered.extend(out.files.iter().map(|(p, e)| (p.clone(), e.clone())));
            }
        }
        Ok(rendered)
    }

    /// The output of group template `path` for the node whose data is `data`: rendered
    /// by the first node with these inputs, the same files for every other.
    fn group_output(
        &self,
        g: &Generation,
        c: &Compiled,
        path: &str,
        vars: &[String],
        node: &str,
        data: &mut super::render::NodeData,
    ) -> Result<Arc<Outputs>, BuildError> {
        let mut h = Sha256::new();
        h.update(b"wulfpack overlay template output v1\0");
        h.update(c.name.as_bytes());
        h.update([0]);
        h.update(c.digest.0);
        h.update(path.as_bytes());
        h.update([0]);
        // The settings and the extra variables; files read with `Include` count as
        // settings here as everywhere in the builder.
        h.update(g.server.0);
        if c.reads_images {
            h.update(g.images.0);
        }
        for v in vars {
            h.update(v.as_bytes());
            h.update([0]);
            match v.as_str() {
                // Set per render to the overlay's name, hashed above.
                "Overlay" => {}
                "AllNodes" => h.update(g.all_nodes.0),
                _ => match data.ctx.get(v) {
                    Some(value) => {
                        h.update([1]);
                        serde_json::to_writer(HashWriter(&mut h), value).expect("template values serialize");
                    }
                    None => h.update([2]),
                },
            }
            h.update([0]);
        }
        let k = Digest(h.finalize().into());
        let slot = {
            let mut cache = lock(&self.outputs);
            if cache.slots.len() >= OUTPUTS_KEPT && !cache.slots.contains_key(&k) {
                *cache = OutputCache::default();
            }
            cache.slots.entry(k).or_default().clone()
        };
        let mut slot = lock(&slot);
        if let Some(out) = slot.as_ref() {
            self.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(out.clone());
        }
        let mut one = BTreeMap::new();
        c.render_into(node, path, data, &mut one)?;
        self.renders.fetch_add(1, Ordering::Relaxed);
        let out = Arc::new(Outputs {
            key: k,
            files: one,
            ino: output_inodes(&c.name, path),
            run: std::sync::OnceLock::new(),
        });
        *slot = Some(out.clone());
        let bytes: usize = out
            .files
            .iter()
            .map(|(p, e)| {
                p.len()
                    + match &e.kind {
                        EntryKind::File(b) => b.len(),
                        _ => 64,
                    }
            })
            .sum();
        let mut cache = lock(&self.outputs);
        cache.bytes += bytes;
        if cache.bytes > OUTPUT_BYTES_KEPT {
            *cache = OutputCache::default();
        }
        Ok(out)
    }

    /// A node whose rendered files collide with shared ones: one plain archive, its
    /// own files winning.
    fn alone(
        &self,
        g: &Generation,
        name: &str,
        conf: &NodeConf,
        list: &[Arc<Compiled>],
        shared: &SharedPart,
    ) -> Result<Arc<NodeArchive>, BuildError> {
        let mut entries = shared.entries.clone();
        entries.extend(self.render_own(g, name, conf, list)?);
        let mut records = Vec::new();
        archive::newc_records(&entries, 1, &mut records).map_err(|source| BuildError::Archive {
            overlay: names(list),
            source,
        })?;
        archive::newc_trailer(&mut records);
        let mut deflate = Vec::new();
        deflate_into(&records, self.level, FlushCompress::Finish, &mut deflate);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&records);
        let whole = SharedPart {
            key: shared.key,
            head: gzip_header().into(),
            crc: crc32fast::Hasher::new(),
            len: 0,
            entries: BTreeMap::new(),
            inodes: 1,
        };
        let own = NodePart {
            key: shared.key,
            deflate: deflate.into(),
            crc,
            len: records.len() as u64,
            paths: Vec::new(),
        };
        Ok(Arc::new(link(Arc::new(whole), Arc::new(own))))
    }
}

fn names(list: &[Arc<Compiled>]) -> String {
    list.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(",")
}

/// Join a shared part and a node's part into one gzip member: the CRC of the whole
/// is combined from the two parts' CRCs (no pass over the bytes).
fn link(shared: Arc<SharedPart>, own: Arc<NodePart>) -> NodeArchive {
    let mut crc = shared.crc.clone();
    crc.combine(&own.crc);
    let total = shared.len + own.len;
    let mut trailer = [0u8; 8];
    trailer[..4].copy_from_slice(&crc.finalize().to_le_bytes());
    // RFC 1952: ISIZE is the length modulo 2^32.
    trailer[4..].copy_from_slice(&(total as u32).to_le_bytes());
    let mut h = Sha256::new();
    h.update(shared.key.0);
    h.update(own.key.0);
    NodeArchive {
        key: Digest(h.finalize().into()),
        shared,
        own,
        trailer,
    }
}

/// A gzip member header: deflate, no name, mtime 0, unknown OS (RFC 1952), so equal
/// contents give equal bytes on every head.
fn gzip_header() -> Vec<u8> {
    vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]
}

/// Raw deflate of `input` appended to `out`, ended with `flush` (`Full`: byte-aligned,
/// no back-references across the boundary, more blocks may follow; `Finish`: the last
/// block).
fn deflate_into(input: &[u8], level: u32, flush: FlushCompress, out: &mut Vec<u8>) {
    // A compressor's state is ~300 kB to allocate and clear: each thread keeps one per
    // level and resets it, instead of making one per node part.
    thread_local! {
        static COMPRESSORS: std::cell::RefCell<Vec<(u32, Compress)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    COMPRESSORS.with(|cs| {
        let mut cs = cs.borrow_mut();
        let i = match cs.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                cs.push((level, Compress::new(Compression::new(level), false)));
                cs.len() - 1
            }
        };
        let z = &mut cs[i].1;
        z.reset();
        deflate_with(z, input, flush, out);
    });
}

fn deflate_with(z: &mut Compress, input: &[u8], flush: FlushCompress, out: &mut Vec<u8>) {
    out.reserve(input.len() / 2 + 64);
    let mut done = 0usize;
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(4096));
        }
        let before_in = z.total_in() as usize;
        let status = z
            .compress_vec(&input[done..], out, flush)
            .expect("deflate into a growing buffer cannot fail");
        done += z.total_in() as usize - before_in;
        match (flush, status) {
            (FlushCompress::Finish, flate2::Status::StreamEnd) => return,
            (FlushCompress::Finish, _) => continue,
            // A flush is complete when all input is taken and there was room left over.
            (_, _) if done == input.len() && out.capacity() - out.len() >= 64 => return,
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::render::HostFs;

    fn file(text: &[u8], mode: u32) -> Entry {
        Entry {
            kind: EntryKind::File(text.to_vec()),
            mode,
            uid: 0,
            gid: 0,
        }
    }

    fn tree(files: &[(&str, Entry)]) -> Arc<OverlayTree> {
        Arc::new(OverlayTree {
            entries: files.iter().map(|(p, e)| (p.to_string(), e.clone())).collect(),
        })
    }

    fn nodes(yaml: &str) -> BTreeMap<String, NodeConf> {
        let conf = crate::model::parse_nodes_conf(yaml).unwrap();
        conf.nodes
            .keys()
            .map(|n| {
                (
                    n.clone(),
                    crate::model::merge_effective(n, &conf.nodes[n], &conf.nodeprofiles).unwrap(),
                )
            })
            .collect()
    }

    struct Fixture {
        builder: Builder,
        overlays: HashMap<String, (Digest, Arc<OverlayTree>)>,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new(overlays: &[(&str, Arc<OverlayTree>)]) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let access = Arc::new(HostFs {
                host_root: dir.path().to_path_buf(),
                images_dir: dir.path().join("images"),
                policy: AccessPolicy::default(),
            });
            Fixture {
                builder: Builder::new(access, AccessPolicy::default()),
                overlays: overlays
                    .iter()
                    .map(|(n, t)| (n.to_string(), (json_digest(&**t), t.clone())))
                    .collect(),
                _dir: dir,
            }
        }

        fn build(
            &self,
            g: &Generation,
            all: &BTreeMap<String, NodeConf>,
            node: &str,
            kind: OverlayKind,
        ) -> Arc<NodeArchive> {
            let resolve = |name: &str| {
                self.overlays
                    .get(name)
                    .map(|(d, t)| self.builder.compiled(name, *d, || t.clone()))
            };
            self.builder.build(g, node, &all[node], kind, &resolve).unwrap()
        }
    }

    #[test]
    fn a_changed_image_rebuilds_exactly_the_overlays_that_read_it() {
        let reads = tree(&[(
            "etc/passwd.ww",
            file(b"{{ IncludeFrom(image=ImageName, path=\"/etc/passwd\") }}", 0o644),
        )]);
        let plain = tree(&[("etc/hostname.ww", file(b"{{ Id }}\n", 0o644))]);
        let f = Fixture::new(&[("reads", reads), ("plain", plain)]);
        let rootfs = f._dir.path().join("images/img/rootfs/etc");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::write(rootfs.join("passwd"), "root:x:0:0:old\n").unwrap();
        let all =
            nodes("nodes:\n  n1:\n    image name: img\n    system overlay: [reads]\n    runtime overlay: [plain]\n");
        let build_both = |g: &Generation| {
            let sys = f.build(g, &all, "n1", OverlayKind::System);
            f.build(g, &all, "n1", OverlayKind::Runtime);
            text(&unpack(&sys)["etc/passwd"])
        };
        let g1 = generation(&all).with_images(Digest::of(b"image v1"));
        assert_eq!(build_both(&g1), "root:x:0:0:old\n");
        assert_eq!(f.builder.stats().builds, 2);
        // Same images: nothing rendered again.
        let g1b = generation(&all).with_images(Digest::of(b"image v1"));
        assert_eq!(build_both(&g1b), "root:x:0:0:old\n");
        assert_eq!(f.builder.stats().builds, 2);
        // The image changed: the overlay that reads it is rendered again, the other is not.
        std::fs::write(rootfs.join("passwd"), "root:x:0:0:new\n").unwrap();
        let g2 = generation(&all).with_images(Digest::of(b"image v2"));
        assert_eq!(build_both(&g2), "root:x:0:0:new\n");
        let stats = f.builder.stats();
        assert_eq!(
            stats.builds, 3,
            "only the system overlay (which calls IncludeFrom) is rebuilt"
        );
        assert_eq!(stats.hits, 3);
    }

    /// A per-node template that reads no identity field renders once per distinct input:
    /// nodes with the same tags share one render, a node with other tags gets its own,
    /// and every archive is byte for byte what rendering each node alone gives.
    #[test]
    fn nodes_with_the_same_inputs_share_one_render() {
        let ov = tree(&[
            (
                "etc/motd.ww",
                file(b"color {{ Tags.color | default(value=\"none\") }}\n", 0o644),
            ),
            ("etc/hostname.ww", file(b"{{ Id }}\n", 0o644)),
        ]);
        let mut yaml = String::from("nodes:\n");
        for (n, color) in [("n1", "red"), ("n2", "red"), ("n3", "blue")] {
            yaml.push_str(&format!(
                "  {n}:\n    system overlay: [o]\n    tags:\n      color: {color}\n"
            ));
        }
        let all = nodes(&yaml);
        let g = generation(&all);
        let f = Fixture::new(&[("o", ov.clone())]);
        let plain = Fixture::new(&[("o", ov)]);
        plain.builder.set_group_outputs(false);
        for n in ["n1", "n2", "n3"] {
            let a = f.build(&g, &all, n, OverlayKind::System);
            let b = plain.build(&g, &all, n, OverlayKind::System);
            assert_eq!(a.to_vec(), b.to_vec(), "{n}");
        }
        let st = f.builder.stats();
        assert_eq!(
            (st.builds, st.renders, st.reused),
            (3, 5, 1),
            "hostname 3 times, motd once per color"
        );
        assert_eq!(plain.builder.stats().renders, 6);
        let n3 = unpack(&f.build(&g, &all, "n3", OverlayKind::System));
        assert_eq!(text(&n3["etc/motd"]), "color blue\n");
        assert_eq!(text(&n3["etc/hostname"]), "n3\n");
    }

    fn generation(all: &BTreeMap<String, NodeConf>) -> Generation {
        let server = ServerConf::from_yaml("ipaddr: 10.0.0.1\nnetmask: 255.255.255.0\n").unwrap();
        Generation::new(&server, all.iter().map(|(n, c)| (n.as_str(), c)), &BuildInfo::default())
    }

    fn unpack(a: &NodeArchive) -> BTreeMap<String, Entry> {
        archive::read(&a.to_vec(), &archive::Limits::default()).unwrap()
    }

    fn text(e: &Entry) -> String {
        match &e.kind {
            EntryKind::File(b) => String::from_utf8(b.clone()).unwrap(),
            k => panic!("not a file: {k:?}"),
        }
    }

    const NODES: &str = "nodes:\n  n1:\n    system overlay: [base, names]\n    runtime overlay: [names]\n    tags: {color: red}\n  n2:\n    system overlay: [base, names]\n    runtime overlay: [names]\n";

    fn overlays() -> Vec<(&'static str, Arc<OverlayTree>)> {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        vec![
            (
                "base",
                tree(&[
                    (
                        "etc",
                        Entry {
                            kind: EntryKind::Dir,
                            mode: 0o755,
                            uid: 0,
                            gid: 0,
                        },
                    ),
                    ("etc/hostname.ww", file(b"{{ Id }}\n", 0o644)),
                    ("etc/motd", file(b"plain\n", 0o644)),
                    ("etc/secret.ww", file(b"key-of-{{ Id }}\n", 0o600)),
                    (
                        "bin",
                        Entry {
                            kind: EntryKind::Dir,
                            mode: 0o755,
                            uid: 0,
                            gid: 0,
                        },
                    ),
                    ("bin/agent", file(&big, 0o755)),
                ]),
            ),
            (
                "names",
                tree(&[(
                    "etc/hosts.ww",
                    file(b"{% for n in AllNodes %}{{ n.Id }}\n{% endfor %}", 0o644),
                )]),
            ),
        ]
    }

    #[test]
    fn a_build_is_one_gzip_member_with_the_shared_files_and_the_nodes_own() {
        let all = nodes(NODES);
        let g = generation(&all);
        let f = Fixture::new(&overlays());
        let a = f.build(&g, &all, "n1", OverlayKind::System);
        let files = unpack(&a);
        assert_eq!(text(&files["etc/hostname"]), "n1\n");
        assert_eq!(text(&files["etc/secret"]), "key-of-n1\n");
        assert_eq!(files["etc/secret"].mode, 0o600, "a template's mode is kept");
        assert_eq!(text(&files["etc/motd"]), "plain\n");
        assert_eq!(files["bin/agent"].mode, 0o755);
        assert_eq!(text(&files["etc/hosts"]), "n1\nn2\n");
        assert!(!files.contains_key("etc/hostname.ww"), "templates are not shipped");
        // The shared 200 kB are compressed once: n2's own tail is small.
        let b = f.build(&g, &all, "n2", OverlayKind::System);
        assert_eq!(text(&unpack(&b)["etc/hostname"]), "n2\n");
        assert!(Arc::ptr_eq(&a.shared, &b.shared));
        assert!(b.own.deflate.len() < 1000, "{}", b.own.deflate.len());
        // GNU gzip agrees it is valid (CRC and length of the joined member), when present.
        if let Ok(mut child) = std::process::Command::new("gzip")
            .arg("-t")
            .stdin(std::process::Stdio::piped())
            .spawn()
        {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(&a.to_vec()).unwrap();
            assert!(child.wait().unwrap().success(), "gzip -t refused the joined member");
        }
    }

    #[test]
    fn builds_are_cached_by_what_they_read() {
        let mut all = nodes(NODES);
        let f = Fixture::new(&overlays());
        let g = generation(&all);
        for n in ["n1", "n2"] {
            f.build(&g, &all, n, OverlayKind::System);
            f.build(&g, &all, n, OverlayKind::Runtime);
        }
        let first = f.builder.stats();
        assert_eq!((first.builds, first.hits), (4, 0));
        // A new generation with nothing changed: no render at all.
        let g = generation(&all);
        for n in ["n1", "n2"] {
            f.build(&g, &all, n, OverlayKind::System);
            f.build(&g, &all, n, OverlayKind::Runtime);
        }
        let again = f.builder.stats();
        assert_eq!((again.builds, again.renders, again.hits), (4, first.renders, 4));

        // A tag of n1 changes: n1's own part renders again. `hosts` reads AllNodes but
        // not the node: it is rendered once into the shared part, so n2 renders
        // nothing of its own, its archive is re-linked to the new shared part.
        let shared_before = f.builder.stats().shared;
        all.get_mut("n1").unwrap().tags.insert("color".into(), "blue".into());
        let g = generation(&all);
        f.build(&g, &all, "n1", OverlayKind::System);
        let n2 = f.build(&g, &all, "n2", OverlayKind::System);
        let st = f.builder.stats();
        assert_eq!((st.builds, st.hits), (5, 5), "only n1's own part rendered");
        assert_eq!(st.shared, shared_before + 1, "hosts rendered once for both");
        assert_eq!(text(&unpack(&n2)["etc/hosts"]), "n1\nn2\n");
        // The runtime list (`names` alone) takes the same `hosts` output: a second shared
        // part, but `hosts` is neither rendered nor deflated again.
        let before = f.builder.stats();
        let n1 = f.build(&g, &all, "n1", OverlayKind::Runtime);
        let st = f.builder.stats();
        assert_eq!(st.shared, before.shared + 1);
        assert_eq!(
            (st.renders, st.runs),
            (before.renders, before.runs),
            "hosts reused whole"
        );
        assert_eq!(text(&unpack(&n1)["etc/hosts"]), "n1\nn2\n");

        // Without an AllNodes template, a change to n1 leaves n2 alone.
        let only_base = Fixture::new(&overlays()[..1]);
        let mut solo = nodes(NODES);
        for c in solo.values_mut() {
            c.system_overlay = vec!["base".into()];
        }
        let g = generation(&solo);
        only_base.build(&g, &solo, "n1", OverlayKind::System);
        only_base.build(&g, &solo, "n2", OverlayKind::System);
        solo.get_mut("n1").unwrap().tags.insert("color".into(), "green".into());
        let g = generation(&solo);
        only_base.build(&g, &solo, "n1", OverlayKind::System);
        only_base.build(&g, &solo, "n2", OverlayKind::System);
        let s = only_base.builder.stats();
        assert_eq!((s.builds, s.hits), (3, 1), "only n1 rebuilt");
    }

    #[test]
    fn a_profile_change_rebuilds_its_nodes_and_an_overlay_change_the_nodes_using_it() {
        let conf = |color: &str| {
            format!(
                "nodeprofiles:\n  p1:\n    tags: {{color: {color}}}\n  p2: {{}}\nnodes:\n  \
                 n1: {{profiles: [p1], system overlay: [base]}}\n  \
                 n2: {{profiles: [p1], system overlay: [base]}}\n  \
                 n3: {{profiles: [p2], system overlay: [other]}}\n"
            )
        };
        let other = tree(&[(
            "etc/name.ww",
            file(b"{{ Id }} {{ Tags.color | default(value=\"none\") }}\n", 0o644),
        )]);
        let base = overlays()[0].1.clone();
        let mut f = Fixture::new(&[("base", base.clone()), ("other", other)]);
        let build_all = |f: &Fixture, all: &BTreeMap<String, NodeConf>| {
            let g = generation(all);
            for n in ["n1", "n2", "n3"] {
                f.build(&g, all, n, OverlayKind::System);
            }
        };
        let all = nodes(&conf("red"));
        build_all(&f, &all);
        assert_eq!(f.builder.stats().builds, 3);

        // p1 changes: its two nodes rebuild, n3 (profile p2) does not.
        let all = nodes(&conf("blue"));
        build_all(&f, &all);
        let st = f.builder.stats();
        assert_eq!((st.builds, st.hits), (5, 1), "n1 and n2 rebuilt, n3 current");

        // A file of overlay `base` changes: the nodes using it rebuild, n3 does not.
        let mut changed = (*base).clone();
        changed.entries.insert("etc/motd".into(), file(b"new\n", 0o644));
        let changed = Arc::new(changed);
        f.overlays.insert("base".into(), (json_digest(&*changed), changed));
        build_all(&f, &all);
        let st = f.builder.stats();
        assert_eq!((st.builds, st.hits), (7, 2), "n1 and n2 rebuilt, n3 current");
        let g = generation(&all);
        assert_eq!(
            text(&unpack(&f.build(&g, &all, "n1", OverlayKind::System))["etc/motd"]),
            "new\n"
        );
    }

    #[test]
    fn the_next_generation_renders_what_a_fresh_one_renders() {
        let server = ServerConf::from_yaml("ipaddr: 10.0.0.1\nnetmask: 255.255.255.0\n").unwrap();
        let versioned = |all: &BTreeMap<String, NodeConf>| -> Vec<(String, NodeConf, Digest)> {
            all.iter()
                .map(|(n, c)| (n.clone(), c.clone(), json_digest(c)))
                .collect()
        };
        let next = |prev: Option<&Generation>, v: &[(String, NodeConf, Digest)]| {
            Generation::next(
                prev,
                &server,
                v.iter().map(|(n, c, d)| (n.as_str(), c, *d)),
                &BuildInfo::default(),
                Vec::new(),
            )
        };
        let mut all = nodes(NODES);
        let g1 = next(None, &versioned(&all));
        all.get_mut("n1").unwrap().tags.insert("color".into(), "green".into());
        let g2 = next(Some(&g1), &versioned(&all));
        let fresh = generation(&all);
        let (a, b) = (Fixture::new(&overlays()), Fixture::new(&overlays()));
        for n in ["n1", "n2"] {
            for kind in [OverlayKind::System, OverlayKind::Runtime] {
                assert_eq!(
                    unpack(&a.build(&g2, &all, n, kind)),
                    unpack(&b.build(&fresh, &all, n, kind)),
                    "{n} {kind:?}"
                );
            }
        }
        // n1's new tag is in the reused generation's data.
        let d = g2.node_data("n1", None);
        assert_eq!(d.get("Tags").and_then(|t| t.as_map()).map(|m| m.len()), Some(1));
    }

    #[test]
    fn concurrent_requests_for_one_node_render_once() {
        let all = nodes(NODES);
        let g = generation(&all);
        let f = Fixture::new(&overlays());
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| f.build(&g, &all, "n1", OverlayKind::System));
            }
        });
        let st = f.builder.stats();
        assert_eq!((st.builds, st.hits), (1, 7));
    }

    #[test]
    fn missing_overlays_and_bad_outputs_are_errors_that_say_what_to_do() {
        let mut all = nodes(NODES);
        all.get_mut("n1").unwrap().system_overlay.push("nope".into());
        let g = generation(&all);
        let f = Fixture::new(&overlays());
        let resolve = |name: &str| {
            f.overlays
                .get(name)
                .map(|(d, t)| f.builder.compiled(name, *d, || t.clone()))
        };
        let e = f
            .builder
            .build(&g, "n1", &all["n1"], OverlayKind::System, &resolve)
            .unwrap_err();
        assert!(e.to_string().contains("\"nope\", which does not exist"), "{e}");

        // A template that names an output outside the overlay.
        let evil = tree(&[("etc/x.ww", file(b"{{ file(name=\"../../etc/shadow\") }}owned\n", 0o644))]);
        let f = Fixture::new(&[("evil", evil)]);
        let mut all = nodes(NODES);
        all.get_mut("n1").unwrap().system_overlay = vec!["evil".into()];
        let g = generation(&all);
        let resolve = |name: &str| {
            f.overlays
                .get(name)
                .map(|(d, t)| f.builder.compiled(name, *d, || t.clone()))
        };
        let e = f
            .builder
            .build(&g, "n1", &all["n1"], OverlayKind::System, &resolve)
            .unwrap_err();
        // Refused by the template function, or by the build's own check of output names.
        assert!(e.to_string().contains("../../etc/shadow"), "{e}");
    }

    /// Shared outputs are joined as deflated runs: a later overlay's plain file still
    /// replaces an earlier overlay's shared output (and the other way round), and each
    /// path is in the archive once.
    #[test]
    fn later_overlays_win_over_shared_outputs_joined_as_runs() {
        let templ = tree(&[(
            "etc/motd.ww",
            file(b"{% for n in AllNodes %}{{ n.Id }} {% endfor %}\n", 0o644),
        )]);
        let plain = tree(&[("etc/motd", file(b"plain\n", 0o644))]);
        let f = Fixture::new(&[("t", templ), ("p", plain)]);
        let mut all = nodes(NODES);
        for c in all.values_mut() {
            c.system_overlay = vec!["t".into(), "p".into()];
            c.runtime_overlay = vec!["p".into(), "t".into()];
        }
        let g = generation(&all);
        let sys = f.build(&g, &all, "n1", OverlayKind::System).to_vec();
        let run = f.build(&g, &all, "n1", OverlayKind::Runtime).to_vec();
        assert_eq!(text(&unpack_bytes(&sys)["etc/motd"]), "plain\n");
        assert_eq!(text(&unpack_bytes(&run)["etc/motd"]), "n1 n2 \n");
        for a in [&sys, &run] {
            let raw = flate2_read(a);
            assert_eq!(raw.matches("etc/motd").count(), 1, "one record for the path");
        }
    }

    fn unpack_bytes(a: &[u8]) -> BTreeMap<String, Entry> {
        archive::read(a, &archive::Limits::default()).unwrap()
    }

    fn flate2_read(a: &[u8]) -> String {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(a), &mut s).unwrap();
        String::from_utf8_lossy(&s).into_owned()
    }

    #[test]
    fn a_rendered_file_over_a_shared_one_replaces_it_once() {
        // `names` renders etc/motd with `file`, over base's plain etc/motd.
        let mut o = overlays();
        o[1] = (
            "names",
            tree(&[(
                "etc/gen.ww",
                file(b"{{ file(name=\"motd\") }}rendered {{ Id }}\n", 0o644),
            )]),
        );
        let all = nodes(NODES);
        let g = generation(&all);
        let f = Fixture::new(&o);
        let files = unpack(&f.build(&g, &all, "n2", OverlayKind::System));
        assert_eq!(text(&files["etc/motd"]), "rendered n2\n");
    }
}
