//! Image catalog and head registry in the replicated state.
//!
//! Raft carries names → digests only; the bytes are CAS blobs on the heads. An
//! image is the ordered layers its root filesystem is made of (any head can rebuild
//! the tree from them), the built `cpio.gz` artifact with the key it was built from,
//! and the kernel found in the tree.

use serde::{Deserialize, Serialize};

use super::{CommandError, Kind, Outcome, State, Versioned};
use crate::model::{self, Digest};

/// One layer of an image's root filesystem, applied in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRef {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// The built image (`cpio` newc + gzip).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub digest: Digest,
    /// Bytes of the compressed archive (what nodes download).
    pub size: u64,
    /// Bytes of the archive uncompressed (what it takes in a node's memory); 0 when
    /// built before this was recorded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uncompressed: u64,
    /// What it was built from (layers, excludes, builder version): equal key, no rebuild.
    pub build_key: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The kernel a node boots from this image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelRef {
    pub digest: Digest,
    /// Warewulf's short version (`6.1.0-13`), what `kernel.version` pins.
    pub version: String,
    /// The release as named on disk (`uname -r`), e.g. `6.1.0-13-amd64`.
    #[serde(default)]
    pub release: String,
    /// Path inside the image, e.g. `boot/vmlinuz-6.1.0-13-amd64`.
    pub path: String,
    pub size: u64,
}

/// A catalog entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageEntry {
    /// Where it came from (`docker://...@sha256:...`, `oci-archive:...`, `dir:...`).
    pub source: String,
    pub platform: String,
    pub layers: Vec<LayerRef>,
    pub config: Option<Digest>,
    /// Bytes and entries of the flattened root filesystem.
    pub rootfs_size: u64,
    pub files: u64,
    pub artifact: Option<Artifact>,
    /// The kernel nodes boot unless they pin another (the newest non-debug one).
    pub kernel: Option<KernelRef>,
    /// Every bootable kernel in the image, newest first, each its own blob, so a
    /// node pinning `kernel.version` can boot it.
    #[serde(default)]
    pub kernels: Vec<KernelRef>,
    /// Unix seconds, stamped by the head that wrote the command (not at apply time,
    /// which must be deterministic).
    pub created: u64,
    pub updated: u64,
}

impl ImageEntry {
    /// Every blob the entry needs, for prefetch and GC.
    pub fn blobs(&self) -> impl Iterator<Item = Digest> + '_ {
        self.layers
            .iter()
            .map(|l| l.digest)
            .chain(self.config)
            .chain(self.artifact.as_ref().map(|a| a.digest))
            .chain(self.kernel.as_ref().map(|k| k.digest))
            .chain(self.kernels.iter().map(|k| k.digest))
    }
}

/// A head's addresses as its peers reach them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeadInfo {
    /// HTTP boot (and operators' `/health`).
    pub http: String,
    /// The gRPC port (mutual TLS unless `insecure`): Raft, the admin API, and what heads
    /// ask each other over HTTP/2 — blobs and liveness probes. Empty in records written
    /// by heads before it was kept (they re-register at start).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub grpc: String,
    /// HTTPS for `wwclient` (`https_listen`), `host:port`; empty when the head serves
    /// none (and in records written before it was kept).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub https: String,
}

/// Image commands (see [`super::Command`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ImageCommand {
    /// Create or replace an entry; `expect` as in [`super::Put`].
    Put {
        name: String,
        entry: Box<ImageEntry>,
        expect: Option<u64>,
    },
    /// Delete an entry; refused while nodes or profiles name it unless `force`.
    Delete { name: String, force: bool },
    /// Rename an entry and every node/profile that names it.
    Rename { from: String, to: String },
    /// Copy an entry under a new name (blobs are shared).
    Copy { from: String, to: String },
}

impl State {
    pub(super) fn apply_image(&mut self, index: u64, cmd: &ImageCommand) -> Result<Outcome, CommandError> {
        let not_found = |name: &str| CommandError::NotFound {
            kind: "image".into(),
            name: name.into(),
        };
        let exists = |name: &str| CommandError::Exists {
            kind: "image".into(),
            name: name.into(),
        };
        match cmd {
            ImageCommand::Put { name, entry, expect } => {
                model::validate_name("image", name)?;
                let cur = self.images.get(name).map(|v| v.version);
                if let Some(expected) = *expect {
                    let actual = cur.unwrap_or(0);
                    if actual != expected {
                        return Err(match (expected, cur) {
                            (0, Some(_)) => exists(name),
                            (_, None) => not_found(name),
                            _ => CommandError::Conflict {
                                kind: "image".into(),
                                name: name.clone(),
                                expected,
                                actual,
                            },
                        });
                    }
                }
                self.images.insert(
                    name.clone(),
                    Versioned {
                        version: index,
                        value: (**entry).clone(),
                    },
                );
                Ok(changed(name))
            }
            ImageCommand::Delete { name, force } => {
                if !self.images.contains_key(name) {
                    return Err(not_found(name));
                }
                let users = self.image_users(name);
                if !users.is_empty() && !force {
                    return Err(CommandError::InUse {
                        name: format!("image {name}"),
                        users: summarize(&users),
                    });
                }
                self.images.remove(name);
                Ok(Outcome {
                    changed: vec![],
                    deleted: vec![name.clone()],
                    summary: None,
                })
            }
            ImageCommand::Rename { from, to } | ImageCommand::Copy { from, to } => {
                model::validate_name("image", to)?;
                let entry = self.images.get(from).ok_or_else(|| not_found(from))?.value.clone();
                if self.images.contains_key(to) {
                    return Err(exists(to));
                }
                let mut out = changed(to);
                if matches!(cmd, ImageCommand::Rename { .. }) {
                    self.images.remove(from);
                    out.deleted.push(from.clone());
                    for kind in [Kind::Node, Kind::Profile] {
                        let map = match kind {
                            Kind::Node => &mut self.nodes,
                            Kind::Profile => &mut self.profiles,
                        };
                        for (n, v) in map.iter_mut() {
                            if v.value.image_name.as_deref() == Some(from.as_str()) {
                                v.value.image_name = Some(to.clone());
                                v.version = index;
                                out.changed.push(format!("{} {n}", kind.as_str()));
                            }
                        }
                    }
                }
                self.images.insert(
                    to.clone(),
                    Versioned {
                        version: index,
                        value: entry,
                    },
                );
                Ok(out)
            }
        }
    }

    /// Nodes and profiles whose own `image name` is `name`.
    pub fn image_users(&self, name: &str) -> Vec<String> {
        self.users(|c| c.image_name.as_deref() == Some(name))
    }

    /// `node N` / `profile P` for every node and profile whose own fields satisfy `uses`
    /// (what a delete refused as in use names).
    pub(super) fn users(&self, uses: impl Fn(&model::NodeConf) -> bool) -> Vec<String> {
        let nodes = self
            .nodes
            .iter()
            .filter(|(_, v)| uses(&v.value))
            .map(|(n, _)| format!("node {n}"));
        let profiles = self
            .profiles
            .iter()
            .filter(|(_, v)| uses(&v.value))
            .map(|(n, _)| format!("profile {n}"));
        nodes.chain(profiles).collect()
    }
}

fn changed(name: &str) -> Outcome {
    Outcome {
        changed: vec![name.to_string()],
        deleted: vec![],
        summary: None,
    }
}

/// At most five names, then a count.
pub(super) fn summarize(users: &[String]) -> String {
    let mut shown: Vec<String> = users.iter().take(5).cloned().collect();
    if users.len() > 5 {
        shown.push(format!("and {} more", users.len() - 5));
    }
    shown.join(", ")
}
