//! Laying an overlay archive over a root directory, one atomic step per path.
//!
//! * **Atomic per file**: contents go to a temporary file beside the target (same
//!   directory, so the same filesystem), are fsynced with their owner and mode already
//!   set, then `renameat` replaces the target. A reader sees the old file or the new
//!   one, never a half-written one; the same for symlinks (made beside, renamed over).
//!   A file whose contents, mode and owner are already right is not rewritten.
//! * **No symlink in the root is followed**: every directory on the way is opened with
//!   `O_NOFOLLOW | O_DIRECTORY` relative to the one before, starting at the root, so a
//!   symlink planted at `etc` (or at `home/u/.ssh`) makes that entry fail instead of
//!   redirecting a write elsewhere. The final component is never followed either:
//!   `renameat` replaces a symlink, it does not write through it.
//! * **Only what it wrote is removed**: a manifest (JSON, under the root) lists every
//!   path the last apply wrote, with a digest for files and the target for symlinks.
//!   A path the new overlay no longer has is removed only if it is still what wwclient
//!   wrote (a file edited since is left, and forgotten); a directory only if wwclient
//!   created it and it is empty. Paths never in the manifest are never removed.
//! * Owners are set when running as root (otherwise they cannot be).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::overlay::archive::validate_name;
use crate::overlay::tree::{Entry, EntryKind};

/// Where the manifest lives, relative to the root.
pub const MANIFEST_PATH: &str = "var/lib/wwclient/manifest";
/// Overlay paths under this directory are refused: they would overwrite the manifest.
const STATE_DIR: &str = "var/lib/wwclient";

/// What wwclient wrote at a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Written {
    /// A directory wwclient created.
    Dir,
    /// A file with these contents (sha256, hex).
    File {
        sha256: String,
    },
    Symlink {
        target: String,
    },
}

/// Every path the last apply wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub entries: BTreeMap<String, Written>,
}

/// What one apply did.
#[derive(Debug, Default)]
pub struct Report {
    pub written: usize,
    pub unchanged: usize,
    pub removed: usize,
    /// Paths that failed, with why (the other paths were still applied).
    pub errors: Vec<String>,
    /// Paths left in place although the overlay dropped them, with why.
    pub kept: Vec<String>,
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// Opens directory `rel` (relative, `/`-separated; "" is the root itself) under `root`
/// without following any symlink; with `create`, missing directories are made (mode
/// 0755, owned by whoever runs) and their paths pushed to `created`.
fn open_dir(root: &OwnedFd, rel: &str, create: bool, created: &mut Vec<String>) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut fd = rustix::fs::openat(root, ".", flags, Mode::empty()).map_err(io_err)?;
    if rel.is_empty() {
        return Ok(fd);
    }
    let mut at = 0usize;
    for comp in rel.split('/') {
        let here = &rel[..at + comp.len()];
        at += comp.len() + 1;
        let next = match rustix::fs::openat(&fd, comp, flags, Mode::empty()) {
            Ok(f) => f,
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&fd, comp, Mode::from_raw_mode(0o755)) {
                    Ok(()) => created.push(here.to_owned()),
                    Err(Errno::EXIST) => {}
                    Err(e) => return Err(io::Error::new(e.kind(), format!("cannot create {here}: {e}"))),
                }
                rustix::fs::openat(&fd, comp, flags, Mode::empty()).map_err(io_err)?
            }
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                return Err(io::Error::other(format!(
                    "{here} is a symlink or not a directory; wwclient does not follow symlinks in the root"
                )))
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("cannot open {here}: {e}"))),
        };
        fd = next;
    }
    Ok(fd)
}

fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((p, b)) => (p, b),
        None => ("", path),
    }
}

/// Temporary name beside a target: short (a 255-byte name stays legal) and per process.
fn tmp_name() -> String {
    format!(".wwclient-{}.tmp", std::process::id())
}

