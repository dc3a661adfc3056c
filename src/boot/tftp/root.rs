//! The TFTP server's one job: hand out files under one directory, read-only.
//!
//! Why a handler of our own instead of async-tftp's `DirHandler`:
//! - **Containment by resolved path.** `DirHandler` filters `..` but follows
//!   symlinks anywhere. Here the request is checked lexically (no `..`, no absolute
//!   path, no empty or `\`-separated tricks), then the joined path is canonicalized
//!   and must still lie under the canonical root, so a symlink that points out of
//!   the root is refused while one that stays inside works. (Debian's
//!   `/usr/lib/ipxe/ipxe.efi` points to `/boot/ipxe.efi` and is refused; the default
//!   table hands x86-64 UEFI `snponly.efi`, a plain file there, as Warewulf does.)
//! - **Memory for small files.** The iPXE binaries are small (100 KB–1 MB) and
//!   requested by every booting node, so they are read once, kept as shared bytes
//!   keyed by (device, inode, size, mtime) and sent from there (the server sends
//!   slices of them, no copy): an open is a `stat` and a hash lookup, and no
//!   transfer waits on the disk. A file replaced on disk (package upgrade) has a new
//!   key and is read again.
//! - **Large files** (above the memory limit) are read from the file as the transfer
//!   goes, 64 KiB or a window at a time, on the transfer's own thread (see
//!   [`super::server`]). Large files belong on HTTP anyway.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::server::ErrorPacket;

pub use crate::boot::files::Refusal;
use crate::boot::files::{file_key, BootDir, FileKey};

impl Refusal {
    /// The TFTP error the client sees (RFC 1350 codes 1 and 2). (An inherent impl here
    /// rather than in [`crate::boot::files`]: only TFTP speaks in TFTP error packets.)
    pub fn to_error(&self) -> ErrorPacket {
        match self {
            Refusal::NotFound(_) | Refusal::NotAFile(_) | Refusal::Empty => ErrorPacket::new(1, "File not found"),
            Refusal::ReadOnly => ErrorPacket::new(2, "Access violation: read-only server"),
            Refusal::Absolute(_) | Refusal::ParentDir(_) | Refusal::Escapes(_) => {
                ErrorPacket::new(2, "Permission denied")
            }
        }
    }
}

/// Resolves names under a root and serves their bytes (see the module notes).
#[derive(Debug)]
pub struct Root {
    dir: BootDir,
    memory_limit: u64,
    cache_budget: u64,
    cache: HashMap<PathBuf, (FileKey, Bytes)>,
}

/// What an open returns: bytes in memory, or a file read as the transfer goes.
#[derive(Debug)]
pub enum Source {
    Memory(Bytes),
    File(File),
}

impl Root {
    /// A root directory; files up to `memory_limit` bytes are served from memory,
    /// up to `cache_budget` bytes in all.
    pub fn new(root: &Path, memory_limit: u64, cache_budget: u64) -> io::Result<Root> {
        Ok(Root {
            dir: BootDir::new(root)?,
            memory_limit,
            cache_budget,
            cache: HashMap::new(),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Open a requested name for reading: its bytes and its size (for `tsize`).
    pub fn open(&mut self, requested: &str) -> Result<(Source, u64), Refusal> {
        let path = self.dir.resolve(requested)?;
        let not_found = || Refusal::NotFound(requested.to_owned());
        let file = File::open(&path).map_err(|_| not_found())?;
        let meta = file.metadata().map_err(|_| not_found())?;
        let key = file_key(&meta);
        if let Some((k, data)) = self.cache.get(&path) {
            if *k == key {
                return Ok((Source::Memory(data.clone()), key.2));
            }
        }
        if meta.len() > self.memory_limit {
            return Ok((Source::File(file), meta.len()));
        }
        let mut buf = Vec::with_capacity(meta.len() as usize);
        let mut file = file;
        file.read_to_end(&mut buf).map_err(|_| not_found())?;
        if buf.len() as u64 != meta.len() {
            // Changed while we read it: serve what we read, cache nothing.
            let len = buf.len() as u64;
            return Ok((Source::Memory(Bytes::from(buf)), len));
        }
        let data = Bytes::from(buf);
        self.cache.remove(&path);
        let used: u64 = self.cache.values().map(|(_, d)| d.len() as u64).sum();
        if used + data.len() as u64 <= self.cache_budget {
            self.cache.insert(path, (key, data.clone()));
        }
        Ok((Source::Memory(data), key.2))
    }

    /// Bytes currently held in memory.
    pub fn cached_bytes(&self) -> u64 {
        self.cache.values().map(|(_, d)| d.len() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(s: Source) -> Vec<u8> {
        match s {
            Source::Memory(b) => b.to_vec(),
            Source::File(mut f) => {
                let mut v = Vec::new();
                f.read_to_end(&mut v).unwrap();
                v
            }
        }
    }

    #[test]
    fn serves_files_under_the_root_and_refuses_symlinks_out() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"no").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("undionly.kpxe"), b"small").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/big"), vec![7u8; 5000]).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink("undionly.kpxe", dir.path().join("alias")).unwrap();
        let mut root = Root::new(dir.path(), 1000, 10_000).unwrap();

        let (r, n) = root.open("undionly.kpxe").unwrap();
        assert_eq!((read_all(r), n), (b"small".to_vec(), 5));
        assert_eq!(root.cached_bytes(), 5);
        let (r, n) = root.open("sub/big").unwrap();
        assert!(
            matches!(r, Source::File(_)),
            "above the memory limit: read from the file"
        );
        assert_eq!((read_all(r).len(), n), (5000, 5000));
        assert_eq!(
            read_all(root.open("alias").unwrap().0),
            b"small",
            "a symlink inside the root is fine"
        );
        assert!(matches!(root.open("out"), Err(Refusal::Escapes(_))));
        assert!(matches!(root.open("sub"), Err(Refusal::NotAFile(_))));
        assert!(matches!(root.open("nope"), Err(Refusal::NotFound(_))));
        assert!(matches!(root.open("../secret"), Err(Refusal::ParentDir(_))));
        assert_eq!(Refusal::Escapes("x".into()).to_error().code, 2, "access violation");
        assert_eq!(Refusal::NotFound("x".into()).to_error().code, 1, "file not found");
    }

    #[test]
    fn a_replaced_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"one").unwrap();
        let mut root = Root::new(dir.path(), 1000, 10_000).unwrap();
        assert_eq!(read_all(root.open("f").unwrap().0), b"one");
        // A package upgrade writes a new file and renames it over the old one.
        std::fs::write(dir.path().join("f.new"), b"two!").unwrap();
        std::fs::rename(dir.path().join("f.new"), &p).unwrap();
        assert_eq!(read_all(root.open("f").unwrap().0), b"two!");
        assert_eq!(root.cached_bytes(), 4, "the old bytes were dropped");
    }

    #[test]
    fn the_cache_budget_is_respected() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["a", "b", "c"] {
            std::fs::write(dir.path().join(n), vec![1u8; 400]).unwrap();
        }
        let mut root = Root::new(dir.path(), 1000, 1000).unwrap();
        for n in ["a", "b", "c"] {
            assert_eq!(read_all(root.open(n).unwrap().0).len(), 400);
        }
        assert_eq!(root.cached_bytes(), 800);
    }
}
