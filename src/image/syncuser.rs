//! `wwctl image syncuser`: the image's user and group ids made the head's.
//!
//! Warewulf's semantics (4.7, `internal/pkg/image/syncuser.go`), re-implemented:
//! - Names are read from the head's `/etc/passwd` / `/etc/group` and the image's (field
//!   0 the name, field 2 the id; a line needs 7 or 4 fields; `+`/`-` NIS lines and
//!   unparsable ids are skipped; a name listed twice keeps its first id).
//! - A name in both with different ids **differs**: its image id becomes the head's, and
//!   so do the files owning it. A name only on the head is added; a name only in the
//!   image is kept, with its line, after the head's.
//! - A **conflict**, which refuses the whole sync: a name only in the image whose id is
//!   the head's id of another name — there is no id left to give it. (Unlike Warewulf,
//!   every conflict is reported, not the first.)
//! - The new `/etc/passwd` is the head's file, then the image-only lines.
//!
//! Deliberate differences (docs/COMPATIBILITY.md): owners are changed with `lchown`
//! on every kind of entry and never through a symlink (Warewulf `stat`s and `chown`s
//! the target, which for an absolute link is a file of the head); the set-user/group-id
//! bits and file capabilities that the kernel drops on `chown` are put back; and ids
//! are computed from what the walk saw before anything changed, so a hard link is not
//! re-owned twice (a swap of two ids stays a swap).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SyncuserError {
    #[error("syncuser: {path}: {source}; the head's and the image's /etc/passwd and /etc/group must both exist")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("syncuser: {}", conflicts_text(.0))]
    Conflicts(Vec<Conflict>),
    #[error("syncuser: walking the image at {path}: {message}")]
    Walk { path: PathBuf, message: String },
    #[error("syncuser: changing {path}: {source}")]
    Apply { path: PathBuf, source: std::io::Error },
}

fn conflicts_text(c: &[Conflict]) -> String {
    let list: Vec<String> = c.iter().map(Conflict::to_string).collect();
    format!("{} id conflict(s), nothing was changed: {}", c.len(), list.join("; "))
}

/// Which database an entry or a conflict belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Db {
    Passwd,
    Group,
}

impl Db {
    fn what(self) -> &'static str {
        match self {
            Db::Passwd => "uid",
            Db::Group => "gid",
        }
    }
    fn file(self) -> &'static str {
        match self {
            Db::Passwd => "/etc/passwd",
            Db::Group => "/etc/group",
        }
    }
}

/// A name only in the image whose id the head gives to another name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub db: Db,
    pub id: u32,
    pub host_name: String,
    pub image_name: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} is {:?} on the head but {:?} in the image, and {:?} is not on the head; add {:?} to the head's {} (or remove it from the image) and run syncuser again",
            self.db.what(),
            self.id,
            self.host_name,
            self.image_name,
            self.image_name,
            self.image_name,
            self.db.file()
        )
    }
}

/// One name whose image id becomes the head's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdChange {
    pub name: String,
    pub image: u32,
    pub host: u32,
}

/// The comparison of one database (passwd or group).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbReport {
    /// Names in both with the same id.
    pub matched: Vec<String>,
    /// Names in both with different ids (sorted by name).
    pub differ: Vec<IdChange>,
    /// Names only on the head (added to the image).
    pub host_only: Vec<String>,
    /// Names only in the image (kept).
    pub image_only: Vec<String>,
    /// Lines skipped as duplicates with another id, malformed ids, ... (the first wins).
    pub warnings: Vec<String>,
    /// Files of the image whose owner (passwd) or group (group) changes.
    pub files: u64,
}

impl DbReport {
    /// Warewulf's `needsSync`: a name to add or an id to change.
    pub fn needs_sync(&self) -> bool {
        !self.host_only.is_empty() || !self.differ.is_empty()
    }
}

/// What `syncuser` found (and, with `written`, did).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    pub passwd: DbReport,
    pub group: DbReport,
    /// Files (of any kind) whose owner or group changes.
    pub files: u64,
    /// The image was changed (write mode and something to change).
    pub written: bool,
}

impl SyncReport {
    pub fn needs_sync(&self) -> bool {
        self.passwd.needs_sync() || self.group.needs_sync()
    }
}

/// Ids of one database from both sides, by name.
#[derive(Debug, Default)]
struct Ids {
    host: Option<u32>,
    image: Option<u32>,
}

