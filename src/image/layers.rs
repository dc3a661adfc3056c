//! Applying OCI image layers to a root filesystem directory, safely.
//!
//! Layers are tar streams from registries and archives nobody on the team wrote, and the process applying them
//! runs as root. The design goal is: *whatever the tar says, nothing outside the image root is read, written or
//! removed, and refusals say exactly which layer and entry were the problem.* How:
//!
//! - **No path is ever handed to the kernel for resolution.** Entry names are normalised lexically
//!   (`normalize`: `./` and `.` dropped, `..` popped, refused if it climbs above the root; absolute names
//!   refused). Every write is then done relative to a directory descriptor obtained by `tree::Tree::open_dir`,
//!   which refuses to pass through symlinks (`openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)` where the kernel
//!   has it, else a component-by-component `openat(O_NOFOLLOW|O_DIRECTORY)` walk). The last component is
//!   handled with `*at` syscalls that never follow it either (`O_CREAT|O_EXCL|O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`).
//!   So "`a -> /etc`, then `a/passwd`" is refused, not followed. This is stricter than Docker/containerd, which
//!   follow in-root symlinks while clamping them to the root; see the caveat on [`apply_layer`].
//! - **Symlinks are data, but checked data.** We never follow them ourselves; still, a symlink whose target
//!   climbs out of the root (resolved lexically from the link's directory; absolute targets count as relative
//!   to the root) is refused, so a consumer that later follows links from the host cannot be tricked either.
//!   Hardlink targets must be normalised in-root paths reached without symlinks.
//! - **The spec's replacement rule**: an entry over an existing path removes it first (a whole tree when the
//!   existing path is a directory) unless both are directories, in which case the directory's metadata is
//!   updated (merge). Regular files are always written to a fresh inode, so a hardlinked file from a lower layer
//!   is never modified in place.
//! - **Whiteouts** (`.wh.NAME`, `.wh..wh..opq`) only remove what *lower* layers put there. We remember every
//!   path this layer created (plus its ancestors) in a set, so an opaque marker that comes after same-layer
//!   entries, or a whiteout naming a same-layer path, keeps this layer's content. Whiteout files are never
//!   written. Other `.wh..wh.*` names (AUFS metadata like `.wh..wh.plnk`) are skipped.
//! - **Metadata order** per file: data, then `chown` (it clears setuid bits and file capabilities), then
//!   `chmod`, then xattrs (so `security.capability` survives), then times. Directory modes and times are
//!   applied after the whole layer, deepest first, so adding children does not bump a directory's mtime and a
//!   read-only directory (`dr-xr-xr-x`) can still be filled by an unprivileged run.
//! - **Streaming**: file data is copied through a fixed 64 KiB buffer; nothing proportional to the layer's data
//!   is held. Memory grows only with the number of paths (the created set and the directory list). PAX and GNU
//!   long-name headers, which the `tar` crate buffers, are capped at 16 MiB per entry ([`HEADER_BUDGET`]).
//! - `tar::Entry::unpack` is not used: it writes devices and FIFOs as regular files and follows symlinks in
//!   parent directories.
//!
//! Applying is not transactional: on error the root is left part-applied and must be discarded (build into a
//! scratch directory and rename it into place only on success).
//!
//! Dependencies: `rustix` for the syscalls (`openat2`, `mknodat`, `fchownat(AT_SYMLINK_NOFOLLOW)`,
//! `utimensat` on symlinks, `fsetxattr`/`lsetxattr`): safe, typed, maintained by the Bytecode Alliance, already
//! in the dependency tree through `tempfile`, and it covers xattrs, so the `xattr` crate is not needed. zstd
//! comes from pure-Rust `ruzstd` (see `zstd.rs`), gzip from `flate2` with the zlib-rs backend. Linux only.
//! xattrs are best effort: `ENOTSUP`/`EPERM`/`EACCES` are logged at debug level and skipped; overlayfs control
//! attributes (`trusted.overlay.*`, `user.overlay.*`) are never applied, since the root may later serve as an
//! overlay lower directory.

mod tree;
mod zstd;

#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{self as rfs, AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use self::tree::{list, lstat_at, parent_of, Tree, WalkError, DIR_FLAGS};

/// Most bytes of extension headers (PAX records, GNU long names, sparse maps) allowed before one entry.
/// The `tar` crate reads these into memory, so a hostile layer could otherwise claim a multi-gigabyte header.
pub const HEADER_BUDGET: u64 = 16 * 1024 * 1024;

/// Longest path (bytes) and path component accepted, as Linux's PATH_MAX (incl. NUL) and NAME_MAX.
const PATH_MAX: usize = 4095;
const NAME_MAX: usize = 255;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip (RFC 1952), possibly several concatenated members.
    Gzip,
    /// Zstandard (RFC 8878), possibly several frames.
    Zstd,
}

impl Compression {
    /// The compression implied by a layer descriptor's media type (OCI, OCI non-distributable, Docker v2).
    /// Parameters after `;` are ignored.
    pub fn from_media_type(mt: &str) -> Result<Self, LayerError> {
        let base = mt.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match base.as_str() {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Self::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Self::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Self::Zstd),
            _ => Err(LayerError::UnsupportedMediaType {
                media_type: mt.to_owned(),
            }),
        }
    }

    /// Guess from the first bytes of a blob: gzip and zstd have magic numbers; anything else is taken as tar.
    pub fn sniff(first_bytes: &[u8]) -> Self {
        if first_bytes.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if first_bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }
}

/// Knobs for [`apply_layer`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOptions {
    /// Give entries the uid/gid recorded in the layer (needs root, or CAP_CHOWN). When false, everything is
    /// owned by the running user.
    pub same_owner: bool,
}

impl ApplyOptions {
    /// `same_owner` when running as root, as GNU tar does.
    pub fn for_current_user() -> Self {
        Self {
            same_owner: rustix::process::geteuid().is_root(),
        }
    }
}

