//! The audit log: who changed what, when, through which head, and how it ended.
//!
//! It lives in the replicated state, so every head can answer `wwctl audit` and no head
//! can lose or rewrite it alone. An operator's write carries an [`AuditStamp`] put on by
//! the head that received it (who the caller is, the head's clock, its id); applying the
//! write appends an [`AuditEntry`] with the command described in one line and its
//! outcome, refusals included. Internal writes (lease bookkeeping, head registration,
//! bootstrap) carry no stamp and are not logged: they would drown the operators' lines
//! at thousands per minute during a boot storm.
//!
//! Bounded: the newest [`AUDIT_KEEP`] entries are kept, older ones dropped (counted),
//! so the state — and every snapshot — stays small whatever the history.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{AccessCommand, ApplyResult, Command, ImageCommand, OverlayCommand, RackCommand, SshCommand};

/// How many entries the log keeps (the oldest are dropped).
pub const AUDIT_KEEP: usize = 10_000;

/// Longest command description kept (a bulk command's name list is cut).
const DESCRIBE_MAX: usize = 240;

/// Put on a write by the head that received it from an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStamp {
    /// The caller: today `USER@HOST (unauthenticated, from ADDRESS)`; with client
    /// certificates, the certificate's name.
    pub who: String,
    /// Unix seconds at the receiving head.
    pub at: u64,
    /// The receiving head's id.
    pub via: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The log index the write was applied at.
    pub index: u64,
    pub at: u64,
    pub who: String,
    pub via: u64,
    /// The command in one line, e.g. `node set n[001-004]: comment, tags`.
    pub command: String,
    /// `ok`, or the error the command was refused with.
    pub outcome: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    pub entries: VecDeque<AuditEntry>,
    /// Entries dropped to keep the bound.
    #[serde(default)]
    pub dropped: u64,
}

impl AuditLog {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.dropped == 0
    }

    pub(super) fn record(&mut self, index: u64, stamp: &AuditStamp, cmd: &Command, res: &ApplyResult) {
        self.entries.push_back(AuditEntry {
            index,
            at: stamp.at,
            who: stamp.who.clone(),
            via: stamp.via,
            command: describe(cmd),
            outcome: match &res.0 {
                Ok(_) => "ok".into(),
                Err(e) => e.to_string(),
            },
        });
        while self.entries.len() > AUDIT_KEEP {
            self.entries.pop_front();
            self.dropped += 1;
        }
    }

    /// Entries at or after unix second `since`, the newest `limit` of them.
    pub fn since(&self, since: u64, limit: usize) -> Vec<AuditEntry> {
        let mut v: Vec<AuditEntry> = self.entries.iter().filter(|e| e.at >= since).cloned().collect();
        if v.len() > limit {
            v.drain(..v.len() - limit);
        }
        v
    }
}

/// Names as an operator would type them: `a, b, c` or `a … z (N names)`.
fn names(v: &[String]) -> String {
    match v.len() {
        0 => String::new(),
        1..=5 => v.join(", "),
        n => format!("{}, {} … {} ({n} names)", v[0], v[1], v[n - 1]),
    }
}

