//! The reader against layers built in memory: whiteouts, opaque directories, symlinks
//! inside and out of the image, hardlinks, missing files and layers, the size bound and
//! the cache.

use super::*;

/// A layer under construction (plain tar).
struct L(tar::Builder<Vec<u8>>);

impl L {
    fn new() -> L {
        L(tar::Builder::new(Vec::new()))
    }

    fn entry(mut self, path: &str, ty: tar::EntryType, link: Option<&str>, data: &[u8]) -> L {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_path(path).unwrap();
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_mode(if ty == tar::EntryType::Directory { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn file(self, path: &str, data: &str) -> L {
        self.entry(path, tar::EntryType::Regular, None, data.as_bytes())
    }

    fn dir(self, path: &str) -> L {
        self.entry(path, tar::EntryType::Directory, None, b"")
    }

    fn symlink(self, path: &str, target: &str) -> L {
        self.entry(path, tar::EntryType::Symlink, Some(target), b"")
    }

    fn hardlink(self, path: &str, target: &str) -> L {
        self.entry(path, tar::EntryType::Link, Some(target), b"")
    }

    /// Store in `cas`, gzipped when `gz`.
    fn put(self, cas: &Cas, gz: bool) -> LayerRef {
        let tar = self.0.into_inner().unwrap();
        let (bytes, mt) = if gz {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &tar).unwrap();
            (e.finish().unwrap(), "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (tar, "application/vnd.oci.image.layer.v1.tar")
        };
        let digest = cas.put_bytes(&bytes).unwrap();
        LayerRef {
            digest,
            media_type: mt.into(),
            size: bytes.len() as u64,
        }
    }
}

fn setup() -> (tempfile::TempDir, Cas) {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(&dir.path().join("cas")).unwrap();
    (dir, cas)
}

fn text(r: Content) -> String {
    String::from_utf8(r.expect("readable").to_vec()).unwrap()
}

#[test]
fn whiteouts_and_opaque_directories_hide_lower_layers() {
    let (_d, cas) = setup();
    let base = L::new()
        .dir("etc")
        .file("etc/passwd", "root:x:0:0\n")
        .file("etc/group", "root:x:0:\n")
        .file("etc/shells", "/bin/sh\n")
        .file("opt/x/old", "old")
        .file("srv/a/b", "b")
        .put(&cas, true);
    let mid = L::new()
        .file("etc/.wh.passwd", "")
        .file("opt/x/.wh..wh..opq", "")
        .file("opt/x/new", "new")
        .file("srv/.wh.a", "")
        // A whiteout never hides the same layer's entry, whichever comes first.
        .file("etc/shells", "/bin/bash\n")
        .file("etc/.wh.shells", "")
        .put(&cas, false);
    let top = L::new().file("etc/group", "wheel:x:10:\n").put(&cas, true);
    let files = ImageFiles::new(cas, Limits::default());
    let image = [base.clone(), mid.clone(), top.clone()];
    assert_eq!(
        files.read(&image, "/etc/passwd"),
        Err(FileError::NotFound {
            path: "/etc/passwd".into()
        }),
        "whited out by a higher layer"
    );
    assert_eq!(
        text(files.read(&image, "/etc/group")),
        "wheel:x:10:\n",
        "the top layer wins"
    );
    assert_eq!(text(files.read(&image, "/etc/shells")), "/bin/bash\n");
    assert!(
        matches!(files.read(&image, "/opt/x/old"), Err(FileError::NotFound { .. })),
        "opaque dir"
    );
    assert_eq!(text(files.read(&image, "/opt/x/new")), "new");
    assert!(
        matches!(files.read(&image, "/srv/a/b"), Err(FileError::NotFound { .. })),
        "whited-out dir"
    );
    // Without the middle layer the base shows through.
    assert_eq!(
        text(files.read(std::slice::from_ref(&base), "/etc/passwd")),
        "root:x:0:0\n"
    );
    // A layer that puts a path back over a whiteout shows its own content.
    let back = L::new().file("etc/passwd", "back\n").put(&cas_of(&files), false);
    assert_eq!(text(files.read(&[base, mid, top, back], "/etc/passwd")), "back\n");
}

fn cas_of(f: &ImageFiles) -> Cas {
    f.cas.clone()
}

#[test]
fn symlinks_resolve_inside_the_image_and_never_out() {
    let (_d, cas) = setup();
    let base = L::new()
        .file("usr/share/base-passwd/passwd", "from-usr\n")
        .file("usr/lib/os-release", "ID=test\n")
        .symlink("lib", "usr/lib")
        .dir("etc")
        .symlink("etc/passwd", "../usr/share/base-passwd/passwd")
        .symlink("etc/abs", "/usr/share/base-passwd/passwd")
        .symlink("etc/os-release", "../lib/os-release")
        // Absolute targets are the image's root: the head's own /etc/hostname is never read.
        .symlink("etc/hostfile", "/etc/hostname")
        .symlink("etc/escape", "../../../etc/hostname")
        .symlink("etc/deep", "../../../../../../../etc/passwd")
        .symlink("etc/loop1", "loop2")
        .symlink("etc/loop2", "loop1")
        .symlink("etc/dir", "/usr")
        .put(&cas, true);
    let image = [base];
    let files = ImageFiles::new(cas, Limits::default());
    assert_eq!(text(files.read(&image, "/etc/passwd")), "from-usr\n");
    assert_eq!(text(files.read(&image, "/etc/abs")), "from-usr\n");
    assert_eq!(
        text(files.read(&image, "/etc/os-release")),
        "ID=test\n",
        "through a dir symlink"
    );
    assert_eq!(text(files.read(&image, "/lib/os-release")), "ID=test\n");
    assert!(matches!(
        files.read(&image, "/etc/hostfile"),
        Err(FileError::NotFound { .. })
    ));
    for p in ["/etc/escape", "/etc/deep"] {
        match files.read(&image, p) {
            Err(FileError::Escapes { link, .. }) => assert_eq!(link, p),
            other => panic!("{p}: {other:?}"),
        }
    }
    assert!(matches!(files.read(&image, "/etc/loop1"), Err(FileError::Loop { .. })));
    assert!(matches!(
        files.read(&image, "/etc/dir"),
        Err(FileError::NotAFile { kind: "directory", .. })
    ));
    assert!(matches!(
        files.read(&image, "/etc/passwd/x"),
        Err(FileError::NotADirectory { .. })
    ));
    assert!(matches!(
        files.read(&image, "/../etc/passwd"),
        Err(FileError::BadPath { .. })
    ));
    assert!(matches!(
        files.read(&image, "etc/passwd"),
        Err(FileError::BadPath { .. })
    ));
}

#[test]
fn hardlinks_read_their_target() {
    let (_d, cas) = setup();
    let base = L::new().file("bin/busybox", "BB").put(&cas, false);
    let top = L::new()
        .hardlink("bin/sh", "bin/busybox")
        .file("etc/real", "R")
        .hardlink("etc/alias", "etc/real")
        .put(&cas, false);
    let files = ImageFiles::new(cas, Limits::default());
    assert_eq!(text(files.read(&[base.clone(), top.clone()], "/bin/sh")), "BB");
    assert_eq!(text(files.read(&[base, top], "/etc/alias")), "R");
}

#[test]
fn missing_files_and_layers_and_the_size_bound() {
    let (_d, cas) = setup();
    let l = L::new()
        .file("etc/big", &"x".repeat(100))
        .file("etc/small", "ok")
        .put(&cas, true);
    let files = ImageFiles::new(
        cas,
        Limits {
            max_file: 64,
            ..Limits::default()
        },
    );
    assert!(matches!(
        files.read(std::slice::from_ref(&l), "/etc/nope"),
        Err(FileError::NotFound { .. })
    ));
    assert!(matches!(
        files.read(std::slice::from_ref(&l), "/nodir/nope"),
        Err(FileError::NotFound { .. })
    ));
    assert_eq!(
        files.read(std::slice::from_ref(&l), "/etc/big"),
        Err(FileError::TooLarge {
            path: "/etc/big".into(),
            size: 100,
            limit: 64
        })
    );
    assert_eq!(text(files.read(std::slice::from_ref(&l), "/etc/small")), "ok");
    let absent = LayerRef {
        digest: Digest::of(b"not stored"),
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        size: 10,
    };
    let r = files.read(&[l.clone(), absent.clone()], "/etc/small");
    assert_eq!(r, Err(FileError::LayerMissing { digest: absent.digest }));
    // Not cached: once the layer arrives the read succeeds.
    let stored = L::new().file("etc/small", "newer").put(&files.cas, false);
    let arrived = LayerRef {
        digest: stored.digest,
        ..absent
    };
    assert_eq!(text(files.read(&[l, arrived], "/etc/small")), "newer");
}

#[test]
fn reads_are_cached_per_image_and_path() {
    let (_d, cas) = setup();
    let a = L::new()
        .file("etc/passwd", "a\n")
        .file("etc/group", "g\n")
        .put(&cas, true);
    let b = L::new().file("etc/passwd", "b\n").put(&cas, true);
    let files = ImageFiles::new(cas, Limits::default());
    assert_eq!(text(files.read(std::slice::from_ref(&a), "/etc/passwd")), "a\n");
    let first = files.stats();
    assert_eq!(first.layer_passes, 2, "one pass to index, one to read the data");
    for _ in 0..1000 {
        assert_eq!(text(files.read(std::slice::from_ref(&a), "/etc/passwd")), "a\n");
    }
    let after = files.stats();
    assert_eq!(after.layer_passes, first.layer_passes, "a cached read touches no layer");
    assert_eq!(after.hits, first.hits + 1000);
    // Another path of the same image: the index is kept, only the data is read.
    assert_eq!(text(files.read(std::slice::from_ref(&a), "/etc/group")), "g\n");
    assert_eq!(files.stats().layer_passes, after.layer_passes + 1);
    // A different image (another layer on top) is another key.
    assert_eq!(text(files.read(&[a.clone(), b.clone()], "/etc/passwd")), "b\n");
    // Absent files are remembered too.
    let before = files.stats().layer_passes;
    for _ in 0..10 {
        assert!(files.read(std::slice::from_ref(&a), "/etc/shadow").is_err());
    }
    assert_eq!(files.stats().layer_passes, before);
}

#[test]
fn the_content_cache_stays_within_its_bound() {
    let (_d, cas) = setup();
    let mut l = L::new();
    for i in 0..20 {
        l = l.file(&format!("f{i}"), &"y".repeat(1000));
    }
    let l = l.put(&cas, false);
    let files = ImageFiles::new(
        cas,
        Limits {
            cache_bytes: 5 * 1064,
            ..Limits::default()
        },
    );
    for i in 0..20 {
        files.read(std::slice::from_ref(&l), &format!("/f{i}")).unwrap();
    }
    let caches = lock(&files.caches);
    assert!(caches.files.weight <= 5 * 1064, "{}", caches.files.weight);
    assert_eq!(caches.files.map.len(), 5);
}
