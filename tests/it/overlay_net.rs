//! The network-family overlays (`cluster/overlays/{NetworkManager,ifcfg,ifupdown,netplan,
//! systemd.networkd,systemd.netname,udev.netname,wicked}`) on what Warewulf's own golden
//! cases do not cover: a bond with mode/miimon tags and an MTU, an IPv4+IPv6 bond with a
//! VLAN on top (routes and DNS tags on the VLAN), an IPv6-only device that does not start
//! at boot, and a device without a MAC address.
//!
//! Each template is rendered for node `n1` of `golden/overlays/net.nodes.conf` and printed
//! as `wwctl overlay show --render` prints it; the output must equal
//! `golden/overlays/net-<overlay>-<template>.expected`. The golden files were written by
//! rendering and then checked line by line against each tool's documented file format
//! (NetworkManager keyfiles, netplan v2, networkd, ifupdown, initscripts ifcfg, wicked
//! XML). `WULFPACK_BLESS=1` rewrites them after an intended template change; review the
//! diff before committing it. The netplan output is also parsed as YAML and checked for
//! the bond's members and addresses, independent of the golden text.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wulfpack::model::{merge_effective, parse_nodes_conf, NodeConf};
use wulfpack::overlay::render::{
    AccessError, AccessPolicy, BuildData, BuildInfo, FileAccess, RenderedFile, ServerConf, Templates,
};

/// The templates under test: (overlay, template path inside `rootfs`).
const TEMPLATES: &[(&str, &str)] = &[
    ("NetworkManager", "/etc/NetworkManager/conf.d/ww4-unmanaged.ww"),
    (
        "NetworkManager",
        "/etc/NetworkManager/system-connections/ww4-managed.ww",
    ),
    ("ifcfg", "/etc/sysconfig/network-scripts/ifcfg.ww"),
    ("ifcfg", "/etc/sysconfig/network-scripts/route.ww"),
    ("ifupdown", "/etc/network/interfaces.d/default.ww"),
    ("netplan", "/etc/netplan/warewulf.yaml.ww"),
    ("systemd.networkd", "/etc/systemd/network/default.network.ww"),
    ("systemd.netname", "/etc/systemd/network/10-ww4-netname.link.ww"),
    ("udev.netname", "/etc/udev/rules.d/70-persistent-net.rules.ww"),
    ("wicked", "/etc/wicked/ifconfig/ifcfg.xml.ww"),
];

/// These templates read no files.
#[derive(Debug)]
struct NoFiles;

impl FileAccess for NoFiles {
    fn host_file(&self, path: &str) -> Result<String, AccessError> {
        Err(AccessError::Io {
            path: path.into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    }
    fn image_file(&self, _image: &str, path: &str) -> Result<String, AccessError> {
        self.host_file(path)
    }
    fn host_readlink(&self, path: &str) -> Result<String, AccessError> {
        self.host_file(path)
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn golden_dir() -> PathBuf {
    root().join("tests/it/golden/overlays")
}

/// Render one template for node `n1` of the golden nodes.conf.
fn render(overlay: &str, template: &str) -> Vec<RenderedFile> {
    let text = std::fs::read_to_string(golden_dir().join("net.nodes.conf")).expect("golden nodes.conf");
    let conf = parse_nodes_conf(&text).expect("golden nodes.conf parses");
    let merged: BTreeMap<String, NodeConf> = conf
        .nodes
        .iter()
        .map(|(n, c)| (n.clone(), merge_effective(n, c, &conf.nodeprofiles).expect("merge")))
        .collect();
    let server = ServerConf::from_yaml("ipaddr: 10.0.0.1/16\n").expect("server conf");
    let build = BuildInfo {
        host: "head".into(),
        time: "now".into(),
        time_unix: 0,
        source: "test".into(),
    };
    let data = BuildData::new(&server, merged.iter().map(|(k, v)| (k.as_str(), v)), &build);
    let path = root()
        .join("cluster/overlays")
        .join(overlay)
        .join("rootfs")
        .join(template.trim_start_matches('/'));
    let tmpl = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut templates = Templates::new(Arc::new(NoFiles), AccessPolicy::default());
    templates.add(overlay, template, &tmpl).expect("template parses");
    let mut nd = data.node("n1", None);
    templates
        .render(overlay, template, &mut nd)
        .unwrap_or_else(|e| panic!("{overlay}{template}: {e}"))
}

fn golden_name(overlay: &str, template: &str) -> String {
    let base = template.rsplit('/').next().unwrap_or(template).trim_end_matches(".ww");
    format!("net-{overlay}-{base}.expected")
}

#[test]
fn network_overlays_render_bonds_vlans_and_ipv6_as_the_golden_files() {
    let bless = std::env::var_os("WULFPACK_BLESS").is_some();
    let mut failures = Vec::new();
    for (overlay, template) in TEMPLATES {
        let actual = wulfpack::overlay::render::show(&render(overlay, template), false);
        let golden = golden_dir().join(golden_name(overlay, template));
        if bless {
            std::fs::write(&golden, &actual).unwrap();
            println!("BLESSED {}", golden.display());
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
        if actual == expected {
            println!("PASS {overlay}{template}");
        } else {
            println!("FAIL {overlay}{template}\n--- expected\n{expected}--- actual\n{actual}");
            failures.push(format!("{overlay}{template}"));
        }
    }
    assert!(
        failures.is_empty(),
        "rendered output differs from the golden files: {failures:?}"
    );
}

#[test]
fn netplan_output_is_yaml_with_the_bond_and_its_members() {
    let files = render("netplan", "/etc/netplan/warewulf.yaml.ww");
    assert_eq!(files.len(), 1, "one netplan file");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&files[0].content).expect("netplan output is YAML");
    let net = &doc["network"];
    assert_eq!(net["version"].as_u64(), Some(2));
    let bond = &net["bonds"]["bond0"];
    let members: Vec<&str> = bond["interfaces"]
        .as_sequence()
        .expect("bond interfaces")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(members, ["en1", "en2"]);
    let addrs: Vec<&str> = bond["addresses"]
        .as_sequence()
        .expect("bond addresses")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(addrs, ["10.0.0.5/16", "fd00:10::5/64"]);
    assert_eq!(bond["parameters"]["mode"].as_str(), Some("802.3ad"));
    assert_eq!(bond["mtu"].as_u64(), Some(9000));
    // Bond members and the VLAN device are ethernets (netplan's `vlans` section is not
    // written, matching Warewulf), the bond is not.
    let eth = net["ethernets"].as_mapping().expect("ethernets");
    assert!(eth.contains_key("en1") && eth.contains_key("en2") && !eth.contains_key("bond0"));
}
