//! iPXE scripts: Tera templates rendered per request.
//!
//! Warewulf renders `etc/ipxe/<name>.ipxe` (Go `text/template`) with a flat struct
//! of the node's fields; a node picks its script with `ipxe template`, and an
//! unknown MAC gets `unconfigured`. wulfpack keeps the names and the behaviour but
//! uses Tera (the project's template engine) and snake_case variables — see
//! [`IpxeContext`] for the full list — plus one addition that the multi-head design
//! needs: `heads`, the base URLs of every head, this one first, so a script can
//! fall back to the next head for each download.
//!
//! Why embedded defaults plus an override directory: a head must be able to boot
//! nodes with no files installed beyond its binary (the defaults are compiled in
//! with `include_str!` from `cluster/ipxe/`), while sites customise scripts the way
//! they do on Warewulf — a `<name>.ipxe` file in the configured directory replaces
//! the built-in of that name or adds a new one. Templates are parsed once at start,
//! so a syntax error is reported when the head starts, naming the file, instead of
//! when the first node boots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::{NetDev, NodeConf};

/// The built-in templates, by name.
pub const BUILTIN: [(&str, &str); 3] = [
    ("default", include_str!("../../../cluster/ipxe/default.ipxe")),
    ("unconfigured", include_str!("../../../cluster/ipxe/unconfigured.ipxe")),
    ("localdisk", include_str!("../../../cluster/ipxe/localdisk.ipxe")),
];

/// Template a node gets when it names none.
pub const DEFAULT_TEMPLATE: &str = "default";
/// Template an unknown MAC gets.
pub const UNCONFIGURED_TEMPLATE: &str = "unconfigured";

#[derive(Debug, thiserror::Error)]
pub enum IpxeError {
    #[error(
        "iPXE template {name:?} ({origin}) does not parse: {message}; fix it, or remove the file to use the built-in"
    )]
    Parse {
        name: String,
        origin: String,
        message: String,
    },
    #[error("cannot read iPXE templates from {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("iPXE template {name:?} does not exist (known: {known}); set the node's `ipxe template` to one of them or add {name}.ipxe to the templates directory")]
    Unknown { name: String, known: String },
    #[error("rendering iPXE template {name:?} for {node}: {message}")]
    Render {
        name: String,
        node: String,
        message: String,
    },
}

/// Everything a template can use.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IpxeContext {
    /// Cluster name (the replicated cluster's, or the node's `cluster name`).
    pub cluster: String,
    /// Node name (empty for an unknown MAC); `hostname` and `fqdn` are the same, as in Warewulf.
    pub id: String,
    pub hostname: String,
    pub fqdn: String,
    /// The MAC the request came for (normalised `aa:bb:…`): what `wwid=` carries.
    pub hwaddr: String,
    pub image_name: String,
    /// The template's own name.
    pub ipxe: String,
    /// `kernel.args` joined by spaces.
    pub kernel_args: String,
    /// The pinned `kernel.version`, else the image's default kernel version, else empty.
    pub kernel_version: String,
    pub root: String,
    pub init: String,
    /// `tags.IPXEMenuEntry` (Warewulf's override of the image download method:
    /// `imgextract` or `initrd`), else empty: the script chooses by platform.
    pub method: String,
    /// Base URLs (`http://host:port`) of every head, the one serving this request first.
    pub heads: Vec<String>,
    /// `host:port` of the first head (Warewulf's `Authority`).
    pub authority: String,
    pub tags: BTreeMap<String, String>,
    pub netdevs: BTreeMap<String, NetDev>,
    /// The whole merged node, for anything not flattened above.
    pub node: NodeConf,
}

impl IpxeContext {
    /// The context for a known node.
    pub fn for_node(
        cluster: &str,
        name: &str,
        conf: &NodeConf,
        hwaddr: &str,
        image_kernel_version: Option<&str>,
        heads: Vec<String>,
    ) -> IpxeContext {
        let kernel = conf.kernel.clone().unwrap_or_default();
        IpxeContext {
            cluster: conf.cluster_name.clone().unwrap_or_else(|| cluster.to_owned()),
            id: name.to_owned(),
            hostname: name.to_owned(),
            fqdn: name.to_owned(),
            hwaddr: hwaddr.to_owned(),
            image_name: conf.image_name.clone().unwrap_or_default(),
            ipxe: conf
                .ipxe_template
                .clone()
                .unwrap_or_else(|| DEFAULT_TEMPLATE.to_owned()),
            kernel_args: kernel.args.join(" "),
            kernel_version: kernel
                .version
                .or_else(|| image_kernel_version.map(str::to_owned))
                .unwrap_or_default(),
            root: conf.root.clone().unwrap_or_default(),
            init: conf.init.clone().unwrap_or_default(),
            method: conf.tags.get("IPXEMenuEntry").cloned().unwrap_or_default(),
            authority: authority(&heads),
            heads,
            tags: conf.tags.clone(),
            netdevs: conf.network_devices.clone(),
            node: conf.clone(),
        }
    }

