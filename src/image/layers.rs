//! Applying OCI image layers to a root filesystem directory, safely.
//!
//! Layers are tar streams from registries and archives nobody on the team wrote, and the process applying them
//! runs as root. The design goal is: *whatever the tar says, nothing outside the image root is read, written or
//! removed, and refusals say exactly which layer and entry were the problem.* How:
//!
//! - **No path is ever handed to the kernel for resolution.** Entry names are normalised lexically
//!   (`path::normalize`: `./` and `.` dropped, `..` popped, refused if it climbs above the root; absolute names
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
//!
//! Files, along the points above: `path.rs` (lexical normalisation and symlink-target checks), `tree.rs`
//! (descriptor-relative access), `applier.rs` (the per-layer state, entry kinds and replacement rule),
//! `whiteout.rs`, `meta.rs` (metadata order, deferred directory metadata), `budget.rs` (the header cap),
//! `compression.rs` and `zstd.rs` (decoding), `error.rs`.

mod applier;
mod budget;
mod compression;
mod error;
mod meta;
mod path;
mod tree;
mod whiteout;
mod zstd;

#[cfg(test)]
mod tests;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use self::applier::Applier;
use self::tree::Tree;

pub use self::budget::HEADER_BUDGET;
pub use self::compression::Compression;
pub use self::error::{LayerError, UnsafeEntry};

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
    let actual = actual_compression(head, compression, layer_name);
    let mut applier = Applier::new(tree, layer_name, opts);
    match actual {
        Compression::None => applier.run(input)?,
        Compression::Gzip => applier.run(flate2::bufread::MultiGzDecoder::new(input))?,
        Compression::Zstd => applier.run(zstd::ZstdFrames::new(input))?,
    }
    tracing::debug!(layer = layer_name, stats = ?applier.stats, "layer applied");
    Ok(applier.stats)
}

/// The compression a layer's data really has: what its first bytes say when they
/// contradict the declared one (a warning), none for an empty blob.
fn actual_compression(head: &[u8], declared: Compression, layer_name: &str) -> Compression {
    let sniffed = Compression::sniff(head);
    if head.is_empty() {
        Compression::None // an empty blob is an empty layer, whatever its label
    } else if sniffed == declared {
        declared
    } else {
        tracing::warn!(layer = layer_name, declared = ?declared, detected = ?sniffed,
            "layer data does not match its declared compression; using what the data says");
        sniffed
    }
}

/// The header budget's switch for a [`tar_stream`]: set it to `Some(HEADER_BUDGET)`
/// around `Entries::next`, `None` while entry data is read.
pub(crate) type BudgetSwitch = std::rc::Rc<std::cell::Cell<Option<u64>>>;

/// A layer blob's tar stream, decompressed as [`apply_layer`] decompresses it (the data's
/// magic number wins over the declared compression) and capped by [`HEADER_BUDGET`]
/// while the `tar` crate parses headers: for readers of layers that do not apply them
/// (`image::files`).
pub(crate) fn tar_stream<'a>(
    layer: impl Read + 'a,
    compression: Compression,
    layer_name: &str,
) -> std::io::Result<(Box<dyn Read + 'a>, BudgetSwitch)> {
    let mut input = BufReader::with_capacity(256 * 1024, layer);
    let head = input.fill_buf()?;
    let stream: Box<dyn Read + 'a> = match actual_compression(head, compression, layer_name) {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(zstd::ZstdFrames::new(input)),
    };
    let budget = BudgetSwitch::default();
    let capped = budget::HeaderBudget {
        inner: stream,
        budget: budget.clone(),
    };
    Ok((Box::new(capped), budget))
}

/// A tar member name (or hardlink target) normalised to a relative in-root path; None
/// when it is absolute, climbs out, or is malformed. The empty string is the root.
pub(crate) fn normalize_name(raw: &[u8]) -> Option<String> {
    path::normalize(raw).ok().map(|p| p.to_string_lossy().into_owned())
}
