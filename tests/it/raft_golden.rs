//! Golden JSON of what the Raft log and snapshots persist: every [`Command`] (as a
//! [`Request`]), the [`ApplyResult`]s the exactly-once memory keeps, and a small
//! [`State`] snapshot.
//!
//! Each test first reads the checked-in JSON back and compares it with the fixture, so a
//! change that would make old logs or snapshots unreadable fails as such; then it
//! compares the JSON written today with the file, so any change of the persisted format
//! is a visible diff. After a deliberate format change (one that keeps old logs readable,
//! or with a migration), regenerate the files with
//! `UPDATE_GOLDEN=1 cargo test --test it raft_golden` and review the diff.
//!
//! The fixtures are fixed values (no clock, no randomness), and every map in them is
//! ordered, so the JSON is byte-for-byte stable.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::Ipv4Addr;

use serde::de::DeserializeOwned;
use serde::Serialize;
use wulfpack::model::{self, Digest, NodeConf, NodesConf, PatchOp};
use wulfpack::state::{
    AccessCommand, ApplyResult, Artifact, Command, CommandError, HeadInfo, ImageCommand, ImageEntry, KernelRef, Kind,
    LayerRef, LeaseOp, Outcome, OverlayCommand, Put, Rack, RackCommand, RackHead, RackPool, Request, SshCommand, State,
};

use crate::harness::golden;

/// Compare `value` with `tests/golden/FILE` as pretty JSON, reading the file back first.
fn golden_json<T: Serialize + DeserializeOwned + PartialEq + Debug>(file: &str, value: &T) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_none() {
        let stored = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
        let back: T = serde_json::from_str(&stored).unwrap_or_else(|e| {
            panic!(
                "{} no longer deserializes ({e}): logs and snapshots written before this change \
                 would be unreadable",
                path.display()
            )
        });
        assert_eq!(&back, value, "{} reads back as a different value", path.display());
    }
    golden(file, &(serde_json::to_string_pretty(value).unwrap() + "\n"));
}

const NOW: u64 = 1_700_000_000;

fn digest(seed: &str) -> Digest {
    Digest::of(seed.as_bytes())
}

fn node_conf() -> NodeConf {
    model::parse_node_conf(
        "profiles: [default]\n\
         comment: rack 1, slot 1\n\
         image name: rocky-9\n\
         system overlay: [wwinit, ~generic]\n\
         kernel:\n  args: [quiet, console=ttyS0]\n\
         ipmi:\n  ipaddr: 10.0.1.1\n  write: true\n\
         network devices:\n  default:\n    device: eth0\n    hwaddr: aa:bb:cc:dd:ee:01\n    ipaddr: 10.0.0.1\n    netmask: 255.255.255.0\n\
         tags:\n  rack: '1'\n\
         disks:\n  /dev/vda:\n    wipe_table: true\n    partitions:\n      swap:\n        number: '2'\n        size_mib: '1024'\n",
    )
    .unwrap()
}

fn profile_conf() -> NodeConf {
    model::parse_node_conf("comment: all nodes\nruntime overlay: [hosts]\nkernel:\n  version: 6.1.0-13\n").unwrap()
}

fn kernel(version: &str) -> KernelRef {
    KernelRef {
        digest: digest(version),
        version: version.into(),
        release: format!("{version}-amd64"),
        path: format!("boot/vmlinuz-{version}-amd64"),
        size: 8_000_000,
    }
}

fn image_entry() -> ImageEntry {
    ImageEntry {
        source: format!("docker://registry.example/rocky@{}", digest("manifest")),
        platform: "linux/amd64".into(),
        layers: vec![LayerRef {
            digest: digest("layer-1"),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            size: 75_000_000,
        }],
        config: Some(digest("config")),
        rootfs_size: 250_000_000,
        files: 31_000,
        artifact: Some(Artifact {
            uncompressed: 0,
            digest: digest("cpio"),
            size: 90_000_000,
            build_key: "v1:layers+excludes".into(),
        }),
        kernel: Some(kernel("6.1.0-13")),
        kernels: vec![kernel("6.1.0-13"), kernel("6.1.0-12")],
        created: NOW,
        updated: NOW + 60,
    }
}

