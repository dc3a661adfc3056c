//! `wwctl image syncuser` (and `--syncuser` on import and exec) on a head whose
//! `/etc/passwd` and `/etc/group` come from a test directory (`boot.overlays.host_root`):
//! the report, `--write` re-owning the image's files and rebuilding, the new owners in
//! the built archive (GNU cpio's listing), conflicts refused; and `images.mounts` (the
//! head's resolv.conf) bound into `image exec` without staying in the image.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use wulfpack::image::syncuser::SyncReport;
use wulfpack::state::ImageEntry;

use crate::harness::{golden, ok, settings, ww, Cluster};
use crate::images::small_root;
use crate::registry::{ensure_packages, is_root};

const HEAD_PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
alice:x:1000:1000::/home/alice:/bin/bash
bob:x:1001:1001::/home/bob:/bin/bash
munge:x:980:980::/run/munge:/sbin/nologin
";
const HEAD_GROUP: &str = "root:x:0:\nalice:x:1000:\nbob:x:1001:\nmunge:x:980:\n";
const IMAGE_PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
bob:x:1000:1000::/home/bob:/bin/sh
alice:x:1001:1001::/home/alice:/bin/sh
chrony:x:990:990::/var/lib/chrony:/sbin/nologin
";
const IMAGE_GROUP: &str = "root:x:0:\nbob:x:1000:\nalice:x:1001:\nchrony:x:990:\n";

/// The head's files under `host`.
fn head_root(host: &Path) {
    std::fs::create_dir_all(host.join("etc")).unwrap();
    std::fs::write(host.join("etc/passwd"), HEAD_PASSWD).unwrap();
    std::fs::write(host.join("etc/group"), HEAD_GROUP).unwrap();
    std::fs::write(host.join("etc/resolv.conf"), "nameserver 192.0.2.53\n").unwrap();
}

/// An image tree whose accounts and files use the image's ids (alice and bob swapped).
fn image_tree(src: &Path, extra_passwd: &str) {
    small_root(src);
    std::fs::write(src.join("etc/passwd"), format!("{IMAGE_PASSWD}{extra_passwd}")).unwrap();
    std::fs::write(src.join("etc/group"), IMAGE_GROUP).unwrap();
    let own = |rel: &str, id: u32| std::os::unix::fs::lchown(src.join(rel), Some(id), Some(id)).unwrap();
    std::fs::create_dir_all(src.join("home/alice")).unwrap();
    std::fs::create_dir_all(src.join("home/bob")).unwrap();
    std::fs::write(src.join("home/alice/notes"), "a\n").unwrap();
    std::fs::write(src.join("home/bob/tool"), "#!/bin/sh\n").unwrap();
    std::fs::write(src.join("etc/chrony.conf"), "").unwrap();
    own("home/alice", 1001);
    own("home/alice/notes", 1001);
    own("home/bob", 1000);
    own("home/bob/tool", 1000);
    own("etc/chrony.conf", 990);
    // chown drops set-id bits: set them after.
    std::fs::set_permissions(src.join("home/bob/tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
}

async fn entry(c: &Cluster, name: &str) -> ImageEntry {
    let out = ok(c, &["-o", "json", "image", "show", name]).await;
    serde_json::from_str::<wulfpack::state::Versioned<ImageEntry>>(&out)
        .unwrap()
        .value
}

/// `path → (mode string, uid, gid)` of a built archive, from `cpio -itvn`.
fn listing(blob: &Path) -> BTreeMap<String, (String, u32, u32)> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc '{}' | cpio -itvn --quiet", blob.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "gzip | cpio -t failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // mode links uid gid size month day time name [-> target]
            let name = f.get(8)?.trim_start_matches("./").to_string();
            Some((name, (f[0].to_string(), f[2].parse().ok()?, f[3].parse().ok()?)))
        })
        .collect()
}

/// Extract one file of a built archive.
fn archive_file(blob: &Path, name: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -dc '{}' | cpio -i --quiet --to-stdout '{name}'",
            blob.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "cpio could not extract {name}");
    String::from_utf8(out.stdout).unwrap()
}

