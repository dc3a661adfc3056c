//! `IncludeFrom` on real heads: two `wulfd` processes, an image of two OCI layers
//! (its `/etc/passwd` a symlink into `/usr`, the accounts file replaced by the top
//! layer) imported from an oci-archive on one head; a node with the shipped `syncuser`
//! overlay gets, from either head — the other never assembled the image's tree — an
//! `/etc/passwd` merged from the image's accounts and the head's; re-importing the image
//! with a changed accounts file changes what both heads render.

use std::path::Path;

use crate::images::small_root;
use crate::overlay_boot::{get_from, text, unpack};
use crate::proc_cluster::{run_wwctl, wait_until, ProcCluster};
use crate::registry::{build_test_image, Registry, TestImage};

const WULFD: &str = env!("CARGO_BIN_EXE_wulfd");
const WWCTL: &str = env!("CARGO_BIN_EXE_wwctl");
const MAC: &str = "52:54:00:aa:0f:01";

const HEAD_PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nheadonly:x:2000:2000::/home/headonly:/bin/bash\n";
const HEAD_GROUP: &str = "root:x:0:\nheadonly:x:2000:\n";

fn ok(heads: &str, args: &[&str]) -> String {
    let r = run_wwctl(Path::new(WWCTL), heads, args);
    assert!(r.ok(), "wwctl {args:?}: {}{}", r.stdout, r.stderr);
    r.stdout
}

/// An image whose lower layer links `/etc/passwd` to `/usr/lib/accounts/passwd` and whose
/// upper layer replaces that file with `accounts`; its oci-archive.
fn image(reg: &Registry, name: &str, accounts: &'static str) -> TestImage {
    let base = |root: &Path| {
        small_root(root);
        std::fs::create_dir_all(root.join("usr/lib/accounts")).unwrap();
        std::fs::write(
            root.join("usr/lib/accounts/passwd"),
            "root:x:0:0:lower layer:/root:/bin/sh\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("../usr/lib/accounts/passwd", root.join("etc/passwd")).unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\nimage:x:1500:\n").unwrap();
    };
    let top = move |root: &Path| {
        std::fs::write(root.join("usr/lib/accounts/passwd"), accounts).unwrap();
    };
    build_test_image(reg, name, &[&base, &top])
}

/// Wait until `http` serves the node's system overlay; its `/etc/passwd`.
fn served_passwd(http: &str, what: &str, want: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    wait_until(60, what, || {
        let (status, body) = get_from(http, &format!("/system/{MAC}?compress=gz"), 0);
        last = if status == 200 {
            text(&unpack(&body)["etc/passwd"])
        } else {
            format!("HTTP {status}: {}", String::from_utf8_lossy(&body))
        };
        status == 200 && want(&last)
    });
    last
}

#[test]
fn include_from_reads_the_image_from_its_layers_on_every_head() {
    let Some(reg) = Registry::start() else {
        return;
    };
    const V1: &str = "root:x:0:0:root:/root:/bin/sh\nimguser:x:1500:1500::/home/imguser:/bin/sh\n";
    const V2: &str = "root:x:0:0:root:/root:/bin/sh\nnewuser:x:1600:1600::/home/newuser:/bin/sh\n";
    let v1 = image(&reg, "incl/one:v1", V1);
    let v2 = image(&reg, "incl/one:v2", V2);

    let host = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(host.path().join("etc")).unwrap();
    std::fs::write(host.path().join("etc/passwd"), HEAD_PASSWD).unwrap();
    std::fs::write(host.path().join("etc/group"), HEAD_GROUP).unwrap();
    let p = ProcCluster::start(
        Path::new(WULFD),
        2,
        &format!("boot:\n  overlays:\n    host_root: {}\n", host.path().display()),
    );
    let all = p.all_heads();
    wait_until(30, "cluster initialised", || {
        let r = run_wwctl(Path::new(WWCTL), &all, &["--timeout", "2", "profile", "list"]);
        r.ok() && r.stdout.lines().any(|l| l.starts_with("default"))
    });
    // Imported through head 1 only: head 2 has the layers (artifact sync), not the tree.
    ok(
        &p.addrs[0],
        &[
            "image",
            "import",
            &format!("oci-archive:{}", v1.oci_archive.display()),
            "img",
        ],
    );
    ok(
        &all,
        &[
            "node",
            "add",
            "n1",
            "--hwaddr",
            MAC,
            "--ipaddr",
            "127.0.0.1",
            "--image",
            "img",
            "--system-overlays",
            "syncuser",
        ],
    );

    for (i, http) in p.http.iter().enumerate() {
        let passwd = served_passwd(http, &format!("head {} renders syncuser", i + 1), |t| {
            t.contains("imguser")
        });
        // The image's accounts first (through the symlink, from the top layer), then the
        // head's that the image does not have.
        assert!(
            passwd.starts_with("root:x:0:0:root:/root:/bin/sh\nimguser:x:1500:1500::/home/imguser:/bin/sh\n"),
            "head {}: {passwd}",
            i + 1
        );
        assert!(passwd.contains("headonly:x:2000:2000:"), "head {}: {passwd}", i + 1);
        assert!(!passwd.contains("lower layer"), "the top layer's file wins: {passwd}");
    }
    let assembled: Vec<bool> = (0..2)
        .map(|i| p.dir.path().join(format!("data{i}/images/img/rootfs")).exists())
        .collect();
    assert_eq!(assembled, [true, false], "only the importing head assembled the tree");

    // Re-imported with a changed accounts file: both heads render the new one.
    ok(
        &p.addrs[0],
        &[
            "image",
            "import",
            "--force",
            &format!("oci-archive:{}", v2.oci_archive.display()),
            "img",
        ],
    );
    for (i, http) in p.http.iter().enumerate() {
        let passwd = served_passwd(http, &format!("head {} renders the new image", i + 1), |t| {
            t.contains("newuser")
        });
        assert!(!passwd.contains("imguser"), "head {}: {passwd}", i + 1);
        assert!(passwd.contains("headonly:x:2000:2000:"), "head {}: {passwd}", i + 1);
    }
    assert!(
        !p.dir.path().join("data1/images/img").exists(),
        "head 2 never assembled it"
    );
}
