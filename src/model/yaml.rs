//! YAML import/export of `nodes.conf` and of single node/profile documents.
//!
//! Design notes:
//! - The schema lives entirely in the serde attributes of `node.rs`; this file only turns
//!   parser errors into [`ModelError::Yaml`] with line, column and field path so an operator can
//!   find the mistake in a 10,000-node file.
//! - An empty document (or one holding only comments) is an empty configuration, as in Warewulf.
//! - Output uses `serde_yaml_ng`'s block style; maps are `BTreeMap`s so output is sorted and
//!   byte-for-byte deterministic (important for replicated state and diffs).
//! - `wwctl node edit` works on a map of name → [`NodeConf`]; [`parse_conf_map`] and
//!   [`to_conf_map_yaml`] serve that. `import` takes either shape ([`parse_import`]); it
//!   decides which from a syntax-only parse, so a syntax error is reported as such, at its
//!   line and column, instead of as an unknown field of the shape it was not.
//! - Every error is reported against the original text: a parse that goes through `Value`
//!   loses positions, so it is used only to decide the shape and for YAML merge keys.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{ModelError, NodeConf, NodesConf};

/// Parse a whole `nodes.conf`. Unknown keys, wrong types and malformed YAML are errors that name
/// the line, column and (when known) the field path.
pub fn parse_nodes_conf(text: &str) -> Result<NodesConf, ModelError> {
    parse_doc(text, "nodes.conf")
}

/// Serialise a whole `nodes.conf` (minimal: unset fields are omitted).
pub fn to_nodes_conf_yaml(conf: &NodesConf) -> Result<String, ModelError> {
    emit(conf, "nodes.conf")
}

/// Parse a single node or profile body (the value under `nodes: {name: ...}`).
pub fn parse_node_conf(text: &str) -> Result<NodeConf, ModelError> {
    parse_doc(text, "node configuration")
}

/// Serialise a single node or profile body.
pub fn to_node_conf_yaml(conf: &NodeConf) -> Result<String, ModelError> {
    emit(conf, "node configuration")
}

/// Parse a map of name → node/profile, the format `wwctl node edit` / `profile edit` show.
pub fn parse_conf_map(text: &str) -> Result<BTreeMap<String, NodeConf>, ModelError> {
    parse_conf_map_as(text, "node list")
}

fn parse_conf_map_as(text: &str, what: &str) -> Result<BTreeMap<String, NodeConf>, ModelError> {
    #[derive(Default, serde::Deserialize)]
    #[serde(transparent)]
    struct M(#[serde(deserialize_with = "super::node::lenient::map_of")] BTreeMap<String, NodeConf>);
    parse_doc::<M>(text, what).map(|m| m.0)
}

/// What `wwctl node import` / `profile import` read (see [`parse_import`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ImportDoc {
    /// A whole `nodes.conf` (`nodeprofiles:` and/or `nodes:` at the top).
    NodesConf(NodesConf),
    /// A bare map of name → node or profile, as `export` and `edit` write it.
    Objects(BTreeMap<String, NodeConf>),
}

