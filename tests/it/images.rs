//! Images end to end through `wwctl` on an in-process 3-head cluster: directory,
//! registry and archive imports, the catalog on every head, the built `cpio.gz`
//! unpacked by GNU cpio, nodes using images, a head rebuilding an image from layers
//! fetched from a peer, and `image exec`.

use std::path::{Path, PathBuf};
use std::process::Command;

use wulfpack::state::ImageEntry;

use crate::harness::{eventually, ok, settings, ww, Cluster};
use crate::registry::{build_test_image, ensure_packages, is_root, Registry};

/// A small root tree: files, a symlink, a hardlink, an excluded cache, a kernel.
pub(crate) fn small_root(root: &Path) {
    for d in [
        "etc/warewulf",
        "var/cache/apt",
        "boot",
        "lib/modules/6.1.0-13-amd64",
        "usr/bin",
        "bin",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("etc/hostname"), "node\n").unwrap();
    std::fs::write(root.join("etc/warewulf/excludes"), "# not in the image\n/var/cache/*\n").unwrap();
    std::fs::write(root.join("var/cache/apt/big.bin"), vec![1u8; 4096]).unwrap();
    std::fs::write(root.join("boot/vmlinuz-6.1.0-13-amd64"), b"not really a kernel").unwrap();
    std::fs::write(root.join("boot/vmlinuz-6.1.0-9-amd64"), b"an older kernel").unwrap();
    std::fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    std::fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool2")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/tool", root.join("bin/tool")).unwrap();
}

/// The catalog entry as the head that answers sees it.
async fn entry(c: &Cluster, name: &str) -> ImageEntry {
    let out = ok(c, &["-o", "json", "image", "show", name]).await;
    let v: wulfpack::state::Versioned<ImageEntry> = serde_json::from_str(&out).unwrap();
    v.value
}

