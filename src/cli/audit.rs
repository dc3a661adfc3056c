//! `wwctl audit`: the replicated log of operators' writes (see `state::audit`).

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use clap::Args;

use super::output::{self, Format};
use crate::client::Client;
use crate::state::{AuditQuery, Query, Selector};

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only entries since then: a duration back from now (`90m`, `2h`, `7d`) or a time
    /// (`2026-11-27T10:00:00Z`).
    #[arg(long)]
    since: Option<String>,
    /// At most this many entries, the newest.
    #[arg(short = 'n', long, default_value_t = 100)]
    limit: usize,
}

/// Unix seconds of `--since`.
fn since_secs(s: &str, now: SystemTime) -> Result<u64> {
    let at = if let Ok(d) = humantime::parse_duration(s) {
        now.checked_sub(d).unwrap_or(UNIX_EPOCH)
    } else {
        humantime::parse_rfc3339_weak(s).map_err(|_| {
            anyhow!("--since {s:?}: give a duration back from now (90m, 2h, 7d) or a time (2026-11-27T10:00:00Z)")
        })?
    };
    Ok(at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}

pub async fn run(client: &Client, a: AuditArgs, fmt: Option<Format>, out: &mut dyn Write) -> Result<()> {
    let since = match &a.since {
        Some(s) => since_secs(s, SystemTime::now())?,
        None => 0,
    };
    let mut q = Query::nodes(Selector::None);
    q.audit = Some(AuditQuery { since, limit: a.limit });
    let r = client.read(&q, true).await?;
    match fmt.unwrap_or(Format::Table) {
        Format::Table => {
            let rows = r.audit.iter().map(|e| {
                vec![
                    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(e.at)).to_string(),
                    e.index.to_string(),
                    e.who.clone(),
                    e.via.to_string(),
                    e.command.clone(),
                    e.outcome.clone(),
                ]
            });
            out.write_all(output::table(&["TIME", "INDEX", "OPERATOR", "VIA", "COMMAND", "OUTCOME"], rows).as_bytes())?;
            if let Some(d) = r.audit_dropped.filter(|d| *d > 0) {
                writeln!(out, "({d} older entries dropped; the log keeps the newest 10000)")?;
            }
        }
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &r.audit)?;
            writeln!(out)?;
        }
        Format::Yaml => out.write_all(serde_yaml_ng::to_string(&r.audit)?.as_bytes())?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(since_secs("2h", now).unwrap(), 1_000_000 - 7200);
        assert_eq!(since_secs("90m", now).unwrap(), 1_000_000 - 5400);
        assert_eq!(since_secs("1970-01-02T00:00:00Z", now).unwrap(), 86_400);
        let e = since_secs("yesterday", now).unwrap_err().to_string();
        assert!(e.contains("--since \"yesterday\""), "{e}");
    }
}
