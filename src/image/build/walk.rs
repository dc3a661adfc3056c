//! The one deterministic walk shared by the archive writer and the tree digest.
//!
//! Both must see exactly the same entries in exactly the same order, or a digest could say
//! "unchanged" for an archive that would differ. So the selection rules live here only:
//!
//! * **Order**: depth-first, each directory's entries sorted by the raw bytes of their names
//!   (`walkdir`'s `sort_by_file_name`, the same order as Go's `filepath.WalkDir` that Warewulf
//!   uses). A directory always comes before its contents, which newc unpackers need, and the
//!   order depends only on the names, never on the filesystem's readdir order.
//! * **The root itself is not an entry** (Warewulf lists `relPath == "."` out), names are
//!   relative without a `./` prefix: `bin`, `boot/vmlinuz`.
//! * **Other filesystems are left out**: Warewulf builds with `ignore_xdev`, so an entry whose
//!   `st_dev` differs from the root's (say a `/proc` or `/dev` still mounted in the image after
//!   a chroot) is not archived. We also do not descend below it; Warewulf walks on but drops
//!   everything it meets there that is on another device, which is the same result unless a
//!   mount inside the mount leads back onto the root's filesystem.
//! * **Exclude patterns** are applied to every entry (see `pattern.rs`); a matching directory
//!   is pruned. (Warewulf skips the check for non-directories directly in the root, an
//!   accident of its `Glob("*")` include step; we apply patterns uniformly.)
//! * **Sockets** are skipped with a debug log: they are meaningless in an image and Warewulf's
//!   images never rely on them.
//!
//! Symlinks are never followed (`lstat` everywhere); only the root path itself is resolved.
//! Memory is bounded by the widest directory on the current path (walkdir keeps the sorted
//! entries of each open directory), not by the size of the tree.

use std::fs::{self, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tracing::debug;

use super::pattern::ExcludeSet;
use super::BuildError;

/// What an entry is, as far as newc is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
    CharDev,
    BlockDev,
    Fifo,
}

impl Kind {
    /// A one-byte tag (used by the digest).
    pub(crate) fn tag(self) -> u8 {
        match self {
            Kind::Dir => b'd',
            Kind::File => b'f',
            Kind::Symlink => b'l',
            Kind::CharDev => b'c',
            Kind::BlockDev => b'b',
            Kind::Fifo => b'p',
        }
    }
}

/// One entry to archive.
pub(crate) struct Entry {
    /// Full path on disk (root joined with `rel`).
    pub(crate) path: PathBuf,
    /// Path relative to the root, no leading `./`.
    pub(crate) rel: PathBuf,
    /// `lstat` of the entry.
    pub(crate) md: Metadata,
    pub(crate) kind: Kind,
}

impl Entry {
    /// The link count written to the archive: the real count for directories and regular
    /// files (hardlinks!), 1 for the rest, which we always archive as separate nodes.
    pub(crate) fn archive_nlink(&self) -> u32 {
        match self.kind {
            Kind::Dir | Kind::File => u32::try_from(self.md.nlink()).unwrap_or(u32::MAX),
            _ => 1,
        }
    }

    /// A symlink's target (what the archive stores as its body, and the digest hashes).
    pub(crate) fn link_target(&self) -> Result<PathBuf, BuildError> {
        fs::read_link(&self.path).map_err(|source| BuildError::Io {
            action: "read the symlink",
            path: self.path.clone(),
            source,
        })
    }
}

/// Iterator over the entries of an image tree, in archive order.
pub(crate) struct Walker {
    root: PathBuf,
    root_dev: u64,
    excludes: ExcludeSet,
    it: walkdir::IntoIter,
    /// Entries left out (pattern, other filesystem, socket); a pruned directory counts once.
    pub(crate) skipped: u64,
}

impl Walker {
    pub(crate) fn new(root: &Path, excludes: ExcludeSet) -> Result<Self, BuildError> {
        let md = fs::metadata(root).map_err(|source| BuildError::Io {
            action: "read the image root",
            path: root.to_path_buf(),
            source,
        })?;
        if !md.is_dir() {
            return Err(BuildError::RootNotDirectory {
                path: root.to_path_buf(),
            });
        }
        let it = walkdir::WalkDir::new(root)
            .min_depth(1)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter();
        Ok(Walker {
            root: root.to_path_buf(),
            root_dev: md.dev(),
            excludes,
            it,
            skipped: 0,
        })
    }

