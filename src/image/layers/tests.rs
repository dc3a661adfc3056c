//! End-to-end tests of [`apply_layer`]: layers are built in memory with `tar::Builder` (names are written raw
//! into the header, so hostile names like `../x` and `/abs` can be expressed), compressed as needed, applied to a
//! temporary root, and the result is checked file by file.
//!
//! Every hostile case runs in a sandbox whose root has a *sentinel* directory beside it; after the refusal the
//! sandbox outside the root must be byte-for-byte what it was. Cases that would aim at host paths such as
//! `/etc/passwd` aim at the sentinel's absolute path instead, so a regression cannot damage the test machine.

use super::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt};
use std::path::PathBuf;

use rustix::io::Errno;
use tar::{EntryType, Header};

const LAYER: &str = "sha256:test-layer";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn opts() -> ApplyOptions {
    ApplyOptions::for_current_user()
}

/// A layer under construction.
struct Layer {
    b: tar::Builder<Vec<u8>>,
}

#[derive(Clone, Copy)]
struct M {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

const DEF: M = M {
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtime: 1_600_000_000,
};
const DIRM: M = M {
    mode: 0o755,
    uid: 0,
    gid: 0,
    mtime: 1_600_000_000,
};

impl Layer {
    fn new() -> Self {
        Self {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: EntryType, name: &[u8], m: M, size: u64) -> Header {
        let mut h = Header::new_ustar();
        let field = &mut h.as_old_mut().name;
        assert!(name.len() <= field.len(), "test names must fit the ustar name field");
        field.fill(0);
        field[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_mode(m.mode);
        h.set_uid(m.uid);
        h.set_gid(m.gid);
        h.set_mtime(m.mtime);
        h.set_size(size);
        h
    }

    fn push(&mut self, mut h: Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.dir_m(name, DIRM)
    }

    fn dir_m(&mut self, name: &str, m: M) -> &mut Self {
        self.push(Self::header(EntryType::Directory, name.as_bytes(), m, 0), &[])
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.file_m(name, data, DEF)
    }

    fn file_m(&mut self, name: &str, data: &[u8], m: M) -> &mut Self {
        self.push(
            Self::header(EntryType::Regular, name.as_bytes(), m, data.len() as u64),
            data,
        )
    }

    fn link(&mut self, kind: EntryType, name: &str, target: &[u8], m: M) -> &mut Self {
        let mut h = Self::header(kind, name.as_bytes(), m, 0);
        h.set_link_name_literal(target).unwrap();
        self.push(h, &[])
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.link(EntryType::Symlink, name, target.as_bytes(), M { mode: 0o777, ..DEF })
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.link(EntryType::Link, name, target.as_bytes(), DEF)
    }

    fn device(&mut self, kind: EntryType, name: &str, major: u32, minor: u32, mode: u32) -> &mut Self {
        let mut h = Self::header(kind, name.as_bytes(), M { mode, ..DEF }, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.push(h, &[])
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.b
            .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
            .unwrap();
        self
    }

    fn bytes(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(tar).unwrap();
            enc.finish().unwrap()
        }
        Compression::Zstd => ruzstd::encoding::compress_to_vec(tar, ruzstd::encoding::CompressionLevel::Fastest),
    }
}

fn apply(root: &Path, tar: &[u8], c: Compression, name: &str) -> Result<ApplyStats, LayerError> {
    apply_layer(root, &compress(tar, c)[..], c, name, &opts())
}

/// A temporary directory holding `root/` and, beside it, `sentinel/` with a file and a directory.
struct Sandbox {
    tmp: tempfile::TempDir,
    root: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        fs::create_dir_all(tmp.path().join("sentinel/sub")).unwrap();
        fs::write(tmp.path().join("sentinel/canary"), b"untouched").unwrap();
        fs::write(tmp.path().join("sentinel/sub/passwd"), b"root:x:0:0\n").unwrap();
        let mut sb = Self {
            tmp,
            root,
            before: BTreeMap::new(),
        };
        sb.before = sb.outside();
        sb
    }

    fn sentinel(&self) -> PathBuf {
        self.tmp.path().join("sentinel")
    }

    /// Everything in the sandbox except the root: type, mode, size, content, mtime.
    fn outside(&self) -> BTreeMap<PathBuf, String> {
        fn walk(dir: &Path, base: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p == skip {
                    continue;
                }
                let md = fs::symlink_metadata(&p).unwrap();
                let content = if md.is_file() {
                    String::from_utf8_lossy(&fs::read(&p).unwrap()).into_owned()
                } else {
                    String::new()
                };
                let desc = format!(
                    "{:?} {:o} {} {} {} {content}",
                    md.file_type(),
                    md.mode(),
                    md.len(),
                    md.nlink(),
                    md.mtime()
                );
                out.insert(p.strip_prefix(base).unwrap().to_path_buf(), desc);
                if md.is_dir() {
                    walk(&p, base, skip, out);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.tmp.path(), self.tmp.path(), &self.root, &mut out);
        out
    }

    fn assert_outside_untouched(&self) {
        assert_eq!(self.outside(), self.before, "something outside the image root changed");
    }

    /// The sentinel's absolute path without the leading '/', for entries like `x/<that>/canary`.
    fn sentinel_rel(&self) -> String {
        self.sentinel().to_str().unwrap().trim_start_matches('/').to_owned()
    }
}

fn lmeta(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Assert a hostile layer is refused with an error naming the layer and `entry`.
fn assert_refused(res: Result<ApplyStats, LayerError>, entry: &str) -> LayerError {
    let err = res.expect_err("the hostile layer must be refused");
    assert_eq!(err.layer(), "evil", "{err}");
    assert_eq!(err.entry(), Some(entry), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("evil") && text.contains(entry),
        "message must name layer and entry: {text}"
    );
    err
}

// ---------------------------------------------------------------- fidelity

fn fidelity_layer() -> Vec<u8> {
    let mut l = Layer::new();
    l.dir("./")
        .dir_m(
            "./etc/",
            M {
                mtime: 1_600_000_001,
                ..DIRM
            },
        )
        .file_m(
            "./etc/hosts",
            b"127.0.0.1 localhost\n",
            M {
                mode: 0o640,
                uid: 1000,
                gid: 1001,
                mtime: 1_600_000_100,
            },
        )
        .file_m("usr/bin/sudo", b"#!suid", M { mode: 0o4755, ..DEF })
        .file_m("srv/sgid", b"g", M { mode: 0o2755, ..DEF })
        .dir_m("tmp/", M { mode: 0o1777, ..DIRM })
        .file_m("bin/busybox", b"\x7fELF busybox", M { mode: 0o755, ..DEF })
        .link(
            EntryType::Symlink,
            "bin/sh",
            b"busybox",
            M {
                mode: 0o777,
                uid: 5,
                gid: 6,
                mtime: 1_600_000_200,
            },
        )
        .hardlink("bin/ls", "bin/busybox")
        .hardlink("bin/cat", "./bin/busybox")
        .device(EntryType::Char, "dev/null", 1, 3, 0o666)
        .device(EntryType::Block, "dev/loop0", 7, 0, 0o660)
        .device(EntryType::Fifo, "run/initctl", 0, 0, 0o600)
        .pax(&[("SCHILY.xattr.user.wulfpack", b"hello"), ("mtime", b"1600000300.5")])
        .file("etc/xattr", b"x")
        .dir_m("ro/", M { mode: 0o555, ..DIRM })
        .file("ro/inside", b"written into a read-only dir");
    l.bytes()
}

fn check_fidelity(root: &Path, stats: &ApplyStats) {
    let md = lmeta(&root.join("etc/hosts"));
    assert!(md.is_file());
    assert_eq!(fs::read(root.join("etc/hosts")).unwrap(), b"127.0.0.1 localhost\n");
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_eq!(md.mtime(), 1_600_000_100);
    if is_root() {
        assert_eq!((md.uid(), md.gid()), (1000, 1001));
    }
    assert_eq!(lmeta(&root.join("usr/bin/sudo")).mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!(lmeta(&root.join("srv/sgid")).mode() & 0o7777, 0o2755, "setgid kept");
    assert_eq!(lmeta(&root.join("tmp")).mode() & 0o7777, 0o1777, "sticky kept");
    assert_eq!(
        lmeta(&root.join("usr")).mode() & 0o777,
        0o755,
        "implicit parents are 0755"
    );

    // Directory mtime survives its children being written after it.
    let etc = lmeta(&root.join("etc"));
    assert_eq!((etc.mode() & 0o7777, etc.mtime()), (0o755, 1_600_000_001));
    assert_eq!(lmeta(&root.join("ro")).mode() & 0o7777, 0o555);
    assert!(root.join("ro/inside").is_file());

    let sh = lmeta(&root.join("bin/sh"));
    assert!(sh.file_type().is_symlink());
    assert_eq!(fs::read_link(root.join("bin/sh")).unwrap(), Path::new("busybox"));
    assert_eq!(
        sh.mtime(),
        1_600_000_200,
        "symlink mtime via utimensat(AT_SYMLINK_NOFOLLOW)"
    );
    if is_root() {
        assert_eq!((sh.uid(), sh.gid()), (5, 6), "lchown");
    }

    let bb = lmeta(&root.join("bin/busybox"));
    for l in ["bin/ls", "bin/cat"] {
        let md = lmeta(&root.join(l));
        assert_eq!((md.dev(), md.ino()), (bb.dev(), bb.ino()), "{l} is a hardlink");
    }
    assert_eq!(bb.nlink(), 3);

    if is_root() {
        let null = lmeta(&root.join("dev/null"));
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        assert_eq!(null.mode() & 0o7777, 0o666);
        let lp = lmeta(&root.join("dev/loop0"));
        assert!(lp.file_type().is_block_device());
        assert_eq!(lp.rdev(), rustix::fs::makedev(7, 0));
        assert_eq!(stats.skipped, 0);
    } else {
        assert_eq!(stats.skipped, 2, "devices skipped without CAP_MKNOD");
    }
    assert!(lmeta(&root.join("run/initctl")).file_type().is_fifo());

    let xa = lmeta(&root.join("etc/xattr"));
    assert_eq!(xa.mtime(), 1_600_000_300);
    assert_eq!(xa.mtime_nsec(), 500_000_000, "PAX sub-second mtime");
    let mut buf = [0u8; 16];
    match rustix::fs::getxattr(root.join("etc/xattr"), "user.wulfpack", &mut buf) {
        Ok(n) => assert_eq!(&buf[..n], b"hello"),
        Err(Errno::NOTSUP) => eprintln!("user xattrs unsupported here; not checked"),
        Err(e) => panic!("getxattr: {e}"),
    }

    assert_eq!(stats.whiteouts, 0);
    assert_eq!(stats.bytes, (20 + 6 + 1 + 12 + 1 + 28) as u64);
}

#[test]
fn applies_every_entry_type_faithfully_plain_gzip_zstd() {
    let tar = fidelity_layer();
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let tmp = tempfile::tempdir().unwrap();
        let stats = apply(tmp.path(), &tar, c, LAYER).unwrap_or_else(|e| panic!("{c:?}: {e}"));
        check_fidelity(tmp.path(), &stats);
    }
}

#[test]
fn mislabelled_compression_follows_the_data() {
    let tar = fidelity_layer();
    let tmp = tempfile::tempdir().unwrap();
    // `docker save` style: labelled tar.gzip, really plain.
    let stats = apply_layer(tmp.path(), &tar[..], Compression::Gzip, LAYER, &opts()).unwrap();
    check_fidelity(tmp.path(), &stats);
}

#[test]
fn long_names_and_large_files_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let long = format!("{}/file", "d".repeat(200));
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_size(big.len() as u64);
    h.set_mode(0o600);
    b.append_data(&mut h, &long, &big[..]).unwrap(); // GNU long name
    let tar = b.into_inner().unwrap();
    let stats = apply(tmp.path(), &tar, Compression::Gzip, LAYER).unwrap();
    assert_eq!(stats.bytes, big.len() as u64);
    assert_eq!(fs::read(tmp.path().join(&long)).unwrap(), big);
}

// ---------------------------------------------------------------- replacement

#[test]
fn replacement_follows_the_spec() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut lower = Layer::new();
    lower
        .dir("tree/")
        .file("tree/sub/deep", b"x")
        .file("becomes_dir", b"f")
        .dir_m("merge/", M { mode: 0o700, ..DIRM })
        .file("merge/kept", b"k")
        .file("shared", b"lower")
        .hardlink("shared2", "shared")
        .file("to_link", b"f");
    apply(root, &lower.bytes(), Compression::None, "lower").unwrap();

    let mut upper = Layer::new();
    upper
        .file("tree", b"now a file")
        .dir("becomes_dir/")
        .dir_m(
            "merge/",
            M {
                mode: 0o751,
                mtime: 1_700_000_000,
                ..DIRM
            },
        )
        .file("merge/new", b"n")
        .file("shared", b"upper")
        .symlink("to_link", "merge/kept");
    apply(root, &upper.bytes(), Compression::None, "upper").unwrap();

    assert_eq!(
        fs::read(root.join("tree")).unwrap(),
        b"now a file",
        "file over a directory tree"
    );
    assert!(lmeta(&root.join("becomes_dir")).is_dir(), "directory over a file");
    let merge = lmeta(&root.join("merge"));
    assert_eq!(
        (merge.mode() & 0o7777, merge.mtime()),
        (0o751, 1_700_000_000),
        "merged dir takes new metadata"
    );
    assert!(
        root.join("merge/kept").is_file() && root.join("merge/new").is_file(),
        "merge keeps lower content"
    );
    assert_eq!(fs::read(root.join("shared")).unwrap(), b"upper");
    assert_eq!(
        fs::read(root.join("shared2")).unwrap(),
        b"lower",
        "a lower hardlink is never written through"
    );
    assert_eq!(fs::read_link(root.join("to_link")).unwrap(), Path::new("merge/kept"));
}

// ---------------------------------------------------------------- whiteouts

fn tree_listing(root: &Path) -> Vec<String> {
    fn walk(d: &Path, root: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if lmeta(&p).is_dir() {
                walk(&p, root, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn whiteouts_remove_only_lower_content() {
    for c in [Compression::None, Compression::Zstd] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let mut lower = Layer::new();
        lower
            .file("file2", b"")
            .file("a/file1", b"")
            .file("a/keep", b"")
            .file("b/c/d/file", b"")
            .symlink("b/c/link", "/etc")
            .file("opq/old1", b"")
            .file("opq/sub/old2", b"")
            .file("opq2/old", b"")
            .file("opq3/sub/old", b"")
            .file("same/lower", b"");
        apply(root, &lower.bytes(), c, "lower").unwrap();

        let mut upper = Layer::new();
        upper
            .file(".wh.file2", b"")
            .file("a/.wh.file1", b"")
            .file(".wh.b", b"")
            // Marker before this layer's entries.
            .file("opq/.wh..wh..opq", b"")
            .file("opq/new1", b"")
            .file("opq/sub/new2", b"")
            // Marker after this layer's entries, including a nested directory it merged into.
            .file("opq2/new", b"")
            .file("opq3/sub/new", b"")
            .file("opq2/.wh..wh..opq", b"")
            .file("opq3/.wh..wh..opq", b"")
            // Whiteouts of nothing are no-ops.
            .file(".wh.nonexistent", b"")
            .file("nowhere/.wh.x", b"")
            // A whiteout naming this layer's own path does not remove it (spec: lower layers only).
            .file("same/upper", b"")
            .file(".wh.same", b"")
            .file("fresh", b"")
            .file(".wh.fresh", b"");
        let stats = apply(root, &upper.bytes(), c, "upper").unwrap();

        assert_eq!(
            tree_listing(root),
            [
                "a",
                "a/keep",
                "fresh",
                "opq",
                "opq/new1",
                "opq/sub",
                "opq/sub/new2",
                "opq2",
                "opq2/new",
                "opq3",
                "opq3/sub",
                "opq3/sub/new",
                "same",
                "same/upper",
            ],
            "{c:?}"
        );
        assert_eq!(stats.whiteouts, 10);
        assert_eq!(stats.entries, 6);
    }
}

#[test]
fn bare_wh_prefix_is_malformed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layer::new();
    l.file("etc/.wh.", b"");
    let err = apply(tmp.path(), &l.bytes(), Compression::None, "evil").unwrap_err();
    assert!(matches!(err, LayerError::Malformed { .. }), "{err}");
    assert_eq!(err.entry(), Some("etc/.wh."));
}

#[test]
fn aufs_metadata_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layer::new();
    l.dir(".wh..wh.plnk/")
        .file(".wh..wh.plnk/123.456", b"x")
        .file("real", b"r");
    let stats = apply(tmp.path(), &l.bytes(), Compression::None, LAYER).unwrap();
    assert_eq!(tree_listing(tmp.path()), ["real"]);
    assert_eq!((stats.entries, stats.skipped), (1, 2));
}

// ---------------------------------------------------------------- hostile layers

#[test]
fn refuses_dotdot_escape() {
    let sb = Sandbox::new();
    for name in ["../escape", "a/../../escape", "./../sentinel/canary"] {
        let mut l = Layer::new();
        l.file("ok", b"").file(name, b"pwned");
        let err = assert_refused(apply(&sb.root, &l.bytes(), Compression::None, "evil"), name);
        assert!(
            matches!(
                err,
                LayerError::Refused {
                    reason: UnsafeEntry::EscapesRoot,
                    ..
                }
            ),
            "{err}"
        );
        sb.assert_outside_untouched();
    }
}

#[test]
fn refuses_absolute_names() {
    let sb = Sandbox::new();
    let abs_canary = format!("{}/canary", sb.sentinel().display());
    for name in ["/abs", abs_canary.as_str()] {
        let mut l = Layer::new();
        l.file(name, b"pwned");
        let err = assert_refused(apply(&sb.root, &l.bytes(), Compression::None, "evil"), name);
        assert!(
            matches!(
                err,
                LayerError::Refused {
                    reason: UnsafeEntry::AbsolutePath,
                    ..
                }
            ),
            "{err}"
        );
    }
    assert!(!sb.root.join("abs").exists());
    sb.assert_outside_untouched();
}

#[test]
fn refuses_escaping_symlinks() {
    let sb = Sandbox::new();
    for (name, target) in [
        ("x", "../../.."),
        ("lnk", "../../../../tmp"),
        ("a/b/lnk", "../../../../etc/passwd"),
    ] {
        let mut l = Layer::new();
        l.symlink(name, target).file(&format!("{name}/file"), b"pwned");
        let err = assert_refused(apply(&sb.root, &l.bytes(), Compression::None, "evil"), name);
        assert!(
            matches!(
                err,
                LayerError::Refused {
                    reason: UnsafeEntry::SymlinkEscapes { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            fs::symlink_metadata(sb.root.join(name)).is_err(),
            "{name} must not be created"
        );
    }
    sb.assert_outside_untouched();
}

#[test]
fn refuses_writes_through_a_symlinked_parent() {
    let sb = Sandbox::new();
    // In-root absolute symlink to "/" is itself fine; writing through it is not.
    let through = format!("x/{}/canary", sb.sentinel_rel());
    let mut l = Layer::new();
    l.symlink("x", "/").file(&through, b"pwned");
    let err = assert_refused(apply(&sb.root, &l.bytes(), Compression::Gzip, "evil"), &through);
    assert!(
        matches!(&err, LayerError::Refused { reason: UnsafeEntry::SymlinkParent { component }, .. } if component == "x")
    );
    assert_eq!(fs::read_link(sb.root.join("x")).unwrap(), Path::new("/"));

    // A link planted by an earlier layer (or by anything else) that escapes: `y -> ../sentinel`, then `y/canary`.
    symlink("../sentinel", sb.root.join("y")).unwrap();
    for name in [
        "y/canary",
        "y/sub/passwd",
        "y/newdir/",
        "y/.wh.canary",
        "y/.wh..wh..opq",
    ] {
        let mut l = Layer::new();
        if name.ends_with('/') {
            l.dir(name);
        } else {
            l.file(name, b"pwned");
        }
        let err = assert_refused(apply(&sb.root, &l.bytes(), Compression::None, "evil"), name);
        assert!(
            matches!(
                err,
                LayerError::Refused {
                    reason: UnsafeEntry::SymlinkParent { .. },
                    ..
                }
            ),
            "{name}: {err}"
        );
    }
    sb.assert_outside_untouched();
}

#[test]
fn refuses_escaping_hardlinks() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.hardlink("h", "../sentinel/canary");
    let err = assert_refused(apply(&sb.root, &l.bytes(), Compression::None, "evil"), "h");
    assert!(
        matches!(
            err,
            LayerError::Refused {
                reason: UnsafeEntry::HardlinkEscapes { .. },
                ..
            }
        ),
        "{err}"
    );

    let abs = format!("{}/canary", sb.sentinel().display());
    let mut l = Layer::new();
    l.hardlink("h", &abs);
    let err = assert_refused(apply(&sb.root, &l.bytes(), Compression::None, "evil"), "h");
    assert!(
        matches!(
            err,
            LayerError::Refused {
                reason: UnsafeEntry::HardlinkEscapes { .. },
                ..
            }
        ),
        "{err}"
    );

    // Through a symlinked directory: `s -> /<sentinel>` is an acceptable in-root absolute link, but a hardlink
    // whose target path goes through it would link the host file into the image.
    let via = format!("/{}", sb.sentinel_rel());
    let mut l = Layer::new();
    l.symlink("s", &via).hardlink("h", "s/canary");
    let err = assert_refused(apply(&sb.root, &l.bytes(), Compression::None, "evil"), "h");
    assert!(
        matches!(&err, LayerError::Refused { reason: UnsafeEntry::HardlinkThroughSymlink { component, .. }, .. } if component == "s"),
        "{err}"
    );
    assert!(fs::symlink_metadata(sb.root.join("h")).is_err());
    assert_eq!(lmeta(&sb.sentinel().join("canary")).nlink(), 1);
    sb.assert_outside_untouched();
}

#[test]
fn replaces_an_outward_symlink_instead_of_writing_through_it() {
    let sb = Sandbox::new();
    let canary = sb.sentinel().join("canary");
    let mut lower = Layer::new();
    lower
        .symlink("evil", canary.to_str().unwrap())
        .symlink("evildir", sb.sentinel().to_str().unwrap())
        .symlink("evilnode", canary.to_str().unwrap());
    apply(&sb.root, &lower.bytes(), Compression::None, "lower").unwrap();

    let mut upper = Layer::new();
    upper
        .file_m("evil", b"replaced", M { mode: 0o600, ..DEF })
        .dir("evildir/")
        .file("evildir/canary", b"inside")
        .device(EntryType::Fifo, "evilnode", 0, 0, 0o644);
    apply(&sb.root, &upper.bytes(), Compression::None, "upper").unwrap();

    assert_eq!(fs::read(sb.root.join("evil")).unwrap(), b"replaced");
    assert!(lmeta(&sb.root.join("evil")).is_file());
    assert!(lmeta(&sb.root.join("evildir")).is_dir());
    assert_eq!(fs::read(sb.root.join("evildir/canary")).unwrap(), b"inside");
    assert!(lmeta(&sb.root.join("evilnode")).file_type().is_fifo());
    sb.assert_outside_untouched();
}

#[test]
fn refuses_replacing_the_root() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.symlink("./", "/");
    let err = assert_refused(apply(&sb.root, &l.bytes(), Compression::None, "evil"), "./");
    assert!(
        matches!(
            err,
            LayerError::Refused {
                reason: UnsafeEntry::ReplacesRoot,
                ..
            }
        ),
        "{err}"
    );
    assert!(lmeta(&sb.root).is_dir());
    sb.assert_outside_untouched();
}

#[test]
fn file_under_a_file_is_malformed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layer::new();
    l.file("f", b"").file("f/x", b"");
    let err = apply(tmp.path(), &l.bytes(), Compression::None, "evil").unwrap_err();
    assert!(matches!(err, LayerError::Malformed { .. }), "{err}");
    assert_eq!(err.entry(), Some("f/x"));
}

#[test]
fn hardlink_to_missing_target_is_malformed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layer::new();
    l.hardlink("h", "nothing/here");
    let err = apply(tmp.path(), &l.bytes(), Compression::None, "evil").unwrap_err();
    assert!(matches!(err, LayerError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("nothing/here"));
}

// ---------------------------------------------------------------- broken streams

#[test]
fn truncated_and_corrupt_streams_are_stream_errors() {
    let mut l = Layer::new();
    l.file("a", &[7u8; 100_000]).file("b", b"b");
    let tar = l.bytes();
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let blob = compress(&tar, c);
        let tmp = tempfile::tempdir().unwrap();
        let cut = &blob[..blob.len() / 2];
        let err = apply_layer(tmp.path(), cut, c, "cut", &opts()).unwrap_err();
        assert!(matches!(err, LayerError::Stream { .. }), "{c:?}: {err}");
        assert_eq!(err.layer(), "cut");
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut gz = compress(&tar, Compression::Gzip);
    let n = gz.len();
    gz[n - 6] ^= 0xff; // CRC32 trailer
    let err = apply_layer(tmp.path(), &gz[..], Compression::Gzip, "crc", &opts()).unwrap_err();
    assert!(matches!(err, LayerError::Stream { entry: Some(_), .. }), "{err}");
}

#[test]
fn oversized_pax_header_is_refused_without_buffering_it() {
    let mut l = Layer::new();
    let huge = vec![b'a'; (HEADER_BUDGET + 1024) as usize];
    l.file("before", b"").pax(&[("comment", &huge)]).file("victim", b"");
    let tmp = tempfile::tempdir().unwrap();
    let err = apply(tmp.path(), &l.bytes(), Compression::None, LAYER).unwrap_err();
    assert!(
        matches!(&err, LayerError::Stream { entry: Some(e), .. } if e == "before"),
        "{err}"
    );
    assert!(err.to_string().contains("MiB"), "{err}");
}

#[test]
fn unknown_entry_types_are_named() {
    let mut l = Layer::new();
    l.push(Layer::header(EntryType::new(b'D'), b"dumpdir", DEF, 0), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let err = apply(tmp.path(), &l.bytes(), Compression::None, LAYER).unwrap_err();
    assert!(
        matches!(&err, LayerError::UnsupportedEntry { type_flag: 'D', entry, .. } if entry == "dumpdir"),
        "{err}"
    );
}

#[test]
fn missing_root_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let err = apply_layer(&tmp.path().join("absent"), &[][..], Compression::None, LAYER, &opts()).unwrap_err();
    assert!(matches!(err, LayerError::Root { .. }), "{err}");
}

#[test]
fn empty_layer_is_fine() {
    let tmp = tempfile::tempdir().unwrap();
    let stats = apply_layer(tmp.path(), &[][..], Compression::Gzip, LAYER, &opts()).unwrap();
    assert_eq!(stats, ApplyStats::default());
    let tar = Layer::new().bytes();
    assert_eq!(
        apply(tmp.path(), &tar, Compression::Zstd, LAYER).unwrap(),
        ApplyStats::default()
    );
}

/// The same layers give the same tree whenever they are applied: directories a layer
/// changes without listing keep their times, implicitly created ones take the entry's.
#[test]
fn directory_times_do_not_depend_on_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let old = M {
        mtime: 1_500_000_000,
        ..DIRM
    };
    let lower = Layer::new()
        .dir_m("etc", old)
        .file("etc/gone", b"x")
        .file("etc/keep", b"y")
        .bytes();
    apply(&root, &lower, Compression::None, "lower").unwrap();
    assert_eq!(lmeta(&root.join("etc")).mtime(), 1_500_000_000);

    // Upper layer: a whiteout and a new file in etc/ (not listed), and a file in a
    // directory that does not exist yet and is not listed either.
    let new_file = M {
        mtime: 1_700_000_000,
        ..DEF
    };
    let upper = Layer::new()
        .file("etc/.wh.gone", b"")
        .file_m("etc/new", b"z", new_file)
        .file_m("opt/app/bin", b"#!", new_file)
        .bytes();
    apply(&root, &upper, Compression::None, "upper").unwrap();
    assert!(!root.join("etc/gone").exists());
    assert_eq!(
        lmeta(&root.join("etc")).mtime(),
        1_500_000_000,
        "unlisted parent keeps its time"
    );
    assert_eq!(
        lmeta(&root.join("opt")).mtime(),
        1_700_000_000,
        "implicit dir takes the entry's time"
    );
    assert_eq!(lmeta(&root.join("opt/app")).mtime(), 1_700_000_000);
}

/// Fuzzing (issue 12, parts 6 and 7): layers of random entries — names built from
/// climbing pieces (`..`, the sentinel's absolute path, whiteouts), symlinks and hard
/// links aimed anywhere, directories, files, one layer applied over another — are
/// applied or refused; nothing panics and nothing outside the image root changes.
/// Random bytes as a layer are an error, not a panic.
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Kind {
        File,
        Dir,
        Symlink(String),
        Hardlink(String),
    }

