//! Field-level edits (`wwctl node set/unset`, `profile set/unset`) as data, so a replicated
//! state machine can log them and apply them deterministically on every head.
//!
//! Design notes:
//! - Paths are YAML keys as in `nodes.conf` (`["network devices", "default", "hwaddr"]`), so
//!   there is exactly one naming scheme, and the schema is not duplicated: a patch is applied
//!   to the `serde_json::Value` form of the [`NodeConf`] and the result is deserialised back with
//!   `deny_unknown_fields`. Each path is first checked by deserialising a probe document that
//!   holds only that path, so an unknown field is reported with the field's name even for
//!   `Unset` of something that is not there.
//! - Values go through the same lenient deserialisers as YAML input, so `Set kernel.args` to
//!   `"quiet splash"` stores two arguments, `Set mtu` to `9000` stores `"9000"`, and
//!   `Set onboot` to `"yes"` stores `true`.
//! - All or nothing: the patch is applied to a copy; on any error `conf` is left untouched.
//! - After applying: MAC addresses are normalised to lowercase colon form, empty `kernel`/`ipmi`
//!   blocks and network devices the patch emptied are dropped, and [`validate_conf`] runs, so invalid values never get stored.
//! - `Set` with `null` is the same as `Unset`; `Unset` of a missing value is a no-op (idempotent
//!   replay); `Append` skips values already present; `Remove` deletes every occurrence and drops
//!   the list when it becomes empty.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{display_path, normalize_mac, validate_conf, ModelError, NetDev, NodeConf};

/// One edit of one field. `path` uses `nodes.conf` YAML keys, e.g. `["image name"]`,
/// `["network devices", "default", "hwaddr"]`, `["kernel", "args"]`, `["tags", "foo"]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PatchOp {
    /// Replace the value at `path` (creating intermediate maps as needed).
    Set {
        /// The field (YAML keys).
        path: Vec<String>,
        /// The new value; `null` unsets.
        value: Value,
    },
    /// Remove the field or map entry at `path`.
    Unset {
        /// The field or map entry (YAML keys).
        path: Vec<String>,
    },
    /// Add strings to the list at `path`, skipping ones already present.
    Append {
        /// The list field (YAML keys).
        path: Vec<String>,
        /// Strings to add, in order.
        values: Vec<String>,
    },
    /// Remove every occurrence of the strings from the list at `path`.
    Remove {
        /// The list field (YAML keys).
        path: Vec<String>,
        /// Strings to remove.
        values: Vec<String>,
    },
}

/// A sequence of edits applied atomically.
pub type Patch = Vec<PatchOp>;

fn to_path(path: &[&str]) -> Vec<String> {
    path.iter().map(|s| (*s).to_owned()).collect()
}

impl PatchOp {
    /// `Set` from a `&str` path.
    pub fn set(path: &[&str], value: impl Into<Value>) -> Self {
        PatchOp::Set {
            path: to_path(path),
            value: value.into(),
        }
    }

    /// `Unset` from a `&str` path.
    pub fn unset(path: &[&str]) -> Self {
        PatchOp::Unset { path: to_path(path) }
    }

    /// `Append` from a `&str` path.
    pub fn append(path: &[&str], values: &[&str]) -> Self {
        PatchOp::Append {
            path: to_path(path),
            values: to_path(values),
        }
    }

    /// `Remove` from a `&str` path.
    pub fn remove(path: &[&str], values: &[&str]) -> Self {
        PatchOp::Remove {
            path: to_path(path),
            values: to_path(values),
        }
    }

    /// The field this op edits.
    pub fn path(&self) -> &[String] {
        match self {
            PatchOp::Set { path, .. }
            | PatchOp::Unset { path }
            | PatchOp::Append { path, .. }
            | PatchOp::Remove { path, .. } => path,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            PatchOp::Set { .. } => "set",
            PatchOp::Unset { .. } => "unset",
            PatchOp::Append { .. } => "append",
            PatchOp::Remove { .. } => "remove",
        }
    }
}

/// Apply `patch` to `conf` atomically, then normalise MACs and validate. On error `conf` is
/// unchanged and the error names the offending path.
pub fn apply_patch(conf: &mut NodeConf, patch: &[PatchOp]) -> Result<(), ModelError> {
    apply_patch_named("the patched node or profile", conf, patch)
}

