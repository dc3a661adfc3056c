//! SSH keys every head must agree on.
//!
//! Warewulf keeps the nodes' SSH host keys in the server's `/etc/warewulf/keys` (made by
//! `wwctl configure ssh`) and authorizes the server's root keys on every node. With
//! several heads, keys read from each head's own disk would give a node different host
//! keys depending on which head built its overlay (every `ssh` would warn of a changed
//! host key after a failover), and only one head's root could log in. So the host keys
//! live here, once for the cluster, and each head registers its root public keys.
//!
//! These are secrets in the replicated state: they are never part of a [`super::Query`]
//! answer (only overlays for nodes read them), and the data directory is the head's
//! (see docs/OPERATIONS.md; issue 12 adds encryption at rest and roles).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{CommandError, Outcome, State};

/// The cluster's SSH keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshKeys {
    /// Host keys by file name (`ssh_host_ed25519_key`, `ssh_host_ed25519_key.pub`, ...),
    /// as under Warewulf's `/etc/warewulf/keys`.
    #[serde(default)]
    pub host: BTreeMap<String, String>,
    /// Each head's root public keys (`authorized_keys` lines), by head id.
    #[serde(default)]
    pub root: BTreeMap<u64, Vec<String>>,
}

impl SshKeys {
    pub fn is_empty(&self) -> bool {
        self.host.is_empty() && self.root.is_empty()
    }

    /// Every head's root keys, in head order, each line once.
    pub fn root_keys(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for k in self.root.values().flatten() {
            if !out.contains(k) {
                out.push(k.clone());
            }
        }
        out
    }
}

/// Largest key file accepted (an RSA 16384 private key is about 12 KiB).
const MAX_KEY_BYTES: usize = 16 * 1024;
/// Most root keys one head may register.
const MAX_ROOT_KEYS: usize = 16;

/// SSH key commands (see [`super::Command`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SshCommand {
    /// Add host keys. A file the cluster already has is kept unless `replace` (so two
    /// heads running `wwctl configure ssh` at once end with one set, the first).
    SetHostKeys {
        keys: BTreeMap<String, String>,
        replace: bool,
    },
    /// Record head `head`'s root public keys (replacing what it registered before).
    SetRootKeys { head: u64, keys: Vec<String> },
}

