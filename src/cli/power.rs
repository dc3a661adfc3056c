//! `wwctl power on|off|cycle|reset|soft|status`, `wwctl node sensors` and
//! `wwctl node console`.
//!
//! Power and sensors are one admin call (`Power`): the head runs ipmitool where the
//! node's rack is served (see `crate::power`) and answers one result per node. Output
//! is one line per node and output line, `NODE: TEXT` (Warewulf prints the BMC address
//! instead of the node name), failures as `NODE: ERROR: why`, in node name order;
//! `-o json|yaml` gives the results as records. Any failed node makes the exit code 1.
//!
//! `node console` is interactive, so `wwctl` runs `ipmitool sol activate` itself, on
//! the operator's machine, from the node's merged `ipmi` fields read from a head; the
//! password goes to ipmitool through `IPMI_PASSWORD` (`-E`), as on the heads.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::Format;
use crate::client::Client;
use crate::model;
use crate::pb::admin as pb;
use crate::power::{Action, Target};
use crate::state::{Query, Selector};

/// `wwctl power`.
#[derive(Subcommand, Debug)]
pub enum PowerCmd {
    /// Power nodes on.
    On(PowerArgs),
    /// Power nodes off (hard).
    Off(PowerArgs),
    /// Power nodes off, then on.
    Cycle(PowerArgs),
    /// Hard reset of nodes.
    Reset(PowerArgs),
    /// Soft power off of nodes (ACPI, through the operating system).
    Soft(PowerArgs),
    /// Show the power status of nodes.
    Status(PowerArgs),
}

/// Flags shared by the power verbs and `node sensors`.
#[derive(Args, Debug, Clone)]
pub struct PowerArgs {
    /// Node names or hostlist patterns (n[01-10]).
    #[arg(required = true)]
    pub names: Vec<String>,
    /// How many ipmitool commands run at once (on each head).
    #[arg(long, default_value_t = 50)]
    pub fanout: u32,
    /// Only show the command that would run (the password is never shown).
    #[arg(short = 's', long)]
    pub show: bool,
    /// Each ipmitool's own deadline in seconds; a BMC that does not answer in time
    /// fails its node only.
    #[arg(long, value_name = "SECS", default_value_t = 20)]
    pub ipmi_timeout: u64,
}

/// `wwctl node sensors`.
#[derive(Args, Debug, Clone)]
pub struct SensorsArgs {
    #[command(flatten)]
    pub power: PowerArgs,
    /// Every sensor with its thresholds (`ipmitool sensor list`) instead of the
    /// sensor data repository (`sdr list`).
    #[arg(short = 'F', long)]
    pub full: bool,
}

/// `wwctl node console`.
#[derive(Args, Debug, Clone)]
pub struct ConsoleArgs {
    /// Node names or hostlist patterns; consoles open one after another.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// One node's result as `-o json|yaml` prints it.
#[derive(Debug, Serialize)]
struct Row<'a> {
    node: &'a str,
    ok: bool,
    output: &'a str,
    /// The head that ran ipmitool (0: none).
    head: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    note: &'a str,
    millis: u64,
}

/// `wwctl power VERB`.
pub async fn run(client: &Client, cmd: PowerCmd, fmt: Option<Format>, out: &mut dyn Write) -> Result<()> {
    let (action, args) = match cmd {
        PowerCmd::On(a) => (Action::On, a),
        PowerCmd::Off(a) => (Action::Off, a),
        PowerCmd::Cycle(a) => (Action::Cycle, a),
        PowerCmd::Reset(a) => (Action::Reset, a),
        PowerCmd::Soft(a) => (Action::Soft, a),
        PowerCmd::Status(a) => (Action::Status, a),
    };
    call(client, action, &args, fmt, out).await
}

/// `wwctl node sensors`.
pub async fn sensors(client: &Client, args: SensorsArgs, fmt: Option<Format>, out: &mut dyn Write) -> Result<()> {
    let action = if args.full { Action::Sensors } else { Action::Sdr };
    call(client, action, &args.power, fmt, out).await
}

