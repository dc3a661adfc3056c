//! `wwctl image ...`: Warewulf's image verbs.
//!
//! Long operations (import, build, exec) run on the head that answers and stream
//! progress; wwctl draws it with indicatif on a terminal and stays quiet otherwise.
//! `exec`/`shell` must run on a head's machine: the head prepares the root tree and
//! writes a token beside it; wwctl proves it sees that token before it chroots.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{ArgAction, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use super::output::{table, Format};
use crate::client::Client;
use crate::image::{human, EXEC_TOKEN_FILE};
use crate::model;
use crate::pb::admin as pb;
use crate::state::{Command, ImageCommand, ImageEntry, Query, Selector};

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Import an image: docker://HOST/REPO:TAG, oci-archive:FILE, docker-archive:FILE or a directory.
    Import {
        source: String,
        /// Image name (default: derived from the source).
        name: Option<String>,
        /// Replace an existing image of that name.
        #[arg(short, long)]
        force: bool,
        /// Use plain HTTP for the registry.
        #[arg(long)]
        nohttps: bool,
        /// Registry user name.
        #[arg(long, env = "WW_REGISTRY_USERNAME")]
        username: Option<String>,
        /// Registry password.
        #[arg(long, env = "WW_REGISTRY_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Platform of a multi-arch image, e.g. linux/arm64 (default: the head's).
        #[arg(long)]
        platform: Option<String>,
        /// Build the image after importing it.
        #[arg(long, default_value_t = true, action = ArgAction::Set)]
        build: bool,
    },
    /// List images (names; with -l, -k, -s, -c or --compressed also the nodes using
    /// each, kernel, times and sizes, as Warewulf's `image list`).
    #[command(alias = "ls")]
    List {
        names: Vec<String>,
        /// Nodes, kernel version, creation and modification time, size.
        #[arg(short = 'l', long)]
        long: bool,
        /// Nodes and kernel version.
        #[arg(short = 'k', long)]
        kernel: bool,
        /// Nodes and size (of the uncompressed image).
        #[arg(short = 's', long)]
        size: bool,
        /// Show the size of the image's root filesystem (the chroot) instead.
        #[arg(short = 'c', long)]
        chroot: bool,
        /// Show the size of the compressed image (what nodes download) instead.
        #[arg(long)]
        compressed: bool,
    },
    /// Show one image in detail.
    Show {
        name: String,
        /// Warewulf's summary: name, kernel version, rootfs, the nodes using it.
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// Build images (skipped when nothing changed, unless --force).
    Build {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(short, long)]
        force: bool,
    },
    /// Delete images (refused while nodes use them, unless --force).
    #[command(alias = "rm")]
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(short = 'y', long)]
        yes: bool,
        #[arg(short, long)]
        force: bool,
    },
    /// Copy an image under a new name (blobs are shared).
    #[command(alias = "cp")]
    Copy { from: String, to: String },
    /// Rename an image; nodes and profiles using it follow.
    #[command(alias = "mv")]
    Rename { from: String, to: String },
    /// List the kernels found in images.
    Kernels { names: Vec<String> },
    /// Run a command inside an image (chroot), then rebuild it.
    Exec {
        name: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Open a shell inside an image (chroot), then rebuild it.
    Shell { name: String },
}

