//! `wwctl node …` and `wwctl profile …`: one set of verbs for both kinds (`add`, `set`,
//! `unset`, `list`, `delete`, `edit`, `import`, `export`, `status`), as in Warewulf.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};

use super::confirm;
use super::fields::{self, FieldFlags};
use super::output::{self, Format};
use crate::client::Client;
use crate::model::{self, NodeConf, NodesConf};
use crate::state::{Command, Kind, Put, Query, QueryResult, Selector};

#[derive(Subcommand, Debug)]
pub enum ObjCmd {
    /// Add objects (hostlist patterns like n[001-100]; --ipaddr/--ipmiaddr auto-increment).
    #[command(aliases = ["new", "create"])]
    Add {
        /// Names or hostlist patterns.
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        fields: FieldFlags,
    },
    /// Change fields of existing objects (value UNDEF clears a field).
    #[command(alias = "modify")]
    Set {
        #[arg(required_unless_present = "all")]
        names: Vec<String>,
        /// Change every node (or profile) instead of the named ones.
        #[arg(short = 'a', long, conflicts_with = "names")]
        all: bool,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long)]
        yes: bool,
        /// Accepted for Warewulf's command lines; it has no effect there either.
        #[arg(short = 'f', long, hide = true)]
        force: bool,
        #[command(flatten)]
        fields: FieldFlags,
    },
    /// Clear fields of existing objects: `unset n1 image kernelargs`, `unset n1 -n eth hwaddr`,
    /// or with Warewulf's flags: `unset --image --tag K n1`, `unset --diskname /dev/vda n1`.
    Unset {
        /// Object name or hostlist pattern.
        name: String,
        /// Field names (flag names of `set`, or tags, nettags, ipmitags, network, ipmi, kernel).
        fields: Vec<String>,
        #[arg(short = 'y', long)]
        yes: bool,
        /// Skip names that do not exist (with a warning) instead of failing; an error
        /// still when none exists.
        #[arg(short = 'f', long)]
        force: bool,
        /// Warewulf's flag form: `--image`, `--tag K`, `--partnumber --diskname D --partname P`, ...
        #[command(flatten)]
        flags: fields::UnsetFlags,
    },
    /// List objects (all, or those matching the hostlist patterns).
    #[command(alias = "ls")]
    List(ListArgs),
    /// Delete objects.
    #[command(aliases = ["rm", "del", "remove"])]
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// Edit objects as YAML in $EDITOR; refused if someone changed them meanwhile.
    Edit {
        #[arg(required = true)]
        names: Vec<String>,
        /// Leave out the explanatory comment at the top of the file.
        #[arg(long)]
        noheader: bool,
    },
    /// Import objects from a YAML file (a nodes.conf document or a map name → fields).
    Import {
        file: PathBuf,
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// Print objects as YAML (importable with `import`).
    Export { names: Vec<String> },
    /// Boot status of nodes (stage, file sent, address, seconds since last seen), from every head.
    Status(StatusArgs),
    /// IPMI sensor readings of nodes (`ipmitool sdr list`, with --full `sensor list`).
    Sensors(super::power::SensorsArgs),
    /// Serial-over-LAN console of nodes (`ipmitool sol activate`, run here; end it with
    /// the ipmi escape character, default `~`, then `.`).
    Console(super::power::ConsoleArgs),
}

/// `wwctl node status`: Warewulf's flags, plus `--history`.
#[derive(Args, Debug, Default, Clone)]
pub struct StatusArgs {
    /// Names or hostlist patterns (default: every node).
    pub names: Vec<String>,
    /// Refresh until interrupted, every `--update` milliseconds.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// The refresh period of `--watch`, in milliseconds.
    #[arg(short = 'U', long, value_name = "MS", default_value_t = 500)]
    pub update: u64,
    /// Only nodes last seen at or after this Unix time (seconds), as Warewulf.
    #[arg(short = 't', long, value_name = "SECS")]
    pub time: Option<i64>,
    /// Sort by the last check-in, most recent first.
    #[arg(short = 'l', long)]
    pub last: bool,
    /// Reverse the name order.
    #[arg(short = 'r', long)]
    pub reverse: bool,
    /// Only nodes that no head has seen.
    #[arg(short = 'u', long)]
    pub unknown: bool,
    /// Every recent event of each node (stage, file, result, address, head, time),
    /// oldest first, not only the last one.
    #[arg(long)]
    pub history: bool,
}