/// Parse an import file, a `nodes.conf` document or a map of name → object; `what` names
/// it in errors (the file name). Errors carry the line and column of the problem.
pub fn parse_import(text: &str, what: &str) -> Result<ImportDoc, ModelError> {
    // Syntax first: had the syntax error been left to the typed parse below, a broken
    // `nodes:` document would be read as a map of objects and reported as an object
    // named `nodes` with an unknown field.
    let mut value: Option<serde_yaml_ng::Value> =
        serde_yaml_ng::from_str(text).map_err(|e| yaml_error(what, &e, text))?;
    let is_nodes_conf = value
        .as_ref()
        .is_some_and(|v| v.get("nodes").is_some() || v.get("nodeprofiles").is_some());
    if let Some(v) = value.as_mut().filter(|_| text.contains("id:")) {
        if strip_ids(v, is_nodes_conf, what)? {
            // Rare: parse the edited document (line numbers are lost, paths are not).
            let v = value.take();
            return if is_nodes_conf {
                serde_yaml_ng::from_value::<Option<NodesConf>>(v.unwrap_or_default())
                    .map(|c| ImportDoc::NodesConf(c.unwrap_or_default()))
                    .map_err(|e| yaml_error(what, &e, text))
            } else {
                #[derive(serde::Deserialize)]
                #[serde(transparent)]
                struct M(#[serde(deserialize_with = "super::node::lenient::map_of")] BTreeMap<String, NodeConf>);
                serde_yaml_ng::from_value::<Option<M>>(v.unwrap_or_default())
                    .map(|m| ImportDoc::Objects(m.map(|m| m.0).unwrap_or_default()))
                    .map_err(|e| yaml_error(what, &e, text))
            };
        }
    }
    if is_nodes_conf {
        parse_doc(text, what).map(ImportDoc::NodesConf)
    } else {
        parse_conf_map_as(text, what).map(ImportDoc::Objects)
    }
}

/// Warewulf's import files may repeat each object's name as `id:` (Warewulf ignores it).
/// Drop an `id` that equals its object's name; one that differs is an error, since it is
/// not clear which name was meant. Returns whether anything was dropped.
fn strip_ids(doc: &mut serde_yaml_ng::Value, is_nodes_conf: bool, what: &str) -> Result<bool, ModelError> {
    use serde_yaml_ng::Value;
    let mut maps: Vec<(&str, &mut serde_yaml_ng::Mapping)> = Vec::new();
    if let Value::Mapping(top) = doc {
        if is_nodes_conf {
            for (section, objs) in top.iter_mut() {
                if let (Some(section), Value::Mapping(objs)) = (section.as_str(), objs) {
                    maps.push((section, objs));
                }
            }
        } else {
            maps.push(("", top));
        }
    }
    let mut dropped = false;
    for (section, objs) in maps {
        for (name, obj) in objs.iter_mut() {
            let Value::Mapping(obj) = obj else { continue };
            let Some(id) = obj.get("id") else { continue };
            let name = name.as_str().unwrap_or_default();
            if id.as_str() != Some(name) {
                let prefix = if section.is_empty() {
                    String::new()
                } else {
                    format!("{section}.")
                };
                return Err(ModelError::Yaml {
                    what: what.to_owned(),
                    message: format!(
                        "`id` ({}) differs from the object's name {name:?}; remove the `id` key or rename the object",
                        serde_yaml_ng::to_string(id).unwrap_or_default().trim()
                    ),
                    line: None,
                    column: None,
                    path: Some(format!("{prefix}{name}")),
                });
            }
            obj.remove("id");
            dropped = true;
        }
    }
    Ok(dropped)
}

/// Serialise a map of name → node/profile (see [`parse_conf_map`]).
pub fn to_conf_map_yaml(confs: &BTreeMap<String, NodeConf>) -> Result<String, ModelError> {
    if confs.is_empty() {
        return Ok("{}\n".to_owned());
    }
    emit(confs, "node list")
}

fn parse_doc<T: DeserializeOwned + Default>(text: &str, what: &str) -> Result<T, ModelError> {
    match serde_yaml_ng::from_str::<Option<T>>(text) {
        Ok(v) => Ok(v.unwrap_or_default()),
        // YAML merge keys (`<<: *defaults`), which Warewulf's yaml.v3 honours, need a pass
        // through `Value`; only take it when needed, because it loses line numbers.
        Err(e) if text.contains("<<") => parse_with_merge_keys(text).map_err(|e2| {
            // Report the merged document's own error, unless the failure is unrelated to `<<`.
            if e.to_string().contains("`<<`") {
                yaml_error(what, &e2, text)
            } else {
                yaml_error(what, &e, text)
            }
        }),
        Err(e) => Err(yaml_error(what, &e, text)),
    }
}

fn parse_with_merge_keys<T: DeserializeOwned + Default>(text: &str) -> Result<T, serde_yaml_ng::Error> {
    let mut value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)?;
    value.apply_merge()?;
    serde_yaml_ng::from_value::<Option<T>>(value).map(Option::unwrap_or_default)
}

