//! `.ww` templates rendered with Tera over Warewulf's template data and functions.
//!
//! How to use it (compile once, render many):
//!
//! 1. [`Templates::new`] with the file access the functions use ([`FileAccess`]: host files,
//!    image files, host symlinks) and the roots they may read ([`AccessPolicy`]); then
//!    [`Templates::add`] every template once (`overlay`, path inside the overlay, text).
//! 2. Per build: [`BuildData::new`] with the head's settings ([`ServerConf`]) and every node
//!    already merged with its profiles. It builds each node's value and `AllNodes` once.
//! 3. Per node: [`BuildData::node`], then [`Templates::render`] for each template, which
//!    returns the files the template produced ([`RenderedFile`]).
//!
//! Design notes:
//! - Warewulf's output-shaping functions (`file`, `softlink`, `nobackup`, `abort`,
//!   `ImportLink`) cannot change Tera's output stream, so they print a marker that cannot
//!   occur in text (it contains NUL bytes) and [`split_output`] cuts the rendered text at the
//!   markers, as Warewulf cuts its own output at the comments its functions print.
//! - A template's name inside Tera is `<overlay>:<path>`, so every Tera error already names
//!   the overlay, the file and the line; [`RenderError`] adds the node.
//! - Tera maps iterate in insertion order (the crate's `preserve_order` feature) and the data
//!   is built from sorted maps, so `{% for name, dev in NetDevs %}` visits devices in name
//!   order, as Go's `range` does.

mod data;
mod funcs;
pub mod info;
mod server;

use std::fmt;
use std::sync::Arc;

pub use data::{node_value, BuildData, BuildInfo, NodeData};
pub use server::{
    Derived, DhcpSection, NfsExport, NfsSection, PathsSection, ServerConf, SshSection, TftpSection, WarewulfSection,
};

/// Errors of template parsing and rendering.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template does not parse.
    #[error("overlay {overlay:?}: template {file:?} does not parse: {message}; fix the template")]
    Parse {
        /// The overlay.
        overlay: String,
        /// The template's path inside the overlay.
        file: String,
        /// Tera's message (with line and column).
        message: String,
    },
    /// Rendering failed (undefined variable, refused include, a function's error).
    #[error("overlay {overlay:?}: template {file:?} failed for node {node:?}: {message}")]
    Render {
        /// The overlay.
        overlay: String,
        /// The template's path inside the overlay.
        file: String,
        /// The node rendered for.
        node: String,
        /// Tera's message (names the template and the line).
        message: String,
    },
    /// No such template was added.
    #[error("overlay {overlay:?} has no template {file:?}")]
    Unknown {
        /// The overlay.
        overlay: String,
        /// The path asked for.
        file: String,
    },
    /// `warewulf.conf` does not parse.
    #[error("warewulf.conf is not valid: {message}; fix the YAML")]
    Config {
        /// The parser's message.
        message: String,
    },
}

/// Why a file could not be read for a template.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The path is outside the roots templates may read.
    #[error("{path:?} is outside the files templates may read ({allowed})")]
    Refused {
        /// The path as asked.
        path: String,
        /// What is allowed.
        allowed: String,
    },
    /// A file of a node image could not be read (`IncludeFrom`).
    #[error("image {image:?}: {source}")]
    Image {
        /// The image's name.
        image: String,
        /// Why.
        source: crate::image::files::FileError,
    },
    /// Reading failed.
    #[error("cannot read {path:?}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where template functions read files. Paths given to it are already checked against the
/// [`AccessPolicy`] (absolute, normalized, inside a root); an implementation must still
/// refuse to follow a symlink out of those roots.
pub trait FileAccess: Send + Sync + fmt::Debug {
    /// A file of the head (`Include`, `IncludeBlock`).
    fn host_file(&self, path: &str) -> Result<String, AccessError>;
    /// A file of node image `image` (`IncludeFrom`); `path` is absolute inside the image.
    fn image_file(&self, image: &str, path: &str) -> Result<String, AccessError>;
    /// The target of a symlink of the head (`readlink`, `ImportLink`).
    fn host_readlink(&self, path: &str) -> Result<String, AccessError>;
}

/// Which host files templates may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    /// Where a relative `Include` path resolves (Warewulf: `<sysconfdir>/warewulf`).
    pub config_dir: String,
    /// Files or directories (absolute) that `Include`, `IncludeBlock`, `readlink` and
    /// `ImportLink` may read; anything else is refused.
    pub host_roots: Vec<String>,
}

