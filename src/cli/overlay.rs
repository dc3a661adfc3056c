//! `wwctl overlay ...`: Warewulf 4.7's overlay verbs that need no rendering.
//!
//! The overlay catalog is replicated, so every head answers the same; edits run on the
//! head that receives them and are conditional on the version read. Editing a
//! distribution overlay (import, edit, chmod, chown, mkdir, deleting a file) makes its
//! site copy first, as Warewulf does; `overlay delete NAME` on that copy reverts to the
//! shipped tree. Paths are written as in Warewulf: `/etc/hosts.ww` or `etc/hosts.ww`,
//! both relative to the overlay's root.
//!
//! `show --render NODE`, `info` and `build` need the template renderer and are wired
//! where it lives; [`ShowArgs`] is the place `-r/--render` joins.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use tonic::Code;

use super::output::{table, Format};
use crate::client::{Client, ClientError};
use crate::overlay::store::Change;
use crate::pb::admin as pb;

#[derive(Subcommand, Debug)]
pub enum OverlayCmd {
    /// List overlays; -a lists their files, -l with modes and owners.
    #[command(alias = "ls")]
    List {
        /// Overlays to list (default: all).
        names: Vec<String>,
        /// List the contents of overlays.
        #[arg(short = 'a', long)]
        all: bool,
        /// List 'long' of all overlay contents.
        #[arg(short = 'l', long)]
        long: bool,
    },
    /// Show (cat) a file within an overlay.
    #[command(alias = "cat")]
    Show(ShowArgs),
    /// What a template documents about itself: its description (on stderr) and the
    /// variables it reads (a table).
    #[command(aliases = ["variables", "vars"])]
    Info {
        /// Overlay name.
        name: String,
        /// Template path inside the overlay (ending in .ww).
        file: String,
    },
    /// Create a new, empty site overlay.
    #[command(aliases = ["new", "add"])]
    Create { name: String },
    /// Delete an overlay (its site copy), or a file or directory within it.
    #[command(aliases = ["rm", "remove", "del"])]
    Delete {
        name: String,
        file: Option<String>,
        /// Delete a non-empty overlay or directory with everything in it.
        #[arg(short, long)]
        force: bool,
        /// Remove the directories the deleted file leaves empty.
        #[arg(short, long)]
        parents: bool,
    },
    /// Import a local file into an overlay, optionally under a new name or path.
    #[command(alias = "cp")]
    Import {
        name: String,
        source: PathBuf,
        /// Path in the overlay (default: the source path; an existing directory
        /// receives the file under its own name).
        dest: Option<String>,
        /// Permission mode of the file (octal; default: the source file's).
        #[arg(short, long)]
        mode: Option<String>,
        /// Create any necessary parent directories.
        #[arg(short, long)]
        parents: bool,
        /// Overwrite the file if it exists (Warewulf's `-o`, which is `--output` here).
        #[arg(long)]
        overwrite: bool,
        /// Accepted for compatibility: overlays are rebuilt from their content when
        /// they are next needed, there is no separate update to skip.
        #[arg(short = 'n', long)]
        noupdate: bool,
        /// Accepted for compatibility (Warewulf's build workers); no effect.
        #[arg(long, hide = true)]
        workers: Option<i64>,
    },
    /// Edit (or create) a file within an overlay with $EDITOR.
    Edit {
        name: String,
        file: String,
        /// Create any necessary parent directories.
        #[arg(short, long)]
        parents: bool,
        /// Accepted for compatibility (Warewulf ignores it too); parents get 0755.
        #[arg(short, long, default_value = "0755")]
        mode: String,
        /// The editor (default: $EDITOR, else vi).
        #[arg(long, env = "EDITOR", hide = true)]
        editor: Option<String>,
    },
    /// Change the permissions of a file or directory within an overlay.
    Chmod {
        name: String,
        file: String,
        /// Octal mode, e.g. 0644.
        mode: String,
    },
    /// Change the owner of a file or directory within an overlay: UID[:GID] or UID GID.
    Chown {
        name: String,
        file: String,
        uid: String,
        gid: Option<String>,
    },
    /// Create a directory (and its parents) within an overlay.
    Mkdir {
        name: String,
        dir: String,
        /// Permission mode of the directory (octal).
        #[arg(short, long, default_value = "0755")]
        mode: String,
    },
    /// Build nodes' system and runtime overlays now on the head asked (default: every
    /// node), so that the next boots render nothing. Heads also build on demand.
    Build {
        /// Nodes (names or hostlist patterns).
        nodes: Vec<String>,
        /// Accepted for compatibility (Warewulf's build workers): every core is used.
        #[arg(long, hide = true)]
        workers: Option<i64>,
    },
}

