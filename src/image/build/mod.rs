//! Building an image artifact: a root filesystem directory packed as one newc cpio archive
//! compressed as one gzip member — what Warewulf makes with `cpio -o -H newc | pigz`, but in
//! process, streaming, on all cores and byte-for-byte reproducible.
//!
//! # Pipeline
//!
//! ```text
//! walk (sorted, lstat) ─▶ newc records ─▶ ParGz: N deflate workers ─▶ writer thread ─▶ out
//!   caller's thread         (cpio crate)    128 KiB blocks, primed      in order, sha256
//! ```
//!
//! The caller's thread walks the tree (`walk.rs`), reads files in 256 KiB chunks and writes
//! newc records (`newc.rs`) into `pargz.rs`, a pigz-style parallel gzip: fixed-size blocks
//! deflated on `threads` workers, each primed with the previous block's last 32 KiB, joined in
//! order by a writer thread into a **single gzip member** (one header, one CRC-32/ISIZE
//! trailer). That matters: iPXE's `imgextract` reads only the first member, and the kernel
//! rejects members that split a cpio archive in the middle (see `shared/LAB.md`). Blocks that
//! look like already-compressed data are stored instead of deflated, which saves about a fifth
//! of the CPU time on a Debian root for 0.002 % of size; `pargz.rs` explains that and why
//! gzp's `ParCompress` was measured and dropped (no preset dictionary without C zlib, no way
//! to skip incompressible blocks; 0.55× of the baseline's time instead of 0.39×).
//!
//! # Memory
//!
//! Nothing is held per image: `2 × threads + 2` block buffers circulate between the producer,
//! the workers and the writer (the producer waits when all are in flight), plus one read
//! buffer, walkdir's sorted listing of each directory on the current path and one map entry
//! per hardlinked inode. About 10 MiB peak RSS for a 756 MB image, 4 MiB for a tiny one.
//!
//! # Determinism
//!
//! Entry order depends only on names; inode numbers are assigned in that order; `c_dev` is 0;
//! the gzip header has mtime 0; blocks are cut at fixed offsets of the uncompressed stream,
//! primed with the previous block's tail, each on a fresh deflate stream (zlib-rs can leak old
//! window bytes across a reset, see `pargz.rs`). So the output depends on the tree and the
//! level only, not on the thread count or timing: same tree ⇒ byte-identical output and
//! sha256.
//!
//! # Compression backend
//!
//! flate2 is built with its `zlib-rs` feature only, so deflate and CRC-32 run on zlib-rs.
//! (gzp's `deflate_rust` feature would add flate2's `rust_backend`; flate2 1.1 still compiles
//! zlib-rs then, miniz_oxide is used only `not(any_zlib)`.) The test
//! `zlib_rs_backend_is_compiled_in` pins that at compile time (it uses an API only the zlib
//! backends have) and the bench measures it: single-thread level 6 runs at about 85 MB/s on
//! the benchmark tree's files, C zlib (pigz -p 1) at 62 MB/s, miniz_oxide at about 36 MB/s.
//!
//! # Entry naming
//!
//! Like Warewulf (`cpio --create` fed with paths relative to the root), names have no `./`
//! prefix and the root directory itself is not archived: `bin`, `boot/vmlinuz`. The kernel
//! unpacks names relative to the rootfs root either way; leaving out `.` keeps the kernel's own
//! mode for `/` as with Warewulf images.
//!
//! See `walk.rs` (what is archived), `newc.rs` (how records are written), `pattern.rs`
//! (exclude semantics), `digest.rs` (rebuild detection), `pargz.rs` (parallel gzip), `sink.rs`
//! (writers around the compressor).

mod digest;
mod newc;
mod pargz;
mod pattern;
mod sink;
mod walk;

#[cfg(test)]
mod tests;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tracing::{debug, info};

pub use digest::tree_digest;
pub use newc::{newc_file_size, NEWC_MAX_FILE_SIZE};
pub use pargz::BLOCK_SIZE;
pub use pattern::{ExcludeSet, Pattern};

