//! `wwctl cluster …`: the heads (status, join, remove).

use std::io::Write;

use anyhow::Result;
use clap::Subcommand;

use super::output::{self, Format};
use crate::client::Client;

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Members, leader, term, log indexes and health of every head.
    Status,
    /// Add a running, empty head to the cluster (learner first, then voter).
    Join {
        id: u64,
        /// host:port of the new head's gRPC listener.
        addr: String,
        /// Keep it a non-voting learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a head from the cluster.
    Remove { id: u64 },
}

pub(super) async fn cluster_cmd(
    client: &Client,
    c: ClusterCmd,
    fmt: Option<Format>,
    out: &mut dyn Write,
) -> Result<()> {
    match c {
        ClusterCmd::Status => {
            let st = client.cluster_status().await?;
            output::cluster_status(&st, fmt.unwrap_or(Format::Table), out)
        }
        ClusterCmd::Join { id, addr, learner } => {
            let r = client.add_head(id, &addr, learner).await?;
            writeln!(
                out,
                "head {id} ({addr}) joined; voters {:?}, learners {:?}",
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
            Ok(())
        }
    }
}
