//! `wwctl` against an in-process cluster: golden output, hostlists with IP
//! auto-increment, import/export, edit with conflict detection, bad input.

use std::path::PathBuf;

use clap::Parser;
use wulfpack::cli::{run, Cli};

use crate::harness::{golden, ok, settings, ww, Cluster};

async fn example_cluster() -> Cluster {
    let c = Cluster::start(3, settings()).await;
    let conf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cluster/examples/nodes.conf");
    ok(&c, &["node", "import", conf.to_str().unwrap(), "-y"]).await;
    ok(
        &c,
        &[
            "node",
            "add",
            "rack[1-2]-n[01-02]",
            "--image",
            "rocky-9",
            "--ipaddr",
            "10.10.0.1",
            "--ipmiaddr",
            "10.10.1.1",
            "--hwaddr",
            "UNDEF",
        ],
    )
    .await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_views_match_golden_files() {
    let c = example_cluster().await;
    golden("node_list.txt", &ok(&c, &["node", "list"]).await);
    golden("node_list_net.txt", &ok(&c, &["node", "list", "-n"]).await);
    golden("node_list_long.txt", &ok(&c, &["node", "list", "-l"]).await);
    golden("node_list_ipmi.txt", &ok(&c, &["node", "list", "-i"]).await);
    golden(
        "node_list_all_gpu02.txt",
        &ok(&c, &["node", "list", "-a", "gpu02"]).await,
    );
    golden("profile_list.txt", &ok(&c, &["profile", "list"]).await);
    golden("node_export_gpu01.yaml", &ok(&c, &["node", "export", "gpu01"]).await);
    // JSON and YAML are the stored objects.
    let json: serde_json::Value = serde_json::from_str(&ok(&c, &["node", "list", "-j", "gpu01"]).await).unwrap();
    assert_eq!(json["gpu01"]["image name"], "rocky-9");
    let yaml = ok(&c, &["node", "list", "-y", "gpu01"]).await;
    assert!(yaml.contains("image name: rocky-9"), "{yaml}");
    c.shutdown().await;
}

/// A new cluster's `default` profile is Warewulf 4.7's shipped one, on every head:
/// exactly what `wwctl genconfig defaults` prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_cluster_has_the_shipped_default_profile() {
    let c = Cluster::start(3, settings()).await;
    let printed = ok(&c, &["genconfig", "defaults"]).await;
    let printed = wulfpack::model::parse_nodes_conf(&printed).unwrap();
    for head in 0..3 {
        let r = c
            .client_of(head)
            .read(&wulfpack::state::Query::profiles(wulfpack::state::Selector::All), true)
            .await
            .unwrap();
        assert_eq!(
            r.profiles["default"].value,
            printed.nodeprofiles["default"],
            "head {}",
            head + 1
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn set_unset_and_delete() {
    let c = example_cluster().await;
    ok(
        &c,
        &[
            "node",
            "set",
            "rack1-n[01-02]",
            "-y",
            "--tagadd",
            "rack=1",
            "-A",
            "quiet,console=ttyS0",
        ],
    )
    .await;
    let all = ok(&c, &["node", "list", "-a", "rack1-n01"]).await;
    assert!(all.contains("Tags[rack]") && all.contains("console=ttyS0"), "{all}");
    ok(&c, &["node", "unset", "rack1-n01", "kernelargs", "tags", "-y"]).await;
    let all = ok(&c, &["node", "list", "-a", "rack1-n01"]).await;
    assert!(!all.contains("Tags[rack]") && !all.contains("console=ttyS0"), "{all}");
    // set without -y and without a terminal is refused, nothing changes.
    let e = ww(&c, &["node", "set", "rack1-n02", "--comment", "x"])
        .await
        .unwrap_err();
    assert!(e.contains("-y"), "{e}");
    ok(&c, &["node", "delete", "rack2-n[01-02]", "-y"]).await;
    let list = ok(&c, &["node", "list"]).await;
    assert!(!list.contains("rack2"), "{list}");
    let e = ww(&c, &["profile", "delete", "gpu", "-y"]).await.unwrap_err();
    assert!(e.contains("still used by") && e.contains("gpu01"), "{e}");

    // Profiles take the same verbs.
    ok(
        &c,
        &[
            "profile",
            "add",
            "ib",
            "--comment",
            "InfiniBand",
            "-n",
            "ib",
            "--type",
            "infiniband",
        ],
    )
    .await;
    ok(&c, &["profile", "set", "ib", "-y", "--mtu", "65520", "-n", "ib"]).await;
    let all = ok(&c, &["profile", "list", "-a", "ib"]).await;
    assert!(all.contains("NetDevs[ib].MTU") && all.contains("65520"), "{all}");
    ok(&c, &["profile", "set", "ib", "-y", "-P", "gpu"]).await;
    let all = ok(&c, &["profile", "list", "-a", "ib"]).await;
    assert!(
        all.lines().any(|l| l.contains("Profiles") && l.contains("gpu")),
        "{all}"
    );
    ok(&c, &["profile", "unset", "ib", "profile", "-y"]).await;
    ok(&c, &["node", "set", "rack1-n01", "-y", "--profile", "default,ib"]).await;
    let net = ok(&c, &["node", "list", "-n", "rack1-n01"]).await;
    assert!(net.contains("ib"), "node inherits the profile's device: {net}");
    ok(&c, &["profile", "unset", "ib", "comment", "-y"]).await;
    assert!(!ok(&c, &["profile", "list"]).await.contains("InfiniBand"));
    ok(&c, &["node", "set", "rack1-n01", "-y", "--profile", "default"]).await;
    ok(&c, &["profile", "delete", "ib", "-y"]).await;
    c.shutdown().await;
}

/// The stored object as YAML data.
async fn exported(c: &Cluster, kind: &str, name: &str) -> serde_yaml_ng::Value {
    let text = ok(c, &[kind, "export", name]).await;
    let all: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    all[name].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_flags_set_all_netdel_and_unset_flag_form() {
    let c = Cluster::start(1, settings()).await;
    // --fsname naming the partition is its by-partlabel device, as in Warewulf.
    ok(
        &c,
        &[
            "node",
            "add",
            "n[01-02]",
            "--fsname=var",
            "--fspath=/var",
            "--fsformat=btrfs",
            "--partname=var",
            "--diskname=/dev/vda",
            "--partnumber=1",
            "-n",
            "ib",
            "--netdev",
            "ib0",
        ],
    )
    .await;
    let n = exported(&c, "node", "n01").await;
    assert_eq!(n["disks"]["/dev/vda"]["partitions"]["var"]["number"], "1", "{n:?}");
    assert_eq!(
        n["filesystems"]["/dev/disk/by-partlabel/var"]["format"], "btrfs",
        "{n:?}"
    );
    let e = ww(&c, &["node", "add", "n03", "--fsname=dev/vda1", "--fspath=/var"])
        .await
        .unwrap_err();
    assert!(e.contains("block device"), "{e}");
    ok(&c, &["node", "set", "n01", "-y", "--diskwipe", "--diskname=/dev/vda"]).await;
    assert_eq!(
        exported(&c, "node", "n01").await["disks"]["/dev/vda"]["wipe_table"],
        true
    );
    // Deleting what is not there is an error; nothing changes.
    let e = ww(&c, &["node", "set", "n01", "-y", "--partdel=nope"])
        .await
        .unwrap_err();
    assert!(e.contains("no disk has a partition \"nope\""), "{e}");
    ok(
        &c,
        &[
            "node",
            "set",
            "n01",
            "-y",
            "--partdel=var",
            "--fsdel=/dev/disk/by-partlabel/var",
        ],
    )
    .await;
    let n = exported(&c, "node", "n01").await;
    assert!(n["disks"]["/dev/vda"]["partitions"].is_null(), "{n:?}");
    assert!(n["filesystems"].is_null(), "{n:?}");

    // --all changes every node; --netdel removes a device.
    ok(&c, &["node", "set", "--all", "-y", "--comment=batch", "--netdel=ib"]).await;
    for name in ["n01", "n02"] {
        let n = exported(&c, "node", name).await;
        assert_eq!(n["comment"], "batch", "{n:?}");
        assert!(n["network devices"].is_null(), "{n:?}");
    }

    // Warewulf's flag form of unset.
    ok(&c, &["node", "set", "n02", "-y", "--tagadd=a=1,b=2", "--image=rocky"]).await;
    ok(&c, &["node", "unset", "--image", "--tag=a", "n02"]).await;
    let n = exported(&c, "node", "n02").await;
    assert!(n["image name"].is_null() && n["tags"]["a"].is_null(), "{n:?}");
    assert_eq!(n["tags"]["b"], "2", "{n:?}");
    ok(
        &c,
        &[
            "node",
            "unset",
            "--partnumber",
            "--diskname=/dev/vda",
            "--partname=var",
            "n02",
        ],
    )
    .await;
    let n = exported(&c, "node", "n02").await;
    assert!(n["disks"]["/dev/vda"]["partitions"]["var"].is_mapping(), "{n:?}");
    assert!(n["disks"]["/dev/vda"]["partitions"]["var"]["number"].is_null(), "{n:?}");
    let e = ww(&c, &["node", "unset", "--partname=nope", "n02"]).await.unwrap_err();
    assert!(e.contains("no disk has a partition"), "{e}");
    // The last partition takes its disk along.
    ok(&c, &["node", "unset", "--partname=var", "n02"]).await;
    assert!(exported(&c, "node", "n02").await["disks"].is_null());
    // The same flags on profiles.
    ok(
        &c,
        &[
            "profile",
            "set",
            "default",
            "-y",
            "--diskname=/dev/vdb",
            "--partname=scratch",
            "--partsize=1024",
        ],
    )
    .await;
    let p = exported(&c, "profile", "default").await;
    assert_eq!(
        p["disks"]["/dev/vdb"]["partitions"]["scratch"]["size_mib"], "1024",
        "{p:?}"
    );
    ok(&c, &["profile", "unset", "--diskname=/dev/vdb", "default"]).await;
    assert!(exported(&c, "profile", "default").await["disks"].is_null());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heads_from_config_file_and_cluster_membership_commands() {
    let mut c = Cluster::start(3, settings()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("wwctl.yaml");
    // The first listed head does not exist: wwctl moves on to the next.
    std::fs::write(&cfg, format!("heads:\n  - 127.0.0.1:1\n  - {}\n", c.addr(1))).unwrap();
    let cli = Cli::try_parse_from(["wwctl", "--config", cfg.to_str().unwrap(), "cluster", "status"]).unwrap();
    let mut out = Vec::new();
    run(cli, &mut out).await.unwrap();
    let status = String::from_utf8(out).unwrap();
    assert!(status.starts_with("CLUSTER test"), "{status}");
    assert_eq!(status.matches(" ok").count(), 3, "{status}");

    // Join a fourth head with wwctl, then remove it again.
    let fresh = c.join_new().await;
    let id = (fresh + 1).to_string();
    let st = ok(&c, &["cluster", "status"]).await;
    assert_eq!(st.matches(" ok").count(), 4, "{st}");
    let out = ok(&c, &["cluster", "remove", &id]).await;
    assert!(out.contains("removed"), "{out}");
    assert!(c.status(0).voters.iter().all(|v| v.to_string() != id));
    let e = ww(&c, &["cluster", "remove", "42"]).await.unwrap_err();
    assert!(e.contains("not a member"), "{e}");
    // The cluster still takes writes.
    ok(&c, &["node", "add", "after-remove"]).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_and_changes_nothing() {
    let c = example_cluster().await;
    let before = ok(&c, &["node", "export"]).await;
    let dir = tempfile::tempdir().unwrap();

    let e = ww(&c, &["node", "add", "n[1-"]).await.unwrap_err();
    assert!(e.to_lowercase().contains("hostlist") || e.contains("n[1-"), "{e}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "nodes:\n  n1: [unclosed\n").unwrap();
    let e = ww(&c, &["node", "import", bad.to_str().unwrap(), "-y"])
        .await
        .unwrap_err();
    assert!(e.contains("not valid"), "{e}");
    // The file, line and column of the syntax error, not an unknown field `n1` of an
    // object called `nodes`.
    assert!(e.contains("bad.yaml is not valid (line 3, column 1)"), "{e}");
    assert!(!e.contains("unknown field"), "{e}");
    std::fs::write(&bad, "nodes:\n  n1:\n\tcomment: x\n").unwrap();
    let e = ww(&c, &["profile", "import", bad.to_str().unwrap(), "-y"])
        .await
        .unwrap_err();
    assert!(e.contains("(line 3, column 1)") && e.contains("tabs"), "{e}");

    std::fs::write(&bad, "nodes:\n  n1:\n    imagename: typo\n").unwrap();
    let e = ww(&c, &["node", "import", bad.to_str().unwrap(), "-y"])
        .await
        .unwrap_err();
    assert!(e.contains("imagename"), "{e}");

    let e = ww(
        &c,
        &["node", "set", "rack1-n[01-02]", "-y", "--hwaddr", "52:54:00:aa:bb:cc"],
    )
    .await
    .unwrap_err();
    assert!(e.contains("52:54:00:aa:bb:cc") && e.contains("rack1-n0"), "{e}");

    let e = ww(&c, &["node", "set", "rack1-n01", "-y", "--ipaddr", "10.10.0.101"])
        .await
        .unwrap_err();
    assert!(e.contains("gpu01"), "duplicate IP names the owner: {e}");

    let e = ww(&c, &["node", "set", "rack1-n01", "-y", "--hwaddr", "zz:zz"])
        .await
        .unwrap_err();
    assert!(e.contains("zz:zz"), "{e}");

    let e = ww(&c, &["node", "add", "bad/name"]).await.unwrap_err();
    assert!(e.contains("bad/name"), "{e}");
    // Names that would break hostnames and paths: the message says what is wrong and
    // what is allowed.
    let long = "n".repeat(64);
    for (name, what) in [("..", "only of dots"), (long.as_str(), "64 characters long")] {
        let e = ww(&c, &["node", "add", name]).await.unwrap_err();
        assert!(
            e.contains("invalid node name") && e.contains(what) && e.contains("1 to 63 of the characters"),
            "{e}"
        );
        assert_eq!(e.matches("invalid node name").count(), 1, "said once: {e}");
    }

    let e = ww(&c, &["node", "add", "gpu01"]).await.unwrap_err();
    assert!(e.contains("already exists"), "{e}");

    let e = ww(&c, &["node", "set", "nosuch", "-y", "--comment", "x"])
        .await
        .unwrap_err();
    assert!(e.contains("does not exist"), "{e}");

    assert_eq!(ok(&c, &["node", "export"]).await, before, "state unchanged");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edit_applies_changes_and_detects_concurrent_edits() {
    let c = example_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let heads = (0..3).map(|i| c.addr(i)).collect::<Vec<_>>().join(",");

    // An editor that changes the image.
    let ed = dir.path().join("ed.sh");
    std::fs::write(
        &ed,
        "#!/bin/sh\nsed -i 's/image name: rocky-9/image name: alma-9/' \"$1\"\n",
    )
    .unwrap();
    // An editor during whose session someone else changes the node.
    let racer = dir.path().join("racer.sh");
    std::fs::write(
        &racer,
        format!(
            "#!/bin/sh\n{} --heads {heads} node set gpu01 --comment concurrent -y >/dev/null || exit 1\nsed -i 's/image name: alma-9/image name: mine/' \"$1\"\n",
            env!("CARGO_BIN_EXE_wwctl")
        ),
    )
    .unwrap();
    for f in [&ed, &racer] {
        std::process::Command::new("chmod").arg("+x").arg(f).status().unwrap();
    }

    std::env::set_var("EDITOR", &ed);
    let out = ok(&c, &["node", "edit", "gpu01"]).await;
    assert!(out.contains("Updated 1"), "{out}");
    assert!(ok(&c, &["node", "export", "gpu01"])
        .await
        .contains("image name: alma-9"));

    std::env::set_var("EDITOR", &racer);
    let e = ww(&c, &["node", "edit", "gpu01"]).await.unwrap_err();
    assert!(e.contains("changed by someone else"), "{e}");
    let now = ok(&c, &["node", "export", "gpu01"]).await;
    assert!(
        now.contains("concurrent") && now.contains("alma-9"),
        "the concurrent change survives: {now}"
    );
    c.shutdown().await;
}

/// Behaviour matched to Warewulf 4.7's own tests (the shared conformance runner checks
/// the same; this keeps it covered where that data is absent), and the deviations
/// docs/COMPATIBILITY.md lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warewulf_47_behaviour() {
    let c = Cluster::start(1, settings()).await;
    let dir = tempfile::tempdir().unwrap();
    let export = |name: &'static str| {
        let c = &c;
        async move { ok(c, &["node", "export", name]).await }
    };

    // No `default` profile (a new cluster has one): a new node gets none.
    ok(&c, &["profile", "delete", "default", "-y"]).await;
    ok(&c, &["node", "add", "n01"]).await;
    assert_eq!(export("n01").await, "n01: {}\n");
    // With one, a node added without --profile gets it.
    ok(&c, &["profile", "add", "default"]).await;
    ok(&c, &["node", "add", "n02"]).await;
    assert!(
        export("n02").await.contains("profiles:\n  - default"),
        "{}",
        export("n02").await
    );

    // --profile naming a missing profile: refused, saying how to create it.
    let e = ww(&c, &["node", "set", "n01", "-y", "--profile=foo"])
        .await
        .unwrap_err();
    assert!(e.contains("wwctl profile add foo"), "{e}");
    let e = ww(&c, &["node", "add", "n09", "--profile", "default,foo"])
        .await
        .unwrap_err();
    assert!(e.contains("wwctl profile add foo"), "{e}");

    // A bare boolean flag does not swallow the node name; a boolean word is its value.
    ok(&c, &["node", "set", "--ipmiwrite", "n01", "-y"]).await;
    ok(&c, &["node", "add", "--discoverable", "n03"]).await;
    assert!(export("n01").await.contains("write: true"), "{}", export("n01").await);
    assert!(export("n03").await.contains("discoverable: true"));
    ok(&c, &["node", "set", "--ipmiwrite", "false", "n01", "-y"]).await;
    assert!(export("n01").await.contains("write: false"), "{}", export("n01").await);

    // A profile's comment is not inherited.
    ok(&c, &["profile", "set", "default", "-y", "--comment", "profile comment"]).await;
    let all = ok(&c, &["node", "list", "-a", "n02"]).await;
    assert!(!all.contains("profile comment") && !all.contains("Comment"), "{all}");

    // A network device emptied by unset/set is dropped, not kept and listed.
    ok(
        &c,
        &[
            "node",
            "set",
            "n01",
            "-y",
            "--ipaddr",
            "10.0.0.1",
            "--netmask",
            "255.0.0.0",
        ],
    )
    .await;
    ok(&c, &["node", "unset", "n01", "ipaddr", "netmask", "-y"]).await;
    assert!(
        !export("n01").await.contains("network devices"),
        "{}",
        export("n01").await
    );
    let net = ok(&c, &["node", "list", "-n", "n01"]).await;
    assert!(!net.contains("default"), "{net}");
    ok(&c, &["node", "set", "n01", "-y", "--nettagadd", "dns=1"]).await;
    ok(&c, &["node", "set", "n01", "-y", "--nettagdel", "dns"]).await;
    assert!(
        !export("n01").await.contains("network devices"),
        "{}",
        export("n01").await
    );
    // --ipaddr=0.0.0.0 clears the address (and so the device it emptied).
    ok(&c, &["node", "set", "n01", "-y", "--ipaddr", "10.0.0.1"]).await;
    ok(&c, &["node", "set", "n01", "-y", "--ipaddr=0.0.0.0"]).await;
    assert!(
        !export("n01").await.contains("network devices"),
        "{}",
        export("n01").await
    );

    // -n and -i tables are headed NODE.
    let ipmi = ok(&c, &["node", "list", "-i", "n01"]).await;
    assert!(ipmi.starts_with("NODE  "), "{ipmi}");
    assert!(net.starts_with("NODE  "), "{net}");

    // Extra commas: `n01,` is n01, a lone `,` lists everything; other verbs refuse it.
    let one = ok(&c, &["node", "list", "n01,"]).await;
    assert!(one.contains("n01") && !one.contains("n02"), "{one}");
    let every = ok(&c, &["node", "list", ","]).await;
    assert!(every.contains("n01") && every.contains("n03"), "{every}");
    let e = ww(&c, &["node", "delete", ",", "-y"]).await.unwrap_err();
    assert!(e.contains("names no object"), "{e}");
    // n[-1] stays an error (Warewulf would expand it to n0,n1).
    assert!(ww(&c, &["node", "add", "node[-1]"]).await.is_err());

    // Deleting a missing node succeeds and deletes the others.
    ok(&c, &["node", "delete", "-y", "doesnotexist"]).await;
    let out = ok(&c, &["node", "delete", "-y", "n03", "doesnotexist"]).await;
    assert!(out.contains("Deleted 1"), "{out}");

    // Import of a Warewulf file: `id:` repeating the name is accepted, an undefined
    // referenced profile is created empty.
    let f = dir.path().join("importFile");
    std::fs::write(
        &f,
        "n1:\n  id: n1\n  profiles:\n  - rack\n  network devices:\n    eth0:\n      ipaddr: 192.168.1.10\n",
    )
    .unwrap();
    ok(&c, &["node", "import", f.to_str().unwrap(), "-y"]).await;
    assert!(export("n1").await.contains("- rack"), "{}", export("n1").await);
    assert_eq!(ok(&c, &["profile", "export", "rack"]).await, "rack: {}\n");
    c.shutdown().await;
}

/// `wwctl rack`: add, list views (golden), set (only the given fields, conditional on
/// the version read), bad input with the reason, delete refused while nodes use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rack_add_set_list_delete() {
    let c = example_cluster().await;
    ok(
        &c,
        &[
            "rack",
            "add",
            "rack1",
            "--network",
            "10.10.0.0/24",
            "--head",
            "1=10.10.0.251",
            "--head",
            "2=10.10.0.252",
            "--router",
            "10.10.0.254",
            "--dns",
            "10.10.0.251,10.10.0.252",
            "--domain",
            "cluster.local",
            "--lease-time",
            "90m",
            "--pool",
            "10.10.0.200-10.10.0.250",
        ],
    )
    .await;
    ok(
        &c,
        &[
            "rack",
            "add",
            "far",
            "--network",
            "10.20.0.0/24",
            "--relayed",
            "--head",
            "2=10.0.0.2",
            "--head",
            "1=10.0.0.1",
        ],
    )
    .await;
    golden("rack_list.txt", &ok(&c, &["rack", "list"]).await);
    golden("rack_list_all.txt", &ok(&c, &["rack", "list", "-a", "rack1"]).await);
    let json: serde_json::Value = serde_json::from_str(&ok(&c, &["-o", "json", "rack", "list"]).await).unwrap();
    assert_eq!(json["far"]["heads"][0]["addr"], "10.0.0.2");
    assert_eq!(json["rack1"]["lease_secs"], 5400);

    // set changes only what is given.
    ok(
        &c,
        &[
            "rack",
            "set",
            "rack1",
            "--head",
            "2=10.10.0.252",
            "--head",
            "1=10.10.0.251",
            "--pool",
            "",
        ],
    )
    .await;
    let json: serde_json::Value =
        serde_json::from_str(&ok(&c, &["-o", "json", "rack", "list", "rack1"]).await).unwrap();
    assert_eq!(json["rack1"]["heads"][0]["id"], 2);
    assert!(json["rack1"]["pool"].is_null());
    assert_eq!(json["rack1"]["router"], "10.10.0.254", "untouched");
    assert!(ok(&c, &["rack", "set", "rack1", "--router", "10.10.0.254"])
        .await
        .contains("unchanged"));

    // Bad input says what is wrong.
    for (args, why) in [
        (vec!["rack", "add", "x", "--network", "10.30.0.0/24"], "--head"),
        (vec!["rack", "add", "x", "--head", "1=10.30.0.1"], "--network"),
        (
            vec!["rack", "add", "x", "--network", "10.30.0.0/24", "--head", "1:10.30.0.1"],
            "ID=ADDRESS",
        ),
        (
            vec!["rack", "add", "x", "--network", "10.10.0.0/16", "--head", "1=10.10.1.1"],
            "overlaps rack rack1",
        ),
        (
            vec![
                "rack",
                "add",
                "rack1",
                "--network",
                "10.40.0.0/24",
                "--head",
                "1=10.40.0.1",
            ],
            "already exists",
        ),
        (vec!["rack", "set", "nope", "--router", "10.1.1.1"], "does not exist"),
    ] {
        let e = ww(&c, &args).await.unwrap_err();
        assert!(e.contains(why), "{args:?}: {e}");
    }
    // rack1 holds the example's rack[1-2]-n* nodes (10.10.0.1-4): delete needs --force.
    let e = ww(&c, &["rack", "delete", "rack1"]).await.unwrap_err();
    assert!(e.contains("rack1-n01") && e.contains("--force"), "{e}");
    ok(&c, &["rack", "delete", "far"]).await;
    ok(&c, &["rack", "delete", "rack1", "--force"]).await;
    assert_eq!(
        ok(&c, &["rack", "list"]).await.lines().count(),
        1,
        "only the header is left"
    );
    c.shutdown().await;
}

/// `wwctl version`: wwctl's own, then each head's (a rolling upgrade shows mixed ones;
/// a head that does not answer says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn version_lists_wwctl_and_every_head() {
    let c = Cluster::start(3, settings()).await;
    let out = ok(&c, &["version"]).await;
    let v = env!("CARGO_PKG_VERSION");
    assert!(out.starts_with(&format!("wwctl version:\t {v}\n")), "{out}");
    for id in 1..=3 {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("head {id} (")) && l.ends_with(v)),
            "{out}"
        );
    }
    c.shutdown().await;
}
