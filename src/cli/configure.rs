//! `wwctl configure hostfile|nfs`: Warewulf's host overlay applied to the head itself.
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