/// What applying one layer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyStats {
    /// Filesystem objects written (files, directories, links, devices, FIFOs); whiteouts not included.
    pub entries: u64,
    /// Bytes of regular-file data written.
    pub bytes: u64,
    /// Whiteout entries processed (`.wh.NAME` and opaque markers).
    pub whiteouts: u64,
    /// Entries deliberately not applied: device nodes the process may not create (no CAP_MKNOD),
    /// AUFS metadata (`.wh..wh.*`), PAX global headers.
    pub skipped: u64,
}

/// Why an entry was refused as unsafe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("its path is absolute; layer paths must be relative to the image root (\"etc/x\" or \"./etc/x\")")]
    AbsolutePath,
    #[error("its path climbs out of the image root with \"..\"")]
    EscapesRoot,
    #[error(
        "parent {component:?} is a symbolic link; wulfpack never writes through symlinks, since one pointing \
         outside the image would redirect the write to the host"
    )]
    SymlinkParent { component: String },
    #[error("its symlink target {target:?} leads outside the image root")]
    SymlinkEscapes { target: String },
    #[error("its hardlink target {target:?} is outside the image root")]
    HardlinkEscapes { target: String },
    #[error("its hardlink target {target:?} passes through symbolic link {component:?}")]
    HardlinkThroughSymlink { target: String, component: String },
    #[error("it would replace the image root directory with a non-directory")]
    ReplacesRoot,
}

/// Errors from applying a layer. Every variant about layer content names the layer and the tar entry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    #[error(
        "unsupported layer media type {media_type:?}: wulfpack applies filesystem layers \
         (application/vnd.oci.image.layer.v1.tar, +gzip, +zstd, or application/vnd.docker.image.rootfs.diff.tar.gzip); \
         this blob is something else (an artifact, a foreign-platform layer, an unknown compression) — check the \
         image reference and platform"
    )]
    UnsupportedMediaType { media_type: String },

    #[error("layer {layer}: cannot open the image root {}: {source}; it must be an existing, writable directory", root.display())]
    Root {
        layer: String,
        root: PathBuf,
        source: io::Error,
    },

    #[error(
        "layer {layer}: the layer stream is unreadable {}: {source}; the blob is truncated or corrupt, or not \
         the compression its media type says — delete it from the cache and pull it again",
        where_in(entry)
    )]
    Stream {
        layer: String,
        entry: Option<String>,
        source: io::Error,
    },

    #[error(
        "layer {layer}: entry {entry:?} refused: {reason}. Nothing outside the image root was touched; this layer \
         is malformed or hostile, so the image should not be used"
    )]
    Refused {
        layer: String,
        entry: String,
        reason: Refusal,
    },

    #[error("layer {layer}: entry {entry:?} is malformed: {problem}")]
    Malformed {
        layer: String,
        entry: String,
        problem: String,
    },

    #[error(
        "layer {layer}: entry {entry:?} has tar type {type_flag:?}, which wulfpack does not apply (only files, \
         directories, symlinks, hardlinks, devices and FIFOs belong in a filesystem layer); rebuild the layer \
         without it"
    )]
    UnsupportedEntry {
        layer: String,
        entry: String,
        type_flag: char,
    },

    #[error("layer {layer}: entry {entry:?}: could not {action}: {source}{}", hint(source))]
    Io {
        layer: String,
        entry: String,
        action: String,
        source: io::Error,
    },
}

impl LayerError {
    /// The layer the error is about (empty for [`LayerError::UnsupportedMediaType`]).
    pub fn layer(&self) -> &str {
        match self {
            Self::UnsupportedMediaType { .. } => "",
            Self::Root { layer, .. }
            | Self::Stream { layer, .. }
            | Self::Refused { layer, .. }
            | Self::Malformed { layer, .. }
            | Self::UnsupportedEntry { layer, .. }
            | Self::Io { layer, .. } => layer,
        }
    }

    /// The tar entry the error is about, when there is one.
    pub fn entry(&self) -> Option<&str> {
        match self {
            Self::UnsupportedMediaType { .. } | Self::Root { .. } => None,
            Self::Stream { entry, .. } => entry.as_deref(),
            Self::Refused { entry, .. }
            | Self::Malformed { entry, .. }
            | Self::UnsupportedEntry { entry, .. }
            | Self::Io { entry, .. } => Some(entry),
        }
    }
}

fn where_in(entry: &Option<String>) -> String {
    match entry {
        Some(e) => format!("at or after entry {e:?}"),
        None => "before its first entry".to_owned(),
    }
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error().map(Errno::from_raw_os_error) {
        Some(Errno::NOSPC) | Some(Errno::DQUOT) => " — the filesystem holding the image root is full",
        Some(Errno::PERM) | Some(Errno::ACCESS) => {
            " — run as root (wulfd normally does), or apply without same_owner; check the root's permissions"
        }
        Some(Errno::ROFS) => " — the image root is on a read-only filesystem",
        Some(Errno::MLINK) => " — too many hardlinks to one file for this filesystem",
        Some(Errno::INVAL) => " — the filesystem or user namespace does not accept this value (unmapped uid/gid?)",
        _ => "",
    }
}

/// Apply one layer (a tar stream, compressed as `compression` says) on top of `root`.
///
/// If the data's magic number contradicts `compression` (a Docker "tar.gzip" layer that is really plain tar,
/// which `docker save` produces), the data wins and a warning is logged.
///
/// Caveats — things refused that a real image might legitimately contain:
/// - entries whose parent path crosses a symlink, e.g. `lib/modules/x` on a merged-/usr base where
///   `lib -> usr/lib` (Docker and containerd would write to `usr/lib/modules/x`). Layers produced by
///   `docker build`/buildah are diffs of the real tree and do not do this; hand-made tarballs may.
/// - absolute entry names (`/etc/x`), which Docker silently makes relative.
/// - relative symlinks with more `..` than their depth (`a/l -> ../../x`), which inside a chroot would clamp
///   to the root.
pub fn apply_layer(
    root: &Path,
    layer: impl Read,
    compression: Compression,
    layer_name: &str,
    opts: &ApplyOptions,
) -> Result<ApplyStats, LayerError> {
    let tree = Tree::open(root).map_err(|source| LayerError::Root {
        layer: layer_name.to_owned(),
        root: root.to_path_buf(),
        source,
    })?;
    let mut input = BufReader::with_capacity(256 * 1024, layer);
    let head = input.fill_buf().map_err(|source| LayerError::Stream {
        layer: layer_name.to_owned(),
        entry: None,
        source,
    })?;
    let sniffed = Compression::sniff(head);
    let actual = if head.is_empty() {
        Compression::None // an empty blob is an empty layer, whatever its label
    } else if sniffed == compression {
        compression
    } else {
        tracing::warn!(layer = layer_name, declared = ?compression, detected = ?sniffed,
            "layer data does not match its declared compression; using what the data says");
        sniffed
    };
    let mut applier = Applier::new(tree, layer_name, opts);
    match actual {
        Compression::None => applier.run(input)?,
        Compression::Gzip => applier.run(flate2::bufread::MultiGzDecoder::new(input))?,
        Compression::Zstd => applier.run(zstd::ZstdFrames::new(input))?,
    }
    tracing::debug!(layer = layer_name, stats = ?applier.stats, "layer applied");
    Ok(applier.stats)
}

