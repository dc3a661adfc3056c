//! An overlay's files as a value.
//!
//! Paths are relative (no leading `/`), use `/` separators, and have no `.`, `..` or
//! empty components, so an overlay can never name a file outside the tree it is
//! unpacked into. Symlink targets are kept as written (a node's `/etc/localtime` points
//! into `/usr/share/zoneinfo`), but [`OverlayTree::validate`] refuses a link that would
//! lead a relative path out of the overlay.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one path of an overlay is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    Dir,
    /// A regular file; a template when its path ends in `.ww`.
    File(#[serde(with = "serde_bytes_b64")] Vec<u8>),
    Symlink(String),
}

/// One path of an overlay, with Unix permission bits (`0o644`, no file-type bits) and owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// An overlay: relative path → entry, in path order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayTree {
    pub entries: BTreeMap<String, Entry>,
}

/// File contents travel as base64 in the tree's JSON form (a tree is one CAS blob).
mod serde_bytes_b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| serde::de::Error::custom(format!("file contents are not valid base64: {e}")))
    }
}
