//! Reading one file of an image as a node sees it, straight from the image's layers in
//! the CAS, without an assembled root tree (what `IncludeFrom` in overlay templates needs).
//!
//! Design notes:
//! - **The layers, not a tree.** Any head has (or its artifact sync fetches) the layer
//!   blobs the catalog names; few heads have the image's assembled tree, which costs the
//!   whole root filesystem on disk and minutes to make. Templates read a handful of small
//!   files (`/etc/passwd`, `/etc/group`), so reading them from the tar streams is cheaper
//!   than assembling, and works on a head that never assembled the image.
//! - **Merged view, lexically.** Each layer is indexed once (path → kind, size, ordinal
//!   in the tar stream; whiteouts and opaque directories). A path resolves component by
//!   component from the top layer down, as overlayfs merges them: an entry in a higher
//!   layer wins; a whiteout, an opaque directory or a non-directory in a higher layer
//!   hides what lower layers have under it. Symlinks are followed inside the image (an
//!   absolute target starts again at the image's root, as in a chroot); a target that
//!   climbs above the root is refused, never clamped, as the layer applier refuses it.
//!   Nothing here touches the head's file system beyond reading CAS blobs.
//! - **Bounded.** A file larger than [`Limits::max_file`] is refused; the results
//!   (content, or a definite "no such file") are kept per image and path in a cache
//!   bounded in bytes, and layer indexes in one bounded in entries, both evicting the
//!   least recently used. A template rendered for 10,000 nodes reads the layers once.
//! - **One load at a time.** Cache misses are serialized, so a boot storm's first renders
//!   wait for the first one's read instead of each decompressing the layers.
//! - **Missing layers are not guessed around.** A layer blob this head lacks is an error
//!   naming it ([`FileError::LayerMissing`]); the caller asks the artifact sync for it.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::layers::{self, Compression, HEADER_BUDGET};
use crate::cas::{Cas, CasError, Digest};
use crate::state::LayerRef;

/// Bounds of an [`ImageFiles`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file read (bytes).
    pub max_file: u64,
    /// Bytes of file contents kept in the cache.
    pub cache_bytes: u64,
    /// Layer index entries (paths) kept.
    pub index_entries: u64,
}

impl Default for Limits {
    /// 8 MiB a file (an `/etc/passwd` of 100,000 accounts), 64 MiB of contents and a
    /// million indexed paths (about 100 MiB; a distribution base image has 20,000–60,000).
    fn default() -> Self {
        Limits {
            max_file: 8 << 20,
            cache_bytes: 64 << 20,
            index_entries: 1_000_000,
        }
    }
}

/// Why a file of an image could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("{path}: no such file in the image")]
    NotFound { path: String },
    #[error("{path}: {component} is not a directory in the image")]
    NotADirectory { path: String, component: String },
    #[error("{path} is a {kind} in the image, not a regular file")]
    NotAFile { path: String, kind: &'static str },
    #[error("{path}: symlink {link} -> {target} leads out of the image; only files inside the image can be read")]
    Escapes { path: String, link: String, target: String },
    #[error("{path}: too many levels of symbolic links in the image (more than {MAX_HOPS})")]
    Loop { path: String },
    #[error("{path} is {size} bytes; files read from an image are limited to {limit} bytes")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{path}: not a path inside the image (absolute, `..`, or malformed)")]
    BadPath { path: String },
    #[error(
        "layer {digest} of the image is not on this head yet; it has been requested from a peer head — retry shortly"
    )]
    LayerMissing { digest: Digest },
    #[error("layer {digest} of the image cannot be read: {message}")]
    Layer { digest: Digest, message: String },
}

impl FileError {
    /// A definite answer about the image (kept in the cache), not a head's trouble
    /// reading it (a missing or unreadable layer, which may be fixed by the next try).
    fn is_definite(&self) -> bool {
        !matches!(self, FileError::LayerMissing { .. } | FileError::Layer { .. })
    }
}

/// Symlinks followed in one resolution before giving up (Linux's limit).
const MAX_HOPS: u32 = 40;

/// What a layer says about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File {
        size: u64,
    },
    Symlink(String),
    /// Target: a normalised in-root path.
    Hardlink(String),
    Other(&'static str),
    Whiteout,
}

/// One layer's paths (normalised, relative; "" is the root).
#[derive(Debug, Default)]
struct LayerIndex {
    /// Path → kind and the ordinal of its (last) entry in the tar stream.
    entries: HashMap<String, (Kind, u64)>,
    /// Directories whose lower-layer contents this layer hides (`.wh..wh..opq`).
    opaque: HashSet<String>,
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// `p` and each of its ancestors up to (without) the root, deepest first.
fn ancestors(p: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(p), |q| (!q.is_empty()).then(|| parent(q))).skip(1)
}

