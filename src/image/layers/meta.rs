//! Entry metadata: read from the tar header and PAX records, then applied in the module doc's order (owner,
//! mode, xattrs, times), with directory modes and times deferred to the end of the layer.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use super::applier::Applier;
use super::tree::parent_of;
use super::LayerError;

/// Metadata of one entry, from its header and PAX records.
pub(super) struct Meta {
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) times: Timestamps,
    pub(super) xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Applier<'_> {
    /// Owner, mode, xattrs and times for objects we must not open (symlinks, devices, FIFOs).
    pub(super) fn finish_non_fd(
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

    /// Record the times of `rel`'s existing ancestors that this layer does not list,
    /// once per layer, so [`Self::finish_dirs`] can put them back. Ancestors that do
    /// not exist yet (the entry creates them) get `created` — the entry's own times —
    /// so they too do not depend on the clock.
    pub(super) fn keep_times_of_ancestors(&mut self, rel: &Path, created: Option<Timestamps>) {
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
    pub(super) fn finish_dirs(&mut self) -> Result<(), LayerError> {
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

    pub(super) fn chown(&self, name: &str, f: impl FnOnce() -> rustix::io::Result<()>) -> Result<(), LayerError> {
        if self.opts.same_owner {
            f().map_err(|e| self.io(name, "set the owner", e.into()))?;
        }
        Ok(())
    }

    pub(super) fn xattrs_fd(&self, fd: BorrowedFd<'_>, name: &str, meta: &Meta) -> Result<(), LayerError> {
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

    pub(super) fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta, LayerError> {
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
}

pub(super) fn uid(raw: u32) -> Uid {
    Uid::from_raw(raw)
}

pub(super) fn gid(raw: u32) -> Gid {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
