//! Warewulf 4.7's own overlay golden tests, rendered with OUR templates.
//!
//! Reads `shared/ww-conformance/overlays-v4.7.0.json` (found by walking up from the crate,
//! or at `$WW_CONFORMANCE_DIR`); each case gives a nodes.conf, warewulf.conf layers, the
//! node, the template path and Warewulf's exact `wwctl overlay show --render` output. We
//! render `cluster/overlays/<overlay>/rootfs/<file>` for the node and print what
//! `overlay show` prints (`backupFile:/writeFile:/Filename:` headers, `Symlink:`, the
//! content with a final newline added when missing), apply the case's normalization and
//! compare. A case whose template we have not written yet counts as missing.
//!
//! The test fails only when the pass count drops below [`FLOOR`] (a ratchet: raise it as
//! overlays are added). When the data is absent it prints SKIP with the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value as Json;
use wulfpack::model::{merge_effective, parse_nodes_conf, NodeConf, NodesConf};
use wulfpack::overlay::render::{AccessError, AccessPolicy, BuildData, BuildInfo, FileAccess, ServerConf, Templates};

/// Cases that must pass (raise when more pass; never lower to make a change pass).
const FLOOR: usize = 98;

/// The host name `overlay show` runs on (Warewulf's `os.Hostname()`); the `%HOSTNAME%`
/// placeholders in expected outputs are replaced with it.
const HOST: &str = "wwtest-head";

fn data_file() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("WW_CONFORMANCE_DIR") {
        return Some(PathBuf::from(d).join("overlays-v4.7.0.json"));
    }
    let mut dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")));
    while let Some(d) = dir {
        let p = d.join("shared/ww-conformance/overlays-v4.7.0.json");
        if p.exists() {
            return Some(p);
        }
        dir = d.parent();
    }
    None
}

/// The test tree's files in memory: host paths (`/etc/...`) and image files.
#[derive(Debug, Default)]
struct Mem {
    files: BTreeMap<String, String>,
}

fn not_found(path: &str) -> AccessError {
    AccessError::Io {
        path: path.into(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    }
}

impl FileAccess for Mem {
    fn host_file(&self, path: &str) -> Result<String, AccessError> {
        self.files.get(path).cloned().ok_or_else(|| not_found(path))
    }
    fn image_file(&self, image: &str, path: &str) -> Result<String, AccessError> {
        let p = format!("/var/lib/warewulf/chroots/{image}/rootfs{path}");
        self.files.get(&p).cloned().ok_or_else(|| not_found(&p))
    }
    fn host_readlink(&self, path: &str) -> Result<String, AccessError> {
        Err(not_found(path))
    }
}

/// nodes.conf as Warewulf reads it: keys it silently ignores are dropped (our parser refuses
/// them), profiles referenced but not defined are defined empty (Warewulf warns and skips).
fn lenient_nodes_conf(text: &str) -> Result<NodesConf, String> {
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    for _ in 0..50 {
        let text = serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())?;
        match parse_nodes_conf(&text) {
            Ok(mut conf) => {
                let mut missing = Vec::new();
                for n in conf.nodes.values().chain(conf.nodeprofiles.values()) {
                    for p in &n.profiles {
                        let p = p.trim_start_matches('~');
                        if !conf.nodeprofiles.contains_key(p) {
                            missing.push(p.to_owned());
                        }
                    }
                }
                for p in missing {
                    conf.nodeprofiles.entry(p).or_default();
                }
                return Ok(conf);
            }
            Err(e) => {
                let msg = e.to_string();
                let Some(field) = msg.split("unknown field `").nth(1).and_then(|r| r.split('`').next()) else {
                    return Err(msg);
                };
                if !drop_key(&mut doc, field) {
                    return Err(msg);
                }
            }
        }
    }
    Err("too many unknown keys".into())
}