impl Default for AccessPolicy {
    /// Warewulf's config dir, the account files `syncuser` merges, the head's `/etc/hosts`
    /// (the `host` overlay keeps its top), root's SSH keys (`ssh.authorized_keys`) and the
    /// zone link (`localtime`).
    fn default() -> Self {
        AccessPolicy {
            config_dir: "/etc/warewulf".into(),
            host_roots: [
                "/etc/warewulf",
                "/etc/passwd",
                "/etc/group",
                "/etc/hosts",
                "/root/.ssh",
                "/etc/localtime",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl AccessPolicy {
    /// The absolute host path `path` names, if templates may read it: relative paths resolve
    /// against `config_dir`; `..` is refused anywhere (no escape by walking up).
    pub fn host_path(&self, path: &str) -> Result<String, AccessError> {
        let full = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("{}/{}", self.config_dir.trim_end_matches('/'), path)
        };
        let norm = normalize(&full).ok_or_else(|| self.refused(path))?;
        let ok = self
            .host_roots
            .iter()
            .any(|r| norm == *r || norm.starts_with(&format!("{}/", r.trim_end_matches('/'))));
        if ok {
            Ok(norm)
        } else {
            Err(self.refused(path))
        }
    }

    fn refused(&self, path: &str) -> AccessError {
        AccessError::Refused {
            path: path.to_owned(),
            allowed: format!(
                "relative paths under {}, or {}; no `..`",
                self.config_dir,
                self.host_roots.join(", ")
            ),
        }
    }
}

/// An image path made absolute and normalized, or None when it walks up with `..`.
pub(crate) fn image_path(path: &str) -> Option<String> {
    normalize(&format!("/{}", path.trim_start_matches('/')))
}

/// `//` and `.` removed; None when a `..` component appears.
fn normalize(path: &str) -> Option<String> {
    let mut out = String::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => {
                out.push('/');
                out.push_str(p);
            }
        }
    }
    Some(if out.is_empty() { "/".into() } else { out })
}

/// Reads the real file system: host files under `host_root` (normally `/`), an image's files
/// under `<images_dir>/<image>/rootfs`. Symlinks are followed only while they stay inside
/// the root they started in.
#[derive(Debug, Clone)]
pub struct HostFs {
    /// Prefix for host paths (`/` on a head; a temporary directory in tests).
    pub host_root: std::path::PathBuf,
    /// Directory holding `<image>/rootfs`.
    pub images_dir: std::path::PathBuf,
    /// The roots host reads must stay in after symlinks (give the [`Templates`]' policy).
    pub policy: AccessPolicy,
}

impl HostFs {
    fn io(path: &str) -> impl FnOnce(std::io::Error) -> AccessError + '_ {
        move |source| AccessError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// `root` + `path`, refused when the resolved file is outside `allowed` (after symlinks).
    fn resolve(
        root: &std::path::Path,
        path: &str,
        allowed: &[std::path::PathBuf],
    ) -> Result<std::path::PathBuf, AccessError> {
        let p = root.join(path.trim_start_matches('/'));
        let real = p.canonicalize().map_err(Self::io(path))?;
        if allowed.iter().any(|a| real.starts_with(a)) {
            Ok(real)
        } else {
            Err(AccessError::Refused {
                path: path.to_owned(),
                allowed: "it is a symlink that leads out of the readable files".into(),
            })
        }
    }
}

/// The image catalog as `IncludeFrom` sees it: image name → its layers, bottom first.
pub type ImageLayers = std::collections::BTreeMap<String, Vec<crate::state::LayerRef>>;

/// Files the cluster replicates, read before the head's own disk: the nodes' SSH host
/// keys (`<config_dir>/keys/ssh_host_*`, from `wwctl configure ssh`), so every head
/// renders the same keys into the `ssh.host_keys` overlay (keys are absolute paths); and,
/// with [`ClusterFiles::with_images`], the node images' files for `IncludeFrom`, read
/// from the images' layers in the CAS, so any head renders them whether or not it ever
/// assembled the image.
#[derive(Debug)]
pub struct ClusterFiles {
    inner: Arc<dyn FileAccess>,
    files: std::sync::RwLock<Arc<std::collections::BTreeMap<String, String>>>,
    images: Option<Arc<crate::image::files::ImageFiles>>,
    catalog: std::sync::RwLock<Arc<ImageLayers>>,
}

impl ClusterFiles {
    pub fn new(inner: Arc<dyn FileAccess>) -> ClusterFiles {
        ClusterFiles {
            inner,
            files: Default::default(),
            images: None,
            catalog: Default::default(),
        }
    }

    /// Read image files through `reader`, for the images given to
    /// [`ClusterFiles::set_images`] (without it, `inner` reads them).
    pub fn with_images(mut self, reader: Arc<crate::image::files::ImageFiles>) -> ClusterFiles {
        self.images = Some(reader);
        self
    }

    /// Replace the replicated files (absolute path → content).
    pub fn set(&self, files: Arc<std::collections::BTreeMap<String, String>>) {
        *self.files.write().unwrap_or_else(|p| p.into_inner()) = files;
    }