    fn skip(&mut self, md: &Metadata) {
        self.skipped += 1;
        if md.is_dir() {
            self.it.skip_current_dir();
        }
    }
}

impl Iterator for Walker {
    type Item = Result<Entry, BuildError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let dent = match self.it.next()? {
                Ok(d) => d,
                Err(e) => return Some(Err(walk_error(&self.root, e))),
            };
            let md = match dent.metadata() {
                Ok(md) => md,
                Err(e) => return Some(Err(walk_error(&self.root, e))),
            };
            let path = dent.into_path();
            let rel = path.strip_prefix(&self.root).unwrap_or(&path).to_path_buf();
            if md.dev() != self.root_dev {
                debug!(path = %rel.display(), "not archived: on another filesystem (a mount inside the image)");
                self.skip(&md);
                continue;
            }
            if !self.excludes.is_empty() {
                if let Some(p) = self.excludes.matching(&rel.to_string_lossy()) {
                    debug!(path = %rel.display(), pattern = p.as_str(), "not archived: excluded");
                    self.skip(&md);
                    continue;
                }
            }
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                Kind::Dir
            } else if ft.is_file() {
                Kind::File
            } else if ft.is_symlink() {
                Kind::Symlink
            } else if ft.is_char_device() {
                Kind::CharDev
            } else if ft.is_block_device() {
                Kind::BlockDev
            } else if ft.is_fifo() {
                Kind::Fifo
            } else {
                debug!(path = %rel.display(), "not archived: a socket");
                self.skip(&md);
                continue;
            };
            return Some(Ok(Entry { path, rel, md, kind }));
        }
    }
}

fn walk_error(root: &Path, e: walkdir::Error) -> BuildError {
    let path = e.path().map(Path::to_path_buf).unwrap_or_else(|| root.to_path_buf());
    let source = match e.into_io_error() {
        Some(io) => io,
        None => std::io::Error::other("filesystem loop"),
    };
    BuildError::Io {
        action: "walk the image tree at",
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn names(root: &Path, excludes: &[&str]) -> Vec<String> {
        let set = ExcludeSet::compile(excludes).unwrap();
        Walker::new(root, set)
            .unwrap()
            .map(|e| e.unwrap().rel.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn sorted_parents_first_no_root_entry() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["b/c", "a", "a.b"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        for f in ["b/c/z", "b/c/a", "a/x", "B", "a.b/y"] {
            fs::write(r.join(f), f).unwrap();
        }
        assert_eq!(
            names(r, &[]),
            ["B", "a", "a/x", "a.b", "a.b/y", "b", "b/c", "b/c/a", "b/c/z"]
        );
    }

    #[test]
    fn excludes_prune_directories_and_keep_the_parent() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("boot/grub")).unwrap();
        fs::write(r.join("boot/grub/grub.cfg"), "x").unwrap();
        fs::write(r.join("boot/vmlinuz"), "x").unwrap();
        fs::write(r.join("swapfile"), "x").unwrap();
        fs::write(r.join("keep"), "x").unwrap();
        let mut w = Walker::new(r, ExcludeSet::compile(&["/boot/*", "/swapfile"]).unwrap()).unwrap();
        let got: Vec<String> = w.by_ref().map(|e| e.unwrap().rel.display().to_string()).collect();
        assert_eq!(got, ["boot", "keep"]);
        assert_eq!(w.skipped, 3, "boot/grub (pruned once), boot/vmlinuz, swapfile");
    }

    #[test]
    fn sockets_are_skipped() {
        let t = tempfile::tempdir().unwrap();
        let _l = UnixListener::bind(t.path().join("sock")).unwrap();
        fs::write(t.path().join("file"), "x").unwrap();
        assert_eq!(names(t.path(), &[]), ["file"]);
    }

    #[test]
    fn root_must_be_a_directory() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        fs::write(&f, "x").unwrap();
        let err = Walker::new(&f, ExcludeSet::default()).err().unwrap();
        assert!(matches!(err, BuildError::RootNotDirectory { .. }), "{err}");
        let err = Walker::new(&t.path().join("missing"), ExcludeSet::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