pub async fn run(client: &Client, c: ImageCmd, fmt: Option<Format>, out: &mut dyn Write) -> Result<()> {
    match c {
        ImageCmd::Import {
            source,
            name,
            force,
            nohttps,
            username,
            password,
            platform,
            build,
        } => {
            let name = match name {
                Some(n) => n,
                None => default_name(&source)?,
            };
            let stream = client
                .image_import(pb::ImageImportRequest {
                    source,
                    name: name.clone(),
                    nohttps,
                    username: username.unwrap_or_default(),
                    password: password.unwrap_or_default(),
                    platform: platform.unwrap_or_default(),
                    force,
                    build,
                })
                .await?;
            let e = follow(stream).await?;
            writeln!(out, "Imported image {name}: {}", summary(&e))?;
        }
        ImageCmd::List {
            names,
            long,
            kernel,
            size,
            chroot,
            compressed,
        } => {
            let sel = if names.is_empty() {
                Selector::All
            } else {
                Selector::Names(names)
            };
            let r = client
                .read(
                    &Query {
                        access: false,
                        audit: None,
                        nodes: Selector::All,
                        profiles: Selector::All,
                        images: sel,
                    },
                    true,
                )
                .await?;
            let users = users_by_image(&r);
            match fmt.unwrap_or(Format::Table) {
                Format::Json => {
                    serde_json::to_writer_pretty(&mut *out, &r.images)?;
                    writeln!(out)?;
                }
                Format::Yaml => out.write_all(serde_yaml_ng::to_string(&r.images)?.as_bytes())?,
                Format::Table => {
                    let view = ListView::of(long, kernel, size || chroot || compressed);
                    let sizes = SizeOf::of(chroot, compressed);
                    let t = table(
                        view.header(),
                        r.images
                            .iter()
                            .map(|(n, v)| view.row(n, &v.value, users.get(n).copied().unwrap_or(0), sizes)),
                    );
                    out.write_all(t.as_bytes())?;
                }
            }
        }
        ImageCmd::Show { name, all } => {
            let r = client
                .read(
                    &Query {
                        access: false,
                        audit: None,
                        nodes: Selector::All,
                        profiles: Selector::All,
                        images: Selector::Names(vec![name.clone()]),
                    },
                    true,
                )
                .await?;
            let v = r
                .images
                .get(&name)
                .ok_or_else(|| anyhow!("image {name:?} does not exist; see `wwctl image list`"))?;
            match fmt.unwrap_or(Format::Table) {
                Format::Json => {
                    serde_json::to_writer_pretty(&mut *out, v)?;
                    writeln!(out)?;
                }
                Format::Yaml => out.write_all(serde_yaml_ng::to_string(v)?.as_bytes())?,
                Format::Table if all => {
                    let users: Vec<String> = image_users(&r).remove(&name).unwrap_or_default();
                    let kernel = v.value.kernel.as_ref().map_or("not found", |k| k.version.as_str());
                    writeln!(out, "Name: {name}")?;
                    writeln!(out, "KernelVersion: {kernel}")?;
                    // No directory holds an image here (its layers are in the content store):
                    // say so where Warewulf prints the chroot path.
                    writeln!(
                        out,
                        "Rootfs: (layers in the content store; `wwctl image exec {name}` unpacks them)"
                    )?;
                    writeln!(out, "Nr nodes: {}", users.len())?;
                    writeln!(out, "Nodes: [{}]", users.join(" "))?;
                }
                Format::Table => show(
                    &name,
                    &v.value,
                    users_by_image(&r).get(&name).copied().unwrap_or(0),
                    out,
                )?,
            }
        }
        ImageCmd::Build { names, force } => {
            for name in names {
                let e = follow(client.image_build(&name, force).await?).await?;
                writeln!(out, "Built image {name}: {}", summary(&e))?;
            }
        }
        ImageCmd::Delete { names, yes, force } => {
            if !yes {
                super::confirm(&format!("Are you sure you want to delete {} image(s)", names.len()))?;
            }
            for name in names {
                client
                    .write(Command::Image(ImageCommand::Delete {
                        name: name.clone(),
                        force,
                    }))
                    .await?;
                writeln!(out, "Deleted image {name}")?;
            }
        }
        ImageCmd::Copy { from, to } => {
            client
                .write(Command::Image(ImageCommand::Copy {
                    from: from.clone(),
                    to: to.clone(),
                }))
                .await?;
            writeln!(out, "Copied image {from} to {to}")?;
        }
        ImageCmd::Rename { from, to } => {
            let w = client
                .write(Command::Image(ImageCommand::Rename {
                    from: from.clone(),
                    to: to.clone(),
                }))
                .await?;
            let moved = w.outcome.changed_count().saturating_sub(1);
            writeln!(out, "Renamed image {from} to {to} ({moved} node(s)/profile(s) updated)")?;
        }
        ImageCmd::Kernels { names } => {
            let names = if names.is_empty() {
                client
                    .read(&Query::images(Selector::All), true)
                    .await?
                    .images
                    .into_keys()
                    .collect()
            } else {
                names
            };
            let mut rows = Vec::new();
            for name in names {
                let r = client.image_kernels(&name).await?;
                for k in r.kernels {
                    let chosen = if k.version == r.chosen { "yes" } else { "" };
                    rows.push(vec![name.clone(), k.version, k.path, chosen.to_string()]);
                }
            }
            out.write_all(table(&["IMAGE", "KERNEL VERSION", "PATH", "BOOTS"], rows).as_bytes())?;
        }
        ImageCmd::Exec { name, cmd } => exec(client, &name, &cmd, out).await?,
        ImageCmd::Shell { name } => {
            let shell = vec!["/bin/sh".to_string(), "-l".to_string()];
            exec(client, &name, &shell, out).await?
        }
    }
    Ok(())
}