/// Remove the first mapping key named `field` (depth first); true when one was removed.
fn drop_key(v: &mut serde_yaml_ng::Value, field: &str) -> bool {
    if let serde_yaml_ng::Value::Mapping(m) = v {
        let k = serde_yaml_ng::Value::String(field.to_owned());
        // Top-level sections (nodes, nodeprofiles) are known; look inside entries first.
        for (_, child) in m.iter_mut() {
            if drop_key(child, field) {
                return true;
            }
        }
        if m.contains_key(&k) {
            m.remove(&k);
            return true;
        }
    }
    false
}

fn normalize(case: &Json, expected: &mut String, actual: &mut String) {
    let empty = Vec::new();
    for n in case["normalize"].as_array().unwrap_or(&empty) {
        match n["kind"].as_str() {
            Some("placeholder") => {
                *expected = expected.replace(n["placeholder"].as_str().unwrap_or("%HOSTNAME%"), HOST);
            }
            Some("regex_replace") => {
                let re = regex::Regex::new(n["pattern"].as_str().unwrap()).unwrap();
                *actual = re.replace_all(actual, n["replacement"].as_str().unwrap()).into_owned();
            }
            Some("skip_header") => {
                let header = n["header"].as_str().unwrap();
                let mut out = String::new();
                let mut on = false;
                for line in actual.split_inclusive('\n') {
                    on = on || line.contains(header);
                    if on
                        || line.starts_with("backupFile:")
                        || line.starts_with("writeFile:")
                        || line.starts_with("Filename:")
                    {
                        out.push_str(line);
                    }
                }
                *actual = out;
            }
            _ => {}
        }
    }
}

/// `wwctl overlay info`: the description (Warewulf logs it; `expected`) and the
/// variables table (its stdout; `expected_stdout`), from the template's own comments.
fn info_case(case: &Json, root: &Path) -> Outcome {
    let overlay = case["overlay"].as_str().unwrap();
    let file = case["file"].as_str().unwrap();
    let tpath = root
        .join("cluster/overlays")
        .join(overlay)
        .join("rootfs")
        .join(file.trim_start_matches('/'));
    let Ok(text) = std::fs::read_to_string(&tpath) else {
        return Outcome::Missing(format!("{} not written", tpath.display()));
    };
    let info = wulfpack::overlay::render::info::template_info(&text);
    let description = format!("{}\n", info.description);
    let table = wulfpack::overlay::render::info::variables_table(&info.variables);
    let (want_doc, want_table) = (
        case["expected"].as_str().unwrap_or_default(),
        case["expected_stdout"].as_str().unwrap_or_default(),
    );
    if description != want_doc {
        return Outcome::Fail(format!("description:\n{description:?}\nwant:\n{want_doc:?}"));
    }
    if table != want_table {
        return Outcome::Fail(format!("table:\n{table:?}\nwant:\n{want_table:?}"));
    }
    Outcome::Pass
}

enum Outcome {
    Pass,
    Fail(String),
    Missing(String),
}