/// The variant a command is, by name. Exhaustive on purpose: a new variant does not
/// compile until it is named here, in [`ALL_COMMANDS`] and in [`requests`].
fn command_variant(c: &Command) -> &'static str {
    match c {
        Command::Add { .. } => "Add",
        Command::Put { .. } => "Put",
        Command::Patch { .. } => "Patch",
        Command::Delete { .. } => "Delete",
        Command::Import { .. } => "Import",
        Command::Image(ImageCommand::Put { .. }) => "Image::Put",
        Command::Image(ImageCommand::Delete { .. }) => "Image::Delete",
        Command::Image(ImageCommand::Rename { .. }) => "Image::Rename",
        Command::Image(ImageCommand::Copy { .. }) => "Image::Copy",
        Command::Overlay(OverlayCommand::RegisterDistribution { .. }) => "Overlay::RegisterDistribution",
        Command::Overlay(OverlayCommand::PutSite { .. }) => "Overlay::PutSite",
        Command::Overlay(OverlayCommand::DeleteSite { .. }) => "Overlay::DeleteSite",
        Command::Rack(RackCommand::Put { .. }) => "Rack::Put",
        Command::Rack(RackCommand::Delete { .. }) => "Rack::Delete",
        Command::Ssh(SshCommand::SetHostKeys { .. }) => "Ssh::SetHostKeys",
        Command::Ssh(SshCommand::SetRootKeys { .. }) => "Ssh::SetRootKeys",
        Command::Access(AccessCommand::AddCredential { .. }) => "Access::AddCredential",
        Command::Access(AccessCommand::Revoke { .. }) => "Access::Revoke",
        Command::Access(AccessCommand::RevokeSerial { .. }) => "Access::RevokeSerial",
        Command::Access(AccessCommand::CreateToken { .. }) => "Access::CreateToken",
        Command::Access(AccessCommand::UseToken { .. }) => "Access::UseToken",
        Command::HeadRemoved { .. } => "HeadRemoved",
        Command::ReservePoolBlock { .. } => "ReservePoolBlock",
        Command::RecordLeases { .. } => "RecordLeases",
        Command::Discover { .. } => "Discover",
        Command::RegisterHead { .. } => "RegisterHead",
        Command::Init { .. } => "Init",
    }
}

const ALL_COMMANDS: &[&str] = &[
    "Add",
    "Put",
    "Patch",
    "Delete",
    "Import",
    "Image::Put",
    "Image::Delete",
    "Image::Rename",
    "Image::Copy",
    "Overlay::RegisterDistribution",
    "Overlay::PutSite",
    "Overlay::DeleteSite",
    "Rack::Put",
    "Rack::Delete",
    "Ssh::SetHostKeys",
    "Ssh::SetRootKeys",
    "Access::AddCredential",
    "Access::Revoke",
    "Access::RevokeSerial",
    "Access::CreateToken",
    "Access::UseToken",
    "HeadRemoved",
    "ReservePoolBlock",
    "RecordLeases",
    "Discover",
    "RegisterHead",
    "Init",
];

fn lease_variant(op: &LeaseOp) -> &'static str {
    match op {
        LeaseOp::Bind { .. } => "Bind",
        LeaseOp::Release { .. } => "Release",
        LeaseOp::Decline { .. } => "Decline",
    }
}

