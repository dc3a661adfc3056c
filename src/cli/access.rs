//! `wwctl cluster pki|credentials|token …`: the cluster CA, operators' credentials and
//! heads' join tokens (docs/OPERATIONS.md, "Certificates and credentials").

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use super::output::{self, Format};
use super::Connection;
use crate::client::Client;
use crate::pki::{self, CredFiles, JoinToken, Role};
use crate::state::access::MAX_TOKEN_TTL_SECS;
use crate::state::{AccessCommand, Command, Query, Selector};

#[derive(Subcommand, Debug)]
pub enum PkiCmd {
    /// Make a new cluster CA and a certificate for each founding head, offline, into DIR
    /// (copy DIR/head-ID/ to each head's tls.dir; keep DIR/ca.key offline or delete it:
    /// the heads hold it too). Then, as root on a head: `wwctl cluster credentials add
    /// NAME --local` for the first operator.
    Init {
        /// Where to write (must not hold a CA yet).
        #[arg(long)]
        out: PathBuf,
        /// Founding head ids, comma separated (as in wulfd.yaml's bootstrap).
        #[arg(long, value_delimiter = ',', required = true)]
        ids: Vec<u64>,
        /// The cluster's name, shown in the CA's subject.
        #[arg(long, default_value = "hpc")]
        cluster: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CredCmd {
    /// Issue a credential (certificate and key for `wwctl --cert`), recorded in the
    /// cluster so that it can be listed and revoked.
    Add {
        name: String,
        /// admin: everything; read: list, show and status only.
        #[arg(long, default_value = "admin")]
        role: String,
        /// Validity in days (default 365).
        #[arg(long, default_value_t = 0)]
        days: u32,
        /// Directory to write NAME.crt, NAME.key and ca.crt to.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Issue on this machine from a head's CA key (as root on a head, for the first
        /// credential, or when none works any more), then record it in the cluster.
        #[arg(long)]
        local: bool,
        /// The head's tls.dir holding ca.crt and ca.key (with --local).
        #[arg(long, default_value = "/var/lib/wulfpack/pki")]
        pki_dir: PathBuf,
    },
    /// Credentials the cluster knows, with their role and state.
    List,
    /// Revoke a credential: every head refuses it from the moment the revocation is applied.
    Revoke {
        /// The credential's name.
        #[arg(required_unless_present = "serial")]
        name: Option<String>,
        /// Revoke a certificate by serial instead (one the cluster never recorded).
        #[arg(long, conflicts_with = "name")]
        serial: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// A one-time token for a new head (`tls.join_token` in its wulfd.yaml).
    Create {
        /// How long it stays valid (e.g. 30m, 1h, 2d; at most 7 days).
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
    },
    /// Join tokens: pending, used and expired.
    List,
}

pub(super) async fn pki(c: PkiCmd, out: &mut dyn Write) -> Result<()> {
    match c {
        PkiCmd::Init {
            out: dir,
            ids: heads,
            cluster,
        } => {
            let ca = pki::init_dir(&dir, &cluster, &heads)?;
            writeln!(
                out,
                "CA {} (SHA-256 {})",
                dir.join("ca.crt").display(),
                ca.fingerprint()
            )?;
            for id in &heads {
                writeln!(
                    out,
                    "head {id}: copy {}/ to head {id}'s tls.dir (default <data_dir>/pki), mode 700",
                    dir.join(format!("head-{id}")).display()
                )?;
            }
            writeln!(
                out,
                "then, as root on a head once the cluster runs: wwctl cluster credentials add NAME --local --out DIR"
            )?;
            Ok(())
        }
    }
}

/// Write a credential's files, refusing to overwrite another credential's key.
fn write_credential(dir: &Path, name: &str, ca_pem: &str, issued: &pki::Issued) -> Result<CredFiles> {
    let files = CredFiles::operator(dir, name);
    if files.key.exists() {
        bail!(
            "{} exists; choose another --out or remove it first",
            files.key.display()
        );
    }
    files.write(ca_pem, issued)?;
    Ok(files)
}

pub(super) async fn credentials(
    client: &Client,
    conn: &Connection,
    timeout: Duration,
    c: CredCmd,
    fmt: Option<Format>,
    out: &mut dyn Write,
) -> Result<()> {
    match c {
        CredCmd::Add {
            name,
            role,
            days,
            out: dir,
            local: false,
            ..
        } => {
            let r = client.issue_credential(&name, &role, days).await?;
            let issued = pki::Issued {
                cert_pem: r.cert,
                key_pem: r.key,
                serial: r.serial,
            };
            let files = write_credential(&dir, &name, &r.ca_cert, &issued)?;
            writeln!(
                out,
                "credential {name} ({role}, serial {}): wwctl --cert {}",
                issued.serial,
                files.cert.display()
            )?;
            Ok(())
        }
        CredCmd::Add {
            name,
            role,
            days,
            out: dir,
            local: true,
            pki_dir,
        } => {
            let role: Role = role.parse()?;
            if role == Role::Head {
                bail!("heads get certificates by joining (`wwctl cluster token create`), not as credentials");
            }
            let ca = pki::load_ca(&pki_dir).with_context(|| {
                format!(
                    "--local issues from a head's CA key: run as root on a head, or name its tls.dir with --pki-dir (not {})",
                    pki_dir.display()
                )
            })?;
            let days = if days == 0 {
                pki::OPERATOR_DAYS
            } else {
                i64::from(days.min(3650))
            };
            let issued = ca.issue(&name, role, days)?;
            let files = write_credential(&dir, &name, &ca.cert_pem, &issued)?;
            writeln!(
                out,
                "credential {name} ({role}, serial {}): wwctl --cert {}",
                issued.serial,
                files.cert.display()
            )?;
            // Record it with the new credential itself (it may be the only one).
            let conn = Connection {
                heads: conn.heads.clone(),
                credential: Some((ca.cert_pem.clone(), issued.cert_pem.clone(), issued.key_pem.clone())),
            };
            let own = Client::with_dialer(conn.heads.clone(), &conn.dialer()?)
                .with_deadline(timeout)
                .until(std::time::Instant::now() + timeout);
            let add = Command::Access(AccessCommand::AddCredential {
                name: name.clone(),
                role,
                serial: issued.serial.clone(),
                now: crate::state::unix_now(),
            });
            match own.write(add).await {
                Ok(_) => writeln!(out, "recorded in the cluster (it can be listed and revoked by name)")?,
                Err(e) => writeln!(
                    out,
                    "not recorded in the cluster ({e}); it works, but revoke it by serial: wwctl cluster credentials revoke --serial {}",
                    issued.serial
                )?,
            }
            Ok(())
        }
        CredCmd::List => {
            let r = client.read(&access_query(), true).await?;
            let a = r.access.unwrap_or_default();
            let rows: Vec<Vec<String>> = a
                .credentials
                .iter()
                .map(|(n, c)| {
                    vec![
                        n.clone(),
                        c.role.to_string(),
                        c.serial.clone(),
                        output::rfc822(c.issued),
                        c.revoked.map(output::rfc822).unwrap_or_else(|| "--".into()),
                    ]
                })
                .collect();
            output::rows(
                &["NAME", "ROLE", "SERIAL", "ISSUED", "REVOKED"],
                &rows,
                &a.credentials,
                fmt.unwrap_or(Format::Table),
                out,
            )
        }
        CredCmd::Revoke { name, serial } => {
            let cmd = match (name, serial) {
                (Some(name), _) => AccessCommand::Revoke {
                    name,
                    now: crate::state::unix_now(),
                },
                (None, Some(serial)) => AccessCommand::RevokeSerial { serial },
                (None, None) => bail!("name a credential or --serial"),
            };
            let w = client.write(Command::Access(cmd)).await?;
            if w.outcome.changed.is_empty() {
                writeln!(out, "already revoked")?;
            } else {
                writeln!(
                    out,
                    "revoked {}: every head refuses it now",
                    w.outcome.changed.join(", ")
                )?;
            }
            Ok(())
        }
    }
}

fn access_query() -> Query {
    Query {
        access: true,
        ..Query::nodes(Selector::None)
    }
}

pub(super) async fn token(
    client: &Client,
    conn: &Connection,
    c: TokenCmd,
    fmt: Option<Format>,
    out: &mut dyn Write,
) -> Result<()> {
    match c {
        TokenCmd::Create { ttl } => {
            let Some((ca, _, _)) = &conn.credential else {
                bail!("a join token pins the cluster CA: run this with your credential (--cert), over TLS");
            };
            let ttl = ttl.as_secs();
            if ttl == 0 || ttl > MAX_TOKEN_TTL_SECS {
                bail!("--ttl: between 1 s and 7 days");
            }
            let token = JoinToken::new(&pki::fingerprint_pem(ca)?)?;
            let now = crate::state::unix_now();
            client
                .write(Command::Access(AccessCommand::CreateToken {
                    id: token.id.clone(),
                    secret_hash: token.secret_hash(),
                    now,
                    expires: now + ttl,
                }))
                .await?;
            writeln!(out, "{token}")?;
            Ok(())
        }
        TokenCmd::List => {
            let r = client.read(&access_query(), true).await?;
            let a = r.access.unwrap_or_default();
            let now = crate::state::unix_now();
            let rows: Vec<Vec<String>> = a
                .tokens
                .iter()
                .map(|(id, t)| {
                    let state = match t.used {
                        Some((_, head)) => format!("used by head {head}"),
                        None if now >= t.expires => "expired".into(),
                        None => "pending".into(),
                    };
                    vec![id.clone(), output::rfc822(t.created), output::rfc822(t.expires), state]
                })
                .collect();
            output::rows(
                &["ID", "CREATED", "EXPIRES", "STATE"],
                &rows,
                &a.tokens,
                fmt.unwrap_or(Format::Table),
                out,
            )
        }
    }
}