use newc::NewcWriter;
use pargz::ParGz;
use sink::HashWriter;
use walk::Walker;

/// Where Warewulf keeps an image's exclude list, relative to the image root.
pub const EXCLUDES_FILE: &str = "etc/warewulf/excludes";

/// How to build an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BuildOptions {
    /// Exclude patterns (Warewulf / Go `filepath.Match` syntax, see [`ExcludeSet`]); usually
    /// [`read_excludes`] of the image.
    pub excludes: Vec<String>,
    /// Compression threads; 0 means one per available core.
    pub threads: usize,
    /// gzip level 0–9. Default 5: on 2 cores it builds in 0.36× the time of
    /// `cpio | pigz -6` with an archive 0.75 % larger; level 6 is the deflate floor at
    /// 0.43× (docs/PERFORMANCE.md).
    pub level: u32,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            excludes: Vec::new(),
            threads: 0,
            level: 5,
        }
    }
}

/// What a build produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildStats {
    /// Archive entries written (directories, files, links, nodes; not the trailer).
    pub files: u64,
    /// Uncompressed archive size (headers, names, bodies, padding, trailer).
    pub bytes_in: u64,
    /// Compressed size written to the output.
    pub bytes_out: u64,
    /// Lowercase hex SHA-256 of the compressed output.
    pub sha256: String,
    /// File content and symlink-target bytes read from the tree (the last progress value).
    pub content_bytes: u64,
    /// Entries left out: by an exclude pattern, on another filesystem, or sockets. A pruned
    /// directory counts once, whatever was below it.
    pub skipped: u64,
}

/// Why an image could not be built (or digested).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The root is not a directory.
    #[error("image root {} is not a directory; point the build at the image's rootfs directory", path.display())]
    RootNotDirectory { path: PathBuf },

    /// Reading something in the tree failed.
    #[error("cannot {action} {}: {source}; check that it exists and is readable by the build", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A name that is not UTF-8.
    #[error(
        "file name {path:?} (shown lossily) is not valid UTF-8, which newc archives built here require; \
         rename it inside the image or add an exclude pattern for it"
    )]
    NonUtf8Name { path: String },

    /// A root-level entry named like the end-of-archive marker.
    #[error(
        "{} is named TRAILER!!!, the newc end-of-archive marker: `cpio -i` would stop reading there; \
         rename it or add an exclude pattern for it",
        path.display()
    )]
    ReservedName { path: PathBuf },

    /// A regular file newc cannot store.
    #[error(
        "{} is {size} bytes, but a newc cpio archive stores at most 4294967295 bytes (4 GiB - 1) per file; \
         remove it from the image or add an exclude pattern for it",
        path.display()
    )]
    FileTooLarge { path: PathBuf, size: u64 },

    /// The tree changed under the build.
    #[error("{} changed while it was being archived: {what}; stop whatever writes into the image and build again", path.display())]
    FileChanged { path: PathBuf, what: String },

    /// A malformed exclude pattern.
    #[error(
        "exclude pattern {pattern:?} is malformed: {reason}; fix it (patterns use Go filepath.Match syntax: \
         * ? [a-z] [^a-z] \\x, matched against the whole path relative to the image root)"
    )]
    BadExclude { pattern: String, reason: &'static str },

    /// The excludes file (or a directory on its way) is a symlink.
    #[error(
        "{} is a symlink; refusing to follow it out of the image to read exclude patterns; \
         replace it with a regular file or directory inside the image",
        path.display()
    )]
    ExcludesSymlink { path: PathBuf },

    /// gzip level out of range.
    #[error("gzip level {level} is out of range; use 0 (store) to 9 (smallest), 5 is the default")]
    BadLevel { level: u32 },

    /// More entries than newc inode numbers.
    #[error("the image has more than 4294967295 entries, more than newc can number; exclude some of them")]
    TooManyEntries,

    /// Writing the output failed.
    #[error("writing the compressed image failed: {source}; check free space and the output destination")]
    Output {
        #[source]
        source: io::Error,
    },
}