/// One line for a command: verb, object, names and which fields.
pub fn describe(cmd: &Command) -> String {
    let s = match cmd {
        Command::Add { kind, items } => {
            let n: Vec<String> = items.iter().map(|(n, _)| n.clone()).collect();
            format!("{} add {}", kind.as_str(), names(&n))
        }
        Command::Put { kind, items } => {
            let n: Vec<String> = items.iter().map(|p| p.name.clone()).collect();
            format!("{} edit/replace {}", kind.as_str(), names(&n))
        }
        Command::Patch { kind, names: n, patch } => {
            let mut fields: Vec<String> = patch.iter().map(|op| op.path().join(".")).collect();
            fields.dedup();
            format!("{} set {}: {}", kind.as_str(), names(n), fields.join(", "))
        }
        Command::Delete { kind, names: n } => format!("{} delete {}", kind.as_str(), names(n)),
        Command::Import { conf } => format!(
            "import nodes.conf ({} profiles, {} nodes)",
            conf.nodeprofiles.len(),
            conf.nodes.len()
        ),
        Command::Image(c) => match c {
            ImageCommand::Put { name, .. } => format!("image put {name}"),
            ImageCommand::Delete { name, force } => {
                format!("image delete {name}{}", if *force { " --force" } else { "" })
            }
            ImageCommand::Rename { from, to } => format!("image rename {from} {to}"),
            ImageCommand::Copy { from, to } => format!("image copy {from} {to}"),
        },
        Command::Overlay(c) => match c {
            OverlayCommand::RegisterDistribution { set, .. } => {
                format!("overlay register distribution ({} overlays)", set.len())
            }
            OverlayCommand::PutSite { name, .. } => format!("overlay change {name}"),
            OverlayCommand::DeleteSite { name, .. } => format!("overlay delete {name}"),
        },
        Command::Rack(c) => match c {
            RackCommand::Put { name, .. } => format!("rack add/set {name}"),
            RackCommand::Delete { name, force } => {
                format!("rack delete {name}{}", if *force { " --force" } else { "" })
            }
        },
        Command::Ssh(c) => match c {
            SshCommand::SetHostKeys { keys, replace } => format!(
                "configure ssh: {} host key files{}",
                keys.len(),
                if *replace { " (replace)" } else { "" }
            ),
            SshCommand::SetRootKeys { head, .. } => format!("ssh root keys of head {head}"),
        },
        Command::Access(c) => match c {
            AccessCommand::AddCredential { name, role, .. } => format!("credentials add {name} --role {role}"),
            AccessCommand::Revoke { name, .. } => format!("credentials revoke {name}"),
            AccessCommand::RevokeSerial { serial } => format!("credentials revoke --serial {serial}"),
            AccessCommand::CreateToken { id, now, expires, .. } => {
                format!("token create {id} (valid {} s)", expires.saturating_sub(*now))
            }
            AccessCommand::UseToken { id, head, .. } => format!("head {head} joined with token {id}"),
        },
        Command::ReservePoolBlock { head, .. } => format!("pool block for head {head}"),
        Command::RecordLeases { holder, ops, .. } => format!("{} lease records (holder {holder})", ops.len()),
        Command::Discover { mac } => format!("discover {mac}"),
        Command::RegisterHead { id, .. } => format!("register head {id}"),
        Command::HeadRemoved { id } => format!("cluster remove {id}"),
        Command::Init { name, .. } => format!("init cluster {name}"),
    };
    if s.chars().count() > DESCRIBE_MAX {
        let mut cut: String = s.chars().take(DESCRIBE_MAX - 1).collect();
        cut.push('…');
        cut
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PatchOp;
    use crate::state::{CommandError, Kind, Outcome};

    fn stamp(at: u64) -> AuditStamp {
        AuditStamp {
            who: "alice@ws1 (unauthenticated, from 10.0.0.254)".into(),
            at,
            via: 2,
        }
    }

    #[test]
    fn describes_commands_in_one_line() {
        let set = Command::Patch {
            kind: Kind::Node,
            names: (1..=40).map(|i| format!("n{i:03}")).collect(),
            patch: vec![
                PatchOp::Set {
                    path: vec!["comment".into()],
                    value: "x".into(),
                },
                PatchOp::Set {
                    path: vec!["tags".into(), "rack".into()],
                    value: "r1".into(),
                },
            ],
        };
        assert_eq!(
            describe(&set),
            "node set n001, n002 … n040 (40 names): comment, tags.rack"
        );
        let del = Command::Delete {
            kind: Kind::Profile,
            names: vec!["gpu".into()],
        };
        assert_eq!(describe(&del), "profile delete gpu");
        let long = Command::Delete {
            kind: Kind::Node,
            names: vec!["x".repeat(500)],
        };
        assert_eq!(describe(&long).chars().count(), DESCRIBE_MAX);
    }

    #[test]
    fn keeps_the_newest_entries_and_counts_the_dropped() {
        let mut log = AuditLog::default();
        let cmd = Command::Init {
            name: "c".into(),
            default_profile: None,
        };
        let ok = ApplyResult(Ok(Outcome::default()));
        for i in 0..(AUDIT_KEEP as u64 + 5) {
            log.record(i, &stamp(1000 + i), &cmd, &ok);
        }
        assert_eq!(log.entries.len(), AUDIT_KEEP);
        assert_eq!(log.dropped, 5);
        assert_eq!(log.entries.front().unwrap().index, 5);
        let refused = ApplyResult(Err(CommandError::NotFound {
            kind: "node".into(),
            name: "n9".into(),
        }));
        log.record(99_999, &stamp(50_000), &cmd, &refused);
        let last = log.since(50_000, 10);
        assert_eq!(last.len(), 1);
        assert!(last[0].outcome.contains("\"n9\" does not exist"), "{}", last[0].outcome);
        assert_eq!(log.since(0, 3).len(), 3, "limit keeps the newest");
        assert_eq!(log.since(0, 3)[2].index, 99_999);
    }
}
