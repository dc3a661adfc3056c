//! An overlay's files as a value.
//!
//! Paths are relative (no leading `/`), use `/` separators, and have no `.`, `..` or
//! empty components, so an overlay can never name a file outside the tree it is
//! unpacked into. Symlink targets are kept as written (a node's `/etc/localtime` points
//! into `/usr/share/zoneinfo`), but [`OverlayTree::validate`] refuses a link that would
//! lead a relative path out of the overlay.
//!
//! Further rules [`OverlayTree::validate`] enforces, each closing a way out:
//! - every path's parent is a directory *of the tree* (the root excepted): no file is
//!   ever written through a symlink, which an unpacker would follow out of the tree;
//! - modes are permission bits only (`0o7777`), no file-type bits.
//!
//! The canonical form ([`OverlayTree::to_canonical`]) is the tree's JSON (paths in
//! order, file contents base64); its sha256 is the overlay's digest and its bytes are
//! the CAS blob, so equal trees have equal digests on every head.
//!
//! Operators name paths as Warewulf does, often with a leading `/` meaning the
//! overlay's root (`/etc/hosts.ww`); [`normalize`] turns that into the relative key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::Digest;

/// Largest file an overlay holds (overlays are configuration, not images).
pub const MAX_FILE_BYTES: usize = 32 << 20;
/// Mode of directories created on the way (`--parents`, `mkdir`).
pub const DIR_MODE: u32 = 0o755;
/// Mode of a new file when none is given.
pub const FILE_MODE: u32 = 0o644;
/// Mode symlinks carry (permissions of a link are not used).
pub const LINK_MODE: u32 = 0o777;

/// What one path of an overlay is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    Dir,
    /// A regular file; a template when its path ends in `.ww`.
    File(#[serde(with = "serde_bytes_b64")] Vec<u8>),
    Symlink(String),
}

/// One path of an overlay, with Unix permission bits (`0o644`, no file-type bits) and owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Entry {
    pub fn dir(mode: u32) -> Entry {
        Entry {
            kind: EntryKind::Dir,
            mode,
            uid: 0,
            gid: 0,
        }
    }

    pub fn file(content: Vec<u8>, mode: u32) -> Entry {
        Entry {
            kind: EntryKind::File(content),
            mode,
            uid: 0,
            gid: 0,
        }
    }

    pub fn symlink(target: &str) -> Entry {
        Entry {
            kind: EntryKind::Symlink(target.to_string()),
            mode: LINK_MODE,
            uid: 0,
            gid: 0,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, EntryKind::Dir)
    }

    /// `file`, `dir` or `symlink`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            EntryKind::Dir => "dir",
            EntryKind::File(_) => "file",
            EntryKind::Symlink(_) => "symlink",
        }
    }
}

/// An overlay: relative path → entry, in path order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayTree {
    pub entries: BTreeMap<String, Entry>,
}

/// Why a tree, a path or an edit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("path {path:?} is not allowed in an overlay: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("symlink {path} -> {target} would lead out of the overlay; use a target inside it, or an absolute one (resolved on the node)")]
    LinkEscapes { path: String, target: String },
    #[error("{path}: mode {mode:o} is not a permission mode; give at most four octal digits, e.g. 0644")]
    BadMode { path: String, mode: u32 },
    #[error("{path} is not in the overlay; see `wwctl overlay list -a NAME`")]
    NotFound { path: String },
    #[error("{path} already exists in the overlay; pass --overwrite to replace it")]
    Exists { path: String },
    #[error("directory {parent} does not exist in the overlay (needed for {path}); pass --parents (-p) to create it")]
    MissingParent { path: String, parent: String },
    #[error("{parent} is a {kind} in the overlay, not a directory, so {path} cannot be placed under it")]
    ParentNotDir {
        path: String,
        parent: String,
        kind: &'static str,
    },
    #[error("{path} is a {kind}, not a {wanted}")]
    WrongKind {
        path: String,
        kind: &'static str,
        wanted: &'static str,
    },
    #[error("directory {path} is not empty ({count} entries under it); pass --force (-f) to delete it with everything under it")]
    NotEmpty { path: String, count: usize },
    #[error("{path} is {size} bytes; an overlay file may be at most {max} bytes")]
    TooLarge { path: String, size: usize, max: usize },
    #[error("reading {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("stored overlay tree is not valid JSON: {0}")]
    Decode(String),
}

