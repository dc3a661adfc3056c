//! The per-layer state and the entry kinds: iterate the tar stream, apply the spec's replacement rule, and
//! write files, directories, symlinks, hardlinks, devices and FIFOs relative to directory descriptors.
//! Whiteouts are in `whiteout.rs`, metadata (owner, mode, xattrs, times) in `meta.rs`.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timestamps};
use rustix::io::Errno;

use super::budget::{HeaderBudget, HEADER_BUDGET};
use super::meta::{gid, uid, Meta};
use super::path::{normalize, symlink_stays_inside, PathProblem};
use super::tree::{self, lstat_at, parent_of, Tree, WalkError, DIR_FLAGS};
use super::{ApplyOptions, ApplyStats, LayerError, UnsafeEntry};

/// Directory metadata deferred to the end of the layer.
pub(super) struct DirMeta {
    pub(super) entry: String,
    pub(super) mode: u32,
    pub(super) times: Timestamps,
}

/// What became of an entry.
pub(super) enum Effect {
    Written,
    Whiteout,
    Skipped,
}

pub(super) struct Applier<'a> {
    pub(super) tree: Tree,
    pub(super) layer: &'a str,
    pub(super) opts: &'a ApplyOptions,
    /// Every path this layer wrote, plus all their ancestors (invariant: a member's parent is a member).
    pub(super) created: HashSet<PathBuf>,
    /// Directories whose mode and times are applied after the last entry.
    pub(super) dirs: BTreeMap<PathBuf, DirMeta>,
    /// Existing directories this layer changes without listing them (a new child, a
    /// whiteout): their times before the change, restored at the end. Without this
    /// their mtime would become "now", and the same layers would give different trees
    /// (and image digests) depending on when they were applied.
    pub(super) kept: BTreeMap<PathBuf, Timestamps>,
    pub(super) stats: ApplyStats,
    pub(super) buf: Vec<u8>,
}

