//! The directory of iPXE binaries, read by two servers: TFTP for PXE firmware and
//! HTTP's `/efiboot/{file}` for UEFI HTTP boot (DHCP hands both the same table entry).
//!
//! One resolver for both, so the two doors into that directory have one set of
//! rules: a request is checked lexically (no `..`, no absolute path, `\` counts as a
//! separator because some PXE firmware sends DOS-style names), then the joined path
//! is canonicalized and must still lie under the canonical root. A symlink that
//! stays inside works; one that points out is refused — Debian's
//! `/usr/lib/ipxe/ipxe.efi` is such a link (to `/boot/ipxe.efi`), which is why the
//! default table names `snponly.efi`.

use std::io;
use std::path::{Component, Path, PathBuf};

/// One version of one file: device, inode, size, mtime (s, ns). A file replaced on
/// disk (a package upgrade) has a new key, so caches keyed by it never serve stale data.
pub type FileKey = (u64, u64, u64, i64, i64);

/// The [`FileKey`] of a file's metadata.
pub fn file_key(meta: &std::fs::Metadata) -> FileKey {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino(), meta.len(), meta.mtime(), meta.mtime_nsec())
}

/// Why a request was refused before any file was opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("empty file name")]
    Empty,
    #[error("absolute path {0:?}: ask for a name relative to the boot file directory")]
    Absolute(String),
    #[error("path {0:?} climbs out of the boot file directory with '..'")]
    ParentDir(String),
    #[error("path {0:?} resolves outside the boot file directory (a symlink points out); copy the file in or point `boot.tftp.root` elsewhere")]
    Escapes(String),
    #[error("no file {0:?} in the boot file directory (`boot.tftp.root`)")]
    NotFound(String),
    #[error("{0:?} is not a regular file")]
    NotAFile(String),
    #[error("this server is read-only; write requests are refused")]
    ReadOnly,
}

/// Check a requested name lexically and return it as a relative path.
pub fn check_name(requested: &str) -> Result<PathBuf, Refusal> {
    if requested.is_empty() {
        return Err(Refusal::Empty);
    }
    if requested.starts_with('/') || requested.starts_with('\\') {
        return Err(Refusal::Absolute(requested.to_owned()));
    }
    let mut out = PathBuf::new();
    for part in requested.split(['/', '\\']) {
        match Path::new(part).components().next() {
            None | Some(Component::CurDir) => continue,
            Some(Component::ParentDir) => return Err(Refusal::ParentDir(requested.to_owned())),
            Some(Component::Normal(_)) => out.push(part),
            Some(Component::RootDir | Component::Prefix(_)) => {
                return Err(Refusal::Absolute(requested.to_owned()));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(Refusal::Empty);
    }
    Ok(out)
}

/// A directory whose regular files may be handed out, and nothing else.
#[derive(Debug, Clone)]
pub struct BootDir {
    root: PathBuf,
}

impl BootDir {
    /// `root` must exist and be a directory; it is canonicalized once here.
    pub fn new(root: &Path) -> io::Result<BootDir> {
        let root = std::fs::canonicalize(root)?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(BootDir { root })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The canonical path of a requested name, if it is a regular file under the root.
    pub fn resolve(&self, requested: &str) -> Result<PathBuf, Refusal> {
        let rel = check_name(requested)?;
        let canon = match std::fs::canonicalize(self.root.join(&rel)) {
            Ok(p) => p,
            Err(_) => return Err(Refusal::NotFound(requested.to_owned())),
        };
        if !canon.starts_with(&self.root) {
            return Err(Refusal::Escapes(requested.to_owned()));
        }
        if !canon.is_file() {
            return Err(Refusal::NotAFile(requested.to_owned()));
        }
        Ok(canon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_lexically() {
        assert_eq!(check_name("undionly.kpxe").unwrap(), PathBuf::from("undionly.kpxe"));
        assert_eq!(check_name("./a//b/./c").unwrap(), PathBuf::from("a/b/c"));
        assert_eq!(check_name("efi\\ipxe.efi").unwrap(), PathBuf::from("efi/ipxe.efi"));
        for bad in ["../etc/passwd", "a/../../x", "a/..", "..\\x", "a\\..\\..\\x"] {
            assert!(matches!(check_name(bad), Err(Refusal::ParentDir(_))), "{bad}");
        }
        for bad in ["/etc/passwd", "\\x"] {
            assert!(matches!(check_name(bad), Err(Refusal::Absolute(_))), "{bad}");
        }
        assert_eq!(check_name(""), Err(Refusal::Empty));
        assert_eq!(check_name("./"), Err(Refusal::Empty));
    }

    #[test]
    fn resolves_files_inside_and_refuses_the_rest() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"no").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("snponly.efi"), b"efi").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink("snponly.efi", dir.path().join("alias")).unwrap();
        let d = BootDir::new(dir.path()).unwrap();
        let canon = std::fs::canonicalize(dir.path().join("snponly.efi")).unwrap();
        assert_eq!(d.resolve("snponly.efi").unwrap(), canon);
        assert_eq!(d.resolve("alias").unwrap(), canon, "a symlink inside is fine");
        assert!(matches!(d.resolve("out"), Err(Refusal::Escapes(_))));
        assert!(matches!(d.resolve("sub"), Err(Refusal::NotAFile(_))));
        assert!(matches!(d.resolve("nope"), Err(Refusal::NotFound(_))));
        assert!(matches!(d.resolve("../secret"), Err(Refusal::ParentDir(_))));
        assert!(
            BootDir::new(&dir.path().join("snponly.efi")).is_err(),
            "a file is no root"
        );
    }
}

/// Fuzzing (issue 12, parts 6 and 7): any name a TFTP or HTTP client can ask for —
/// built from path pieces that try to climb out (`..`, absolute paths, backslashes,
/// NULs, a symlink to outside) — resolves only to a file inside the root, or is refused.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just("".to_owned()),
            Just("out".to_owned()),
            Just("sub".to_owned()),
            Just("snponly.efi".to_owned()),
            Just("secret".to_owned()),
            Just("%2e%2e".to_owned()),
            Just("\0".to_owned()),
            "[a-z.]{1,6}",
        ]
    }

    fn name() -> impl Strategy<Value = String> {
        (
            prop_oneof![Just(""), Just("/"), Just("\\"), Just("./")],
            proptest::collection::vec(piece(), 1..6),
            prop_oneof![Just("/"), Just("\\")],
        )
            .prop_map(|(lead, parts, sep)| format!("{lead}{}", parts.join(sep)))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn no_name_resolves_outside_the_root(n in name()) {
            let outside = tempfile::tempdir().unwrap();
            std::fs::write(outside.path().join("secret"), b"no").unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("snponly.efi"), b"efi").unwrap();
            std::fs::create_dir(dir.path().join("sub")).unwrap();
            std::fs::write(dir.path().join("sub/snponly.efi"), b"efi").unwrap();
            std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
            let d = BootDir::new(dir.path()).unwrap();
            if let Ok(p) = d.resolve(&n) {
                let root = std::fs::canonicalize(dir.path()).unwrap();
                prop_assert!(p.starts_with(&root), "{n:?} resolved to {}", p.display());
                prop_assert!(p.is_file());
            }
        }
    }
}