#[derive(Args, Debug, Default)]
pub struct ListArgs {
    /// Names or hostlist patterns (default: all).
    pub names: Vec<String>,
    /// Show every field with where its value comes from.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Show kernel, image and overlays.
    #[arg(short = 'l', long)]
    pub long: bool,
    /// Show network devices.
    #[arg(short = 'n', long)]
    pub net: bool,
    /// Show IPMI settings.
    #[arg(short = 'i', long)]
    pub ipmi: bool,
    /// Print the stored objects as YAML.
    #[arg(short = 'y', long)]
    pub yaml: bool,
    /// Print the stored objects as JSON.
    #[arg(short = 'j', long)]
    pub json: bool,
}

/// Expand hostlist patterns into names; patterns that name nothing (`,`) are an error.
fn expand(patterns: &[String]) -> Result<Vec<String>> {
    let names = expand_or_none(patterns)?;
    if names.is_empty() {
        bail!(
            "{:?} names no object; give at least one name or hostlist pattern",
            patterns.join(" ")
        );
    }
    Ok(names)
}

/// Expand hostlist patterns into names; may be empty (`list ,` lists everything, as in Warewulf).
/// Names from hostlist patterns (none for none).
pub(super) fn expand_patterns(patterns: &[String]) -> Result<Vec<String>> {
    expand_or_none(patterns)
}

fn expand_or_none(patterns: &[String]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for p in patterns {
        names.extend(model::expand_hostlist(p)?);
    }
    Ok(names)
}

fn selector(kind: Kind, names: Vec<String>) -> Query {
    let sel = Selector::Names(names);
    match kind {
        Kind::Node => Query::nodes(sel),
        Kind::Profile => Query::profiles(sel),
    }
}

fn objects(kind: Kind, r: &QueryResult) -> &BTreeMap<String, crate::state::Versioned<NodeConf>> {
    match kind {
        Kind::Node => &r.nodes,
        Kind::Profile => &r.profiles,
    }
}

/// Read the named objects; every name must exist.
async fn fetch_existing(client: &Client, kind: Kind, patterns: &[String]) -> Result<QueryResult> {
    let names = expand(patterns)?;
    let r = client.read(&selector(kind, names), true).await?;
    if !r.missing.is_empty() {
        bail!(
            "{} not found: {}; check the names with `wwctl {} list`",
            kind.as_str(),
            short_list(&r.missing),
            kind.as_str()
        );
    }
    Ok(r)
}

/// `--profile` must name profiles that exist. Warewulf stores a dangling reference and
/// skips it when merging, which silently drops configuration (often after a typo); the
/// head refuses it too, this only says how to fix it before sending anything.
async fn check_profiles_exist(client: &Client, fields: &FieldFlags) -> Result<()> {
    let Some(raw) = fields.get("profile") else {
        return Ok(());
    };
    let wanted: Vec<String> = raw
        .iter()
        .flat_map(|s| s.split(','))
        .map(|p| p.trim().trim_start_matches('~'))
        .filter(|p| !p.is_empty() && !fields::is_unset_word(p))
        .map(String::from)
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let r = client.read(&Query::profiles(Selector::Names(wanted)), true).await?;
    if let Some(first) = r.missing.first() {
        bail!(
            "profile(s) {} do not exist; create them first (wwctl profile add {first}) or fix the name \
             (wwctl profile list)",
            short_list(&r.missing)
        );
    }
    Ok(())
}

fn short_list(names: &[String]) -> String {
    if names.len() <= 10 {
        names.join(", ")
    } else {
        format!("{} and {} more", names[..10].join(", "), names.len() - 10)
    }
}