/// A new, private (0600) temp file in directory `dir`, never through a symlink; a
/// leftover of an earlier run of this process id is removed first.
fn create_tmp(dir: &OwnedFd) -> io::Result<(String, File)> {
    let tmp = tmp_name();
    let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
    let fd = rustix::fs::openat(
        dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(io_err)?;
    Ok((tmp, File::from(fd)))
}

/// Applies archives to one root.
#[derive(Debug)]
pub struct Applier {
    root: PathBuf,
    /// Whether to set owners (running as root).
    chown: bool,
}

impl Applier {
    pub fn new(root: &Path) -> Applier {
        Applier {
            root: root.to_owned(),
            chown: rustix::process::geteuid().is_root(),
        }
    }

    fn open_root(&self) -> io::Result<OwnedFd> {
        rustix::fs::open(
            &self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open root {}: {e}", self.root.display())))
    }

    /// The manifest of the last apply; empty when there is none or it is unreadable
    /// (then nothing is removed: wwclient cannot prove it wrote anything).
    pub fn load_manifest(&self) -> Result<Manifest, String> {
        let root = self.open_root().map_err(|e| e.to_string())?;
        let (dir, base) = split(MANIFEST_PATH);
        let d = match open_dir(&root, dir, false, &mut Vec::new()) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Manifest::default()),
            Err(e) => return Err(e.to_string()),
        };
        let f = match rustix::fs::openat(
            &d,
            base,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(f) => f,
            Err(Errno::NOENT) => return Ok(Manifest::default()),
            Err(e) => return Err(format!("cannot open {MANIFEST_PATH}: {e}")),
        };
        let mut text = Vec::new();
        File::from(f)
            .take(64 << 20)
            .read_to_end(&mut text)
            .map_err(|e| format!("cannot read {MANIFEST_PATH}: {e}"))?;
        serde_json::from_slice(&text).map_err(|e| format!("{MANIFEST_PATH} is not a wwclient manifest: {e}"))
    }

    /// Makes the root hold `entries`, removes what the previous apply wrote and the
    /// overlay no longer has, and records the new manifest.
    pub fn apply(&self, entries: &BTreeMap<String, Entry>) -> Result<Report, String> {
        let root = self.open_root().map_err(|e| e.to_string())?;
        let mut report = Report::default();
        let old = match self.load_manifest() {
            Ok(m) => m,
            Err(e) => {
                report
                    .errors
                    .push(format!("{e}; starting a new one (nothing is removed this time)"));
                Manifest::default()
            }
        };
        let mut new = Manifest {
            version: 1,
            entries: BTreeMap::new(),
        };
        // 1. What the overlay dropped (or changed kind), deepest first.
        let same_kind = |w: &Written, e: &Entry| {
            matches!(
                (w, &e.kind),
                (Written::Dir, EntryKind::Dir)
                    | (Written::File { .. }, EntryKind::File(_))
                    | (Written::Symlink { .. }, EntryKind::Symlink(_))
            )
        };
        for (path, w) in old.entries.iter().rev() {
            if entries.get(path).is_some_and(|e| same_kind(w, e)) {
                continue;
            }
            match remove(&root, path, w) {
                Ok(Removal::Removed) => report.removed += 1,
                Ok(Removal::Gone) => {}
                // A directory still holding other files stays ours to remove later
                // (silently: it would be logged every cycle).
                Ok(Removal::NotEmpty) => {
                    if !entries.contains_key(path) {
                        new.entries.insert(path.clone(), w.clone());
                    }
                }
                Ok(Removal::Kept(why)) => report.kept.push(format!("{path}: {why}")),
                Err(e) => {
                    new.entries.insert(path.clone(), w.clone());
                    report.errors.push(format!("{path}: cannot remove: {e}"));
                }
            }
        }
        // 2. The overlay, parents first (the map is in path order).
        for (path, e) in entries {
            if let Err(err) = validate_name(path) {
                report.errors.push(err.to_string());
                continue;
            }
            if path == STATE_DIR
                || path.starts_with(&format!("{STATE_DIR}/"))
                || STATE_DIR.starts_with(&format!("{path}/")) && e.kind != EntryKind::Dir
            {
                report.errors.push(format!(
                    "{path}: refused, it would replace wwclient's own state in {STATE_DIR}"
                ));
                continue;
            }
            let mut created = Vec::new();
            let r = self.write_one(&root, path, e, old.entries.get(path), &mut created);
            for c in created {
                new.entries.entry(c).or_insert(Written::Dir);
            }
            match r {
                Ok((w, changed)) => {
                    if changed {
                        report.written += 1;
                    } else {
                        report.unchanged += 1;
                    }
                    if let Some(w) = w {
                        new.entries.insert(path.clone(), w);
                    }
                }
                Err(err) => {
                    if let Some(w) = old.entries.get(path) {
                        new.entries.insert(path.clone(), w.clone());
                    }
                    report.errors.push(format!("{path}: {err}"));
                }
            }
        }
        // Directories made implicitly for a path of the old manifest are still ours.
        for (p, w) in &old.entries {
            if *w == Written::Dir
                && !new.entries.contains_key(p)
                && entries.keys().any(|k| k.starts_with(&format!("{p}/")))
            {
                new.entries.insert(p.clone(), Written::Dir);
            }
        }
        self.save_manifest(&root, &new)
            .map_err(|e| format!("cannot write {MANIFEST_PATH}: {e}"))?;
        Ok(report)
    }

    /// Writes one path; returns what to record (None: a directory that was already
    /// there and not created by wwclient) and whether anything changed.
    fn write_one(
        &self,
        root: &OwnedFd,
        path: &str,
        e: &Entry,
        was: Option<&Written>,
        created: &mut Vec<String>,
    ) -> io::Result<(Option<Written>, bool)> {
        let (dir, base) = split(path);
        let parent = open_dir(root, dir, true, created)?;
        let current = match rustix::fs::statat(&parent, base, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::NOENT) => None,
            Err(err) => return Err(io_err(err)),
        };
        let cur_type = current.as_ref().map(|st| FileType::from_raw_mode(st.st_mode));
        let owner_ok = |st: &rustix::fs::Stat| !self.chown || (st.st_uid == e.uid && st.st_gid == e.gid);
        // Something of another kind in the way: a directory goes only if it is empty.
        let clear = |what: FileType| -> io::Result<()> {
            if what == FileType::Directory {
                rustix::fs::unlinkat(&parent, base, AtFlags::REMOVEDIR).map_err(|err| {
                    io::Error::new(
                        err.kind(),
                        format!("a directory is in the way and cannot be removed: {err}"),
                    )
                })
            } else {
                rustix::fs::unlinkat(&parent, base, AtFlags::empty()).map_err(io_err)
            }
        };
        match &e.kind {
            EntryKind::Dir => {
                let mut made = false;
                match cur_type {
                    Some(FileType::Directory) => {}
                    Some(other) => {
                        clear(other)?;
                        made = true;
                    }
                    None => made = true,
                }
                if made {
                    rustix::fs::mkdirat(&parent, base, Mode::from_raw_mode(0o700)).map_err(io_err)?;
                }
                let d = rustix::fs::openat(
                    &parent,
                    base,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io_err)?;
                let st = rustix::fs::fstat(&d).map_err(io_err)?;
                let changed = made || st.st_mode & 0o7777 != e.mode || !owner_ok(&st);
                if changed {
                    self.set_owner_mode(&d, e)?;
                }
                let ours = made || was == Some(&Written::Dir);
                Ok((ours.then_some(Written::Dir), changed))
            }
            EntryKind::File(data) => {
                let w = Written::File {
                    sha256: sha256_hex(data),
                };
                if cur_type == Some(FileType::RegularFile) && self.same_file(&parent, base, e, data)? {
                    return Ok((Some(w), false));
                }
                if let Some(t @ FileType::Directory) = cur_type {
                    clear(t)?;
                }
                let (tmp, mut f) = create_tmp(&parent)?;
                let done = (|| {
                    f.write_all(data)?;
                    self.set_owner_mode(&f, e)?;
                    f.sync_all()?;
                    rustix::fs::renameat(&parent, tmp.as_str(), &parent, base).map_err(io_err)
                })();
                if let Err(err) = done {
                    let _ = rustix::fs::unlinkat(&parent, tmp.as_str(), AtFlags::empty());
                    return Err(err);
                }
                let _ = rustix::fs::fsync(&parent);
                Ok((Some(w), true))
            }
            EntryKind::Symlink(target) => {
                let w = Written::Symlink { target: target.clone() };
                if cur_type == Some(FileType::Symlink) {
                    let now = rustix::fs::readlinkat(&parent, base, Vec::new()).map_err(io_err)?;
                    let st = current.as_ref().expect("stat of an existing path");
                    if now.as_bytes() == target.as_bytes() && owner_ok(st) {
                        return Ok((Some(w), false));
                    }
                }
                if let Some(t @ FileType::Directory) = cur_type {
                    clear(t)?;
                }
                let tmp = tmp_name();
                let _ = rustix::fs::unlinkat(&parent, tmp.as_str(), AtFlags::empty());
                rustix::fs::symlinkat(target.as_str(), &parent, tmp.as_str()).map_err(io_err)?;
                let done = (|| {
                    if self.chown {
                        rustix::fs::chownat(
                            &parent,
                            tmp.as_str(),
                            Some(rustix::fs::Uid::from_raw(e.uid)),
                            Some(rustix::fs::Gid::from_raw(e.gid)),
                            AtFlags::SYMLINK_NOFOLLOW,
                        )
                        .map_err(io_err)?;
                    }
                    rustix::fs::renameat(&parent, tmp.as_str(), &parent, base).map_err(io_err)
                })();
                if let Err(err) = done {
                    let _ = rustix::fs::unlinkat(&parent, tmp.as_str(), AtFlags::empty());
                    return Err(err);
                }
                let _ = rustix::fs::fsync(&parent);
                Ok((Some(w), true))
            }
        }
    }

    /// Owner first: `chown` clears setuid/setgid, so the mode goes after it.
    fn set_owner_mode<Fd: AsFd>(&self, fd: Fd, e: &Entry) -> io::Result<()> {
        if self.chown {
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(e.uid)),
                Some(rustix::fs::Gid::from_raw(e.gid)),
            )
            .map_err(io_err)?;
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(e.mode)).map_err(io_err)
    }

    /// Whether the regular file `base` already has these contents, mode and owner.
    fn same_file(&self, parent: &OwnedFd, base: &str, e: &Entry, data: &[u8]) -> io::Result<bool> {
        let fd = match rustix::fs::openat(
            parent,
            base,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(_) => return Ok(false),
        };
        let st = rustix::fs::fstat(&fd).map_err(io_err)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
            || st.st_size as u64 != data.len() as u64
            || st.st_mode & 0o7777 != e.mode
            || (self.chown && (st.st_uid != e.uid || st.st_gid != e.gid))
        {
            return Ok(false);
        }
        let mut now = Vec::with_capacity(data.len());
        File::from(fd).take(data.len() as u64 + 1).read_to_end(&mut now)?;
        Ok(now == data)
    }

    fn save_manifest(&self, root: &OwnedFd, m: &Manifest) -> io::Result<()> {
        let (dir, base) = split(MANIFEST_PATH);
        let d = open_dir(root, dir, true, &mut Vec::new())?;
        let text = serde_json::to_vec_pretty(m).map_err(io::Error::other)?;
        let (tmp, mut f) = create_tmp(&d)?;
        f.write_all(&text)?;
        f.sync_all()?;
        rustix::fs::renameat(&d, tmp.as_str(), &d, base).map_err(io_err)?;
        let _ = rustix::fs::fsync(&d);
        Ok(())
    }
}