/// Unpack an artifact blob with GNU gzip + cpio; None (with a printed reason) without them.
fn unpack(blob: &Path, into: &Path) -> Option<PathBuf> {
    if !ensure_packages(&["cpio", "gzip"]) {
        eprintln!("SKIP: GNU cpio is not available to unpack the image");
        return None;
    }
    std::fs::create_dir_all(into).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -dc '{}' | cpio -idm --quiet --no-absolute-filenames",
            blob.display()
        ))
        .current_dir(into)
        .status()
        .unwrap();
    assert!(st.success(), "gzip | cpio failed");
    Some(into.to_path_buf())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directory_import_catalog_build_nodes_and_peer_rebuild() {
    // About fetching on demand: no prefetch, so the heads that did not write a blob
    // lack it until something asks (tests/it/artifacts.rs covers the prefetch).
    let c = Cluster::start_with(3, settings(), |cfg| cfg.artifacts.prefetch = false).await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_root(&src);

    let out = ok(&c, &["image", "import", src.to_str().unwrap(), "img1"]).await;
    assert!(
        out.contains("Imported image img1") && out.contains("kernel 6.1.0-13"),
        "{out}"
    );
    let e = entry(&c, "img1").await;
    let art = e.artifact.clone().expect("built on import");
    assert_eq!(e.kernel.as_ref().unwrap().path, "boot/vmlinuz-6.1.0-13-amd64");
    let versions: Vec<&str> = e.kernels.iter().map(|k| k.version.as_str()).collect();
    assert_eq!(versions, ["6.1.0-13", "6.1.0-9"], "every kernel recorded, newest first");
    assert_ne!(e.kernels[0].digest, e.kernels[1].digest);

    // Every head has the catalog entry in its own state machine.
    for i in 0..3 {
        eventually(10, "catalog replicated", || async {
            c.ctx(i).sm.read(|s| s.images.contains_key("img1"))
        })
        .await;
    }

    // The artifact is a cpio.gz GNU cpio unpacks to the tree, minus the excludes.
    let blob = c.ctx(0).cas.path(&art.digest);
    if let Some(dir) = unpack(&blob, &tmp.path().join("unpacked")) {
        assert_eq!(std::fs::read_to_string(dir.join("etc/hostname")).unwrap(), "node\n");
        assert_eq!(
            std::fs::read_link(dir.join("bin/tool")).unwrap(),
            Path::new("/usr/bin/tool")
        );
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (
            std::fs::metadata(dir.join("usr/bin/tool")).unwrap(),
            std::fs::metadata(dir.join("usr/bin/tool2")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "hardlink kept");
        assert!(dir.join("var/cache").is_dir());
        assert!(
            !dir.join("var/cache/apt").exists(),
            "excluded by /etc/warewulf/excludes"
        );
    }

    // Nodes use it; list counts them; delete is refused while used.
    ok(&c, &["node", "add", "n[1-2]"]).await;
    ok(&c, &["node", "set", "n[1-2]", "--image", "img1", "-y"]).await;
    // Warewulf's views: names only by default; -l, -k, -s (-c, --compressed) add columns.
    let list = ok(&c, &["image", "list"]).await;
    assert_eq!(list.lines().next(), Some("IMAGE NAME"), "{list}");
    assert!(list.lines().any(|l| l == "img1"), "{list}");
    let list = ok(&c, &["image", "list", "-l"]).await;
    assert!(
        list.starts_with("IMAGE NAME  NODES  KERNEL VERSION  CREATION TIME"),
        "{list}"
    );
    let row = list.lines().find(|l| l.starts_with("img1")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "2", "two nodes use it: {list}");
    assert_eq!(cols[2], "6.1.0-13", "{list}");
    assert_eq!(cols[7], "UTC", "Warewulf's time format, 27 Nov 26 10:04 UTC: {list}");
    let k = ok(&c, &["image", "list", "-k", "img1"]).await;
    assert_eq!(
        k.lines().nth(1).map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["img1", "2", "6.1.0-13"]),
        "{k}"
    );
    let all = ok(&c, &["image", "show", "--all", "img1"]).await;
    assert!(
        all.starts_with("Name: img1\nKernelVersion: 6.1.0-13\nRootfs: "),
        "{all}"
    );
    assert!(all.contains("\nNr nodes: 2\nNodes: [n1 n2]\n"), "{all}");
    let size_of = |out: &str| -> String {
        let row = out.lines().find(|l| l.starts_with("img1")).unwrap();
        row.split_whitespace().skip(2).collect::<Vec<_>>().join(" ")
    };
    let sizes = [
        size_of(&ok(&c, &["image", "list", "-s"]).await),
        size_of(&ok(&c, &["image", "list", "--compressed"]).await),
        size_of(&ok(&c, &["image", "list", "-c"]).await),
    ];
    assert_eq!(sizes[1], wulfpack::image::human(art.size), "compressed: the artifact");
    assert!(sizes.iter().all(|s| s.ends_with('B')), "{sizes:?}");
    assert_ne!(sizes[0], sizes[1], "uncompressed and compressed differ: {sizes:?}");
    let e2 = ww(&c, &["image", "delete", "img1", "-y"]).await.unwrap_err();
    assert!(e2.contains("still used by") && e2.contains("node n1"), "{e2}");

    // Build again: nothing changed, same artifact.
    let out = ok(&c, &["image", "build", "img1"]).await;
    assert!(out.contains("Built image img1"), "{out}");
    assert_eq!(entry(&c, "img1").await.artifact.unwrap().digest, art.digest);

    // Copy, rename (nodes follow), kernels.
    ok(&c, &["image", "copy", "img1", "img2"]).await;
    ok(&c, &["image", "rename", "img1", "img3"]).await;
    let nodes = ok(&c, &["node", "list", "-l"]).await;
    assert!(nodes.contains("img3") && !nodes.contains("img1"), "{nodes}");
    let k = ok(&c, &["image", "kernels", "img3"]).await;
    assert!(k.contains("6.1.0-13") && k.contains("yes"), "{k}");

    // A head that never saw the layers rebuilds from blobs fetched from a peer and
    // gets the very same artifact (the build is deterministic).
    let layer = e.layers[0].digest;
    assert!(!c.ctx(2).cas.contains(&layer));
    let rebuilt = c
        .ctx(2)
        .images
        .build("img2", true, wulfpack::image::Progress::none())
        .await
        .unwrap();
    assert!(c.ctx(2).cas.contains(&layer), "layer fetched from a peer");
    assert_eq!(rebuilt.artifact.unwrap().digest, art.digest, "same tree, same bytes");

    // Bad input: a missing source, a duplicate name.
    let e3 = ww(&c, &["image", "import", "/nonexistent/dir", "x"]).await.unwrap_err();
    assert!(e3.contains("/nonexistent/dir"), "{e3}");
    let e4 = ww(&c, &["image", "import", src.to_str().unwrap(), "img2"])
        .await
        .unwrap_err();
    assert!(e4.contains("already exists") && e4.contains("--force"), "{e4}");
    ok(&c, &["image", "import", "--force", src.to_str().unwrap(), "img2"]).await;
    ok(&c, &["image", "delete", "img3", "-y", "--force"]).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_and_archive_imports_build_the_same_image() {
    let Some(reg) = Registry::start() else { return };
    let base = |root: &Path| {
        small_root(root);
        std::fs::write(root.join("etc/gone"), b"deleted by the next layer").unwrap();
    };
    // Layer 2 adds a file and deletes one of layer 1 (umoci records a whiteout).
    let top = |root: &Path| {
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/motd"), b"layer two\n").unwrap();
        std::fs::remove_file(root.join("etc/gone")).unwrap();
    };
    let img = build_test_image(&reg, "test/two", &[&base, &top]);
    let c = Cluster::start(3, settings()).await;
    let docker = format!("docker://{}", img.reference);
    let out = ok(&c, &["image", "import", "--nohttps", &docker, "fromreg"]).await;
    assert!(out.contains("Imported image fromreg"), "{out}");
    let oci = format!("oci-archive:{}", img.oci_archive.display());
    ok(&c, &["image", "import", &oci, "fromoci"]).await;
    let dock = format!("docker-archive:{}", img.docker_archive.display());
    ok(&c, &["image", "import", &dock, "fromdocker"]).await;

    let a = entry(&c, "fromreg").await;
    let b = entry(&c, "fromoci").await;
    let d = entry(&c, "fromdocker").await;
    assert_eq!(a.layers.len(), 2);
    assert_eq!(a.artifact.as_ref().unwrap().digest, b.artifact.as_ref().unwrap().digest);
    assert_eq!(a.artifact.as_ref().unwrap().digest, d.artifact.as_ref().unwrap().digest);
    assert_eq!(a.kernel.as_ref().unwrap().version, "6.1.0-13");

    let tmp = tempfile::tempdir().unwrap();
    if let Some(dir) = unpack(&c.ctx(0).cas.path(&a.artifact.unwrap().digest), tmp.path()) {
        assert_eq!(std::fs::read(dir.join("etc/motd")).unwrap(), b"layer two\n");
        assert!(!dir.join("etc/gone").exists(), "whiteout applied");
        assert!(dir.join("etc/hostname").is_file());
    }

    // Wrong tag: a clear error, nothing in the catalog.
    let bad = format!("docker://{}/test/two:nope", reg.addr);
    let e = ww(&c, &["image", "import", "--nohttps", &bad, "nope"])
        .await
        .unwrap_err();
    assert!(e.to_lowercase().contains("not found") || e.contains("nope"), "{e}");
    assert!(ww(&c, &["image", "show", "nope"]).await.is_err());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_changes_the_image_and_rebuilds_it() {
    if !is_root() {
        eprintln!("SKIP: image exec needs root (mount namespace, chroot)");
        return;
    }
    if !ensure_packages(&["busybox-static"]) {
        eprintln!("SKIP: busybox-static is not available for a shell inside the image");
        return;
    }
    let c = Cluster::start(3, settings()).await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_root(&src);
    std::fs::copy("/bin/busybox", src.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", src.join("bin/sh")).unwrap();
    ok(&c, &["image", "import", src.to_str().unwrap(), "ex"]).await;
    let before = entry(&c, "ex").await;

    let out = ok(
        &c,
        &["image", "exec", "ex", "--", "/bin/sh", "-c", "echo changed > /etc/motd"],
    )
    .await;
    assert!(out.contains("Rebuilt image ex"), "{out}");
    let after = entry(&c, "ex").await;
    assert_ne!(after.artifact.as_ref().unwrap().digest, before.artifact.unwrap().digest);
    assert_eq!(after.layers.len(), 1, "the changed tree is captured as one layer");
    assert!(after.source.ends_with("+exec"));
    let dir = unpack(
        &c.ctx(0).cas.path(&after.artifact.clone().unwrap().digest),
        &tmp.path().join("u"),
    );
    if let Some(dir) = dir {
        assert_eq!(std::fs::read_to_string(dir.join("etc/motd")).unwrap(), "changed\n");
    }

    // A failing command leaves the image as it was.
    let e = ww(
        &c,
        &[
            "image",
            "exec",
            "ex",
            "--",
            "/bin/sh",
            "-c",
            "echo no > /etc/motd; exit 3",
        ],
    )
    .await
    .unwrap_err();
    assert!(e.contains("unchanged"), "{e}");
    assert_eq!(entry(&c, "ex").await.artifact, after.artifact);
    c.shutdown().await;
}

/// `image exec --bind` (rw, ro, copy) shows host paths inside the command and leaves
/// nothing of them in the image; `--build=false` keeps the changes without a build;
/// `image copy|rename --build` build the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_binds_and_build_flags() {
    if !is_root() {
        eprintln!("SKIP: image exec needs root (mount namespace, chroot)");
        return;
    }
    if !ensure_packages(&["busybox-static"]) {
        eprintln!("SKIP: busybox-static is not available for a shell inside the image");
        return;
    }
    let c = Cluster::start(1, settings()).await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_root(&src);
    std::fs::copy("/bin/busybox", src.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", src.join("bin/sh")).unwrap();
    ok(&c, &["image", "import", src.to_str().unwrap(), "bx"]).await;
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("data"), "from the host\n").unwrap();
    let data = host.join("data");
    let (rw, ro, copy) = (
        format!("{}:/mnt/hostdir", host.display()),
        format!("{}:/opt/ro-data:ro", data.display()),
        format!("{}:/etc/copied:copy", data.display()),
    );
    let out = ok(
        &c,
        &[
            "image",
            "exec",
            "bx",
            "--bind",
            &rw,
            "--bind",
            &ro,
            "--bind",
            &copy,
            "--",
            "/bin/sh",
            "-c",
            "cat /mnt/hostdir/data /opt/ro-data /etc/copied > /etc/motd; echo seen > /mnt/hostdir/written; \
             if echo x > /opt/ro-data; then exit 9; fi",
        ],
    )
    .await;
    assert!(out.contains("Rebuilt image bx"), "{out}");
    assert_eq!(
        std::fs::read_to_string(host.join("written")).unwrap(),
        "seen\n",
        "rw bind writes through"
    );
    assert_eq!(
        std::fs::read_to_string(&data).unwrap(),
        "from the host\n",
        "ro bind kept the file"
    );
    let e = entry(&c, "bx").await;
    if let Some(dir) = unpack(
        &c.ctx(0).cas.path(&e.artifact.clone().unwrap().digest),
        &tmp.path().join("u1"),
    ) {
        assert_eq!(
            std::fs::read_to_string(dir.join("etc/motd")).unwrap(),
            "from the host\nfrom the host\nfrom the host\n"
        );
        for gone in ["mnt/hostdir", "opt/ro-data", "etc/copied", "opt"] {
            assert!(!dir.join(gone).exists(), "{gone} of a bind stayed in the image");
        }
    }

    // --build=false: the layers change, the archive does not; `image build` builds.
    let out = ok(
        &c,
        &[
            "image",
            "exec",
            "bx",
            "--build=false",
            "--",
            "/bin/sh",
            "-c",
            "echo later > /etc/motd",
        ],
    )
    .await;
    assert!(out.contains("without a build"), "{out}");
    let kept = entry(&c, "bx").await;
    assert_eq!(kept.artifact, e.artifact, "no build");
    assert_ne!(kept.layers, e.layers, "the change is recorded");
    let built = ok(&c, &["image", "build", "bx"]).await;
    assert!(built.contains("Built image bx"), "{built}");
    assert_ne!(entry(&c, "bx").await.artifact, e.artifact);

    let out = ok(&c, &["image", "copy", "bx", "bx2", "--build"]).await;
    assert!(
        out.contains("Copied image bx to bx2") && out.contains("Built image bx2"),
        "{out}"
    );
    let out = ok(&c, &["image", "rename", "bx2", "bx3", "-b"]).await;
    assert!(
        out.contains("Renamed image bx2 to bx3") && out.contains("Built image bx3"),
        "{out}"
    );
    assert!(entry(&c, "bx3").await.artifact.is_some());
    c.shutdown().await;
}

/// `image exec --node`: the command sees the image with the node's system and runtime
/// overlays rendered over it (through the image's symlinks, as unpacking at boot puts
/// them), cannot change it, and the image stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_node_shows_the_nodes_overlays_read_only() {
    if !is_root() {
        eprintln!("SKIP: image exec needs root (mount namespace, chroot, overlayfs)");
        return;
    }
    if !ensure_packages(&["busybox-static"]) {
        eprintln!("SKIP: busybox-static is not available for a shell inside the image");
        return;
    }
    let c = Cluster::start(1, settings()).await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_root(&src);
    std::fs::copy("/bin/busybox", src.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", src.join("bin/sh")).unwrap();
    std::fs::create_dir_all(src.join("usr/lib")).unwrap();
    std::fs::write(src.join("usr/lib/libimage.so"), "of the image\n").unwrap();
    std::os::unix::fs::symlink("usr/lib", src.join("lib64")).unwrap();
    ok(&c, &["image", "import", src.to_str().unwrap(), "nv"]).await;
    let before = entry(&c, "nv").await;

    let file = |name: &str, body: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_owned()
    };
    ok(&c, &["overlay", "create", "sys1"]).await;
    let hostname = file("hostname.ww", "{{ Id }}\n");
    ok(&c, &["overlay", "import", "-p", "sys1", &hostname, "/etc/hostname.ww"]).await;
    let lib = file("libnode.so", "of the overlay\n");
    ok(&c, &["overlay", "import", "-p", "sys1", &lib, "/lib64/libnode.so"]).await;
    ok(&c, &["overlay", "create", "rt1"]).await;
    let rt = file("runtime.ww", "runtime of {{ Id }}\n");
    ok(&c, &["overlay", "import", "-p", "rt1", &rt, "/etc/runtime.ww"]).await;
    ok(
        &c,
        &[
            "node",
            "add",
            "n1",
            "--system-overlays",
            "sys1",
            "--runtime-overlays",
            "rt1",
        ],
    )
    .await;

    let host = tmp.path().join("host");
    std::fs::create_dir(&host).unwrap();
    let bind = format!("{}:/mnt/out", host.display());
    let out = ok(
        &c,
        &[
            "image",
            "exec",
            "nv",
            "--node",
            "n1",
            "--bind",
            &bind,
            "--",
            "/bin/sh",
            "-c",
            "cat /etc/hostname /etc/runtime /lib64/libnode.so /usr/lib/libimage.so > /mnt/out/seen; \
             test -L /lib64 && echo link >> /mnt/out/seen; \
             if echo x > /etc/hostname; then echo wrote >> /mnt/out/seen; fi; \
             if touch /new; then echo created >> /mnt/out/seen; fi; true",
        ],
    )
    .await;
    assert!(out.contains("Image nv unchanged"), "{out}");
    assert_eq!(
        std::fs::read_to_string(host.join("seen")).unwrap(),
        "n1\nruntime of n1\nof the overlay\nof the image\nlink\n",
        "the node's files over the image, the image's symlink kept, nothing writable"
    );
    let after = entry(&c, "nv").await;
    assert_eq!(after.artifact, before.artifact, "no rebuild");
    assert_eq!(after.layers, before.layers, "nothing captured");

    // The image itself, without --node, still has its own files only.
    ok(
        &c,
        &[
            "image",
            "exec",
            "nv",
            "--bind",
            &bind,
            "--build=false",
            "--",
            "/bin/sh",
            "-c",
            "cat /etc/hostname > /mnt/out/plain; test -e /etc/runtime || echo none >> /mnt/out/plain",
        ],
    )
    .await;
    assert_eq!(std::fs::read_to_string(host.join("plain")).unwrap(), "node\nnone\n");

    let e = ww(&c, &["image", "exec", "nv", "--node", "nosuch", "--", "/bin/true"])
        .await
        .unwrap_err();
    assert!(e.contains("nosuch") && e.contains("does not exist"), "{e}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blob_gc_removes_what_no_image_references() {
    let c = Cluster::start_with(3, settings(), |cfg| {
        cfg.cas_gc_grace_secs = 0;
        cfg.cas_gc_interval_secs = 1;
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    small_root(&a);
    small_root(&b);
    std::fs::write(b.join("etc/hostname"), "other\n").unwrap();
    ok(&c, &["image", "import", a.to_str().unwrap(), "keep"]).await;
    ok(&c, &["image", "import", b.to_str().unwrap(), "drop"]).await;
    let keep = entry(&c, "keep").await;
    let drop = entry(&c, "drop").await;
    let cas = &c.ctx(0).cas;
    let drop_artifact = drop.artifact.unwrap().digest;
    assert!(cas.contains(&drop_artifact));
    ok(&c, &["image", "delete", "drop", "-y"]).await;
    eventually(10, "GC removed the deleted image's blobs", || async {
        !cas.contains(&drop_artifact)
    })
    .await;
    for d in keep.blobs() {
        assert!(cas.contains(&d), "referenced blob {d} kept");
    }
    c.shutdown().await;
}

/// The head's HTTP listener serves Warewulf's boot routes from the boot view and the
/// CAS; a head lacking an image blob fetches it from a peer and then serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heads_serve_boot_routes_and_fetch_missing_blobs_from_peers() {
    // About fetching on demand: no prefetch, so the heads that did not write a blob
    // lack it until something asks (tests/it/artifacts.rs covers the prefetch).
    let c = Cluster::start_with(3, settings(), |cfg| cfg.artifacts.prefetch = false).await;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_root(&src);
    ok(&c, &["image", "import", src.to_str().unwrap(), "bootimg"]).await;
    let mac = "52:54:00:12:34:56";
    ok(
        &c,
        &[
            "node",
            "add",
            "b1",
            "--image",
            "bootimg",
            "--hwaddr",
            mac,
            "-A",
            "quiet,console=ttyS0",
        ],
    )
    .await;
    let e = entry(&c, "bootimg").await;
    let art = e.artifact.unwrap().digest;
    let http = reqwest::Client::new();
    let get = |i: usize, path: String| {
        let url = format!("http://{}{path}", c.cfgs[i].http_listen);
        let http = http.clone();
        async move { http.get(url).send().await.unwrap() }
    };

    // Head 0 imported the image: script, kernel and image are all there.
    let view0 = c.ctx(0).view.clone();
    eventually(5, "boot view has b1", || async {
        view0.borrow().node_by_mac(mac).is_some()
    })
    .await;
    let script = get(0, format!("/ipxe/{mac}")).await;
    assert_eq!(script.status(), 200);
    let script = script.text().await.unwrap();
    assert!(
        script.contains(&format!("wwid={mac}")) && script.contains("console=ttyS0"),
        "{script}"
    );
    // The URL DHCP hands to iPXE writes the MAC with dashes (Warewulf's form).
    let dashed = get(0, format!("/ipxe/{}", mac.replace(':', "-"))).await;
    assert_eq!(dashed.status(), 200);
    assert!(dashed.text().await.unwrap().contains("console=ttyS0"));
    let img = get(0, format!("/image/{mac}?compress=gz")).await;
    assert_eq!(img.status(), 200);
    assert_eq!(
        img.bytes().await.unwrap(),
        std::fs::read(c.ctx(0).cas.path(&art)).unwrap()
    );
    assert_eq!(
        get(0, "/kernel/b1".into()).await.bytes().await.unwrap().as_ref(),
        b"not really a kernel"
    );

    // Head 2 never had the blob: the first request starts a peer fetch, then it serves.
    assert!(!c.ctx(2).cas.contains(&art));
    let view2 = c.ctx(2).view.clone();
    eventually(5, "head 2 boot view has b1", || async {
        view2.borrow().node_by_mac(mac).is_some()
    })
    .await;
    let first = get(2, format!("/image/{mac}")).await.status();
    assert!(first == 200 || first.is_server_error() || first == 404, "{first}");
    let cas2 = c.ctx(2).cas.clone();
    eventually(10, "head 2 fetched the image from a peer", || async {
        cas2.contains(&art)
    })
    .await;
    assert_eq!(get(2, format!("/image/{mac}")).await.status(), 200);

    // Status: each head records what it sent; `wwctl node status` merges all heads
    // and shows the most recent event (head 3 sent the image last).
    let st = get(0, "/status".into()).await.text().await.unwrap();
    assert!(st.contains("b1"), "{st}");
    let status = ok(&c, &["node", "status"]).await;
    let row = status
        .lines()
        .find(|l| l.starts_with("b1"))
        .unwrap_or_else(|| panic!("{status}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!((cols[1], cols[5]), ("IMAGE", "3"), "{status}");
    assert!(
        ok(&c, &["node", "status", "nobody"]).await.lines().count() == 1,
        "filtered to nothing"
    );
    // --history: every head's events of b1, in time order, the image from head 3 last.
    let hist = ok(&c, &["node", "status", "b1", "--history"]).await;
    let rows: Vec<Vec<&str>> = hist.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert!(
        rows.len() >= 4,
        "ipxe twice, the image, the kernel, head 3's image: {hist}"
    );
    assert!(rows.iter().all(|r| r[0] == "b1"), "{hist}");
    assert!(
        rows.iter().any(|r| r[5] == "1") && rows.iter().any(|r| r[5] == "3"),
        "{hist}"
    );
    assert_eq!(
        (rows.last().unwrap()[1], rows.last().unwrap()[5]),
        ("IMAGE", "3"),
        "{hist}"
    );
    // A node no head has seen: listed as `--`, alone with --unknown.
    ok(&c, &["node", "add", "quiet1"]).await;
    let all = ok(&c, &["node", "status"]).await;
    assert!(
        all.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["quiet1", "--", "--", "--", "--", "--"]),
        "{all}"
    );
    let unknown = ok(&c, &["node", "status", "-u"]).await;
    assert!(unknown.contains("quiet1") && !unknown.contains("b1"), "{unknown}");
    let since = ok(&c, &["node", "status", "--time", "1"]).await;
    assert!(since.contains("b1") && !since.contains("quiet1"), "{since}");
    c.shutdown().await;
}
