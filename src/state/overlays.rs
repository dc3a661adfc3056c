//! Overlay catalog in the replicated state.
//!
//! Raft carries names → tree digests; the trees are CAS blobs on the heads (see
//! `overlay::store`). An overlay has up to two trees: the *distribution* one, shipped
//! in the binary and registered by each head at start, and the *site* one, what
//! operators made or changed. The effective tree is the site one if present, else the
//! distribution one; editing a distribution overlay therefore writes a site copy and
//! never touches the distribution tree, as Warewulf 4.7 does.
//!
//! Writes of a site tree are conditional on the entry's version (the log index of its
//! last change) that the writer read, so of two operators editing one overlay at once
//! one gets `Conflict` and retries, instead of one edit silently replacing the other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::images::summarize;
use super::{CommandError, Outcome, State, Versioned};
use crate::model::{self, Digest};

/// One overlay of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayEntry {
    /// The operators' tree, when there is one.
    pub site: Option<Digest>,
    /// The tree shipped with wulfpack, when it ships one of this name.
    pub distribution: Option<Digest>,
    /// Unix seconds of the last change, stamped by the proposing head.
    pub updated: u64,
}

impl OverlayEntry {
    /// The tree nodes get: the site one if present, else the distribution one.
    pub fn effective(&self) -> Option<Digest> {
        self.site.or(self.distribution)
    }

    /// Whether operators' changes are in effect (Warewulf's `SITE` column).
    pub fn is_site(&self) -> bool {
        self.site.is_some()
    }

    /// Every blob the entry needs (for prefetch and GC).
    pub fn blobs(&self) -> impl Iterator<Item = Digest> + '_ {
        self.site.into_iter().chain(self.distribution)
    }
}

/// Overlay commands (see [`super::Command`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OverlayCommand {
    /// Record the distribution trees a head ships (name → digest). Names the set does
    /// not list keep what they had: during a rolling upgrade an older head may still
    /// ship them, and heads must not undo each other.
    RegisterDistribution { set: BTreeMap<String, Digest>, now: u64 },
    /// Set an overlay's site tree. `expect`: `Some(0)` the name must be new, `Some(v)`
    /// the entry must still be at version `v`, `None` unconditional.
    PutSite {
        name: String,
        digest: Digest,
        expect: Option<u64>,
        now: u64,
    },
    /// Delete an overlay's site tree: the overlay goes back to its distribution tree,
    /// or, having none, is deleted (refused while nodes or profiles list it).
    DeleteSite { name: String, expect: Option<u64> },
}

