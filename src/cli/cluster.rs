//! `wwctl cluster …`: the heads (status, join, promote, remove).

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Subcommand;
use tonic::Code;

use super::output::{self, Format};
use crate::client::Client;
use crate::state::{Query, Selector};

/// How often `cluster join` looks at the new head while it waits to promote it.
const JOIN_POLL: Duration = Duration::from_secs(1);

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Members, leader, log indexes, lag, missing artifacts, racks served and health of every head.
    Status,
    /// Add a running, empty head: a learner first, a voter once it has caught up with the
    /// log and holds every artifact (waits up to --timeout; run again to wait longer).
    Join {
        id: u64,
        /// host:port of the new head's gRPC listener.
        addr: String,
        /// Keep it a non-voting learner (`wwctl cluster promote ID` later).
        #[arg(long)]
        learner: bool,
    },
    /// Make a learner a voter, if it has caught up and holds every artifact.
    Promote { id: u64 },
    /// Remove a head from the cluster (a dead one too).
    Remove { id: u64 },
    /// Ask every head for its applied index and a digest of its replicated state; succeed
    /// when all hold the same state at the same index (waits up to --timeout for
    /// lagging heads to catch up).
    Verify,
    /// Give every head (or those named) a new key and certificate from the cluster CA,
    /// one head at a time, without a restart: new connections use the new certificate,
    /// open ones keep theirs (still valid until it expires or is revoked).
    Rotate {
        /// Only these head ids (e.g. `2 3` or `2,3`); default: every member.
        #[arg(value_delimiter = ',')]
        ids: Vec<u64>,
    },
    /// The cluster CA (offline).
    #[command(subcommand)]
    Pki(super::access::PkiCmd),
    /// Operators' credentials: issue, list, revoke.
    #[command(subcommand)]
    Credentials(super::access::CredCmd),
    /// One-time tokens for heads that join.
    #[command(subcommand)]
    Token(super::access::TokenCmd),
}

pub(super) async fn cluster_cmd(
    client: &Client,
    conn: &super::Connection,
    timeout: Duration,
    c: ClusterCmd,
    fmt: Option<Format>,
    out: &mut dyn Write,
) -> Result<()> {
    match c {
        ClusterCmd::Pki(c) => super::access::pki(c, out).await,
        ClusterCmd::Credentials(c) => super::access::credentials(client, conn, timeout, c, fmt, out).await,
        ClusterCmd::Token(c) => super::access::token(client, conn, c, fmt, out).await,
        ClusterCmd::Status => {
            let st = client.cluster_status().await?;
            output::cluster_status(&st, fmt.unwrap_or(Format::Table), out)
        }
        ClusterCmd::Join { id, addr, learner } => join(client, id, &addr, learner, out).await,
        ClusterCmd::Verify => verify(client, fmt, out).await,
        ClusterCmd::Rotate { ids } => rotate(client, &ids, out).await,
        ClusterCmd::Promote { id } => {
            let r = client.promote_head(id, false).await?;
            writeln!(
                out,
                "head {id} is a voter; voters {:?}, learners {:?}",
                r.voters, r.learners
            )?;
            Ok(())
        }
        ClusterCmd::Remove { id } => {
            let r = client.remove_head(id).await?;
            writeln!(
                out,
                "head {id} removed; voters {:?}, learners {:?}",
                r.voters, r.learners
            )?;
            // A rack still listing the removed head keeps it in its order (its nodes'
            // fallbacks name it); say which, so the runbook's next step is obvious.
            let racks = client.read(&Query::nodes(Selector::None), false).await?.cluster.racks;
            for (name, rack) in racks.iter().filter(|(_, r)| r.value.position(id).is_some()) {
                let others: Vec<String> = rack
                    .value
                    .heads
                    .iter()
                    .filter(|h| h.id != id)
                    .map(|h| format!("--head {}={}", h.id, h.addr))
                    .collect();
                writeln!(
                    out,
                    "rack {name} still lists head {id}; give it its heads with `wwctl rack set {name} {}`",
                    if others.is_empty() {
                        "--head NEWID=ADDRESS".to_string()
                    } else {
                        format!("{} --head NEWID=ADDRESS", others.join(" "))
                    }
                )?;
            }
            Ok(())
        }
    }
}

/// `cluster rotate`: each head in turn (one at a time, so a head that fails to rotate
/// stops the run with the others' certificates known), then a table of what changed.
async fn rotate(client: &Client, only: &[u64], out: &mut dyn Write) -> Result<()> {
    let st = client.cluster_status().await?;
    if let Some(missing) = only.iter().find(|id| !st.heads.iter().any(|h| h.id == **id)) {
        bail!("head {missing} is not a member (see `wwctl cluster status`)");
    }
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for h in st.heads.iter().filter(|h| only.is_empty() || only.contains(&h.id)) {
        match client.one(&h.addr).rotate_certificate().await {
            Ok(r) => rows.push(vec![
                format!("head-{}", r.head_id),
                h.addr.clone(),
                r.old_serial,
                r.new_serial,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(r.not_after.max(0) as u64),
                )
                .to_string()[..10]
                    .to_string(),
            ]),
            Err(e) => {
                failed.push(h.id);
                eprintln!("ERROR: head {} ({}): {e}", h.id, h.addr);
            }
        }
    }
    out.write_all(
        output::table(
            &["HEAD", "ADDRESS", "OLD SERIAL", "NEW SERIAL", "VALID UNTIL"],
            rows.clone(),
        )
        .as_bytes(),
    )?;
    if !failed.is_empty() {
        bail!(
            "{} of {} heads not rotated: {failed:?}",
            failed.len(),
            failed.len() + rows.len()
        );
    }
    Ok(())
}

