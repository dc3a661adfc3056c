//! # `wwctl`: the Warewulf-style command line
//!
//! Verbs and flags follow Warewulf v4.6 (`node add|set|unset|list|delete|edit|import|export`,
//! `profile ...`) plus `cluster status|join|promote|remove` for the heads and `rack ...` for racks. `wwctl` talks to
//! any head from a list (flag `--heads`, env `WW_HEADS`, or `heads:` in the config
//! file) and moves on to the next one when a head is down.
//!
//! Reads are linearizable, so what one `wwctl` wrote is what the next one sees, on
//! whichever head it asks. `set`/`unset` send field patches that the leader applies
//! to the current version; `edit` sends whole objects conditional on the version
//! it read, so a concurrent change is reported instead of overwritten.
//!
//! One file per verb group: `objects.rs` (`node`, `profile`), [`image`], [`overlay`], `cluster.rs`,
//! [`ssh`], [`clean`], [`configure`], [`upgrade`], [`genconfig`];
//! [`fields`] holds the object field flags, [`output`] tables/YAML/JSON.
//!
//! Exit codes (`src/bin/wwctl.rs`): 0 done, 1 an error returned by [`run`], 2 a usage
//! error — clap's own, or a `clap::Error` that [`run`] returns for one it finds later.

mod access;
pub mod audit;
pub mod clean;
mod cluster;
pub mod configure;
pub mod fields;
pub mod genconfig;
pub mod image;
mod objects;
pub mod output;
pub mod overlay;
pub mod power;
pub mod rack;
pub mod ssh;
pub mod upgrade;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::client::Client;
use crate::state::Kind;
use cluster::cluster_cmd;
use objects::obj_cmd;
use output::Format;

pub use cluster::ClusterCmd;
pub use objects::{build_new, ListArgs, ObjCmd};

#[derive(Parser, Debug)]
#[command(
    name = "wwctl",
    version,
    about = "Control a wulfpack (Warewulf-style) cluster through any of its heads"
)]
pub struct Cli {
    /// Heads to talk to, comma separated host:port (tried in order, next on failure).
    #[arg(long, env = "WW_HEADS", value_delimiter = ',', global = true)]
    pub heads: Vec<String>,
    /// wwctl config file (YAML with `heads: [host:port, ...]`, and `cert:`/`key:`/`ca:`).
    #[arg(long, env = "WWCTL_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Your credential's certificate (`NAME.crt` from `wwctl cluster credentials add`):
    /// talk to the heads over mutual TLS. Without one, plaintext (heads with `insecure: true`).
    #[arg(long, env = "WWCTL_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// The credential's key (default: the certificate's path with `.key`).
    #[arg(long, env = "WWCTL_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// The cluster CA's certificate (default: `ca.crt` beside the certificate).
    #[arg(long, env = "WWCTL_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Output format of list/status commands.
    #[arg(short = 'o', long, value_enum, global = true)]
    pub output: Option<Format>,
    /// Give up after this many seconds: bounds the whole command, including a write
    /// that cannot reach a majority of heads (it may still be applied later).
    #[arg(long, default_value_t = 15, global = true)]
    pub timeout: u64,
    /// Print what wwctl does (its log at info level; `WWCTL_LOG` overrides).
    #[arg(short = 'v', long, global = true)]
    pub verbose: bool,
    /// Print debugging messages (its log at debug level; `WWCTL_LOG` overrides).
    #[arg(short = 'd', long, global = true)]
    pub debug: bool,
    /// Show secrets (BMC passwords) in clear; admins only. Without it they read
    /// `********`, which written back (edit, export then import) keeps the stored value.
    #[arg(long, global = true)]
    pub show_secrets: bool,
    #[command(subcommand)]
    pub cmd: Top,
}

