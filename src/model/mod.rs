//! Warewulf v4.6 `nodes.conf` data model: types, YAML import/export, profile merging with value
//! origins, validation, hostlist expansion and field-level patches.
//!
//! Design notes:
//! - Pure and synchronous: no IO, no async, no global state. Everything here is deterministic so
//!   a replicated state machine can apply the same [`Patch`] on every head and get identical
//!   results.
//! - One error type, [`ModelError`], whose messages say what was wrong *and* what to do, because
//!   they end up verbatim in `wwctl` output.
//! - Submodules are split by concern; everything public is re-exported here so callers write
//!   `model::merge`, `model::NodeConf`, etc.

pub mod defaults;
pub mod digest;
pub mod hostlist;
pub mod merge;
pub mod node;
pub mod patch;
pub mod validate;
pub mod yaml;

pub use defaults::{default_profile, DEFAULT_PROFILE_COMMENT, DEFAULT_PROFILE_YAML};
pub use digest::Digest;
pub use hostlist::*;
pub use merge::{expand_profiles, merge, merge_effective, profile_field_rows, FieldRow, Merged};
pub use node::*;
pub use patch::*;
pub use validate::*;
pub use yaml::*;

/// Every error the model can report. Messages are complete sentences meant for operators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The YAML text could not be parsed or does not match the nodes.conf schema.
    #[error("{what} is not valid{}{}: {message}; fix the YAML and try again", location(.line, .column), path_suffix(.path))]
    Yaml {
        /// What was being parsed, e.g. "nodes.conf".
        what: String,
        /// The parser's description of the problem.
        message: String,
        /// 1-based line, when the parser knows it.
        line: Option<usize>,
        /// 1-based column, when the parser knows it.
        column: Option<usize>,
        /// Dotted path of the offending field, when known (e.g. `nodes.n1.kernel`).
        path: Option<String>,
    },
    /// Serialising to YAML failed (should not happen for well-formed values).
    #[error("could not write {what} as YAML: {message}")]
    Emit {
        /// What was being written.
        what: String,
        /// The serialiser's message.
        message: String,
    },
    /// A node or profile lists a profile that does not exist.
    #[error("{kind} {name:?} uses profile {profile:?}, which does not exist; create the profile or remove it from the {kind}'s profile list")]
    UnknownProfile {
        /// `node` or `profile`: what holds the reference.
        kind: String,
        /// Name of the node or profile holding the reference.
        name: String,
        /// The missing profile.
        profile: String,
    },
    /// A node, profile, network device, tag or similar name is malformed.
    #[error("invalid {kind} name {}: {reason}", shown_name(.name))]
    InvalidName {
        /// What the name is for (`node`, `profile`, `network device`, ...).
        kind: String,
        /// The rejected name.
        name: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A field value is malformed (MAC, IP, netmask, MTU, ...).
    #[error("{owner}: invalid {field} {value:?}: {reason}")]
    InvalidValue {
        /// The node or profile name.
        owner: String,
        /// The field, in `wwctl node list -a` notation (e.g. `NetDevs[default].Hwaddr`).
        field: String,
        /// The rejected value.
        value: String,
        /// What is expected instead.
        reason: String,
    },
    /// A node-only field (`asset key`, `discoverable`) was set on a profile.
    #[error("profile {profile:?}: {field} can only be set on nodes, not on profiles; set it on each node instead")]
    NodeOnlyField {
        /// The profile.
        profile: String,
        /// The YAML key (`asset key` or `discoverable`).
        field: String,
    },
    /// Two different nodes claim the same MAC or IP address.
    #[error("{key} is used by both node {first:?} and node {second:?}; every node needs its own, change or unset one of them")]
    Duplicate {
        /// The shared value.
        key: UniqueKey,
        /// The node that already has it.
        first: String,
        /// The node that also claims it.
        second: String,
    },
    /// A hostlist pattern such as `n[01-10]` is malformed.
    #[error("invalid host pattern {pattern:?}: {reason}")]
    Hostlist {
        /// The whole pattern as given.
        pattern: String,
        /// What is wrong and how to write it.
        reason: String,
    },
    /// IP auto-increment ran past the end of the address space.
    #[error("cannot add {n} to IP address {ip}: the result is past the end of the address space; use a lower start address or fewer nodes")]
    IpOverflow {
        /// The start address.
        ip: std::net::IpAddr,
        /// The increment that overflowed.
        n: u64,
    },
    /// A sha256 digest is malformed.
    #[error("{value:?} is not a sha256 digest; expected sha256:<64 hex digits>")]
    BadDigest {
        /// The rejected text.
        value: String,
    },
    /// A patch path names no field.
    #[error("unknown field path {}: {reason}", display_path(.path))]
    PatchPath {
        /// The path as given (YAML keys).
        path: Vec<String>,
        /// Why it names no field.
        reason: String,
    },
    /// A patch value cannot be stored at its path.
    #[error("cannot apply {op} to {}: {reason}", display_path(.path))]
    PatchValue {
        /// `set`, `unset`, `append` or `remove`.
        op: String,
        /// The path as given (YAML keys).
        path: Vec<String>,
        /// Why the value does not fit.
        reason: String,
    },
}

fn location(line: &Option<usize>, column: &Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
        (Some(l), None) => format!(" (line {l})"),
        _ => String::new(),
    }
}

/// A rejected name as shown in a message: quoted, and cut short when long (the reason says how
/// long it was), so a 300-character name does not flood the terminal.
fn shown_name(name: &str) -> String {
    const SHOWN: usize = 40;
    match name.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}...", &name[..cut]),
        None => format!("{name:?}"),
    }
}

fn path_suffix(path: &Option<String>) -> String {
    match path {
        Some(p) if !p.is_empty() && p != "." => format!(" at {p}"),
        _ => String::new(),
    }
}

/// Render a YAML-key path as `"network devices"."default"."hwaddr"`-style text for messages.
pub(crate) fn display_path(path: &[String]) -> String {
    if path.is_empty() {
        return "(empty path)".to_owned();
    }
    path.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(".")
}
