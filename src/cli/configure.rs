//! `wwctl configure hostfile|nfs|ssh`: Warewulf's host overlay applied to the head itself,
//! and the cluster's SSH keys. `configure dhcp|tftp|warewulfd`: Warewulf writes and
//! restarts dhcpd, tftpd and its own daemon there; a wulfpack head serves DHCP, TFTP
//! and HTTP boot itself from `wulfd.yaml`, so these check the asked head's boot services
//! instead (interfaces and subnets, TFTP root and the iPXE binaries, the HTTP listener)
//! and report every finding; a finding that stops a service from serving makes the
//! command fail. `configure --all` runs every one of them.
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

use super::output::{table, Format};
use crate::client::Client;

/// `wwctl configure [--all | SERVICE]`.
#[derive(clap::Args, Debug)]
#[command(arg_required_else_help = true, args_conflicts_with_subcommands = true)]
pub struct ConfigureArgs {
    /// Configure (and check) every service: warewulfd, tftp, dhcp, nfs, ssh, hostfile.
    #[arg(short, long)]
    pub all: bool,
    /// With --all: write the host overlay's files under this directory instead of /
    /// (for a test or a review; NFS is then not reloaded).
    #[arg(long, default_value = "/", requires = "all")]
    pub root: PathBuf,
    #[command(subcommand)]
    pub cmd: Option<ConfigureCmd>,
}

#[derive(Subcommand, Debug)]
pub enum ConfigureCmd {
    /// Check this head's DHCP service: interfaces, subnets, pools, racks it serves.
    Dhcp,
    /// Check this head's TFTP service: its root and the iPXE binaries DHCP hands out.
    Tftp {
        /// Warewulf's "show, don't update": accepted; this only checks anyway.
        #[arg(short = 's', long)]
        show: bool,
    },
    /// Check this head's HTTP boot service (Warewulf's warewulfd): listener, secure
    /// mode, overlays.
    Warewulfd,
    /// Check this head's certificates (gRPC mutual TLS): mode, expiry, CA, CA key.
    #[command(aliases = ["keys", "key", "cert", "crt"])]
    Tls,
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
        #[arg(short = 't', long, alias = "keytypes", value_delimiter = ',', default_values_t = ["ed25519".to_string(), "ecdsa".to_string(), "rsa".to_string()])]
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

pub async fn run(client: &Client, args: ConfigureArgs, fmt: Option<Format>, out: &mut dyn Write) -> Result<()> {
    match args.cmd {
        Some(ConfigureCmd::Dhcp) => return services(client, &["dhcp"], fmt, out).await,
        Some(ConfigureCmd::Tftp { .. }) => return services(client, &["tftp"], fmt, out).await,
        Some(ConfigureCmd::Warewulfd) => return services(client, &["warewulfd"], fmt, out).await,
        Some(ConfigureCmd::Tls) => return services(client, &["tls"], fmt, out).await,
        Some(cmd) => return host(client, cmd, out).await,
        None if args.all => {}
        // A usage error (exit 2), as clap's own.
        None => {
            return Err(clap::Error::raw(
                clap::error::ErrorKind::MissingSubcommand,
                "wwctl configure: give a service (dhcp, tftp, warewulfd, tls, nfs, ssh, hostfile) or --all\n",
            )
            .into())
        }
    }
    // Warewulf's order, the certificates first (Warewulf's `configure tls` makes its
    // HTTPS key; here the head's mutual-TLS certificates are checked).
    let checked = services(client, &["tls", "warewulfd", "tftp", "dhcp"], fmt, out).await;
    let root = args.root;
    host(client, ConfigureCmd::Nfs { root: root.clone() }, out).await?;
    host(
        client,
        ConfigureCmd::Ssh {
            key_types: ["ed25519", "ecdsa", "rsa"].map(String::from).to_vec(),
            replace: false,
            root: root.clone(),
        },
        out,
    )
    .await?;
    host(client, ConfigureCmd::Hostfile { root }, out).await?;
    checked
}

/// One finding of `configure dhcp|tftp|warewulfd` (`-o json|yaml` prints a list).
#[derive(Debug, serde::Serialize)]
pub struct CheckRow {
    pub head: u64,
    pub service: String,
    pub item: String,
    /// ok, warn (serves, but look), fail (does not serve).
    pub state: String,
    pub detail: String,
}

/// Ask the head for its boot services check and print the findings of `which`; fail
/// when one of them is `fail`.
async fn services(client: &Client, which: &[&str], fmt: Option<Format>, out: &mut dyn Write) -> Result<()> {
    let r = client
        .boot_services()
        .await
        .context("checking the head's boot services")?;
    let rows: Vec<CheckRow> = r
        .checks
        .into_iter()
        .filter(|c| which.contains(&c.service.as_str()))
        .map(|c| CheckRow {
            head: r.head_id,
            service: c.service,
            item: c.item,
            state: c.state,
            detail: c.detail,
        })
        .collect();
    print_checks(&rows, fmt.unwrap_or(Format::Table), out)?;
    let failed: Vec<String> = rows
        .iter()
        .filter(|c| c.state == "fail")
        .map(|c| format!("{} {}", c.service, c.item))
        .collect();
    if !failed.is_empty() {
        bail!(
            "head {}: {} check(s) failed ({}); fix wulfd.yaml or the host as the details say, then restart wulfd",
            r.head_id,
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

pub fn print_checks(rows: &[CheckRow], fmt: Format, out: &mut dyn Write) -> Result<()> {
    match fmt {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, rows)?;
            writeln!(out)?;
        }
        Format::Yaml => out.write_all(serde_yaml_ng::to_string(rows)?.as_bytes())?,
        Format::Table => {
            // The head that answered: the first of --heads that is up, so say which.
            if let Some(h) = rows.first().map(|c| c.head) {
                writeln!(out, "Boot services of head {h}:")?;
            }
            let lines = rows.iter().map(|c| {
                vec![
                    c.service.clone(),
                    c.item.clone(),
                    c.state.to_uppercase(),
                    if c.detail.is_empty() {
                        "--".into()
                    } else {
                        c.detail.clone()
                    },
                ]
            });
            out.write_all(table(&["SERVICE", "ITEM", "STATE", "DETAIL"], lines).as_bytes())?;
        }
    }
    Ok(())
}

/// `hostfile`, `nfs`, `ssh`: the host overlay on this head.
async fn host(client: &Client, cmd: ConfigureCmd, out: &mut dyn Write) -> Result<()> {
    let (template, root) = match &cmd {
        ConfigureCmd::Hostfile { root } => ("/etc/hosts.ww", root),
        ConfigureCmd::Nfs { root } => ("/etc/exports.ww", root),
        ConfigureCmd::Ssh {
            key_types,
            replace,
            root,
        } => return ssh(client, key_types, *replace, root, out).await,
        ConfigureCmd::Dhcp | ConfigureCmd::Tftp { .. } | ConfigureCmd::Warewulfd | ConfigureCmd::Tls => {
            unreachable!("checked in run")
        }
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