    /// Replace the image catalog `IncludeFrom` reads from.
    pub fn set_images(&self, images: Arc<ImageLayers>) {
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = images;
    }
}

impl FileAccess for ClusterFiles {
    fn host_file(&self, path: &str) -> Result<String, AccessError> {
        let files = self.files.read().unwrap_or_else(|p| p.into_inner()).clone();
        match files.get(path) {
            Some(c) => Ok(c.clone()),
            None => self.inner.host_file(path),
        }
    }

    fn image_file(&self, image: &str, path: &str) -> Result<String, AccessError> {
        let Some(reader) = &self.images else {
            return self.inner.image_file(image, path);
        };
        let catalog = self.catalog.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(layers) = catalog.get(image) else {
            return Err(AccessError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("there is no image {image:?} in the catalog (`wwctl image list`)"),
                ),
            });
        };
        let bytes = reader.read(layers, path).map_err(|source| AccessError::Image {
            image: image.to_owned(),
            source,
        })?;
        String::from_utf8(bytes.to_vec()).map_err(|_| AccessError::Io {
            path: path.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the file of image {image:?} is not UTF-8 text"),
            ),
        })
    }

    fn host_readlink(&self, path: &str) -> Result<String, AccessError> {
        self.inner.host_readlink(path)
    }
}

impl FileAccess for HostFs {
    fn host_file(&self, path: &str) -> Result<String, AccessError> {
        // The policy already checked `path`; a symlink must resolve to a policy root too.
        let roots = self
            .policy
            .host_roots
            .iter()
            .filter_map(|r| self.host_root.join(r.trim_start_matches('/')).canonicalize().ok())
            .collect::<Vec<_>>();
        let real = Self::resolve(&self.host_root, path, &roots)?;
        std::fs::read_to_string(real).map_err(Self::io(path))
    }

    fn image_file(&self, image: &str, path: &str) -> Result<String, AccessError> {
        let root = self.images_dir.join(image).join("rootfs");
        let canon_root = root.canonicalize().map_err(Self::io(path))?;
        let real = Self::resolve(&root, path, &[canon_root])?;
        std::fs::read_to_string(real).map_err(Self::io(path))
    }

    fn host_readlink(&self, path: &str) -> Result<String, AccessError> {
        let p = self.host_root.join(path.trim_start_matches('/'));
        std::fs::read_link(p)
            .map(|t| t.to_string_lossy().into_owned())
            .map_err(Self::io(path))
    }
}

/// One output file of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Path inside the overlay, without a leading `/` (the template path without `.ww`, or
    /// the name given to `file`).
    pub name: String,
    /// Keep a `.wwbackup` of a file this replaces (false after `nobackup`).
    pub backup: bool,
    /// Write the file at all (false after `abort`).
    pub write: bool,
    /// The file is a symlink to this target (`softlink`, `ImportLink`).
    pub symlink: Option<String>,
    /// The rendered text.
    pub content: String,
}

/// A compiled set of templates with Warewulf's functions. Compile once; render per node
/// from any number of threads (`&self`).
pub struct Templates {
    tera: tera::Tera,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates")
            .field("templates", &self.tera.get_template_names().count())
            .finish()
    }
}

fn key(overlay: &str, path: &str) -> String {
    format!("{overlay}:/{}", path.trim_start_matches('/'))
}

impl Templates {
    /// An empty set whose functions read files through `access`, within `policy`.
    pub fn new(access: Arc<dyn FileAccess>, policy: AccessPolicy) -> Templates {
        let mut tera = tera::Tera::new();
        // Configuration files, not HTML: never escape.
        tera.autoescape_on(Vec::<&str>::new());
        funcs::register(&mut tera, access, Arc::new(policy));
        Templates { tera }
    }

    /// Compile template `path` (e.g. `/etc/hosts.ww`) of `overlay`.
    pub fn add(&mut self, overlay: &str, path: &str, text: &str) -> Result<(), RenderError> {
        self.tera
            .add_raw_template(&key(overlay, path), text)
            .map_err(|e| RenderError::Parse {
                overlay: overlay.to_owned(),
                file: path.to_owned(),
                message: crate::error::report(&e),
            })
    }

    /// Whether `overlay` has template `path`.
    pub fn contains(&self, overlay: &str, path: &str) -> bool {
        self.tera.contains_template(&key(overlay, path))
    }

    /// Render template `path` of `overlay` for one node. `data`'s `Overlay` variable is set
    /// to `overlay` for the call.
    pub fn render(&self, overlay: &str, path: &str, data: &mut NodeData) -> Result<Vec<RenderedFile>, RenderError> {
        let k = key(overlay, path);
        if !self.tera.contains_template(&k) {
            return Err(RenderError::Unknown {
                overlay: overlay.to_owned(),
                file: path.to_owned(),
            });
        }
        data.ctx.insert_value("Overlay", tera::Value::from(overlay));
        let text = self.tera.render(&k, &data.ctx).map_err(|e| RenderError::Render {
            overlay: overlay.to_owned(),
            file: path.to_owned(),
            node: data
                .ctx
                .get("Id")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            message: crate::error::report(&e),
        })?;
        Ok(split_output(&default_name(path), &text))
    }