impl<'a> Applier<'a> {
    pub(super) fn new(tree: Tree, layer: &'a str, opts: &'a ApplyOptions) -> Self {
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
    pub(super) fn run<R: Read>(&mut self, reader: R) -> Result<(), LayerError> {
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
                    Effect::Written => self.stats.entries += 1,
                    Effect::Whiteout => self.stats.whiteouts += 1,
                    Effect::Skipped => self.stats.skipped += 1,
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

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Effect, LayerError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.as_byte() == b'V' {
            tracing::debug!(
                layer = self.layer,
                entry = name,
                "skipping PAX global header / volume label"
            );
            return Ok(Effect::Skipped);
        }
        let rel = normalize(&entry.path_bytes()).map_err(|p| self.path_problem(name, p))?;

        // Whiteouts and AUFS metadata.
        let mut comps = rel.iter().peekable();
        while let Some(comp) = comps.next() {
            let bytes = comp.as_bytes();
            if bytes.starts_with(b".wh..wh.") && !(comps.peek().is_none() && bytes == b".wh..wh..opq") {
                tracing::debug!(layer = self.layer, entry = name, "skipping AUFS metadata entry");
                return Ok(Effect::Skipped);
            }
            if bytes.starts_with(b".wh.") {
                if comps.peek().is_some() {
                    return Err(self.malformed(name, "a directory name starts with \".wh.\", which marks whiteouts"));
                }
                self.keep_times_of_ancestors(&rel, None);
                self.whiteout(&rel, name)?;
                return Ok(Effect::Whiteout);
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
        if let Effect::Written = outcome {
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
    ) -> Result<Effect, LayerError> {
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
        Ok(Effect::Written)
    }

    fn dir(&mut self, rel: &Path, name: &str, meta: &Meta) -> Result<Effect, LayerError> {
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
        Ok(Effect::Written)
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        rel: &Path,
        name: &str,
        meta: &Meta,
    ) -> Result<Effect, LayerError> {
        let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
        if target.is_empty() || target.contains(&0) {
            return Err(self.malformed(name, "the symlink has an empty target or one containing NUL"));
        }
        if !symlink_stays_inside(rel, &target) {
            let target = String::from_utf8_lossy(&target).into_owned();
            return Err(self.refused(name, UnsafeEntry::SymlinkEscapes { target }));
        }
        let (parent, base) = self.parent_for_write(rel, name)?;
        self.clear_slot(parent.as_fd(), base, rel, name, false)?;
        rfs::symlinkat(OsStr::from_bytes(&target), &parent, base)
            .map_err(|e| self.io(name, "create the symlink", e.into()))?;
        self.finish_non_fd(parent.as_fd(), base, name, meta, None)?;
        Ok(Effect::Written)
    }

    fn hardlink<R: Read>(&mut self, entry: &tar::Entry<'_, R>, rel: &Path, name: &str) -> Result<Effect, LayerError> {
        let raw = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let target = match normalize(&raw) {
            Ok(t) => t,
            Err(PathProblem::Refused(_)) => {
                return Err(self.refused(name, UnsafeEntry::HardlinkEscapes { target: shown.clone() }))
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
                    UnsafeEntry::HardlinkThroughSymlink {
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
                return Ok(Effect::Written); // already that very file
            }
        }
        self.clear_slot(parent.as_fd(), base, rel, name, false)?;
        rfs::linkat(&target_parent, target_base, &parent, base, AtFlags::empty())
            .map_err(|e| self.io(name, &format!("hardlink to {shown:?}"), e.into()))?;
        // The link shares the target's inode, whose metadata the target's own entry already set.
        Ok(Effect::Written)
    }

    fn node<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        kind: tar::EntryType,
        rel: &Path,
        name: &str,
        meta: &Meta,
    ) -> Result<Effect, LayerError> {
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
                return Ok(Effect::Skipped);
            }
            Err(e) => return Err(self.io(name, "create the device node or FIFO", e.into())),
        }
        self.finish_non_fd(parent.as_fd(), base, name, meta, Some(meta.mode))?;
        Ok(Effect::Written)
    }

    // ----- helpers -----

    /// Insert `rel` and its ancestors into the created set.
    pub(super) fn mark_created(&mut self, rel: &Path) {
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
            return Err(self.refused(name, UnsafeEntry::ReplacesRoot));
        };
        Ok((self.open_dir_create(parent_of(rel), name)?, base))
    }

    pub(super) fn open_dir_create(&self, dir: &Path, name: &str) -> Result<OwnedFd, LayerError> {
        self.tree.open_dir(dir, true).map_err(|e| self.walk_error(name, e))
    }

    fn open_dir(&self, dir: &Path, name: &str) -> Result<OwnedFd, LayerError> {
        self.tree.open_dir(dir, false).map_err(|e| self.walk_error(name, e))
    }

    // ----- error constructors -----

    fn stream(&self, entry: &Option<String>, source: io::Error) -> LayerError {
        LayerError::Stream {
            layer: self.layer.to_owned(),
            entry: entry.clone(),
            source,
        }
    }

    fn refused(&self, entry: &str, reason: UnsafeEntry) -> LayerError {
        LayerError::Refused {
            layer: self.layer.to_owned(),
            entry: entry.to_owned(),
            reason,
        }
    }

    pub(super) fn malformed(&self, entry: &str, problem: &str) -> LayerError {
        LayerError::Malformed {
            layer: self.layer.to_owned(),
            entry: entry.to_owned(),
            problem: problem.to_owned(),
        }
    }

    pub(super) fn io(&self, entry: &str, action: &str, source: io::Error) -> LayerError {
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

    pub(super) fn walk_error(&self, entry: &str, e: WalkError) -> LayerError {
        match e {
            WalkError::Symlink(p) => self.refused(
                entry,
                UnsafeEntry::SymlinkParent {
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
