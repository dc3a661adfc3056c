use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

use super::*;

const HOST_PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
alice:x:1000:1000::/home/alice:/bin/bash
bob:x:1001:1001::/home/bob:/bin/bash
munge:x:980:980::/run/munge:/sbin/nologin
+@nisusers::::::
";
const IMAGE_PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
bob:x:1000:1000::/home/bob:/bin/sh
alice:x:1001:1001::/home/alice:/bin/sh
chrony:x:990:990::/var/lib/chrony:/sbin/nologin
broken line
alice:x:1005:1005::/home/alice:/bin/sh
";

fn ids(pairs: &[(u32, u32)]) -> HashMap<u32, u32> {
    pairs.iter().copied().collect()
}

#[test]
fn parse_skips_nis_malformed_and_later_duplicates() {
    let e = parse(IMAGE_PASSWD, "image passwd");
    assert_eq!(
        e.ids.iter().map(|(n, i)| (n.as_str(), *i)).collect::<Vec<_>>(),
        [("alice", 1001), ("bob", 1000), ("chrony", 990), ("root", 0)]
    );
    assert_eq!(e.order, ["root", "bob", "alice", "chrony"]);
    assert_eq!(
        e.warnings,
        ["image passwd: ignoring id 1005 of \"alice\", listed before with 1001"]
    );
    let h = parse(HOST_PASSWD, "head passwd");
    assert!(!h.ids.contains_key("+@nisusers"), "NIS references carry no id");
    let bad = parse("x:x:notanumber:0::/:/bin/sh\n", "head passwd");
    assert!(bad.ids.is_empty());
    assert_eq!(bad.warnings.len(), 1, "{:?}", bad.warnings);
    // Group lines have four fields.
    let g = parse("wheel:x:10:alice,bob\nusers:x:100:\n", "g");
    assert_eq!(g.ids.get("wheel"), Some(&10));
    assert_eq!(g.ids.get("users"), Some(&100));
}

/// The expected comparison of the crafted files, name by name.
#[test]
fn plan_of_crafted_files() {
    let p = plan(
        Db::Passwd,
        &parse(HOST_PASSWD, "head passwd"),
        &parse(IMAGE_PASSWD, "image passwd"),
    );
    assert!(p.conflicts.is_empty(), "{:?}", p.conflicts);
    assert_eq!(
        p.report,
        DbReport {
            matched: vec!["root".into()],
            differ: vec![
                IdChange {
                    name: "alice".into(),
                    image: 1001,
                    host: 1000
                },
                IdChange {
                    name: "bob".into(),
                    image: 1000,
                    host: 1001
                },
            ],
            host_only: vec!["munge".into()],
            image_only: vec!["chrony".into()],
            warnings: vec!["image passwd: ignoring id 1005 of \"alice\", listed before with 1001".into()],
            files: 0,
        }
    );
    // A swap stays a swap; root and chrony keep their ids.
    assert_eq!(p.map, ids(&[(1001, 1000), (1000, 1001)]));
    assert!(p.report.needs_sync());
}

#[test]
fn in_sync_needs_nothing() {
    let text = "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    let p = plan(Db::Passwd, &parse(text, "h"), &parse(text, "i"));
    assert!(p.map.is_empty() && p.conflicts.is_empty());
    assert!(!p.report.needs_sync());
    // An image-only name with a free id is no reason to sync.
    let img = format!("{text}chrony:x:990:990::/:/sbin/nologin\n");
    let p = plan(Db::Passwd, &parse(text, "h"), &parse(&img, "i"));
    assert!(!p.report.needs_sync());
    assert_eq!(p.report.image_only, ["chrony"]);
}

#[test]
fn every_conflict_is_reported() {
    // chrony (image only) has 1000, alice's id on the head; ntp (image only) has 980,
    // munge's. A name in both with a different id (bob) is no conflict: it is synced.
    let host = "alice:x:1000:1000::/:/bin/sh\nmunge:x:980:980::/:/bin/sh\nbob:x:1001:1001::/:/bin/sh\n";
    let image = "chrony:x:1000:1000::/:/bin/sh\nntp:x:980:980::/:/bin/sh\nbob:x:1002:1002::/:/bin/sh\n";
    let p = plan(Db::Group, &parse(host, "h"), &parse(image, "i"));
    assert_eq!(
        p.conflicts,
        [
            Conflict {
                db: Db::Group,
                id: 1000,
                host_name: "alice".into(),
                image_name: "chrony".into()
            },
            Conflict {
                db: Db::Group,
                id: 980,
                host_name: "munge".into(),
                image_name: "ntp".into()
            },
        ]
    );
    let msg = SyncuserError::Conflicts(p.conflicts).to_string();
    assert!(msg.contains("2 id conflict(s), nothing was changed"), "{msg}");
    assert!(
        msg.contains("gid 1000 is \"alice\" on the head but \"chrony\" in the image")
            && msg.contains("add \"chrony\" to the head's /etc/group"),
        "{msg}"
    );
}

#[test]
fn merged_file_is_the_heads_then_the_image_only_lines() {
    let only = vec!["chrony".to_string()];
    assert_eq!(
        merged_text("root:x:0:0::/root:/bin/sh", IMAGE_PASSWD, &only),
        "root:x:0:0::/root:/bin/sh\nchrony:x:990:990::/var/lib/chrony:/sbin/nologin\n"
    );
    assert_eq!(
        merged_text("a:x:1:1::/:/x\n", "b:x:2:2::/:/x\n", &[]),
        "a:x:1:1::/:/x\n"
    );
}