    fn piece(sentinel_abs: String) -> impl Strategy<Value = String> {
        prop_oneof![
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("l".to_owned()),
            Just(".wh.a".to_owned()),
            Just(".wh..wh..opq".to_owned()),
            Just(sentinel_abs),
            "[a-z]{1,3}",
        ]
    }

    fn path(s: String) -> impl Strategy<Value = String> {
        (
            prop_oneof![Just(""), Just("/"), Just("./")],
            proptest::collection::vec(piece(s), 1..4),
        )
            .prop_map(|(lead, p)| format!("{lead}{}", p.join("/")))
    }

    fn entry(s: String) -> impl Strategy<Value = (String, Kind)> {
        (
            path(s.clone()),
            prop_oneof![
                3 => Just(Kind::File),
                2 => Just(Kind::Dir),
                2 => path(s.clone()).prop_map(Kind::Symlink),
                1 => path(s).prop_map(Kind::Hardlink),
            ],
        )
    }

    fn build(entries: &[(String, Kind)]) -> Vec<u8> {
        let mut l = Layer::new();
        for (name, kind) in entries {
            // The ustar name field holds 100 bytes; longer names are not this test's point.
            if name.len() > 100 {
                continue;
            }
            match kind {
                Kind::File => {
                    l.file(name, b"fuzz");
                }
                Kind::Dir => {
                    l.dir(name);
                }
                Kind::Symlink(t) if t.len() <= 100 => {
                    l.symlink(name, t);
                }
                Kind::Hardlink(t) if t.len() <= 100 => {
                    l.hardlink(name, t);
                }
                _ => {}
            }
        }
        l.bytes()
    }

