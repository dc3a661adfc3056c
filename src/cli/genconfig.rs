//! `wwctl genconfig`: documents generated from the code, so they cannot drift from it.
//!
//! Warewulf's `genconfig man DIR` and `genconfig reference DIR` (its command reference)
//! keep their names; `completions SHELL` is Warewulf's `wwctl completion SHELL` (cobra's)
//! moved here beside the other generated files. `config-reference` prints the
//! `wulfd.yaml` reference: build.rs reads the config structs (their fields, YAML keys,
//! types and doc comments) and this walks them from `HeadConfig`, with the defaults
//! that serde fills in. `defaults` is Warewulf 4.5's `genconfig defaults` (the built-in
//! node defaults, its `defaults.conf` fallback); Warewulf 4.6 moved those defaults into
//! the `default` profile it ships in `nodes.conf` and dropped the command, so here it
//! prints that profile: the one a new cluster starts with ([`crate::model::default_profile`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{CommandFactory, Subcommand, ValueEnum};

#[derive(Subcommand, Debug)]
pub enum GenconfigCmd {
    /// Print a shell completion script (e.g. `wwctl genconfig completions bash >
    /// /etc/bash_completion.d/wwctl`).
    #[command(alias = "completion")]
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write a man page per command (wwctl.1, wwctl-node.1, wwctl-node-add.1, ...) into DIR.
    #[command(alias = "man_pages")]
    Man {
        /// Directory to write into (created if missing).
        dir: PathBuf,
    },
    /// Write the command reference (Markdown, one file per command) into DIR.
    Reference {
        /// Directory to write into (created if missing).
        dir: PathBuf,
    },
    /// Print the reference of the head's configuration file (`wulfd.yaml`): every key
    /// with its type, default and meaning, from the code's own documentation.
    ConfigReference,
    /// Print the `default` profile a new cluster starts with, as a nodes.conf document:
    /// the one Warewulf 4.7 ships (overlays, kernel arguments, init, root, iPXE and IPMI
    /// templates, NFS mounts of /home and /opt). Restore it in a cluster with `wwctl
    /// profile import FILE` (that replaces the `default` profile).
    #[command(alias = "dfaults")]
    Defaults,
}

/// The shells `completions` writes for.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

pub fn run(cmd: GenconfigCmd, out: &mut dyn Write) -> Result<()> {
    let mut top = super::Cli::command();
    match cmd {
        GenconfigCmd::Completions { shell } => {
            let mut buf = Vec::new();
            match shell {
                Shell::Bash => clap_complete::generate(clap_complete::Shell::Bash, &mut top, "wwctl", &mut buf),
                Shell::Zsh => clap_complete::generate(clap_complete::Shell::Zsh, &mut top, "wwctl", &mut buf),
                Shell::Fish => clap_complete::generate(clap_complete::Shell::Fish, &mut top, "wwctl", &mut buf),
            }
            out.write_all(&buf)?;
        }
        GenconfigCmd::Man { dir } => {
            create_dir(&dir)?;
            let n = man_pages(top, &dir)?;
            writeln!(out, "Wrote {n} man pages to {}", dir.display())?;
        }
        GenconfigCmd::Reference { dir } => {
            create_dir(&dir)?;
            top.build();
            let mut n = 0;
            reference(&mut top, "wwctl", &dir, &mut n)?;
            writeln!(out, "Wrote {n} reference pages to {}", dir.display())?;
        }
        GenconfigCmd::ConfigReference => out.write_all(config_reference()?.as_bytes())?,
        GenconfigCmd::Defaults => out.write_all(defaults()?.as_bytes())?,
    }
    Ok(())
}

/// The `default` profile a new cluster gets, as a nodes.conf: one source, so what this
/// prints is what `Init` creates.
fn defaults() -> Result<String> {
    let conf = crate::model::NodesConf {
        nodeprofiles: [("default".to_owned(), crate::model::default_profile())].into(),
        nodes: Default::default(),
    };
    Ok(crate::model::to_nodes_conf_yaml(&conf)?)
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// One page per visible command, named by its path (`wwctl-node-add.1`).
fn man_pages(top: clap::Command, dir: &Path) -> Result<usize> {
    fn walk(cmd: clap::Command, dir: &Path, n: &mut usize) -> Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, dir, n)?;
        }
        let path = clap_mangen::Man::new(cmd)
            .title("WWCTL")
            .section("1")
            .manual("wulfpack")
            .generate_to(dir)
            .with_context(|| format!("writing a man page into {}", dir.display()))?;
        tracing::debug!(page = %path.display(), "man page");
        *n += 1;
        Ok(())
    }
    let mut top = top.disable_help_subcommand(true);
    top.build();
    let mut n = 0;
    walk(top, dir, &mut n)?;
    Ok(n)
}