/// How often `cluster verify` asks again while heads are at different indexes.
const VERIFY_POLL: Duration = Duration::from_millis(300);

/// Every member's (applied index, state digest), asked of each head itself; asked again
/// while the heads that answered are at different indexes (writes in flight, a head
/// catching up), until they agree or the command's time is up.
async fn verify(client: &Client, fmt: Option<Format>, out: &mut dyn Write) -> Result<()> {
    let end = client
        .ends_at()
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(15))
        .checked_sub(Duration::from_millis(300))
        .unwrap_or_else(Instant::now);
    let st = client.cluster_status().await?;
    let heads: Vec<(u64, String)> = st.heads.iter().map(|h| (h.id, h.addr.clone())).collect();
    loop {
        let budget = end
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(200));
        let asks = heads.iter().map(|(id, addr)| {
            let c = client.one(addr).with_deadline(budget.min(Duration::from_secs(3)));
            async move { (*id, addr.clone(), c.state_digest().await) }
        });
        let answers = futures::future::join_all(asks).await;
        let rows: Vec<output::DigestRow> = answers
            .iter()
            .map(|(id, addr, r)| match r {
                Ok(d) => output::DigestRow {
                    id: *id,
                    addr: addr.clone(),
                    applied: Some(d.applied_index),
                    digest: Some(d.digest.clone()),
                    error: String::new(),
                },
                Err(e) => output::DigestRow {
                    id: *id,
                    addr: addr.clone(),
                    applied: None,
                    digest: None,
                    error: e.to_string(),
                },
            })
            .collect();
        let answered: Vec<&output::DigestRow> = rows.iter().filter(|r| r.applied.is_some()).collect();
        let same_index = answered.windows(2).all(|w| w[0].applied == w[1].applied);
        let all = answered.len() == rows.len();
        if (same_index && all) || Instant::now() >= end {
            output::state_digests(&rows, fmt.unwrap_or(Format::Table), out)?;
            if !all {
                let down: Vec<String> = rows
                    .iter()
                    .filter(|r| r.applied.is_none())
                    .map(|r| r.id.to_string())
                    .collect();
                bail!(
                    "head(s) {} did not answer; the state could not be compared on every head (check `wwctl cluster status`)",
                    down.join(", ")
                );
            }
            if !same_index {
                bail!("the heads are still at different applied indexes; run again (or with a longer --timeout) once writes settle");
            }
            let first = &answered[0];
            if let Some(other) = answered.iter().find(|r| r.digest != first.digest) {
                bail!(
                    "heads {} and {} hold DIFFERENT states at index {}: the replicas diverged; keep their data dirs for analysis and report it",
                    first.id,
                    other.id,
                    first.applied.unwrap_or(0)
                );
            }
            if fmt.is_none() {
                writeln!(
                    out,
                    "all {} heads hold the same state at index {}",
                    rows.len(),
                    first.applied.unwrap_or(0)
                )?;
            }
            return Ok(());
        }
        tokio::time::sleep(VERIFY_POLL).await;
    }
}

/// Join head `id`: as a learner (visible in `cluster status` at once), then wait for it
/// to be ready and promote it, printing what it still lacks whenever that changes.
async fn join(client: &Client, id: u64, addr: &str, learner: bool, out: &mut dyn Write) -> Result<()> {
    client.add_head(id, addr, true).await?;
    writeln!(out, "head {id} ({addr}) joined as a learner")?;
    if learner {
        writeln!(
            out,
            "it stays a learner; `wwctl cluster promote {id}` makes it a voter once it has the log and every artifact"
        )?;
        return Ok(());
    }
    // The whole command's budget (`--timeout`), less a moment for the last answer.
    let end = client
        .ends_at()
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(15))
        .checked_sub(Duration::from_millis(500))
        .unwrap_or_else(Instant::now);
    let mut last = String::new();
    loop {
        match client.promote_head(id, false).await {
            Ok(r) => {
                writeln!(
                    out,
                    "head {id} is a voter: it has the log and every artifact; voters {:?}, learners {:?}",
                    r.voters, r.learners
                )?;
                return Ok(());
            }
            Err(e) if e.code() == Some(Code::FailedPrecondition) => {
                let msg = e.to_string();
                // "head N stays a learner: WHY; advice" — progress is the WHY.
                let why = msg
                    .split_once(": ")
                    .map_or(msg.as_str(), |(_, rest)| {
                        rest.split("; it keeps").next().unwrap_or(rest)
                    })
                    .to_string();
                if Instant::now() + JOIN_POLL >= end {
                    bail!("{}", msg.replace(" ADDR`", &format!(" {addr}`")));
                }
                if why != last {
                    writeln!(out, "waiting for head {id}: {why}")?;
                    out.flush()?;
                    last = why;
                }
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(JOIN_POLL).await;
    }
}