    /// Where the sandbox's sentinel lives, without its leading '/' (for names like
    /// `tmp/.../sentinel/canary` that a careless join would resolve to the real path).
    fn sentinel_piece() -> String {
        // A fixed placeholder replaced per case: the sandbox path differs per case.
        "SENTINEL".to_owned()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

        #[test]
        fn random_layers_never_touch_anything_outside_the_root(
            lower in proptest::collection::vec(entry(sentinel_piece()), 0..6),
            upper in proptest::collection::vec(entry(sentinel_piece()), 1..8),
        ) {
            let sb = Sandbox::new();
            let real = sb.sentinel_rel();
            let fix = |v: &[(String, Kind)]| -> Vec<(String, Kind)> {
                v.iter()
                    .map(|(n, k)| {
                        let k = match k {
                            Kind::Symlink(t) => Kind::Symlink(t.replace("SENTINEL", &real)),
                            Kind::Hardlink(t) => Kind::Hardlink(t.replace("SENTINEL", &real)),
                            other => other.clone(),
                        };
                        (n.replace("SENTINEL", &real), k)
                    })
                    .collect()
            };
            let _ = apply(&sb.root, &build(&fix(&lower)), Compression::None, "lower");
            let _ = apply(&sb.root, &build(&fix(&upper)), Compression::None, "evil");
            prop_assert_eq!(sb.outside(), sb.before.clone(), "something outside the image root changed");
        }

        #[test]
        fn random_bytes_are_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let sb = Sandbox::new();
            for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
                let _ = apply_layer(&sb.root, &bytes[..], c, "junk", &opts());
            }
            sb.assert_outside_untouched();
        }
    }
}