pub(super) async fn obj_cmd(
    client: &Client,
    kind: Kind,
    c: ObjCmd,
    fmt: Option<Format>,
    out: &mut dyn Write,
) -> Result<()> {
    let k = kind.as_str();
    match c {
        ObjCmd::Add { mut names, mut fields } => {
            if fields.has_dels() {
                bail!("--diskdel/--partdel/--fsdel delete from existing objects; use them with `wwctl {k} set`");
            }
            fields.take_bool_word(&mut names).map_err(|e| anyhow!(e))?;
            check_profiles_exist(client, &fields).await?;
            // Warewulf gives a new node the `default` profile only when that profile exists.
            let with_default = kind == Kind::Node
                && fields.get("profile").is_none()
                && client
                    .read(&Query::profiles(Selector::Names(vec!["default".into()])), true)
                    .await?
                    .missing
                    .is_empty();
            let items = build_new(kind, &names, &fields, with_default)?;
            let n = items.len();
            client.write(Command::Add { kind, items }).await?;
            writeln!(out, "Added {n} {k}(s)")?;
        }
        ObjCmd::Set {
            mut names,
            all,
            yes,
            force: _,
            mut fields,
        } => {
            if fields.is_empty() {
                bail!("nothing to set; give at least one field flag (see `wwctl {k} set --help`)");
            }
            fields.take_bool_word(&mut names).map_err(|e| anyhow!(e))?;
            check_profiles_exist(client, &fields).await?;
            let patch = fields.to_patch().map_err(|e| anyhow!(e))?;
            let names = if all {
                objects(kind, &client.read(&selector_all(kind), true).await?)
                    .keys()
                    .cloned()
                    .collect()
            } else {
                expand(&names)?
            };
            if !yes {
                confirm(&format!("Are you sure you want to modify {} {k}(s)", names.len()))?;
            }
            // --diskdel/--partdel/--fsdel depend on what each object holds: resolve them
            // against the stored objects, and send one patch per distinct result.
            let groups = if fields.has_dels() {
                let r = fetch_existing(client, kind, &names).await?;
                let mut groups: Vec<(model::Patch, Vec<String>)> = Vec::new();
                for (name, v) in objects(kind, &r) {
                    let mut p = fields.del_ops(name, &v.value).map_err(|e| anyhow!(e))?;
                    p.extend(patch.iter().cloned());
                    match groups.iter_mut().find(|(g, _)| *g == p) {
                        Some((_, n)) => n.push(name.clone()),
                        None => groups.push((p, vec![name.clone()])),
                    }
                }
                groups
            } else {
                vec![(patch, names)]
            };
            let mut changed = 0;
            for (patch, names) in groups {
                let w = client.write(Command::Patch { kind, names, patch }).await?;
                changed += w.outcome.changed_count();
            }
            writeln!(out, "Modified {changed} {k}(s)")?;
        }
        ObjCmd::Unset {
            name,
            fields,
            yes,
            force,
            flags,
        } => {
            if fields.is_empty() && flags.is_empty() {
                bail!(
                    "nothing to unset; name fields (`wwctl {k} unset NAME image`) or give flags \
                     (`wwctl {k} unset --image NAME`, see `wwctl {k} unset --help`)"
                );
            }
            let names = expand(&[name])?;
            if !yes && names.len() > 1 {
                confirm(&format!("Are you sure you want to modify {} {k}(s)", names.len()))?;
            }
            // Removing a partition depends on what each object holds (which disks have it,
            // whether its disk is left empty): resolve per object, one patch per result.
            let r = if force {
                // Warewulf's `unset --force`: skip what does not exist, fail only if nothing does.
                let r = client.read(&selector(kind, names.clone()), true).await?;
                if !r.missing.is_empty() {
                    eprintln!("WARNING: {k}(s) not found, skipped: {}", short_list(&r.missing));
                }
                if objects(kind, &r).is_empty() {
                    bail!("no {k}s were modified: none of the names exists; check them with `wwctl {k} list`");
                }
                r
            } else {
                fetch_existing(client, kind, &names).await?
            };
            let mut groups: Vec<(model::Patch, Vec<String>)> = Vec::new();
            for (name, v) in objects(kind, &r) {
                let p = flags.ops(name, &v.value, &fields).map_err(|e| anyhow!(e))?;
                match groups.iter_mut().find(|(g, _)| *g == p) {
                    Some((_, n)) => n.push(name.clone()),
                    None => groups.push((p, vec![name.clone()])),
                }
            }
            let mut changed = 0;
            for (patch, names) in groups {
                let w = client.write(Command::Patch { kind, names, patch }).await?;
                changed += w.outcome.changed_count();
            }
            writeln!(out, "Modified {changed} {k}(s)")?;
        }
        ObjCmd::List(args) => list(client, kind, args, fmt, out).await?,
        ObjCmd::Delete { names, yes } => {
            let names = expand(&names)?;
            // As in Warewulf, deleting what does not exist is not an error (the end state
            // is the one asked for), but it is reported so a typo does not go unnoticed.
            let r = client.read(&selector(kind, names.clone()), true).await?;
            if !r.missing.is_empty() {
                eprintln!(
                    "WARNING: {k}(s) not found, nothing to delete: {}",
                    short_list(&r.missing)
                );
            }
            let names: Vec<String> = names.into_iter().filter(|n| !r.missing.contains(n)).collect();
            if names.is_empty() {
                writeln!(out, "Deleted 0 {k}(s)")?;
                return Ok(());
            }
            if !yes {
                confirm(&format!("Are you sure you want to delete {} {k}(s)", names.len()))?;
            }
            let w = client.write(Command::Delete { kind, names }).await?;
            writeln!(out, "Deleted {} {k}(s)", w.outcome.deleted_count())?;
        }
        ObjCmd::Edit { names, noheader } => edit(client, kind, &names, noheader, out).await?,
        ObjCmd::Sensors(args) => {
            if kind != Kind::Node {
                bail!("sensors exist for nodes only: wwctl node sensors");
            }
            super::power::sensors(client, args, fmt, out).await?
        }
        ObjCmd::Console(args) => {
            if kind != Kind::Node {
                bail!("console exists for nodes only: wwctl node console");
            }
            super::power::console(client, args).await?
        }
        ObjCmd::Status(args) => {
            if kind != Kind::Node {
                bail!("status exists for nodes only: wwctl node status");
            }
            let filter: Option<std::collections::HashSet<String>> = (!args.names.is_empty())
                .then(|| expand(&args.names))
                .transpose()?
                .map(|v| v.into_iter().collect());
            loop {
                let (events, unreachable) = client.node_status(args.history).await?;
                let known: Vec<String> = client
                    .read(&Query::nodes(Selector::All), false)
                    .await?
                    .nodes
                    .into_keys()
                    .collect();
                let text = output::node_status(
                    &output::status_rows(events, &known, filter.as_ref(), &args),
                    &unreachable,
                    args.history,
                    fmt.unwrap_or(Format::Table),
                )?;
                if args.watch {
                    write!(out, "\x1b[2J\x1b[H")?;
                }
                out.write_all(text.as_bytes())?;
                out.flush()?;
                if !args.watch {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(args.update.max(100))).await;
            }
        }
        ObjCmd::Import { file, yes } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let mut conf = parse_import(kind, &text, &file.display().to_string())?;
            define_missing_profiles(client, &mut conf).await?;
            let n = conf.nodes.len() + conf.nodeprofiles.len();
            if !yes {
                confirm(&format!(
                    "Import {n} object(s) from {}, replacing those that exist",
                    file.display()
                ))?;
            }
            client.write(Command::Import { conf }).await?;
            writeln!(out, "Imported {n} object(s)")?;
        }
        ObjCmd::Export { names } => {
            let r = if names.is_empty() {
                client.read(&selector_all(kind), true).await?
            } else {
                fetch_existing(client, kind, &names).await?
            };
            let map: BTreeMap<String, NodeConf> = objects(kind, &r)
                .iter()
                .map(|(n, v)| (n.clone(), v.value.clone()))
                .collect();
            out.write_all(model::to_conf_map_yaml(&map)?.as_bytes())?;
        }
    }
    Ok(())
}