    /// The top-level variables template `path` reads (for `wwctl overlay info`), sorted.
    pub fn variables(&self, overlay: &str, path: &str) -> Result<Vec<String>, RenderError> {
        let vars = self
            .tera
            .get_template_variables(&key(overlay, path))
            .map_err(|_| RenderError::Unknown {
                overlay: overlay.to_owned(),
                file: path.to_owned(),
            })?;
        let mut v: Vec<String> = vars.into_iter().map(str::to_owned).collect();
        v.sort();
        Ok(v)
    }
}

/// The top-level variables that hold the rendered node's own fields (see `data.rs`).
const NODE_VARS: &[&str] = &[
    "Id",
    "Hostname",
    "Comment",
    "ClusterName",
    "ImageName",
    "ContainerName",
    "Ipxe",
    "RuntimeOverlay",
    "SystemOverlay",
    "Init",
    "Root",
    "AssetKey",
    "Discoverable",
    "Profiles",
    "Tags",
    "Kernel",
    "Ipmi",
    "PrimaryNetDev",
    "NetDevs",
    "Resources",
    "Disks",
    "DiskList",
    "FileSystems",
    "FileSystemList",
    "ThisNode",
];

impl Templates {
    /// Whether template `path` reads the rendered node's own fields. When it does not (e.g. a
    /// `hosts` file built from `AllNodes` and the server settings only), its output is the
    /// same for every node of a build, so a builder can render it once and reuse it.
    pub fn reads_node(&self, overlay: &str, path: &str) -> Result<bool, RenderError> {
        Ok(self
            .variables(overlay, path)?
            .iter()
            .any(|v| NODE_VARS.contains(&v.as_str())))
    }
}

/// What `wwctl overlay show --render` prints, as Warewulf: per output file its
/// `backupFile`/`writeFile`/`Filename` (and `Symlink`) lines, then its contents ending in
/// a newline; `quiet`: the contents only.
pub fn show(files: &[RenderedFile], quiet: bool) -> String {
    let mut out = String::new();
    for f in files {
        if !quiet {
            out.push_str(&format!(
                "backupFile: {}\nwriteFile: {}\nFilename: {}\n",
                f.backup, f.write, f.name
            ));
        }
        if let Some(t) = &f.symlink {
            if !quiet {
                out.push_str(&format!("Symlink: {t}\n"));
            }
            continue;
        }
        out.push_str(&f.content);
        if !f.content.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// The default output name: the template path without `.ww` and without a leading `/`.
pub fn default_name(path: &str) -> String {
    let p = path.trim_start_matches('/');
    p.strip_suffix(".ww").unwrap_or(p).to_owned()
}

/// Marker printed by the output-shaping functions: NUL, kind, SOH, argument, NUL.
pub(crate) const MARK: char = '\u{0}';
pub(crate) const SEP: char = '\u{1}';

pub(crate) fn marker(kind: &str, arg: &str) -> String {
    format!("{MARK}{kind}{SEP}{arg}{MARK}")
}

/// Cut rendered text at the markers into files. The default file (named `default`) is
/// returned unless `file` was used, in which case it is kept only when it became a symlink.
pub fn split_output(default: &str, text: &str) -> Vec<RenderedFile> {
    let new = |name: &str| RenderedFile {
        name: name.to_owned(),
        backup: true,
        write: true,
        symlink: None,
        content: String::new(),
    };
    let mut files = vec![new(default)];
    let mut used_file = false;
    let mut rest = text;
    while let Some(start) = rest.find(MARK) {
        files.last_mut().expect("one file").content.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find(MARK) else {
            // A lone NUL from the data: keep it as text.
            files.last_mut().expect("one file").content.push(MARK);
            rest = after;
            continue;
        };
        let (kind, arg) = after[..end].split_once(SEP).unwrap_or((&after[..end], ""));
        rest = &after[end + 1..];
        let cur = files.last_mut().expect("one file");
        match kind {
            "file" => {
                used_file = true;
                files.push(new(arg.trim_start_matches('/')));
            }
            "softlink" => cur.symlink = Some(arg.to_owned()),
            "nobackup" => cur.backup = false,
            "abort" => {
                cur.write = false;
                cur.backup = false;
            }
            _ => {}
        }
    }
    files.last_mut().expect("one file").content.push_str(rest);
    if used_file && files[0].symlink.is_none() {
        files.remove(0);
    }
    files
}

#[cfg(test)]
mod tests;