enum Removal {
    Removed,
    /// Nothing there any more.
    Gone,
    /// A directory wwclient made, still holding other files.
    NotEmpty,
    /// Left in place, with why.
    Kept(String),
}

/// Removes `path` if it is still what wwclient wrote there.
fn remove(root: &OwnedFd, path: &str, w: &Written) -> io::Result<Removal> {
    let (dir, base) = split(path);
    let parent = match open_dir(root, dir, false, &mut Vec::new()) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removal::Gone),
        Err(e) => return Err(e),
    };
    let st = match rustix::fs::statat(&parent, base, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(Removal::Gone),
        Err(e) => return Err(io_err(e)),
    };
    let t = FileType::from_raw_mode(st.st_mode);
    let ours = match w {
        Written::Dir => t == FileType::Directory,
        Written::Symlink { target } => {
            t == FileType::Symlink
                && rustix::fs::readlinkat(&parent, base, Vec::new())
                    .map_err(io_err)?
                    .as_bytes()
                    == target.as_bytes()
        }
        Written::File { sha256 } => {
            t == FileType::RegularFile && {
                let fd = rustix::fs::openat(
                    &parent,
                    base,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io_err)?;
                let mut h = Sha256::new();
                io::copy(&mut File::from(fd), &mut HashSink(&mut h))?;
                h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>() == *sha256
            }
        }
    };
    if !ours {
        return Ok(Removal::Kept("changed since wwclient wrote it; left alone".into()));
    }
    match w {
        Written::Dir => match rustix::fs::unlinkat(&parent, base, AtFlags::REMOVEDIR) {
            Ok(()) => Ok(Removal::Removed),
            Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => Ok(Removal::NotEmpty),
            Err(e) => Err(io_err(e)),
        },
        _ => {
            rustix::fs::unlinkat(&parent, base, AtFlags::empty()).map_err(io_err)?;
            Ok(Removal::Removed)
        }
    }
}