fn selector_all(kind: Kind) -> Query {
    match kind {
        // Nodes are shown merged, so their profiles come along.
        Kind::Node => Query {
            profiles: Selector::All,
            ..Query::nodes(Selector::All)
        },
        Kind::Profile => Query::profiles(Selector::All),
    }
}

/// New objects for `add`: a node without `--profile` gets `default` when `with_default`
/// (Warewulf: when that profile exists); `--ipaddr` and `--ipmiaddr` count up from the
/// given address for each further name.
pub fn build_new(
    kind: Kind,
    patterns: &[String],
    fields: &FieldFlags,
    with_default: bool,
) -> Result<Vec<(String, NodeConf)>> {
    let names = expand(patterns)?;
    let bases: Vec<(&str, std::net::IpAddr)> = ["ipaddr", "ipmiaddr"]
        .into_iter()
        .filter_map(|f| fields.get(f).and_then(|v| v.last()).map(|v| (f, v)))
        // UNDEF and 0.0.0.0 clear the field on every node; nothing to count up.
        .filter(|(_, v)| !fields::is_unset_word(v))
        .map(|(f, v)| {
            v.parse()
                .map(|ip| (f, ip))
                .map_err(|_| anyhow!("--{f} {v:?} is not an IP address"))
        })
        .filter(|r| !matches!(r, Ok((_, ip)) if std::net::IpAddr::is_unspecified(ip)))
        .collect::<Result<_>>()?;
    let mut items = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        let mut f = fields.clone();
        for (flag, base) in &bases {
            f.set_one(flag, model::ip_add(*base, i as u64)?.to_string());
        }
        let mut conf = NodeConf::default();
        if with_default && kind == Kind::Node && f.get("profile").is_none() {
            conf.profiles = vec!["default".into()];
        }
        let patch = f.to_patch().map_err(|e| anyhow!(e))?;
        model::apply_patch(&mut conf, &patch).with_context(|| format!("{} {name}", kind.as_str()))?;
        items.push((name, conf));
    }
    Ok(items)
}

