//! Unit tests: each function through a real template, template errors, escapes.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::model::{parse_nodes_conf, NodeConf};

/// In-memory files: host paths and `<image>:<path>` keys.
#[derive(Debug, Default)]
struct Mem {
    files: BTreeMap<String, String>,
    links: BTreeMap<String, String>,
}

impl FileAccess for Mem {
    fn host_file(&self, path: &str) -> Result<String, AccessError> {
        self.files.get(path).cloned().ok_or_else(|| AccessError::Io {
            path: path.into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    }
    fn image_file(&self, image: &str, path: &str) -> Result<String, AccessError> {
        self.host_file(&format!("{image}:{path}"))
    }
    fn host_readlink(&self, path: &str) -> Result<String, AccessError> {
        self.links.get(path).cloned().ok_or_else(|| AccessError::Io {
            path: path.into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    }
}

fn mem() -> Mem {
    let mut m = Mem::default();
    m.files.insert("/etc/warewulf/keys/k".into(), "KEY\n".into());
    m.files.insert("/etc/passwd".into(), "root:x:0:0\n".into());
    m.files.insert("/etc/shadow".into(), "secret\n".into());
    m.files.insert("/etc/warewulf/hosts".into(), "a\n# cut\nb\n".into());
    m.files.insert("img:/etc/passwd".into(), "root:x:0:0:image\n".into());
    m.links
        .insert("/etc/localtime".into(), "/usr/share/zoneinfo/UTC".into());
    m
}

const NODES: &str = "
nodes:
  n1:
    image name: img
    tags:
      a: x
    network devices:
      eth:
        device: eth0
        ipaddr: 10.0.0.5
        netmask: 255.255.255.0
      bnet:
        device: ib0
    filesystems:
      /dev/vda1:
        format: ext4
        path: /scratch
  n2: {}
";

fn data() -> BuildData {
    let conf = parse_nodes_conf(NODES).unwrap();
    let server = ServerConf::from_yaml("ipaddr: 10.0.0.1/24\n").unwrap();
    let nodes: Vec<(&str, &NodeConf)> = conf.nodes.iter().map(|(k, v)| (k.as_str(), v)).collect();
    BuildData::new(
        &server,
        nodes,
        &BuildInfo {
            host: "head".into(),
            ..Default::default()
        },
    )
}

fn render(text: &str) -> Result<Vec<RenderedFile>, RenderError> {
    let mut t = Templates::new(Arc::new(mem()), AccessPolicy::default());
    t.add("ov", "/etc/x.ww", text)?;
    let mut d = data().node("n1", None);
    t.render("ov", "/etc/x.ww", &mut d)
}

fn one(text: &str) -> String {
    let files = render(text).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].content.clone()
}

#[test]
fn node_and_server_variables() {
    assert_eq!(
        one("{{ Id }} {{ Hostname }} {{ ImageName }} {{ Ipaddr }} {{ NetworkCIDR }} {{ BuildHost }} {{ Overlay }}"),
        "n1 n1 img 10.0.0.1 10.0.0.0/24 head ov"
    );
    assert_eq!(one("{{ ThisNode.Id }} {{ Tags.a }} {{ PrimaryNetDev }}"), "n1 x bnet");
    assert_eq!(one("{% for n in AllNodes %}{{ n.Id }},{% endfor %}"), "n1,n2,");
    assert_eq!(
        one("{{ NetDevs.eth.IpCIDR }} {{ NetDevs.eth.OnBootDefaultTrue }}"),
        "10.0.0.5/24 true"
    );
    assert_eq!(
        one("{% for fs in ThisNode.FileSystemList %}{{ fs.Id }}={{ fs.Path }}{% endfor %}"),
        "/dev/vda1=/scratch"
    );
}

#[test]
fn wwclient_conf_lists_the_heads_of_the_nodes_rack_by_the_nodes_address() {
    let shipped = include_str!("../../../cluster/overlays/wwclient/rootfs/etc/warewulf/wwclient.conf.ww");
    let mut t = Templates::new(Arc::new(mem()), AccessPolicy::default());
    t.add("wwclient", "/etc/warewulf/wwclient.conf.ww", shipped).unwrap();
    let heads = |node_yaml: &str| {
        let conf = parse_nodes_conf(node_yaml).unwrap();
        let mut d = data().node("n1", Some(&conf.nodes["n1"]));
        d.set("Heads", ["http://10.0.0.1:9873", "http://10.0.0.2:9873"]);
        // The head (`Ipaddr` 10.0.0.1) is in `mgmt`; the node is not.
        d.set(
            "Racks",
            serde_json::json!([
                {"name": "mgmt", "network": "10.0.0.0/24", "heads": ["http://10.0.0.9:9873"]},
                {"name": "rack1", "network": "10.10.0.0/24",
                 "heads": ["http://10.10.0.1:9873", "http://10.10.0.2:9873"]},
            ]),
        );
        let out = t.render("wwclient", "/etc/warewulf/wwclient.conf.ww", &mut d).unwrap();
        let text = out[0].content.clone();
        text.lines()
            .filter_map(|l| l.strip_prefix("head = "))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        heads("nodes:\n  n1:\n    network devices:\n      a: {ipaddr: 192.168.1.5}\n      eth: {ipaddr: 10.10.0.50}\n"),
        ["http://10.10.0.1:9873", "http://10.10.0.2:9873"],
        "the rack of the node's address, not of the head's"
    );
    assert_eq!(
        heads("nodes:\n  n1:\n    network devices:\n      eth: {ipaddr: 172.16.0.5}\n"),
        ["http://10.0.0.1:9873", "http://10.0.0.2:9873"],
        "a node in no rack lists every head"
    );
}

#[test]
fn maps_iterate_in_name_order() {
    assert_eq!(one("{% for name, d in NetDevs %}{{ name }} {% endfor %}"), "bnet eth ");
}

#[test]
fn include_reads_config_dir_and_allowed_roots() {
    assert_eq!(one(r#"{{ Include(path="keys/k") }}"#), "KEY\n");
    assert_eq!(one(r#"{{ Include(path="/etc/passwd") }}"#), "root:x:0:0\n");
    assert_eq!(
        one(r#"[{{ Include(path="/root/.ssh/none.pub", optional=true) }}]"#),
        "[]"
    );
    let e = render(r#"{{ Include(path="/root/.ssh/none.pub") }}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("none.pub"), "{e}");
    assert_eq!(
        one(r#"{{ IncludeFrom(image=ImageName, path="/etc/passwd") }}"#),
        "root:x:0:0:image\n"
    );
    assert_eq!(one(r##"{{ IncludeBlock(path="hosts", abort="# cut") }}"##), "a\n");
    assert_eq!(
        one(r#"{{ readlink(path="/etc/localtime") }}"#),
        "/usr/share/zoneinfo/UTC"
    );
}

#[test]
fn include_outside_roots_is_refused_and_names_the_template() {
    for bad in [
        r#"{{ Include(path="/etc/shadow") }}"#,
        r#"{{ Include(path="../shadow") }}"#,
        r#"{{ Include(path="/etc/warewulf/../shadow") }}"#,
        r#"{{ IncludeFrom(image="img", path="/../../etc/shadow") }}"#,
        r#"{{ IncludeFrom(image="../img", path="/etc/passwd") }}"#,
    ] {
        let e = render(bad).unwrap_err().to_string();
        assert!(e.contains("ov:/etc/x.ww:1"), "{bad}: {e}");
        assert!(!e.contains("secret"), "{e}");
    }
}

#[test]
fn template_errors_name_overlay_file_and_line() {
    let e = render("line1\n{{ NoSuchVar }}\n").unwrap_err().to_string();
    assert!(e.contains("\"ov\""), "{e}");
    assert!(e.contains("/etc/x.ww"), "{e}");
    assert!(e.contains(":2:"), "{e}");
    assert!(e.contains("\"n1\""), "{e}");
    let e = render("{% if %}").unwrap_err();
    assert!(matches!(e, RenderError::Parse { .. }), "{e}");
}

#[test]
fn file_softlink_nobackup_abort_shape_the_output() {
    let files =
        render(r#"ignored{{ file(name="a") }}A{{ nobackup() }}{{ file(name="b") }}B{{ softlink(target="/t") }}"#)
            .unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(
        (files[0].name.as_str(), files[0].content.as_str(), files[0].backup),
        ("a", "A", false)
    );
    assert_eq!(
        (files[1].name.as_str(), files[1].symlink.as_deref(), files[1].backup),
        ("b", Some("/t"), true)
    );
    let files = render(r#"{{ softlink(target="x") }}"#).unwrap();
    assert_eq!(
        (files[0].name.as_str(), files[0].symlink.as_deref()),
        ("etc/x", Some("x"))
    );
    let files = render(r#"before{{ abort() }}"#).unwrap();
    assert!(!files[0].write);
    let files = render(r#"{{ ImportLink(path="/etc/localtime") }}"#).unwrap();
    assert_eq!(files[0].symlink.as_deref(), Some("/usr/share/zoneinfo/UTC"));
    assert!(render(r#"{{ file(name="../x") }}"#).is_err());
}

#[test]
fn sprig_helpers() {
    assert_eq!(
        one(r#"{{ "/a/b/c.efi" | basename }} {{ "/a/b/c" | dirname }}"#),
        "c.efi /a/b"
    );
    assert_eq!(one(r#"{{ 1 | inc }} {{ "5" | dec }}"#), "2 4");
    assert_eq!(
        one(r#"{{ "/var/my-dir" | SystemdEscapePath }} {{ "a b" | SystemdEscape }}"#),
        "var-my\\x2ddir a\\x20b"
    );
    assert_eq!(one(r#"{{ [1] | append(value=2) | join(sep=",") }}"#), "1,2");
    assert_eq!(
        one(r#"{{ ["a","b","c"] | without(values=["b"]) | join(sep=",") }}"#),
        "a,c"
    );
    assert_eq!(one(r#"{{ "a,b" | splitList(sep=",") | length }}"#), "2");
    assert_eq!(one(r#"{{ "eth0" | regexMatch(pattern="^eth[0-9]$") }}"#), "true");
    assert_eq!(
        one(r#"{{ "a, b,c" | regexSplit(pattern=",\\s*") | join(sep="|") }}"#),
        "a|b|c"
    );
    assert_eq!(
        one(r#"{{ "abcdef" | substr(start=1, end=3) }} {{ "ab" | substr(start=1, end=9) }}"#),
        "bc b"
    );
    assert_eq!(
        one(r#"{{ true | ternary(yes="y", no="n") }}{{ "" | ternary(yes="y", no="n") }}"#),
        "yn"
    );
    assert_eq!(
        one(r#"{{ Tags | hasKey(key="a") }} {{ Tags | hasKey(key="b") }}"#),
        "true false"
    );
    assert_eq!(
        one(r#"{% set m = {} | set(key="k", value=1) %}{{ m | toJson }}"#),
        r#"{"k":1}"#
    );
    assert_eq!(one(r#"{{ "" | empty }} {{ [1] | empty }}"#), "true false");
    assert_eq!(one(r#"{{ coalesce(values=["", none, "x"]) }}"#), "x");
    assert_eq!(
        one(r#"{{ UniqueField(sep=":", index=0, input="a:1\na:2\nb:3") }}"#),
        "a:1\nb:3"
    );
    assert_eq!(one(r#"{{ "" | default(value="d", boolean=true) }}"#), "d");
}

#[test]
fn variables_lists_what_a_template_reads() {
    let mut t = Templates::new(Arc::new(mem()), AccessPolicy::default());
    t.add(
        "ov",
        "/x.ww",
        "{{ Id }}{% for n in NetDevs %}{{ n.Device }}{% endfor %}{{ Tags.a }}",
    )
    .unwrap();
    let v = t.variables("ov", "/x.ww").unwrap();
    assert!(
        v.contains(&"Id".to_owned()) && v.contains(&"NetDevs".to_owned()) && v.contains(&"Tags".to_owned()),
        "{v:?}"
    );
    assert!(t.variables("ov", "/nope.ww").is_err());
    assert!(t.reads_node("ov", "/x.ww").unwrap());
    t.add(
        "ov",
        "/all.ww",
        "{% for n in AllNodes %}{{ n.Id }} {{ n.NetDevs | length }}{% endfor %}{{ Ipaddr }}",
    )
    .unwrap();
    assert!(!t.reads_node("ov", "/all.ww").unwrap());
}

#[test]
fn split_output_keeps_default_without_file() {
    let f = split_output("etc/hosts", "x\n");
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].name.as_str(), f[0].content.as_str(), f[0].backup, f[0].write),
        ("etc/hosts", "x\n", true, true)
    );
}

#[test]
fn host_fs_refuses_symlinks_out_of_roots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("etc/warewulf")).unwrap();
    std::fs::write(root.join("etc/shadow"), "secret").unwrap();
    std::fs::write(root.join("etc/warewulf/ok"), "fine").unwrap();
    std::os::unix::fs::symlink(root.join("etc/shadow"), root.join("etc/warewulf/evil")).unwrap();
    std::fs::create_dir_all(root.join("images/img/rootfs/etc")).unwrap();
    std::os::unix::fs::symlink(root.join("etc/shadow"), root.join("images/img/rootfs/etc/evil")).unwrap();
    let fs = HostFs {
        host_root: root.to_path_buf(),
        images_dir: root.join("images"),
        policy: AccessPolicy::default(),
    };
    assert_eq!(fs.host_file("/etc/warewulf/ok").unwrap(), "fine");
    assert!(matches!(
        fs.host_file("/etc/warewulf/evil"),
        Err(AccessError::Refused { .. })
    ));
    assert!(matches!(
        fs.image_file("img", "/etc/evil"),
        Err(AccessError::Refused { .. })
    ));
}

#[test]
fn compiled_set_and_build_data_are_shared_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Templates>();
    shareable::<BuildData>();
    // One compiled set, several threads rendering different nodes.
    let mut t = Templates::new(Arc::new(mem()), AccessPolicy::default());
    t.add("ov", "/h.ww", "{{ Id }}").unwrap();
    let d = data();
    std::thread::scope(|s| {
        for name in ["n1", "n2"] {
            let (t, d) = (&t, &d);
            s.spawn(move || {
                let mut nd = d.node(name, None);
                assert_eq!(t.render("ov", "/h.ww", &mut nd).unwrap()[0].content, name);
            });
        }
    });
}

/// Fuzzing (issue 12, parts 6 and 7): templates an operator (or an overlay import) can
/// write — random text mixing Tera syntax, Warewulf's functions with climbing paths,
/// node variables and filters — render or fail with an error; none panics, none reads
/// `/etc/shadow` (outside the allowed roots) into its output, and every `file` output
/// path stays a plain path.
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn path_arg() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("/etc/shadow".to_owned()),
            Just("../shadow".to_owned()),
            Just("/etc/warewulf/../shadow".to_owned()),
            Just("/etc/warewulf/keys/k".to_owned()),
            Just("/etc/passwd".to_owned()),
            Just("".to_owned()),
            "[a-z/.]{0,20}",
        ]
    }

    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{{ Id }}".to_owned()),
            Just("{{ Hostname | upper }}".to_owned()),
            Just("{% for k, v in Tags %}{{ k }}={{ v }}\n{% endfor %}".to_owned()),
            Just("{% if Ipaddr %}ip{% else %}none{% endif %}".to_owned()),
            Just("{{ NoSuchVar }}".to_owned()),
            Just("{{".to_owned()),
            Just("{%".to_owned()),
            Just("}}".to_owned()),
            Just("{% endfor %}".to_owned()),
            path_arg().prop_map(|p| format!("{{{{ Include(path=\"{p}\") }}}}")),
            path_arg().prop_map(|p| format!("{{{{ IncludeFrom(image=\"img\", path=\"{p}\") }}}}")),
            path_arg().prop_map(|p| format!("{{{{ IncludeFrom(image=\"{p}\", path=\"/etc/passwd\") }}}}")),
            path_arg().prop_map(|p| format!("{{{{ readlink(path=\"{p}\") }}}}")),
            path_arg().prop_map(|p| format!("{{{{ file(name=\"{p}\") }}}}")),
            Just("{{ abort() }}".to_owned()),
            Just("{{ nobackup() }}".to_owned()),
            "[ -~\n]{0,20}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

        #[test]
        fn random_templates_render_or_fail_and_never_leak(parts in proptest::collection::vec(piece(), 1..8)) {
            let text = parts.concat();
            if let Ok(files) = render(&text) {
                for f in &files {
                    prop_assert!(!f.content.contains("secret\n"), "{text:?} leaked /etc/shadow: {f:?}");
                    prop_assert!(
                        !f.name.starts_with('/') && !f.name.split('/').any(|c| c == ".."),
                        "{text:?} names an output outside the overlay: {:?}",
                        f.name
                    );
                }
            }
        }
    }
}

#[test]
fn cluster_files_read_images_from_their_layers() {
    let dir = tempfile::tempdir().unwrap();
    let cas = crate::cas::Cas::open(&dir.path().join("cas")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("etc/passwd", "root:x:0:0:from layers\n"),
        ("etc/big", "0123456789012345678901234567890123456789"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data.as_bytes()).unwrap();
    }
    let bytes = b.into_inner().unwrap();
    let layer = crate::state::LayerRef {
        digest: cas.put_bytes(&bytes).unwrap(),
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        size: bytes.len() as u64,
    };
    let reader = crate::image::files::ImageFiles::new(
        cas,
        crate::image::files::Limits {
            max_file: 30,
            ..Default::default()
        },
    );
    // `mem()` has `img:/etc/passwd` too: the layers must win once images are wired.
    let files = Arc::new(ClusterFiles::new(Arc::new(mem())).with_images(Arc::new(reader)));
    files.set_images(Arc::new([("img".to_owned(), vec![layer])].into_iter().collect()));
    let mut t = Templates::new(files, AccessPolicy::default());
    let render = |t: &mut Templates, text: &str| {
        t.add("ov", "/etc/x.ww", text).unwrap();
        t.render("ov", "/etc/x.ww", &mut data().node("n1", None))
    };
    let out = render(&mut t, r#"{{ IncludeFrom(image=ImageName, path="/etc/passwd") }}"#).unwrap();
    assert_eq!(out[0].content, "root:x:0:0:from layers\n");
    let e = render(&mut t, r#"{{ IncludeFrom(image="other", path="/etc/passwd") }}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no image \"other\""), "{e}");
    let e = render(&mut t, r#"{{ IncludeFrom(image=ImageName, path="/etc/big") }}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("limited to 30 bytes") && e.contains("ov:/etc/x.ww"), "{e}");
}
