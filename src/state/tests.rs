use super::*;
use crate::model::PatchOp;

fn req(cmd: Command) -> Request {
    Request { id: None, cmd }
}

fn node(mac: &str, ip: &str) -> NodeConf {
    let mut c = NodeConf {
        profiles: vec!["default".into()],
        ..Default::default()
    };
    c.network_devices.insert(
        "default".into(),
        model::NetDev {
            hwaddr: Some(mac.into()),
            ipaddr: Some(ip.into()),
            ..Default::default()
        },
    );
    c
}

/// A state with a `default` profile and nodes n1, n2.
fn base() -> State {
    let mut s = State::default();
    let ok = s.apply(
        1,
        &req(Command::Add {
            kind: Kind::Profile,
            items: vec![("default".into(), NodeConf::default())],
        }),
    );
    assert!(ok.0.is_ok(), "{ok:?}");
    let ok = s.apply(
        2,
        &req(Command::Add {
            kind: Kind::Node,
            items: vec![
                ("n1".into(), node("aa:bb:cc:dd:ee:01", "10.0.0.1")),
                ("n2".into(), node("aa:bb:cc:dd:ee:02", "10.0.0.2")),
            ],
        }),
    );
    assert!(ok.0.is_ok(), "{ok:?}");
    s
}

fn err(r: ApplyResult) -> CommandError {
    r.0.expect_err("command should have been refused")
}

#[test]
fn add_sets_versions_and_refuses_existing() {
    let mut s = base();
    assert_eq!(s.nodes["n1"].version, 2);
    let before = s.clone();
    let e = err(s.apply(
        3,
        &req(Command::Add {
            kind: Kind::Node,
            items: vec![
                ("n3".into(), node("aa:bb:cc:dd:ee:03", "10.0.0.3")),
                ("n1".into(), NodeConf::default()),
            ],
        }),
    ));
    assert!(matches!(e, CommandError::Exists { .. }), "{e}");
    assert_eq!(s, before, "a refused batch changes nothing");
}

#[test]
fn duplicate_mac_and_ip_refused_atomically() {
    let mut s = base();
    let before = s.clone();
    // Duplicate against an existing node.
    let e = err(s.apply(
        3,
        &req(Command::Add {
            kind: Kind::Node,
            items: vec![("n3".into(), node("AA:BB:CC:DD:EE:01", "10.0.0.9"))],
        }),
    ));
    assert!(e.to_string().contains("n1") && e.to_string().contains("n3"), "{e}");
    // Duplicate within one batch.
    let e = err(s.apply(
        3,
        &req(Command::Add {
            kind: Kind::Node,
            items: vec![
                ("n3".into(), node("aa:bb:cc:dd:ee:03", "10.0.0.3")),
                ("n4".into(), node("aa:bb:cc:dd:ee:04", "10.0.0.3")),
            ],
        }),
    ));
    assert!(e.to_string().contains("10.0.0.3"), "{e}");
    assert_eq!(s, before);
}

#[test]
fn swapping_addresses_in_one_command_is_allowed() {
    let mut s = base();
    let r = s.apply(
        3,
        &req(Command::Put {
            kind: Kind::Node,
            items: vec![
                Put {
                    name: "n1".into(),
                    conf: node("aa:bb:cc:dd:ee:02", "10.0.0.2"),
                    expect: None,
                },
                Put {
                    name: "n2".into(),
                    conf: node("aa:bb:cc:dd:ee:01", "10.0.0.1"),
                    expect: None,
                },
            ],
        }),
    );
    assert!(r.0.is_ok(), "{r:?}");
    // The index follows: n3 may not take n1's new MAC.
    let e = err(s.apply(
        4,
        &req(Command::Add {
            kind: Kind::Node,
            items: vec![("n3".into(), node("aa:bb:cc:dd:ee:02", "10.0.0.3"))],
        }),
    ));
    assert!(e.to_string().contains("n1"), "{e}");
}