fn run_case(case: &Json, root: &Path) -> Outcome {
    let overlay_arg = case["overlay_arg"].as_str().unwrap();
    let overlay = case["overlay"].as_str().unwrap();
    let file = case["file"].as_str().unwrap();
    if case["command"] == "overlay info" {
        return info_case(case, root);
    }
    if case["command"] != "overlay show" {
        return Outcome::Missing(format!("{} (not a command we run)", case["command"]));
    }
    let ov_dir = [overlay_arg, overlay]
        .iter()
        .map(|o| root.join("cluster/overlays").join(o))
        .find(|d| d.exists());
    let Some(ov_dir) = ov_dir else {
        return Outcome::Missing(format!("overlay {overlay_arg} not written"));
    };
    let tpath = ov_dir.join("rootfs").join(file.trim_start_matches('/'));
    let Ok(text) = std::fs::read_to_string(&tpath) else {
        return Outcome::Missing(format!("{} not written", tpath.display()));
    };

    let conf = match lenient_nodes_conf(case["nodes_conf"].as_str().unwrap_or("")) {
        Ok(c) => c,
        Err(e) => return Outcome::Fail(format!("nodes.conf: {e}")),
    };
    let mut merged: BTreeMap<String, NodeConf> = BTreeMap::new();
    for (name, n) in &conf.nodes {
        match merge_effective(name, n, &conf.nodeprofiles) {
            Ok(m) => {
                merged.insert(name.clone(), m);
            }
            Err(e) => return Outcome::Fail(format!("merge {name}: {e}")),
        }
    }
    let layers: Vec<&str> = case["warewulf_conf_layers"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| l.as_str()).collect())
        .unwrap_or_default();
    let server = match ServerConf::from_layers(layers) {
        Ok(s) => s,
        Err(e) => return Outcome::Fail(e.to_string()),
    };

    let mut mem = Mem::default();
    if let Some(obj) = case["extra_files"].as_object() {
        for (p, c) in obj {
            mem.files.insert(format!("/{p}"), c.as_str().unwrap_or("").to_owned());
        }
    }
    if let Some(w) = case["warewulf_conf"].as_str() {
        mem.files.insert("/etc/warewulf/warewulf.conf".into(), w.to_owned());
    }
    let mut templates = Templates::new(Arc::new(mem), AccessPolicy::default());
    if let Err(e) = templates.add(overlay_arg, file, &text) {
        return Outcome::Fail(e.to_string());
    }
    let build = BuildInfo {
        host: HOST.into(),
        time: "now".into(),
        time_unix: 0,
        source: "test".into(),
    };
    let data = BuildData::new(&server, merged.iter().map(|(k, v)| (k.as_str(), v)), &build);
    let node = case["node"].as_str().unwrap_or("");
    let mut nd = if merged.contains_key(node) {
        data.node(node, None)
    } else {
        // Warewulf renders an unknown node as a new empty node named after the host.
        let mut nd = data.node(HOST, Some(&NodeConf::default()));
        nd.set("ClusterName", HOST);
        nd
    };
    let files = match templates.render(overlay_arg, file, &mut nd) {
        Ok(f) => f,
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    let quiet = case["quiet"].as_bool().unwrap_or(false);
    let mut actual = wulfpack::overlay::render::show(&files, quiet);
    let mut expected = case["expected"].as_str().unwrap_or("").to_owned();
    normalize(case, &mut expected, &mut actual);
    let same = if case["compare"] == "json" {
        serde_json::from_str::<Json>(&actual).ok() == serde_json::from_str::<Json>(&expected).ok()
            && serde_json::from_str::<Json>(&expected).is_ok()
    } else {
        actual == expected
    };
    if same {
        Outcome::Pass
    } else {
        Outcome::Fail(diff(&expected, &actual))
    }
}

/// A short line diff: the first differing line with context, and both lengths.
fn diff(expected: &str, actual: &str) -> String {
    let e: Vec<&str> = expected.split('\n').collect();
    let a: Vec<&str> = actual.split('\n').collect();
    let first = (0..e.len().max(a.len())).find(|&i| e.get(i) != a.get(i)).unwrap_or(0);
    let mut s = format!("first difference at line {}:\n", first + 1);
    for i in first.saturating_sub(2)..(first + 4).min(e.len().max(a.len())) {
        if e.get(i) == a.get(i) {
            s.push_str(&format!("    {:?}\n", e.get(i).unwrap_or(&"")));
        } else {
            s.push_str(&format!("  - {:?}\n  + {:?}\n", e.get(i), a.get(i)));
        }
    }
    s
}