async fn call(
    client: &Client,
    action: Action,
    args: &PowerArgs,
    fmt: Option<Format>,
    out: &mut dyn Write,
) -> Result<()> {
    let names = super::objects::expand_patterns(&args.names)?;
    if names.is_empty() {
        bail!(
            "{:?} names no node; give at least one name or hostlist pattern",
            args.names.join(" ")
        );
    }
    if args.fanout == 0 {
        bail!("--fanout must be 1 or more");
    }
    if args.ipmi_timeout == 0 {
        bail!("--ipmi-timeout must be 1 second or more");
    }
    let per_node = Duration::from_secs(args.ipmi_timeout);
    // The call lasts as long as its slowest round of ipmitools, plus a head's probe of
    // a rack head that does not answer: `--timeout` alone would cut a large fan-out short.
    let rounds = names.len().div_ceil(args.fanout as usize) as u32;
    let budget = per_node * rounds + Duration::from_secs(5);
    let client = client.clone().with_deadline(budget).until(Instant::now() + budget);
    let reply = client
        .power(pb::PowerRequest {
            nodes: names,
            action: action.as_str().into(),
            fanout: args.fanout,
            timeout_ms: u32::try_from(per_node.as_millis()).unwrap_or(u32::MAX),
            show: args.show,
            here: false,
        })
        .await?;
    print(&reply.results, fmt, out)?;
    let failed = reply.results.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        bail!("{failed} of {} nodes failed", reply.results.len());
    }
    Ok(())
}

/// Per-node lines (or records); a node that ran elsewhere than planned says so on stderr.
fn print(results: &[pb::PowerResult], fmt: Option<Format>, out: &mut dyn Write) -> Result<()> {
    let rows: Vec<Row> = results
        .iter()
        .map(|r| Row {
            node: &r.node,
            ok: r.ok,
            output: &r.output,
            head: r.head,
            note: &r.note,
            millis: r.millis,
        })
        .collect();
    match fmt.unwrap_or(Format::Table) {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &rows)?;
            writeln!(out)?;
        }
        Format::Yaml => out.write_all(serde_yaml_ng::to_string(&rows)?.as_bytes())?,
        Format::Table => {
            for r in &rows {
                if !r.note.is_empty() {
                    eprintln!("WARNING: {}: {}", r.node, r.note);
                }
                let text = if r.output.is_empty() { "--" } else { r.output };
                for line in text.lines() {
                    if r.ok {
                        writeln!(out, "{}: {line}", r.node)?;
                    } else {
                        writeln!(out, "{}: ERROR: {line}", r.node)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// `wwctl node console`: ipmitool's serial-over-LAN session on this terminal, for each
/// node in turn. The ipmitool program is `WWCTL_IPMITOOL`, else `ipmitool` in `PATH`.
pub async fn console(client: &Client, args: ConsoleArgs) -> Result<()> {
    let names = super::objects::expand_patterns(&args.names)?;
    // The session needs the BMC password (handed to ipmitool by environment, never
    // shown): asked for in clear, which the heads honour for admins only.
    let r = client
        .clone()
        .showing_secrets(true)
        .read(
            &Query {
                profiles: Selector::All,
                ..Query::nodes(Selector::Names(names.clone()))
            },
            false,
        )
        .await?;
    if r.nodes.is_empty() {
        bail!(
            "no nodes found among {}: check the names with `wwctl node list`",
            names.join(", ")
        );
    }
    let profiles = r.profiles.iter().map(|(n, v)| (n.clone(), v.value.clone())).collect();
    let ipmitool = std::env::var_os("WWCTL_IPMITOOL").unwrap_or_else(|| "ipmitool".into());
    let mut failed = 0;
    for (name, node) in &r.nodes {
        let conf = model::merge_effective(name, &node.value, &profiles)?;
        if conf.ipmi.as_ref().and_then(|i| i.password.as_deref()) == Some(crate::state::SECRET_MASK) {
            eprintln!("ERROR: {name}: its BMC password is shown only to admins; the console needs an admin credential");
            failed += 1;
            continue;
        }
        let target = match Target::from_conf(name, conf.ipmi.as_ref()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("ERROR: {name}: {e}");
                failed += 1;
                continue;
            }
        };
        let status = target
            .command(std::path::Path::new(&ipmitool), Action::Console)
            .kill_on_drop(false)
            .status()
            .await
            .with_context(|| {
                format!(
                    "cannot start {}; install ipmitool or set WWCTL_IPMITOOL",
                    std::path::Path::new(&ipmitool).display()
                )
            })?;
        if !status.success() {
            eprintln!("ERROR: {name}: console ended with {status}");
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of {} consoles failed", r.nodes.len());
    }
    Ok(())
}