/// Normalise a tar member name (or hardlink target) to a relative path with only normal components.
/// An empty result means the root itself.
pub(crate) fn normalize(raw: &[u8]) -> Result<PathBuf, PathProblem> {
    if raw.is_empty() {
        return Err(PathProblem::Malformed("the entry has an empty name".into()));
    }
    if raw.contains(&0) {
        return Err(PathProblem::Malformed("the name contains a NUL byte".into()));
    }
    if raw[0] == b'/' {
        // `umoci insert DIR /` writes the root directory itself as "/": it names
        // the root, not a path outside it. Every other absolute name is refused.
        if raw.iter().all(|b| *b == b'/') {
            return Ok(PathBuf::new());
        }
        return Err(PathProblem::Refused(Refusal::AbsolutePath));
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err(PathProblem::Refused(Refusal::EscapesRoot));
                }
            }
            c if c.len() > NAME_MAX => {
                return Err(PathProblem::Malformed(format!(
                    "a path component is {} bytes long; Linux allows {NAME_MAX}",
                    c.len()
                )))
            }
            c => parts.push(c),
        }
    }
    let joined = parts.join(&b'/');
    if joined.len() > PATH_MAX {
        return Err(PathProblem::Malformed(format!(
            "the path is {} bytes long; Linux allows {PATH_MAX}",
            joined.len()
        )));
    }
    Ok(PathBuf::from(OsString::from_vec(joined)))
}

/// Whether a symlink at `link` (normalised, relative to the root) with `target` stays inside the root when
/// resolved lexically from the link's directory. Absolute targets are taken relative to the root (as inside
/// a chroot), so they always stay inside.
pub(crate) fn symlink_stays_inside(link: &Path, target: &[u8]) -> bool {
    if target.first() == Some(&b'/') {
        return true;
    }
    let mut depth = parent_of(link).iter().count();
    for comp in target.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    true
}

/// A problem found while normalising a path.
#[derive(Debug)]
pub(crate) enum PathProblem {
    Refused(Refusal),
    Malformed(String),
}

/// Metadata of one entry, from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    times: Timestamps,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Directory metadata deferred to the end of the layer.
struct DirMeta {
    entry: String,
    mode: u32,
    times: Timestamps,
}

/// What became of an entry.
enum Outcome {
    Written,
    Whiteout,
    Skipped,
}

struct Applier<'a> {
    tree: Tree,
    layer: &'a str,
    opts: &'a ApplyOptions,
    /// Every path this layer wrote, plus all their ancestors (invariant: a member's parent is a member).
    created: HashSet<PathBuf>,
    /// Directories whose mode and times are applied after the last entry.
    dirs: BTreeMap<PathBuf, DirMeta>,
    /// Existing directories this layer changes without listing them (a new child, a
    /// whiteout): their times before the change, restored at the end. Without this
    /// their mtime would become "now", and the same layers would give different trees
    /// (and image digests) depending on when they were applied.
    kept: BTreeMap<PathBuf, Timestamps>,
    stats: ApplyStats,
    buf: Vec<u8>,
}

impl<'a> Applier<'a> {
    fn new(tree: Tree, layer: &'a str, opts: &'a ApplyOptions) -> Self {
        Self {
            tree,
            layer,
            opts,
            created: HashSet::new(),
            dirs: BTreeMap::new(),
            kept: BTreeMap::new(),
            stats: ApplyStats::default(),
            buf: vec![0; 64 * 1024],
        }
    }