/// The relative key of an operator-given path: one leading `/` (the overlay's root, as
/// Warewulf writes paths) is dropped, and a trailing `/` of a directory; then the
/// path must be relative with no `.`, `..` or empty components.
pub fn normalize(path: &str) -> Result<String, TreeError> {
    let p = path.strip_prefix('/').unwrap_or(path);
    let p = p.strip_suffix('/').unwrap_or(p);
    check_path(p)?;
    Ok(p.to_string())
}

/// A tree key: relative, `/`-separated, no `.`, `..` or empty components, no NUL.
pub fn check_path(p: &str) -> Result<(), TreeError> {
    let bad = |reason| {
        Err(TreeError::BadPath {
            path: p.to_string(),
            reason,
        })
    };
    if p.is_empty() {
        return bad("it is empty (the overlay's root itself)");
    }
    if p.starts_with('/') {
        return bad("it is absolute; paths are relative to the overlay's root");
    }
    if p.contains('\0') {
        return bad("it contains a NUL byte");
    }
    for c in p.split('/') {
        match c {
            "" => return bad("it has an empty component (`//` or a trailing `/`)"),
            "." => return bad("it has a `.` component"),
            ".." => return bad("it has a `..` component, which would lead out of the overlay"),
            _ => {}
        }
    }
    Ok(())
}

/// The parent key of a path (`None` for a top-level path).
pub fn parent(p: &str) -> Option<&str> {
    p.rsplit_once('/').map(|(d, _)| d)
}

/// Whether `target` of a symlink at `path` stays inside the overlay: absolute targets
/// are resolved on the node and always allowed; a relative one may not climb above
/// the root.
fn link_stays_inside(path: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return true;
    }
    let mut depth: i64 = parent(path).map_or(0, |d| d.split('/').count() as i64);
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

/// Order of paths as a directory walk visits them (a directory, then what is under
/// it), which is how Warewulf lists overlay files: `etc`, `etc/hosts`, `etc.d`.
pub fn walk_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/').cmp(b.split('/'))
}