#[test]
fn freed_address_can_be_reused() {
    let mut s = base();
    let r = s.apply(
        3,
        &req(Command::Delete {
            kind: Kind::Node,
            names: vec!["n1".into()],
        }),
    );
    assert_eq!(r.0.unwrap().deleted, vec!["n1"]);
    let r = s.apply(
        4,
        &req(Command::Add {
            kind: Kind::Node,
            items: vec![("n9".into(), node("aa:bb:cc:dd:ee:01", "10.0.0.1"))],
        }),
    );
    assert!(r.0.is_ok(), "{r:?}");
}

#[test]
fn conditional_put_detects_concurrent_change() {
    let mut s = base();
    let read_version = s.nodes["n1"].version;
    // Someone else changes n1.
    let r = s.apply(
        3,
        &req(Command::Patch {
            kind: Kind::Node,
            names: vec!["n1".into()],
            patch: vec![PatchOp::Set {
                path: vec!["comment".into()],
                value: "theirs".into(),
            }],
        }),
    );
    assert!(r.0.is_ok());
    let mut mine = s.nodes["n1"].value.clone();
    mine.comment = Some("mine".into());
    let e = err(s.apply(
        4,
        &req(Command::Put {
            kind: Kind::Node,
            items: vec![Put {
                name: "n1".into(),
                conf: mine,
                expect: Some(read_version),
            }],
        }),
    ));
    assert!(
        matches!(
            e,
            CommandError::Conflict {
                expected: 2,
                actual: 3,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(s.nodes["n1"].value.comment.as_deref(), Some("theirs"));
}

#[test]
fn patch_of_missing_node_or_bad_value_changes_nothing() {
    let mut s = base();
    let before = s.clone();
    let e = err(s.apply(
        3,
        &req(Command::Patch {
            kind: Kind::Node,
            names: vec!["n1".into(), "nope".into()],
            patch: vec![PatchOp::Set {
                path: vec!["comment".into()],
                value: "x".into(),
            }],
        }),
    ));
    assert!(matches!(e, CommandError::NotFound { .. }), "{e}");
    let e = err(s.apply(
        3,
        &req(Command::Patch {
            kind: Kind::Node,
            names: vec!["n1".into()],
            patch: vec![PatchOp::Set {
                path: vec!["network devices".into(), "default".into(), "hwaddr".into()],
                value: "not-a-mac".into(),
            }],
        }),
    ));
    assert!(matches!(e, CommandError::Invalid(_)), "{e}");
    assert_eq!(s, before);
}

#[test]
fn unknown_profile_and_profile_in_use_refused() {
    let mut s = base();
    let mut c = node("aa:bb:cc:dd:ee:03", "10.0.0.3");
    c.profiles.push("gpu".into());
    let e = err(s.apply(
        3,
        &req(Command::Add {
            kind: Kind::Node,
            items: vec![("n3".into(), c)],
        }),
    ));
    assert!(e.to_string().contains("gpu"), "{e}");
    let e = err(s.apply(
        3,
        &req(Command::Delete {
            kind: Kind::Profile,
            names: vec!["default".into()],
        }),
    ));
    assert!(matches!(e, CommandError::InUse { .. }), "{e}");
    // Deleting the nodes and the profile together is fine.
    let r = s.apply(
        3,
        &req(Command::Import {
            conf: NodesConf::default(),
        }),
    );
    assert!(r.0.is_ok());
}

#[test]
fn bad_names_refused() {
    let mut s = base();
    let e = err(s.apply(
        3,
        &req(Command::Add {
            kind: Kind::Node,
            items: vec![("bad name!".into(), NodeConf::default())],
        }),
    ));
    assert!(e.to_string().contains("bad name!"), "{e}");
}

#[test]
fn retried_request_applies_once() {
    let mut s = base();
    let r = Request {
        id: Some("req-1".into()),
        cmd: Command::Add {
            kind: Kind::Node,
            items: vec![("n3".into(), node("aa:bb:cc:dd:ee:03", "10.0.0.3"))],
        },
    };
    let first = s.apply(3, &r);
    assert!(first.0.is_ok());
    // The same request committed again (client retry after a lost answer).
    let second = s.apply(4, &r);
    assert_eq!(first, second, "a retry returns the first outcome");
    assert_eq!(s.nodes["n3"].version, 3);
}

#[test]
fn dedup_window_is_bounded() {
    let mut s = State::default();
    for i in 0..(DEDUP_WINDOW + 10) {
        s.apply(
            i as u64 + 1,
            &Request {
                id: Some(format!("r{i}")),
                cmd: Command::Init { name: "c".into() },
            },
        );
    }
    assert_eq!(s.dedup.len(), DEDUP_WINDOW);
    assert_eq!(s.dedup_order.len(), DEDUP_WINDOW);
}

#[test]
fn snapshot_round_trip_rebuilds_index() {
    let s = base();
    let json = serde_json::to_string(&s).unwrap();
    let mut restored: State = serde_json::from_str(&json).unwrap();
    restored.rebuild_index();
    assert_eq!(restored, s);
    // The rebuilt index still guards uniqueness.
    let e = err(restored.apply(
        9,
        &req(Command::Add {
            kind: Kind::Node,
            items: vec![("n3".into(), node("aa:bb:cc:dd:ee:01", "10.0.0.7"))],
        }),
    ));
    assert!(e.to_string().contains("n1"), "{e}");
}

#[test]
fn init_creates_default_profile_once() {
    let mut s = State::default();
    assert!(s.apply(1, &req(Command::Init { name: "lab".into() })).0.is_ok());
    assert_eq!(s.cluster.name, "lab");
    assert!(s.profiles.contains_key("default"));
    // A second Init keeps an edited default profile.
    s.profiles.get_mut("default").unwrap().value.comment = Some("mine".into());
    assert!(s.apply(2, &req(Command::Init { name: "lab".into() })).0.is_ok());
    assert_eq!(s.profiles["default"].value.comment.as_deref(), Some("mine"));
}

#[test]
fn query_reports_missing_names() {
    let s = base();
    let r = s.query(&Query {
        nodes: Selector::Names(vec!["n1".into(), "zz".into()]),
        ..Query::profiles(Selector::All)
    });
    assert_eq!(r.nodes.keys().collect::<Vec<_>>(), vec!["n1"]);
    assert_eq!(r.missing, vec!["zz"]);
    assert_eq!(r.profiles.len(), 1);
}

fn image(seed: &[u8]) -> ImageEntry {
    ImageEntry {
        source: "dir:/tmp/x".into(),
        platform: "linux/amd64".into(),
        layers: vec![LayerRef {
            digest: model::Digest::of(seed),
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            size: 10,
        }],
        config: None,
        rootfs_size: 10,
        files: 1,
        artifact: None,
        kernel: None,
        kernels: vec![],
        created: 1,
        updated: 1,
    }
}

fn img(c: ImageCommand) -> Request {
    req(Command::Image(c))
}

#[test]
fn image_put_is_conditional_and_lists_blobs() {
    let mut s = base();
    let put = |expect| {
        img(ImageCommand::Put {
            name: "rocky9".into(),
            entry: Box::new(image(b"a")),
            expect,
        })
    };
    assert!(s.apply(3, &put(Some(0))).0.is_ok());
    assert!(matches!(err(s.apply(4, &put(Some(0)))), CommandError::Exists { .. }));
    assert!(matches!(err(s.apply(4, &put(Some(2)))), CommandError::Conflict { .. }));
    assert!(s.apply(4, &put(Some(3))).0.is_ok());
    assert_eq!(s.images["rocky9"].version, 4);
    assert_eq!(s.images["rocky9"].value.blobs().count(), 1);
    let e = err(s.apply(
        5,
        &img(ImageCommand::Put {
            name: "bad name".into(),
            entry: Box::new(image(b"a")),
            expect: None,
        }),
    ));
    assert!(e.to_string().contains("bad name"), "{e}");
}

#[test]
fn image_delete_refused_while_used_unless_forced() {
    let mut s = base();
    s.apply(
        3,
        &img(ImageCommand::Put {
            name: "rocky9".into(),
            entry: Box::new(image(b"a")),
            expect: None,
        }),
    );
    s.apply(
        4,
        &req(Command::Patch {
            kind: Kind::Node,
            names: vec!["n1".into()],
            patch: vec![PatchOp::Set {
                path: vec!["image name".into()],
                value: "rocky9".into(),
            }],
        }),
    );
    let e = err(s.apply(
        5,
        &img(ImageCommand::Delete {
            name: "rocky9".into(),
            force: false,
        }),
    ));
    assert!(e.to_string().contains("node n1"), "{e}");
    assert!(s.images.contains_key("rocky9"));
    assert!(s
        .apply(
            5,
            &img(ImageCommand::Delete {
                name: "rocky9".into(),
                force: true
            })
        )
        .0
        .is_ok());
    assert!(!s.images.contains_key("rocky9"));
}

#[test]
fn image_rename_follows_references_and_copy_shares_blobs() {
    let mut s = base();
    s.apply(
        3,
        &img(ImageCommand::Put {
            name: "a".into(),
            entry: Box::new(image(b"a")),
            expect: None,
        }),
    );
    s.profiles.get_mut("default").unwrap().value.image_name = Some("a".into());
    s.apply(
        4,
        &img(ImageCommand::Copy {
            from: "a".into(),
            to: "b".into(),
        }),
    );
    assert_eq!(s.images["a"].value, s.images["b"].value);
    let e = err(s.apply(
        5,
        &img(ImageCommand::Rename {
            from: "a".into(),
            to: "b".into(),
        }),
    ));
    assert!(matches!(e, CommandError::Exists { .. }), "{e}");
    let out = s
        .apply(
            5,
            &img(ImageCommand::Rename {
                from: "a".into(),
                to: "c".into(),
            }),
        )
        .0
        .unwrap();
    assert_eq!(out.deleted, vec!["a"]);
    assert_eq!(s.profiles["default"].value.image_name.as_deref(), Some("c"));
    assert_eq!(s.profiles["default"].version, 5);
    assert!(matches!(
        err(s.apply(
            6,
            &img(ImageCommand::Copy {
                from: "zz".into(),
                to: "y".into()
            })
        )),
        CommandError::NotFound { .. }
    ));
}

#[test]
fn heads_register_their_addresses() {
    let mut s = State::default();
    s.apply(
        1,
        &req(Command::RegisterHead {
            id: 2,
            info: HeadInfo {
                http: "127.0.0.1:9873".into(),
            },
        }),
    );
    assert_eq!(s.cluster.heads[&2].http, "127.0.0.1:9873");
}

#[test]
fn discovery_assigns_a_mac_exactly_once_in_name_order() {
    let mut s = base();
    for name in ["spare2", "spare1"] {
        let r = s.apply(
            3,
            &req(Command::Add {
                kind: Kind::Node,
                items: vec![(
                    name.into(),
                    NodeConf {
                        profiles: vec!["default".into()],
                        discoverable: Some(true),
                        ..Default::default()
                    },
                )],
            }),
        );
        assert!(r.0.is_ok(), "{r:?}");
    }
    let d = |mac: &str| req(Command::Discover { mac: mac.into() });
    let first = s.apply(4, &d("02:aa:00:00:00:01")).0.unwrap();
    assert_eq!(first.changed, vec!["spare1"], "Warewulf's order: by name");
    let n = &s.nodes["spare1"];
    assert_eq!(n.version, 4);
    assert_eq!(n.value.discoverable, Some(false));
    assert_eq!(
        n.value.network_devices["default"].hwaddr.as_deref(),
        Some("02:aa:00:00:00:01")
    );
    // The same MAC again (another head saw it too): the same node, nothing changes.
    assert_eq!(s.apply(5, &d("02:AA:00:00:00:01")).0.unwrap().changed, vec!["spare1"]);
    assert_eq!(s.nodes["spare1"].version, 4);
    assert_eq!(s.apply(6, &d("02:aa:00:00:00:02")).0.unwrap().changed, vec!["spare2"]);
    let e = err(s.apply(7, &d("02:aa:00:00:00:03")));
    assert!(matches!(e, CommandError::NotFound { .. }), "{e}");
    // The assigned MAC is now guarded by uniqueness.
    let e = err(s.apply(
        8,
        &req(Command::Patch {
            kind: Kind::Node,
            names: vec!["n1".into()],
            patch: vec![PatchOp::Set {
                path: vec!["network devices".into(), "default".into(), "hwaddr".into()],
                value: "02:aa:00:00:00:01".into(),
            }],
        }),
    ));
    assert!(e.to_string().contains("spare1"), "{e}");
}