/// `wwctl_node_add.md`: the command's name, its long help as clap prints it, and links
/// to its subcommands' pages (Warewulf's reference is a tree of pages the same way).
fn reference(cmd: &mut clap::Command, path: &str, dir: &Path, n: &mut usize) -> Result<()> {
    let file = dir.join(format!("{}.md", path.replace(' ', "_")));
    let mut text = format!("# {path}\n\n");
    if let Some(about) = cmd.get_about() {
        text.push_str(&format!("{about}\n\n"));
    }
    text.push_str("```text\n");
    text.push_str(&cmd.render_long_help().to_string());
    text.push_str("```\n");
    let subs: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .map(|s| s.get_name().to_owned())
        .collect();
    if !subs.is_empty() {
        text.push_str("\n## Subcommands\n\n");
        for s in &subs {
            let p = format!("{path} {s}");
            text.push_str(&format!("- [{p}]({}.md)\n", p.replace(' ', "_")));
        }
    }
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    *n += 1;
    for s in subs {
        let sub = cmd.find_subcommand_mut(&s).expect("listed above");
        reference(sub, &format!("{path} {s}"), dir, n)?;
    }
    Ok(())
}

/// A `wulfd.yaml` struct or enum as build.rs read it.
#[derive(Debug)]
struct ConfigType {
    name: &'static str,
    doc: &'static str,
    fields: &'static [ConfigField],
}

#[derive(Debug)]
struct ConfigField {
    key: &'static str,
    ty: &'static str,
    /// No serde default: the file must give it.
    required: bool,
    doc: &'static str,
}

static CONFIG_TYPES: &[ConfigType] = include!(concat!(env!("OUT_DIR"), "/config_reference.rs"));

/// The smallest valid `wulfd.yaml`: what it lacks, serde's defaults fill in.
const MINIMAL: &str = "id: 1\ndata_dir: /var/lib/wulfpack\nlisten: 0.0.0.0:9701\n";

/// The last path segment of a type (`crate::boot::tftp::TftpConfig` → `TftpConfig`).
fn base(ty: &str) -> &str {
    ty.rsplit("::").next().unwrap_or(ty)
}

/// `Option<T>`, `Vec<T>`, `BTreeMap<K, V>`: the shape and the element type.
fn shape(ty: &str) -> (&'static str, &str) {
    let inner = |prefix: &str| ty.strip_prefix(prefix).and_then(|t| t.strip_suffix('>'));
    let t = base(ty.split('<').next().unwrap_or(ty));
    let generic = ty.find('<').map(|i| &ty[i + 1..ty.len() - 1]);
    match (t, generic) {
        ("Option", Some(g)) => ("optional", g),
        ("Vec", Some(g)) => ("list", g),
        ("BTreeMap" | "HashMap", Some(g)) => ("map", g.split_once(',').map_or(g, |(_, v)| v)),
        _ => ("", inner("").unwrap_or(ty)),
    }
}

fn type_name(ty: &str) -> String {
    match base(ty) {
        "u16" | "u32" | "u64" | "usize" => "integer".into(),
        "f64" => "number".into(),
        "bool" => "boolean".into(),
        "String" => "string".into(),
        "PathBuf" => "path".into(),
        "Ipv4Addr" => "IPv4 address".into(),
        other => other.into(),
    }
}

/// A scalar default as YAML prints it.
fn show(v: &serde_yaml_ng::Value) -> Option<String> {
    use serde_yaml_ng::Value;
    match v {
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        Value::Sequence(q) if q.is_empty() => Some("[]".into()),
        Value::Mapping(m) if m.is_empty() => Some("{}".into()),
        Value::Sequence(q) if q.iter().all(|x| !x.is_mapping() && !x.is_sequence()) => Some(format!(
            "[{}]",
            q.iter().filter_map(show).collect::<Vec<_>>().join(", ")
        )),
        _ => None,
    }
}