/// One request per command variant, keyed by a readable name.
fn requests() -> BTreeMap<String, Request> {
    let mut import = NodesConf::default();
    import.nodeprofiles.insert("default".into(), profile_conf());
    import.nodes.insert("n0001.rack1".into(), node_conf());
    let ip = |last: u8| Ipv4Addr::new(10, 0, 100, last);
    let cmds = [
        (
            "add",
            Command::Add {
                kind: Kind::Node,
                items: vec![("n1".into(), node_conf()), ("n2".into(), NodeConf::default())],
            },
        ),
        (
            "put",
            Command::Put {
                kind: Kind::Profile,
                items: vec![
                    Put {
                        name: "default".into(),
                        conf: profile_conf(),
                        expect: Some(7),
                    },
                    Put {
                        name: "new".into(),
                        conf: NodeConf::default(),
                        expect: Some(0),
                    },
                    Put {
                        name: "any".into(),
                        conf: NodeConf::default(),
                        expect: None,
                    },
                ],
            },
        ),
        (
            "patch",
            Command::Patch {
                kind: Kind::Node,
                names: vec!["n1".into(), "n2".into()],
                patch: vec![
                    PatchOp::set(&["image name"], "alma-9"),
                    PatchOp::set(&["network devices", "default", "mtu"], "9000"),
                    PatchOp::unset(&["comment"]),
                    PatchOp::append(&["kernel", "args"], &["nomodeset"]),
                    PatchOp::remove(&["system overlay"], &["~generic"]),
                ],
            },
        ),
        (
            "delete",
            Command::Delete {
                kind: Kind::Profile,
                names: vec!["old".into()],
            },
        ),
        ("import", Command::Import { conf: import }),
        (
            "image_put",
            Command::Image(ImageCommand::Put {
                name: "rocky-9".into(),
                entry: Box::new(image_entry()),
                expect: Some(0),
            }),
        ),
        (
            "image_delete",
            Command::Image(ImageCommand::Delete {
                name: "rocky-8".into(),
                force: true,
            }),
        ),
        (
            "image_rename",
            Command::Image(ImageCommand::Rename {
                from: "rocky-9".into(),
                to: "rocky-9.4".into(),
            }),
        ),
        (
            "image_copy",
            Command::Image(ImageCommand::Copy {
                from: "rocky-9".into(),
                to: "rocky-9-test".into(),
            }),
        ),
        (
            "reserve_pool_block",
            Command::ReservePoolBlock {
                holder: 11,
                head: 1,
                first: ip(1),
                last: ip(200),
                size: 16,
                lease_secs: 3600,
                now: NOW,
            },
        ),
        (
            "record_leases",
            Command::RecordLeases {
                holder: 11,
                now: NOW + 5,
                ops: vec![
                    LeaseOp::Bind {
                        mac: "52:54:00:00:00:01".into(),
                        ip: ip(1),
                        expires: NOW + 3605,
                        lease_secs: 3600,
                    },
                    LeaseOp::Release {
                        mac: "52:54:00:00:00:02".into(),
                        ip: ip(2),
                    },
                    LeaseOp::Decline {
                        mac: "52:54:00:00:00:03".into(),
                        ip: ip(3),
                    },
                ],
            },
        ),
        (
            "discover",
            Command::Discover {
                mac: "52:54:00:aa:bb:cc".into(),
            },
        ),
        (
            "register_head",
            Command::RegisterHead {
                id: 2,
                info: HeadInfo {
                    http: "10.0.0.2:9702".into(),
                    ..Default::default()
                },
            },
        ),
        (
            "init",
            Command::Init {
                name: "cluster01".into(),
                default_profile: None,
            },
        ),
        (
            "overlay_register_distribution",
            Command::Overlay(OverlayCommand::RegisterDistribution {
                set: [
                    ("hosts".to_string(), digest("hosts-tree")),
                    ("wwinit".to_string(), digest("wwinit-tree")),
                ]
                .into(),
                now: NOW,
            }),
        ),
        (
            "overlay_put_site",
            Command::Overlay(OverlayCommand::PutSite {
                name: "hosts".into(),
                digest: digest("hosts-site-tree"),
                expect: Some(12),
                now: NOW + 1,
            }),
        ),
        (
            "overlay_delete_site",
            Command::Overlay(OverlayCommand::DeleteSite {
                name: "hosts".into(),
                expect: None,
            }),
        ),
        (
            "rack_put",
            Command::Rack(RackCommand::Put {
                name: "rack1".into(),
                rack: Rack {
                    network: "10.10.0.0/24".parse().unwrap(),
                    relayed: false,
                    router: Some(ip(254)),
                    dns: vec![ip(1)],
                    domain: Some("cluster.local".into()),
                    lease_secs: Some(7200),
                    pool: Some(RackPool {
                        start: ip(200),
                        end: ip(250),
                    }),
                    heads: vec![RackHead { id: 1, addr: ip(1) }, RackHead { id: 2, addr: ip(2) }],
                },
                expect: Some(0),
            }),
        ),
        (
            "rack_delete",
            Command::Rack(RackCommand::Delete {
                name: "rack1".into(),
                force: false,
            }),
        ),
        (
            "ssh_set_host_keys",
            Command::Ssh(SshCommand::SetHostKeys {
                keys: [(
                    "ssh_host_ed25519_key.pub".to_string(),
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample root@head1\n".to_string(),
                )]
                .into(),
                replace: false,
            }),
        ),
        (
            "ssh_set_root_keys",
            Command::Ssh(SshCommand::SetRootKeys {
                head: 1,
                keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample root@head1".into()],
            }),
        ),
        ("head_removed", Command::HeadRemoved { id: 4 }),
        (
            "access_add_credential",
            Command::Access(AccessCommand::AddCredential {
                name: "alice".into(),
                role: wulfpack::pki::Role::Admin,
                serial: "5a0c3e".into(),
                now: NOW,
            }),
        ),
        (
            "access_revoke",
            Command::Access(AccessCommand::Revoke {
                name: "alice".into(),
                now: NOW + 1,
            }),
        ),
        (
            "access_revoke_serial",
            Command::Access(AccessCommand::RevokeSerial { serial: "7f01".into() }),
        ),
        (
            "access_create_token",
            Command::Access(AccessCommand::CreateToken {
                id: "0a0b0c0d".into(),
                secret_hash: "ab".repeat(32),
                now: NOW,
                expires: NOW + 3600,
            }),
        ),
        (
            "access_use_token",
            Command::Access(AccessCommand::UseToken {
                id: "0a0b0c0d".into(),
                secret_hash: "ab".repeat(32),
                head: 4,
                now: NOW + 60,
            }),
        ),
        // Appended, so the ids of the cases above stay as they were.
        (
            "init_with_default_profile",
            Command::Init {
                name: "cluster01".into(),
                default_profile: Some(Box::new(model::default_profile())),
            },
        ),
    ];
    cmds.into_iter()
        .enumerate()
        .map(|(i, (name, cmd))| {
            // Requests without an id exist too (internal commands may not need one).
            let id = (name != "init").then(|| format!("0190a3c2-7e1b-7c44-9f00-{i:012x}"));
            (name.to_owned(), Request { id, cmd, audit: None })
        })
        .collect()
}