    /// The context for a MAC no node owns.
    pub fn unconfigured(cluster: &str, hwaddr: &str, heads: Vec<String>) -> IpxeContext {
        IpxeContext {
            cluster: cluster.to_owned(),
            hwaddr: hwaddr.to_owned(),
            ipxe: UNCONFIGURED_TEMPLATE.to_owned(),
            authority: authority(&heads),
            heads,
            ..Default::default()
        }
    }
}

fn authority(heads: &[String]) -> String {
    heads
        .first()
        .map(|h| h.split_once("://").map(|(_, a)| a).unwrap_or(h).to_owned())
        .unwrap_or_default()
}

/// The parsed template set.
pub struct IpxeTemplates {
    tera: tera::Tera,
    names: Vec<String>,
}

impl std::fmt::Debug for IpxeTemplates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpxeTemplates").field("names", &self.names).finish()
    }
}

impl IpxeTemplates {
    /// Only the built-in templates.
    pub fn builtin() -> IpxeTemplates {
        Self::from_sources(
            BUILTIN
                .iter()
                .map(|(n, s)| (n.to_string(), "built-in".to_string(), s.to_string())),
        )
        .expect("built-in iPXE templates parse (tested)")
    }

    /// The built-ins, replaced or extended by every `<name>.ipxe` in `dir`.
    pub fn load(dir: Option<&Path>) -> Result<IpxeTemplates, IpxeError> {
        let mut sources: BTreeMap<String, (String, String)> = BUILTIN
            .iter()
            .map(|(n, s)| (n.to_string(), ("built-in".to_string(), s.to_string())))
            .collect();
        if let Some(dir) = dir {
            let io = |source| IpxeError::Io {
                path: dir.to_path_buf(),
                source,
            };
            for entry in std::fs::read_dir(dir).map_err(io)? {
                let path = entry.map_err(io)?.path();
                let (Some(stem), Some("ipxe")) = (
                    path.file_stem().and_then(|s| s.to_str()),
                    path.extension().and_then(|s| s.to_str()),
                ) else {
                    continue;
                };
                let text = std::fs::read_to_string(&path).map_err(|source| IpxeError::Io {
                    path: path.clone(),
                    source,
                })?;
                sources.insert(stem.to_owned(), (path.display().to_string(), text));
            }
        }
        Self::from_sources(sources.into_iter().map(|(n, (o, s))| (n, o, s)))
    }