/// [`apply_patch`] with the node or profile name used in validation messages.
pub fn apply_patch_named(name: &str, conf: &mut NodeConf, patch: &[PatchOp]) -> Result<(), ModelError> {
    for op in patch {
        check_path(op.path())?;
    }
    let original = to_value(conf)?;
    let mut doc = original.clone();
    for op in patch {
        apply_op(&mut doc, op)?;
    }
    prune(&mut doc);
    let mut new: NodeConf = match serde_json::from_value(doc) {
        Ok(c) => c,
        Err(_) => return Err(find_failing_op(original, patch)),
    };
    // A network device the patch left with no field at all is dropped, as Warewulf does:
    // `unset n1 ipaddr` on a device that held only an address removes the device, so it is
    // no longer listed or rendered. Devices the patch did not touch stay as they are.
    for op in patch {
        if let [first, dev, ..] = op.path() {
            if first == "network devices" && new.network_devices.get(dev).is_some_and(|d| *d == NetDev::default()) {
                new.network_devices.remove(dev);
            }
        }
    }
    for nd in new.network_devices.values_mut() {
        if let Some(mac) = &mut nd.hwaddr {
            if let Ok(norm) = normalize_mac(mac) {
                *mac = norm;
            }
        }
    }
    validate_conf(name, &new)?;
    *conf = new;
    Ok(())
}

fn to_value(conf: &NodeConf) -> Result<Value, ModelError> {
    serde_json::to_value(conf).map_err(|e| ModelError::Emit {
        what: "node configuration".to_owned(),
        message: e.to_string(),
    })
}

/// Reject paths that name no field, by deserialising a document holding only that path.
fn check_path(path: &[String]) -> Result<(), ModelError> {
    if path.is_empty() {
        return Err(ModelError::PatchPath {
            path: Vec::new(),
            reason: "the path is empty; name a field such as [\"comment\"]".to_owned(),
        });
    }
    let probe = path
        .iter()
        .rev()
        .fold(Value::Null, |inner, key| single(key.clone(), inner));
    serde_json::from_value::<NodeConf>(probe)
        .map(drop)
        .map_err(|e| ModelError::PatchPath {
            path: path.to_vec(),
            reason: format!(
                "{e}; use the YAML keys of nodes.conf, e.g. [\"network devices\", \"default\", \"hwaddr\"]"
            ),
        })
}

fn single(key: String, value: Value) -> Value {
    let mut m = Map::new();
    m.insert(key, value);
    Value::Object(m)
}

/// Find which op makes the document fail to deserialise, and describe why.
fn find_failing_op(mut doc: Value, patch: &[PatchOp]) -> ModelError {
    for op in patch {
        // Ops already succeeded structurally once, so apply_op cannot fail here.
        let _ = apply_op(&mut doc, op);
        let mut probe = doc.clone();
        prune(&mut probe);
        if let Err(e) = serde_json::from_value::<NodeConf>(probe) {
            return ModelError::PatchValue {
                op: op.name().to_owned(),
                path: op.path().to_vec(),
                reason: e.to_string(),
            };
        }
    }
    ModelError::PatchValue {
        op: "patch".to_owned(),
        path: Vec::new(),
        reason: "the result is not a valid node configuration".to_owned(),
    }
}

fn value_error(op: &PatchOp, reason: impl Into<String>) -> ModelError {
    ModelError::PatchValue {
        op: op.name().to_owned(),
        path: op.path().to_vec(),
        reason: reason.into(),
    }
}

/// Walk to the map holding the last path element, creating maps if `create`.
fn parent_mut<'v>(
    doc: &'v mut Value,
    op: &PatchOp,
    create: bool,
) -> Result<Option<&'v mut Map<String, Value>>, ModelError> {
    let path = op.path();
    let mut cur = doc;
    for (i, key) in path[..path.len() - 1].iter().enumerate() {
        let Value::Object(map) = cur else {
            return Err(value_error(
                op,
                format!("{} holds a single value, not a map", display_path(&path[..i])),
            ));
        };
        if !map.contains_key(key) {
            if !create {
                return Ok(None);
            }
            map.insert(key.clone(), Value::Object(Map::new()));
        }
        cur = map.get_mut(key).expect("present");
        if cur.is_null() && create {
            *cur = Value::Object(Map::new());
        }
    }
    match cur {
        Value::Object(map) => Ok(Some(map)),
        Value::Null => Ok(None),
        _ => Err(value_error(
            op,
            format!(
                "{} holds a single value, not a map",
                display_path(&path[..path.len() - 1])
            ),
        )),
    }
}