/// A tree as an image would have it: files owned by the image's ids.
struct Tree {
    _dir: tempfile::TempDir,
    host: PathBuf,
    root: PathBuf,
    /// A file outside the image that an absolute symlink in it points to.
    outside: PathBuf,
}

fn tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    let root = dir.path().join("rootfs");
    for d in [
        host.join("etc"),
        root.join("etc"),
        root.join("home/alice"),
        root.join("home/bob"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(host.join("etc/passwd"), HOST_PASSWD).unwrap();
    std::fs::write(
        host.join("etc/group"),
        "root:x:0:\nalice:x:1000:\nbob:x:1001:\nmunge:x:980:\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/passwd"), IMAGE_PASSWD).unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nbob:x:1000:\nalice:x:1001:\nchrony:x:990:\n",
    )
    .unwrap();
    let own = |p: &Path, u: u32, g: u32| std::os::unix::fs::lchown(p, Some(u), Some(g)).unwrap();
    own(&root.join("home/alice"), 1001, 1001);
    own(&root.join("home/bob"), 1000, 1000);
    let a = root.join("home/alice/notes");
    std::fs::write(&a, "a").unwrap();
    own(&a, 1001, 1001);
    // A hard link of alice's file: re-owned once, not swapped back.
    std::fs::hard_link(&a, root.join("home/bob/alice-notes")).unwrap();
    // bob's set-uid program keeps its bit.
    let s = root.join("home/bob/tool");
    std::fs::write(&s, "#!/bin/sh\n").unwrap();
    own(&s, 1000, 1000);
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o4755)).unwrap();
    // A file of the "head" that an absolute link in the image points to.
    let outside = dir.path().join("head-file");
    std::fs::write(&outside, "x").unwrap();
    own(&outside, 1001, 1001);
    let l = root.join("home/alice/link");
    symlink(&outside, &l).unwrap();
    own(&l, 1001, 1001);
    // Owned by chrony (image only): untouched.
    let c = root.join("etc/chrony.conf");
    std::fs::write(&c, "").unwrap();
    own(&c, 990, 990);
    Tree {
        _dir: dir,
        host,
        root,
        outside,
    }
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

fn root_or_skip() -> bool {
    if rustix::process::geteuid().is_root() {
        true
    } else {
        eprintln!("SKIP: syncuser tree tests chown to other ids and need root");
        false
    }
}

#[test]
fn check_mode_reports_and_changes_nothing() {
    if !root_or_skip() {
        return;
    }
    let t = tree();
    let r = syncuser(&t.host, &t.root, false).unwrap();
    assert!(!r.written);
    assert!(r.needs_sync());
    // alice's dir, notes (two names, one inode), link; bob's dir and tool.
    assert_eq!(r.files, 6);
    assert_eq!((r.passwd.files, r.group.files), (6, 6));
    assert_eq!(owner(&t.root.join("home/alice/notes")), (1001, 1001));
    assert_eq!(
        std::fs::read_to_string(t.root.join("etc/passwd")).unwrap(),
        IMAGE_PASSWD
    );
}

#[test]
fn write_reowns_the_tree_and_rewrites_the_files() {
    if !root_or_skip() {
        return;
    }
    let t = tree();
    let r = syncuser(&t.host, &t.root, true).unwrap();
    assert!(r.written);
    assert_eq!(owner(&t.root.join("home/alice")), (1000, 1000));
    assert_eq!(owner(&t.root.join("home/alice/notes")), (1000, 1000));
    assert_eq!(
        owner(&t.root.join("home/bob/alice-notes")),
        (1000, 1000),
        "hard link re-owned once"
    );
    assert_eq!(owner(&t.root.join("home/bob")), (1001, 1001));
    let tool = t.root.join("home/bob/tool");
    assert_eq!(owner(&tool), (1001, 1001));
    assert_eq!(
        std::fs::metadata(&tool).unwrap().mode() & 0o7777,
        0o4755,
        "set-uid kept"
    );
    assert_eq!(owner(&t.root.join("home/alice/link")), (1000, 1000), "the link itself");
    assert_eq!(owner(&t.outside), (1001, 1001), "never through a symlink");
    assert_eq!(owner(&t.root.join("etc/chrony.conf")), (990, 990));
    let passwd = std::fs::read_to_string(t.root.join("etc/passwd")).unwrap();
    assert_eq!(
        passwd,
        format!("{HOST_PASSWD}chrony:x:990:990::/var/lib/chrony:/sbin/nologin\n")
    );
    let group = std::fs::read_to_string(t.root.join("etc/group")).unwrap();
    assert_eq!(
        group,
        "root:x:0:\nalice:x:1000:\nbob:x:1001:\nmunge:x:980:\nchrony:x:990:\n"
    );
    // Run again: nothing left to do.
    let again = syncuser(&t.host, &t.root, true).unwrap();
    assert!(!again.written && !again.needs_sync() && again.files == 0, "{again:?}");
}

#[test]
fn a_conflict_changes_nothing() {
    if !root_or_skip() {
        return;
    }
    let t = tree();
    // ntp only in the image, with munge's id on the head.
    std::fs::write(
        t.root.join("etc/passwd"),
        format!("{IMAGE_PASSWD}ntp:x:980:980::/:/sbin/nologin\n"),
    )
    .unwrap();
    let e = syncuser(&t.host, &t.root, true).unwrap_err();
    assert!(matches!(&e, SyncuserError::Conflicts(c) if c.len() == 1), "{e}");
    assert_eq!(owner(&t.root.join("home/alice/notes")), (1001, 1001));
}

#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = syncuser(dir.path(), dir.path(), false).unwrap_err();
    assert!(e.to_string().contains("etc/passwd"), "{e}");
}
