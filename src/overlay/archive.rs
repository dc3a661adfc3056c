//! One `cpio` newc archive in one gzip member: written for a node, read by `wwclient`.
//!
//! The format is what the Linux kernel unpacks as an initramfs and what Warewulf serves
//! on `/system/{wwid}` and `/runtime/{wwid}`:
//!
//! * **newc** ("070701") records, one per path, in path order. Paths are sorted bytewise,
//!   so a directory always comes before its contents (a parent is a prefix of its child).
//!   Directories are written only when the overlay has them: the kernel `chmod`s a
//!   directory it unpacks even when it exists, so an invented `tmp` with `0755` would break
//!   the image's `1777`.
//! * **mode** = file-type bits | permission bits (`0o7777`, setuid/setgid/sticky kept);
//!   **uid/gid** as the entry says; **symlinks** carry their target as the body, as newc
//!   does; inodes are numbered 1, 2, … and mtime is the caller's (0 by default), so the
//!   same tree always gives the same bytes, whatever machine builds it.
//! * **exactly one gzip member** (no file name, mtime 0 in its header): some unpackers stop
//!   after the first member, and a content digest of the archive must be stable.
//!
//! Reading is for an archive that came over the network, so it trusts nothing
//! ([`read`]): every name is validated ([`validate_name`]: relative, no `.`/`..`/empty
//! component, no NUL), no path may sit under a non-directory of the same archive, the
//! declared sizes are checked against [`Limits`] *before* a body is read, only
//! directories, regular files and symlinks are accepted, the gzip CRC is checked (the
//! member is read to its end) and nothing may follow the member. A leading `./` (what
//! `find . | cpio -o` writes) is accepted and the `.` record skipped.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use cpio::newc;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::tree::{Entry, EntryKind};

/// newc file-type bits.
const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
/// Permission bits an entry may carry (with setuid, setgid, sticky).
const PERM_BITS: u32 = 0o7777;
/// The name of newc's end-of-archive record.
const TRAILER_NAME: &str = "TRAILER!!!";
/// Longest path (Linux `PATH_MAX`, counting the NUL) and symlink target accepted.
pub const MAX_NAME_LEN: usize = 4095;
/// Zero bytes tolerated after the trailer (block padding of other cpio writers).
const MAX_TRAILING_PADDING: u64 = 64 * 1024;

/// Why an archive could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("invalid path {name:?} in overlay archive: {why}")]
    BadName { name: String, why: &'static str },
    #[error("{path}: mode {mode:#o} has bits beyond the permission bits (0o7777); an entry's mode must not carry file-type bits")]
    BadMode { path: String, mode: u32 },
    #[error("{path}: {size} bytes is too large for a newc record (at most 4 GiB - 1)")]
    FileTooLarge { path: String, size: usize },
    #[error("overlay archive declares more than {limit} bytes of contents (at {path}); refused. Is this an overlay?")]
    TooLarge { path: String, limit: u64 },
    #[error("overlay archive has more than {limit} entries; refused")]
    TooManyEntries { limit: usize },
    #[error("{path}: {what} is not supported in an overlay archive (only directories, regular files and symlinks)")]
    Unsupported { path: String, what: String },
    #[error("{path} appears twice in the overlay archive")]
    Duplicate { path: String },
    #[error("{path} is under {parent}, which the same archive makes a non-directory")]
    UnderNonDir { path: String, parent: String },
    #[error("malformed overlay archive{}: {why}", at.as_ref().map(|p| format!(" (at {p})")).unwrap_or_default())]
    Malformed { at: Option<String>, why: String },
    #[error("cannot write overlay archive: {0}")]
    Write(#[source] io::Error),
}

impl crate::error::Classify for ArchiveError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            ArchiveError::Write(_) => crate::error::ErrorKind::Internal,
            _ => crate::error::ErrorKind::Invalid,
        }
    }
}

/// How an archive is written.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// Every record's mtime (seconds since 1970). 0 keeps archives reproducible.
    pub mtime: u32,
    /// gzip level, 0..=9.
    pub level: u32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions { mtime: 0, level: 6 }
    }
}

/// Bounds on an archive being read.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sum of all declared body sizes (file contents and symlink targets).
    pub max_total_bytes: u64,
    /// Number of records (the trailer not counted).
    pub max_entries: usize,
}

