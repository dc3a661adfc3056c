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
use crate::image::syncuser::SyncReport;
use crate::image::{human, EXEC_TOKEN_FILE};
use crate::model;
use crate::pb::admin as pb;
use crate::state::{Command, ImageCommand, ImageEntry, Query, Selector};

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Import an image: docker://HOST/REPO:TAG, oci-archive:FILE, docker-archive:FILE or a directory.
    #[command(alias = "pull")]
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
        #[arg(long, alias = "passwd", env = "WW_REGISTRY_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Platform of a multi-arch image, e.g. linux/arm64 (default: the head's).
        #[arg(long, alias = "arch")]
        platform: Option<String>,
        /// Build the image after importing it (`-b` alone: yes; `--build=false`: import only).
        #[arg(
            short = 'b',
            long,
            default_value_t = true,
            action = ArgAction::Set,
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true"
        )]
        build: bool,
        /// Make the image's UIDs/GIDs the head's (as `image syncuser`) before building.
        #[arg(long)]
        syncuser: bool,
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
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        names: Vec<String>,
        /// Build every image.
        #[arg(short = 'a', long)]
        all: bool,
        #[arg(short, long)]
        force: bool,
        /// Make each image's UIDs/GIDs the head's (as `image syncuser`) before building.
        #[arg(long)]
        syncuser: bool,
    },
    /// Synchronize UIDs/GIDs of the head (its /etc/passwd and /etc/group) into an image:
    /// names in both get the head's ids and the files they own in the image follow;
    /// names only in the image are kept. A name only in the image whose id the head
    /// gives to another name is a conflict, and nothing is changed.
    Syncuser {
        name: String,
        /// Change the image (`--write=false`: only compare and report).
        #[arg(long, default_value_t = true, action = ArgAction::Set)]
        write: bool,
        /// Rebuild the image afterwards.
        #[arg(long)]
        build: bool,
    },
    /// Delete images (refused while nodes use them, unless --force).
    #[command(aliases = ["rm", "remove", "del"])]
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
    Copy {
        from: String,
        to: String,
        /// Build the copy afterwards.
        #[arg(short = 'b', long)]
        build: bool,
    },
    /// Rename an image; nodes and profiles using it follow.
    #[command(alias = "mv")]
    Rename {
        from: String,
        to: String,
        /// Build the image afterwards.
        #[arg(short = 'b', long)]
        build: bool,
    },
    /// List the kernels found in images.
    #[command(alias = "kernel")]
    Kernels { names: Vec<String> },
    /// Run a command inside an image (chroot), then rebuild it.
    Exec {
        name: String,
        /// The command and its arguments, after the image's name as in Warewulf
        /// (`exec rocky9 /bin/ls -l`) or after `--`; options of `exec` go before it.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
        #[command(flatten)]
        opts: ExecOpts,
    },
    /// Open a shell inside an image (chroot), then rebuild it.
    #[command(alias = "chroot")]
    Shell {
        name: String,
        #[command(flatten)]
        opts: ExecOpts,
    },
}