fn preconditions() -> bool {
    if !is_root() {
        eprintln!("SKIP: syncuser re-owns files to other ids and needs root");
        return false;
    }
    if !ensure_packages(&["cpio", "gzip"]) {
        eprintln!("SKIP: GNU cpio is not available to list the built image");
        return false;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn syncuser_reports_writes_rebuilds_and_refuses_conflicts() {
    if !preconditions() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host");
    head_root(&host);
    let hr = host.clone();
    let c = Cluster::start_with(1, settings(), move |cfg| cfg.boot.overlays.host_root = hr.clone()).await;
    let src = tmp.path().join("src");
    image_tree(&src, "");
    ok(&c, &["image", "import", src.to_str().unwrap(), "im"]).await;
    let before = entry(&c, "im").await;
    let blob = |e: &ImageEntry| c.ctx(0).cas.path(&e.artifact.as_ref().unwrap().digest);
    assert_eq!(
        listing(&blob(&before))["home/alice/notes"].1,
        1001,
        "imported with the image's ids"
    );

    // Check only: the report, nothing changed.
    let out = ok(&c, &["image", "syncuser", "--write=false", "im"]).await;
    golden("image_syncuser_check.txt", &out);
    let json = ok(&c, &["-o", "json", "image", "syncuser", "--write=false", "im"]).await;
    let r: SyncReport = serde_json::from_str(&json).unwrap();
    assert!(!r.written && r.needs_sync());
    assert_eq!((r.files, r.passwd.files, r.group.files), (4, 4, 4));
    let same = entry(&c, "im").await;
    assert_eq!((&same.layers, &same.artifact), (&before.layers, &before.artifact));

    // Write (Warewulf 4.7's default) and rebuild.
    let out = ok(&c, &["image", "syncuser", "im", "--build"]).await;
    assert!(
        out.contains("uid/gid synced for image im (4 file(s) re-owned)") && out.contains("Rebuilt image im"),
        "{out}"
    );
    let after = entry(&c, "im").await;
    assert!(after.source.ends_with("+syncuser"), "{}", after.source);
    assert_ne!(after.artifact, before.artifact);
    let l = listing(&blob(&after));
    assert_eq!((l["home/alice"].1, l["home/alice"].2), (1000, 1000));
    assert_eq!((l["home/alice/notes"].1, l["home/alice/notes"].2), (1000, 1000));
    assert_eq!((l["home/bob"].1, l["home/bob"].2), (1001, 1001));
    assert_eq!(
        l["home/bob/tool"],
        ("-rwsr-xr-x".to_string(), 1001, 1001),
        "set-uid kept"
    );
    assert_eq!(l["etc/chrony.conf"].1, 990, "image-only account untouched");
    assert_eq!(
        archive_file(&blob(&after), "etc/passwd"),
        format!("{HEAD_PASSWD}chrony:x:990:990::/var/lib/chrony:/sbin/nologin\n")
    );
    assert_eq!(
        archive_file(&blob(&after), "etc/group"),
        format!("{HEAD_GROUP}chrony:x:990:\n")
    );
    let out = ok(&c, &["image", "syncuser", "im"]).await;
    assert!(out.contains("uid/gid already synced for image im"), "{out}");
    assert_eq!(
        entry(&c, "im").await.layers,
        after.layers,
        "nothing to write, no new layer"
    );

    // A conflict: ntp only in the image, with munge's id on the head. Nothing changes.
    let bad = tmp.path().join("bad");
    image_tree(&bad, "ntp:x:980:980::/:/sbin/nologin\n");
    ok(&c, &["image", "import", bad.to_str().unwrap(), "bad"]).await;
    let bad_before = entry(&c, "bad").await;
    let e = ww(&c, &["image", "syncuser", "bad"]).await.unwrap_err();
    assert!(
        e.contains("1 id conflict(s), nothing was changed")
            && e.contains("uid 980 is \"munge\" on the head but \"ntp\" in the image"),
        "{e}"
    );
    assert_eq!(entry(&c, "bad").await.layers, bad_before.layers);

    // --syncuser on import: the first build already has the head's ids.
    let e = ww(&c, &["image", "import", bad.to_str().unwrap(), "bad2", "--syncuser"])
        .await
        .unwrap_err();
    assert!(e.contains("conflict"), "{e}");
    ok(&c, &["image", "import", src.to_str().unwrap(), "im2", "--syncuser"]).await;
    let im2 = entry(&c, "im2").await;
    assert!(im2.source.ends_with("+syncuser"), "{}", im2.source);
    assert_eq!(listing(&blob(&im2))["home/alice/notes"].1, 1000);
    c.shutdown().await;
}

/// The head's `images.mounts` default binds its resolv.conf into `image exec` (nothing of
/// it stays in the image); `--syncuser` on exec reports when the command changed the
/// account files.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_binds_the_heads_resolv_conf_and_reports_syncuser() {
    if !preconditions() {
        return;
    }
    if !ensure_packages(&["busybox-static"]) {
        eprintln!("SKIP: busybox-static is not available for a shell inside the image");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host");
    head_root(&host);
    let hr = host.clone();
    let c = Cluster::start_with(1, settings(), move |cfg| cfg.boot.overlays.host_root = hr.clone()).await;
    let src = tmp.path().join("src");
    image_tree(&src, "");
    std::fs::copy("/bin/busybox", src.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", src.join("bin/sh")).unwrap();
    ok(&c, &["image", "import", src.to_str().unwrap(), "ex"]).await;

    let out = ok(
        &c,
        &[
            "image",
            "exec",
            "ex",
            "--syncuser",
            "--",
            "/bin/sh",
            "-c",
            "cat /etc/resolv.conf > /etc/motd",
        ],
    )
    .await;
    assert!(
        out.contains("Skipping syncuser (passwd and group files not changed)"),
        "{out}"
    );
    let e = entry(&c, "ex").await;
    let blob = c.ctx(0).cas.path(&e.artifact.as_ref().unwrap().digest);
    assert_eq!(archive_file(&blob, "etc/motd"), "nameserver 192.0.2.53\n");
    assert!(
        !listing(&blob).contains_key("etc/resolv.conf"),
        "the mount stayed in the image"
    );

    let out = ok(
        &c,
        &[
            "image",
            "exec",
            "ex",
            "--syncuser",
            "--",
            "/bin/sh",
            "-c",
            "echo 'dave:x:1002:1002::/:/bin/sh' >> /etc/passwd",
        ],
    )
    .await;
    assert!(
        out.contains("dave") && out.contains("uid/gid not synced: run `wwctl image syncuser --write=true ex`"),
        "{out}"
    );
    c.shutdown().await;
}
