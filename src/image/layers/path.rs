//! Lexical path checks: tar member names normalised to in-root relative paths, and symlink targets that
//! must not climb out of the root. No syscalls here; see the module doc of `layers`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use super::tree::parent_of;
use super::UnsafeEntry;

/// Longest path (bytes) and path component accepted, as Linux's PATH_MAX (incl. NUL) and NAME_MAX.
const PATH_MAX: usize = 4095;
const NAME_MAX: usize = 255;

/// Normalise a tar member name (or hardlink target) to a relative path with only normal components.
/// An empty result means the root itself.
pub(super) fn normalize(raw: &[u8]) -> Result<PathBuf, PathProblem> {
    if raw.is_empty() {
        return Err(PathProblem::Malformed("the entry has an empty name".into()));
    }
    if raw.contains(&0) {
        return Err(PathProblem::Malformed("the name contains a NUL byte".into()));
    }
    if raw[0] == b'/' {
        // `umoci insert DIR /` writes the root directory itself as "/": it names
        // the root, not a path outside it. Every other absolute name is refused.
        if raw.iter().all(|b| *b == b'/') {
            return Ok(PathBuf::new());
        }
        return Err(PathProblem::Refused(UnsafeEntry::AbsolutePath));
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err(PathProblem::Refused(UnsafeEntry::EscapesRoot));
                }
            }
            c if c.len() > NAME_MAX => {
                return Err(PathProblem::Malformed(format!(
                    "a path component is {} bytes long; Linux allows {NAME_MAX}",
                    c.len()
                )))
            }
            c => parts.push(c),
        }
    }
    let joined = parts.join(&b'/');
    if joined.len() > PATH_MAX {
        return Err(PathProblem::Malformed(format!(
            "the path is {} bytes long; Linux allows {PATH_MAX}",
            joined.len()
        )));
    }
    Ok(PathBuf::from(OsString::from_vec(joined)))
}

/// Whether a symlink at `link` (normalised, relative to the root) with `target` stays inside the root when
/// resolved lexically from the link's directory. Absolute targets are taken relative to the root (as inside
/// a chroot), so they always stay inside.
pub(super) fn symlink_stays_inside(link: &Path, target: &[u8]) -> bool {
    if target.first() == Some(&b'/') {
        return true;
    }
    let mut depth = parent_of(link).iter().count();
    for comp in target.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    true
}

/// A problem found while normalising a path.
#[derive(Debug)]
pub(super) enum PathProblem {
    Refused(UnsafeEntry),
    Malformed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_paths() {
        let ok = |s: &str| normalize(s.as_bytes()).unwrap();
        assert_eq!(ok("./etc/x"), Path::new("etc/x"));
        assert_eq!(ok("etc//x/"), Path::new("etc/x"));
        assert_eq!(ok("a/../b"), Path::new("b"));
        assert_eq!(ok("./"), Path::new(""));
        assert_eq!(ok("."), Path::new(""));
        assert_eq!(ok("/"), Path::new(""), "umoci's root entry");
        assert_eq!(ok("//"), Path::new(""));
        let refused = |s: &str| match normalize(s.as_bytes()) {
            Err(PathProblem::Refused(r)) => r,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(refused("../escape"), UnsafeEntry::EscapesRoot);
        assert_eq!(refused("a/../../escape"), UnsafeEntry::EscapesRoot);
        assert_eq!(refused("./.."), UnsafeEntry::EscapesRoot);
        assert_eq!(refused("/abs"), UnsafeEntry::AbsolutePath);
        assert_eq!(refused("/etc/passwd"), UnsafeEntry::AbsolutePath);
        assert_eq!(refused("//etc"), UnsafeEntry::AbsolutePath);
        assert!(matches!(normalize(b""), Err(PathProblem::Malformed(_))));
        assert!(matches!(normalize(b"a\0b"), Err(PathProblem::Malformed(_))));
        assert!(matches!(normalize(&[b'a'; 300]), Err(PathProblem::Malformed(_))));
        let long = "ab/".repeat(1400);
        assert!(matches!(normalize(long.as_bytes()), Err(PathProblem::Malformed(_))));
    }

    #[test]
    fn symlink_targets() {
        let inside = |link: &str, target: &str| symlink_stays_inside(Path::new(link), target.as_bytes());
        assert!(inside("bin/sh", "busybox"));
        assert!(inside("bin/sh", "/bin/busybox"));
        assert!(inside("lnk", "/../../etc")); // absolute: relative to the root, clamped there
        assert!(inside("usr/lib64", "lib"));
        assert!(inside("a/b/c", "../../x"));
        assert!(inside("a/b/c", "../.."));
        assert!(!inside("a/b/c", "../../.."));
        assert!(!inside("a/b/lnk", "../../../../etc/passwd"));
        assert!(!inside("lnk", ".."));
        assert!(!inside("x", "../../.."));
        assert!(!inside("a/l", "b/../../../x"));
    }
}