    fn from_sources(sources: impl Iterator<Item = (String, String, String)>) -> Result<IpxeTemplates, IpxeError> {
        let mut tera = tera::Tera::new();
        // iPXE scripts are not HTML: never escape.
        tera.autoescape_on(Vec::<&str>::new());
        let mut names = Vec::new();
        for (name, origin, text) in sources {
            tera.add_raw_template(&name, &text).map_err(|e| IpxeError::Parse {
                name: name.clone(),
                origin,
                message: crate::error::report(&e),
            })?;
            names.push(name);
        }
        names.sort();
        Ok(IpxeTemplates { tera, names })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// Render template `name`.
    pub fn render(&self, name: &str, ctx: &IpxeContext) -> Result<String, IpxeError> {
        if !self.contains(name) {
            return Err(IpxeError::Unknown {
                name: name.to_owned(),
                known: self.names.join(", "),
            });
        }
        let render_err = |message: String| IpxeError::Render {
            name: name.to_owned(),
            node: if ctx.id.is_empty() {
                ctx.hwaddr.clone()
            } else {
                ctx.id.clone()
            },
            message,
        };
        let context = tera::Context::from_serialize(ctx).map_err(|e| render_err(crate::error::report(&e)))?;
        self.tera
            .render(name, &context)
            .map_err(|e| render_err(crate::error::report(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KernelConf;

    fn node() -> NodeConf {
        NodeConf {
            image_name: Some("rocky9".into()),
            kernel: Some(KernelConf {
                version: None,
                args: vec!["quiet".into(), "crashkernel=no".into()],
            }),
            ..Default::default()
        }
    }

    fn heads() -> Vec<String> {
        vec!["http://10.0.0.1:9870".into(), "http://10.0.0.2:9870".into()]
    }

    #[test]
    fn builtins_parse_and_render_every_head_as_a_fallback() {
        let t = IpxeTemplates::builtin();
        assert_eq!(t.names(), ["default", "localdisk", "unconfigured"]);
        let ctx = IpxeContext::for_node("lab", "n1", &node(), "aa:bb:cc:dd:ee:01", Some("6.1.0-13"), heads());
        assert_eq!(ctx.authority, "10.0.0.1:9870");
        assert_eq!(
            ctx.kernel_version, "6.1.0-13",
            "the image's default kernel when none is pinned"
        );
        let s = t.render("default", &ctx).unwrap();
        assert!(s.starts_with("#!ipxe\n"), "{s}");
        for h in heads() {
            assert!(s.contains(&format!(
                "kernel --name kernel {h}/kernel/${{hwaddr}}?${{params}} && goto kernel_ok"
            )));
            assert!(s.contains(&format!("{h}/image/${{hwaddr}}?${{params}}&compress=gz")));
        }
        let first = s.find("10.0.0.1:9870/kernel").unwrap();
        assert!(first < s.find("10.0.0.2:9870/kernel").unwrap(), "this head first");
        assert!(
            s.contains("wwid=aa:bb:cc:dd:ee:01 quiet crashkernel=no || goto error_reboot"),
            "{s}"
        );
        assert!(!s.contains("{{") && !s.contains("{%"), "fully rendered");
    }

    #[test]
    fn a_node_without_image_gets_the_reboot_message_and_unknown_macs_the_unconfigured_script() {
        let t = IpxeTemplates::builtin();
        let conf = NodeConf::default();
        let s = t
            .render(
                "default",
                &IpxeContext::for_node("lab", "n2", &conf, "aa:bb", None, heads()),
            )
            .unwrap();
        assert!(s.contains("No image defined for n2"), "{s}");
        assert!(
            s.contains("wwid=aa:bb || goto"),
            "no trailing space without kernel args: {s}"
        );
        let u = t
            .render(
                "unconfigured",
                &IpxeContext::unconfigured("lab", "aa:bb:cc:00:00:09", heads()),
            )
            .unwrap();
        assert!(u.contains("HW address: aa:bb:cc:00:00:09"), "{u}");
    }

    #[test]
    fn a_directory_overrides_and_adds_templates_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("default.ipxe"), "#!ipxe\necho custom {{ id }}\n").unwrap();
        std::fs::write(dir.path().join("rescue.ipxe"), "#!ipxe\nshell\n").unwrap();
        std::fs::write(dir.path().join("README"), "not a template").unwrap();
        let t = IpxeTemplates::load(Some(dir.path())).unwrap();
        assert_eq!(t.names(), ["default", "localdisk", "rescue", "unconfigured"]);
        let ctx = IpxeContext::for_node("lab", "n1", &node(), "aa:bb", None, heads());
        assert_eq!(t.render("default", &ctx).unwrap(), "#!ipxe\necho custom n1\n");
        let e = t.render("nope", &ctx).unwrap_err();
        assert!(
            e.to_string()
                .contains("known: default, localdisk, rescue, unconfigured"),
            "{e}"
        );

        std::fs::write(dir.path().join("broken.ipxe"), "{% if %}").unwrap();
        let e = IpxeTemplates::load(Some(dir.path())).unwrap_err();
        assert!(
            matches!(&e, IpxeError::Parse { name, origin, .. } if name == "broken" && origin.ends_with("broken.ipxe"))
        );
        let e = IpxeTemplates::load(Some(Path::new("/nonexistent/ipxe"))).unwrap_err();
        assert!(matches!(e, IpxeError::Io { .. }));
    }

    #[test]
    fn tags_pick_the_download_method() {
        let mut conf = node();
        conf.tags.insert("IPXEMenuEntry".into(), "initrd".into());
        let s = IpxeTemplates::builtin()
            .render(
                "default",
                &IpxeContext::for_node("lab", "n1", &conf, "aa:bb", None, heads()),
            )
            .unwrap();
        assert!(s.contains("set fetch initrd\n"), "{s}");
        assert!(!s.contains("iseq ${platform} efi && set fetch"), "{s}");
    }
}