impl LayerIndex {
    fn build(read: impl Read, compression: Compression, name: &str) -> std::io::Result<LayerIndex> {
        let (stream, budget) = layers::tar_stream(read, compression, name)?;
        let mut archive = tar::Archive::new(stream);
        let mut idx = LayerIndex::default();
        let mut entries = archive.entries()?;
        let mut ordinal = 0u64;
        loop {
            budget.set(Some(HEADER_BUDGET));
            let next = entries.next();
            budget.set(None);
            let Some(entry) = next else { break };
            let entry = entry?;
            let n = ordinal;
            ordinal += 1;
            let ty = entry.header().entry_type();
            let Some(path) = layers::normalize_name(&entry.path_bytes()) else {
                // The applier refuses such an image; nothing under it can be named anyway.
                continue;
            };
            let base = path.rsplit('/').next().unwrap_or("");
            if base == ".wh..wh..opq" {
                idx.opaque.insert(parent(&path).to_owned());
                continue;
            }
            if base.starts_with(".wh..wh.") {
                continue; // AUFS metadata
            }
            if let Some(hidden) = base.strip_prefix(".wh.") {
                // Only what lower layers have: this layer's own entry of that name stays.
                let target = join(parent(&path), hidden);
                idx.entries.entry(target).or_insert((Kind::Whiteout, n));
                continue;
            }
            let kind = match ty {
                tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                    Kind::File { size: entry.size() }
                }
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Symlink => match entry.link_name_bytes() {
                    Some(t) => Kind::Symlink(String::from_utf8_lossy(&t).into_owned()),
                    None => continue,
                },
                tar::EntryType::Link => match entry.link_name_bytes().and_then(|t| layers::normalize_name(&t)) {
                    Some(t) => Kind::Hardlink(t),
                    None => continue,
                },
                tar::EntryType::Char => Kind::Other("character device"),
                tar::EntryType::Block => Kind::Other("block device"),
                tar::EntryType::Fifo => Kind::Other("FIFO"),
                _ => continue, // PAX global headers, volume labels: not files
            };
            // Parents the layer does not list are directories of this layer; one whited
            // out earlier in this layer is made again, empty of lower contents.
            for a in ancestors(&path) {
                match idx.entries.get(a) {
                    None => {
                        idx.entries.insert(a.to_owned(), (Kind::Dir, n));
                    }
                    Some((Kind::Whiteout, _)) => {
                        idx.entries.insert(a.to_owned(), (Kind::Dir, n));
                        idx.opaque.insert(a.to_owned());
                    }
                    Some(_) => {}
                }
            }
            idx.entries.insert(path, (kind, n));
        }
        // Read to the end so the decompressor checks its trailer (gzip CRC, zstd checksum).
        let mut rest = archive.into_inner();
        std::io::copy(&mut rest, &mut std::io::sink())?;
        Ok(idx)
    }

    /// This layer hides lower layers' `p`: an ancestor (or the root) is opaque, whited
    /// out, or not a directory here.
    fn hides(&self, p: &str) -> bool {
        ancestors(p)
            .chain(std::iter::once(""))
            .any(|a| self.opaque.contains(a) || matches!(self.entries.get(a), Some((k, _)) if *k != Kind::Dir))
    }
}

/// Where a resolved file's data is.
#[derive(Debug, Clone, Copy)]
struct Located {
    layer: usize,
    ordinal: u64,
    size: u64,
}

/// An image's layer indexes, bottom first.
type Indexes = [Arc<LayerIndex>];

/// The topmost entry of `p` among layers `..top`, or None when absent or hidden.
fn merged<'a>(idx: &'a Indexes, p: &str, top: usize) -> Option<(usize, &'a Kind, u64)> {
    for i in (0..top).rev() {
        if let Some((k, n)) = idx[i].entries.get(p) {
            return (*k != Kind::Whiteout).then_some((i, k, *n));
        }
        if idx[i].hides(p) {
            return None;
        }
    }
    None
}

/// Push the components of a symlink target onto the stack of what is left to walk.
fn push_components(todo: &mut Vec<String>, target: &str) {
    for c in target.split('/').rev() {
        if !c.is_empty() && c != "." {
            todo.push(c.to_owned());
        }
    }
}

