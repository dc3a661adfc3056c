//! `wwctl ssh NODES -- CMD`: run a command on many nodes through the system `ssh`.
//!
//! As Warewulf's: each node at its primary network address, `--fanout` at a time, every
//! line of a node's output prefixed with its name (stdout to stdout, stderr to stderr),
//! `--dryrun` prints the commands. Beyond Warewulf's: ssh runs with `BatchMode=yes` (a
//! password prompt would hang the batch) and a connect timeout, every node has its own
//! deadline (`--node-timeout`), a node's block of output is printed whole when it ends,
//! so nodes never interleave, and the command fails (exit 1) when any node failed,
//! naming each with its reason, while every other node still runs.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use futures::stream::{self, StreamExt};

use crate::client::Client;
use crate::model;
use crate::state::{Query, Selector};

#[derive(Args, Debug)]
pub struct SshArgs {
    /// Nodes (hostlist patterns, comma separated: `n[01-10],gpu01`).
    pub nodes: String,
    /// The command and its arguments (after `--`, or as the remaining words).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// How many nodes at a time.
    #[arg(short = 'f', long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub fanout: u32,
    /// Seconds to wait after each node's command before its slot takes the next node.
    #[arg(short = 's', long, default_value_t = 0)]
    pub sleep: u64,
    /// Print the commands instead of running them.
    #[arg(short = 'n', long)]
    pub dryrun: bool,
    /// The ssh program.
    #[arg(long, default_value = "ssh")]
    pub rsh: String,
    /// Seconds ssh waits for a node to accept the connection.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u32,
    /// Seconds a node's command may run (connection included); then it is killed and
    /// counted as failed. 0: no limit.
    #[arg(long, default_value_t = 300)]
    pub node_timeout: u64,
    /// Extra ssh options, each passed as `-o OPTION` (e.g. `-O Port=2222`).
    #[arg(short = 'O', long = "ssh-option")]
    pub ssh_options: Vec<String>,
}

/// One node's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exit(i32),
    /// Not run or not finished: why.
    Failed(String),
}

struct Target {
    name: String,
    addr: Result<String, String>,
}

/// The ssh argument vector for one node (without the program).
fn ssh_argv(a: &SshArgs, addr: &str) -> Vec<String> {
    let mut v = vec![
        "-o".to_owned(),
        "BatchMode=yes".to_owned(),
        "-o".to_owned(),
        format!("ConnectTimeout={}", a.connect_timeout),
    ];
    for o in &a.ssh_options {
        v.push("-o".into());
        v.push(o.clone());
    }
    v.push(addr.to_owned());
    v.push("--".into());
    v.extend(a.command.iter().cloned());
    v
}

pub async fn run(client: &Client, a: SshArgs, out: &mut dyn Write) -> Result<()> {
    let names = model::expand_hostlist(&a.nodes)?;
    if names.is_empty() {
        bail!("no node names in {:?}; give a hostlist such as n[01-04]", a.nodes);
    }
    let r = client
        .read(
            &Query {
                profiles: Selector::All,
                ..Query::nodes(Selector::Names(names.clone()))
            },
            false,
        )
        .await?;
    let profiles: std::collections::BTreeMap<String, model::NodeConf> =
        r.profiles.iter().map(|(n, v)| (n.clone(), v.value.clone())).collect();
    let targets: Vec<Target> = names
        .iter()
        .map(|name| {
            let addr = match r.nodes.get(name) {
                None => Err("no such node (see `wwctl node list`)".to_owned()),
                Some(v) => match model::merge(name, &v.value, &profiles) {
                    Err(e) => Err(format!("cannot merge its profiles: {e}")),
                    Ok(m) => match m.primary_netdev() {
                        None => Err("no primary network device; set one with `wwctl node set --netname`".to_owned()),
                        Some(dev) => m.conf.network_devices[dev]
                            .ipaddr
                            .clone()
                            .filter(|ip| !ip.is_empty() && ip != "0.0.0.0")
                            .ok_or_else(|| format!("primary network device {dev} has no IP address")),
                    },
                },
            };
            Target {
                name: name.clone(),
                addr,
            }
        })
        .collect();

    if a.dryrun {
        for t in &targets {
            match &t.addr {
                Ok(addr) => writeln!(out, "{}: {} {}", t.name, a.rsh, ssh_argv(&a, addr).join(" "))?,
                Err(e) => writeln!(out, "{}: ERROR: {e}", t.name)?,
            }
        }
        return Ok(());
    }

    let a = &a;
    let mut results = stream::iter(targets.into_iter().map(|t| async move {
        let outcome = match &t.addr {
            Err(e) => (Vec::new(), Vec::new(), Outcome::Failed(e.clone())),
            Ok(addr) => {
                let r = run_one(a, addr).await;
                if a.sleep > 0 {
                    tokio::time::sleep(Duration::from_secs(a.sleep)).await;
                }
                r
            }
        };
        (t.name, outcome)
    }))
    .buffer_unordered(a.fanout as usize);

    let mut failed = Vec::new();
    let mut total = 0usize;
    while let Some((name, (stdout, stderr, outcome))) = results.next().await {
        total += 1;
        for line in String::from_utf8_lossy(&stdout).lines() {
            writeln!(out, "{name}: {line}")?;
        }
        {
            let mut err = std::io::stderr().lock();
            for line in String::from_utf8_lossy(&stderr).lines() {
                writeln!(err, "{name}: {line}")?;
            }
        }
        match outcome {
            Outcome::Exit(0) => {}
            Outcome::Exit(c) => {
                writeln!(out, "{name}: [exit status {c}]")?;
                failed.push(format!("{name} (exit status {c})"));
            }
            Outcome::Failed(why) => {
                writeln!(out, "{name}: [failed: {why}]")?;
                failed.push(format!("{name} ({why})"));
            }
        }
        out.flush()?;
    }
    if !failed.is_empty() {
        failed.sort();
        bail!("{} of {total} nodes failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

async fn run_one(a: &SshArgs, addr: &str) -> (Vec<u8>, Vec<u8>, Outcome) {
    let child = tokio::process::Command::new(&a.rsh)
        .args(ssh_argv(a, addr))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A node past its deadline is killed when its future is dropped.
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            return (
                Vec::new(),
                Vec::new(),
                Outcome::Failed(format!("cannot run {}: {e}", a.rsh)),
            )
        }
    };
    let wait = child.wait_with_output();
    let res = if a.node_timeout == 0 {
        Ok(wait.await)
    } else {
        tokio::time::timeout(Duration::from_secs(a.node_timeout), wait).await
    };
    match res {
        Err(_) => (
            Vec::new(),
            Vec::new(),
            Outcome::Failed(format!("timed out after {} s (--node-timeout)", a.node_timeout)),
        ),
        Ok(Err(e)) => (Vec::new(), Vec::new(), Outcome::Failed(format!("{}: {e}", a.rsh))),
        Ok(Ok(o)) => {
            let outcome = match o.status.code() {
                Some(c) => Outcome::Exit(c),
                None => Outcome::Failed(format!("killed ({})", o.status)),
            };
            (o.stdout, o.stderr, outcome)
        }
    }
}