fn apply_op(doc: &mut Value, op: &PatchOp) -> Result<(), ModelError> {
    let last = op.path().last().expect("checked non-empty").clone();
    match op {
        PatchOp::Set { value, .. } if value.is_null() => unset(doc, op, &last),
        PatchOp::Set { value, .. } => {
            let parent = parent_mut(doc, op, true)?.expect("created");
            parent.insert(last, value.clone());
            Ok(())
        }
        PatchOp::Unset { .. } => unset(doc, op, &last),
        PatchOp::Append { values, .. } => {
            let parent = parent_mut(doc, op, true)?.expect("created");
            let entry = parent.entry(last).or_insert_with(|| Value::Array(Vec::new()));
            if entry.is_null() {
                *entry = Value::Array(Vec::new());
            }
            let Value::Array(list) = entry else {
                return Err(value_error(op, "it is not a list; use set instead"));
            };
            for v in values {
                if !list.iter().any(|x| x.as_str() == Some(v)) {
                    list.push(Value::String(v.clone()));
                }
            }
            Ok(())
        }
        PatchOp::Remove { values, .. } => {
            let Some(parent) = parent_mut(doc, op, false)? else {
                return Ok(());
            };
            match parent.get_mut(&last) {
                None | Some(Value::Null) => Ok(()),
                Some(Value::Array(list)) => {
                    list.retain(|x| !x.as_str().is_some_and(|s| values.iter().any(|v| v == s)));
                    if list.is_empty() {
                        parent.remove(&last);
                    }
                    Ok(())
                }
                Some(_) => Err(value_error(op, "it is not a list; use unset instead")),
            }
        }
    }
}

fn unset(doc: &mut Value, op: &PatchOp, last: &str) -> Result<(), ModelError> {
    if let Some(parent) = parent_mut(doc, op, false)? {
        parent.remove(last);
    }
    Ok(())
}

