use super::*;
use crate::model::PatchOp;

fn req(cmd: Command) -> Request {
    Request {
        id: None,
        cmd,
        audit: None,
    }
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
        audit: None,
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
                audit: None,
                id: Some(format!("r{i}")),
                cmd: Command::Init {
                    name: "c".into(),
                    default_profile: None,
                },
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
    let init = |p: Option<NodeConf>| {
        req(Command::Init {
            name: "lab".into(),
            default_profile: p.map(Box::new),
        })
    };
    assert!(s.apply(1, &init(Some(model::default_profile()))).0.is_ok());
    assert_eq!(s.cluster.name, "lab");
    assert_eq!(s.profiles["default"].value, model::default_profile());
    // A second Init keeps an edited default profile.
    s.profiles.get_mut("default").unwrap().value.comment = Some("mine".into());
    assert!(s.apply(2, &init(Some(model::default_profile()))).0.is_ok());
    assert_eq!(s.profiles["default"].value.comment.as_deref(), Some("mine"));
}

/// An `Init` written before the profile travelled in the command replays as it did:
/// the comment-only profile, whatever the built-in default is today.
#[test]
fn an_old_init_replays_as_before() {
    let mut s = State::default();
    let old: Request = serde_json::from_str(r#"{"id":null,"cmd":{"Init":{"name":"lab"}}}"#).unwrap();
    assert!(s.apply(1, &old).0.is_ok());
    let p = &s.profiles["default"].value;
    assert_eq!(p.comment.as_deref(), Some(model::DEFAULT_PROFILE_COMMENT));
    assert_eq!(
        *p,
        NodeConf {
            comment: p.comment.clone(),
            ..Default::default()
        }
    );
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
                ..Default::default()
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

/// A state with a `default` profile and `n` nodes named `b00000`…, each with its own MAC/IP.
fn many(n: usize) -> State {
    let mut s = base();
    for (c, chunk) in (0..n).collect::<Vec<_>>().chunks(1000).enumerate() {
        let items = chunk
            .iter()
            .map(|&i| {
                let mac = format!(
                    "52:54:00:{:02x}:{:02x}:{:02x}",
                    (i >> 16) & 255,
                    (i >> 8) & 255,
                    i & 255
                );
                let ip = format!("10.{}.{}.{}", 100 + (i >> 16), (i >> 8) & 255, i & 255);
                (format!("b{i:05}"), node(&mac, &ip))
            })
            .collect();
        let r = s.apply(
            10 + c as u64,
            &req(Command::Add {
                kind: Kind::Node,
                items,
            }),
        );
        assert!(r.0.is_ok(), "{r:?}");
    }
    s
}

fn bulk_comment(s: &State, round: usize) -> Command {
    Command::Patch {
        kind: Kind::Node,
        names: s.nodes.keys().cloned().collect(),
        patch: vec![PatchOp::Set {
            path: vec!["comment".into()],
            value: serde_json::Value::String(format!("round {round}")),
        }],
    }
}

#[test]
fn bulk_outcome_is_counts_and_digest_and_a_retry_answers_the_same() {
    let mut s = many(OUTCOME_KEEP_NAMES + 50);
    let names: Vec<String> = s.nodes.keys().cloned().collect();
    let r = Request {
        audit: None,
        id: Some("bulk-1".into()),
        cmd: bulk_comment(&s, 1),
    };
    let first = s.apply(100, &r).0.unwrap();
    assert!(first.is_summarized());
    assert!(first.changed.is_empty() && first.deleted.is_empty(), "{first:?}");
    assert_eq!(first.changed_count(), names.len() as u64);
    assert_eq!(first.deleted_count(), 0);
    assert_eq!(first.summary.as_ref().unwrap().digest, Outcome::digest(&names, &[]));

    let retry = s.apply(101, &r).0.unwrap();
    assert_eq!(retry, first, "a retry answers the first outcome");
    assert_eq!(retry.changed_count(), names.len() as u64);
    assert!(s.nodes.values().all(|v| v.version == 100), "the retry applied nothing");

    // Deleting them all: counted in `deleted`.
    let del = s
        .apply(
            102,
            &req(Command::Delete {
                kind: Kind::Node,
                names: names.clone(),
            }),
        )
        .0
        .unwrap();
    assert_eq!((del.changed_count(), del.deleted_count()), (0, names.len() as u64));
    assert_eq!(del.summary.unwrap().digest, Outcome::digest(&[], &names));
}

#[test]
fn small_outcomes_keep_their_lists_and_their_json() {
    let mut s = many(OUTCOME_KEEP_NAMES - 2); // plus n1 and n2 from `base`
    let o = s.apply(100, &req(bulk_comment(&s, 1))).0.unwrap();
    assert!(!o.is_summarized());
    assert_eq!(o.changed.len(), OUTCOME_KEEP_NAMES);
    assert_eq!(o.changed_count(), OUTCOME_KEEP_NAMES as u64);
    // Small outcomes serialize exactly as before `summary` existed, and old JSON reads.
    let small = Outcome {
        changed: vec!["n1".into()],
        deleted: vec!["n2".into()],
        summary: None,
    };
    assert_eq!(
        serde_json::to_string(&small).unwrap(),
        r#"{"changed":["n1"],"deleted":["n2"]}"#
    );
    let old: Outcome = serde_json::from_str(r#"{"changed":["n1"],"deleted":["n2"]}"#).unwrap();
    assert_eq!(old, small);
    let big: Outcome =
        serde_json::from_str(r#"{"changed":[],"deleted":[],"summary":{"changed":7,"deleted":1,"digest":"sha256:00"}}"#)
            .unwrap();
    assert_eq!((big.changed_count(), big.deleted_count()), (7, 1));
}

#[test]
fn a_large_pool_block_keeps_its_addresses_on_retry() {
    let mut s = State::default();
    let r = Request {
        audit: None,
        id: Some("reserve-1".into()),
        cmd: Command::ReservePoolBlock {
            holder: 7,
            head: 1,
            first: "10.1.0.1".parse().unwrap(),
            last: "10.1.255.254".parse().unwrap(),
            size: leases::MAX_BLOCK,
            lease_secs: 3600,
            now: 1000,
        },
    };
    let first = s.apply(1, &r).0.unwrap();
    assert_eq!(first.changed.len(), leases::MAX_BLOCK as usize);
    assert!(!first.is_summarized());
    assert_eq!(s.apply(2, &r).0.unwrap(), first, "the retry names the same addresses");
}

/// Memory proportional to the cluster, not to its history: 150 bulk `set`s over every
/// node (each remembered for exactly-once retries) at most double the snapshot. 1,000
/// nodes keep the debug-build test short while still failing clearly if lists were
/// remembered (8× the state); `cargo bench --bench restart` measures 10,000.
#[test]
fn exactly_once_memory_stays_small_after_bulk_writes() {
    let mut s = many(1_000);
    let before = serde_json::to_vec(&s).unwrap().len();
    for round in 0..150 {
        let r = Request {
            audit: None,
            id: Some(format!("bulk-{round}")),
            cmd: bulk_comment(&s, round),
        };
        assert!(s.apply(1000 + round as u64, &r).0.is_ok());
    }
    assert_eq!(s.dedup.len(), 150, "every bulk write is remembered");
    let after = serde_json::to_vec(&s).unwrap().len();
    assert!(
        after <= 2 * before,
        "state grew from {before} to {after} bytes after 150 bulk sets"
    );
}

#[test]
fn a_removed_heads_id_is_retired_and_its_address_forgotten() {
    let mut s = State::default();
    let reg = |id: u64| Request {
        audit: None,
        id: None,
        cmd: Command::RegisterHead {
            id,
            info: HeadInfo {
                http: format!("10.0.0.{id}:9873"),
                ..Default::default()
            },
        },
    };
    s.apply(1, &reg(4)).0.unwrap();
    s.apply(
        2,
        &Request {
            audit: None,
            id: None,
            cmd: Command::HeadRemoved { id: 4 },
        },
    )
    .0
    .unwrap();
    assert!(!s.cluster.heads.contains_key(&4), "no head fetches from or probes it");
    assert!(s.cluster.removed.contains(&4));
    // The old process, still running, cannot register itself back.
    let e = s.apply(3, &reg(4)).0.unwrap_err();
    assert!(e.to_string().contains("never reused"), "{e}");
    assert!(!s.cluster.heads.contains_key(&4));
}

#[test]
fn digest_is_equal_for_equal_states_and_differs_on_any_change() {
    // Two replicas that applied the same commands under different request ids (the
    // exactly-once memory differs, the replicated state does not): the same digest.
    let mut a = base();
    let mut b = base();
    let patch = |id: &str| Request {
        audit: None,
        id: Some(id.into()),
        cmd: Command::Patch {
            kind: Kind::Node,
            names: vec!["n1".into()],
            patch: vec![PatchOp::Set {
                path: vec!["comment".into()],
                value: "x".into(),
            }],
        },
    };
    assert!(a.apply(3, &patch("req-a")).0.is_ok());
    assert!(b.apply(3, &patch("req-b")).0.is_ok());
    let d = |s: &State| state_digest(&s.canonical_bytes());
    assert_eq!(d(&a), d(&b));
    assert_eq!(d(&a).len(), 64);
    // A decoded snapshot of a state has its digest.
    let copy: State = serde_json::from_slice(&serde_json::to_vec(&a).unwrap()).unwrap();
    assert_eq!(d(&copy), d(&a));
    // One field of one node changes it.
    let mut e = a.clone();
    let other = Command::Patch {
        kind: Kind::Node,
        names: vec!["n2".into()],
        patch: vec![PatchOp::Set {
            path: vec!["comment".into()],
            value: "y".into(),
        }],
    };
    assert!(e.apply(4, &req(other)).0.is_ok());
    assert_ne!(d(&e), d(&a));
}

#[test]
fn a_masked_password_written_back_keeps_the_stored_one() {
    let mut s = base();
    let with_password = |p: &str| {
        let mut c = node("aa:bb:cc:dd:ee:01", "10.0.0.1");
        c.ipmi = Some(model::IpmiConf {
            password: Some(p.into()),
            ..Default::default()
        });
        c
    };
    let put = |conf| {
        req(Command::Put {
            kind: Kind::Node,
            items: vec![Put {
                name: "n1".into(),
                conf,
                expect: None,
            }],
        })
    };
    let password = |s: &State| s.nodes["n1"].value.ipmi.as_ref().and_then(|i| i.password.clone());
    assert!(s.apply(3, &put(with_password("s3cret"))).0.is_ok());
    // Sent back as it was shown (an edit or an export → import): unchanged.
    assert!(s.apply(4, &put(with_password(SECRET_MASK))).0.is_ok());
    assert_eq!(password(&s).as_deref(), Some("s3cret"));
    // A new value replaces it.
    assert!(s.apply(5, &put(with_password("n3w"))).0.is_ok());
    assert_eq!(password(&s).as_deref(), Some("n3w"));
    // The mask never becomes a password: a node that had none still has none.
    let mut fresh = with_password(SECRET_MASK);
    fresh.network_devices.clear();
    let r = s.apply(
        6,
        &req(Command::Add {
            kind: Kind::Node,
            items: vec![("n3".into(), fresh)],
        }),
    );
    assert!(r.0.is_ok(), "{r:?}");
    assert_eq!(s.nodes["n3"].value.ipmi.as_ref().and_then(|i| i.password.clone()), None);
}
