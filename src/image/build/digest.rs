//! The tree digest: "would a rebuild produce a different image?"
//!
//! It walks exactly like the build (`walk.rs`: same order, same excludes, same skipped
//! filesystems and sockets) and feeds one record per entry into SHA-256:
//!
//! ```text
//! "wulfpack tree digest v1\n"
//! per exclude pattern (normalised, in the given order):  'x' len path
//! per entry: tag('d' 'f' 'l' 'c' 'b' 'p')  len path  mode uid gid nlink  then
//!   file:            size  ('=' len first-path | '#' sha256(content))
//!   symlink:         len target
//!   char/block dev:  rdev-major rdev-minor
//! ```
//!
//! Numbers are little-endian fixed width and every variable-length field is length-prefixed,
//! so no two different trees feed the same byte stream. Paths and targets are raw bytes (a
//! non-UTF-8 name still digests; only the build refuses it).
//!
//! The record holds every header field the archive gets except `mtime` (and the inode number,
//! which follows from the order). So: equal digests ⇒ archives that differ at most in mtimes,
//! which unpack to the same image; `touch` or an atime update does not force a rebuild, while
//! any change of content, mode, owner, link structure, symlink target, device number, the set
//! of entries or the excludes does. A hardlink member after the first records the path of the
//! first instead of hashing the content again (the archive stores it once too).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::newc::{dev_major, dev_minor};
use super::pattern::normalize;
use super::sink::hex;
use super::walk::{Kind, Walker};
use super::{BuildError, ExcludeSet};

/// See the module note.
pub fn tree_digest(root: &Path, excludes: &[String]) -> Result<String, BuildError> {
    let set = ExcludeSet::compile(excludes)?;
    let walker = Walker::new(root, set)?;
    let mut h = Sha256::new();
    h.update(b"wulfpack tree digest v1\n");
    for p in excludes {
        h.update(b"x");
        field(&mut h, normalize(p).as_bytes());
    }
    let mut first_of_link: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut buf = vec![0u8; 256 * 1024];
    for e in walker {
        let e = e?;
        let md = &e.md;
        h.update([e.kind.tag()]);
        field(&mut h, e.rel.as_os_str().as_bytes());
        for v in [md.mode(), md.uid(), md.gid(), e.archive_nlink()] {
            h.update(v.to_le_bytes());
        }
        match e.kind {
            Kind::File => {
                h.update(md.len().to_le_bytes());
                let key = (md.dev(), md.ino());
                match first_of_link.get(&key) {
                    Some(first) => {
                        h.update(b"=");
                        field(&mut h, first.as_os_str().as_bytes());
                    }
                    None => {
                        if md.nlink() > 1 {
                            first_of_link.insert(key, e.rel.clone());
                        }
                        h.update(b"#");
                        h.update(hash_file(&e.path, &mut buf)?);
                    }
                }
            }
            Kind::Symlink => {
                let target = e.link_target()?;
                field(&mut h, target.as_os_str().as_bytes());
            }
            Kind::CharDev | Kind::BlockDev => {
                h.update(dev_major(md.rdev()).to_le_bytes());
                h.update(dev_minor(md.rdev()).to_le_bytes());
            }
            Kind::Dir | Kind::Fifo => {}
        }
    }
    Ok(hex(&h.finalize()))
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn hash_file(path: &Path, buf: &mut [u8]) -> Result<[u8; 32], BuildError> {
    let err = |source| BuildError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(err)?;
    let mut h = Sha256::new();
    loop {
        match f.read(buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, FileTimes, Permissions};
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::time::{Duration, SystemTime};

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("etc/warewulf")).unwrap();
        fs::write(r.join("etc/hostname"), "node\n").unwrap();
        fs::write(r.join("etc/a"), "aaaa").unwrap();
        fs::hard_link(r.join("etc/a"), r.join("etc/b")).unwrap();
        symlink("hostname", r.join("etc/link")).unwrap();
        t
    }

    fn digest(r: &Path) -> String {
        tree_digest(r, &[]).unwrap()
    }

    #[test]
    fn stable_and_sensitive() {
        let t = tree();
        let r = t.path();
        let d0 = digest(r);
        assert_eq!(d0.len(), 64);
        assert_eq!(d0, digest(r), "same tree, same digest");

        // atime and mtime do not count.
        let f = File::options().write(true).open(r.join("etc/hostname")).unwrap();
        let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        f.set_times(FileTimes::new().set_accessed(past)).unwrap();
        assert_eq!(d0, digest(r), "atime must not change the digest");
        f.set_times(FileTimes::new().set_modified(past)).unwrap();
        assert_eq!(d0, digest(r), "mtime must not change the digest");
        drop(f);

        // Content (same size), mode, a new file, a symlink target, link structure, excludes.
        fs::write(r.join("etc/hostname"), "nodf\n").unwrap();
        let d1 = digest(r);
        assert_ne!(d0, d1, "content change");
        fs::set_permissions(r.join("etc/hostname"), Permissions::from_mode(0o600)).unwrap();
        let d2 = digest(r);
        assert_ne!(d1, d2, "mode change");
        fs::write(r.join("etc/new"), "").unwrap();
        let d3 = digest(r);
        assert_ne!(d2, d3, "new file");
        fs::remove_file(r.join("etc/link")).unwrap();
        symlink("new", r.join("etc/link")).unwrap();
        let d4 = digest(r);
        assert_ne!(d3, d4, "symlink target");
        fs::remove_file(r.join("etc/b")).unwrap();
        fs::write(r.join("etc/b"), "aaaa").unwrap();
        let d5 = digest(r);
        assert_ne!(d4, d5, "hardlink broken into a copy");
        let d6 = tree_digest(r, &["/etc/new".to_string()]).unwrap();
        assert_ne!(d5, d6, "excludes");
    }

    #[test]
    fn ownership_changes_digest_when_root() {
        let t = tree();
        let r = t.path();
        let d0 = digest(r);
        match std::os::unix::fs::chown(r.join("etc/hostname"), Some(4321), Some(4321)) {
            Ok(()) => assert_ne!(d0, digest(r)),
            Err(e) => println!("skipped: cannot chown ({e}); not running as root"),
        }
    }

    #[test]
    fn excluded_entries_do_not_count() {
        let t = tree();
        let r = t.path();
        let ex = vec!["/etc/warewulf/*".to_string()];
        let d0 = tree_digest(r, &ex).unwrap();
        fs::write(r.join("etc/warewulf/scratch"), "junk").unwrap();
        assert_eq!(d0, tree_digest(r, &ex).unwrap());
    }

    #[test]
    fn bad_pattern_is_an_error() {
        let t = tree();
        let err = tree_digest(t.path(), &["[".to_string()]).unwrap_err();
        assert!(matches!(err, BuildError::BadExclude { .. }), "{err}");
    }
}