/// A parsed database: name → id, first entry of a name wins; plus warnings.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Entries {
    pub ids: BTreeMap<String, u32>,
    /// Names in file order (for the image-only lines).
    pub order: Vec<String>,
    pub warnings: Vec<String>,
}

/// Parse a passwd or group file (`side` names it in warnings).
pub fn parse(text: &str, side: &str) -> Entries {
    let mut e = Entries::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() != 7 && fields.len() != 4 {
            continue;
        }
        let name = fields[0];
        // Compat-style NIS references (`+name`, `-@group`) carry no id of their own.
        if name.is_empty() || name.starts_with('+') || name.starts_with('-') {
            continue;
        }
        let Ok(id) = fields[2].parse::<u32>() else {
            e.warnings
                .push(format!("{side}: ignoring {line:?}: {:?} is not an id", fields[2]));
            continue;
        };
        match e.ids.get(name) {
            None => {
                e.ids.insert(name.to_string(), id);
                e.order.push(name.to_string());
            }
            Some(&first) if first != id => e.warnings.push(format!(
                "{side}: ignoring id {id} of {name:?}, listed before with {first}"
            )),
            Some(_) => {}
        }
    }
    e
}

/// The comparison of one database and the id map it implies (image id → head id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub report: DbReport,
    pub conflicts: Vec<Conflict>,
    pub map: HashMap<u32, u32>,
}

/// Compare the head's and the image's entries of one database.
pub fn plan(db: Db, host: &Entries, image: &Entries) -> Plan {
    let mut all: BTreeMap<&str, Ids> = BTreeMap::new();
    for (n, &id) in &host.ids {
        all.entry(n).or_default().host = Some(id);
    }
    for (n, &id) in &image.ids {
        all.entry(n).or_default().image = Some(id);
    }
    let host_name_of: HashMap<u32, &str> = {
        // The first name the head gives an id, in name order, for a stable message.
        let mut m = HashMap::new();
        for (n, &id) in &host.ids {
            m.entry(id).or_insert(n.as_str());
        }
        m
    };
    let mut p = Plan::default();
    p.report.warnings = host.warnings.iter().chain(&image.warnings).cloned().collect();
    for (name, ids) in &all {
        match (ids.host, ids.image) {
            (Some(h), Some(i)) if h == i => p.report.matched.push(name.to_string()),
            (Some(h), Some(i)) => {
                p.report.differ.push(IdChange {
                    name: name.to_string(),
                    image: i,
                    host: h,
                });
                p.map.insert(i, h);
            }
            (Some(_), None) => p.report.host_only.push(name.to_string()),
            (None, Some(i)) => {
                p.report.image_only.push(name.to_string());
                if let Some(other) = host_name_of.get(&i) {
                    p.conflicts.push(Conflict {
                        db,
                        id: i,
                        host_name: other.to_string(),
                        image_name: name.to_string(),
                    });
                }
            }
            (None, None) => {}
        }
    }
    p
}