/// `docker://host/library/rocky:9` → `rocky-9`-like names: last path part, tag appended.
fn default_name(source: &str) -> Result<String> {
    let s = source
        .trim_start_matches("docker://")
        .trim_start_matches("oci-archive:")
        .trim_start_matches("docker-archive:")
        .trim_start_matches("dir:")
        .trim_end_matches('/');
    let s = s.split('@').next().unwrap_or(s);
    let last = s.rsplit('/').next().unwrap_or(s);
    let last = last
        .trim_end_matches(".tar")
        .trim_end_matches(".tar.gz")
        .replace(':', "-");
    let name: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() || model::validate_name("image", &name).is_err() {
        bail!("cannot derive an image name from {source:?}; give one: wwctl image import SOURCE NAME");
    }
    Ok(name)
}

/// Number of nodes whose merged image is each image.
fn users_by_image(r: &crate::state::QueryResult) -> BTreeMap<String, usize> {
    image_users(r).into_iter().map(|(k, v)| (k, v.len())).collect()
}

/// The nodes using each image (through their profiles too), in name order.
fn image_users(r: &crate::state::QueryResult) -> BTreeMap<String, Vec<String>> {
    let profiles: BTreeMap<String, model::NodeConf> =
        r.profiles.iter().map(|(n, v)| (n.clone(), v.value.clone())).collect();
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, v) in &r.nodes {
        if let Ok(m) = model::merge(name, &v.value, &profiles) {
            if let Some(img) = m.conf.image_name {
                users.entry(img).or_default().push(name.clone());
            }
        }
    }
    users
}

/// Which columns `image list` shows (Warewulf's choice of flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListView {
    Names,
    Kernel,
    Size,
    Long,
}

/// Which size the SIZE column shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizeOf {
    Image,
    Chroot,
    Compressed,
}

impl SizeOf {
    /// As Warewulf: `--chroot` wins over `--compressed`.
    fn of(chroot: bool, compressed: bool) -> SizeOf {
        if chroot {
            SizeOf::Chroot
        } else if compressed {
            SizeOf::Compressed
        } else {
            SizeOf::Image
        }
    }

    fn of_entry(self, e: &ImageEntry) -> String {
        let a = e.artifact.as_ref();
        match self {
            SizeOf::Chroot => human(e.rootfs_size),
            SizeOf::Compressed => a.map(|a| human(a.size)).unwrap_or_else(|| "(not built)".into()),
            // An artifact built before the uncompressed size was recorded: `--`.
            SizeOf::Image => match a {
                None => "(not built)".into(),
                Some(a) if a.uncompressed == 0 => "--".into(),
                Some(a) => human(a.uncompressed),
            },
        }
    }
}

impl ListView {
    fn of(long: bool, kernel: bool, size: bool) -> ListView {
        if long {
            ListView::Long
        } else if kernel {
            ListView::Kernel
        } else if size {
            ListView::Size
        } else {
            ListView::Names
        }
    }

    fn header(self) -> &'static [&'static str] {
        match self {
            ListView::Names => &["IMAGE NAME"],
            ListView::Kernel => &["IMAGE NAME", "NODES", "KERNEL VERSION"],
            ListView::Size => &["IMAGE NAME", "NODES", "SIZE"],
            ListView::Long => &[
                "IMAGE NAME",
                "NODES",
                "KERNEL VERSION",
                "CREATION TIME",
                "MODIFICATION TIME",
                "SIZE",
            ],
        }
    }

    fn row(self, name: &str, e: &ImageEntry, nodes: usize, size: SizeOf) -> Vec<String> {
        let kernel = || e.kernel.as_ref().map(|k| k.version.clone()).unwrap_or_default();
        match self {
            ListView::Names => vec![name.to_owned()],
            ListView::Kernel => vec![name.to_owned(), nodes.to_string(), kernel()],
            ListView::Size => vec![name.to_owned(), nodes.to_string(), size.of_entry(e)],
            ListView::Long => vec![
                name.to_owned(),
                nodes.to_string(),
                kernel(),
                super::output::rfc822(e.created),
                super::output::rfc822(e.updated),
                size.of_entry(e),
            ],
        }
    }
}

