//! Names enter the replicated state through several commands (node/profile add, put,
//! import, image put/rename/copy, cluster init); every one of them must refuse what
//! `model::validate_name` refuses, with its message, and leave the state unchanged.

use wulfpack::model::{self, NodeConf, NodesConf};
use wulfpack::state::{ApplyResult, Command, ImageCommand, ImageEntry, Kind, Put, Request, State};

fn apply(s: &mut State, index: u64, cmd: Command) -> ApplyResult {
    s.apply(
        index,
        &Request {
            id: None,
            cmd,
            audit: None,
        },
    )
}

fn initialised() -> State {
    let mut s = State::default();
    let r = apply(
        &mut s,
        1,
        Command::Init {
            name: "c1".into(),
            default_profile: None,
        },
    );
    assert!(r.0.is_ok(), "{r:?}");
    s
}

fn entry() -> ImageEntry {
    ImageEntry {
        source: "dir:/tmp/x".into(),
        platform: "linux/amd64".into(),
        layers: vec![],
        config: None,
        rootfs_size: 0,
        files: 0,
        artifact: None,
        kernel: None,
        kernels: vec![],
        created: 1,
        updated: 1,
    }
}

/// The names every entry point must refuse, each with a word its message must contain.
fn bad_names() -> Vec<(String, &'static str)> {
    vec![
        ("..".into(), "only of dots"),
        ("a".repeat(64), "64 characters"),
        ("a".repeat(300), "300 characters"),
        ("a/b".into(), "'/'"),
        (String::new(), "empty"),
        ("n\u{1b}[31m".into(), "control character"),
        ("n 1".into(), "whitespace"),
    ]
}

/// Apply `cmd` to a copy of `s`: it must be refused with the validator's message for
/// `kind`, and change nothing.
fn refused(s: &State, index: u64, cmd: Command, kind: &str, what: &str) {
    let mut after = s.clone();
    let e = apply(&mut after, index, cmd.clone())
        .0
        .expect_err(&format!("{cmd:?} should be refused"))
        .to_string();
    assert!(e.contains(&format!("invalid {kind} name")), "{e}");
    assert!(e.contains(what), "expected {what:?} in {e}");
    assert!(e.contains("1 to 63 of the characters"), "the rule is missing: {e}");
    assert_eq!(after, *s, "a refused command changes nothing");
}

#[test]
fn every_entry_point_refuses_bad_names() {
    let mut s = initialised();
    let r = apply(
        &mut s,
        2,
        Command::Image(ImageCommand::Put {
            name: "rocky".into(),
            entry: Box::new(entry()),
            expect: None,
        }),
    );
    assert!(r.0.is_ok(), "{r:?}");
    for (name, what) in bad_names() {
        for kind in [Kind::Node, Kind::Profile] {
            refused(
                &s,
                3,
                Command::Add {
                    kind,
                    items: vec![(name.clone(), NodeConf::default())],
                },
                kind.as_str(),
                what,
            );
            refused(
                &s,
                3,
                Command::Put {
                    kind,
                    items: vec![Put {
                        name: name.clone(),
                        conf: NodeConf::default(),
                        expect: None,
                    }],
                },
                kind.as_str(),
                what,
            );
        }
        let mut conf = NodesConf::default();
        conf.nodes.insert(name.clone(), NodeConf::default());
        refused(&s, 3, Command::Import { conf }, "node", what);
        let mut conf = NodesConf::default();
        conf.nodeprofiles.insert(name.clone(), NodeConf::default());
        refused(&s, 3, Command::Import { conf }, "profile", what);

        refused(
            &s,
            3,
            Command::Image(ImageCommand::Put {
                name: name.clone(),
                entry: Box::new(entry()),
                expect: None,
            }),
            "image",
            what,
        );
        for cmd in [
            ImageCommand::Rename {
                from: "rocky".into(),
                to: name.clone(),
            },
            ImageCommand::Copy {
                from: "rocky".into(),
                to: name.clone(),
            },
        ] {
            refused(&s, 3, Command::Image(cmd), "image", what);
        }
        refused(
            &State::default(),
            1,
            Command::Init {
                name: name.clone(),
                default_profile: None,
            },
            "cluster",
            what,
        );

        // Names a node refers to: its image and overlays.
        let image = NodeConf {
            image_name: Some(name.clone()),
            ..Default::default()
        };
        let overlay = NodeConf {
            system_overlay: vec!["wwinit".into(), name.clone()],
            ..Default::default()
        };
        for (conf, kind) in [(image, "image (in n1)"), (overlay, "overlay (in n1)")] {
            refused(
                &s,
                3,
                Command::Add {
                    kind: Kind::Node,
                    items: vec![("n1".into(), conf)],
                },
                kind,
                what,
            );
        }
    }
}

#[test]
fn names_at_the_limit_are_accepted_everywhere() {
    let mut s = initialised();
    let longest = "a".repeat(model::MAX_NAME_LEN);
    let fqdn = "n0001.rack12.cluster";
    let conf = NodeConf {
        image_name: Some(longest.clone()),
        system_overlay: vec![longest.clone()],
        ..Default::default()
    };
    for (i, cmd) in [
        Command::Add {
            kind: Kind::Profile,
            items: vec![(longest.clone(), NodeConf::default())],
        },
        Command::Add {
            kind: Kind::Node,
            items: vec![(longest.clone(), conf), (fqdn.into(), NodeConf::default())],
        },
        Command::Image(ImageCommand::Put {
            name: longest.clone(),
            entry: Box::new(entry()),
            expect: None,
        }),
        Command::Image(ImageCommand::Copy {
            from: longest.clone(),
            to: fqdn.into(),
        }),
    ]
    .into_iter()
    .enumerate()
    {
        let r = apply(&mut s, 2 + i as u64, cmd);
        assert!(r.0.is_ok(), "{r:?}");
    }
    assert!(s.nodes.contains_key(&longest) && s.nodes.contains_key(fqdn));
    assert!(s.images.contains_key(fqdn));
}