/// `image exec|shell` options.
#[derive(clap::Args, Debug, Clone)]
pub struct ExecOpts {
    /// SOURCE[:DESTINATION[:ro|copy]]: bind a path of this machine (which must exist)
    /// into the image while the command runs, at DESTINATION (default: the same path);
    /// `ro` read-only; `copy` copies the file in instead and removes it afterwards.
    /// Nothing of a bind stays in the image. Repeatable.
    #[arg(short = 'b', long = "bind", value_name = "SOURCE[:DEST[:ro|copy]]")]
    pub binds: Vec<String>,
    /// Rebuild the image afterwards (`--build=false`: keep the changes, nodes boot the
    /// previous build until `wwctl image build`).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub build: bool,
    /// When the command changed /etc/passwd or /etc/group, compare the image's
    /// UIDs/GIDs with the head's afterwards and report (`wwctl image syncuser` changes them).
    #[arg(long)]
    pub syncuser: bool,
    /// Lay NODE's system and runtime overlays (rendered by a head for it) over the
    /// image and run the command in that view, read-only: nothing is kept and the
    /// image is not rebuilt.
    #[arg(short = 'n', long, value_name = "NODE")]
    pub node: Option<String>,
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
            syncuser,
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
                    syncuser,
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
        ImageCmd::Build {
            names,
            all,
            force,
            syncuser,
        } => {
            let names = if all { all_image_names(client).await? } else { names };
            for name in names {
                if syncuser {
                    let (_, report) = follow_report(
                        client
                            .image_syncuser(pb::ImageSyncuserRequest {
                                name: name.clone(),
                                write: true,
                                build: false,
                            })
                            .await?,
                    )
                    .await?;
                    syncuser_summary(&name, &report, true, out)?;
                }
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
        ImageCmd::Copy { from, to, build } => {
            client
                .write(Command::Image(ImageCommand::Copy {
                    from: from.clone(),
                    to: to.clone(),
                }))
                .await?;
            writeln!(out, "Copied image {from} to {to}")?;
            if build {
                let e = follow(client.image_build(&to, false).await?).await?;
                writeln!(out, "Built image {to}: {}", summary(&e))?;
            }
        }
        ImageCmd::Rename { from, to, build } => {
            let w = client
                .write(Command::Image(ImageCommand::Rename {
                    from: from.clone(),
                    to: to.clone(),
                }))
                .await?;
            let moved = w.outcome.changed_count().saturating_sub(1);
            writeln!(out, "Renamed image {from} to {to} ({moved} node(s)/profile(s) updated)")?;
            if build {
                let e = follow(client.image_build(&to, false).await?).await?;
                writeln!(out, "Built image {to}: {}", summary(&e))?;
            }
        }
        ImageCmd::Kernels { names } => {
            let names = if names.is_empty() {
                all_image_names(client).await?
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
        ImageCmd::Syncuser { name, write, build } => {
            let (e, report) = follow_report(
                client
                    .image_syncuser(pb::ImageSyncuserRequest {
                        name: name.clone(),
                        write,
                        build,
                    })
                    .await?,
            )
            .await?;
            match fmt.unwrap_or(Format::Table) {
                Format::Json => {
                    serde_json::to_writer_pretty(&mut *out, &report)?;
                    writeln!(out)?;
                }
                Format::Yaml => out.write_all(serde_yaml_ng::to_string(&report)?.as_bytes())?,
                Format::Table => {
                    syncuser_table(&report, out)?;
                    syncuser_summary(&name, &report, write, out)?;
                    if report.written && build {
                        writeln!(out, "Rebuilt image {name}: {}", summary(&e))?;
                    } else if report.written {
                        writeln!(
                            out,
                            "Rebuild the image (`wwctl image build {name}`) or pass --build: nodes boot the previous build until then"
                        )?;
                    }
                }
            }
        }
        ImageCmd::Exec { name, cmd, opts } => exec(client, &name, &cmd, &opts, out).await?,
        ImageCmd::Shell { name, opts } => {
            let shell = vec!["/bin/sh".to_string(), "-l".to_string()];
            exec(client, &name, &shell, &opts, out).await?
        }
    }
    Ok(())
}

/// `docker://host/library/rocky:9` → `rocky-9`-like names: last path part, tag appended.
/// Every image's name, as the leader knows them (for `--all` and an empty name list).
async fn all_image_names(client: &Client) -> Result<Vec<String>> {
    Ok(client
        .read(&Query::images(Selector::All), true)
        .await?
        .images
        .into_keys()
        .collect())
}

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
async fn follow(s: tonic::Streaming<pb::ImageEvent>) -> Result<ImageEntry> {
    Ok(follow_events(s).await?.0)
}

/// [`follow`] for `image syncuser`: the entry and the report.
async fn follow_report(s: tonic::Streaming<pb::ImageEvent>) -> Result<(ImageEntry, SyncReport)> {
    let (e, report) = follow_events(s).await?;
    Ok((
        e,
        serde_json::from_slice(&report).context("undecodable syncuser report (is the head older than wwctl?)")?,
    ))
}

/// The names of one database in the report's table cells.
fn names(list: &[String]) -> String {
    if list.is_empty() {
        "--".into()
    } else {
        list.join(",")
    }
}

/// One row per database: what differs, what is only on one side, the files to re-own.
fn syncuser_table(r: &SyncReport, out: &mut dyn Write) -> Result<()> {
    let row = |db: &str, d: &crate::image::syncuser::DbReport| {
        let differ: Vec<String> = d
            .differ
            .iter()
            .map(|c| format!("{}:{}->{}", c.name, c.image, c.host))
            .collect();
        vec![
            db.to_string(),
            names(&differ),
            names(&d.host_only),
            names(&d.image_only),
            d.matched.len().to_string(),
            d.files.to_string(),
        ]
    };
    out.write_all(
        table(
            &[
                "FILE",
                "CHANGED (NAME:IMAGE->HEAD)",
                "HEAD ONLY",
                "IMAGE ONLY",
                "MATCH",
                "FILES",
            ],
            [row("passwd", &r.passwd), row("group", &r.group)],
        )
        .as_bytes(),
    )?;
    for w in r.passwd.warnings.iter().chain(&r.group.warnings) {
        writeln!(out, "warning: {w}")?;
    }
    Ok(())
}

/// Warewulf's closing line of a syncuser.
fn syncuser_summary(name: &str, r: &SyncReport, write: bool, out: &mut dyn Write) -> Result<()> {
    if r.written {
        writeln!(out, "uid/gid synced for image {name} ({} file(s) re-owned)", r.files)?;
    } else if r.needs_sync() && !write {
        writeln!(
            out,
            "uid/gid not synced: run `wwctl image syncuser --write=true {name}` to synchronize"
        )?;
    } else {
        writeln!(out, "uid/gid already synced for image {name}")?;
    }
    Ok(())
}

async fn follow_events(mut s: tonic::Streaming<pb::ImageEvent>) -> Result<(ImageEntry, Vec<u8>)> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix:8} {msg:40} {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let result = loop {
        match s.message().await {
            Ok(Some(ev)) if ev.stage == "done" => {
                break serde_json::from_slice::<ImageEntry>(&ev.entry_json)
                    .context("undecodable image entry")
                    .map(|e| (e, ev.report_json))
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
async fn exec(client: &Client, name: &str, cmd: &[String], opts: &ExecOpts, out: &mut dyn Write) -> Result<()> {
    // Checked before the head prepares anything.
    let mut binds = opts.binds.iter().map(|b| Bind::parse(b)).collect::<Result<Vec<_>>>()?;
    // Rendered before the session opens: an unknown node or a failing template stops here.
    let archives = match &opts.node {
        Some(n) => Some(
            client
                .overlay_archives(n)
                .await
                .with_context(|| format!("rendering the overlays of node {n}"))?,
        ),
        None => None,
    };
    let prep = client.image_exec_prepare(name).await?;
    let rootfs = Path::new(&prep.rootfs);
    let token_path = rootfs.parent().map(|p| p.join(EXEC_TOKEN_FILE));
    let local = token_path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .is_some_and(|t| t == prep.token);
    let accounts =
        || ["etc/passwd", "etc/group"].map(|f| std::fs::metadata(rootfs.join(f)).and_then(|m| m.modified()).ok());
    let before = accounts();
    let status = if local {
        binds.extend(head_mounts(rootfs, &prep.mounts, &binds));
        Some(match &archives {
            None => chroot_run(rootfs, cmd, &binds, None),
            Some(a) => node_view(rootfs, &a.system, &a.runtime)
                .and_then(|view| chroot_run(rootfs, cmd, &binds, Some(view.path()))),
        })
    } else {
        None
    };
    // Warewulf's `--syncuser` on exec: compare (never change) when the command touched
    // the account files.
    let accounts_changed = local && accounts() != before;
    // A node's view is read-only: there is nothing to keep.
    let ok = opts.node.is_none() && matches!(status, Some(Ok(s)) if s.success());
    // Always close the session, keeping changes only after a successful command.
    let e = follow(
        client
            .image_exec_finish(pb::ImageExecFinishRequest {
                name: name.into(),
                token: prep.token,
                version: prep.version,
                changed: ok,
                skip_build: !opts.build,
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
        Some(Ok(_)) if opts.node.is_some() => {
            let node = opts.node.as_deref().unwrap_or_default();
            writeln!(
                out,
                "Image {name} unchanged (a read-only view with the overlays of node {node})"
            )?;
            return Ok(());
        }
        Some(Ok(_)) if !opts.build => {
            writeln!(
                out,
                "Kept the changes to image {name} without a build (nodes boot the previous build until `wwctl image build {name}`)"
            )?;
            Ok(())
        }
        Some(Ok(_)) => {
            writeln!(out, "Rebuilt image {name}: {}", summary(&e))?;
            Ok(())
        }
    }?;
    if opts.syncuser {
        if !accounts_changed {
            writeln!(out, "Skipping syncuser (passwd and group files not changed)")?;
            return Ok(());
        }
        let report = client
            .image_syncuser(pb::ImageSyncuserRequest {
                name: name.into(),
                write: false,
                build: false,
            })
            .await;
        // As Warewulf: a syncuser problem after a successful command is reported, not fatal.
        match report.map_err(anyhow::Error::from) {
            Ok(s) => match follow_report(s).await {
                Ok((_, r)) => {
                    syncuser_table(&r, out)?;
                    syncuser_summary(name, &r, false, out)?;
                }
                Err(e) => eprintln!("syncuser error: {e:#}"),
            },
            Err(e) => eprintln!("syncuser error: {e:#}"),
        }
    }
    Ok(())
}

/// The head's `images.mounts` as binds (Warewulf's `image mounts`): a source missing on
/// this machine, a destination through a symlink of the image, or one an explicit
/// `--bind` already takes is skipped with a warning, never an error.
fn head_mounts(rootfs: &Path, specs: &[String], explicit: &[Bind]) -> Vec<Bind> {
    let mut out = Vec::new();
    for spec in specs {
        let b = match Bind::parse(spec) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("warning: image mount skipped: {e:#}");
                continue;
            }
        };
        if explicit.iter().any(|x| x.dest == b.dest) {
            continue;
        }
        let mut at = rootfs.to_path_buf();
        let through_link = b.dest.components().any(|c| {
            at.push(c);
            at.is_symlink()
        });
        if through_link {
            eprintln!(
                "warning: image mount {} skipped: /{} in the image is a symlink",
                b.source.display(),
                b.dest.display()
            );
            continue;
        }
        out.push(b);
    }
    out
}

/// How a `--bind` puts a path of this machine into the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BindMode {
    ReadWrite,
    ReadOnly,
    Copy,
}

/// One `--bind SOURCE[:DEST[:ro|copy]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bind {
    source: std::path::PathBuf,
    /// Inside the image, relative to its root (no `..`).
    dest: std::path::PathBuf,
    mode: BindMode,
}

impl Bind {
    fn parse(spec: &str) -> Result<Bind> {
        let mut parts = spec.splitn(3, ':');
        let source = parts.next().unwrap_or_default();
        let dest = parts.next().filter(|d| !d.is_empty()).unwrap_or(source);
        let mode = match parts.next() {
            None | Some("") | Some("rw") => BindMode::ReadWrite,
            Some("ro") => BindMode::ReadOnly,
            Some("copy") => BindMode::Copy,
            Some(m) => bail!("--bind {spec}: {m:?} is not ro or copy"),
        };
        if !source.starts_with('/') || !dest.starts_with('/') {
            bail!("--bind {spec}: give absolute paths, SOURCE[:DEST[:ro|copy]]");
        }
        let src = std::path::PathBuf::from(source);
        if !src.exists() {
            bail!("--bind {spec}: {source} does not exist on this machine");
        }
        if mode == BindMode::Copy && !src.is_file() {
            bail!("--bind {spec}: copy takes a file; bind a directory without :copy");
        }
        let rel = Path::new(dest).strip_prefix("/").expect("absolute");
        if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            bail!("--bind {spec}: the destination must be a path below / without `..`");
        }
        Ok(Bind {
            source: src,
            dest: rel.to_path_buf(),
            mode,
        })
    }
}

/// What a bind changed in the tree, undone after the command so that nothing of it
/// is captured into the image.
#[derive(Debug, Default)]
struct BindUndo {
    /// Created (the topmost new directory or the new file), removed afterwards.
    created: Vec<std::path::PathBuf>,
    /// (destination, its original moved aside) of a `copy` over an existing file.
    moved: Vec<(std::path::PathBuf, std::path::PathBuf)>,
}

impl BindUndo {
    fn undo(self) -> Result<()> {
        let mut errors = Vec::new();
        for p in self.created.iter().rev() {
            let r = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
            if let Err(e) = r {
                errors.push(format!("{}: {e}", p.display()));
            }
        }
        for (dest, saved) in self.moved.iter().rev() {
            if let Err(e) = std::fs::rename(saved, dest) {
                errors.push(format!("restoring {}: {e}", dest.display()));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("cleaning up after --bind: {}", errors.join("; "))
        }
    }
}

/// Make every destination exist in the tree (refusing a symlink on the way, which
/// would lead the mount or copy outside the image); `copy` binds are copied here.
fn prepare_binds(rootfs: &Path, binds: &[Bind], undo: &mut BindUndo) -> Result<()> {
    for b in binds {
        let mut at = rootfs.to_path_buf();
        let n = b.dest.components().count();
        for (i, c) in b.dest.components().enumerate() {
            at.push(c);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => bail!(
                    "--bind: /{} in the image is a symlink; bind to the path it points to instead",
                    at.strip_prefix(rootfs).unwrap_or(&at).display()
                ),
                Ok(m) if i + 1 < n && !m.is_dir() => bail!(
                    "--bind: /{} in the image is not a directory",
                    at.strip_prefix(rootfs).unwrap_or(&at).display()
                ),
                Ok(_) => {}
                Err(_) if i + 1 < n => {
                    std::fs::create_dir(&at).with_context(|| format!("creating {}", at.display()))?;
                    undo.created.push(at.clone());
                    // Everything below is new too: removing this removes it.
                    let rest: std::path::PathBuf = b.dest.components().skip(i + 1).collect();
                    let full = at.join(rest);
                    create_dest(&b.source, &full, b.mode)?;
                    break;
                }
                Err(_) => {
                    create_dest(&b.source, &at, b.mode)?;
                    undo.created.push(at.clone());
                }
            }
            if i + 1 == n && b.mode == BindMode::Copy && !undo.created.contains(&at) {
                // Copy over an existing file: keep the original aside.
                let saved = at.with_file_name(format!(
                    ".{}.wwctl-bind-saved",
                    at.file_name().unwrap_or_default().to_string_lossy()
                ));
                std::fs::rename(&at, &saved).with_context(|| format!("moving {} aside", at.display()))?;
                undo.moved.push((at.clone(), saved));
                create_dest(&b.source, &at, b.mode)?;
                undo.created.push(at.clone());
            }
        }
    }
    Ok(())
}

/// A mount point (an empty file or directory like the source) or the copied file.
fn create_dest(source: &Path, dest: &Path, mode: BindMode) -> Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let r = match mode {
        BindMode::Copy => std::fs::copy(source, dest).map(drop),
        _ if source.is_dir() => std::fs::create_dir(dest),
        _ => std::fs::File::create(dest).map(drop),
    };
    r.with_context(|| format!("creating {} for --bind", dest.display()))
}

/// A directory for `image exec --node`: `node/` holds the node's system overlay with its
/// runtime overlay over it (as `wwclient` lays it at run time), `image/` and `merged/`
/// are the mount points [`chroot_run`] uses. Each path lands where the kernel's
/// unpacking of the overlay over the image would put it: through the image's symlinks
/// (an overlay's `lib/x` over an image whose `lib` links to `usr/lib` is `usr/lib/x`),
/// since an overlayfs directory would hide the link and everything behind it. A
/// directory made only to hold a path takes the mode and owner of the image's.
fn node_view(rootfs: &Path, system: &[u8], runtime: &[u8]) -> Result<tempfile::TempDir> {
    use crate::overlay::archive::{read, Limits};
    let mut files = BTreeMap::new();
    for (kind, bytes) in [("system", system), ("runtime", runtime)] {
        if !bytes.is_empty() {
            let entries =
                read(bytes, &Limits::default()).with_context(|| format!("reading the node's {kind} overlay"))?;
            files.extend(entries);
        }
    }
    let mut landed = BTreeMap::new();
    for (path, e) in files {
        match landing(rootfs, &path, e.is_dir()) {
            Some(at) if at.is_empty() => {} // the image's root itself
            Some(at) => {
                landed.insert(at, e);
            }
            None => {
                eprintln!("warning: /{path} of the node's overlays skipped: too many symlinks in the image on its way")
            }
        }
    }
    let view = tempfile::Builder::new()
        .prefix("wwctl-node-view.")
        .tempdir()
        .context("creating a directory for the node's view")?;
    for d in ["node", "image", "merged"] {
        std::fs::create_dir(view.path().join(d))
            .with_context(|| format!("creating {d} in {}", view.path().display()))?;
    }
    let layer = view.path().join("node");
    let report = crate::agent::apply::Applier::new(&layer)
        .apply(&landed)
        .map_err(|e| anyhow!("laying out the node's overlays: {e}"))?;
    for e in &report.errors {
        eprintln!("warning: node overlay: {e}");
    }
    // wwclient's record of what it wrote is not part of the node's files.
    let manifest = layer.join(crate::agent::apply::MANIFEST_PATH);
    std::fs::remove_file(&manifest).with_context(|| format!("removing {}", manifest.display()))?;
    for dir in manifest.ancestors().skip(1).take_while(|d| *d != layer) {
        let rel = dir.strip_prefix(&layer).unwrap_or(dir).to_string_lossy().into_owned();
        if landed.contains_key(&rel) || std::fs::remove_dir(dir).is_err() {
            break;
        }
    }
    // Directories the overlays do not list take the image's mode and owner.
    for entry in walkdir::WalkDir::new(&layer).min_depth(1) {
        let entry = entry.context("walking the node's view")?;
        if !entry.file_type().is_dir() {
            continue;
        }
        let rel = entry.path().strip_prefix(&layer).expect("below the layer");
        if landed.contains_key(&*rel.to_string_lossy()) {
            continue;
        }
        if let Ok(m) = std::fs::symlink_metadata(rootfs.join(rel)) {
            if m.is_dir() {
                use std::os::unix::fs::{MetadataExt, PermissionsExt};
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(m.mode() & 0o7777))
                    .and_then(|()| std::os::unix::fs::lchown(entry.path(), Some(m.uid()), Some(m.gid())))
                    .with_context(|| format!("setting the owner of {}", entry.path().display()))?;
            }
        }
    }
    Ok(view)
}

/// Where an overlay's `path` lands in the image tree at `rootfs`: every directory on the
/// way is followed through the image's symlinks (absolute targets from the image's
/// root, never out of it), and so is the last component when `follow_last` (a
/// directory: unpacking merges into what the link points to; a file or link replaces
/// the link instead). `None` after 40 links, like the kernel's limit.
fn landing(rootfs: &Path, path: &str, follow_last: bool) -> Option<String> {
    let mut done: Vec<String> = Vec::new();
    let mut todo: std::collections::VecDeque<String> = path.split('/').map(str::to_owned).collect();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        if !todo.is_empty() || follow_last {
            let here = rootfs.join(done.join("/")).join(&c);
            if let Ok(target) = std::fs::read_link(&here) {
                links += 1;
                if links > 40 {
                    return None;
                }
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    done.clear();
                }
                for part in target.split('/').rev() {
                    todo.push_front(part.to_owned());
                }
                continue;
            }
        }
        done.push(c);
    }
    Some(done.join("/"))
}

