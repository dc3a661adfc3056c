//! Importing a plain directory: one deterministic, uncompressed tar layer.
//!
//! Other heads rebuild the image from this layer alone, so it must carry everything a root
//! filesystem needs and nothing that varies between two imports of the same tree:
//! - **Deterministic.** Entries are written depth-first with each directory's children in
//!   byte order of their names; headers are GNU headers built by hand with mode, uid, gid
//!   and mtime only — no user/group names, atime or ctime (which `Header::set_metadata`
//!   would copy and which change on every read). The same tree gives the same digest.
//! - **Faithful.** Regular files, directories, symlinks (the link itself, never followed),
//!   hard links (second and later names become `Link` entries to the first name), character
//!   and block devices (major/minor) and FIFOs, with setuid/setgid/sticky bits. Long names
//!   and link targets use GNU long-name records (handled by `tar::Builder`). Sockets cannot
//!   be stored in tar and are skipped with a message. Extended attributes (file
//!   capabilities, SELinux labels) are not recorded: std has no xattr API.
//! - **One file system.** Directories on another device than the root (a `proc` or `sys`
//!   mounted into a chroot) are recorded as empty mount points, like `tar --one-file-system`,
//!   so an import never walks into `/proc/kcore`.
//! - **Streaming.** File contents go from disk through a `BufWriter` into the CAS writer; a
//!   file that shrinks while being read is an error (the header already promised its size)
//!   rather than a silently corrupt archive.
//! - **Root entry.** The root directory itself is the entry `./`, so its mode and owner
//!   survive too.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::{
    cas_err, io_err, Layer, OciError, Platform, PullProgress, Pulled, Reporter, MEDIA_TYPE_LAYER_TAR, PROGRESS_STEP,
};
use crate::cas::Cas;

/// Write a deterministic tar of the tree at `root` to `out` (see the module notes for what
/// is kept). Returns `out` after the end-of-archive marker.
pub fn tar_directory<W: Write>(root: &Path, out: W) -> Result<W, OciError> {
    tar_tree(root, out, &Reporter::silent())
}

pub(super) fn pull_directory(
    path: &Path,
    cas: &Cas,
    platform: &Platform,
    reporter: &Reporter,
) -> Result<Pulled, OciError> {
    let image = format!("dir:{}", path.display());
    let writer = cas.writer().map_err(cas_err("the directory layer", &image))?;
    let counted = Counted {
        inner: writer,
        done: 0,
        last: 0,
        reporter,
    };
    let buffered = tar_tree(path, BufWriter::with_capacity(1 << 20, counted), reporter)?;
    let counted = buffered
        .into_inner()
        .map_err(|e| io_err("cannot store the layer of", path)(e.into_error()))?;
    let size = counted.done;
    let digest = counted
        .inner
        .commit(None)
        .map_err(cas_err("the directory layer", &image))?;
    reporter.send(PullProgress::Layer {
        index: 0,
        count: 1,
        digest: digest.to_string(),
        done: size,
        total: size,
    });
    Ok(Pulled {
        layers: vec![Layer {
            digest,
            media_type: MEDIA_TYPE_LAYER_TAR.to_string(),
            size,
        }],
        config: None,
        platform: platform.to_string(),
        source: image,
        manifest: None,
    })
}

/// Counts bytes on their way to the CAS and reports them (the total is unknown: 0).
struct Counted<'a, W: Write> {
    inner: W,
    done: u64,
    last: u64,
    reporter: &'a Reporter,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.done += n as u64;
        if self.done - self.last >= PROGRESS_STEP {
            self.last = self.done;
            self.reporter.send(PullProgress::Layer {
                index: 0,
                count: 1,
                digest: String::new(),
                done: self.done,
                total: 0,
            });
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Children of a directory, sorted by name bytes, reversed (so `pop` yields them in order).
fn children(dir: &Path) -> Result<Vec<OsString>, OciError> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("cannot list directory", dir))? {
        names.push(e.map_err(io_err("cannot list directory", dir))?.file_name());
    }
    names.sort_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    Ok(names)
}