fn emit<T: Serialize>(value: &T, what: &str) -> Result<String, ModelError> {
    serde_yaml_ng::to_string(value).map_err(|e| ModelError::Emit {
        what: what.to_owned(),
        message: e.to_string(),
    })
}

/// Convert a serde_yaml_ng error on `text` into [`ModelError::Yaml`], splitting out the
/// `path: ` prefix and the ` at line L column C` that the library embeds in its message (the
/// location is shown once, from the fields), and explaining a tab where the parser stopped.
pub(crate) fn yaml_error(what: &str, e: &serde_yaml_ng::Error, text: &str) -> ModelError {
    let loc = e.location();
    let mut message = e.to_string();
    if let Some(l) = &loc {
        message = message.replacen(&format!(" at line {} column {}", l.line(), l.column()), "", 1);
        if char_at(text, l.line(), l.column()) == Some('\t') {
            message.push_str("; YAML does not allow tabs for indentation, indent with spaces");
        }
    }
    let mut path = None;
    // serde_yaml_ng prefixes errors below the document root with "key.key.key: ".
    if let Some((p, rest)) = message.split_once(": ") {
        if looks_like_path(p) {
            path = Some(p.to_owned());
            message = rest.to_owned();
        }
    }
    ModelError::Yaml {
        what: what.to_owned(),
        message,
        line: loc.as_ref().map(|l| l.line()),
        column: loc.as_ref().map(|l| l.column()),
        path,
    }
}

/// The character at 1-based `line` and `column` (counted in characters) of `text`.
fn char_at(text: &str, line: usize, column: usize) -> Option<char> {
    text.lines()
        .nth(line.checked_sub(1)?)?
        .chars()
        .nth(column.checked_sub(1)?)
}