/// chroot with /dev, /proc, /sys and the `--bind` mounts in a private mount namespace
/// (util-linux `unshare`), so nothing stays mounted on the head afterwards; what the
/// binds created in the tree is removed before the tree is captured.
///
/// With `view` (a directory from [`node_view`]), the command sees the image with the
/// node's files over it through a read-only overlayfs mount: the image is bind-mounted
/// to `view/image` first so that no image path (which may hold `:`) goes into the mount
/// options.
fn chroot_run(rootfs: &Path, cmd: &[String], binds: &[Bind], view: Option<&Path>) -> Result<std::process::ExitStatus> {
    for d in ["dev", "proc", "sys"] {
        std::fs::create_dir_all(rootfs.join(d)).with_context(|| format!("cannot create /{d} in the image"))?;
    }
    let mut undo = BindUndo::default();
    let prepared = prepare_binds(rootfs, binds, &mut undo);
    let status = prepared.and_then(|()| {
        // Paths go in by environment, never into the script text.
        let mut script = String::from("set -e; R=\"$1\"; shift\n");
        let mut command = std::process::Command::new("unshare");
        if let Some(v) = view {
            command.env("WWCTL_VIEW", v);
            script.push_str(
                "mount --bind \"$R\" \"$WWCTL_VIEW/image\"\n\
                 mount -t overlay overlay -o ro,lowerdir=\"$WWCTL_VIEW/node:$WWCTL_VIEW/image\" \"$WWCTL_VIEW/merged\"\n\
                 R=\"$WWCTL_VIEW/merged\"\n",
            );
        }
        script.push_str(
            "mount --rbind /dev \"$R/dev\"\nmount -t proc proc \"$R/proc\"\nmount -t sysfs sysfs \"$R/sys\"\n",
        );
        for (i, b) in binds.iter().enumerate().filter(|(_, b)| b.mode != BindMode::Copy) {
            command.env(format!("WWCTL_BIND_SRC_{i}"), &b.source);
            command.env(format!("WWCTL_BIND_DST_{i}"), &b.dest);
            script.push_str(&format!("mount --bind \"$WWCTL_BIND_SRC_{i}\" \"$R/$WWCTL_BIND_DST_{i}\"\n"));
            if b.mode == BindMode::ReadOnly {
                script.push_str(&format!("mount -o remount,bind,ro \"$R/$WWCTL_BIND_DST_{i}\"\n"));
            }
        }
        script.push_str("exec chroot \"$R\" \"$@\"");
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c", &script, "sh"])
            .arg(rootfs)
            .args(cmd)
            .status()
            .context("cannot run unshare (util-linux) to enter the image")
    });
    // Undo even when the command failed: the tree is reused by the next exec.
    let undone = undo.undo();
    let status = status?;
    undone?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_paths_land_through_the_images_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
        std::os::unix::fs::symlink("/usr/lib", r.join("lib64")).unwrap();
        std::os::unix::fs::symlink("../../../..", r.join("usr/lib/up")).unwrap();
        std::os::unix::fs::symlink("/run/x", r.join("etc/resolv.conf")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert_eq!(landing(r, "lib/x.so", false).as_deref(), Some("usr/lib/x.so"));
        assert_eq!(landing(r, "lib64/x.so", false).as_deref(), Some("usr/lib/x.so"));
        assert_eq!(landing(r, "lib", true).as_deref(), Some("usr/lib"));
        // A file replaces the link; it does not write where the link points.
        assert_eq!(landing(r, "etc/resolv.conf", false).as_deref(), Some("etc/resolv.conf"));
        assert_eq!(landing(r, "lib", false).as_deref(), Some("lib"));
        // `..` stops at the image's root.
        assert_eq!(landing(r, "usr/lib/up/etc/x", false).as_deref(), Some("etc/x"));
        assert_eq!(landing(r, "loop/x", false), None);
        assert_eq!(landing(r, "etc/hosts", false).as_deref(), Some("etc/hosts"));
    }

    #[test]
    fn bind_specs() {
        let b = Bind::parse("/etc/hosts").unwrap();
        assert_eq!(
            (b.source.as_path(), b.dest.as_path(), b.mode),
            (Path::new("/etc/hosts"), Path::new("etc/hosts"), BindMode::ReadWrite)
        );
        let b = Bind::parse("/etc/hosts:/mnt/h:ro").unwrap();
        assert_eq!((b.dest.as_path(), b.mode), (Path::new("mnt/h"), BindMode::ReadOnly));
        let b = Bind::parse("/etc/hosts::copy").unwrap();
        assert_eq!((b.dest.as_path(), b.mode), (Path::new("etc/hosts"), BindMode::Copy));
        for bad in [
            "etc/hosts",
            "/etc/hosts:rel",
            "/etc/hosts:/a/../b",
            "/etc/hosts:/:ro",
            "/etc/hosts:/x:rx",
            "/no/such/path",
            "/etc::copy",
        ] {
            assert!(Bind::parse(bad).is_err(), "{bad}");
        }
    }

    /// The destinations are made in the tree and removed again; a copy over an
    /// existing file restores it; a symlink on the way is refused.
    #[test]
    fn binds_leave_nothing_in_the_tree() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/hosts"), "image's\n").unwrap();
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("f"), "host's\n").unwrap();
        let f = src.path().join("f");
        let specs = [
            format!("{}:/etc/hosts:copy", f.display()),
            format!("{}:/new/deep/dir", src.path().display()),
            format!("{}:/etc/newfile:ro", f.display()),
        ];
        let binds: Vec<Bind> = specs.iter().map(|s| Bind::parse(s).unwrap()).collect();
        let mut undo = BindUndo::default();
        prepare_binds(r, &binds, &mut undo).unwrap();
        assert_eq!(std::fs::read_to_string(r.join("etc/hosts")).unwrap(), "host's\n");
        assert!(r.join("new/deep/dir").is_dir());
        assert!(r.join("etc/newfile").is_file());
        undo.undo().unwrap();
        assert_eq!(std::fs::read_to_string(r.join("etc/hosts")).unwrap(), "image's\n");
        assert!(!r.join("new").exists() && !r.join("etc/newfile").exists());
        let names: Vec<_> = std::fs::read_dir(r.join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["hosts"]);

        std::os::unix::fs::symlink("/etc", r.join("link")).unwrap();
        let b = Bind::parse(&format!("{}:/link/x", f.display())).unwrap();
        let e = prepare_binds(r, &[b], &mut BindUndo::default()).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert!(!Path::new("/etc/x").exists());
    }

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
