//! Overlays across heads: `wwctl overlay` round trips seen from another head, site
//! copies of distribution overlays, deletes refused while in use, path escapes, the
//! compare-and-set conflict, the distribution set registered on start, and a head
//! fetching a tree it lacks from a peer.

use std::collections::BTreeMap;

use wulfpack::cas::Digest;
use wulfpack::overlay::store::{distribution, Change};
use wulfpack::overlay::tree::{Entry, OverlayTree};
use wulfpack::pb::admin as pb;
use wulfpack::state::{Command, OverlayCommand};

use crate::harness::{eventually, golden, ok, settings, ww, Cluster};

/// A small distribution overlay of our own (names cannot clash with the shipped set).
fn fixture_set() -> BTreeMap<String, OverlayTree> {
    let mut t = OverlayTree::default();
    t.mkdir("etc", 0o755).unwrap();
    t.put_file("etc/issue", b"old issue\n".to_vec(), None, None, false, false)
        .unwrap();
    t.put_file("etc/hosts.ww", b"{{ x }}\n".to_vec(), Some(0o644), None, false, false)
        .unwrap();
    [("test-dist".to_string(), t)].into()
}

async fn entry(c: &Cluster, i: usize, name: &str) -> wulfpack::state::OverlayEntry {
    c.ctx(i).overlays.entry(name).await.unwrap().value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlay_verbs_round_trip_and_are_seen_from_another_head() {
    let c = Cluster::start(3, settings()).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("motd");
    std::fs::write(&src, "hello\n").unwrap();
    // The import keeps the source's mode: make it independent of the umask.
    std::fs::set_permissions(
        &src,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644),
    )
    .unwrap();
    let src = src.to_str().unwrap();

    ok(&c, &["overlay", "create", "site1"]).await;
    let e = ww(&c, &["overlay", "create", "site1"]).await.unwrap_err();
    assert!(e.contains("already exists"), "{e}");
    // A missing directory needs --parents, and the error says so.
    let e = ww(&c, &["overlay", "import", "site1", src, "/etc/motd"])
        .await
        .unwrap_err();
    assert!(
        e.contains("directory etc does not exist") && e.contains("--parents"),
        "{e}"
    );
    ok(
        &c,
        &["overlay", "import", "site1", src, "/etc/motd", "-p", "-m", "0640"],
    )
    .await;
    let e = ww(&c, &["overlay", "import", "site1", src, "/etc/motd"])
        .await
        .unwrap_err();
    assert!(e.contains("--overwrite"), "{e}");
    // Into an existing directory: the file keeps its name.
    ok(&c, &["overlay", "mkdir", "site1", "/etc/profile.d", "--mode", "0750"]).await;
    ok(&c, &["overlay", "import", "site1", src, "etc/profile.d"]).await;
    ok(&c, &["overlay", "chmod", "site1", "/etc/motd", "0600"]).await;
    ok(&c, &["overlay", "chown", "site1", "/etc/motd", "7:8"]).await;
    ok(&c, &["overlay", "chown", "site1", "etc/profile.d/motd", "9", "10"]).await;

    // Another head answers with the same files.
    let other = c.client_of(2);
    let f = other.overlay_file("site1", "/etc/motd").await.unwrap();
    assert_eq!(f.content, b"hello\n");
    let p = f.path.unwrap();
    assert_eq!((p.mode, p.uid, p.gid), (0o600, 7, 8));
    assert_eq!(
        ok(&c, &["overlay", "show", "site1", "etc/profile.d/motd"]).await,
        "hello\n"
    );
    golden("overlay_list_site1.txt", &ok(&c, &["overlay", "list", "site1"]).await);
    golden(
        "overlay_list_all_site1.txt",
        &ok(&c, &["overlay", "list", "-a", "site1"]).await,
    );
    golden(
        "overlay_list_long_site1.txt",
        &ok(&c, &["overlay", "list", "-l", "site1"]).await,
    );
    let e = ww(&c, &["overlay", "list", "nope"]).await.unwrap_err();
    assert!(e.contains("\"nope\"") || e.contains("nope does not exist"), "{e}");

    // Deleting: a non-empty directory or overlay needs --force.
    let e = ww(&c, &["overlay", "delete", "site1", "/etc/profile.d"])
        .await
        .unwrap_err();
    assert!(e.contains("--force"), "{e}");
    ok(&c, &["overlay", "delete", "site1", "/etc/profile.d/motd", "--parents"]).await;
    let listed = other.overlay_list(&["site1".into()], true).await.unwrap();
    let paths: Vec<&str> = listed.overlays[0].paths.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["etc", "etc/motd"], "the emptied directory went with --parents");
    let e = ww(&c, &["overlay", "show", "site1", "/etc/profile.d/motd"])
        .await
        .unwrap_err();
    assert!(e.contains("not in the overlay"), "{e}");
    let e = ww(&c, &["overlay", "delete", "site1"]).await.unwrap_err();
    assert!(e.contains("not empty") && e.contains("--force"), "{e}");
    ok(&c, &["overlay", "delete", "site1", "-f"]).await;
    let r = other.overlay_list(&["site1".into()], false).await.unwrap();
    assert_eq!(r.missing, ["site1"]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn editing_a_distribution_overlay_makes_a_site_copy_and_deleting_it_reverts() {
    let c = Cluster::start(3, settings()).await;
    let set = fixture_set();
    let changed = c.ctx(0).overlays.register_distribution(&set).await.unwrap();
    assert_eq!(changed, ["test-dist"]);
    assert!(
        c.ctx(1).overlays.register_distribution(&set).await.unwrap().is_empty(),
        "the same set registers once"
    );
    let dist = set["test-dist"].digest();

    // `overlay edit` runs the editor on a copy and writes back only a change.
    ok(&c, &["overlay", "edit", "test-dist", "/etc/issue", "--editor", "true"]).await;
    assert!(!entry(&c, 1, "test-dist").await.is_site(), "unchanged: no site copy");
    ok(
        &c,
        &[
            "overlay",
            "edit",
            "test-dist",
            "/etc/issue",
            "--editor",
            "sed -i s/old/new/",
        ],
    )
    .await;
    let e = entry(&c, 2, "test-dist").await;
    assert!(e.is_site());
    assert_eq!(e.distribution, Some(dist), "the distribution tree is intact");
    let shipped = c.ctx(2).overlays.tree(&dist).await.unwrap();
    assert_eq!(
        shipped.entry("etc/issue").unwrap(),
        &Entry::file(b"old issue\n".to_vec(), 0o644)
    );
    assert_eq!(
        ok(&c, &["overlay", "show", "test-dist", "/etc/issue"]).await,
        "new issue\n"
    );
    let list = ok(&c, &["overlay", "list", "test-dist"]).await;
    assert!(list.lines().nth(1).unwrap().ends_with("true"), "{list}");

    // A new file in a missing directory: refused before the editor runs.
    let e = ww(
        &c,
        &["overlay", "edit", "test-dist", "/opt/x/new.ww", "--editor", "false"],
    )
    .await
    .unwrap_err();
    assert!(e.contains("--parents"), "{e}");

    // Deleting the site copy reverts to the shipped tree; the shipped one cannot go.
    ok(&c, &["overlay", "delete", "test-dist", "--force"]).await;
    assert_eq!(
        ok(&c, &["overlay", "show", "test-dist", "/etc/issue"]).await,
        "old issue\n"
    );
    let e = ww(&c, &["overlay", "delete", "test-dist", "-f"]).await.unwrap_err();
    assert!(
        e.contains("distribution overlay") && e.contains("cannot be deleted"),
        "{e}"
    );
    // chmod and deleting a file also work on a copy.
    ok(&c, &["overlay", "chmod", "test-dist", "/etc/hosts.ww", "0600"]).await;
    ok(&c, &["overlay", "delete", "test-dist", "/etc/issue"]).await;
    let e = entry(&c, 0, "test-dist").await;
    assert_eq!(e.distribution, Some(dist));
    let site = c.ctx(0).overlays.tree(&e.site.unwrap()).await.unwrap();
    assert_eq!(site.entry("etc/hosts.ww").unwrap().mode, 0o600);
    assert!(site.entry("etc/issue").is_err());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletes_in_use_escapes_conflicts_and_peer_fetch() {
    // About fetching on demand: no prefetch, so the heads that did not write a blob
    // lack it until something asks (tests/it/artifacts.rs covers the prefetch).
    let c = Cluster::start_with(3, settings(), |cfg| cfg.artifacts.prefetch = false).await;

    // Deleting an overlay a node lists is refused, naming the node.
    ok(&c, &["overlay", "create", "o1"]).await;
    ok(&c, &["node", "add", "n1", "--runtime-overlays", "o1"]).await;
    let e = ww(&c, &["overlay", "delete", "o1"]).await.unwrap_err();
    assert!(e.contains("still used by") && e.contains("node n1"), "{e}");
    ok(&c, &["node", "set", "n1", "-y", "--runtime-overlays", "other"]).await;
    ok(&c, &["overlay", "delete", "o1"]).await;

    // Paths that would leave the overlay.
    ok(&c, &["overlay", "create", "o2"]).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("f");
    std::fs::write(&src, "x").unwrap();
    for bad in ["../x", "etc/../../x", "a//b"] {
        let e = ww(&c, &["overlay", "import", "o2", src.to_str().unwrap(), bad, "-p"])
            .await
            .unwrap_err();
        assert!(e.contains("not allowed in an overlay"), "{bad}: {e}");
    }
    let e = ww(&c, &["overlay", "chmod", "o2", "../../etc/shadow", "0644"])
        .await
        .unwrap_err();
    assert!(e.contains("`..`"), "{e}");
    // A tree with an absolute path or an escaping link is never served, even when a
    // blob like that got into the catalog by other means.
    for (key, e) in [
        ("/etc/passwd", Entry::file(b"x".to_vec(), 0o644)),
        ("link", Entry::symlink("../../etc/shadow")),
    ] {
        let mut bad = OverlayTree::default();
        bad.entries.insert(key.into(), e);
        let d = c.ctx(0).cas.put_bytes(&bad.to_canonical()).unwrap();
        c.ctx(0)
            .cluster
            .write(Command::Overlay(OverlayCommand::PutSite {
                name: "crafted".into(),
                digest: d,
                expect: None,
                now: 0,
            }))
            .await
            .unwrap();
        let e = ww(&c, &["overlay", "list", "crafted"]).await.unwrap_err();
        assert!(e.contains("absolute") || e.contains("lead out of the overlay"), "{e}");
        let mut set = BTreeMap::new();
        set.insert("crafted-dist".to_string(), bad);
        assert!(c.ctx(0).overlays.register_distribution(&set).await.is_err());
    }

    // Two operators edit one overlay from the same read: one write wins, the other
    // is told to retry.
    let client = c.client();
    let v = client.overlay_file("o2", "/").await.err();
    assert!(v.is_some(), "the root itself is not a file");
    let read = client.overlay_list(&["o2".into()], false).await.unwrap().overlays[0].version;
    let put = |text: &str| pb::OverlayChangeRequest {
        name: "o2".into(),
        op: "change".into(),
        change_json: serde_json::to_vec(&Change::PutFile {
            path: "/motd".into(),
            content: text.as_bytes().to_vec(),
            mode: None,
            owner: None,
            parents: false,
            overwrite: true,
            name_in_dir: None,
        })
        .unwrap(),
        force: false,
        expect: Some(read),
        request_id: String::new(),
    };
    client.overlay_change(put("alice")).await.unwrap();
    let e = client.overlay_change(put("bob")).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::Aborted), "{e}");
    assert!(e.to_string().contains("retry"), "{e}");
    assert_eq!(ok(&c, &["overlay", "show", "o2", "motd"]).await, "alice");

    // A head that lacks a tree fetches it from a peer.
    let ch = Change::PutFile {
        path: "only-on-head-1".into(),
        content: b"1".to_vec(),
        mode: None,
        owner: None,
        parents: false,
        overwrite: false,
        name_in_dir: None,
    };
    let done = c.ctx(0).overlays.change("o2", &ch, None, None).await.unwrap();
    let d: Digest = done.digest.unwrap();
    assert!(c.ctx(0).cas.contains(&d));
    assert!(!c.ctx(2).cas.contains(&d), "written on head 1 only");
    let (_, t) = c.ctx(2).overlays.get("o2").await.unwrap();
    assert!(t.entry("only-on-head-1").is_ok());
    assert!(c.ctx(2).cas.contains(&d), "fetched from a peer and kept");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shipped_distribution_set_is_registered_on_start_on_every_head() {
    let c = Cluster::start(3, settings()).await;
    let want: BTreeMap<String, Digest> = distribution()
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.digest()))
        .collect();
    for i in 0..3 {
        eventually(
            20,
            "every head has the distribution set in its catalog and CAS",
            || async {
                let have: BTreeMap<String, Digest> = c.ctx(i).sm.read(|s| {
                    s.overlays
                        .iter()
                        .filter_map(|(n, v)| v.value.distribution.map(|d| (n.clone(), d)))
                        .collect()
                });
                have == want && want.values().all(|d| c.ctx(i).cas.contains(d))
            },
        )
        .await;
    }
    // Every shipped overlay is listed (Warewulf lists directories as `name/`).
    let list = ok(&c, &["overlay", "list"]).await;
    for name in want.keys() {
        assert!(
            list.lines().any(|l| l.split_whitespace().next() == Some(name)),
            "{name} missing from:\n{list}"
        );
    }
    // `overlay info`: the variables a template documents, as a table.
    let info = ok(
        &c,
        &["overlay", "info", "mig", "/etc/systemd/system/ww-nvidia-mig.service.ww"],
    )
    .await;
    assert!(
        info.contains("VARIABLE") && info.contains(".Tags.gpuMigProfiles"),
        "{info}"
    );
    let e = ww(&c, &["overlay", "info", "hostname", "/etc/hostname.ww"])
        .await
        .unwrap_err();
    assert!(e.contains("documents nothing"), "{e}");
    c.shutdown().await;
}
