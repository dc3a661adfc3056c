//! `wwctl clean`: remove the blobs that nothing references from every head's store now,
//! instead of at the next periodic GC (Warewulf's `clean` empties its OCI cache and
//! what deleted nodes left; here images, kernels and overlays are all blobs of the
//! content store, so what is left behind is an unreferenced blob).
//!
//! Every head is asked (each has its own store); `--dry-run` lists what would go and
//! how many bytes. Blobs younger than `--min-age` stay: an import in progress has
//! written blobs its catalog entry does not reference yet.

use std::io::Write;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use super::output::{table, Format};
use crate::client::Client;

#[derive(Args, Debug)]
pub struct CleanArgs {
    /// List what would be removed, and how many bytes, without removing anything.
    #[arg(short = 'n', long, alias = "dryrun")]
    pub dry_run: bool,
    /// Keep unreferenced blobs younger than this many seconds (an import in progress
    /// writes its blobs before its catalog entry references them).
    #[arg(long, default_value_t = 300)]
    pub min_age: u64,
}

/// One head's answer (`-o json|yaml` prints a list of these).
#[derive(Debug, Serialize)]
pub struct CleanRow {
    pub head: u64,
    pub dry_run: bool,
    /// Removed (or, with dry_run, to be removed).
    pub blobs: Vec<BlobRow>,
    pub bytes: u64,
    pub kept: u64,
    pub temp_removed: u64,
    /// Set when the head did not answer (the other fields are then empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BlobRow {
    pub digest: String,
    pub size: u64,
}

pub async fn run(client: &Client, a: CleanArgs, fmt: Option<Format>, out: &mut dyn Write) -> Result<()> {
    let st = client.cluster_status().await?;
    let mut rows = Vec::new();
    for h in &st.heads {
        let one = Client::new(vec![h.addr.clone()]).with_deadline(std::time::Duration::from_secs(60));
        let mut row = CleanRow {
            head: h.id,
            dry_run: a.dry_run,
            blobs: Vec::new(),
            bytes: 0,
            kept: 0,
            temp_removed: 0,
            error: None,
        };
        match one.clean(a.dry_run, a.min_age).await {
            Ok(r) => {
                row.blobs = r
                    .blobs
                    .into_iter()
                    .map(|b| BlobRow {
                        digest: b.digest,
                        size: b.size,
                    })
                    .collect();
                row.bytes = r.bytes;
                row.kept = r.kept;
                row.temp_removed = r.temp_removed;
            }
            Err(e) => row.error = Some(format!("{} did not answer: {e}", h.addr)),
        }
        rows.push(row);
    }
    print(&rows, fmt.unwrap_or(Format::Table), out)?;
    let failed: Vec<String> = rows
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("head {}: {e}", r.head)))
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} heads not cleaned ({}); run again when they are up",
            failed.len(),
            rows.len(),
            failed.join("; ")
        );
    }
    Ok(())
}

/// The table: one line per blob (head, digest, size), then one summary line per head.
pub fn print(rows: &[CleanRow], fmt: Format, out: &mut dyn Write) -> Result<()> {
    match fmt {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, rows)?;
            writeln!(out)?;
        }
        Format::Yaml => out.write_all(serde_yaml_ng::to_string(rows)?.as_bytes())?,
        Format::Table => {
            let lines: Vec<Vec<String>> = rows
                .iter()
                .flat_map(|r| {
                    r.blobs
                        .iter()
                        .map(|b| vec![r.head.to_string(), b.digest.clone(), b.size.to_string()])
                })
                .collect();
            if !lines.is_empty() {
                out.write_all(table(&["HEAD", "BLOB", "BYTES"], lines).as_bytes())?;
            }
            for r in rows {
                match &r.error {
                    Some(e) => writeln!(out, "head {}: ERROR: {e}", r.head)?,
                    None => writeln!(
                        out,
                        "head {}: {} {} unreferenced blob(s), {} bytes; kept {}{}",
                        r.head,
                        if r.dry_run { "would remove" } else { "removed" },
                        r.blobs.len(),
                        r.bytes,
                        r.kept,
                        if r.temp_removed > 0 {
                            format!("; removed {} stale temp file(s)", r.temp_removed)
                        } else {
                            String::new()
                        }
                    )?,
                }
            }
        }
    }
    Ok(())
}