#[test]
fn warewulf_overlay_cases() {
    let Some(path) = data_file().filter(|p| p.exists()) else {
        println!(
            "SKIP overlay cases: shared/ww-conformance/overlays-v4.7.0.json not found above {} (set WW_CONFORMANCE_DIR)",
            env!("CARGO_MANIFEST_DIR")
        );
        return;
    };
    let cases: Vec<Json> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (mut pass, mut fail, mut missing, mut skipped) = (0, 0, 0, 0);
    let mut report = String::new();
    for case in &cases {
        let name = format!(
            "{}/{}",
            case["overlay"].as_str().unwrap_or(""),
            case["test"].as_str().unwrap_or("")
        );
        if !case["skipped"].is_null() {
            skipped += 1;
            println!("SKIPPED {name}: {}", case["skipped"]);
            continue;
        }
        match run_case(case, root) {
            Outcome::Pass => {
                pass += 1;
                println!("PASS {name}");
            }
            Outcome::Fail(why) => {
                fail += 1;
                println!("FAIL {name}");
                report.push_str(&format!("--- FAIL {name}\n{why}\n"));
            }
            Outcome::Missing(why) => {
                missing += 1;
                println!("MISSING {name}: {why}");
            }
        }
    }
    println!("{report}");
    println!("overlay cases: {pass} passed, {fail} failed, {missing} missing ({skipped} skipped upstream)");
    assert!(
        pass >= FLOOR,
        "overlay conformance dropped: {pass} passed, floor is {FLOOR} (see the FAIL diffs above)"
    );
}

/// Render throughput over the whole distribution set we ship, for many nodes: printed, not
/// asserted (docs/PERFORMANCE.md records the benchmark). Run with `--release --nocapture`.
#[test]
fn render_throughput_is_printed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/overlays");
    let mut templates = Templates::new(Arc::new(Mem::default()), AccessPolicy::default());
    let mut list = Vec::new();
    for ov in ["hostname", "hosts", "issue", "resolv", "fstab", "wwclient", "chrony"] {
        let base = root.join(ov).join("rootfs");
        for entry in walk(&base) {
            let rel = format!("/{}", entry.strip_prefix(&base).unwrap().display());
            if rel.ends_with(".ww") && entry.is_file() {
                let text = std::fs::read_to_string(&entry).unwrap();
                templates.add(ov, &rel, &text).unwrap();
                list.push((ov, rel));
            }
        }
    }
    if list.is_empty() {
        println!("SKIP throughput: no templates under {}", root.display());
        return;
    }
    let n = 2000;
    let mut nodes = BTreeMap::new();
    for i in 0..n {
        let conf = parse_nodes_conf(&format!(
            "nodes:\n  n{i:05}:\n    image name: rocky\n    kernel:\n      args: quiet\n    network devices:\n      default:\n        device: eth0\n        hwaddr: 02:00:00:00:{:02x}:{:02x}\n        ipaddr: 10.0.{}.{}\n        netmask: 255.255.0.0\n",
            i / 256,
            i % 256,
            i / 256,
            i % 256
        ))
        .unwrap();
        nodes.extend(conf.nodes);
    }
    let server = ServerConf::from_yaml("ipaddr: 10.0.255.254/16\n").unwrap();
    let t0 = Instant::now();
    let data = BuildData::new(&server, nodes.iter().map(|(k, v)| (k.as_str(), v)), &BuildInfo::now());
    let shared = t0.elapsed();
    // Per template, so a template whose output grows with the cluster (hosts: one line per
    // node, for every node) does not hide the others' cost.
    let mut renders = 0usize;
    let mut total = std::time::Duration::ZERO;
    for (ov, rel) in &list {
        let t1 = Instant::now();
        let mut bytes = 0usize;
        for name in nodes.keys() {
            let mut nd = data.node(name, None);
            let files = templates.render(ov, rel, &mut nd).unwrap();
            renders += 1;
            bytes += files.iter().map(|f| f.content.len()).sum::<usize>();
        }
        let dt = t1.elapsed();
        total += dt;
        println!(
            "render throughput: {ov}{rel}: {n} nodes in {:.3}s = {:.0} renders/s ({} bytes/node, reads node fields: {})",
            dt.as_secs_f64(),
            n as f64 / dt.as_secs_f64(),
            bytes / n,
            templates.reads_node(ov, rel).unwrap()
        );
    }
    println!(
        "render throughput: {renders} renders ({} templates x {n} nodes) in {:.3}s; shared data (AllNodes) built once in {:.3}s",
        list.len(),
        total.as_secs_f64(),
        shared.as_secs_f64()
    );
    assert_eq!(renders, list.len() * n);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