/// Resolve `path` (absolute in the image) to a regular file, following symlinks inside
/// the image.
fn resolve(idx: &Indexes, path: &str) -> Result<Located, FileError> {
    let mut todo = Vec::new();
    push_components(&mut todo, path);
    let mut cur: Vec<String> = Vec::new();
    let mut hops = 0u32;
    let mut last_link: Option<(String, String)> = None;
    let mut top = idx.len();
    while let Some(c) = todo.pop() {
        if c == ".." {
            if cur.pop().is_none() {
                let (link, target) = last_link.clone().unwrap_or_default();
                return Err(FileError::Escapes {
                    path: path.to_owned(),
                    link,
                    target,
                });
            }
            continue;
        }
        let here = join(&cur.join("/"), &c);
        let last = todo.is_empty();
        let Some((layer, kind, ordinal)) = merged(idx, &here, top) else {
            return Err(FileError::NotFound { path: path.to_owned() });
        };
        match kind {
            Kind::Dir => cur.push(c),
            Kind::Symlink(t) => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(FileError::Loop { path: path.to_owned() });
                }
                last_link = Some((format!("/{here}"), t.clone()));
                // A symlink resolves in the image as it is (also one a hardlink led to).
                top = idx.len();
                if t.starts_with('/') {
                    cur.clear();
                }
                push_components(&mut todo, t);
            }
            Kind::File { size } if last => {
                return Ok(Located {
                    layer,
                    ordinal,
                    size: *size,
                })
            }
            Kind::Hardlink(t) if last => {
                // The link is what its target was when the layer was applied: the target
                // among this layer and those below. A link to a symlink acts as the symlink.
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(FileError::Loop { path: path.to_owned() });
                }
                top = layer + 1;
                let (tdir, tname) = (parent(t), t.rsplit('/').next().unwrap_or(t));
                cur = tdir.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect();
                todo.push(tname.to_owned());
            }
            Kind::Other(kind) if last => {
                return Err(FileError::NotAFile {
                    path: path.to_owned(),
                    kind,
                })
            }
            Kind::File { .. } | Kind::Hardlink(_) | Kind::Other(_) => {
                return Err(FileError::NotADirectory {
                    path: path.to_owned(),
                    component: format!("/{here}"),
                })
            }
            Kind::Whiteout => unreachable!("merged() never returns a whiteout"),
        }
    }
    Err(FileError::NotAFile {
        path: path.to_owned(),
        kind: "directory",
    })
}

/// Counters (tests and the benchmark read them).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FileStats {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Passes over a layer's tar stream (indexing or reading a file's data).
    pub layer_passes: u64,
}

/// A least-recently-used map bounded by a weight.
#[derive(Debug)]
struct Lru<K, V> {
    map: HashMap<K, (V, u64, u64)>,
    tick: u64,
    weight: u64,
    limit: u64,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Lru<K, V> {
    fn new(limit: u64) -> Self {
        Lru {
            map: HashMap::new(),
            tick: 0,
            weight: 0,
            limit,
        }
    }

    fn get(&mut self, k: &K) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(k).map(|(v, t, _)| {
            *t = tick;
            v.clone()
        })
    }

    fn put(&mut self, k: K, v: V, weight: u64) {
        if weight > self.limit {
            return;
        }
        self.tick += 1;
        if let Some((_, _, w)) = self.map.insert(k, (v, self.tick, weight)) {
            self.weight -= w;
        }
        self.weight += weight;
        while self.weight > self.limit {
            // Eviction scans the map: it holds few entries (images × paths, or layers).
            let oldest = self.map.iter().min_by_key(|(_, (_, t, _))| *t).map(|(k, _)| k.clone());
            let Some(k) = oldest else { break };
            if let Some((_, _, w)) = self.map.remove(&k) {
                self.weight -= w;
            }
        }
    }
}

type Content = Result<Arc<Vec<u8>>, FileError>;

#[derive(Debug)]
struct Caches {
    /// (image key, path) → content or a definite error.
    files: Lru<(Digest, String), Content>,
    /// Layer digest → index.
    indexes: Lru<Digest, Arc<LayerIndex>>,
}