fn tar_tree<W: Write>(root: &Path, out: W, reporter: &Reporter) -> Result<W, OciError> {
    let root_meta = fs::symlink_metadata(root).map_err(io_err("cannot import directory", root))?;
    if !root_meta.is_dir() {
        return Err(OciError::Io {
            what: "cannot import directory",
            path: root.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let mut b = tar::Builder::new(out);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    append(&mut b, root, Path::new("."), &root_meta, &mut links, reporter)?;
    let mut stack = vec![(root.to_path_buf(), PathBuf::new(), children(root)?)];
    while let Some((dir, rel_dir, names)) = stack.last_mut() {
        reporter.check()?;
        let Some(name) = names.pop() else {
            stack.pop();
            continue;
        };
        let abs = dir.join(&name);
        let rel = rel_dir.join(&name);
        let meta = fs::symlink_metadata(&abs).map_err(io_err("cannot read", &abs))?;
        append(&mut b, &abs, &rel, &meta, &mut links, reporter)?;
        if meta.is_dir() {
            if meta.dev() != root_meta.dev() {
                reporter.send(PullProgress::Message(format!(
                    "{} is another file system (a mount point); its contents are not imported",
                    abs.display()
                )));
                continue;
            }
            let kids = children(&abs)?;
            stack.push((abs, rel, kids));
        }
    }
    b.into_inner().map_err(io_err("cannot finish the layer of", root))
}

/// Device major/minor from `st_rdev` (Linux/glibc encoding).
fn dev_major(rdev: u64) -> u32 {
    (((rdev >> 8) & 0xfff) | ((rdev >> 32) & 0xffff_f000)) as u32
}

fn dev_minor(rdev: u64) -> u32 {
    ((rdev & 0xff) | ((rdev >> 12) & 0xffff_ff00)) as u32
}

fn append<W: Write>(
    b: &mut tar::Builder<W>,
    abs: &Path,
    rel: &Path,
    meta: &Metadata,
    links: &mut HashMap<(u64, u64), PathBuf>,
    reporter: &Reporter,
) -> Result<(), OciError> {
    let ft = meta.file_type();
    if ft.is_socket() {
        reporter.send(PullProgress::Message(format!(
            "{} is a socket, which a tar layer cannot hold; skipped",
            abs.display()
        )));
        return Ok(());
    }
    let werr = io_err("cannot archive", abs);
    let mut h = Header::new_gnu();
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(u64::from(meta.uid()));
    h.set_gid(u64::from(meta.gid()));
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(0);

    if ft.is_dir() {
        h.set_entry_type(EntryType::Directory);
        let mut name: OsString = rel.as_os_str().to_owned();
        name.push("/");
        return b.append_data(&mut h, Path::new(&name), io::empty()).map_err(werr);
    }
    if ft.is_symlink() {
        let target = fs::read_link(abs).map_err(io_err("cannot read symlink", abs))?;
        h.set_entry_type(EntryType::Symlink);
        return b.append_link(&mut h, rel, &target).map_err(werr);
    }
    if meta.nlink() > 1 {
        let key = (meta.dev(), meta.ino());
        if let Some(first) = links.get(&key) {
            h.set_entry_type(EntryType::Link);
            return b.append_link(&mut h, rel, first).map_err(werr);
        }
        links.insert(key, rel.to_path_buf());
    }
    if ft.is_file() {
        h.set_entry_type(EntryType::Regular);
        h.set_size(meta.len());
        let f = File::open(abs).map_err(io_err("cannot open", abs))?;
        let exact = Exact {
            inner: f,
            remaining: meta.len(),
        };
        return b.append_data(&mut h, rel, exact).map_err(werr);
    }
    if ft.is_fifo() {
        h.set_entry_type(EntryType::Fifo);
    } else if ft.is_char_device() || ft.is_block_device() {
        h.set_entry_type(if ft.is_char_device() {
            EntryType::Char
        } else {
            EntryType::Block
        });
        let rdev = meta.rdev();
        h.set_device_major(dev_major(rdev))
            .map_err(io_err("cannot archive", abs))?;
        h.set_device_minor(dev_minor(rdev))
            .map_err(io_err("cannot archive", abs))?;
    } else {
        reporter.send(PullProgress::Message(format!(
            "{} has a file type a tar layer cannot hold; skipped",
            abs.display()
        )));
        return Ok(());
    }
    b.append_data(&mut h, rel, io::empty()).map_err(werr)
}

/// Yields exactly `remaining` bytes of a file, or fails if the file ends earlier (it shrank
/// after its size went into the header).
struct Exact {
    inner: File,
    remaining: u64,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = self.remaining.min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the file shrank while being read ({} bytes missing); import a tree nothing is writing to",
                    self.remaining
                ),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
pub(super) mod tests_support {
    use super::*;

    pub(crate) fn exact(path: &Path, n: u64) -> impl Read {
        Exact {
            inner: File::open(path).expect("open"),
            remaining: n,
        }
    }

    pub(crate) fn split_dev(rdev: u64) -> (u32, u32) {
        (dev_major(rdev), dev_minor(rdev))
    }
}