impl OverlayTree {
    /// Check every rule of the module doc.
    pub fn validate(&self) -> Result<(), TreeError> {
        for (path, e) in &self.entries {
            check_path(path)?;
            if e.mode & !0o7777 != 0 {
                return Err(TreeError::BadMode {
                    path: path.clone(),
                    mode: e.mode,
                });
            }
            if let Some(d) = parent(path) {
                match self.entries.get(d) {
                    None => {
                        return Err(TreeError::MissingParent {
                            path: path.clone(),
                            parent: d.to_string(),
                        })
                    }
                    Some(pe) if !pe.is_dir() => {
                        return Err(TreeError::ParentNotDir {
                            path: path.clone(),
                            parent: d.to_string(),
                            kind: pe.kind_name(),
                        })
                    }
                    Some(_) => {}
                }
            }
            match &e.kind {
                EntryKind::Symlink(t) => {
                    if t.is_empty() || t.contains('\0') {
                        return Err(TreeError::BadPath {
                            path: path.clone(),
                            reason: "its symlink target is empty or contains a NUL byte",
                        });
                    }
                    if !link_stays_inside(path, t) {
                        return Err(TreeError::LinkEscapes {
                            path: path.clone(),
                            target: t.clone(),
                        });
                    }
                }
                EntryKind::File(c) if c.len() > MAX_FILE_BYTES => {
                    return Err(TreeError::TooLarge {
                        path: path.clone(),
                        size: c.len(),
                        max: MAX_FILE_BYTES,
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The canonical bytes (the CAS blob).
    pub fn to_canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("overlay trees serialize")
    }

    /// The overlay's digest: sha256 of [`OverlayTree::to_canonical`].
    pub fn digest(&self) -> Digest {
        Digest::of(&self.to_canonical())
    }

    /// Parse and validate a canonical blob.
    pub fn from_canonical(bytes: &[u8]) -> Result<OverlayTree, TreeError> {
        let t: OverlayTree = serde_json::from_slice(bytes).map_err(|e| TreeError::Decode(e.to_string()))?;
        t.validate()?;
        Ok(t)
    }

    /// Read a tree from a directory on disk (its contents become the overlay's root),
    /// keeping modes and, if `owners`, the files' uid/gid (else root's).
    pub fn from_dir(root: &Path, owners: bool) -> Result<OverlayTree, TreeError> {
        use std::os::unix::fs::MetadataExt;
        let mut t = OverlayTree::default();
        let io = |p: &Path, e: std::io::Error| TreeError::Io {
            path: p.to_path_buf(),
            message: e.to_string(),
        };
        // Explicit stack, bounded by the tree itself (symlinks are not followed).
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for de in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
                let de = de.map_err(|e| io(&dir, e))?;
                let p = de.path();
                let rel = p.strip_prefix(root).expect("under root");
                let key = rel.to_str().ok_or_else(|| TreeError::BadPath {
                    path: rel.to_string_lossy().into_owned(),
                    reason: "it is not valid UTF-8",
                })?;
                let m = std::fs::symlink_metadata(&p).map_err(|e| io(&p, e))?;
                let ft = m.file_type();
                let kind = if ft.is_symlink() {
                    let t = std::fs::read_link(&p).map_err(|e| io(&p, e))?;
                    EntryKind::Symlink(t.to_str().map(str::to_string).ok_or_else(|| TreeError::BadPath {
                        path: key.to_string(),
                        reason: "its symlink target is not valid UTF-8",
                    })?)
                } else if ft.is_dir() {
                    stack.push(p.clone());
                    EntryKind::Dir
                } else if ft.is_file() {
                    EntryKind::File(std::fs::read(&p).map_err(|e| io(&p, e))?)
                } else {
                    return Err(TreeError::BadPath {
                        path: key.to_string(),
                        reason: "it is a device, socket or FIFO; overlays hold files, directories and symlinks",
                    });
                };
                let mode = if ft.is_symlink() { LINK_MODE } else { m.mode() & 0o7777 };
                let (uid, gid) = if owners { (m.uid(), m.gid()) } else { (0, 0) };
                t.entries.insert(key.to_string(), Entry { kind, mode, uid, gid });
            }
        }
        t.validate()?;
        Ok(t)
    }

    /// How many entries are under `path` (not counting itself).
    pub fn count_under(&self, path: &str) -> usize {
        let prefix = format!("{path}/");
        self.entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .count()
    }

    fn get(&self, path: &str) -> Result<&Entry, TreeError> {
        self.entries
            .get(path)
            .ok_or_else(|| TreeError::NotFound { path: path.to_string() })
    }

    fn get_mut(&mut self, path: &str) -> Result<&mut Entry, TreeError> {
        self.entries
            .get_mut(path)
            .ok_or_else(|| TreeError::NotFound { path: path.to_string() })
    }

    /// Make sure `path`'s parent directory exists: created (mode [`DIR_MODE`], root's)
    /// with its own parents if `parents`, else an error naming it.
    fn ensure_parent(&mut self, path: &str, parents: bool) -> Result<(), TreeError> {
        let Some(d) = parent(path) else { return Ok(()) };
        match self.entries.get(d) {
            Some(e) if e.is_dir() => Ok(()),
            Some(e) => Err(TreeError::ParentNotDir {
                path: path.to_string(),
                parent: d.to_string(),
                kind: e.kind_name(),
            }),
            None if parents => {
                self.ensure_parent(d, true)?;
                self.entries.insert(d.to_string(), Entry::dir(DIR_MODE));
                Ok(())
            }
            None => Err(TreeError::MissingParent {
                path: path.to_string(),
                parent: d.to_string(),
            }),
        }
    }

    /// Put a file at `path`. An existing file is replaced only with `overwrite` and
    /// keeps its mode and owner unless new ones are given; a new file gets `mode` (or
    /// [`FILE_MODE`]) and `owner` (or root's).
    pub fn put_file(
        &mut self,
        path: &str,
        content: Vec<u8>,
        mode: Option<u32>,
        owner: Option<(u32, u32)>,
        parents: bool,
        overwrite: bool,
    ) -> Result<(), TreeError> {
        check_path(path)?;
        if let Some(m) = mode {
            check_mode(path, m)?;
        }
        if content.len() > MAX_FILE_BYTES {
            return Err(TreeError::TooLarge {
                path: path.to_string(),
                size: content.len(),
                max: MAX_FILE_BYTES,
            });
        }
        let (old_mode, old_owner) = match self.entries.get(path) {
            Some(e) if !e.is_dir() => {
                if !overwrite {
                    return Err(TreeError::Exists { path: path.to_string() });
                }
                (Some(e.mode), Some((e.uid, e.gid)))
            }
            Some(e) => {
                return Err(TreeError::WrongKind {
                    path: path.to_string(),
                    kind: e.kind_name(),
                    wanted: "file",
                })
            }
            None => (None, None),
        };
        self.ensure_parent(path, parents)?;
        let mode = mode.or(old_mode).unwrap_or(FILE_MODE);
        let (uid, gid) = owner.or(old_owner).unwrap_or((0, 0));
        self.entries.insert(
            path.to_string(),
            Entry {
                kind: EntryKind::File(content),
                mode,
                uid,
                gid,
            },
        );
        Ok(())
    }

    /// Put a symlink at `path` (replacing a file or link there only with `overwrite`).
    pub fn put_symlink(&mut self, path: &str, target: &str, parents: bool, overwrite: bool) -> Result<(), TreeError> {
        check_path(path)?;
        if let Some(e) = self.entries.get(path) {
            if e.is_dir() {
                return Err(TreeError::WrongKind {
                    path: path.to_string(),
                    kind: "dir",
                    wanted: "symlink",
                });
            }
            if !overwrite {
                return Err(TreeError::Exists { path: path.to_string() });
            }
        }
        if !link_stays_inside(path, target) {
            return Err(TreeError::LinkEscapes {
                path: path.to_string(),
                target: target.to_string(),
            });
        }
        self.ensure_parent(path, parents)?;
        self.entries.insert(path.to_string(), Entry::symlink(target));
        Ok(())
    }

    /// `mkdir -p` with `mode` for the directories it creates; an existing directory
    /// at `path` gets `mode` (as Warewulf's `overlay mkdir` does).
    pub fn mkdir(&mut self, path: &str, mode: u32) -> Result<(), TreeError> {
        check_path(path)?;
        check_mode(path, mode)?;
        match self.entries.get_mut(path) {
            Some(e) if e.is_dir() => {
                e.mode = mode;
                return Ok(());
            }
            Some(e) => {
                return Err(TreeError::WrongKind {
                    path: path.to_string(),
                    kind: e.kind_name(),
                    wanted: "dir",
                })
            }
            None => {}
        }
        let mut missing = vec![path];
        let mut cur = path;
        while let Some(d) = parent(cur) {
            match self.entries.get(d) {
                Some(e) if e.is_dir() => break,
                Some(e) => {
                    return Err(TreeError::ParentNotDir {
                        path: path.to_string(),
                        parent: d.to_string(),
                        kind: e.kind_name(),
                    })
                }
                None => missing.push(d),
            }
            cur = d;
        }
        for d in missing {
            self.entries.insert(d.to_string(), Entry::dir(mode));
        }
        Ok(())
    }

    pub fn chmod(&mut self, path: &str, mode: u32) -> Result<(), TreeError> {
        check_path(path)?;
        check_mode(path, mode)?;
        let e = self.get_mut(path)?;
        if !matches!(e.kind, EntryKind::Symlink(_)) {
            e.mode = mode;
        }
        Ok(())
    }

    /// Change owner; `None` keeps that id (as `chown UID` keeps the group).
    pub fn chown(&mut self, path: &str, uid: Option<u32>, gid: Option<u32>) -> Result<(), TreeError> {
        check_path(path)?;
        let e = self.get_mut(path)?;
        if let Some(u) = uid {
            e.uid = u;
        }
        if let Some(g) = gid {
            e.gid = g;
        }
        Ok(())
    }

    /// Delete `path`; a non-empty directory only with `force` (with everything under
    /// it). With `parents`, directories left empty above it are removed too.
    pub fn delete(&mut self, path: &str, force: bool, parents: bool) -> Result<(), TreeError> {
        check_path(path)?;
        self.get(path)?;
        let under = self.count_under(path);
        if under > 0 && !force {
            return Err(TreeError::NotEmpty {
                path: path.to_string(),
                count: under,
            });
        }
        let prefix = format!("{path}/");
        self.entries.retain(|k, _| k != path && !k.starts_with(&prefix));
        if parents {
            let mut cur = path;
            while let Some(d) = parent(cur) {
                if self.count_under(d) > 0 {
                    break;
                }
                self.entries.remove(d);
                cur = d;
            }
        }
        Ok(())
    }

    /// The entry at `path` (after [`normalize`]).
    pub fn entry(&self, path: &str) -> Result<&Entry, TreeError> {
        self.get(path)
    }

    /// Paths in [`walk_order`].
    pub fn walk(&self) -> Vec<(&String, &Entry)> {
        let mut v: Vec<_> = self.entries.iter().collect();
        v.sort_by(|a, b| walk_order(a.0, b.0));
        v
    }
}

fn check_mode(path: &str, mode: u32) -> Result<(), TreeError> {
    if mode & !0o7777 != 0 {
        return Err(TreeError::BadMode {
            path: path.to_string(),
            mode,
        });
    }
    Ok(())
}

/// File contents travel as base64 in the tree's JSON form (a tree is one CAS blob).
mod serde_bytes_b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| serde::de::Error::custom(format!("file contents are not valid base64: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OverlayTree {
        let mut t = OverlayTree::default();
        t.mkdir("etc/systemd/system", 0o755).unwrap();
        t.put_file("etc/hosts.ww", b"{{ x }}\n".to_vec(), None, None, false, false)
            .unwrap();
        t.put_symlink("etc/systemd/system/a.service", "../b.service", false, false)
            .unwrap();
        t
    }

    #[test]
    fn paths_that_could_escape_are_refused() {
        for p in ["", "/etc/x", "../x", "a/../../x", "a//b", "a/./b", "a/", "x\0y"] {
            assert!(check_path(p).is_err(), "{p:?} accepted");
        }
        assert!(check_path("etc/hosts.ww").is_ok());
        // Operators may write Warewulf's `/etc/hosts` (the overlay's root), never `..`.
        assert_eq!(normalize("/etc/hosts").unwrap(), "etc/hosts");
        assert_eq!(normalize("etc/dir/").unwrap(), "etc/dir");
        let e = normalize("/../etc/shadow").unwrap_err().to_string();
        assert!(e.contains("`..`"), "{e}");
        assert!(normalize("//etc").is_err());
    }

    #[test]
    fn a_tree_with_an_absolute_or_dotted_key_is_invalid() {
        for key in ["/etc/passwd", "../x", "a/./b"] {
            let mut t = OverlayTree::default();
            t.entries.insert(key.into(), Entry::file(vec![], 0o644));
            assert!(matches!(t.validate(), Err(TreeError::BadPath { .. })), "{key}");
        }
    }

    #[test]
    fn symlinks_may_not_lead_a_relative_path_out() {
        let mut t = sample();
        let e = t.put_symlink("etc/out", "../../x", false, false).unwrap_err();
        assert!(matches!(e, TreeError::LinkEscapes { .. }), "{e}");
        assert!(t.put_symlink("etc/deep", "../etc/../../x", false, false).is_err());
        // Inside the overlay, or absolute (resolved on the node): fine.
        t.put_symlink("etc/in", "systemd/system/../../hosts.ww", false, false)
            .unwrap();
        t.put_symlink("etc/localtime", "/usr/share/zoneinfo/UTC", false, false)
            .unwrap();
        t.validate().unwrap();
        // A tree built by hand with an escaping link is invalid as a whole.
        t.entries.insert("x".into(), Entry::symlink("../etc"));
        assert!(matches!(t.validate(), Err(TreeError::LinkEscapes { .. })));
    }

    #[test]
    fn nothing_is_placed_under_a_symlink_or_without_its_directory() {
        let mut t = OverlayTree::default();
        t.put_symlink("etc", "/tmp", false, false).unwrap();
        let e = t.put_file("etc/passwd", vec![], None, None, true, false).unwrap_err();
        assert!(matches!(e, TreeError::ParentNotDir { kind: "symlink", .. }), "{e}");
        let mut bad = OverlayTree::default();
        bad.entries.insert("etc".into(), Entry::symlink("/tmp"));
        bad.entries.insert("etc/passwd".into(), Entry::file(vec![], 0o644));
        assert!(bad.validate().is_err(), "a file through a symlink");
        let mut orphan = OverlayTree::default();
        orphan.entries.insert("a/b".into(), Entry::file(vec![], 0o644));
        assert!(matches!(orphan.validate(), Err(TreeError::MissingParent { .. })));
    }

    #[test]
    fn modes_are_permission_bits_only() {
        let mut t = sample();
        assert!(matches!(
            t.chmod("etc/hosts.ww", 0o100644),
            Err(TreeError::BadMode { .. })
        ));
        t.chmod("etc/hosts.ww", 0o600).unwrap();
        assert_eq!(t.entry("etc/hosts.ww").unwrap().mode, 0o600);
        let mut bad = OverlayTree::default();
        bad.entries.insert("f".into(), Entry::file(vec![], 0o40755));
        assert!(matches!(bad.validate(), Err(TreeError::BadMode { .. })));
    }

    #[test]
    fn put_file_needs_parents_or_the_flag_and_keeps_attributes_on_overwrite() {
        let mut t = sample();
        let e = t
            .put_file("opt/x/y", b"1".to_vec(), None, None, false, false)
            .unwrap_err();
        assert!(e.to_string().contains("--parents"), "{e}");
        t.put_file("opt/x/y", b"1".to_vec(), Some(0o600), Some((5, 6)), true, false)
            .unwrap();
        assert!(t.entry("opt").unwrap().is_dir() && t.entry("opt/x").unwrap().is_dir());
        let e = t
            .put_file("opt/x/y", b"2".to_vec(), None, None, false, false)
            .unwrap_err();
        assert!(e.to_string().contains("--overwrite"), "{e}");
        t.put_file("opt/x/y", b"2".to_vec(), None, None, false, true).unwrap();
        let y = t.entry("opt/x/y").unwrap();
        assert_eq!((y.mode, y.uid, y.gid), (0o600, 5, 6));
        assert_eq!(y.kind, EntryKind::File(b"2".to_vec()));
        t.validate().unwrap();
    }

    #[test]
    fn delete_a_file_a_subtree_and_empty_parents() {
        let mut t = sample();
        let e = t.delete("etc/systemd", false, false).unwrap_err();
        assert!(matches!(e, TreeError::NotEmpty { count: 2, .. }), "{e}");
        t.delete("etc/systemd/system/a.service", false, true).unwrap();
        assert!(t.entry("etc/systemd").is_err(), "empty parents removed");
        assert!(t.entry("etc/hosts.ww").is_ok(), "non-empty parent kept");
        let mut t = sample();
        t.delete("etc", true, false).unwrap();
        assert!(t.entries.is_empty());
        assert!(matches!(t.delete("etc", true, false), Err(TreeError::NotFound { .. })));
    }

    #[test]
    fn chown_keeps_what_is_not_given() {
        let mut t = sample();
        t.chown("etc/hosts.ww", Some(7), None).unwrap();
        t.chown("etc/hosts.ww", None, Some(8)).unwrap();
        let e = t.entry("etc/hosts.ww").unwrap();
        assert_eq!((e.uid, e.gid), (7, 8));
    }

    #[test]
    fn mkdir_creates_parents_with_the_mode_and_refuses_through_files() {
        let mut t = OverlayTree::default();
        t.mkdir("a/b/c", 0o700).unwrap();
        assert_eq!(t.entry("a").unwrap().mode, 0o700);
        t.mkdir("a/b", 0o750).unwrap();
        assert_eq!(t.entry("a/b").unwrap().mode, 0o750, "existing directory gets the mode");
        t.put_file("f", vec![], None, None, false, false).unwrap();
        assert!(t.mkdir("f/g", 0o755).is_err());
        assert!(t.mkdir("f", 0o755).is_err());
    }

    #[test]
    fn canonical_form_round_trips_and_the_digest_follows_content_only() {
        let t = sample();
        let back = OverlayTree::from_canonical(&t.to_canonical()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.digest(), t.digest());
        let mut u = t.clone();
        u.chmod("etc/hosts.ww", 0o600).unwrap();
        assert_ne!(u.digest(), t.digest(), "a mode is part of the overlay");
        // Insertion order does not matter.
        let mut v = OverlayTree::default();
        for (k, e) in t.entries.iter().rev() {
            v.entries.insert(k.clone(), e.clone());
        }
        assert_eq!(v.digest(), t.digest());
        assert!(OverlayTree::from_canonical(
            b"{\"entries\":{\"/x\":{\"kind\":\"Dir\",\"mode\":493,\"uid\":0,\"gid\":0}}}"
        )
        .is_err());
    }

    #[test]
    fn from_dir_reads_files_dirs_links_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc/ssh")).unwrap();
        std::fs::write(d.path().join("etc/ssh/key.ww"), b"k").unwrap();
        std::fs::set_permissions(d.path().join("etc/ssh/key.ww"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink("ssh/key.ww", d.path().join("etc/link")).unwrap();
        let t = OverlayTree::from_dir(d.path(), false).unwrap();
        let keys: Vec<&str> = t.walk().into_iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["etc", "etc/link", "etc/ssh", "etc/ssh/key.ww"]);
        assert_eq!(t.entry("etc/ssh/key.ww").unwrap().mode, 0o600);
        assert_eq!(
            t.entry("etc/link").unwrap().kind,
            EntryKind::Symlink("ssh/key.ww".into())
        );
        std::os::unix::fs::symlink("../../outside", d.path().join("etc/bad")).unwrap();
        assert!(matches!(
            OverlayTree::from_dir(d.path(), false),
            Err(TreeError::LinkEscapes { .. })
        ));
    }

    #[test]
    fn walk_order_is_a_directory_walk() {
        let mut v = vec!["etc.d", "etc/hosts", "etc", "a"];
        v.sort_by(|a, b| walk_order(a, b));
        assert_eq!(v, ["a", "etc", "etc/hosts", "etc.d"]);
    }
}