impl State {
    pub(super) fn apply_overlay(&mut self, index: u64, cmd: &OverlayCommand) -> Result<Outcome, CommandError> {
        let not_found = |name: &str| CommandError::NotFound {
            kind: "overlay".into(),
            name: name.into(),
        };
        match cmd {
            OverlayCommand::RegisterDistribution { set, now } => {
                for name in set.keys() {
                    model::validate_name("overlay", name)?;
                }
                let mut out = Outcome::default();
                for (name, d) in set {
                    match self.overlays.get_mut(name) {
                        Some(v) if v.value.distribution == Some(*d) => {}
                        Some(v) => {
                            v.value.distribution = Some(*d);
                            v.value.updated = *now;
                            v.version = index;
                            out.changed.push(name.clone());
                        }
                        None => {
                            self.overlays.insert(
                                name.clone(),
                                Versioned {
                                    version: index,
                                    value: OverlayEntry {
                                        site: None,
                                        distribution: Some(*d),
                                        updated: *now,
                                    },
                                },
                            );
                            out.changed.push(name.clone());
                        }
                    }
                }
                Ok(out)
            }
            OverlayCommand::PutSite {
                name,
                digest,
                expect,
                now,
            } => {
                model::validate_name("overlay", name)?;
                let cur = self.overlays.get(name).map(|v| v.version);
                check_expect(name, *expect, cur)?;
                let distribution = self.overlays.get(name).and_then(|v| v.value.distribution);
                self.overlays.insert(
                    name.clone(),
                    Versioned {
                        version: index,
                        value: OverlayEntry {
                            site: Some(*digest),
                            distribution,
                            updated: *now,
                        },
                    },
                );
                Ok(Outcome {
                    changed: vec![name.clone()],
                    ..Default::default()
                })
            }
            OverlayCommand::DeleteSite { name, expect } => {
                let cur = self.overlays.get(name).ok_or_else(|| not_found(name))?;
                check_expect(name, *expect, Some(cur.version))?;
                if cur.value.site.is_none() {
                    return Err(CommandError::Invalid(format!(
                        "overlay {name:?} is a distribution overlay, shipped with wulfpack; it cannot be deleted (delete files from it instead: that makes a site copy)"
                    )));
                }
                if cur.value.distribution.is_some() {
                    let v = self.overlays.get_mut(name).expect("present");
                    v.value.site = None;
                    v.version = index;
                    return Ok(Outcome {
                        changed: vec![name.clone()],
                        ..Default::default()
                    });
                }
                let users = self.overlay_users(name);
                if !users.is_empty() {
                    return Err(CommandError::InUse {
                        name: format!("overlay {name}"),
                        users: summarize(&users),
                    });
                }
                self.overlays.remove(name);
                Ok(Outcome {
                    deleted: vec![name.clone()],
                    ..Default::default()
                })
            }
        }
    }

    /// Nodes and profiles that list overlay `name` themselves, in `system overlay` or
    /// `runtime overlay` (a `~name` removal is not a use).
    pub fn overlay_users(&self, name: &str) -> Vec<String> {
        self.users(|c| c.system_overlay.iter().any(|o| o == name) || c.runtime_overlay.iter().any(|o| o == name))
    }
}