#[derive(Subcommand, Debug)]
pub enum Top {
    /// Manage nodes.
    #[command(subcommand, alias = "nodes")]
    Node(ObjCmd),
    /// Manage profiles.
    #[command(subcommand)]
    Profile(ObjCmd),
    /// Manage images (root filesystems that nodes boot).
    #[command(subcommand, aliases = ["container", "vnfs"])]
    Image(image::ImageCmd),
    /// Manage overlays (files laid over a node's image, templates rendered per node).
    #[command(subcommand)]
    Overlay(overlay::OverlayCmd),
    /// Manage the heads of the cluster.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Manage racks: boot networks and the heads that serve each, in order.
    #[command(subcommand)]
    Rack(rack::RackCmd),
    /// Print wwctl's version and every head's.
    #[command(alias = "vers")]
    Version {
        /// Accepted for Warewulf's command line (it has no effect there either).
        #[arg(short = 'f', long, hide = true)]
        full: bool,
    },
    /// Show who changed what and when (the replicated audit log of operators' writes).
    Audit(audit::AuditArgs),
    /// Configure this head's own services from the host overlay; check its boot services.
    Configure(configure::ConfigureArgs),
    /// Remove blobs that nothing references from every head's store (now, not at the
    /// next periodic GC).
    Clean(clean::CleanArgs),
    /// Run a command on nodes over SSH in parallel (`wwctl ssh n[01-10] -- uptime`).
    Ssh(ssh::SshArgs),
    /// Node power through IPMI (ipmitool), run by the head that serves each node's rack.
    #[command(subcommand)]
    Power(power::PowerCmd),
    /// Generate man pages, shell completions and the command reference.
    #[command(subcommand, alias = "cnf")]
    Genconfig(genconfig::GenconfigCmd),
    /// Print a shell completion script: Warewulf's (cobra's) hidden `wwctl completion
    /// SHELL`, the same as `wwctl genconfig completions SHELL`.
    #[command(hide = true)]
    Completion {
        #[arg(value_enum)]
        shell: genconfig::Shell,
    },
    /// Upgrade Warewulf 4.2–4.7 files (nodes.conf, warewulf.conf) to wulfpack's forms.
    #[command(subcommand)]
    Upgrade(upgrade::UpgradeCmd),
}

/// `wwctl`'s config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CliConfig {
    #[serde(default)]
    heads: Vec<String>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    ca: Option<PathBuf>,
}

/// The first config file found (the named one, or the default locations).
fn config_file(cli: &Cli) -> Result<CliConfig> {
    let candidates: Vec<PathBuf> = match &cli.config {
        Some(p) => vec![p.clone()],
        None => {
            let mut v = Vec::new();
            if let Some(home) = std::env::var_os("HOME") {
                v.push(PathBuf::from(home).join(".config/wulfpack/wwctl.yaml"));
            }
            v.push(PathBuf::from("/etc/wulfpack/wwctl.yaml"));
            v
        }
    };
    for p in &candidates {
        match std::fs::read_to_string(p) {
            Ok(text) => {
                return serde_yaml_ng::from_str(&text)
                    .with_context(|| format!("wwctl config {} is not valid", p.display()))
            }
            Err(e) if cli.config.is_some() => return Err(anyhow!("cannot read wwctl config {}: {e}", p.display())),
            Err(_) => {}
        }
    }
    Ok(CliConfig::default())
}

/// How to reach the heads: the list (flag/env, else config file, else this machine)
/// and the credential (flags/env, else config file; none: plaintext).
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub heads: Vec<String>,
    /// CA certificate, certificate, key (PEM), when a credential is configured.
    pub credential: Option<(String, String, String)>,
}

impl Connection {
    fn resolve(cli: &Cli) -> Result<Connection> {
        let file = config_file(cli)?;
        let heads = if !cli.heads.is_empty() {
            cli.heads.clone()
        } else if !file.heads.is_empty() {
            file.heads.clone()
        } else {
            vec!["127.0.0.1:9701".into()]
        };
        let cert = cli.cert.clone().or(file.cert);
        let credential = match cert {
            None => None,
            Some(cert) => {
                let key = cli
                    .key
                    .clone()
                    .or(file.key)
                    .unwrap_or_else(|| cert.with_extension("key"));
                let ca = cli
                    .ca
                    .clone()
                    .or(file.ca)
                    .unwrap_or_else(|| cert.with_file_name("ca.crt"));
                let read = |p: &PathBuf, what: &str| {
                    std::fs::read_to_string(p).with_context(|| format!("cannot read the {what} {}", p.display()))
                };
                Some((
                    read(&ca, "CA certificate")?,
                    read(&cert, "certificate")?,
                    read(&key, "key")?,
                ))
            }
        };
        Ok(Connection { heads, credential })
    }

