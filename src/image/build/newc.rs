//! Turning walked entries into newc ("070701") cpio records.
//!
//! Headers come from the `cpio` crate's `NewcBuilder`; the body is streamed through the
//! returned writer in fixed-size chunks. We never use `cpio::write_cpio`, which truncates sizes
//! to `u32` silently. The rules, and why:
//!
//! * **Size**: newc has 8 hex digits for the size, so a file of 4 GiB or more cannot be stored.
//!   We refuse it by name ([`newc_file_size`]) *before* writing its header.
//! * **Inodes** are numbered 1, 2, 3, … in archive order, not copied from the disk, so the
//!   archive is the same wherever the tree lives. A hardlink group shares the number of its
//!   first member. `c_dev` is always 0:0 (one tree, one "device").
//! * **Hardlinks** (regular files with `st_nlink > 1`): the data goes with the *first* member,
//!   later members are headers with size 0 and the same inode. This keeps the build a single
//!   streaming pass. Every unpacker we care about accepts it: the kernel links later members to
//!   the first one it saw (`maybe_link` in `init/initramfs.c`, writing a body, if any, into the
//!   shared inode without truncating); GNU `cpio -i` defers size-0 members and links them at
//!   the end (tested in `tests.rs`); GNU `cpio -o` itself puts the data on the last member, the
//!   other order. `c_nlink` is the real `st_nlink`, like GNU cpio writes it.
//! * Other multiply-linked nodes (symlinks, devices, FIFOs) are archived as independent nodes
//!   with `nlink` 1 and their own inode, which unpack identically.
//! * **Symlinks** store their target (raw bytes, need not be UTF-8) as the body.
//! * **Devices** carry `rdev` as major/minor (glibc's `major()`/`minor()` bit layout).
//! * **mtime** is kept (newc's field is an unsigned 32-bit count of seconds, so times before 1970
//!   become 0 and after 2106 saturate); mode (type, permissions, setuid/setgid/sticky), uid
//!   and gid are copied.
//! * A root-level entry named `TRAILER!!!` is refused: it would read as the end of the archive.
//! * **Names must be UTF-8** (the `cpio` crate takes `&str`; Warewulf tooling and the kernel
//!   treat names as C strings, but a non-UTF-8 name in an image is almost always an accident).
//!   We stop with the (lossy) path so the admin can rename or exclude it.
//! * A file is read with `open` + `fstat`: if it was swapped or resized since the walk saw it,
//!   or if it shrinks or grows while being read, the build fails instead of writing an archive
//!   whose header lies about the body.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cpio::NewcBuilder;

use super::sink::ArchiveSink;
use super::walk::{Entry, Kind};
use super::BuildError;

/// Largest body a newc record can describe.
pub const NEWC_MAX_FILE_SIZE: u64 = u32::MAX as u64;

/// The name of newc's end-of-archive record.
const TRAILER_NAME: &str = "TRAILER!!!";

/// Bytes read from a file per `read` call (and per progress report).
const READ_CHUNK: usize = 256 * 1024;

/// The body size of `path` as newc stores it, or why it cannot.
pub fn newc_file_size(path: &Path, size: u64) -> Result<u32, BuildError> {
    u32::try_from(size).map_err(|_| BuildError::FileTooLarge {
        path: path.to_path_buf(),
        size,
    })
}

/// glibc's `major()` for a Linux `dev_t`.
pub(crate) fn dev_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

/// glibc's `minor()` for a Linux `dev_t`.
pub(crate) fn dev_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
}

/// newc's mtime: unsigned 32-bit seconds.
pub(crate) fn newc_mtime(secs: i64) -> u32 {
    secs.clamp(0, i64::from(u32::MAX)) as u32
}

/// Writes entries as newc records into an [`ArchiveSink`].
pub(crate) struct NewcWriter<Z: Write> {
    sink: ArchiveSink<Z>,
    next_ino: u32,
    /// (st_dev, st_ino) of hardlinked regular files already written → archive inode.
    links: HashMap<(u64, u64), u32>,
    buf: Vec<u8>,
    /// Records written (without the trailer).
    pub(crate) entries: u64,
    /// File and symlink-target bytes read from disk.
    pub(crate) content_bytes: u64,
}

impl<Z: Write> NewcWriter<Z> {
    pub(crate) fn new(inner: Z) -> Self {
        NewcWriter {
            sink: ArchiveSink::new(inner),
            next_ino: 1,
            links: HashMap::new(),
            buf: vec![0; READ_CHUNK],
            entries: 0,
            content_bytes: 0,
        }
    }

    /// Uncompressed archive bytes written so far.
    pub(crate) fn archive_bytes(&self) -> u64 {
        self.sink.written()
    }

    /// The inner writer.
    pub(crate) fn into_inner(self) -> Z {
        self.sink.into_inner()
    }

    fn take_ino(&mut self) -> Result<u32, BuildError> {
        let ino = self.next_ino;
        self.next_ino = ino.checked_add(1).ok_or(BuildError::TooManyEntries)?;
        Ok(ino)
    }