/// Drop `kernel` / `ipmi` blocks that became empty, so unsetting their last field removes them.
fn prune(doc: &mut Value) {
    if let Value::Object(m) = doc {
        for key in ["kernel", "ipmi"] {
            if m.get(key).is_some_and(|v| v.as_object().is_some_and(Map::is_empty)) {
                m.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_node_conf;
    use serde_json::json;

    fn base() -> NodeConf {
        parse_node_conf(
            "profiles: [default]\ncomment: hello\nkernel:\n  args: [quiet]\nnetwork devices:\n  default:\n    hwaddr: aa:bb:cc:dd:ee:ff\n    ipaddr: 10.0.0.1\ntags:\n  a: '1'\n",
        )
        .unwrap()
    }

    fn patched(ops: &[PatchOp]) -> NodeConf {
        let mut c = base();
        apply_patch(&mut c, ops).unwrap_or_else(|e| panic!("{e}"));
        c
    }

    #[test]
    fn set_and_unset_scalars() {
        let c = patched(&[
            PatchOp::set(&["image name"], "rocky-9"),
            PatchOp::set(&["comment"], "bye"),
            PatchOp::set(&["ipmi", "port"], 623),
            PatchOp::set(&["discoverable"], "yes"),
        ]);
        assert_eq!(c.image_name.as_deref(), Some("rocky-9"));
        assert_eq!(c.comment.as_deref(), Some("bye"));
        assert_eq!(c.ipmi.as_ref().unwrap().port.as_deref(), Some("623"));
        assert_eq!(c.discoverable, Some(true));

        let c = patched(&[PatchOp::unset(&["comment"]), PatchOp::unset(&["init"])]);
        assert_eq!(c.comment, None);
        let c = patched(&[PatchOp::set(&["comment"], Value::Null)]);
        assert_eq!(c.comment, None);
        // Unsetting the last IPMI/kernel field removes the block.
        let c = patched(&[
            PatchOp::set(&["ipmi", "port"], "623"),
            PatchOp::unset(&["ipmi", "port"]),
        ]);
        assert_eq!(c.ipmi, None);
        let c = patched(&[PatchOp::unset(&["kernel", "args"])]);
        assert_eq!(c.kernel, None);
    }

    #[test]
    fn nested_netdev_fields() {
        let c = patched(&[
            PatchOp::set(&["network devices", "default", "hwaddr"], "AA-BB-CC-DD-EE-01"),
            PatchOp::set(&["network devices", "default", "mtu"], 9000),
            PatchOp::set(&["network devices", "ib0", "type"], "infiniband"),
            PatchOp::set(&["network devices", "ib0", "onboot"], true),
            PatchOp::set(&["network devices", "ib0", "tags", "x"], "y"),
        ]);
        let d = &c.network_devices["default"];
        assert_eq!(d.hwaddr.as_deref(), Some("aa:bb:cc:dd:ee:01"));
        assert_eq!(d.mtu.as_deref(), Some("9000"));
        assert_eq!(d.ipaddr.as_deref(), Some("10.0.0.1"));
        let ib = &c.network_devices["ib0"];
        assert_eq!(ib.onboot, Some(true));
        assert_eq!(ib.tags["x"], "y");

        let c = patched(&[PatchOp::unset(&["network devices", "default", "ipaddr"])]);
        assert_eq!(c.network_devices["default"].ipaddr, None);
        assert!(c.network_devices["default"].hwaddr.is_some());
        let c = patched(&[PatchOp::unset(&["network devices", "default"])]);
        assert!(c.network_devices.is_empty());
        // Unsetting a device's last fields removes the device (Warewulf 4.7).
        let c = patched(&[
            PatchOp::unset(&["network devices", "default", "ipaddr"]),
            PatchOp::unset(&["network devices", "default", "hwaddr"]),
        ]);
        assert!(c.network_devices.is_empty(), "{c:?}");
        // ... also when the last thing was a tag.
        let c = patched(&[PatchOp::set(&["network devices", "ib0", "tags", "x"], "y")]);
        let mut c2 = c.clone();
        apply_patch(&mut c2, &[PatchOp::unset(&["network devices", "ib0", "tags", "x"])]).unwrap();
        assert!(!c2.network_devices.contains_key("ib0"), "{c2:?}");
        assert!(c2.network_devices.contains_key("default"));
        // An empty device the patch does not touch is kept (an imported file may name one).
        let mut c3 = parse_node_conf("network devices:\n  eth9: {}\n").unwrap();
        apply_patch(&mut c3, &[PatchOp::set(&["comment"], "x")]).unwrap();
        assert!(c3.network_devices.contains_key("eth9"), "{c3:?}");
        // Whole netdev at once.
        let c = patched(&[PatchOp::set(
            &["network devices", "eth1"],
            json!({"device": "eth1", "ipaddr": "10.0.1.1"}),
        )]);
        assert_eq!(c.network_devices["eth1"].device.as_deref(), Some("eth1"));
    }

    #[test]
    fn tags() {
        let c = patched(&[PatchOp::set(&["tags", "b"], "2"), PatchOp::unset(&["tags", "a"])]);
        assert_eq!(c.tags.len(), 1);
        assert_eq!(c.tags["b"], "2");
        // Unset of a missing entry is a no-op (replays are idempotent).
        assert_eq!(patched(&[PatchOp::unset(&["tags", "zzz"])]), base());
        assert_eq!(patched(&[PatchOp::unset(&["ipmi", "tags", "zzz"])]), base());
    }

    #[test]
    fn lists_append_remove() {
        let c = patched(&[
            PatchOp::append(&["kernel", "args"], &["quiet", "splash", "splash"]),
            PatchOp::append(&["system overlay"], &["wwinit", "generic"]),
            PatchOp::append(&["profiles"], &["gpu"]),
        ]);
        assert_eq!(c.kernel.as_ref().unwrap().args, ["quiet", "splash"]);
        assert_eq!(c.system_overlay, ["wwinit", "generic"]);
        assert_eq!(c.profiles, ["default", "gpu"]);

        let c = patched(&[
            PatchOp::remove(&["kernel", "args"], &["quiet"]),
            PatchOp::remove(&["runtime overlay"], &["x"]),
        ]);
        assert_eq!(c.kernel, None);
        assert!(c.runtime_overlay.is_empty());

        // Set a list from a single string uses the input rules (whitespace split for args).
        let c = patched(&[PatchOp::set(&["kernel", "args"], "quiet crashkernel=no")]);
        assert_eq!(c.kernel.unwrap().args, ["quiet", "crashkernel=no"]);
        let c = patched(&[PatchOp::set(&["runtime overlay"], json!(["a", "b"]))]);
        assert_eq!(c.runtime_overlay, ["a", "b"]);
        let c = patched(&[PatchOp::append(&["filesystems", "/dev/sda1", "options"], &["-f"])]);
        assert_eq!(c.filesystems["/dev/sda1"].options, ["-f"]);
    }

    #[test]
    fn unknown_paths_are_errors() {
        let mut c = base();
        let e = apply_patch(&mut c, &[PatchOp::set(&["network devices", "default", "hwadr"], "x")]).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ModelError::PatchPath { .. }), "{e:?}");
        assert!(msg.contains("\"network devices\".\"default\".\"hwadr\""), "{msg}");
        assert!(msg.contains("unknown field `hwadr`"), "{msg}");
        for path in [
            &["clustername"][..],
            &["kernel", "verison"],
            &["comment", "x"],
            &["tags", "a", "b"],
        ] {
            assert!(apply_patch(&mut c, &[PatchOp::unset(path)]).is_err(), "{path:?}");
        }
        assert!(apply_patch(&mut c, &[PatchOp::unset(&[])])
            .unwrap_err()
            .to_string()
            .contains("empty"));
        // Free-form resources accept any path.
        apply_patch(&mut c, &[PatchOp::set(&["resources", "fstab", "x"], 1)]).unwrap();
        assert_eq!(c.resources["fstab"], json!({"x": 1}));
    }

    #[test]
    fn errors_leave_conf_unchanged() {
        let orig = base();
        let mut c = orig.clone();
        // Valid op followed by an invalid value: nothing is applied.
        let e = apply_patch(
            &mut c,
            &[
                PatchOp::set(&["comment"], "changed"),
                PatchOp::set(&["network devices", "default", "hwaddr"], "nope"),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("Hwaddr"), "{e}");
        assert_eq!(c, orig);
        // Wrong type: error names the op and path.
        let e = apply_patch(
            &mut c,
            &[PatchOp::set(&["comment"], "ok"), PatchOp::set(&["tags"], json!(["a"]))],
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("cannot apply set to \"tags\""), "{msg}");
        assert_eq!(c, orig);
        let e = apply_patch(&mut c, &[PatchOp::append(&["comment"], &["x"])]).unwrap_err();
        assert!(e.to_string().contains("not a list"), "{e}");
        let e = apply_patch(
            &mut c,
            &[PatchOp::set(&["network devices", "default", "ipaddr", "x"], 1)],
        )
        .unwrap_err();
        assert!(matches!(e, ModelError::PatchPath { .. }), "{e:?}");
        let e = apply_patch(&mut c, &[PatchOp::set(&["discoverable"], "maybe")]).unwrap_err();
        assert!(e.to_string().contains("invalid boolean"), "{e}");
        assert_eq!(c, orig);
    }

    #[test]
    fn patch_is_cheap() {
        // Sanity check (not a timing assertion): `node set` on 2,000 nodes.
        let patch = vec![
            PatchOp::set(&["network devices", "default", "mtu"], "9000"),
            PatchOp::append(&["system overlay"], &["extra"]),
        ];
        let start = std::time::Instant::now();
        for _ in 0..2000 {
            let mut c = base();
            apply_patch(&mut c, &patch).unwrap();
        }
        eprintln!("apply_patch: {:?} per node", start.elapsed() / 2000);
    }

    #[test]
    fn ops_serialize_for_the_log() {
        let p: Patch = vec![
            PatchOp::set(&["tags", "x"], "y"),
            PatchOp::remove(&["profiles"], &["a"]),
        ];
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Patch>(&text).unwrap(), p);
    }
}