impl Default for Limits {
    /// Generous for a runtime overlay (configuration files, keys): 256 MiB, 100,000 paths.
    fn default() -> Self {
        Limits {
            max_total_bytes: 256 << 20,
            max_entries: 100_000,
        }
    }
}

/// Checks that `name` is a path an overlay may hold: relative, `/`-separated, no empty,
/// `.` or `..` component, no NUL, at most [`MAX_NAME_LEN`] bytes, not newc's trailer name.
pub fn validate_name(name: &str) -> Result<(), ArchiveError> {
    let bad = |why| {
        Err(ArchiveError::BadName {
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty name");
    }
    if name.starts_with('/') {
        return bad("absolute path (paths are relative to the root it is applied to)");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than PATH_MAX");
    }
    if name.contains('\0') {
        return bad("contains a NUL byte");
    }
    if name == TRAILER_NAME {
        return bad("is newc's end-of-archive name");
    }
    for c in name.split('/') {
        match c {
            "" => return bad("empty path component (`//` or a trailing `/`)"),
            "." => return bad("`.` component"),
            ".." => return bad("`..` component (would leave the root)"),
            _ => {}
        }
    }
    Ok(())
}

/// Writes `entries` as one gzip member holding a newc archive into `out`; returns `out`.
pub fn write<W: Write>(entries: &BTreeMap<String, Entry>, opts: &WriteOptions, out: W) -> Result<W, ArchiveError> {
    let mut gz = GzEncoder::new(out, Compression::new(opts.level.min(9)));
    records(entries, 1, opts.mtime, &mut gz)?;
    newc::trailer(&mut gz).map_err(ArchiveError::Write)?;
    gz.finish().map_err(ArchiveError::Write)
}

/// The uncompressed newc records of `entries` (no trailer), inodes numbered from
/// `first_ino`, mtime 0; returns the next free inode number. For archives assembled
/// from parts (`overlay::build` compresses the part every node shares once).
pub fn newc_records(entries: &BTreeMap<String, Entry>, first_ino: u32, out: &mut Vec<u8>) -> Result<u32, ArchiveError> {
    records(entries, first_ino, 0, out)
}

/// newc's end-of-archive record.
pub fn newc_trailer(out: &mut Vec<u8>) {
    newc::trailer(out).expect("writing to memory cannot fail");
}

fn records<W: Write>(
    entries: &BTreeMap<String, Entry>,
    first_ino: u32,
    mtime: u32,
    out: &mut W,
) -> Result<u32, ArchiveError> {
    let mut next = first_ino;
    for (path, e) in entries {
        validate_name(path)?;
        if e.mode & !PERM_BITS != 0 {
            return Err(ArchiveError::BadMode {
                path: path.clone(),
                mode: e.mode,
            });
        }
        let (ftype, body, nlink): (u32, &[u8], u32) = match &e.kind {
            EntryKind::Dir => (S_IFDIR, &[], 2),
            EntryKind::File(data) => (S_IFREG, data, 1),
            EntryKind::Symlink(target) => (S_IFLNK, target.as_bytes(), 1),
        };
        let size = u32::try_from(body.len()).map_err(|_| ArchiveError::FileTooLarge {
            path: path.clone(),
            size: body.len(),
        })?;
        let mut w = newc::Builder::new(path)
            .ino(next)
            .mode(ftype | e.mode)
            .uid(e.uid)
            .gid(e.gid)
            .nlink(nlink)
            .mtime(mtime)
            .write(&mut *out, size);
        // `Writer::finish` pads only when the whole body was written, so write it all.
        w.write_all(body).map_err(ArchiveError::Write)?;
        w.finish().map_err(ArchiveError::Write)?;
        next += 1;
    }
    Ok(next)
}

/// [`write`] into memory.
pub fn pack(entries: &BTreeMap<String, Entry>, opts: &WriteOptions) -> Result<Vec<u8>, ArchiveError> {
    write(entries, opts, Vec::new())
}

fn malformed(at: Option<&str>, why: impl Into<String>) -> ArchiveError {
    ArchiveError::Malformed {
        at: at.map(str::to_owned),
        why: why.into(),
    }
}

/// Reads an archive (gzip of newc, as [`write`] makes it; a plain newc archive is accepted
/// too) from memory, validating it as the module doc says.
pub fn read(bytes: &[u8], limits: &Limits) -> Result<BTreeMap<String, Entry>, ArchiveError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut gz = flate2::bufread::GzDecoder::new(bytes);
        let entries = read_cpio(&mut gz, limits)?;
        let rest = gz.into_inner();
        if !rest.is_empty() {
            return Err(malformed(
                None,
                format!(
                    "{} bytes follow the gzip member (a second member or garbage)",
                    rest.len()
                ),
            ));
        }
        Ok(entries)
    } else if bytes.starts_with(b"07070") {
        read_cpio(&mut &bytes[..], limits)
    } else {
        Err(malformed(None, "neither gzip nor a newc cpio archive"))
    }
}