/// Stream `root` as cpio newc + gzip into `out`. `progress` is called with cumulative
/// uncompressed bytes read (file contents and symlink targets).
///
/// On error the output is left incomplete: it never ends in a valid gzip trailer, so nothing
/// can mistake it for an image. Remove it.
pub fn build_cpio_gz<W: Write + Send + 'static>(
    root: &Path,
    opts: &BuildOptions,
    out: W,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<BuildStats, BuildError> {
    let started = Instant::now();
    if opts.level > 9 {
        return Err(BuildError::BadLevel { level: opts.level });
    }
    let excludes = ExcludeSet::compile(&opts.excludes)?;
    let mut walker = Walker::new(root, excludes)?;
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    debug!(root = %root.display(), threads, level = opts.level, "building image");

    let abort = Arc::new(AtomicBool::new(false));
    let z = ParGz::new(HashWriter::new(out, abort.clone()), threads, opts.level, BLOCK_SIZE);
    let mut archive = NewcWriter::new(z);

    let produced = (|| {
        for entry in walker.by_ref() {
            archive.add(&entry?, progress)?;
        }
        archive.write_trailer()
    })();

    let (files, content_bytes, bytes_in) = (archive.entries, archive.content_bytes, archive.archive_bytes());
    let z = archive.into_inner();
    if let Err(e) = produced {
        // Poison the output too, then drop the compressor unfinished: no gzip trailer is
        // written, so the partial output can never pass for an image.
        abort.store(true, Ordering::Relaxed);
        drop(z);
        return Err(e);
    }
    let (hashed, _) = z.finish().map_err(|source| BuildError::Output { source })?;
    let (bytes_out, sha256) = hashed.finish();

    let secs = started.elapsed().as_secs_f64();
    info!(
        root = %root.display(),
        files,
        bytes_in,
        bytes_out,
        skipped = walker.skipped,
        secs,
        mb_per_s = bytes_in as f64 / 1e6 / secs.max(1e-9),
        "image built"
    );
    Ok(BuildStats {
        files,
        bytes_in,
        bytes_out,
        sha256,
        content_bytes,
        skipped: walker.skipped,
    })
}

/// Warewulf's excludes file format (`/etc/warewulf/excludes` inside the image): one pattern
/// per line, `#` comments, blank lines ignored.
///
/// Lines are trimmed of surrounding whitespace (and a CR); a line whose first non-blank
/// character is `#` is a comment (there are no trailing comments: `#` is valid in file names).
/// Warewulf itself takes lines verbatim, which makes a comment a pattern that never matches
/// in practice, so the results agree. A missing file, or a directory in its place, means no
/// excludes, as in Warewulf. A symlink on the way is refused (it could point outside the image
/// and read the host's files). Patterns are validated here too, so a malformed one is reported
/// (by its text) before anything is built.
pub fn read_excludes(root: &Path) -> Result<Vec<String>, BuildError> {
    let mut path = root.to_path_buf();
    for component in Path::new(EXCLUDES_FILE).components() {
        path.push(component);
        match std::fs::symlink_metadata(&path) {
            Ok(md) if md.file_type().is_symlink() => return Err(BuildError::ExcludesSymlink { path }),
            Ok(md) if md.is_dir() && path.ends_with(EXCLUDES_FILE) => {
                debug!(path = %path.display(), "excludes file is a directory; no excludes");
                return Ok(Vec::new());
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
                return Ok(Vec::new())
            }
            Err(source) => {
                return Err(BuildError::Io {
                    action: "look up the excludes file",
                    path,
                    source,
                })
            }
        }
    }
    let text = std::fs::read_to_string(&path).map_err(|source| BuildError::Io {
        action: "read the excludes file",
        path: path.clone(),
        source,
    })?;
    let patterns = parse_excludes(&text);
    ExcludeSet::compile(&patterns)?;
    Ok(patterns)
}

/// The line format of [`read_excludes`].
pub fn parse_excludes(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}
