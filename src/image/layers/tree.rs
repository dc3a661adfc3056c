//! Symlink-proof access to an image root directory.
//!
//! Why this exists: a layer is untrusted input, and the image root is full of symlinks that earlier layers (or
//! earlier entries of the same layer) planted. Any path-based syscall (`open("root/a/passwd")`) lets the kernel
//! follow those links, so `a -> /etc` turns "write `a/passwd` in the image" into "overwrite the host's
//! `/etc/passwd`". Checking with `lstat` first and then writing by path is racy and easy to get subtly wrong.
//!
//! So every operation here is *descriptor relative*:
//! - [`Tree::open_dir`] turns a normalised relative path (no `.`/`..`, no leading `/`; see `layers::path::normalize`)
//!   into a directory descriptor whose every component was a real directory. Fast path: one
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` (Linux >= 5.6). If the kernel or
//!   a seccomp filter refuses `openat2` (`ENOSYS`/`EPERM`) we switch to the fallback for the rest of the layer;
//!   if it fails for a reason about the path (`ELOOP`, `ENOENT`, `ENOTDIR`, ...) we also take the fallback,
//!   because the fallback can create missing directories and says *which* component was the problem.
//!   Fallback: walk one component at a time with `openat(O_DIRECTORY | O_NOFOLLOW)` from the previous
//!   descriptor. A symlink component fails that open, and `fstatat(AT_SYMLINK_NOFOLLOW)` tells us why.
//! - The final component is then handled by the caller with `*at` calls on that descriptor and
//!   `AT_SYMLINK_NOFOLLOW`/`O_NOFOLLOW`/`O_EXCL`, so the last component is never followed either.
//! - Tree removal ([`Tree::remove`]) is iterative (no recursion, so a hostile 2000-level tree cannot blow the
//!   stack) and re-opens each directory through `open_dir`, so it never holds more than two descriptors and
//!   never descends through a symlink: symlinks are unlinked, not followed.
//!
//! Nothing here defends against a *concurrent* process rewriting the root while we work; the threat model is
//! the layer content, and the root is a private build directory.

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Flags for opening a directory without following a symlink in the final component.
pub(super) const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Why a directory path could not be opened. Each variant carries the offending prefix of the path
/// (relative to the root), e.g. `usr/lib` when `usr/lib` is a symlink in `usr/lib/x/y`.
#[derive(Debug)]
pub(super) enum WalkError {
    /// A component is a symbolic link.
    Symlink(PathBuf),
    /// A component exists but is neither a directory nor a symlink.
    NotDir(PathBuf),
    /// A component does not exist (only when `create` is false).
    Missing(PathBuf),
    /// Any other failure, with the prefix being opened or created.
    Io(PathBuf, io::Error),
}

/// The image root, held open as a descriptor.
pub(super) struct Tree {
    root: OwnedFd,
    use_openat2: Cell<bool>,
}

impl Tree {
    /// Open `root` (which itself may be reached through symlinks: it is the caller's trusted path).
    pub(super) fn open(root: &Path) -> io::Result<Self> {
        let root = rfs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            root,
            use_openat2: Cell::new(true),
        })
    }

    /// Like [`Tree::open`], but never use `openat2`: lets tests exercise the portable walk.
    #[cfg(test)]
    pub(super) fn open_without_openat2(root: &Path) -> io::Result<Self> {
        let tree = Self::open(root)?;
        tree.use_openat2.set(false);
        Ok(tree)
    }

    /// Open the directory at `rel` (normalised, relative to the root; empty = the root itself), refusing to
    /// pass through any symlink. With `create`, missing components are created with mode 0755.
    pub(super) fn open_dir(&self, rel: &Path, create: bool) -> Result<OwnedFd, WalkError> {
        if rel.as_os_str().is_empty() {
            return rfs::openat(&self.root, ".", DIR_FLAGS, Mode::empty())
                .map_err(|e| WalkError::Io(PathBuf::new(), e.into()));
        }
        if self.use_openat2.get() {
            let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rfs::openat2(&self.root, rel, DIR_FLAGS, Mode::empty(), resolve) {
                Ok(fd) => return Ok(fd),
                Err(Errno::NOSYS) | Err(Errno::PERM) => {
                    tracing::debug!("openat2 unavailable; using the component-by-component walk");
                    self.use_openat2.set(false);
                }
                // A problem with the path itself: the walk creates what is missing and names the culprit.
                Err(_) => {}
            }
        }
        self.walk(rel, create)
    }

    fn walk(&self, rel: &Path, create: bool) -> Result<OwnedFd, WalkError> {
        let mut cur = rfs::openat(&self.root, ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| WalkError::Io(PathBuf::new(), e.into()))?;
        let mut prefix = PathBuf::new();
        for comp in rel.iter() {
            prefix.push(comp);
            let next = match rfs::openat(&cur, comp, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rfs::mkdirat(&cur, comp, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(WalkError::Io(prefix, e.into())),
                    }
                    match rfs::openat(&cur, comp, DIR_FLAGS, Mode::empty()) {
                        Ok(fd) => fd,
                        Err(e) => return Err(diagnose(cur.as_fd(), comp, prefix, e)),
                    }
                }
                Err(e) => return Err(diagnose(cur.as_fd(), comp, prefix, e)),
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Remove `name` in `parent` (whose path is `rel`): unlink a non-directory, or delete a whole directory
    /// tree without following any symlink inside it. A missing `name` is not an error.
    pub(super) fn remove(&self, parent: BorrowedFd<'_>, name: &OsStr, rel: &Path) -> io::Result<()> {
        match lstat_at(parent, name)? {
            None => Ok(()),
            Some(FileType::Directory) => self.remove_tree(rel),
            Some(_) => unlink_at(parent, name),
        }
    }

    /// Post-order, iterative removal of the directory tree at `rel`.
    fn remove_tree(&self, rel: &Path) -> io::Result<()> {
        let mut stack: Vec<(PathBuf, bool)> = vec![(rel.to_path_buf(), false)];
        while let Some((dir, emptied)) = stack.pop() {
            if emptied {
                let parent = self.open_dir(parent_of(&dir), false).map_err(walk_to_io)?;
                let name = dir.file_name().unwrap_or_default();
                match rfs::unlinkat(&parent, name, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
                continue;
            }
            let fd = match self.open_dir(&dir, false) {
                Ok(fd) => fd,
                Err(WalkError::Missing(_)) => continue,
                Err(e) => return Err(walk_to_io(e)),
            };
            let _ = ensure_owner_rwx(fd.as_fd()); // the directory is deleted anyway
            stack.push((dir.clone(), true));
            for child in list(fd.as_fd())? {
                match lstat_at(fd.as_fd(), &child)? {
                    None => {}
                    Some(FileType::Directory) => stack.push((dir.join(&child), false)),
                    Some(_) => unlink_at(fd.as_fd(), &child)?,
                }
            }
        }
        Ok(())
    }
}

/// Name the failing component of a walk precisely.
fn diagnose(dir: BorrowedFd<'_>, comp: &OsStr, prefix: PathBuf, err: Errno) -> WalkError {
    match lstat_at(dir, comp) {
        Ok(Some(FileType::Symlink)) => WalkError::Symlink(prefix),
        Ok(Some(FileType::Directory)) => WalkError::Io(prefix, err.into()),
        Ok(Some(_)) => WalkError::NotDir(prefix),
        Ok(None) => WalkError::Missing(prefix),
        Err(e) => WalkError::Io(prefix, e),
    }
}

fn walk_to_io(e: WalkError) -> io::Error {
    match e {
        WalkError::Symlink(p) => io::Error::other(format!("{} became a symlink during removal", p.display())),
        WalkError::NotDir(p) => io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", p.display()),
        ),
        WalkError::Missing(p) => io::Error::new(io::ErrorKind::NotFound, format!("{} vanished", p.display())),
        WalkError::Io(_, e) => e,
    }
}

/// The parent of a normalised relative path ("" for a top-level name).
pub(super) fn parent_of(rel: &Path) -> &Path {
    rel.parent().unwrap_or(Path::new(""))
}

/// `fstatat(AT_SYMLINK_NOFOLLOW)` reduced to the file type; `None` when the name does not exist.
pub(super) fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileType>> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Names in a directory, without `.` and `..`. Collected first so we never mutate a directory mid-readdir.
pub(super) fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in rfs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// Give the owner rwx on a directory we are about to empty or fill, returning the mode to restore (if it was
/// changed). Root needs none of this (CAP_DAC_OVERRIDE), so it is a no-op there and the image's modes are never
/// touched; an unprivileged run needs it when a layer ships read-only directories (`dr-xr-xr-x`). Best effort:
/// a failure shows up as EACCES on the real operation.
pub(super) fn ensure_owner_rwx(dir: BorrowedFd<'_>) -> Option<Mode> {
    if rustix::process::geteuid().is_root() {
        return None;
    }
    let mode = rfs::fstat(dir).ok()?.st_mode & 0o7777;
    if mode & 0o700 == 0o700 {
        return None;
    }
    rfs::fchmod(dir, Mode::from_raw_mode(mode | 0o700)).ok()?;
    Some(Mode::from_raw_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn both(root: &Path) -> [Tree; 2] {
        [Tree::open(root).unwrap(), Tree::open_without_openat2(root).unwrap()]
    }

    #[test]
    fn open_dir_creates_missing_components() {
        let tmp = tempfile::tempdir().unwrap();
        for (i, tree) in both(tmp.path()).into_iter().enumerate() {
            let rel = PathBuf::from(format!("t{i}/a/b"));
            tree.open_dir(&rel, true).unwrap();
            assert!(tmp.path().join(&rel).is_dir());
            assert!(
                matches!(tree.open_dir(Path::new("nope/x"), false), Err(WalkError::Missing(p)) if p == Path::new("nope"))
            );
        }
    }

    #[test]
    fn open_dir_refuses_symlinked_components() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("real")).unwrap();
        symlink("real", tmp.path().join("link")).unwrap();
        symlink("/", tmp.path().join("abs")).unwrap();
        for tree in both(tmp.path()) {
            for (path, culprit) in [("link", "link"), ("link/x", "link"), ("abs/etc", "abs")] {
                match tree.open_dir(Path::new(path), true) {
                    Err(WalkError::Symlink(p)) => assert_eq!(p, Path::new(culprit)),
                    other => panic!("{path}: expected a symlink refusal, got {other:?}"),
                }
            }
            assert!(!tmp.path().join("real/x").exists(), "nothing created through the link");
        }
    }

    #[test]
    fn open_dir_reports_non_directories() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("f"), b"").unwrap();
        for tree in both(tmp.path()) {
            assert!(matches!(tree.open_dir(Path::new("f/x"), true), Err(WalkError::NotDir(p)) if p == Path::new("f")));
        }
    }

    #[test]
    fn remove_deletes_trees_without_following_links() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        let root = tmp.path().join("root");
        fs::create_dir_all(outside.join("keep")).unwrap();
        fs::write(outside.join("keep/file"), b"precious").unwrap();
        fs::create_dir_all(root.join("d/e/f")).unwrap();
        fs::write(root.join("d/e/f/g"), b"x").unwrap();
        symlink(&outside, root.join("d/e/out")).unwrap();
        symlink("../../../outside", root.join("d/rel")).unwrap();
        let tree = Tree::open(&root).unwrap();
        let top = tree.open_dir(Path::new(""), false).unwrap();
        tree.remove(top.as_fd(), OsStr::new("d"), Path::new("d")).unwrap();
        assert!(!root.join("d").exists());
        assert_eq!(fs::read(outside.join("keep/file")).unwrap(), b"precious");
        // Missing names are fine.
        tree.remove(top.as_fd(), OsStr::new("d"), Path::new("d")).unwrap();
    }

    #[test]
    fn remove_handles_deep_trees_iteratively() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = Tree::open(tmp.path()).unwrap();
        let deep: PathBuf = std::iter::repeat_n("d", 600).collect();
        tree.open_dir(&deep, true).unwrap();
        let top = tree.open_dir(Path::new(""), false).unwrap();
        tree.remove(top.as_fd(), OsStr::new("d"), Path::new("d")).unwrap();
        assert!(!tmp.path().join("d").exists());
    }
}