    /// How to dial heads with this connection's credential.
    pub(crate) fn dialer(&self) -> Result<crate::pki::tls::Dialer> {
        Ok(match &self.credential {
            None => crate::pki::tls::Dialer::plain(),
            Some((ca, cert, key)) => crate::pki::tls::Dialer::tls(
                crate::pki::tls::client_config(ca, Some((cert, key))).context("the credential is not usable")?,
            ),
        })
    }
}

/// Run `wwctl` with parsed arguments, writing to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    // `--timeout` bounds the whole command, over all its calls and heads.
    let timeout = std::time::Duration::from_secs(cli.timeout);
    let conn = Connection::resolve(&cli)?;
    let client = Client::with_dialer(conn.heads.clone(), &conn.dialer()?)
        .with_deadline(timeout)
        .until(std::time::Instant::now() + timeout)
        .showing_secrets(cli.show_secrets);
    let fmt = cli.output;
    // Verbs that read and write local files only: no head is asked.
    let cli = match cli.cmd {
        Top::Genconfig(c) => return genconfig::run(c, out),
        Top::Upgrade(c) => return upgrade::run(c, out),
        Top::Completion { shell } => return genconfig::run(genconfig::GenconfigCmd::Completions { shell }, out),
        _ => cli,
    };
    match cli.cmd {
        Top::Node(c) => obj_cmd(&client, Kind::Node, c, fmt, out).await,
        Top::Profile(c) => obj_cmd(&client, Kind::Profile, c, fmt, out).await,
        Top::Image(c) => image::run(&client, c, fmt, out).await,
        Top::Overlay(c) => overlay::run(&client, c, fmt, out).await,
        Top::Cluster(c) => cluster_cmd(&client, &conn, timeout, c, fmt, out).await,
        Top::Rack(c) => rack::run(&client, c, fmt, out).await,
        Top::Version { .. } => version(&client, out).await,
        Top::Audit(a) => audit::run(&client, a, fmt, out).await,
        Top::Power(c) => power::run(&client, c, fmt, out).await,
        Top::Configure(c) => configure::run(&client, c, fmt, out).await,
        Top::Clean(a) => clean::run(&client, a, fmt, out).await,
        Top::Ssh(a) => ssh::run(&client, a, out).await,
        Top::Genconfig(_) | Top::Upgrade(_) | Top::Completion { .. } => unreachable!("handled above"),
    }
}

/// `wwctl version`: Warewulf's first line, then each head's version (heads answer in a
/// rolling upgrade with different ones; one that does not answer says so).
async fn version(client: &Client, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "wwctl version:\t {}", env!("CARGO_PKG_VERSION"))?;
    match client.cluster_status().await {
        Ok(st) => {
            for h in &st.heads {
                let v = match (&h.status, h.reachable) {
                    (Some(s), true) if !s.version.is_empty() => s.version.clone(),
                    (Some(_), true) => "(older than 0.1.0)".into(),
                    _ => format!("-- (unreachable: {})", h.error),
                };
                writeln!(out, "head {} ({}):\t {v}", h.id, h.addr)?;
            }
        }
        Err(e) => writeln!(out, "heads:\t -- ({e})")?,
    }
    Ok(())
}

/// Ask on the terminal; without one, refuse (use -y in scripts).
pub(crate) fn confirm(question: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("{question}: refusing without confirmation; pass -y to confirm in scripts");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        bail!("aborted, nothing changed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_verbose_and_debug_as_warewulf() {
        let c = Cli::try_parse_from(["wwctl", "-v", "node", "list", "-d"]).unwrap();
        assert!(c.verbose && c.debug, "global flags, before or after the verb");
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