#[test]
fn requests_and_commands_match_golden_json() {
    let reqs = requests();
    let covered: BTreeSet<&str> = reqs.values().map(|r| command_variant(&r.cmd)).collect();
    assert_eq!(
        covered,
        ALL_COMMANDS.iter().copied().collect(),
        "every command variant has a fixture"
    );
    let leases: BTreeSet<&str> = reqs
        .values()
        .filter_map(|r| match &r.cmd {
            Command::RecordLeases { ops, .. } => Some(ops.iter().map(lease_variant)),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(
        leases,
        ["Bind", "Decline", "Release"].into(),
        "every lease op has a fixture"
    );
    golden_json("raft_requests.json", &reqs);
}

fn error_variant(e: &CommandError) -> &'static str {
    match e {
        CommandError::Exists { .. } => "Exists",
        CommandError::NotFound { .. } => "NotFound",
        CommandError::Conflict { .. } => "Conflict",
        CommandError::InUse { .. } => "InUse",
        CommandError::Invalid(_) => "Invalid",
        CommandError::PoolExhausted { .. } => "PoolExhausted",
    }
}

#[test]
fn apply_results_match_golden_json() {
    let err = |e: CommandError| ApplyResult(Err(e));
    let results: BTreeMap<String, ApplyResult> = [
        (
            "ok",
            ApplyResult(Ok(Outcome {
                changed: vec!["n1".into(), "n2".into()],
                deleted: vec!["old".into()],
                summary: None,
            })),
        ),
        (
            "ok_summarized",
            ApplyResult(Ok(Outcome {
                changed: vec![],
                deleted: vec![],
                summary: Some(wulfpack::state::OutcomeSummary {
                    changed: 10_000,
                    deleted: 0,
                    digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
                }),
            })),
        ),
        ("ok_empty", ApplyResult(Ok(Outcome::default()))),
        (
            "exists",
            err(CommandError::Exists {
                kind: "node".into(),
                name: "n1".into(),
            }),
        ),
        (
            "not_found",
            err(CommandError::NotFound {
                kind: "image".into(),
                name: "rocky-8".into(),
            }),
        ),
        (
            "conflict",
            err(CommandError::Conflict {
                kind: "node".into(),
                name: "n1".into(),
                expected: 7,
                actual: 9,
            }),
        ),
        (
            "in_use",
            err(CommandError::InUse {
                name: "profile gpu".into(),
                users: "node gpu01, node gpu02".into(),
            }),
        ),
        (
            "invalid",
            err(CommandError::Invalid("invalid node name \"..\": ...".into())),
        ),
        (
            "pool_exhausted",
            err(CommandError::PoolExhausted {
                pool: "10.0.100.1-10.0.100.200".into(),
            }),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let covered: BTreeSet<&str> = results
        .values()
        .filter_map(|r| r.0.as_ref().err().map(error_variant))
        .collect();
    assert_eq!(
        covered,
        ["Conflict", "Exists", "InUse", "Invalid", "NotFound", "PoolExhausted"].into(),
        "every error variant has a fixture"
    );
    golden_json("raft_apply_results.json", &results);
}

/// A small snapshot: a cluster with a head, a profile, a node, an image, an overlay, a pool block and
/// a lease, built by applying commands. Only one request carries an id, so the
/// exactly-once memory holds one entry and its JSON does not depend on hash order.
#[test]
fn state_snapshot_matches_golden_json() {
    let mut s = State::default();
    // Small on purpose: the node schema is pinned by the requests' golden file.
    let node = model::parse_node_conf(
        "profiles: [default]\nimage name: rocky-9\nnetwork devices:\n  default:\n    hwaddr: aa:bb:cc:dd:ee:01\n    ipaddr: 10.0.0.1\n",
    )
    .unwrap();
    let ip = |last: u8| Ipv4Addr::new(10, 0, 100, last);
    let cmds = [
        Command::Init {
            name: "cluster01".into(),
            default_profile: None,
        },
        Command::RegisterHead {
            id: 1,
            info: HeadInfo {
                http: "10.0.0.1:9702".into(),
                ..Default::default()
            },
        },
        Command::Image(ImageCommand::Put {
            name: "rocky-9".into(),
            entry: Box::new(image_entry()),
            expect: Some(0),
        }),
        Command::Add {
            kind: Kind::Node,
            items: vec![("n1".into(), node)],
        },
        Command::Overlay(OverlayCommand::RegisterDistribution {
            set: [("hosts".to_string(), digest("hosts-tree"))].into(),
            now: NOW,
        }),
        Command::Overlay(OverlayCommand::PutSite {
            name: "hosts".into(),
            digest: digest("hosts-site-tree"),
            expect: Some(5),
            now: NOW + 1,
        }),
        Command::ReservePoolBlock {
            holder: 11,
            head: 1,
            first: ip(1),
            last: ip(8),
            size: 2,
            lease_secs: 3600,
            now: NOW,
        },
        Command::RecordLeases {
            holder: 11,
            now: NOW + 5,
            ops: vec![LeaseOp::Bind {
                mac: "52:54:00:00:00:01".into(),
                ip: ip(1),
                expires: NOW + 3605,
                lease_secs: 3600,
            }],
        },
    ];
    for (i, cmd) in cmds.into_iter().enumerate() {
        let id = matches!(cmd, Command::Add { .. }).then(|| "0190a3c2-7e1b-7c44-9f00-000000000001".to_owned());
        let r = s.apply(i as u64 + 1, &Request { id, cmd, audit: None });
        assert!(r.0.is_ok(), "{r:?}");
    }
    golden_json("raft_state.json", &s);
    // `State`'s equality leaves out the exactly-once memory; the JSON comparison above
    // covers it, and here the stored snapshot must still answer a retried request.
    let stored =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/raft_state.json"))
            .unwrap();
    let mut back: State = serde_json::from_str(&stored).unwrap();
    back.rebuild_index();
    let retry = Request {
        audit: None,
        id: Some("0190a3c2-7e1b-7c44-9f00-000000000001".into()),
        cmd: Command::Add {
            kind: Kind::Node,
            items: vec![("n1".into(), NodeConf::default())],
        },
    };
    let first = back.apply(100, &retry);
    assert!(
        first.0.is_ok(),
        "a retry gets the first answer, not `exists`: {first:?}"
    );
    assert_eq!(back, s, "the retry changed nothing");
}
