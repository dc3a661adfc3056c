//! Who may talk to the cluster, as every head must agree: operators' credentials and
//! their revocation, and the join tokens of heads still to come.
//!
//! Certificates themselves are not replicated: a head decides a call from the client
//! certificate the TLS handshake verified against the cluster CA ([`crate::pki`]). What
//! must be the same on every head is what a certificate alone cannot say: that it was
//! revoked (its serial is in [`Access::revoked`], checked on every call, so a revocation
//! holds on every head as soon as the write is applied), and whether a join token is
//! still good (one use, before it expires; only the SHA-256 of its secret is here).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{CommandError, Outcome, State};
use crate::pki::Role;

/// An operator's credential as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub role: Role,
    /// The certificate's serial, lowercase hex.
    pub serial: String,
    /// Unix seconds.
    pub issued: u64,
    /// Unix seconds when revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<u64>,
}

/// A join token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenEntry {
    /// SHA-256 of the secret, hex.
    pub secret_hash: String,
    pub created: u64,
    pub expires: u64,
    /// When, and by which head id, it was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<(u64, u64)>,
}

/// Credentials, revocations and join tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(default)]
    pub credentials: BTreeMap<String, Credential>,
    /// Serials refused on every call (revoked credentials, and serials revoked by number:
    /// a credential made offline that the cluster never recorded).
    #[serde(default)]
    pub revoked: BTreeSet<String>,
    #[serde(default)]
    pub tokens: BTreeMap<String, JoinTokenEntry>,
}

impl Access {
    pub fn is_empty(&self) -> bool {
        self.credentials.is_empty() && self.revoked.is_empty() && self.tokens.is_empty()
    }

    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.contains(serial)
    }
}

/// Most credentials the cluster records.
const MAX_CREDENTIALS: usize = 10_000;
/// Most join tokens kept (live and recently used or expired).
const MAX_TOKENS: usize = 256;
/// Used or expired tokens are forgotten this long after (the audit log keeps the event).
const TOKEN_KEEP_SECS: u64 = 7 * 86400;
/// Longest lifetime of a join token.
pub const MAX_TOKEN_TTL_SECS: u64 = 7 * 86400;

/// Access commands (see [`super::Command`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccessCommand {
    /// Record a credential (issued by a head, or made offline and registered).
    AddCredential {
        name: String,
        role: Role,
        serial: String,
        now: u64,
    },
    /// Revoke the credential `name`.
    Revoke { name: String, now: u64 },
    /// Revoke a certificate serial the cluster may not know.
    RevokeSerial { serial: String },
    /// A new join token.
    CreateToken {
        id: String,
        secret_hash: String,
        now: u64,
        expires: u64,
    },
    /// A head `head` uses token `id` (refused if unknown, expired, used, or the secret
    /// does not match).
    UseToken {
        id: String,
        secret_hash: String,
        head: u64,
        now: u64,
    },
}