    /// Appends one entry. `progress` gets the cumulative content bytes read.
    pub(crate) fn add(&mut self, e: &Entry, progress: &(dyn Fn(u64) + Sync)) -> Result<(), BuildError> {
        let name = e.rel.to_str().ok_or_else(|| BuildError::NonUtf8Name {
            path: e.path.to_string_lossy().into_owned(),
        })?;
        if name == TRAILER_NAME {
            return Err(BuildError::ReservedName { path: e.path.clone() });
        }
        let md = &e.md;
        let nlink = e.archive_nlink();
        let mut header = NewcBuilder::new(name)
            .mode(md.mode())
            .uid(md.uid())
            .gid(md.gid())
            .nlink(nlink)
            .mtime(newc_mtime(md.mtime()));

        match e.kind {
            Kind::File => {
                let size = newc_file_size(&e.path, md.len())?;
                let key = (md.dev(), md.ino());
                if nlink > 1 {
                    if let Some(&ino) = self.links.get(&key) {
                        // A later member of a hardlink group: header only, data went with the first.
                        header.ino(ino).write(&mut self.sink, 0).finish().map_err(output)?;
                        self.entries += 1;
                        return Ok(());
                    }
                }
                let ino = self.take_ino()?;
                if nlink > 1 {
                    self.links.insert(key, ino);
                }
                header = header.ino(ino);
                self.write_file(e, header, size, progress)?;
            }
            Kind::Symlink => {
                let target = e.link_target()?;
                let target = target.as_os_str().as_bytes();
                let size = newc_file_size(&e.path, target.len() as u64)?;
                let ino = self.take_ino()?;
                let mut w = header.ino(ino).write(&mut self.sink, size);
                w.write_all(target).map_err(output)?;
                w.finish().map_err(output)?;
                self.content_bytes += target.len() as u64;
                progress(self.content_bytes);
            }
            Kind::CharDev | Kind::BlockDev => {
                let rdev = md.rdev();
                let ino = self.take_ino()?;
                header = header.ino(ino).rdev_major(dev_major(rdev)).rdev_minor(dev_minor(rdev));
                header.write(&mut self.sink, 0).finish().map_err(output)?;
            }
            Kind::Dir | Kind::Fifo => {
                let ino = self.take_ino()?;
                header.ino(ino).write(&mut self.sink, 0).finish().map_err(output)?;
            }
        }
        self.entries += 1;
        Ok(())
    }

    fn write_file(
        &mut self,
        e: &Entry,
        header: NewcBuilder,
        size: u32,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), BuildError> {
        let read_err = |source| BuildError::Io {
            action: "read",
            path: e.path.clone(),
            source,
        };
        let changed = |what: String| BuildError::FileChanged {
            path: e.path.clone(),
            what,
        };
        let mut file = File::open(&e.path).map_err(read_err)?;
        let now = file.metadata().map_err(read_err)?;
        if now.ino() != e.md.ino() || now.dev() != e.md.dev() {
            return Err(changed("it was replaced by another file".into()));
        }
        if now.len() != e.md.len() {
            return Err(changed(format!(
                "its size went from {} to {} bytes",
                e.md.len(),
                now.len()
            )));
        }

        let mut w = header.write(&mut self.sink, size);
        let mut remaining = u64::from(size);
        while remaining > 0 {
            // Never hand the cpio writer more than the declared size (its u32 arithmetic
            // would overflow next to 4 GiB).
            let want = self.buf.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let n = read_some(&mut file, &mut self.buf[..want]).map_err(read_err)?;
            if n == 0 {
                return Err(changed(format!(
                    "it shrank to {} bytes while being read (the header says {size})",
                    u64::from(size) - remaining
                )));
            }
            w.write_all(&self.buf[..n]).map_err(output)?;
            remaining -= n as u64;
            self.content_bytes += n as u64;
            progress(self.content_bytes);
        }
        if read_some(&mut file, &mut self.buf[..1]).map_err(read_err)? != 0 {
            return Err(changed(format!("it grew beyond {size} bytes while being read")));
        }
        w.finish().map_err(output)?;
        Ok(())
    }

    /// Writes the `TRAILER!!!` record. Nothing may be added afterwards.
    pub(crate) fn write_trailer(&mut self) -> Result<(), BuildError> {
        cpio::newc::trailer(&mut self.sink).map_err(output)?;
        Ok(())
    }
}

fn read_some(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match f.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Failures writing into the compressor are failures of the output (the compressor reports
/// its writer thread's error through the next write).
fn output(source: io::Error) -> BuildError {
    BuildError::Output { source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_limit_is_4_gib_minus_one() {
        let p = Path::new("boot/huge.img");
        assert_eq!(newc_file_size(p, 0).unwrap(), 0);
        assert_eq!(newc_file_size(p, NEWC_MAX_FILE_SIZE).unwrap(), u32::MAX);
        let err = newc_file_size(p, NEWC_MAX_FILE_SIZE + 1).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("boot/huge.img") && msg.contains("4294967296"), "{msg}");
    }

    #[test]
    fn device_numbers_split_like_glibc() {
        // makedev(1, 3) = 0x103 (/dev/null); makedev(259, 65537) uses the high bits of both.
        assert_eq!((dev_major(0x103), dev_minor(0x103)), (1, 3));
        let makedev = |ma: u64, mi: u64| {
            ((ma & 0xffff_f000) << 32) | ((ma & 0xfff) << 8) | ((mi & 0xffff_ff00) << 12) | (mi & 0xff)
        };
        let d = makedev(259, 65537);
        assert_eq!((dev_major(d), dev_minor(d)), (259, 65537));
        let d = makedev(0xfffff, 0xfffff);
        assert_eq!((dev_major(d), dev_minor(d)), (0xfffff, 0xfffff));
    }

    #[test]
    fn mtime_saturates() {
        assert_eq!(newc_mtime(-5), 0);
        assert_eq!(newc_mtime(1_700_000_000), 1_700_000_000);
        assert_eq!(newc_mtime(i64::MAX), u32::MAX);
    }
}