/// Reads files of images from their layers in the CAS, with bounded caches. Share one per
/// head (`Arc`); every method takes `&self` and may be called from any thread.
#[derive(Debug)]
pub struct ImageFiles {
    cas: Cas,
    limits: Limits,
    caches: Mutex<Caches>,
    load: Mutex<()>,
    hits: AtomicU64,
    passes: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Map lookups and inserts only: a panic cannot leave them half-done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The identity of an image's content: its layer digests in order.
pub fn image_key(layers: &[LayerRef]) -> Digest {
    let mut text = Vec::with_capacity(layers.len() * 72);
    for l in layers {
        text.extend_from_slice(l.digest.to_string().as_bytes());
        text.push(b'\n');
    }
    Digest::of(&text)
}

impl ImageFiles {
    pub fn new(cas: Cas, limits: Limits) -> ImageFiles {
        ImageFiles {
            cas,
            limits,
            caches: Mutex::new(Caches {
                files: Lru::new(limits.cache_bytes),
                indexes: Lru::new(limits.index_entries),
            }),
            load: Mutex::default(),
            hits: AtomicU64::new(0),
            passes: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> FileStats {
        FileStats {
            hits: self.hits.load(Ordering::Relaxed),
            layer_passes: self.passes.load(Ordering::Relaxed),
        }
    }

    /// The content of `path` (absolute inside the image) in the image made of `layers`
    /// (bottom first), symlinks followed inside the image.
    pub fn read(&self, layers: &[LayerRef], path: &str) -> Content {
        let norm = match path.strip_prefix('/').map(str::as_bytes) {
            Some([]) => Some(String::new()),
            Some(rel) => layers::normalize_name(rel),
            None => None,
        };
        let Some(norm) = norm else {
            return Err(FileError::BadPath { path: path.to_owned() });
        };
        let shown = format!("/{norm}");
        let key = (image_key(layers), norm);
        if let Some(c) = lock(&self.caches).files.get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return c;
        }
        let _one = lock(&self.load);
        if let Some(c) = lock(&self.caches).files.get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return c;
        }
        let result = self.load(layers, &shown);
        if result.as_ref().err().is_none_or(FileError::is_definite) {
            let weight = match &result {
                Ok(b) => b.len() as u64 + 64,
                Err(_) => 64,
            };
            lock(&self.caches).files.put(key, result.clone(), weight);
        }
        result
    }

    fn load(&self, layers: &[LayerRef], path: &str) -> Content {
        if let Some(l) = layers.iter().find(|l| !self.cas.contains(&l.digest)) {
            return Err(FileError::LayerMissing { digest: l.digest });
        }
        let mut idx = Vec::with_capacity(layers.len());
        for l in layers {
            idx.push(self.index(l)?);
        }
        let at = resolve(&idx, path)?;
        if at.size > self.limits.max_file {
            return Err(FileError::TooLarge {
                path: path.to_owned(),
                size: at.size,
                limit: self.limits.max_file,
            });
        }
        self.data(&layers[at.layer], at).map(Arc::new)
    }

    /// Layer `l`'s blob and how it is compressed (one more pass counted).
    fn blob(&self, l: &LayerRef) -> Result<(std::fs::File, Compression), FileError> {
        let f = self.cas.open_verified(&l.digest).map_err(|e| match e {
            CasError::Missing(d) => FileError::LayerMissing { digest: d },
            e => FileError::Layer {
                digest: l.digest,
                message: e.to_string(),
            },
        })?;
        let comp = Compression::from_media_type(&l.media_type).map_err(|e| FileError::Layer {
            digest: l.digest,
            message: e.to_string(),
        })?;
        self.passes.fetch_add(1, Ordering::Relaxed);
        Ok((f, comp))
    }

    fn index(&self, l: &LayerRef) -> Result<Arc<LayerIndex>, FileError> {
        if let Some(i) = lock(&self.caches).indexes.get(&l.digest) {
            return Ok(i);
        }
        let (f, comp) = self.blob(l)?;
        let idx = LayerIndex::build(f, comp, &l.digest.to_string()).map_err(|e| FileError::Layer {
            digest: l.digest,
            message: e.to_string(),
        })?;
        let idx = Arc::new(idx);
        let weight = idx.entries.len() as u64 + idx.opaque.len() as u64 + 1;
        lock(&self.caches).indexes.put(l.digest, idx.clone(), weight);
        Ok(idx)
    }

    /// The data of entry `at.ordinal` of layer `l` (a second pass over that layer only).
    fn data(&self, l: &LayerRef, at: Located) -> Result<Vec<u8>, FileError> {
        let bad = |e: std::io::Error| FileError::Layer {
            digest: l.digest,
            message: e.to_string(),
        };
        let (f, comp) = self.blob(l)?;
        let (stream, budget) = layers::tar_stream(f, comp, &l.digest.to_string()).map_err(bad)?;
        let mut archive = tar::Archive::new(stream);
        let mut entries = archive.entries().map_err(bad)?;
        let mut n = 0u64;
        loop {
            budget.set(Some(HEADER_BUDGET));
            let next = entries.next();
            budget.set(None);
            let mut entry = match next {
                None => break,
                Some(e) => e.map_err(bad)?,
            };
            if n == at.ordinal {
                let mut out = Vec::with_capacity(at.size as usize);
                (&mut entry).take(at.size).read_to_end(&mut out).map_err(bad)?;
                return Ok(out);
            }
            n += 1;
        }
        Err(bad(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the layer changed between two reads (the entry is gone)",
        )))
    }
}

#[cfg(test)]
mod tests;