fn time(secs: u64) -> String {
    if secs == 0 {
        return "--".into();
    }
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

fn summary(e: &ImageEntry) -> String {
    let kernel = e
        .kernel
        .as_ref()
        .map(|k| format!("kernel {}", k.version))
        .unwrap_or_else(|| "no kernel found".into());
    match &e.artifact {
        Some(a) => format!(
            "{} files, {} → {} image, {kernel}",
            e.files,
            human(e.rootfs_size),
            human(a.size)
        ),
        None => format!("{} layer(s), not built, {kernel}", e.layers.len()),
    }
}

fn show(name: &str, e: &ImageEntry, nodes: usize, out: &mut dyn Write) -> Result<()> {
    let mut rows = vec![
        vec!["Name".to_string(), name.to_string()],
        vec!["Source".into(), e.source.clone()],
        vec!["Platform".into(), e.platform.clone()],
        vec!["Nodes".into(), nodes.to_string()],
        vec!["Created".into(), time(e.created)],
        vec!["Modified".into(), time(e.updated)],
        vec!["Files".into(), e.files.to_string()],
        vec!["Rootfs size".into(), human(e.rootfs_size)],
    ];
    for (i, l) in e.layers.iter().enumerate() {
        rows.push(vec![
            format!("Layer {}", i + 1),
            format!("{} ({}, {})", l.digest, l.media_type, human(l.size)),
        ]);
    }
    match &e.artifact {
        Some(a) => rows.push(vec!["Image".into(), format!("{} ({})", a.digest, human(a.size))]),
        None => rows.push(vec!["Image".into(), "(not built)".into()]),
    }
    match &e.kernel {
        Some(k) => rows.push(vec![
            "Kernel".into(),
            format!("{} /{} ({})", k.version, k.path, k.digest),
        ]),
        None => rows.push(vec!["Kernel".into(), "--".into()]),
    }
    out.write_all(table(&["FIELD", "VALUE"], rows).as_bytes())?;
    Ok(())
}

/// Draw progress events until the final entry (or error) arrives.
async fn follow(mut s: tonic::Streaming<pb::ImageEvent>) -> Result<ImageEntry> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix:8} {msg:40} {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let result = loop {
        match s.message().await {
            Ok(Some(ev)) if ev.stage == "done" => {
                break serde_json::from_slice::<ImageEntry>(&ev.entry_json).context("undecodable image entry")
            }
            Ok(Some(ev)) => {
                bar.set_prefix(ev.stage);
                bar.set_message(ev.message);
                bar.set_length(ev.total.max(ev.done));
                bar.set_position(ev.done);
            }
            Ok(None) => break Err(anyhow!("the head ended the operation without a result; see its log")),
            Err(st) => break Err(anyhow!("{}", st.message())),
        }
    };
    bar.finish_and_clear();
    result
}

/// Run `cmd` chrooted in the image's tree on this machine, then let the head rebuild.
async fn exec(client: &Client, name: &str, cmd: &[String], out: &mut dyn Write) -> Result<()> {
    let prep = client.image_exec_prepare(name).await?;
    let rootfs = Path::new(&prep.rootfs);
    let token_path = rootfs.parent().map(|p| p.join(EXEC_TOKEN_FILE));
    let local = token_path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .is_some_and(|t| t == prep.token);
    let status = if local { Some(chroot_run(rootfs, cmd)) } else { None };
    let ok = matches!(status, Some(Ok(s)) if s.success());
    // Always close the session, keeping changes only after a successful command.
    let e = follow(
        client
            .image_exec_finish(pb::ImageExecFinishRequest {
                name: name.into(),
                token: prep.token,
                version: prep.version,
                changed: ok,
            })
            .await?,
    )
    .await?;
    match status {
        None => bail!(
            "wwctl image exec must run on the head that holds the image tree ({} is not on this machine); \
             run it on that head, or put this machine's head first in --heads",
            prep.rootfs
        ),
        Some(Err(e)) => Err(e),
        Some(Ok(s)) if !s.success() => bail!("command failed ({s}); the image was left unchanged"),
        Some(Ok(_)) => {
            writeln!(out, "Rebuilt image {name}: {}", summary(&e))?;
            Ok(())
        }
    }
}

/// chroot with /dev, /proc and /sys in a private mount namespace (util-linux
/// `unshare`), so nothing stays mounted on the head afterwards.
fn chroot_run(rootfs: &Path, cmd: &[String]) -> Result<std::process::ExitStatus> {
    for d in ["dev", "proc", "sys"] {
        std::fs::create_dir_all(rootfs.join(d)).with_context(|| format!("cannot create /{d} in the image"))?;
    }
    let script = r#"set -e; R="$1"; shift
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
exec chroot "$R" "$@""#;
    std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"])
        .arg(rootfs)
        .args(cmd)
        .status()
        .context("cannot run unshare (util-linux) to enter the image")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names() {
        assert_eq!(
            default_name("docker://127.0.0.1:5000/library/rocky:9").unwrap(),
            "rocky-9"
        );
        assert_eq!(default_name("oci-archive:/tmp/bb.tar").unwrap(), "bb");
        assert_eq!(default_name("/srv/chroots/alma/").unwrap(), "alma");
        assert_eq!(default_name("docker://r/x@sha256:abc").unwrap(), "x");
        assert!(default_name("docker://").is_err());
    }
}