/// Profiles the file refers to but neither defines nor finds in the cluster. Warewulf
/// keeps such a reference and skips it when merging; wulfpack refuses dangling references,
/// so a real Warewulf file would not import. Define each one empty instead (which merges
/// exactly like Warewulf's skipped reference) and say so, so the operator can fill it in.
async fn define_missing_profiles(client: &Client, conf: &mut NodesConf) -> Result<()> {
    let mut wanted: Vec<String> = Vec::new();
    for obj in conf.nodes.values().chain(conf.nodeprofiles.values()) {
        for p in &obj.profiles {
            let p = p.trim_start_matches('~');
            if !p.is_empty() && !conf.nodeprofiles.contains_key(p) && !wanted.iter().any(|w| w == p) {
                wanted.push(p.to_owned());
            }
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let r = client.read(&Query::profiles(Selector::Names(wanted)), true).await?;
    if r.missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "WARNING: profile(s) referenced but not defined, created empty: {}; fill them in with `wwctl profile set`",
        short_list(&r.missing)
    );
    for p in r.missing {
        conf.nodeprofiles.insert(p, NodeConf::default());
    }
    Ok(())
}

/// `import` accepts a nodes.conf document or a bare map of objects of `kind`.
/// `what` names the file in errors.
fn parse_import(kind: Kind, text: &str, what: &str) -> Result<NodesConf> {
    let map = match model::parse_import(text, what)? {
        model::ImportDoc::NodesConf(conf) => return Ok(conf),
        model::ImportDoc::Objects(map) => map,
    };
    if map.is_empty() {
        bail!("the file holds no objects; expected a nodes.conf document or a map of name: fields");
    }
    Ok(match kind {
        Kind::Node => NodesConf {
            nodes: map,
            ..Default::default()
        },
        Kind::Profile => NodesConf {
            nodeprofiles: map,
            ..Default::default()
        },
    })
}

async fn list(client: &Client, kind: Kind, args: ListArgs, fmt: Option<Format>, out: &mut dyn Write) -> Result<()> {
    let mut q = selector_all(kind);
    let names = expand_or_none(&args.names)?;
    if !names.is_empty() {
        match kind {
            Kind::Node => q.nodes = Selector::Names(names),
            Kind::Profile => q.profiles = Selector::Names(names),
        }
    }
    let r = client.read(&q, true).await?;
    let raw: BTreeMap<String, NodeConf> = objects(kind, &r)
        .iter()
        .map(|(n, v)| (n.clone(), v.value.clone()))
        .collect();
    let fmt = if args.yaml {
        Format::Yaml
    } else if args.json {
        Format::Json
    } else {
        fmt.unwrap_or(Format::Table)
    };
    match fmt {
        Format::Yaml => {
            out.write_all(model::to_conf_map_yaml(&raw)?.as_bytes())?;
            return Ok(());
        }
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &raw)?;
            writeln!(out)?;
            return Ok(());
        }
        Format::Table => {}
    }
    let profiles: BTreeMap<String, NodeConf> = r.profiles.iter().map(|(n, v)| (n.clone(), v.value.clone())).collect();
    let view = if args.all {
        output::View::All
    } else if args.net {
        output::View::Net
    } else if args.ipmi {
        output::View::Ipmi
    } else if args.long {
        output::View::Long
    } else {
        output::View::Default
    };
    let merged = raw
        .iter()
        .map(|(name, conf)| match kind {
            Kind::Node => model::merge(name, conf, &profiles),
            // A profile is shown as it is stored (profiles do not inherit in listings).
            Kind::Profile => model::merge(name, &without_profiles(conf), &BTreeMap::new()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    output::list(kind, view, &merged, &raw, out)
}

fn without_profiles(conf: &NodeConf) -> NodeConf {
    NodeConf {
        profiles: vec![],
        ..conf.clone()
    }
}

async fn edit(client: &Client, kind: Kind, patterns: &[String], noheader: bool, out: &mut dyn Write) -> Result<()> {
    let r = fetch_existing(client, kind, patterns).await?;
    let objs = objects(kind, &r);
    let before: BTreeMap<String, NodeConf> = objs.iter().map(|(n, v)| (n.clone(), v.value.clone())).collect();
    let text = model::to_conf_map_yaml(&before)?;
    let tmp = tempfile_in_tmp()?;
    let header = if noheader {
        String::new()
    } else {
        format!(
            "# Edit {}s; save and quit to apply, or quit unchanged to abort.\n",
            kind.as_str()
        )
    };
    std::fs::write(&tmp.0, format!("{header}{text}"))?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    loop {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("sh")
            .arg(&tmp.0)
            .status()
            .with_context(|| format!("cannot run editor {editor:?}"))?;
        if !status.success() {
            bail!("editor {editor:?} failed ({status}); nothing changed");
        }
        let edited = std::fs::read_to_string(&tmp.0)?;
        let after = match model::parse_conf_map(&edited) {
            Ok(a) => a,
            Err(e) if std::io::stdin().is_terminal() => {
                eprintln!("{e}");
                confirm("Edit again")?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mut items = Vec::new();
        for (name, conf) in &after {
            match objs.get(name) {
                Some(v) if v.value == *conf => {}
                Some(v) => items.push(Put {
                    name: name.clone(),
                    conf: conf.clone(),
                    expect: Some(v.version),
                }),
                None => items.push(Put {
                    name: name.clone(),
                    conf: conf.clone(),
                    expect: Some(0),
                }),
            }
        }
        let dropped: Vec<String> = before.keys().filter(|n| !after.contains_key(*n)).cloned().collect();
        if !dropped.is_empty() {
            eprintln!(
                "note: {} removed from the file but not deleted (use `wwctl {} delete`)",
                short_list(&dropped),
                kind.as_str()
            );
        }
        if items.is_empty() {
            writeln!(out, "No changes")?;
            return Ok(());
        }
        let n = items.len();
        client.write(Command::Put { kind, items }).await?;
        writeln!(out, "Updated {n} {}(s)", kind.as_str())?;
        return Ok(());
    }
}

/// A temp file removed on drop.
struct TmpFile(PathBuf);
impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
fn tempfile_in_tmp() -> Result<TmpFile> {
    let p = std::env::temp_dir().join(format!(
        "wwctl-edit-{}-{}.yaml",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    Ok(TmpFile(p))
}