    /// Iterate the tar stream and apply every entry; read the stream to its very end so decompressors check
    /// their trailers (gzip CRC, zstd checksum); then apply the deferred directory metadata.
    fn run<R: Read>(&mut self, reader: R) -> Result<(), LayerError> {
        let budget = Rc::new(Cell::new(None));
        let mut archive = tar::Archive::new(HeaderBudget {
            inner: reader,
            budget: Rc::clone(&budget),
        });
        let mut last: Option<String> = None;
        {
            let mut entries = archive.entries().map_err(|e| self.stream(&last, e))?;
            loop {
                budget.set(Some(HEADER_BUDGET));
                let next = entries.next();
                budget.set(None);
                let mut entry = match next {
                    None => break,
                    Some(Ok(entry)) => entry,
                    Some(Err(e)) => return Err(self.stream(&last, e)),
                };
                let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                match self.apply_entry(&mut entry, &name)? {
                    Outcome::Written => self.stats.entries += 1,
                    Outcome::Whiteout => self.stats.whiteouts += 1,
                    Outcome::Skipped => self.stats.skipped += 1,
                }
                // Whatever the entry carried that we did not use (data of a whiteout, a hardlink, ...).
                io::copy(&mut entry, &mut io::sink()).map_err(|e| self.stream(&Some(name.clone()), e))?;
                last = Some(name);
            }
        }
        let mut rest = archive.into_inner().inner;
        io::copy(&mut rest, &mut io::sink()).map_err(|e| self.stream(&last, e))?;
        self.finish_dirs()
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Outcome, LayerError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.as_byte() == b'V' {
            tracing::debug!(
                layer = self.layer,
                entry = name,
                "skipping PAX global header / volume label"
            );
            return Ok(Outcome::Skipped);
        }
        let rel = normalize(&entry.path_bytes()).map_err(|p| self.path_problem(name, p))?;

        // Whiteouts and AUFS metadata.
        let mut comps = rel.iter().peekable();
        while let Some(comp) = comps.next() {
            let bytes = comp.as_bytes();
            if bytes.starts_with(b".wh..wh.") && !(comps.peek().is_none() && bytes == b".wh..wh..opq") {
                tracing::debug!(layer = self.layer, entry = name, "skipping AUFS metadata entry");
                return Ok(Outcome::Skipped);
            }
            if bytes.starts_with(b".wh.") {
                if comps.peek().is_some() {
                    return Err(self.malformed(name, "a directory name starts with \".wh.\", which marks whiteouts"));
                }
                self.keep_times_of_ancestors(&rel, None);
                self.whiteout(&rel, name)?;
                return Ok(Outcome::Whiteout);
            }
        }

        let meta = self.meta(entry, name)?;
        self.keep_times_of_ancestors(&rel, Some(meta.times.clone()));
        let outcome = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.file(entry, &rel, name, &meta)?
            }
            tar::EntryType::Directory => self.dir(&rel, name, &meta)?,
            tar::EntryType::Symlink => self.symlink(entry, &rel, name, &meta)?,
            tar::EntryType::Link => self.hardlink(entry, &rel, name)?,
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                self.node(entry, kind, &rel, name, &meta)?
            }
            other => {
                return Err(LayerError::UnsupportedEntry {
                    layer: self.layer.to_owned(),
                    entry: name.to_owned(),
                    type_flag: other.as_byte() as char,
                })
            }
        };
        if let Outcome::Written = outcome {
            self.mark_created(&rel);
        }
        Ok(outcome)
    }

    // ----- entry kinds -----

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        name: &str,
        meta: &Meta,
    ) -> Result<Outcome, LayerError> {
        let (parent, base) = self.parent_for_write(rel, name)?;
        self.clear_slot(parent.as_fd(), base, rel, name, false)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat(&parent, base, flags, Mode::from_raw_mode(0o600))
            .map_err(|e| self.io(name, "create the file", e.into()))?;
        let mut file = File::from(fd);
        let mut written: u64 = 0;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.stream(&Some(name.to_owned()), e)),
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| self.io(name, "write the file's data", e))?;
            written += n as u64;
        }
        let declared = entry.size();
        if matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) && written != declared
        {
            let e = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the entry declares {declared} bytes but the stream ended after {written}"),
            );
            return Err(self.stream(&Some(name.to_owned()), e));
        }
        self.stats.bytes += written;
        self.chown(name, || rfs::fchown(&file, Some(uid(meta.uid)), Some(gid(meta.gid))))?;
        rfs::fchmod(&file, Mode::from_raw_mode(meta.mode)).map_err(|e| self.io(name, "set the file mode", e.into()))?;
        self.xattrs_fd(file.as_fd(), name, meta)?;
        rfs::futimens(&file, &meta.times).map_err(|e| self.io(name, "set the file times", e.into()))?;
        Ok(Outcome::Written)
    }

    fn dir(&mut self, rel: &Path, name: &str, meta: &Meta) -> Result<Outcome, LayerError> {
        let fd = match rel.file_name() {
            None => self.open_dir(Path::new(""), name)?,
            Some(base) => {
                let (parent, _) = self.parent_for_write(rel, name)?;
                if !self.clear_slot(parent.as_fd(), base, rel, name, true)? {
                    match rfs::mkdirat(&parent, base, Mode::from_raw_mode(0o700)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(self.io(name, "create the directory", e.into())),
                    }
                }
                rfs::openat(&parent, base, DIR_FLAGS, Mode::empty())
                    .map_err(|e| self.io(name, "open the directory", e.into()))?
            }
        };
        // Deferred: the final pass sets the layer's mode, so nothing needs restoring.
        let _ = tree::ensure_owner_rwx(fd.as_fd());
        self.chown(name, || rfs::fchown(&fd, Some(uid(meta.uid)), Some(gid(meta.gid))))?;
        self.xattrs_fd(fd.as_fd(), name, meta)?;
        self.dirs.insert(
            rel.to_path_buf(),
            DirMeta {
                entry: name.to_owned(),
                mode: meta.mode,
                times: meta.times.clone(),
            },
        );
        Ok(Outcome::Written)
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        rel: &Path,
        name: &str,
        meta: &Meta,
    ) -> Result<Outcome, LayerError> {
        let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
        if target.is_empty() || target.contains(&0) {
            return Err(self.malformed(name, "the symlink has an empty target or one containing NUL"));
        }
        if !symlink_stays_inside(rel, &target) {
            let target = String::from_utf8_lossy(&target).into_owned();
            return Err(self.refused(name, Refusal::SymlinkEscapes { target }));
        }
        let (parent, base) = self.parent_for_write(rel, name)?;
        self.clear_slot(parent.as_fd(), base, rel, name, false)?;
        rfs::symlinkat(OsStr::from_bytes(&target), &parent, base)
            .map_err(|e| self.io(name, "create the symlink", e.into()))?;
        self.finish_non_fd(parent.as_fd(), base, name, meta, None)?;
        Ok(Outcome::Written)
    }

    fn hardlink<R: Read>(&mut self, entry: &tar::Entry<'_, R>, rel: &Path, name: &str) -> Result<Outcome, LayerError> {
        let raw = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let target = match normalize(&raw) {
            Ok(t) => t,
            Err(PathProblem::Refused(_)) => {
                return Err(self.refused(name, Refusal::HardlinkEscapes { target: shown.clone() }))
            }
            Err(PathProblem::Malformed(p)) => return Err(self.malformed(name, &format!("hardlink target: {p}"))),
        };
        let Some(target_base) = target.file_name() else {
            return Err(self.malformed(name, "the hardlink points at the image root"));
        };
        let missing = |this: &Self| {
            this.malformed(
                name,
                &format!(
                    "hardlink target {shown:?} does not exist; it must be an earlier entry of this layer or a file \
                     of a lower layer"
                ),
            )
        };
        let target_parent = match self.tree.open_dir(parent_of(&target), false) {
            Ok(fd) => fd,
            Err(WalkError::Symlink(p)) => {
                let component = p.display().to_string();
                return Err(self.refused(
                    name,
                    Refusal::HardlinkThroughSymlink {
                        target: shown.clone(),
                        component,
                    },
                ));
            }
            Err(WalkError::Missing(_)) | Err(WalkError::NotDir(_)) => return Err(missing(self)),
            Err(WalkError::Io(p, e)) => return Err(self.io(name, &format!("open directory {:?}", p.display()), e)),
        };
        let target_stat = match rfs::statat(&target_parent, target_base, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Err(missing(self)),
            Err(e) => return Err(self.io(name, "inspect the hardlink target", e.into())),
        };
        if FileType::from_raw_mode(target_stat.st_mode) == FileType::Directory {
            return Err(self.malformed(name, &format!("hardlink target {shown:?} is a directory")));
        }
        let (parent, base) = self.parent_for_write(rel, name)?;
        if let Ok(st) = rfs::statat(&parent, base, AtFlags::SYMLINK_NOFOLLOW) {
            if st.st_dev == target_stat.st_dev && st.st_ino == target_stat.st_ino {
                return Ok(Outcome::Written); // already that very file
            }
        }
        self.clear_slot(parent.as_fd(), base, rel, name, false)?;
        rfs::linkat(&target_parent, target_base, &parent, base, AtFlags::empty())
            .map_err(|e| self.io(name, &format!("hardlink to {shown:?}"), e.into()))?;
        // The link shares the target's inode, whose metadata the target's own entry already set.
        Ok(Outcome::Written)
    }

    fn node<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        kind: tar::EntryType,
        rel: &Path,
        name: &str,
        meta: &Meta,
    ) -> Result<Outcome, LayerError> {
        let (file_type, dev) = if kind == tar::EntryType::Fifo {
            (FileType::Fifo, 0)
        } else {
            let header = entry.header();
            let major = header
                .device_major()
                .map_err(|e| self.malformed(name, &format!("device major: {e}")))?;
            let minor = header
                .device_minor()
                .map_err(|e| self.malformed(name, &format!("device minor: {e}")))?;
            let ft = if kind == tar::EntryType::Char {
                FileType::CharacterDevice
            } else {
                FileType::BlockDevice
            };
            (ft, rfs::makedev(major.unwrap_or(0), minor.unwrap_or(0)))
        };
        let (parent, base) = self.parent_for_write(rel, name)?;
        self.clear_slot(parent.as_fd(), base, rel, name, false)?;
        match rfs::mknodat(&parent, base, file_type, Mode::from_raw_mode(0o600), dev) {
            Ok(()) => {}
            Err(Errno::PERM) if file_type != FileType::Fifo => {
                tracing::warn!(
                    layer = self.layer,
                    entry = name,
                    "skipping device node: this process may not create devices (needs CAP_MKNOD)"
                );
                return Ok(Outcome::Skipped);
            }
            Err(e) => return Err(self.io(name, "create the device node or FIFO", e.into())),
        }
        self.finish_non_fd(parent.as_fd(), base, name, meta, Some(meta.mode))?;
        Ok(Outcome::Written)
    }

    /// Owner, mode, xattrs and times for objects we must not open (symlinks, devices, FIFOs).
    fn finish_non_fd(
        &self,
        parent: BorrowedFd<'_>,
        base: &OsStr,
        name: &str,
        meta: &Meta,
        mode: Option<u32>,
    ) -> Result<(), LayerError> {
        self.chown(name, || {
            rfs::chownat(
                parent,
                base,
                Some(uid(meta.uid)),
                Some(gid(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
        })?;
        if let Some(mode) = mode {
            // Not a symlink (we just created it in a directory we hold), so following is moot.
            rfs::chmodat(parent, base, Mode::from_raw_mode(mode), AtFlags::empty())
                .map_err(|e| self.io(name, "set the mode", e.into()))?;
        }
        if !meta.xattrs.is_empty() {
            // lsetxattr needs a path; reach the entry through our directory descriptor, not through the tree.
            let mut path = OsString::from(format!("/proc/self/fd/{}/", parent.as_raw_fd()));
            path.push(base);
            for (key, value) in &meta.xattrs {
                let r = rfs::lsetxattr(&path, key, value, XattrFlags::empty());
                self.xattr_result(name, key, r)?;
            }
        }
        rfs::utimensat(parent, base, &meta.times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.io(name, "set the times", e.into()))
    }

    // ----- whiteouts -----

    fn whiteout(&mut self, rel: &Path, name: &str) -> Result<(), LayerError> {
        let dir = parent_of(rel);
        let base = rel.file_name().unwrap_or_default().as_bytes();
        if base == b".wh..wh..opq" {
            // The directory is part of this layer (opaque); everything lower layers put in it goes.
            self.open_dir_create(dir, name)?;
            self.mark_created(dir);
            return self.clear_lower(dir, name);
        }
        let victim = &base[4..];
        match victim {
            b"" => return Err(self.malformed(name, "a \".wh.\" whiteout must name the file it removes")),
            b"." | b".." => return Err(self.malformed(name, "a whiteout cannot remove \".\" or \"..\"")),
            _ => {}
        }
        let target = dir.join(OsStr::from_bytes(victim));
        let parent = match self.tree.open_dir(dir, false) {
            Ok(fd) => fd,
            // Nothing there to remove: a whiteout of a path that does not exist is a no-op.
            Err(WalkError::Missing(_)) | Err(WalkError::NotDir(_)) => return Ok(()),
            Err(e) => return Err(self.walk_error(name, e)),
        };
        if !self.created.contains(&target) {
            return self
                .tree
                .remove(parent.as_fd(), OsStr::from_bytes(victim), &target)
                .map_err(|e| self.io(name, &format!("remove {:?}", target.display()), e));
        }
        // The same layer wrote this path: keep it, drop only what lower layers put beneath it.
        if lstat_at(parent.as_fd(), OsStr::from_bytes(victim)).ok().flatten() == Some(FileType::Directory) {
            self.clear_lower(&target, name)?;
        } else {
            tracing::debug!(
                layer = self.layer,
                entry = name,
                "whiteout names a path this layer wrote; kept"
            );
        }
        Ok(())
    }

    /// Remove everything under `dir` that this layer did not write (descending into directories it did).
    fn clear_lower(&mut self, dir: &Path, name: &str) -> Result<(), LayerError> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let fd = match self.tree.open_dir(&d, false) {
                Ok(fd) => fd,
                Err(WalkError::Missing(_)) | Err(WalkError::NotDir(_)) => continue,
                Err(e) => return Err(self.walk_error(name, e)),
            };
            let restore = tree::ensure_owner_rwx(fd.as_fd());
            let children = list(fd.as_fd()).map_err(|e| self.io(name, &format!("list {:?}", d.display()), e))?;
            for child in children {
                let child_rel = d.join(&child);
                if self.created.contains(&child_rel) {
                    if lstat_at(fd.as_fd(), &child).ok().flatten() == Some(FileType::Directory) {
                        stack.push(child_rel);
                    }
                } else {
                    self.tree
                        .remove(fd.as_fd(), &child, &child_rel)
                        .map_err(|e| self.io(name, &format!("remove {:?}", child_rel.display()), e))?;
                }
            }
            if let Some(mode) = restore {
                let _ = rfs::fchmod(&fd, mode);
            }
        }
        Ok(())
    }

    // ----- helpers -----

    /// Insert `rel` and its ancestors into the created set.
    fn mark_created(&mut self, rel: &Path) {
        let mut p = Some(rel);
        while let Some(path) = p {
            if !self.created.insert(path.to_path_buf()) {
                break; // its ancestors are already members
            }
            p = path.parent();
        }
    }

    /// Make room for a new object at `base` in `parent`. Returns true when an existing directory is kept
    /// (only when `want_dir`), false when the slot is now empty.
    fn clear_slot(
        &mut self,
        parent: BorrowedFd<'_>,
        base: &OsStr,
        rel: &Path,
        name: &str,
        want_dir: bool,
    ) -> Result<bool, LayerError> {
        match lstat_at(parent, base) {
            Ok(None) => Ok(false),
            Ok(Some(FileType::Directory)) if want_dir => Ok(true),
            Ok(Some(_)) => {
                self.tree
                    .remove(parent, base, rel)
                    .map_err(|e| self.io(name, "remove the existing path", e))?;
                self.forget_dirs(rel);
                Ok(false)
            }
            Err(e) => Err(self.io(name, "inspect the existing path", e)),
        }
    }

    /// Drop deferred directory metadata for `rel` and everything below it (they were just removed).
    fn forget_dirs(&mut self, rel: &Path) {
        let doomed: Vec<PathBuf> = self
            .dirs
            .range(rel.to_path_buf()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(rel))
            .cloned()
            .collect();
        for k in doomed {
            self.dirs.remove(&k);
        }
    }

    /// The directory that will hold `rel` (created if missing) and `rel`'s last component.
    fn parent_for_write<'p>(&self, rel: &'p Path, name: &str) -> Result<(OwnedFd, &'p OsStr), LayerError> {
        let Some(base) = rel.file_name() else {
            return Err(self.refused(name, Refusal::ReplacesRoot));
        };
        Ok((self.open_dir_create(parent_of(rel), name)?, base))
    }

    fn open_dir_create(&self, dir: &Path, name: &str) -> Result<OwnedFd, LayerError> {
        self.tree.open_dir(dir, true).map_err(|e| self.walk_error(name, e))
    }

    fn open_dir(&self, dir: &Path, name: &str) -> Result<OwnedFd, LayerError> {
        self.tree.open_dir(dir, false).map_err(|e| self.walk_error(name, e))
    }

    /// Record the times of `rel`'s existing ancestors that this layer does not list,
    /// once per layer, so [`Self::finish_dirs`] can put them back. Ancestors that do
    /// not exist yet (the entry creates them) get `created` — the entry's own times —
    /// so they too do not depend on the clock.
    fn keep_times_of_ancestors(&mut self, rel: &Path, created: Option<Timestamps>) {
        let mut dir = parent_of(rel);
        loop {
            if !self.dirs.contains_key(dir) && !self.kept.contains_key(dir) {
                let existing = self.tree.open_dir(dir, false);
                if existing.is_err() {
                    if let Some(t) = &created {
                        self.kept.insert(dir.to_path_buf(), t.clone());
                    }
                }
                if let Ok(fd) = existing {
                    if let Ok(st) = rfs::fstat(&fd) {
                        let ts = |sec: i64, nsec: i64| Timespec {
                            tv_sec: sec,
                            tv_nsec: nsec as _,
                        };
                        let times = Timestamps {
                            last_access: ts(st.st_atime, st.st_atime_nsec as i64),
                            last_modification: ts(st.st_mtime, st.st_mtime_nsec as i64),
                        };
                        self.kept.insert(dir.to_path_buf(), times);
                    }
                }
            }
            if dir.as_os_str().is_empty() {
                break;
            }
            dir = parent_of(dir);
        }
    }

    /// Apply deferred directory modes and times, deepest first; then restore the
    /// times of directories this layer changed without listing them.
    fn finish_dirs(&mut self) -> Result<(), LayerError> {
        let kept = std::mem::take(&mut self.kept);
        for (rel, times) in kept.into_iter().rev() {
            if self.dirs.contains_key(&rel) {
                continue; // listed later in the layer: its own metadata wins
            }
            if let Ok(fd) = self.tree.open_dir(&rel, false) {
                let entry = rel.display().to_string();
                rfs::futimens(&fd, &times).map_err(|e| self.io(&entry, "restore the directory times", e.into()))?;
            }
        }
        for (rel, meta) in std::mem::take(&mut self.dirs).into_iter().rev() {
            let fd = match self.tree.open_dir(&rel, false) {
                Ok(fd) => fd,
                Err(e) => {
                    tracing::debug!(layer = self.layer, entry = meta.entry, error = ?e,
                        "directory vanished before its metadata was applied");
                    continue;
                }
            };
            rfs::fchmod(&fd, Mode::from_raw_mode(meta.mode))
                .map_err(|e| self.io(&meta.entry, "set the directory mode", e.into()))?;
            rfs::futimens(&fd, &meta.times).map_err(|e| self.io(&meta.entry, "set the directory times", e.into()))?;
        }
        Ok(())
    }

    fn chown(&self, name: &str, f: impl FnOnce() -> rustix::io::Result<()>) -> Result<(), LayerError> {
        if self.opts.same_owner {
            f().map_err(|e| self.io(name, "set the owner", e.into()))?;
        }
        Ok(())
    }

    fn xattrs_fd(&self, fd: BorrowedFd<'_>, name: &str, meta: &Meta) -> Result<(), LayerError> {
        for (key, value) in &meta.xattrs {
            let r = rfs::fsetxattr(fd, key, value, XattrFlags::empty());
            self.xattr_result(name, key, r)?;
        }
        Ok(())
    }

    /// xattrs are best effort where the filesystem or our privileges do not allow them.
    fn xattr_result(&self, name: &str, key: &OsStr, r: rustix::io::Result<()>) -> Result<(), LayerError> {
        match r {
            Ok(()) => Ok(()),
            Err(e @ (Errno::NOTSUP | Errno::PERM | Errno::ACCESS | Errno::NOENT)) => {
                tracing::debug!(layer = self.layer, entry = name, xattr = ?key, error = %e,
                    "extended attribute not applied (unsupported here)");
                Ok(())
            }
            Err(e) => Err(self.io(name, &format!("set extended attribute {key:?}"), e.into())),
        }
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta, LayerError> {
        let header = entry.header();
        let bad = |what: &str, e: io::Error| self.malformed(name, &format!("unreadable {what} field: {e}"));
        // Like Go's archive/tar (Docker, containerd), an all-blank numeric field reads as 0.
        let num = |v: io::Result<u64>, raw: &[u8], what: &str| match v {
            Ok(v) => Ok(v),
            Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
            Err(e) => Err(bad(what, e)),
        };
        let old = header.as_old();
        let mode = num(header.mode().map(u64::from), &old.mode, "mode")? as u32 & 0o7777;
        let id = |v: u64, what: &str| {
            u32::try_from(v)
                .ok()
                .filter(|v| *v != u32::MAX)
                .ok_or_else(|| self.malformed(name, &format!("{what} {v} is out of range")))
        };
        let uid = id(num(header.uid(), &old.uid, "uid")?, "uid")?;
        let gid = id(num(header.gid(), &old.gid, "gid")?, "gid")?;
        let mtime = Timespec {
            tv_sec: i64::try_from(num(header.mtime(), &old.mtime, "mtime")?).unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        let mut times = Timestamps {
            last_access: mtime,
            last_modification: mtime,
        };
        let mut atime = None;
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(|e| bad("PAX", e))? {
            for ext in exts {
                let ext = ext.map_err(|e| bad("PAX", e))?;
                let key = ext.key_bytes();
                if key == b"mtime" {
                    times.last_modification = pax_time(ext.value_bytes())
                        .ok_or_else(|| self.malformed(name, "unparseable PAX mtime record"))?;
                } else if key == b"atime" {
                    atime = pax_time(ext.value_bytes());
                } else if let Some(xname) = key.strip_prefix(b"SCHILY.xattr.") {
                    if xname.is_empty() || xname.contains(&0) {
                        return Err(self.malformed(name, "PAX xattr record with an empty or NUL-containing name"));
                    }
                    if xname.starts_with(b"trusted.overlay.") || xname.starts_with(b"user.overlay.") {
                        // overlayfs control attributes would change how the tree behaves as an overlay lower dir.
                        tracing::warn!(layer = self.layer, entry = name, xattr = %String::from_utf8_lossy(xname),
                            "ignoring overlayfs control xattr");
                        continue;
                    }
                    xattrs.push((OsStr::from_bytes(xname).to_os_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        times.last_access = atime.unwrap_or(times.last_modification);
        Ok(Meta {
            mode,
            uid,
            gid,
            times,
            xattrs,
        })
    }

    // ----- error constructors -----

    fn stream(&self, entry: &Option<String>, source: io::Error) -> LayerError {
        LayerError::Stream {
            layer: self.layer.to_owned(),
            entry: entry.clone(),
            source,
        }
    }

    fn refused(&self, entry: &str, reason: Refusal) -> LayerError {
        LayerError::Refused {
            layer: self.layer.to_owned(),
            entry: entry.to_owned(),
            reason,
        }
    }

    fn malformed(&self, entry: &str, problem: &str) -> LayerError {
        LayerError::Malformed {
            layer: self.layer.to_owned(),
            entry: entry.to_owned(),
            problem: problem.to_owned(),
        }
    }

    fn io(&self, entry: &str, action: &str, source: io::Error) -> LayerError {
        LayerError::Io {
            layer: self.layer.to_owned(),
            entry: entry.to_owned(),
            action: action.to_owned(),
            source,
        }
    }

    fn path_problem(&self, entry: &str, p: PathProblem) -> LayerError {
        match p {
            PathProblem::Refused(r) => self.refused(entry, r),
            PathProblem::Malformed(m) => self.malformed(entry, &m),
        }
    }

    fn walk_error(&self, entry: &str, e: WalkError) -> LayerError {
        match e {
            WalkError::Symlink(p) => self.refused(
                entry,
                Refusal::SymlinkParent {
                    component: p.display().to_string(),
                },
            ),
            WalkError::NotDir(p) => self.malformed(
                entry,
                &format!(
                    "its parent {:?} exists and is not a directory (an earlier entry or layer put a file there)",
                    p.display()
                ),
            ),
            WalkError::Missing(p) => self.malformed(entry, &format!("its parent {:?} does not exist", p.display())),
            WalkError::Io(p, e) => self.io(entry, &format!("open directory {:?}", p.display()), e),
        }
    }
}

fn uid(raw: u32) -> Uid {
    Uid::from_raw(raw)
}

fn gid(raw: u32) -> Gid {
    Gid::from_raw(raw)
}

/// Parse a PAX time (`1700000000`, `1700000000.25`, `-1.5`) into a timespec (nanoseconds rounded down).
fn pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nanos: i64 = digits.parse().ok()?;
    Some(if !neg {
        Timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        }
    } else if nanos == 0 {
        Timespec {
            tv_sec: -secs,
            tv_nsec: 0,
        }
    } else {
        Timespec {
            tv_sec: -secs - 1,
            tv_nsec: 1_000_000_000 - nanos,
        }
    })
}

/// Caps the bytes the `tar` crate may read while it parses headers (see [`HEADER_BUDGET`]).
/// `budget` is `Some(remaining)` only while `Entries::next` runs.
struct HeaderBudget<R> {
    inner: R,
    budget: Rc<Cell<Option<u64>>>,
}

impl<R: Read> Read for HeaderBudget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.budget.get() {
            None => self.inner.read(buf),
            Some(0) if !buf.is_empty() => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "tar extension headers (PAX records / GNU long names) exceed {} MiB for one entry",
                    HEADER_BUDGET >> 20
                ),
            )),
            Some(left) => {
                let cap = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..cap])?;
                self.budget.set(Some(left - n as u64));
                Ok(n)
            }
        }
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn media_types() {
        use Compression::*;
        let cases = [
            ("application/vnd.oci.image.layer.v1.tar", None),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Gzip),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Zstd),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", Gzip),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Gzip),
            ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Gzip),
            ("Application/VND.oci.image.layer.v1.tar+zstd; foo=bar", Zstd),
        ];
        for (mt, want) in cases {
            assert_eq!(Compression::from_media_type(mt).unwrap(), want, "{mt}");
        }
        let err = Compression::from_media_type("application/vnd.oci.image.config.v1+json").unwrap_err();
        assert!(matches!(err, LayerError::UnsupportedMediaType { .. }));
        assert!(err.to_string().contains("application/vnd.oci.image.config.v1+json"));
    }

    #[test]
    fn sniffing() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(Compression::sniff(b"etc/passwd\0"), Compression::None);
        assert_eq!(Compression::sniff(&[]), Compression::None);
    }

    #[test]
    fn normalize_paths() {
        let ok = |s: &str| normalize(s.as_bytes()).unwrap();
        assert_eq!(ok("./etc/x"), Path::new("etc/x"));
        assert_eq!(ok("etc//x/"), Path::new("etc/x"));
        assert_eq!(ok("a/../b"), Path::new("b"));
        assert_eq!(ok("./"), Path::new(""));
        assert_eq!(ok("."), Path::new(""));
        assert_eq!(ok("/"), Path::new(""), "umoci's root entry");
        assert_eq!(ok("//"), Path::new(""));
        let refused = |s: &str| match normalize(s.as_bytes()) {
            Err(PathProblem::Refused(r)) => r,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(refused("../escape"), Refusal::EscapesRoot);
        assert_eq!(refused("a/../../escape"), Refusal::EscapesRoot);
        assert_eq!(refused("./.."), Refusal::EscapesRoot);
        assert_eq!(refused("/abs"), Refusal::AbsolutePath);
        assert_eq!(refused("/etc/passwd"), Refusal::AbsolutePath);
        assert_eq!(refused("//etc"), Refusal::AbsolutePath);
        assert!(matches!(normalize(b""), Err(PathProblem::Malformed(_))));
        assert!(matches!(normalize(b"a\0b"), Err(PathProblem::Malformed(_))));
        assert!(matches!(normalize(&[b'a'; 300]), Err(PathProblem::Malformed(_))));
        let long = "ab/".repeat(1400);
        assert!(matches!(normalize(long.as_bytes()), Err(PathProblem::Malformed(_))));
    }

    #[test]
    fn symlink_targets() {
        let inside = |link: &str, target: &str| symlink_stays_inside(Path::new(link), target.as_bytes());
        assert!(inside("bin/sh", "busybox"));
        assert!(inside("bin/sh", "/bin/busybox"));
        assert!(inside("lnk", "/../../etc")); // absolute: relative to the root, clamped there
        assert!(inside("usr/lib64", "lib"));
        assert!(inside("a/b/c", "../../x"));
        assert!(inside("a/b/c", "../.."));
        assert!(!inside("a/b/c", "../../.."));
        assert!(!inside("a/b/lnk", "../../../../etc/passwd"));
        assert!(!inside("lnk", ".."));
        assert!(!inside("x", "../../.."));
        assert!(!inside("a/l", "b/../../../x"));
    }

    #[test]
    fn pax_times() {
        let t = |s: &str| pax_time(s.as_bytes()).map(|t| (t.tv_sec, t.tv_nsec));
        assert_eq!(t("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(t("1700000000.25"), Some((1_700_000_000, 250_000_000)));
        assert_eq!(t("1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(t("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(t("-3"), Some((-3, 0)));
        assert_eq!(t("x"), None);
        assert_eq!(t(""), None);
        assert_eq!(t("1.2.3"), None);
    }

    #[test]
    fn header_budget_caps_reads() {
        let budget = Rc::new(Cell::new(Some(10)));
        let mut r = HeaderBudget {
            inner: &[7u8; 100][..],
            budget: Rc::clone(&budget),
        };
        let mut buf = [0u8; 64];
        assert_eq!(r.read(&mut buf).unwrap(), 10);
        assert!(r.read(&mut buf).is_err());
        budget.set(None);
        assert_eq!(r.read(&mut buf).unwrap(), 64);
    }

    #[test]
    fn errors_name_layer_and_entry() {
        let e = LayerError::Refused {
            layer: "sha256:abc".into(),
            entry: "x/etc/passwd".into(),
            reason: Refusal::SymlinkParent { component: "x".into() },
        };
        let s = e.to_string();
        assert!(
            s.contains("sha256:abc") && s.contains("x/etc/passwd") && s.contains("symbolic link"),
            "{s}"
        );
        assert_eq!(e.layer(), "sha256:abc");
        assert_eq!(e.entry(), Some("x/etc/passwd"));
    }
}