/// `ssh_host_<type>_key` or `ssh_host_<type>_key.pub`, type in lowercase letters/digits.
fn host_key_name_ok(name: &str) -> bool {
    let base = name.strip_suffix(".pub").unwrap_or(name);
    base.strip_prefix("ssh_host_")
        .and_then(|t| t.strip_suffix("_key"))
        .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

impl State {
    pub(super) fn apply_ssh(&mut self, cmd: &SshCommand) -> Result<Outcome, CommandError> {
        match cmd {
            SshCommand::SetHostKeys { keys, replace } => {
                for (name, content) in keys {
                    if !host_key_name_ok(name) {
                        return Err(CommandError::Invalid(format!(
                            "{name:?} is not an SSH host key file name (ssh_host_<type>_key or its .pub)"
                        )));
                    }
                    if content.is_empty() || content.len() > MAX_KEY_BYTES {
                        return Err(CommandError::Invalid(format!(
                            "{name}: a key file of {} bytes cannot be right",
                            content.len()
                        )));
                    }
                }
                let mut out = Outcome::default();
                for (name, content) in keys {
                    if !replace && self.ssh.host.contains_key(name) {
                        continue;
                    }
                    if self.ssh.host.get(name) != Some(content) {
                        self.ssh.host.insert(name.clone(), content.clone());
                        out.changed.push(name.clone());
                    }
                }
                Ok(out)
            }
            SshCommand::SetRootKeys { head, keys } => {
                if keys.len() > MAX_ROOT_KEYS {
                    return Err(CommandError::Invalid(format!(
                        "head {head} registers {} root keys; at most {MAX_ROOT_KEYS}",
                        keys.len()
                    )));
                }
                for k in keys {
                    let k = k.trim();
                    if k.is_empty()
                        || k.len() > MAX_KEY_BYTES
                        || k.contains('\n')
                        || !k.starts_with(|c: char| c.is_ascii_alphanumeric())
                    {
                        return Err(CommandError::Invalid(format!(
                            "head {head}: {:?} is not one public key line",
                            k.chars().take(40).collect::<String>()
                        )));
                    }
                }
                let keys: Vec<String> = keys.iter().map(|k| k.trim().to_owned()).collect();
                if self.ssh.root.get(head) == Some(&keys) {
                    return Ok(Outcome::default());
                }
                if keys.is_empty() {
                    self.ssh.root.remove(head);
                } else {
                    self.ssh.root.insert(*head, keys);
                }
                Ok(Outcome {
                    changed: vec![format!("head {head} root keys")],
                    ..Default::default()
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Request};

    fn apply(s: &mut State, cmd: SshCommand) -> Result<Outcome, CommandError> {
        s.apply(
            1,
            &Request {
                audit: None,
                id: None,
                cmd: Command::Ssh(cmd),
            },
        )
        .0
    }

    fn keys(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn the_first_host_keys_win_unless_replaced() {
        let mut s = State::default();
        let o = apply(
            &mut s,
            SshCommand::SetHostKeys {
                keys: keys(&[("ssh_host_ed25519_key", "A"), ("ssh_host_ed25519_key.pub", "Apub")]),
                replace: false,
            },
        )
        .unwrap();
        assert_eq!(o.changed.len(), 2);
        // A second head's keys do not replace them, but add a type the cluster lacks.
        let o = apply(
            &mut s,
            SshCommand::SetHostKeys {
                keys: keys(&[("ssh_host_ed25519_key", "B"), ("ssh_host_rsa_key", "R")]),
                replace: false,
            },
        )
        .unwrap();
        assert_eq!(o.changed, vec!["ssh_host_rsa_key".to_string()]);
        assert_eq!(s.ssh.host["ssh_host_ed25519_key"], "A");
        apply(
            &mut s,
            SshCommand::SetHostKeys {
                keys: keys(&[("ssh_host_ed25519_key", "B")]),
                replace: true,
            },
        )
        .unwrap();
        assert_eq!(s.ssh.host["ssh_host_ed25519_key"], "B");
    }

    #[test]
    fn bad_names_and_sizes_are_refused() {
        let mut s = State::default();
        for name in ["../etc/shadow", "ssh_host__key", "id_rsa", "ssh_host_RSA_key"] {
            let e = apply(
                &mut s,
                SshCommand::SetHostKeys {
                    keys: keys(&[(name, "x")]),
                    replace: true,
                },
            )
            .unwrap_err();
            assert!(e.to_string().contains("not an SSH host key"), "{name}: {e}");
        }
        let e = apply(
            &mut s,
            SshCommand::SetRootKeys {
                head: 1,
                keys: vec!["ssh-ed25519 AAAA a\nssh-rsa BBBB b".into()],
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("one public key line"), "{e}");
        assert!(s.ssh.is_empty());
    }

    #[test]
    fn root_keys_per_head_merge_in_head_order_once() {
        let mut s = State::default();
        let k = |h: u64, keys: &[&str]| SshCommand::SetRootKeys {
            head: h,
            keys: keys.iter().map(|x| x.to_string()).collect(),
        };
        apply(&mut s, k(2, &["ssh-ed25519 BBBB root@h2"])).unwrap();
        apply(&mut s, k(1, &["ssh-ed25519 AAAA root@h1", "ssh-ed25519 BBBB root@h2"])).unwrap();
        assert_eq!(
            s.ssh.root_keys(),
            vec![
                "ssh-ed25519 AAAA root@h1".to_string(),
                "ssh-ed25519 BBBB root@h2".to_string()
            ]
        );
        // The same keys again change nothing (a head re-registering at start).
        assert!(
            apply(&mut s, k(1, &["ssh-ed25519 AAAA root@h1", "ssh-ed25519 BBBB root@h2"]))
                .unwrap()
                .changed
                .is_empty()
        );
        apply(&mut s, k(2, &[])).unwrap();
        assert_eq!(s.ssh.root.len(), 1);
    }
}