/// Whether the text before the first `": "` of a serde_yaml_ng message is a field path
/// (`nodes.n1.network devices.default`) rather than part of a plain message (`invalid type`).
fn looks_like_path(p: &str) -> bool {
    const PLAIN: [&str; 6] = ["invalid", "unknown", "missing", "duplicate", "found", "did not"];
    !p.is_empty()
        && !p.contains(['`', '"', ','])
        && (p.contains('.') || !p.contains(' '))
        && !PLAIN.iter().any(|w| p.starts_with(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES_CONF: &str = include_str!("testdata/nodes.conf");

    #[test]
    fn realistic_round_trip() {
        let conf = parse_nodes_conf(NODES_CONF).unwrap();
        assert_eq!(conf.nodeprofiles.len(), 2);
        assert_eq!(conf.nodes.len(), 3);
        let n1 = &conf.nodes["n0001"];
        assert_eq!(n1.discoverable, Some(false));
        assert_eq!(n1.asset_key.as_deref(), Some("ABC-123"));
        assert_eq!(n1.network_devices["default"].prefixlen6.as_deref(), Some("64"));
        let n2 = &conf.nodes["n0002"];
        let swap = &n2.disks["/dev/vda"].partitions["swap"];
        assert_eq!(swap.number.as_deref(), Some("2"));
        assert_eq!(swap.size_mib.as_deref(), Some("1024"));
        assert_eq!(conf.nodeprofiles["default"].ipmi.as_ref().unwrap().write, Some(false));
        assert_eq!(conf.nodes["n0003"], NodeConf::default());

        let out = to_nodes_conf_yaml(&conf).unwrap();
        for key in [
            "cluster name:",
            "image name:",
            "ipxe template:",
            "runtime overlay:",
            "system overlay:",
            "network devices:",
            "primary network:",
            "asset key:",
        ] {
            assert!(out.contains(key), "missing {key} in\n{out}");
        }
        let again = parse_nodes_conf(&out).unwrap();
        assert_eq!(conf, again);
        // Emission is deterministic.
        assert_eq!(out, to_nodes_conf_yaml(&again).unwrap());
    }

    #[test]
    fn minimal_output_omits_unset_fields() {
        let mut conf = NodesConf::default();
        conf.nodes.insert("n1".into(), NodeConf::default());
        let out = to_nodes_conf_yaml(&conf).unwrap();
        assert_eq!(out, "nodes:\n  n1: {}\n");
    }

    #[test]
    fn empty_document_is_empty_config() {
        assert_eq!(parse_nodes_conf("").unwrap(), NodesConf::default());
        assert_eq!(parse_nodes_conf("# only a comment\n").unwrap(), NodesConf::default());
        assert_eq!(
            parse_nodes_conf("nodeprofiles:\nnodes:\n  n1:\n").unwrap().nodes["n1"],
            NodeConf::default()
        );
    }

    #[test]
    fn legacy_and_lenient_inputs() {
        let c = parse_node_conf(
            "container name: rocky\nkernel:\n  args: quiet  crashkernel=no\nsystem overlay: wwinit, generic\ndiscoverable: yes\ncomment: ''\n",
        )
        .unwrap();
        assert_eq!(c.image_name.as_deref(), Some("rocky"));
        assert_eq!(c.kernel.unwrap().args, vec!["quiet", "crashkernel=no"]);
        assert_eq!(c.system_overlay, vec!["wwinit", "generic"]);
        assert_eq!(c.discoverable, Some(true));
        assert_eq!(c.comment, None);
    }

    #[test]
    fn unknown_field_is_an_error_with_location_and_path() {
        let err = parse_nodes_conf("nodes:\n  n1:\n    kernel:\n      verison: 6.1\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("verison"), "{msg}");
        assert!(msg.contains("line 4"), "{msg}");
        assert!(msg.contains("fix the YAML"), "{msg}");
        match err {
            ModelError::Yaml { path, line, .. } => {
                assert_eq!(line, Some(4));
                assert_eq!(path.as_deref(), Some("nodes.n1.kernel"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = parse_nodes_conf("nodes:\n  n1:\n    clustername: x\n").unwrap_err();
        assert!(err.to_string().contains("clustername"), "{err}");
    }

    #[test]
    fn malformed_yaml_is_an_error() {
        let err = parse_nodes_conf("nodes:\n  n1: [unclosed\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("nodes.conf is not valid"), "{msg}");
        assert!(matches!(err, ModelError::Yaml { line: Some(_), .. }), "{err:?}");

        let err = parse_nodes_conf("nodes:\n  n1:\n    discoverable: maybe\n").unwrap_err();
        assert!(err.to_string().contains("invalid boolean"), "{err}");

        let err = parse_nodes_conf("nodes:\n  n1:\n    tags: [a, b]\n").unwrap_err();
        assert!(
            err.to_string().contains("nodes.n1.tags") || err.to_string().contains("tags"),
            "{err}"
        );
    }

    /// `(document, line, column, words the message must contain)`.
    const MALFORMED_IMPORTS: &[(&str, usize, usize, &[&str])] = &[
        // Bad indentation: a key less indented than its siblings.
        (
            "nodes:\n  n1:\n    comment: x\n   kernel: {}\n",
            4,
            4,
            &["did not find expected key"],
        ),
        // Bad indentation: a key more indented than its siblings.
        (
            "nodes:\n  n1:\n    comment: x\n      kernel: {}\n",
            4,
            13,
            &["mapping values are not allowed"],
        ),
        // A tab used for indentation, in each shape.
        ("nodes:\n  n1:\n\tcomment: x\n", 3, 1, &["tabs", "indent with spaces"]),
        ("nodes:\n  n1:\n    comment: x\n\tkernel: {}\n", 4, 1, &["tab"]),
        ("n1:\n\tcomment: x\n", 2, 1, &["tabs", "indent with spaces"]),
        // An unclosed flow sequence.
        ("nodes:\n  n1: [unclosed\n", 3, 1, &["']'"]),
        // A wrong type for known fields.
        (
            "nodes:\n  n1:\n    discoverable: maybe\n",
            3,
            19,
            &["nodes.n1.discoverable", "invalid boolean \"maybe\""],
        ),
        (
            "nodeprofiles:\n  p:\n    network devices: [eth0]\n",
            3,
            22,
            &["nodeprofiles.p.network devices", "expected a map"],
        ),
        ("n1:\n  kernel: 5\n", 2, 11, &["n1.kernel", "invalid type: integer `5`"]),
        // A name given twice.
        (
            "nodes:\n  n1: {}\n  n1: {}\n",
            2,
            3,
            &["duplicate entry with key \"n1\""],
        ),
        // Unknown fields are refused, by name.
        (
            "nodes:\n  n1:\n    imagename: x\n",
            3,
            5,
            &["at nodes.n1", "unknown field `imagename`", "`image name`"],
        ),
        (
            "n1:\n  ipmi:\n    adress: x\n",
            3,
            5,
            &["at n1.ipmi", "unknown field `adress`"],
        ),
    ];

    #[test]
    fn import_errors_name_the_line_and_column() {
        for (doc, line, column, words) in MALFORMED_IMPORTS {
            let err = parse_import(doc, "bad.yaml").unwrap_err();
            let msg = err.to_string();
            match &err {
                ModelError::Yaml { line: l, column: c, .. } => {
                    assert_eq!((*l, *c), (Some(*line), Some(*column)), "{doc:?}: {msg}")
                }
                other => panic!("{doc:?}: unexpected {other:?}"),
            }
            assert!(
                msg.starts_with(&format!("bad.yaml is not valid (line {line}, column {column})")),
                "{doc:?}: {msg}"
            );
            for w in *words {
                assert!(msg.contains(w), "{doc:?}: expected {w:?} in {msg}");
            }
            // The position is said once (a parser's context, "while parsing a block mapping
            // at line 2 column 3", may follow), and a syntax error is not reported as a
            // field of an object that does not exist.
            assert!(
                !msg.contains(&format!("at line {line} column {column}")),
                "{doc:?}: {msg}"
            );
            assert!(!msg.contains("unknown field `n1`"), "{doc:?}: {msg}");
        }
    }

    #[test]
    fn import_takes_either_shape() {
        let conf = parse_nodes_conf(NODES_CONF).unwrap();
        assert_eq!(
            parse_import(NODES_CONF, "f").unwrap(),
            ImportDoc::NodesConf(conf.clone())
        );
        let map = to_conf_map_yaml(&conf.nodes).unwrap();
        assert_eq!(parse_import(&map, "f").unwrap(), ImportDoc::Objects(conf.nodes));
        let only_profiles = "nodeprofiles:\n  p: {comment: x}\n";
        assert!(matches!(
            parse_import(only_profiles, "f").unwrap(),
            ImportDoc::NodesConf(c) if c.nodeprofiles.contains_key("p") && c.nodes.is_empty()
        ));
        assert_eq!(parse_import("", "f").unwrap(), ImportDoc::Objects(BTreeMap::new()));
    }

    #[test]
    fn import_drops_an_id_that_repeats_the_name() {
        // Warewulf's own import test file carries `id:`.
        let text = "n1:\n  id: n1\n  profiles:\n  - default\n  network devices:\n    eth0:\n      ipaddr: 10.0.0.1\n";
        let ImportDoc::Objects(m) = parse_import(text, "f").unwrap() else {
            panic!("a map of objects")
        };
        assert_eq!(m["n1"].profiles, ["default"]);
        assert_eq!(m["n1"].network_devices["eth0"].ipaddr.as_deref(), Some("10.0.0.1"));
        let ImportDoc::NodesConf(c) = parse_import("nodes:\n  n2:\n    id: n2\n    comment: x\n", "f").unwrap() else {
            panic!("a nodes.conf")
        };
        assert_eq!(c.nodes["n2"].comment.as_deref(), Some("x"));
        // An id naming another object is refused, saying which.
        let e = parse_import("nodes:\n  n2:\n    id: n3\n", "f")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("n3") && e.contains("nodes.n2") && e.contains("remove the `id` key"),
            "{e}"
        );
        // Other unknown keys are still errors after the id is dropped.
        let e = parse_import("n1:\n  id: n1\n  imagename: x\n", "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("imagename"), "{e}");
    }

    #[test]
    fn merge_keys_are_honoured() {
        let text =
            "nodes:\n  n1: &base\n    comment: shared\n    tags: {a: '1'}\n  n2:\n    <<: *base\n    comment: mine\n";
        let conf = parse_nodes_conf(text).unwrap();
        assert_eq!(conf.nodes["n2"].comment.as_deref(), Some("mine"));
        assert_eq!(conf.nodes["n2"].tags["a"], "1");
        // A real error in a document with merge keys still reports the original location.
        let err = parse_nodes_conf("nodes:\n  n1: &b {comment: x}\n  n2:\n    <<: *b\n    bogus: 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let err = parse_nodes_conf("nodes:\n  n1: {}\n  n1: {}\n").unwrap_err();
        assert!(err.to_string().contains("n1"), "{err}");
    }

    #[test]
    fn conf_map_round_trip() {
        let conf = parse_nodes_conf(NODES_CONF).unwrap();
        let text = to_conf_map_yaml(&conf.nodes).unwrap();
        assert!(text.starts_with("n0001:"), "{text}");
        assert_eq!(parse_conf_map(&text).unwrap(), conf.nodes);
        assert_eq!(to_conf_map_yaml(&BTreeMap::new()).unwrap(), "{}\n");
        assert!(parse_conf_map("{}").unwrap().is_empty());
        let one = to_node_conf_yaml(&conf.nodes["n0001"]).unwrap();
        assert_eq!(parse_node_conf(&one).unwrap(), conf.nodes["n0001"]);
    }
}

/// Fuzzing (issue 12, part 6): `nodes.conf` text from a user or an import — a real file
/// with lines dropped, duplicated, re-indented or bytes changed, and random YAML-ish
/// text — parses or is refused with an error; it never panics, and what parses writes
/// back out and parses again to the same value.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    const NODES_CONF: &str = include_str!("testdata/nodes.conf");

    #[derive(Debug, Clone)]
    enum Edit {
        Drop(usize),
        Dup(usize),
        Indent(usize, usize),
        Replace(usize, String),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            any::<usize>().prop_map(Edit::Drop),
            any::<usize>().prop_map(Edit::Dup),
            (any::<usize>(), 0usize..6).prop_map(|(l, n)| Edit::Indent(l, n)),
            (any::<usize>(), "[ -~]{0,30}").prop_map(|(l, s)| Edit::Replace(l, s)),
        ]
    }

    fn apply(edits: &[Edit]) -> String {
        let mut lines: Vec<String> = NODES_CONF.lines().map(str::to_owned).collect();
        for e in edits {
            let n = lines.len().max(1);
            match e {
                Edit::Drop(i) if !lines.is_empty() => {
                    lines.remove(i % n);
                }
                Edit::Dup(i) if !lines.is_empty() => {
                    let l = lines[i % n].clone();
                    lines.insert(i % n, l);
                }
                Edit::Indent(i, k) if !lines.is_empty() => {
                    let l = &mut lines[i % n];
                    *l = format!("{}{}", " ".repeat(*k), l.trim_start());
                }
                Edit::Replace(i, s) if !lines.is_empty() => lines[i % n] = s.clone(),
                _ => {}
            }
        }
        lines.join("\n")
    }

    fn round_trips(text: &str) -> Result<(), TestCaseError> {
        if let Ok(conf) = parse_nodes_conf(text) {
            let out = to_nodes_conf_yaml(&conf).map_err(|e| TestCaseError::fail(format!("write-back: {e}")))?;
            let again = parse_nodes_conf(&out)
                .map_err(|e| TestCaseError::fail(format!("what we wrote does not parse: {e}\n{out}")))?;
            prop_assert_eq!(again, conf);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn edited_real_files_parse_or_are_refused(edits in proptest::collection::vec(edit(), 1..5)) {
            round_trips(&apply(&edits))?;
        }

        #[test]
        fn random_text_parses_or_is_refused(text in "[a-z:{}\\[\\], \n\"'&*!|>-]{0,200}") {
            round_trips(&text)?;
        }
    }
}