fn hex_ok(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl State {
    pub(super) fn apply_access(&mut self, cmd: &AccessCommand) -> Result<Outcome, CommandError> {
        let a = &mut self.access;
        let mut out = Outcome::default();
        match cmd {
            AccessCommand::AddCredential {
                name,
                role,
                serial,
                now,
            } => {
                crate::pki::check_name(name).map_err(|e| CommandError::Invalid(e.to_string()))?;
                if *role == Role::Head {
                    return Err(CommandError::Invalid(
                        "a credential's role is admin or read; heads get theirs by joining".into(),
                    ));
                }
                if !hex_ok(serial, 40) {
                    return Err(CommandError::Invalid(format!("serial {serial:?} is not lowercase hex")));
                }
                if let Some(c) = a.credentials.get(name) {
                    if c.revoked.is_none() {
                        return Err(CommandError::Exists {
                            kind: "credential".into(),
                            name: name.clone(),
                        });
                    }
                }
                if a.revoked.contains(serial) {
                    return Err(CommandError::Invalid(format!("serial {serial} was revoked")));
                }
                if a.credentials.len() >= MAX_CREDENTIALS && !a.credentials.contains_key(name) {
                    return Err(CommandError::Invalid(format!(
                        "the cluster records at most {MAX_CREDENTIALS} credentials; delete revoked ones first"
                    )));
                }
                a.credentials.insert(
                    name.clone(),
                    Credential {
                        role: *role,
                        serial: serial.clone(),
                        issued: *now,
                        revoked: None,
                    },
                );
                out.changed.push(name.clone());
            }
            AccessCommand::Revoke { name, now } => {
                let c = a.credentials.get_mut(name).ok_or_else(|| CommandError::NotFound {
                    kind: "credential".into(),
                    name: name.clone(),
                })?;
                if c.revoked.is_none() {
                    c.revoked = Some(*now);
                    a.revoked.insert(c.serial.clone());
                    out.changed.push(name.clone());
                }
            }
            AccessCommand::RevokeSerial { serial } => {
                let serial = serial.to_ascii_lowercase();
                let serial = serial.trim_start_matches("00");
                if !hex_ok(serial, 40) {
                    return Err(CommandError::Invalid(format!(
                        "serial {serial:?} is not hex (see `openssl x509 -serial -noout -in NAME.crt`)"
                    )));
                }
                if a.revoked.insert(serial.to_string()) {
                    out.changed.push(serial.to_string());
                }
            }
            AccessCommand::CreateToken {
                id,
                secret_hash,
                now,
                expires,
            } => {
                if !hex_ok(id, 16) || !hex_ok(secret_hash, 64) {
                    return Err(CommandError::Invalid("a join token's id and hash are hex".into()));
                }
                if *expires <= *now || expires - now > MAX_TOKEN_TTL_SECS {
                    return Err(CommandError::Invalid(format!(
                        "a join token lives between 1 s and {} days",
                        MAX_TOKEN_TTL_SECS / 86400
                    )));
                }
                // Forget tokens used or expired long ago: the table stays small.
                a.tokens
                    .retain(|_, t| t.used.map_or(t.expires, |u| u.0).saturating_add(TOKEN_KEEP_SECS) > *now);
                if a.tokens.contains_key(id) {
                    return Err(CommandError::Exists {
                        kind: "join token".into(),
                        name: id.clone(),
                    });
                }
                if a.tokens.len() >= MAX_TOKENS {
                    return Err(CommandError::Invalid(format!(
                        "{MAX_TOKENS} join tokens are pending or recent; wait for some to expire"
                    )));
                }
                a.tokens.insert(
                    id.clone(),
                    JoinTokenEntry {
                        secret_hash: secret_hash.clone(),
                        created: *now,
                        expires: *expires,
                        used: None,
                    },
                );
                out.changed.push(id.clone());
            }
            AccessCommand::UseToken {
                id,
                secret_hash,
                head,
                now,
            } => {
                let refuse = |why: &str| {
                    Err(CommandError::Invalid(format!(
                        "join token {id} {why}; create a new one with `wwctl cluster token create`"
                    )))
                };
                let Some(t) = a.tokens.get_mut(id) else {
                    return refuse("is not known to this cluster");
                };
                if t.secret_hash != *secret_hash {
                    return refuse("does not match (wrong secret)");
                }
                if let Some((_, by)) = t.used {
                    return refuse(&format!("was already used (by head {by})"));
                }
                if *now >= t.expires {
                    return refuse("has expired");
                }
                t.used = Some((*now, *head));
                out.changed.push(id.clone());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;

    fn apply(s: &mut State, c: AccessCommand) -> Result<Outcome, CommandError> {
        s.apply_access(&c)
    }

    fn token(id: &str, now: u64, ttl: u64) -> AccessCommand {
        AccessCommand::CreateToken {
            id: id.into(),
            secret_hash: "ab".repeat(32),
            now,
            expires: now + ttl,
        }
    }

    fn use_token(id: &str, hash: &str, head: u64, now: u64) -> AccessCommand {
        AccessCommand::UseToken {
            id: id.into(),
            secret_hash: hash.into(),
            head,
            now,
        }
    }

    #[test]
    fn a_token_is_used_once_before_it_expires_and_only_with_its_secret() {
        let mut s = State::default();
        let good = "ab".repeat(32);
        apply(&mut s, token("0a0b0c0d", 100, 60)).unwrap();
        let e = apply(&mut s, use_token("0a0b0c0d", &"cd".repeat(32), 4, 110)).unwrap_err();
        assert!(e.to_string().contains("wrong secret"), "{e}");
        let e = apply(&mut s, use_token("0a0b0c0e", &good, 4, 110)).unwrap_err();
        assert!(e.to_string().contains("not known"), "{e}");
        apply(&mut s, use_token("0a0b0c0d", &good, 4, 110)).unwrap();
        let e = apply(&mut s, use_token("0a0b0c0d", &good, 5, 111)).unwrap_err();
        assert!(e.to_string().contains("already used (by head 4)"), "{e}");
        apply(&mut s, token("11111111", 100, 60)).unwrap();
        let e = apply(&mut s, use_token("11111111", &good, 6, 160)).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
    }

    #[test]
    fn token_lifetimes_are_bounded_and_old_ones_forgotten() {
        let mut s = State::default();
        assert!(apply(&mut s, token("01", 100, 0)).is_err());
        assert!(apply(&mut s, token("01", 100, MAX_TOKEN_TTL_SECS + 1)).is_err());
        apply(&mut s, token("01", 100, 10)).unwrap();
        apply(&mut s, token("02", 100 + 10 + TOKEN_KEEP_SECS, 10)).unwrap();
        assert_eq!(
            s.access.tokens.keys().collect::<Vec<_>>(),
            ["02"],
            "the expired token is gone"
        );
    }

    #[test]
    fn revoking_a_credential_refuses_its_serial_and_frees_its_name() {
        let mut s = State::default();
        let add = |serial: &str| AccessCommand::AddCredential {
            name: "alice".into(),
            role: Role::Admin,
            serial: serial.into(),
            now: 1,
        };
        apply(&mut s, add("1f")).unwrap();
        assert!(matches!(apply(&mut s, add("2f")), Err(CommandError::Exists { .. })));
        assert!(!s.access.is_revoked("1f"));
        apply(
            &mut s,
            AccessCommand::Revoke {
                name: "alice".into(),
                now: 2,
            },
        )
        .unwrap();
        assert!(s.access.is_revoked("1f"));
        assert!(apply(&mut s, add("1f")).is_err(), "a revoked serial cannot come back");
        apply(&mut s, add("2f")).unwrap();
        apply(&mut s, AccessCommand::RevokeSerial { serial: "00AB".into() }).unwrap();
        assert!(s.access.is_revoked("ab"));
    }

    #[test]
    fn bad_credentials_are_refused() {
        let mut s = State::default();
        for (name, role, serial) in [
            ("../x", Role::Admin, "1f"),
            ("bob", Role::Head, "1f"),
            ("bob", Role::Read, "XYZ"),
        ] {
            let c = AccessCommand::AddCredential {
                name: name.into(),
                role,
                serial: serial.into(),
                now: 1,
            };
            assert!(apply(&mut s, c).is_err(), "{name} {role} {serial}");
        }
        assert!(s.access.is_empty());
    }
}