/// Reads newc records up to the trailer and the padding after it, to the stream's end.
fn read_cpio<R: Read>(r: &mut R, limits: &Limits) -> Result<BTreeMap<String, Entry>, ArchiveError> {
    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    let mut total: u64 = 0;
    let mut records = 0usize;
    let mut last: Option<String> = None;
    loop {
        let mut rec = newc::Reader::new(&mut *r).map_err(|e| {
            malformed(
                last.as_deref(),
                format!("cannot read the record after this one: {e} (truncated or corrupt archive)"),
            )
        })?;
        let h = rec.entry();
        if h.is_trailer() {
            rec.finish()
                .map_err(|e| malformed(Some(TRAILER_NAME), format!("truncated trailer: {e}")))?;
            break;
        }
        records += 1;
        if records > limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let raw = h.name().to_owned();
        let (mode, uid, gid, nlink, size, crc) = (h.mode(), h.uid(), h.gid(), h.nlink(), h.file_size(), h.checksum());
        if raw == "." || raw == "./" {
            // The root itself (`find . | cpio -o`): its mode is not ours to apply.
            rec.finish().map_err(|e| malformed(Some("."), e.to_string()))?;
            continue;
        }
        let name = raw.strip_prefix("./").unwrap_or(&raw).to_owned();
        validate_name(&name)?;
        total += u64::from(size);
        if total > limits.max_total_bytes {
            return Err(ArchiveError::TooLarge {
                path: name,
                limit: limits.max_total_bytes,
            });
        }
        let mut body = Vec::with_capacity(size as usize);
        (&mut rec)
            .take(u64::from(size))
            .read_to_end(&mut body)
            .map_err(|e| malformed(Some(&name), format!("cannot read contents: {e}")))?;
        if body.len() != size as usize {
            return Err(malformed(
                Some(&name),
                format!("truncated: {} of {size} bytes", body.len()),
            ));
        }
        rec.finish()
            .map_err(|e| malformed(Some(&name), format!("truncated padding: {e}")))?;
        if let Some(sum) = crc {
            let got = body.iter().fold(0u32, |a, b| a.wrapping_add(u32::from(*b)));
            if mode & S_IFMT == S_IFREG && got != sum {
                return Err(malformed(Some(&name), "checksum mismatch (070702 record)"));
            }
        }
        let kind = match mode & S_IFMT {
            S_IFDIR => {
                if size != 0 {
                    return Err(malformed(Some(&name), "a directory record with contents"));
                }
                EntryKind::Dir
            }
            S_IFREG => {
                if nlink > 1 {
                    return Err(ArchiveError::Unsupported {
                        path: name,
                        what: "a hard link".into(),
                    });
                }
                EntryKind::File(body)
            }
            S_IFLNK => {
                if body.is_empty() || body.len() > MAX_NAME_LEN || body.contains(&0) {
                    return Err(malformed(Some(&name), "symlink target empty, too long or with NUL"));
                }
                let target =
                    String::from_utf8(body).map_err(|_| malformed(Some(&name), "symlink target is not UTF-8"))?;
                EntryKind::Symlink(target)
            }
            t => {
                let what = match t {
                    0o020_000 => "a character device".to_owned(),
                    0o060_000 => "a block device".to_owned(),
                    0o010_000 => "a FIFO".to_owned(),
                    0o140_000 => "a socket".to_owned(),
                    other => format!("file type {other:#o}"),
                };
                return Err(ArchiveError::Unsupported { path: name, what });
            }
        };
        let entry = Entry {
            kind,
            mode: mode & PERM_BITS,
            uid,
            gid,
        };
        if out.insert(name.clone(), entry).is_some() {
            return Err(ArchiveError::Duplicate { path: name });
        }
        last = Some(name);
    }
    // Padding after the trailer must be zeros, and reading to the end makes the gzip
    // decoder check the member's CRC and length.
    let mut pad = Vec::new();
    r.take(MAX_TRAILING_PADDING + 1)
        .read_to_end(&mut pad)
        .map_err(|e| malformed(Some(TRAILER_NAME), format!("after the trailer: {e}")))?;
    if pad.len() as u64 > MAX_TRAILING_PADDING || pad.iter().any(|b| *b != 0) {
        return Err(malformed(Some(TRAILER_NAME), "data after the end-of-archive record"));
    }
    for path in out.keys() {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let parent = &path[..at + i];
            if out.get(parent).is_some_and(|e| e.kind != EntryKind::Dir) {
                return Err(ArchiveError::UnderNonDir {
                    path: path.clone(),
                    parent: parent.to_owned(),
                });
            }
            at += i + 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(kind: EntryKind, mode: u32, uid: u32, gid: u32) -> Entry {
        Entry { kind, mode, uid, gid }
    }

    fn sample() -> BTreeMap<String, Entry> {
        let mut m = BTreeMap::new();
        m.insert("etc".into(), e(EntryKind::Dir, 0o755, 0, 0));
        m.insert(
            "etc/hosts".into(),
            e(EntryKind::File(b"127.0.0.1 localhost\n".to_vec()), 0o644, 0, 0),
        );
        m.insert("etc/ssh".into(), e(EntryKind::Dir, 0o700, 0, 0));
        m.insert(
            "etc/ssh/key".into(),
            e(EntryKind::File(b"secret".to_vec()), 0o600, 0, 0),
        );
        m.insert(
            "etc/localtime".into(),
            e(EntryKind::Symlink("/usr/share/zoneinfo/UTC".into()), 0o777, 0, 0),
        );
        m.insert("home".into(), e(EntryKind::Dir, 0o755, 0, 0));
        m.insert("home/u".into(), e(EntryKind::Dir, 0o750, 1000, 100));
        m.insert("home/u/empty".into(), e(EntryKind::File(Vec::new()), 0o640, 1000, 100));
        m.insert("tmp".into(), e(EntryKind::Dir, 0o1777, 0, 0));
        m.insert("usr/bin/su".into(), e(EntryKind::File(vec![0u8; 5]), 0o4755, 0, 0));
        m
    }

    /// Raw newc records (name, mode with type bits, body), for archives our writer refuses.
    fn raw(records: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (name, mode, body)) in records.iter().enumerate() {
            let mut w = newc::Builder::new(name)
                .ino(i as u32 + 1)
                .mode(*mode)
                .nlink(1)
                .write(&mut out, body.len() as u32);
            w.write_all(body).unwrap();
            w.finish().unwrap();
        }
        newc::trailer(&mut out).unwrap();
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&out).unwrap();
        gz.finish().unwrap()
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn round_trip_keeps_kinds_modes_and_owners() {
        let m = sample();
        let bytes = pack(&m, &WriteOptions::default()).unwrap();
        assert_eq!(read(&bytes, &Limits::default()).unwrap(), m);
        // Same tree, same bytes.
        assert_eq!(pack(&m, &WriteOptions::default()).unwrap(), bytes);
        // A plain (uncompressed) newc archive reads the same.
        assert_eq!(read(&gunzip(&bytes), &Limits::default()).unwrap(), m);
    }

    #[test]
    fn records_have_type_bits_and_parents_come_first() {
        let bytes = pack(&sample(), &WriteOptions { mtime: 7, level: 1 }).unwrap();
        let cpio = gunzip(&bytes);
        let mut r: &[u8] = &cpio;
        let mut seen: Vec<(String, u32, u32)> = Vec::new();
        loop {
            let rec = newc::Reader::new(r).unwrap();
            if rec.entry().is_trailer() {
                break;
            }
            let h = rec.entry();
            assert_eq!(h.mtime(), 7);
            seen.push((h.name().to_owned(), h.mode(), h.ino()));
            r = rec.finish().unwrap();
        }
        let mode_of = |n: &str| seen.iter().find(|s| s.0 == n).unwrap().1;
        assert_eq!(mode_of("etc"), 0o040_755);
        assert_eq!(mode_of("etc/hosts"), 0o100_644);
        assert_eq!(mode_of("etc/localtime"), 0o120_777);
        assert_eq!(mode_of("tmp"), 0o041_777);
        assert_eq!(mode_of("usr/bin/su"), 0o104_755);
        for (i, (name, _, ino)) in seen.iter().enumerate() {
            assert_eq!(*ino as usize, i + 1, "inodes numbered in order");
            if let Some((parent, _)) = name.rsplit_once('/') {
                if let Some(p) = seen.iter().position(|s| s.0 == parent) {
                    assert!(p < i, "{parent} after {name}");
                }
            }
        }
    }

    /// gzip members in `bytes`: decode one after another until the input is used up.
    fn gzip_members(bytes: &[u8]) -> usize {
        let mut rest = bytes;
        let mut n = 0;
        while !rest.is_empty() {
            let mut d = flate2::bufread::GzDecoder::new(rest);
            io::copy(&mut d, &mut io::sink()).unwrap();
            rest = d.into_inner();
            n += 1;
        }
        n
    }

    #[test]
    fn exactly_one_gzip_member() {
        let bytes = pack(&sample(), &WriteOptions::default()).unwrap();
        assert_eq!(gzip_members(&bytes), 1);
        // The counter does see two when there are two, and the reader refuses them.
        let twice = [bytes.clone(), bytes.clone()].concat();
        assert_eq!(gzip_members(&twice), 2);
        let err = read(&twice, &Limits::default()).unwrap_err().to_string();
        assert!(err.contains("follow the gzip member"), "{err}");
    }

    #[test]
    fn gnu_cpio_lists_what_we_wrote() {
        if std::process::Command::new("cpio").arg("--version").output().is_err() {
            println!("SKIP gnu_cpio_lists_what_we_wrote: GNU cpio is not installed (apt-get install cpio)");
            return;
        }
        let cpio = gunzip(&pack(&sample(), &WriteOptions::default()).unwrap());
        let mut child = std::process::Command::new("cpio")
            .args(["-itvn", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&cpio).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let line = |name: &str| -> Vec<String> {
            text.lines()
                .find(|l| l.ends_with(&format!(" {name}")) || l.contains(&format!(" {name} -> ")))
                .unwrap_or_else(|| panic!("{name} not listed in:\n{text}"))
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(text.lines().count(), sample().len(), "{text}");
        // `cpio -tv` columns: mode, nlink, uid, gid, size, date (3), name [-> target].
        let h = line("etc/hosts");
        assert_eq!(
            (h[0].as_str(), h[2].as_str(), h[3].as_str(), h[4].as_str()),
            ("-rw-r--r--", "0", "0", "20")
        );
        assert_eq!(line("etc/ssh")[0], "drwx------");
        assert_eq!(line("etc/ssh/key")[0], "-rw-------");
        assert_eq!(line("tmp")[0], "drwxrwxrwt");
        assert_eq!(line("usr/bin/su")[0], "-rwsr-xr-x");
        let u = line("home/u");
        assert_eq!(
            (u[0].as_str(), u[2].as_str(), u[3].as_str()),
            ("drwxr-x---", "1000", "100")
        );
        let l = line("etc/localtime");
        assert_eq!(l[0], "lrwxrwxrwx");
        assert_eq!(l[l.len() - 1], "/usr/share/zoneinfo/UTC");
    }

    #[test]
    fn writer_refuses_bad_names_and_modes() {
        for bad in ["", "/etc/x", "a/../b", "..", "a//b", "a/", "./a", "TRAILER!!!", "a\0b"] {
            let mut m = BTreeMap::new();
            m.insert(bad.to_owned(), e(EntryKind::Dir, 0o755, 0, 0));
            assert!(
                matches!(pack(&m, &WriteOptions::default()), Err(ArchiveError::BadName { .. })),
                "{bad:?} accepted"
            );
        }
        let mut m = BTreeMap::new();
        m.insert("x".to_owned(), e(EntryKind::File(vec![]), 0o100_644, 0, 0));
        assert!(matches!(
            pack(&m, &WriteOptions::default()),
            Err(ArchiveError::BadMode { .. })
        ));
    }

    #[test]
    fn escaping_names_refused_when_read() {
        for name in ["/etc/passwd", "../etc/passwd", "a/../../b", "a//b", "a/./b", ""] {
            let bytes = raw(&[(name, S_IFREG | 0o644, b"x")]);
            let err = read(&bytes, &Limits::default()).unwrap_err();
            assert!(matches!(err, ArchiveError::BadName { .. }), "{name:?}: {err}");
        }
        // `./` prefixes and the `.` record of `find . | cpio -o` are fine.
        let bytes = raw(&[(".", S_IFDIR | 0o700, b""), ("./etc", S_IFDIR | 0o755, b"")]);
        let m = read(&bytes, &Limits::default()).unwrap();
        assert_eq!(m.keys().collect::<Vec<_>>(), ["etc"]);
    }

    #[test]
    fn paths_under_a_symlink_or_file_refused() {
        let bytes = raw(&[("a", S_IFLNK | 0o777, b"/etc"), ("a/passwd", S_IFREG | 0o644, b"x")]);
        let err = read(&bytes, &Limits::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::UnderNonDir { .. }), "{err}");
        let bytes = raw(&[("a", S_IFREG | 0o644, b""), ("a/b", S_IFREG | 0o644, b"x")]);
        assert!(matches!(
            read(&bytes, &Limits::default()),
            Err(ArchiveError::UnderNonDir { .. })
        ));
    }

    #[test]
    fn malformed_archives_refused_with_clear_errors() {
        let good = pack(&sample(), &WriteOptions::default()).unwrap();
        let cpio = gunzip(&good);
        // Truncated inside a record (plain and compressed).
        let err = read(&cpio[..cpio.len() / 2], &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("malformed overlay archive"), "{err}");
        let err = read(&good[..good.len() - 4], &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("malformed"), "{err}");
        // Not an archive at all.
        let err = read(b"<html>404</html>", &Limits::default()).unwrap_err().to_string();
        assert!(err.contains("neither gzip nor"), "{err}");
        // Garbage after the trailer.
        let mut tail = cpio.clone();
        tail.extend_from_slice(b"junk");
        assert!(read(&tail, &Limits::default()).is_err());
        // Duplicates, devices, hard links.
        let dup = raw(&[("a", S_IFREG | 0o644, b"1"), ("a", S_IFREG | 0o644, b"2")]);
        assert!(matches!(
            read(&dup, &Limits::default()),
            Err(ArchiveError::Duplicate { .. })
        ));
        let dev = raw(&[("dev/null", 0o020_666, b"")]);
        let err = read(&dev, &Limits::default()).unwrap_err().to_string();
        assert!(err.contains("a character device"), "{err}");
        let mut out = Vec::new();
        let w = newc::Builder::new("h")
            .mode(S_IFREG | 0o644)
            .nlink(2)
            .write(&mut out, 0);
        w.finish().unwrap();
        newc::trailer(&mut out).unwrap();
        assert!(matches!(
            read(&out, &Limits::default()),
            Err(ArchiveError::Unsupported { .. })
        ));
    }

    #[test]
    fn declared_sizes_over_the_limit_refused_before_reading() {
        let m = sample();
        let bytes = pack(&m, &WriteOptions::default()).unwrap();
        let tight = Limits {
            max_total_bytes: 10,
            max_entries: 100,
        };
        let err = read(&bytes, &tight).unwrap_err();
        assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
        let few = Limits {
            max_total_bytes: 1 << 20,
            max_entries: 3,
        };
        assert!(matches!(
            read(&bytes, &few),
            Err(ArchiveError::TooManyEntries { limit: 3 })
        ));
        // A header claiming 4 GiB - 1 bytes with no body: refused by the limit, not by
        // running out of memory or input.
        let mut out = Vec::new();
        let hdr = newc::Builder::new("big")
            .mode(S_IFREG | 0o644)
            .nlink(1)
            .write(&mut out, u32::MAX);
        drop(hdr.finish());
        let err = read(&out, &Limits::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
    }
}