struct HashSink<'a>(&'a mut Sha256);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn e(kind: EntryKind, mode: u32) -> Entry {
        Entry {
            kind,
            mode,
            uid: 0,
            gid: 0,
        }
    }

    fn file(data: &str, mode: u32) -> Entry {
        e(EntryKind::File(data.as_bytes().to_vec()), mode)
    }

    fn tree(items: &[(&str, Entry)]) -> BTreeMap<String, Entry> {
        items.iter().map(|(p, e)| (p.to_string(), e.clone())).collect()
    }

    #[test]
    fn applies_files_dirs_symlinks_with_modes_then_removes_only_its_own() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let a = Applier::new(root);
        let t1 = tree(&[
            ("etc", e(EntryKind::Dir, 0o755)),
            ("etc/hosts", file("h1\n", 0o644)),
            ("etc/ssh/key", file("k", 0o600)),
            ("etc/lt", e(EntryKind::Symlink("/usr/share/zoneinfo/UTC".into()), 0o777)),
            ("srv", e(EntryKind::Dir, 0o750)),
        ]);
        let r = a.apply(&t1).unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(std::fs::read_to_string(root.join("etc/hosts")).unwrap(), "h1\n");
        let mode = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("etc/ssh/key"), 0o600);
        assert_eq!(mode("srv"), 0o750);
        assert_eq!(mode("etc/ssh"), 0o755, "implicit parent");
        assert_eq!(
            std::fs::read_link(root.join("etc/lt")).unwrap(),
            Path::new("/usr/share/zoneinfo/UTC")
        );
        // Same archive again: nothing rewritten.
        let r = a.apply(&t1).unwrap();
        assert_eq!((r.written, r.removed), (0, 0));
        // A file the admin put there, and one wwclient wrote but someone changed since.
        std::fs::write(root.join("etc/local.conf"), "mine").unwrap();
        std::fs::write(root.join("srv/data"), "mine").unwrap();
        let t2 = tree(&[("etc", e(EntryKind::Dir, 0o755)), ("etc/hosts", file("h2\n", 0o640))]);
        std::fs::write(root.join("etc/ssh/key"), "edited").unwrap();
        let r = a.apply(&t2).unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(std::fs::read_to_string(root.join("etc/hosts")).unwrap(), "h2\n");
        assert_eq!(mode("etc/hosts"), 0o640);
        assert!(!root.join("etc/lt").exists() && std::fs::symlink_metadata(root.join("etc/lt")).is_err());
        assert_eq!(std::fs::read_to_string(root.join("etc/local.conf")).unwrap(), "mine");
        assert_eq!(
            std::fs::read_to_string(root.join("etc/ssh/key")).unwrap(),
            "edited",
            "changed since: kept"
        );
        assert!(
            root.join("srv/data").exists(),
            "srv is not empty: kept with its foreign file"
        );
        assert_eq!(r.kept.len(), 1, "{:?}", r.kept);
        assert!(r.kept[0].starts_with("etc/ssh/key: changed since"), "{:?}", r.kept);
        // Once srv is empty, the next apply removes the directory wwclient created.
        std::fs::remove_file(root.join("srv/data")).unwrap();
        a.apply(&t2).unwrap();
        assert!(!root.join("srv").exists());
        // No temporary files left behind.
        let leftovers: Vec<_> = walk(root).into_iter().filter(|p| p.contains(".wwclient-")).collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    fn walk(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            out.push(e.path().display().to_string());
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            }
        }
        out
    }

    #[test]
    fn a_symlink_planted_in_the_root_does_not_redirect_writes() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.join("passwd"), root.join("passwd")).unwrap();
        let a = Applier::new(&root);
        let r = a
            .apply(&tree(&[("etc/hosts", file("x", 0o644)), ("passwd", file("p", 0o644))]))
            .unwrap();
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(r.errors[0].contains("does not follow symlinks"), "{:?}", r.errors);
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "nothing written outside"
        );
        // The planted symlink at a file's path is replaced, not written through.
        let m = std::fs::symlink_metadata(root.join("passwd")).unwrap();
        assert!(m.file_type().is_file());
        assert_eq!(std::fs::read_to_string(root.join("passwd")).unwrap(), "p");
    }

    #[test]
    fn owners_are_set_when_root() {
        if !rustix::process::geteuid().is_root() {
            println!("SKIP owners_are_set_when_root: not running as root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let mut f = file("x", 0o4750);
        f.uid = 1234;
        f.gid = 99;
        let mut l = e(EntryKind::Symlink("x".into()), 0o777);
        l.uid = 1234;
        Applier::new(d.path()).apply(&tree(&[("su", f), ("l", l)])).unwrap();
        let m = std::fs::metadata(d.path().join("su")).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (1234, 99, 0o4750),
            "setuid kept after chown"
        );
        assert_eq!(std::fs::symlink_metadata(d.path().join("l")).unwrap().uid(), 1234);
    }

    #[test]
    fn an_unreadable_manifest_removes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let a = Applier::new(d.path());
        a.apply(&tree(&[("a", file("1", 0o644))])).unwrap();
        std::fs::write(d.path().join(MANIFEST_PATH), "not json").unwrap();
        let r = a.apply(&tree(&[("b", file("2", 0o644))])).unwrap();
        assert!(d.path().join("a").exists());
        assert!(r.errors[0].contains("not a wwclient manifest"), "{:?}", r.errors);
        // The new manifest is valid again.
        assert_eq!(a.load_manifest().unwrap().entries.keys().collect::<Vec<_>>(), ["b"]);
    }
}