/// The `wulfd.yaml` reference (Markdown).
pub fn config_reference() -> Result<String> {
    let defaults: serde_yaml_ng::Value = {
        let cfg: crate::daemon::HeadConfig = serde_yaml_ng::from_str(MINIMAL)?;
        serde_yaml_ng::to_value(&cfg)?
    };
    let mut rows = Vec::new();
    walk_type("HeadConfig", "", Some(&defaults), &mut rows, 0);
    let mut s = format!(
        "# wulfd.yaml reference\n\nGenerated by `wwctl genconfig config-reference` (wulfpack {}) from the \
         documentation of the structs wulfd reads its configuration into. A key marked required has no \
         default; `KEY[]` is each entry of a list, `KEY.<name>` each entry of a map. An example with \
         comments: cluster/examples/wulfd.yaml.\n\n| key | type | default | meaning |\n|---|---|---|---|\n",
        env!("CARGO_PKG_VERSION")
    );
    for r in rows {
        s.push_str(&r);
        s.push('\n');
    }
    Ok(s)
}

fn walk_type(name: &str, prefix: &str, defaults: Option<&serde_yaml_ng::Value>, rows: &mut Vec<String>, depth: usize) {
    let Some(t) = CONFIG_TYPES.iter().find(|t| t.name == name) else {
        return;
    };
    // Bounded: the structs nest a few levels; a cycle would be a bug in them.
    if depth > 8 {
        return;
    }
    for f in t.fields {
        let key = format!("{prefix}{}", f.key);
        let (outer, inner) = shape(f.ty);
        let (outer2, elem) = if outer == "optional" {
            shape(inner)
        } else {
            (outer, inner)
        };
        let elem_name = base(elem.split('<').next().unwrap_or(elem));
        let mut ty = type_name(elem);
        match outer2 {
            "list" => ty = format!("list of {ty}"),
            "map" => ty = format!("map of {ty}"),
            _ => {}
        }
        let value = defaults.and_then(|d| d.get(f.key));
        let default = match value.and_then(show) {
            _ if f.required => "required".into(),
            Some(v) => format!("`{v}`"),
            None if outer == "optional" || value.is_some_and(|v| v.is_null()) => "unset".into(),
            None if value.is_some() => "see below".into(),
            None => "optional".into(),
        };
        let mut doc = f.doc.replace('|', "\\|");
        let sub = CONFIG_TYPES.iter().find(|t| t.name == elem_name);
        if let Some(e) = sub.filter(|t| t.fields.is_empty() && !t.doc.is_empty()) {
            doc = format!("{doc} ({}: {})", e.name, e.doc.replace('|', "\\|"))
                .trim()
                .to_owned();
        }
        rows.push(format!("| `{key}` | {ty} | {default} | {doc} |"));
        if sub.is_some_and(|t| !t.fields.is_empty()) {
            match outer2 {
                "list" => walk_type(elem_name, &format!("{key}[]."), None, rows, depth + 1),
                "map" => walk_type(elem_name, &format!("{key}.<name>."), None, rows, depth + 1),
                _ => walk_type(elem_name, &format!("{key}."), value, rows, depth + 1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of the example wulfd.yaml is in the reference, and every key of the
    /// reference's top level is a field of `HeadConfig` (serialized from the minimal file).
    #[test]
    fn config_reference_covers_the_example_config() {
        let text = config_reference().unwrap();
        let example: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/cluster/examples/wulfd.yaml")).unwrap(),
        )
        .unwrap();
        fn keys(v: &serde_yaml_ng::Value, prefix: &str, out: &mut Vec<String>) {
            if let Some(m) = v.as_mapping() {
                for (k, v) in m {
                    let k = format!("{prefix}{}", k.as_str().unwrap());
                    out.push(k.clone());
                    // Maps keyed by name (subnets, ipxe) and lists are not walked.
                    if !matches!(k.as_str(), "boot.dhcp.subnets" | "boot.dhcp.ipxe") {
                        keys(v, &format!("{k}."), out);
                    }
                }
            }
        }
        let mut want = Vec::new();
        keys(&example, "", &mut want);
        for k in want {
            assert!(text.contains(&format!("| `{k}` |")), "the reference lacks {k}");
        }
        assert!(
            text.contains("| `id` | integer | required | This head's Raft id"),
            "{text}"
        );
        assert!(text.contains("| `raft.heartbeat_ms` | integer | `100` |"), "{text}");
        assert!(
            text.contains("| `boot.dhcp.subnets.<name>.server` | IPv4 address |"),
            "{text}"
        );
        assert!(text.contains("| `boot.tftp.enabled` | boolean | `false` |"), "{text}");
    }
}