/// `overlay show`: the raw file, or with `-r/--render NODE` the template rendered for
/// that node by the head asked (Warewulf's `backupFile/writeFile/Filename` headers).
#[derive(Args, Debug)]
pub struct ShowArgs {
    pub name: String,
    pub file: String,
    /// Render the template for this node (a name that is no node renders for a new,
    /// empty node of that name, as Warewulf does).
    #[arg(short = 'r', long = "render", value_name = "NODE")]
    pub render: Option<String>,
    /// With --render: only the rendered contents, no header lines.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// One overlay as `-o json|yaml` prints it.
#[derive(Serialize)]
struct Listed {
    name: String,
    site: bool,
    distribution: bool,
    digest: String,
    version: u64,
    files: Vec<String>,
}

pub async fn run(client: &Client, c: OverlayCmd, fmt: Option<Format>, out: &mut dyn Write) -> Result<()> {
    match c {
        OverlayCmd::List { names, all, long } => list(client, names, all, long, fmt, out).await,
        OverlayCmd::Show(a) => show(client, a, out).await,
        OverlayCmd::Info { name, file } => {
            let r = client.overlay_file(&name, &file).await?;
            if r.path.unwrap_or_default().kind != "file" {
                bail!("{file} is not a file in overlay {name}; see `wwctl overlay list -a {name}`");
            }
            let text = String::from_utf8_lossy(&r.content);
            let info = crate::overlay::render::info::template_info(&text);
            if info.description.is_empty() && info.variables.is_empty() {
                bail!("{file} in overlay {name} documents nothing (no wwdoc: or wwvar: comments)");
            }
            if !info.description.is_empty() {
                eprintln!("{}", info.description);
            }
            out.write_all(crate::overlay::render::info::variables_table(&info.variables).as_bytes())?;
            Ok(())
        }
        OverlayCmd::Create { name } => {
            change(client, &name, "create", None, false, None).await?;
            Ok(())
        }
        OverlayCmd::Delete {
            name,
            file: None,
            force,
            parents: _,
        } => {
            change(client, &name, "delete", None, force, None).await?;
            Ok(())
        }
        OverlayCmd::Delete {
            name,
            file: Some(path),
            force,
            parents,
        } => {
            change(
                client,
                &name,
                "change",
                Some(Change::Delete { path, force, parents }),
                false,
                None,
            )
            .await?;
            Ok(())
        }
        OverlayCmd::Import {
            name,
            source,
            dest,
            mode,
            parents,
            overwrite,
            noupdate: _,
            workers: _,
        } => {
            let content = std::fs::read(&source)
                .with_context(|| format!("cannot read {}; give a readable local file to import", source.display()))?;
            let mode = match mode {
                Some(m) => parse_mode(&m)?,
                None => {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::metadata(&source)?.permissions().mode() & 0o7777
                }
            };
            let dest = match dest {
                Some(d) => d,
                None => default_dest(&source)?,
            };
            let name_in_dir = source.file_name().and_then(|n| n.to_str()).map(str::to_string);
            let ch = Change::PutFile {
                path: dest,
                content,
                mode: Some(mode),
                owner: None,
                parents,
                overwrite,
                name_in_dir,
            };
            change(client, &name, "change", Some(ch), false, None).await?;
            Ok(())
        }
        OverlayCmd::Edit {
            name,
            file,
            parents,
            mode,
            editor,
        } => {
            parse_mode(&mode)?;
            edit(client, &name, &file, parents, editor.as_deref()).await
        }
        OverlayCmd::Chmod { name, file, mode } => {
            let mode = parse_mode(&mode)?;
            change(
                client,
                &name,
                "change",
                Some(Change::Chmod { path: file, mode }),
                false,
                None,
            )
            .await?;
            Ok(())
        }
        OverlayCmd::Chown { name, file, uid, gid } => {
            let (uid, gid) = parse_owner(&uid, gid.as_deref())?;
            change(
                client,
                &name,
                "change",
                Some(Change::Chown { path: file, uid, gid }),
                false,
                None,
            )
            .await?;
            Ok(())
        }
        OverlayCmd::Build { nodes, workers: _ } => {
            let names = super::objects::expand_patterns(&nodes)?;
            let r = client.overlay_build(names).await?;
            writeln!(
                out,
                "Built overlays of {} node(s) in {:.2} s: {} archive(s) rendered, {} already current, {} bytes",
                r.nodes,
                r.millis as f64 / 1000.0,
                r.built,
                r.cached,
                r.bytes
            )?;
            if !r.failed.is_empty() {
                for f in &r.failed {
                    writeln!(out, "FAILED {f}")?;
                }
                bail!("{} overlay archive(s) could not be built (above)", r.failed.len());
            }
            Ok(())
        }
        OverlayCmd::Mkdir { name, dir, mode } => {
            let mode = parse_mode(&mode)?;
            change(
                client,
                &name,
                "change",
                Some(Change::Mkdir { path: dir, mode }),
                false,
                None,
            )
            .await?;
            Ok(())
        }
    }
}

async fn change(
    client: &Client,
    name: &str,
    op: &str,
    ch: Option<Change>,
    force: bool,
    expect: Option<u64>,
) -> Result<pb::OverlayChangeReply> {
    let change_json = match &ch {
        Some(c) => serde_json::to_vec(c)?,
        None => vec![],
    };
    Ok(client
        .overlay_change(pb::OverlayChangeRequest {
            name: name.to_string(),
            op: op.to_string(),
            change_json,
            force,
            expect,
            request_id: String::new(),
        })
        .await?)
}

/// Go's `FileMode.String()` of permission bits: `-rwxr-xr-x`.
fn perm_string(mode: u32) -> String {
    let mut s = String::from("-");
    for shift in [6, 3, 0] {
        let b = (mode >> shift) & 7;
        s.push(if b & 4 != 0 { 'r' } else { '-' });
        s.push(if b & 2 != 0 { 'w' } else { '-' });
        s.push(if b & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// A path as Warewulf lists it: directories end in `/`.
fn listed_path(p: &pb::OverlayPath) -> String {
    if p.kind == "dir" {
        format!("{}/", p.path)
    } else {
        p.path.clone()
    }
}

async fn list(
    client: &Client,
    names: Vec<String>,
    all: bool,
    long: bool,
    fmt: Option<Format>,
    out: &mut dyn Write,
) -> Result<()> {
    let files = all || long || matches!(fmt, Some(Format::Json | Format::Yaml));
    let r = client.overlay_list(&names, files).await?;
    if !r.missing.is_empty() {
        bail!(
            "overlay {} does not exist; see `wwctl overlay list`",
            r.missing.join(", ")
        );
    }
    let site = |o: &pb::OverlayInfo| o.site.to_string();
    match fmt.unwrap_or(Format::Table) {
        Format::Json | Format::Yaml => {
            let v: Vec<Listed> = r
                .overlays
                .iter()
                .map(|o| Listed {
                    name: o.name.clone(),
                    site: o.site,
                    distribution: o.distribution,
                    digest: o.digest.clone(),
                    version: o.version,
                    files: o.paths.iter().map(listed_path).collect(),
                })
                .collect();
            if fmt == Some(Format::Json) {
                serde_json::to_writer_pretty(&mut *out, &v)?;
                writeln!(out)?;
            } else {
                out.write_all(serde_yaml_ng::to_string(&v)?.as_bytes())?;
            }
        }
        Format::Table if long => {
            let rows = r.overlays.iter().flat_map(|o| {
                o.paths.iter().map(move |p| {
                    vec![
                        perm_string(p.mode),
                        p.uid.to_string(),
                        p.gid.to_string(),
                        o.name.clone(),
                        listed_path(p),
                        site(o),
                    ]
                })
            });
            let t = table(&["PERM MODE", "UID", "GID", "OVERLAY", "FILE PATH", "SITE"], rows);
            out.write_all(t.as_bytes())?;
        }
        Format::Table if all => {
            let rows = r.overlays.iter().flat_map(|o| {
                let mut v: Vec<Vec<String>> = o
                    .paths
                    .iter()
                    .map(|p| vec![o.name.clone(), listed_path(p), site(o)])
                    .collect();
                if v.is_empty() {
                    v.push(vec![o.name.clone(), "0".into(), site(o)]);
                }
                v
            });
            out.write_all(table(&["OVERLAY NAME", "FILES/DIRS", "SITE"], rows).as_bytes())?;
        }
        Format::Table => {
            let rows = r
                .overlays
                .iter()
                .map(|o| vec![o.name.clone(), o.count.to_string(), site(o)]);
            out.write_all(table(&["OVERLAY NAME", "FILES/DIRS", "SITE"], rows).as_bytes())?;
        }
    }
    Ok(())
}

async fn show(client: &Client, a: ShowArgs, out: &mut dyn Write) -> Result<()> {
    if let Some(node) = &a.render {
        let files = client.overlay_render(&a.name, &a.file, node).await?;
        let files: Vec<crate::overlay::render::RenderedFile> = files
            .into_iter()
            .map(|f| crate::overlay::render::RenderedFile {
                name: f.name,
                backup: f.backup,
                write: f.write,
                symlink: f.symlink,
                content: f.content,
            })
            .collect();
        out.write_all(crate::overlay::render::show(&files, a.quiet).as_bytes())?;
        return Ok(());
    }
    let r = client.overlay_file(&a.name, &a.file).await?;
    let p = r.path.unwrap_or_default();
    match p.kind.as_str() {
        "file" => out.write_all(&r.content)?,
        "dir" => bail!(
            "{} is a directory in overlay {}; see `wwctl overlay list -a {}`",
            a.file,
            a.name,
            a.name
        ),
        _ => bail!(
            "{} is a symlink to {} in overlay {}; show its target instead",
            a.file,
            p.target,
            a.name
        ),
    }
    Ok(())
}

/// What a new template starts with in the editor.
const NEW_TEMPLATE: &str = "\
# An overlay template.
#
# Files ending in .ww are rendered for each node when its overlays are built,
# with Warewulf's template data; the .ww suffix is dropped from the name.
# `wwctl overlay show -r NODE OVERLAY FILE` shows what a node would get.
";

async fn edit(client: &Client, name: &str, file: &str, parents: bool, editor: Option<&str>) -> Result<()> {
    let listed = client.overlay_list(&[name.to_string()], false).await?;
    let info = listed
        .overlays
        .first()
        .ok_or_else(|| anyhow!("overlay {name:?} does not exist; create it with `wwctl overlay create {name}`"))?;
    let (initial, version) = match client.overlay_file(name, file).await {
        Ok(r) => {
            let kind = r.path.as_ref().map(|p| p.kind.as_str()).unwrap_or("");
            if kind != "file" {
                bail!("{file} is a {kind} in overlay {name}, not a file; only files can be edited");
            }
            (r.content, r.version)
        }
        Err(ClientError::Refused {
            code: Code::NotFound, ..
        }) => {
            // A new file: its directory must exist unless --parents.
            let key = file.trim_start_matches('/');
            if let Some((dir, _)) = key.rsplit_once('/') {
                if !parents && client.overlay_file(name, dir).await.is_err() {
                    bail!("directory {dir} does not exist in overlay {name}; pass --parents (-p) to create it");
                }
            }
            let text = if file.ends_with(".ww") { NEW_TEMPLATE } else { "" };
            (text.as_bytes().to_vec(), info.version)
        }
        Err(e) => return Err(e.into()),
    };
    let tmp = temp_path(file);
    {
        // Private: overlay files may hold secrets.
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create the temporary file {}", tmp.display()))?;
        f.write_all(&initial)?;
    }
    let _cleanup = RemoveOnDrop(tmp.clone());
    let editor = editor.filter(|e| !e.trim().is_empty()).unwrap_or("vi");
    // Through the shell, so that EDITOR may carry arguments ("code --wait").
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("wwctl-overlay-edit")
        .arg(&tmp)
        .status()
        .with_context(|| format!("cannot run the editor {editor:?}; set EDITOR"))?;
    if !status.success() {
        bail!("the editor {editor:?} exited with {status}; nothing changed");
    }
    let edited = std::fs::read(&tmp).with_context(|| format!("cannot read back {}", tmp.display()))?;
    if edited == initial {
        return Ok(());
    }
    let ch = Change::PutFile {
        path: file.to_string(),
        content: edited,
        mode: None,
        owner: None,
        parents,
        overwrite: true,
        name_in_dir: None,
    };
    change(client, name, "change", Some(ch), false, Some(version))
        .await
        .map_err(|e| {
            let retry = e
                .downcast_ref::<ClientError>()
                .is_some_and(|c| c.code() == Some(Code::Aborted));
            if retry {
                anyhow!("{e:#}; your edit was not saved")
            } else {
                e
            }
        })?;
    Ok(())
}

/// A private temporary file that keeps the edited file's suffix (editors pick their
/// syntax by it).
fn temp_path(file: &str) -> PathBuf {
    let base = Path::new(file)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file")
        .to_string();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("ww-overlay-edit-{}-{nanos:x}-{base}", std::process::id()))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Warewulf's default destination: the source path itself, cleaned (`./a` is `a`).
fn default_dest(source: &Path) -> Result<String> {
    let mut parts = Vec::new();
    for c in source.components() {
        match c {
            Component::Normal(s) => parts.push(
                s.to_str()
                    .ok_or_else(|| anyhow!("{}: not valid UTF-8; give DEST", source.display()))?,
            ),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => bail!(
                "{} leads out of its directory, so it cannot name the file in the overlay; give DEST, e.g. /etc/{}",
                source.display(),
                source.file_name().and_then(|n| n.to_str()).unwrap_or("file")
            ),
        }
    }
    Ok(parts.join("/"))
}

fn parse_mode(s: &str) -> Result<u32> {
    let m = u32::from_str_radix(s, 8).map_err(|_| anyhow!("mode {s:?} is not an octal number; give e.g. 0644"))?;
    if m > 0o7777 {
        bail!("mode {s} has more than permission bits; give at most four octal digits, e.g. 0644");
    }
    Ok(m)
}

/// `UID[:GID]` (Warewulf 4.7) or `UID GID` (earlier); numeric ids.
fn parse_owner(uid: &str, gid: Option<&str>) -> Result<(Option<u32>, Option<u32>)> {
    let (u, g) = match (uid.split_once(':'), gid) {
        (Some(_), Some(_)) => bail!("give the group either as UID:GID or as a separate GID, not both"),
        (Some((u, g)), None) => (u, Some(g)),
        (None, g) => (uid, g),
    };
    let id = |what: &str, s: &str| -> Result<Option<u32>> {
        if s.is_empty() {
            return Ok(None);
        }
        s.parse::<u32>()
            .map(Some)
            .map_err(|_| anyhow!("{what} is not a number: {s:?}; give numeric ids, e.g. 0:0"))
    };
    let (u, g) = (id("UID", u)?, id("GID", g.unwrap_or(""))?);
    if u.is_none() && g.is_none() {
        bail!("give a UID, a GID or both (UID:GID)");
    }
    Ok((u, g))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlay_verbs_parse() {
        use clap::{CommandFactory, Parser};
        crate::cli::Cli::command().debug_assert();
        let c = crate::cli::Cli::try_parse_from([
            "wwctl",
            "overlay",
            "import",
            "o",
            "/etc/motd",
            "-p",
            "--overwrite",
            "-m",
            "0600",
            "-n",
        ])
        .unwrap();
        assert!(matches!(
            c.cmd,
            crate::cli::Top::Overlay(OverlayCmd::Import {
                parents: true,
                overwrite: true,
                ..
            })
        ));
    }

    #[test]
    fn modes_owners_and_default_destinations() {
        assert_eq!(parse_mode("0644").unwrap(), 0o644);
        assert_eq!(parse_mode("4755").unwrap(), 0o4755);
        assert!(parse_mode("rw").unwrap_err().to_string().contains("octal"));
        assert!(parse_mode("100644").is_err());
        assert_eq!(parse_owner("5", None).unwrap(), (Some(5), None));
        assert_eq!(parse_owner("5:6", None).unwrap(), (Some(5), Some(6)));
        assert_eq!(parse_owner(":6", None).unwrap(), (None, Some(6)));
        assert_eq!(parse_owner("5", Some("6")).unwrap(), (Some(5), Some(6)));
        assert!(parse_owner("root", None).unwrap_err().to_string().contains("numeric"));
        assert_eq!(perm_string(0o755), "-rwxr-xr-x");
        assert_eq!(perm_string(0o640), "-rw-r-----");
        assert_eq!(default_dest(Path::new("/etc/hosts")).unwrap(), "etc/hosts");
        assert_eq!(default_dest(Path::new("./motd")).unwrap(), "motd");
        assert!(default_dest(Path::new("../x"))
            .unwrap_err()
            .to_string()
            .contains("DEST"));
    }
}
