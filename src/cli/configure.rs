//! `wwctl configure hostfile|nfs|ssh`: Warewulf's host overlay applied to the head itself,
//! and the cluster's SSH keys.
//!
//! The head asked renders the `host` overlay's template for itself (as Warewulf renders
//! it for the server, a node named after this machine), and `wwctl` writes the result
//! here: so run it on each head, against that head (`--heads 127.0.0.1:9701`), since
//! `Include` reads the rendering head's files (its `/etc/hosts` top block). Each file is
//! written beside its target and renamed over it; a file it replaces is kept as
//! `<file>.wwbackup` first, as Warewulf does.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use crate::client::Client;

#[derive(Subcommand, Debug)]
pub enum ConfigureCmd {
    /// Write the head's /etc/hosts: its own top block, then every node (host overlay).
    Hostfile {
        /// Write under this directory instead of / (for a test or a review).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Write the head's /etc/exports from warewulf.conf's NFS exports (host overlay),
    /// then `exportfs -ra` when writing to /.
    Nfs {
        /// Write under this directory instead of / (then nothing is reloaded).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Give the cluster its nodes' SSH host keys (once for every head: the ones under this
    /// head's /etc/warewulf/keys if there are, else new ones from ssh-keygen) and give this
    /// head's root an SSH key (every head's root key is authorized on every node).
    Ssh {
        /// Key types (default: ed25519, ecdsa, rsa — Warewulf's list without the retired dsa).
        #[arg(long, value_delimiter = ',', default_values_t = ["ed25519".to_string(), "ecdsa".to_string(), "rsa".to_string()])]
        key_types: Vec<String>,
        /// Replace the cluster's host keys (every node presents new host keys after its
        /// next overlay update; SSH clients will warn).
        #[arg(long)]
        replace: bool,
        /// Read and write under this directory instead of / (tests, a review).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

/// This machine's name: the node the host overlay is rendered for.
fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub async fn run(client: &Client, cmd: ConfigureCmd, out: &mut dyn Write) -> Result<()> {
    let (template, root) = match &cmd {
        ConfigureCmd::Hostfile { root } => ("/etc/hosts.ww", root),
        ConfigureCmd::Nfs { root } => ("/etc/exports.ww", root),
        ConfigureCmd::Ssh {
            key_types,
            replace,
            root,
        } => return ssh(client, key_types, *replace, root, out).await,
    };
    let files = client
        .overlay_render("host", template, &this_host())
        .await
        .with_context(|| format!("rendering the host overlay's {template}"))?;
    let mut wrote = Vec::new();
    for f in files.iter().filter(|f| f.write) {
        if f.symlink.is_some() {
            bail!(
                "{}: the host overlay renders a symlink here; wwctl configure writes files only",
                f.name
            );
        }
        let target = root.join(f.name.trim_start_matches('/'));
        write_with_backup(&target, f.content.as_bytes(), f.backup)?;
        writeln!(out, "Wrote {}", target.display())?;
        wrote.push(target);
    }
    if wrote.is_empty() {
        bail!("the host overlay's {template} wrote nothing (aborted); nothing changed");
    }
    if matches!(cmd, ConfigureCmd::Nfs { .. }) {
        if root == Path::new("/") {
            match std::process::Command::new("exportfs").arg("-ra").status() {
                Ok(s) if s.success() => writeln!(out, "Reloaded the NFS exports (exportfs -ra)")?,
                Ok(s) => bail!("exportfs -ra failed ({s}); /etc/exports is written, check it and reload the NFS server"),
                Err(e) => writeln!(
                    out,
                    "exportfs is not available ({e}): install the NFS server (nfs-kernel-server or nfs-utils) and start it"
                )?,
            }
        } else {
            writeln!(out, "Not reloading NFS: --root is not /")?;
        }
    }
    Ok(())
}

/// Replace `target` with `content` (temp file beside it, fsync, rename), keeping the old
/// file as `<target>.wwbackup` when `backup` and it differs.
fn write_with_backup(target: &Path, content: &[u8], backup: bool) -> Result<()> {
    let dir = target.parent().context("a file in a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Ok(old) = std::fs::read(target) {
        if old == content {
            return Ok(());
        }
        if backup {
            let b = PathBuf::from(format!("{}.wwbackup", target.display()));
            std::fs::write(&b, &old).with_context(|| format!("writing the backup {}", b.display()))?;
        }
    }
    let tmp = dir.join(format!(
        ".{}.wwctl-tmp",
        target.file_name().unwrap_or_default().to_string_lossy()
    ));
    {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(content)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, target).with_context(|| format!("replacing {}", target.display()))?;
    Ok(())
}

/// `ssh-keygen` a key pair of `kind` at `path` (no passphrase), unless either half
/// exists (an existing key is never overwritten).
fn keygen(kind: &str, path: &Path, comment: &str) -> Result<bool> {
    if path.exists() || PathBuf::from(format!("{}.pub", path.display())).exists() {
        return Ok(false);
    }
    let dir = path.parent().context("a key in a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let o = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()
        .context("running ssh-keygen (install openssh-client)")?;
    if !o.status.success() {
        bail!(
            "ssh-keygen -t {kind} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(true)
}

async fn ssh(client: &Client, types: &[String], replace: bool, root: &Path, out: &mut dyn Write) -> Result<()> {
    if types.is_empty() {
        bail!("--key-types is empty; give at least one, e.g. ed25519");
    }
    for t in types {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            bail!("--key-types: {t:?} is not an SSH key type (ed25519, ecdsa, rsa)");
        }
    }
    // Host keys: this head's /etc/warewulf/keys when it has them (a Warewulf server's,
    // so nodes keep their host keys), else fresh ones made in a private directory.
    let local = root.join("etc/warewulf/keys");
    let made = tempfile::tempdir().context("a temporary directory for new keys")?;
    let mut keys = std::collections::BTreeMap::new();
    for t in types {
        let name = format!("ssh_host_{t}_key");
        let (dir, from) = if local.join(&name).exists() && local.join(format!("{name}.pub")).exists() {
            (local.as_path(), "this head's /etc/warewulf/keys")
        } else {
            keygen(t, &made.path().join(&name), "")?;
            (made.path(), "ssh-keygen")
        };
        for f in [name.clone(), format!("{name}.pub")] {
            let p = dir.join(&f);
            let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            keys.insert(f, text);
        }
        writeln!(out, "Host key {t}: from {from}")?;
    }
    let w = client
        .write(crate::state::Command::Ssh(crate::state::SshCommand::SetHostKeys {
            keys,
            replace,
        }))
        .await?;
    if w.outcome.changed.is_empty() {
        writeln!(
            out,
            "The cluster already has these host keys (kept; --replace gives nodes new ones)"
        )?;
    } else {
        writeln!(
            out,
            "The cluster's SSH host keys are now: {}",
            w.outcome.changed.join(", ")
        )?;
    }
    // Root's key on this head: every head registers its /root/.ssh/id_*.pub within a
    // minute, and every node authorizes all of them.
    let id = root.join(format!("root/.ssh/id_{}", types[0]));
    if keygen(&types[0], &id, "root@wulfpack-head")? {
        writeln!(
            out,
            "Made root's key {} (registered by this head within a minute)",
            id.display()
        )?;
    } else {
        writeln!(out, "Root's key {} exists", id.display())?;
    }
    Ok(())
}