fn check_expect(name: &str, expect: Option<u64>, cur: Option<u64>) -> Result<(), CommandError> {
    let Some(expected) = expect else { return Ok(()) };
    let actual = cur.unwrap_or(0);
    if actual == expected {
        return Ok(());
    }
    Err(match (expected, cur) {
        (0, Some(_)) => CommandError::Exists {
            kind: "overlay".into(),
            name: name.into(),
        },
        (_, None) => CommandError::NotFound {
            kind: "overlay".into(),
            name: name.into(),
        },
        _ => CommandError::Conflict {
            kind: "overlay".into(),
            name: name.into(),
            expected,
            actual,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Command, Kind, Request};
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    fn apply(s: &mut State, index: u64, cmd: OverlayCommand) -> Result<Outcome, CommandError> {
        s.apply(
            index,
            &Request {
                audit: None,
                id: None,
                cmd: Command::Overlay(cmd),
            },
        )
        .0
    }

    fn dist(names: &[(&str, &str)]) -> OverlayCommand {
        OverlayCommand::RegisterDistribution {
            set: names.iter().map(|(n, c)| (n.to_string(), d(c))).collect(),
            now: 1,
        }
    }

    fn put(name: &str, c: &str, expect: Option<u64>) -> OverlayCommand {
        OverlayCommand::PutSite {
            name: name.into(),
            digest: d(c),
            expect,
            now: 2,
        }
    }

    #[test]
    fn registering_the_same_distribution_set_changes_nothing() {
        let mut s = State::default();
        let o = apply(&mut s, 1, dist(&[("wwinit", "a"), ("hosts", "b")])).unwrap();
        assert_eq!(o.changed, ["hosts", "wwinit"]);
        let o = apply(&mut s, 2, dist(&[("wwinit", "a"), ("hosts", "b")])).unwrap();
        assert!(o.changed.is_empty());
        assert_eq!(s.overlays["wwinit"].version, 1, "untouched");
        // A new version of one overlay; a name not listed is kept.
        let o = apply(&mut s, 3, dist(&[("wwinit", "a2")])).unwrap();
        assert_eq!(o.changed, ["wwinit"]);
        assert_eq!(s.overlays["hosts"].value.distribution, Some(d("b")));
        assert!(apply(&mut s, 4, dist(&[("bad/name", "x")])).is_err());
    }

    #[test]
    fn a_site_copy_shadows_the_distribution_tree_and_deleting_it_reverts() {
        let mut s = State::default();
        apply(&mut s, 1, dist(&[("wwinit", "a")])).unwrap();
        apply(&mut s, 2, put("wwinit", "site", Some(1))).unwrap();
        let e = &s.overlays["wwinit"].value;
        assert_eq!(e.effective(), Some(d("site")));
        assert_eq!(e.distribution, Some(d("a")), "distribution tree intact");
        apply(
            &mut s,
            3,
            OverlayCommand::DeleteSite {
                name: "wwinit".into(),
                expect: None,
            },
        )
        .unwrap();
        assert_eq!(s.overlays["wwinit"].value.effective(), Some(d("a")));
        let e = apply(
            &mut s,
            4,
            OverlayCommand::DeleteSite {
                name: "wwinit".into(),
                expect: None,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot be deleted"), "{e}");
    }

    #[test]
    fn concurrent_edits_conflict_and_create_needs_a_new_name() {
        let mut s = State::default();
        apply(&mut s, 5, put("site1", "v1", Some(0))).unwrap();
        assert!(matches!(
            apply(&mut s, 6, put("site1", "again", Some(0))),
            Err(CommandError::Exists { .. })
        ));
        // Two operators read version 5; the first write wins, the second must retry.
        apply(&mut s, 7, put("site1", "alice", Some(5))).unwrap();
        let e = apply(&mut s, 8, put("site1", "bob", Some(5))).unwrap_err();
        assert!(
            matches!(
                e,
                CommandError::Conflict {
                    expected: 5,
                    actual: 7,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("retry"), "{e}");
        assert_eq!(s.overlays["site1"].value.site, Some(d("alice")));
        assert!(matches!(
            apply(&mut s, 9, put("nope", "x", Some(3))),
            Err(CommandError::NotFound { .. })
        ));
        assert!(
            apply(&mut s, 10, put("../x", "x", None)).is_err(),
            "names are validated"
        );
    }

    #[test]
    fn deleting_an_overlay_in_use_is_refused_with_its_users() {
        let mut s = State::default();
        apply(&mut s, 1, put("mine", "x", Some(0))).unwrap();
        apply(&mut s, 2, dist(&[("wwinit", "a")])).unwrap();
        apply(&mut s, 3, put("wwinit", "site", None)).unwrap();
        s.apply(
            4,
            &Request {
                audit: None,
                id: None,
                cmd: Command::Init {
                    name: "c".into(),
                    default_profile: None,
                },
            },
        );
        let node = model::NodeConf {
            runtime_overlay: vec!["mine".into()],
            system_overlay: vec!["wwinit".into()],
            ..Default::default()
        };
        let r = s.apply(
            5,
            &Request {
                audit: None,
                id: None,
                cmd: Command::Add {
                    kind: Kind::Node,
                    items: vec![("n1".into(), node)],
                },
            },
        );
        assert!(r.0.is_ok(), "{r:?}");
        let del = |name: &str| OverlayCommand::DeleteSite {
            name: name.into(),
            expect: None,
        };
        let e = apply(&mut s, 6, del("mine")).unwrap_err();
        assert!(
            matches!(&e, CommandError::InUse { users, .. } if users == "node n1"),
            "{e}"
        );
        assert!(s.overlays.contains_key("mine"));
        // Only the site copy goes; the distribution overlay the node lists remains.
        apply(&mut s, 7, del("wwinit")).unwrap();
        assert!(s.overlays["wwinit"].value.site.is_none());
    }
}