/// The image's new file: the head's text, then the image's lines of image-only names.
pub fn merged_text(host_text: &str, image_text: &str, image_only: &[String]) -> String {
    let mut out = host_text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for line in image_text.lines() {
        let name = line.split(':').next().unwrap_or_default();
        if image_only.iter().any(|n| n == name) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// One entry of the tree to re-own, with the ids computed from what the walk saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rechown {
    pub path: PathBuf,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// Walk `root` (never following symlinks, never leaving its file system) and list
/// the entries whose uid or gid the maps change. Counted per database into the plans.
pub fn find(root: &Path, users: &mut Plan, groups: &mut Plan) -> Result<Vec<Rechown>, SyncuserError> {
    let mut out = Vec::new();
    if users.map.is_empty() && groups.map.is_empty() {
        return Ok(out);
    }
    for entry in walkdir::WalkDir::new(root).follow_links(false).same_file_system(true) {
        let entry = entry.map_err(|e| SyncuserError::Walk {
            path: e.path().unwrap_or(root).to_path_buf(),
            message: e.to_string(),
        })?;
        let md = entry.metadata().map_err(|e| SyncuserError::Walk {
            path: entry.path().to_path_buf(),
            message: e.to_string(),
        })?;
        let uid = users.map.get(&md.uid()).copied();
        let gid = groups.map.get(&md.gid()).copied();
        if uid.is_some() {
            users.report.files += 1;
        }
        if gid.is_some() {
            groups.report.files += 1;
        }
        if uid.is_some() || gid.is_some() {
            out.push(Rechown {
                path: entry.into_path(),
                uid,
                gid,
            });
        }
    }
    Ok(out)
}

/// The capability xattr the kernel removes on `chown` (put back afterwards).
const CAPS: &str = "security.capability";

/// Re-own the listed entries (`lchown`: a symlink itself, never its target), keeping
/// set-id bits and file capabilities.
pub fn apply(list: &[Rechown]) -> Result<(), SyncuserError> {
    for r in list {
        let err = |source| SyncuserError::Apply {
            path: r.path.clone(),
            source,
        };
        let md = std::fs::symlink_metadata(&r.path).map_err(err)?;
        let regular = md.file_type().is_file();
        let caps = if regular { read_caps(&r.path) } else { None };
        std::os::unix::fs::lchown(&r.path, r.uid, r.gid).map_err(err)?;
        if regular {
            if md.mode() & 0o6000 != 0 {
                std::fs::set_permissions(&r.path, std::fs::Permissions::from_mode(md.mode() & 0o7777)).map_err(err)?;
            }
            if let Some(v) = caps {
                rustix::fs::lsetxattr(&r.path, CAPS, &v, rustix::fs::XattrFlags::empty()).map_err(|e| err(e.into()))?;
            }
        }
    }
    Ok(())
}

fn read_caps(path: &Path) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(path, OsStr::new(CAPS), &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// The four files syncuser reads.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub host_passwd: String,
    pub host_group: String,
    pub image_passwd: String,
    pub image_group: String,
}

impl Inputs {
    /// Read the head's files under `host_root` and the image's under `rootfs`.
    pub fn read(host_root: &Path, rootfs: &Path) -> Result<Inputs, SyncuserError> {
        let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(|source| SyncuserError::Read { path: p, source });
        Ok(Inputs {
            host_passwd: read(host_root.join("etc/passwd"))?,
            host_group: read(host_root.join("etc/group"))?,
            image_passwd: read(rootfs.join("etc/passwd"))?,
            image_group: read(rootfs.join("etc/group"))?,
        })
    }
}

/// Compare, and with `write` change, the image tree at `rootfs`. Conflicts refuse
/// the whole operation before anything is touched.
pub fn syncuser(host_root: &Path, rootfs: &Path, write: bool) -> Result<SyncReport, SyncuserError> {
    let inp = Inputs::read(host_root, rootfs)?;
    let mut users = plan(
        Db::Passwd,
        &parse(&inp.host_passwd, "head passwd"),
        &parse(&inp.image_passwd, "image passwd"),
    );
    let mut groups = plan(
        Db::Group,
        &parse(&inp.host_group, "head group"),
        &parse(&inp.image_group, "image group"),
    );
    let conflicts: Vec<Conflict> = users.conflicts.iter().chain(&groups.conflicts).cloned().collect();
    if !conflicts.is_empty() {
        return Err(SyncuserError::Conflicts(conflicts));
    }
    let list = find(rootfs, &mut users, &mut groups)?;
    let new_passwd = merged_text(&inp.host_passwd, &inp.image_passwd, &users.report.image_only);
    let new_group = merged_text(&inp.host_group, &inp.image_group, &groups.report.image_only);
    let mut report = SyncReport {
        files: list.len() as u64,
        passwd: users.report,
        group: groups.report,
        written: false,
    };
    let changes = !list.is_empty() || new_passwd != inp.image_passwd || new_group != inp.image_group;
    if write && changes {
        apply(&list)?;
        for (rel, text) in [("etc/passwd", &new_passwd), ("etc/group", &new_group)] {
            let p = rootfs.join(rel);
            replace_contents(&p, text).map_err(|source| SyncuserError::Apply { path: p, source })?;
        }
        report.written = true;
    }
    Ok(report)
}

/// New contents for an image file, keeping its mode and owner (written beside, renamed
/// over, so a reader never sees half a passwd file). A symlink is refused: it could
/// lead out of the image.
fn replace_contents(path: &Path, text: &str) -> std::io::Result<()> {
    let md = std::fs::symlink_metadata(path)?;
    if !md.file_type().is_file() {
        return Err(std::io::Error::other(
            "not a regular file in the image; replace it with one",
        ));
    }
    let tmp = path.with_extension("wwsync");
    std::fs::write(&tmp, text)?;
    std::os::unix::fs::lchown(&tmp, Some(md.uid()), Some(md.gid()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(md.mode() & 0o7777))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests;
