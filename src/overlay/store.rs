//! The overlay catalog and trees in the CAS (see the module essay in `overlay`).
//!
//! [`Overlays`] is a head's handle: catalog reads and writes go through the head's
//! [`Cluster`] handle (forwarded to the leader, never a loopback gRPC call), trees are
//! CAS blobs in their canonical form ([`OverlayTree::to_canonical`]), and a head that
//! lacks a tree fetches it from a peer, as it does image layers.
//!
//! Design notes:
//! - **Edits are read-modify-write on one head.** The head that receives an edit reads
//!   the catalog entry (after a linearizable barrier), applies the edit to the effective
//!   tree, stores the new tree and writes `PutSite` conditional on the version it read.
//!   An operator's own read (`overlay edit` reads the file, runs the editor, writes) is
//!   carried as `expect`, so two operators editing at once cannot lose an edit: the
//!   second gets a conflict and retries.
//! - **Distribution overlays are never modified.** Any edit of one writes its site copy
//!   (Warewulf 4.7's `CloneToSite`); deleting the site copy reverts to the distribution
//!   tree. The distribution trees are compiled into the binary (`build.rs` embeds
//!   `cluster/overlays/<name>/rootfs/**`); every head stores them in its CAS at start
//!   and registers them when the catalog differs ([`Overlays::register_distribution`]).
//! - **Parsed trees are cached by digest** (content-addressed, so never stale), bounded
//!   in count.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::tree::{self, Entry, EntryKind, OverlayTree, TreeError};
use crate::cas::{self, Cas, Digest};
use crate::cluster::{Cluster, ClusterError};
use crate::error::{Classify, ErrorKind};
use crate::state::{
    unix_now, Command, CommandError, OverlayCommand, OverlayEntry, Query, Request, Selector, Versioned,
};

/// How long a catalog read or write may wait for the cluster.
const CATALOG_DEADLINE: Duration = Duration::from_secs(30);
/// Parsed trees kept in memory per head.
const CACHE_TREES: usize = 256;

/// A distribution overlay as `build.rs` embeds it.
#[derive(Debug)]
pub struct EmbeddedOverlay {
    pub name: &'static str,
    pub entries: &'static [EmbeddedEntry],
}

/// One path of an embedded overlay (owner root).
#[derive(Debug)]
pub struct EmbeddedEntry {
    pub path: &'static str,
    pub kind: EmbeddedKind,
    pub mode: u32,
}

#[derive(Debug)]
pub enum EmbeddedKind {
    Dir,
    File(&'static [u8]),
    Symlink(&'static str),
}

/// Warewulf's distribution overlays, compiled in from `cluster/overlays/`.
pub static EMBEDDED: &[EmbeddedOverlay] = include!(concat!(env!("OUT_DIR"), "/overlays.rs"));

/// The distribution set as trees, validated.
pub fn distribution() -> Result<BTreeMap<String, OverlayTree>, OverlayError> {
    EMBEDDED
        .iter()
        .map(|o| {
            let mut t = OverlayTree::default();
            for e in o.entries {
                let kind = match e.kind {
                    EmbeddedKind::Dir => EntryKind::Dir,
                    EmbeddedKind::File(b) => EntryKind::File(b.to_vec()),
                    EmbeddedKind::Symlink(s) => EntryKind::Symlink(s.to_string()),
                };
                t.entries.insert(
                    e.path.to_string(),
                    Entry {
                        kind,
                        mode: e.mode,
                        uid: 0,
                        gid: 0,
                    },
                );
            }
            crate::model::validate_name("overlay", o.name).map_err(|e| OverlayError::Invalid(e.to_string()))?;
            t.validate().map_err(|source| OverlayError::Tree {
                name: o.name.to_string(),
                source,
            })?;
            Ok((o.name.to_string(), t))
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("overlay {0:?} does not exist; see `wwctl overlay list`")]
    NotFound(String),
    #[error("overlay {name}: {source}")]
    Tree { name: String, source: TreeError },
    #[error(
        "overlay {name} is not empty ({count} files and directories); pass --force (-f) to delete it with its files"
    )]
    NotEmpty { name: String, count: usize },
    #[error("overlay {name} was changed by someone else (now version {actual}, you read {expected}); read it again and retry")]
    Conflict { name: String, expected: u64, actual: u64 },
    #[error("overlay tree {digest}: {source}")]
    Cas { digest: String, source: cas::CasError },
    #[error("overlay catalog: {0}")]
    Catalog(#[from] ClusterError),
    #[error("{0}")]
    Invalid(String),
}

impl Classify for OverlayError {
    fn kind(&self) -> ErrorKind {
        match self {
            OverlayError::NotFound(_) => ErrorKind::NotFound,
            OverlayError::Tree { source, .. } => match source {
                TreeError::NotFound { .. } => ErrorKind::NotFound,
                TreeError::Exists { .. } => ErrorKind::Exists,
                TreeError::NotEmpty { .. } => ErrorKind::InUse,
                TreeError::Io { .. } | TreeError::Decode(_) => ErrorKind::Internal,
                _ => ErrorKind::Invalid,
            },
            OverlayError::NotEmpty { .. } => ErrorKind::InUse,
            OverlayError::Conflict { .. } => ErrorKind::Conflict,
            // A blob no head has is lost data; one not fetched yet may come: retry.
            OverlayError::Cas { source, .. } => match source {
                cas::CasError::PeerFetch { .. } => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            OverlayError::Catalog(e) => e.kind(),
            OverlayError::Invalid(_) => ErrorKind::Invalid,
        }
    }
}

/// One edit of an overlay's files (paths as operators write them, see [`tree::normalize`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// Put a file. When `path` is an existing directory and `name_in_dir` is given,
    /// the file goes into it under that name (`overlay import NAME FILE DIR`).
    PutFile {
        path: String,
        #[serde(with = "b64")]
        content: Vec<u8>,
        mode: Option<u32>,
        owner: Option<(u32, u32)>,
        parents: bool,
        overwrite: bool,
        #[serde(default)]
        name_in_dir: Option<String>,
    },
    /// `mkdir -p` with `mode`.
    Mkdir {
        path: String,
        mode: u32,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    /// Delete a path (a non-empty directory only with `force`); `parents` removes the
    /// directories it leaves empty.
    Delete {
        path: String,
        force: bool,
        parents: bool,
    },
}

impl Change {
    /// Apply to `t`.
    pub fn apply(&self, t: &mut OverlayTree) -> Result<(), TreeError> {
        match self {
            Change::PutFile {
                path,
                content,
                mode,
                owner,
                parents,
                overwrite,
                name_in_dir,
            } => {
                let mut p = tree::normalize(path)?;
                if let (Some(n), Some(e)) = (name_in_dir, t.entries.get(&p)) {
                    if e.is_dir() {
                        p = format!("{p}/{n}");
                        tree::check_path(&p)?;
                    }
                }
                t.put_file(&p, content.clone(), *mode, *owner, *parents, *overwrite)
            }
            Change::Mkdir { path, mode } => t.mkdir(&tree::normalize(path)?, *mode),
            Change::Chmod { path, mode } => t.chmod(&tree::normalize(path)?, *mode),
            Change::Chown { path, uid, gid } => t.chown(&tree::normalize(path)?, *uid, *gid),
            Change::Delete { path, force, parents } => t.delete(&tree::normalize(path)?, *force, *parents),
        }
    }
}

mod b64 {
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

/// What a write did.
#[derive(Debug, Clone, PartialEq)]
pub struct Changed {
    /// The effective tree afterwards (`None`: the overlay is gone).
    pub digest: Option<Digest>,
    /// The entry's version afterwards (the log index of the write; 0 when gone or
    /// when nothing changed and nothing was written).
    pub version: u64,
    /// This write made the site copy of a distribution overlay.
    pub site_created: bool,
}

/// A head's overlay operations. Cheap to clone.
#[derive(Clone)]
pub struct Overlays {
    cas: Cas,
    cluster: Cluster,
    /// Peers' blob routes, for trees this head lacks.
    peers: cas::http::PeerLink,
    cache: Arc<Mutex<HashMap<Digest, Arc<OverlayTree>>>>,
}

impl std::fmt::Debug for Overlays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlays")
            .field("cas", &self.cas)
            .finish_non_exhaustive()
    }
}

impl Overlays {
    pub fn new(cas: Cas, cluster: Cluster) -> Overlays {
        Overlays {
            cas,
            cluster,
            peers: cas::http::PeerLink::default(),
            cache: Arc::default(),
        }
    }

    /// Reach the peers' blob routes through `link` (the head's TLS identity).
    pub fn with_peers(mut self, link: cas::http::PeerLink) -> Self {
        self.peers = link;
        self
    }

    /// Wait until this head has applied every write acknowledged before the call (a
    /// linearizable read's index), so the local catalog may be read.
    async fn sync(&self) -> Result<(), OverlayError> {
        let deadline = Instant::now() + CATALOG_DEADLINE;
        let (_, index) = self
            .cluster
            .read(&Query::nodes(Selector::None), true, 0, deadline)
            .await?;
        let mut w = self.cluster.state().applied_watch();
        let left = deadline.saturating_duration_since(Instant::now());
        let caught_up = tokio::time::timeout(left, w.wait_for(|a| *a >= index))
            .await
            .is_ok_and(|r| r.is_ok());
        if caught_up {
            Ok(())
        } else {
            Err(ClusterError::Lagging.into())
        }
    }

    /// The whole catalog, current as of the call.
    pub async fn catalog(&self) -> Result<BTreeMap<String, Versioned<OverlayEntry>>, OverlayError> {
        self.sync().await?;
        Ok(self.cluster.state().read(|s| s.overlays.clone()))
    }

    /// One catalog entry, current as of the call.
    pub async fn entry(&self, name: &str) -> Result<Versioned<OverlayEntry>, OverlayError> {
        self.sync().await?;
        self.cluster
            .state()
            .read(|s| s.overlays.get(name).cloned())
            .ok_or_else(|| OverlayError::NotFound(name.to_string()))
    }

    /// The tree stored under `digest`: from the cache, this head's CAS, or a peer.
    pub async fn tree(&self, digest: &Digest) -> Result<Arc<OverlayTree>, OverlayError> {
        if let Some(t) = self.cache.lock().expect("tree cache").get(digest) {
            return Ok(t.clone());
        }
        let cas_err = |source| OverlayError::Cas {
            digest: digest.to_string(),
            source,
        };
        if !self.cas.contains(digest) {
            let peers: Vec<String> = self
                .cluster
                .state()
                .read(|s| self.peers.bases(s.cluster.heads.values()));
            cas::http::fetch_from_peers(&self.cas, self.peers.client(), digest, &peers)
                .await
                .map_err(cas_err)?;
        }
        let cas = self.cas.clone();
        let d = *digest;
        let bytes = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut f = cas.open_verified(&d)?;
            let mut v = Vec::new();
            f.read_to_end(&mut v).map_err(|source| cas::CasError::Io {
                path: cas.path(&d),
                source,
            })?;
            Ok::<_, cas::CasError>(v)
        })
        .await
        .map_err(|e| OverlayError::Invalid(format!("reading an overlay tree failed: {e}")))?
        .map_err(cas_err)?;
        let t = Arc::new(
            OverlayTree::from_canonical(&bytes).map_err(|source| OverlayError::Tree {
                name: digest.to_string(),
                source,
            })?,
        );
        let mut c = self.cache.lock().expect("tree cache");
        if c.len() >= CACHE_TREES {
            c.clear();
        }
        c.insert(*digest, t.clone());
        Ok(t)
    }

    /// Store a tree in this head's CAS; its digest.
    pub async fn put_tree(&self, t: &OverlayTree) -> Result<Digest, OverlayError> {
        let bytes = t.to_canonical();
        let cas = self.cas.clone();
        let d = tokio::task::spawn_blocking(move || cas.put_bytes(&bytes))
            .await
            .map_err(|e| OverlayError::Invalid(format!("storing an overlay tree failed: {e}")))?
            .map_err(|source| OverlayError::Cas {
                digest: t.digest().to_string(),
                source,
            })?;
        Ok(d)
    }

    /// An overlay's entry and effective tree.
    pub async fn get(&self, name: &str) -> Result<(Versioned<OverlayEntry>, Arc<OverlayTree>), OverlayError> {
        let e = self.entry(name).await?;
        let d = e
            .value
            .effective()
            .ok_or_else(|| OverlayError::Invalid(format!("overlay {name:?} has no tree")))?;
        let t = self.tree(&d).await?;
        Ok((e, t))
    }

    /// One path of an overlay (`path` as operators write it).
    pub async fn file(&self, name: &str, path: &str) -> Result<(Versioned<OverlayEntry>, Entry), OverlayError> {
        let p = tree::normalize(path).map_err(|source| tree_err(name, source))?;
        let (e, t) = self.get(name).await?;
        let entry = t.entry(&p).map_err(|source| tree_err(name, source))?.clone();
        Ok((e, entry))
    }

    /// Write `cmd` with the caller's request id (exactly once across retries).
    async fn write(&self, cmd: OverlayCommand, request_id: Option<String>) -> Result<u64, OverlayError> {
        let req = match request_id {
            Some(id) => Request {
                audit: None,
                id: Some(id),
                cmd: Command::Overlay(cmd),
            },
            None => Request::with_new_id(Command::Overlay(cmd)),
        };
        let w = self.cluster.submit(req, 0, Instant::now() + CATALOG_DEADLINE).await?;
        Ok(w.log_index)
    }

    /// Create an empty site overlay.
    pub async fn create(&self, name: &str, request_id: Option<String>) -> Result<Changed, OverlayError> {
        crate::model::validate_name("overlay", name).map_err(|e| OverlayError::Invalid(e.to_string()))?;
        let d = self.put_tree(&OverlayTree::default()).await?;
        let version = self
            .write(
                OverlayCommand::PutSite {
                    name: name.to_string(),
                    digest: d,
                    expect: Some(0),
                    now: unix_now(),
                },
                request_id,
            )
            .await
            .map_err(|e| match e {
                OverlayError::Catalog(ClusterError::Refused(CommandError::Exists { .. })) => {
                    OverlayError::Invalid(format!("overlay {name:?} already exists; see `wwctl overlay list`"))
                }
                e => e,
            })?;
        Ok(Changed {
            digest: Some(d),
            version,
            site_created: true,
        })
    }

    /// Apply `change` to an overlay: to its site tree, made from the distribution tree
    /// first if there is none. `expect`: the version the caller read (default: the one
    /// read here).
    pub async fn change(
        &self,
        name: &str,
        change: &Change,
        expect: Option<u64>,
        request_id: Option<String>,
    ) -> Result<Changed, OverlayError> {
        let (e, t) = self.get(name).await?;
        if let Some(x) = expect {
            if x != e.version {
                return Err(OverlayError::Conflict {
                    name: name.to_string(),
                    expected: x,
                    actual: e.version,
                });
            }
        }
        let mut t = (*t).clone();
        change.apply(&mut t).map_err(|source| tree_err(name, source))?;
        t.validate().map_err(|source| tree_err(name, source))?;
        let d = t.digest();
        if Some(d) == e.value.effective() {
            return Ok(Changed {
                digest: Some(d),
                version: e.version,
                site_created: false,
            });
        }
        self.put_tree(&t).await?;
        let version = self
            .write(
                OverlayCommand::PutSite {
                    name: name.to_string(),
                    digest: d,
                    expect: Some(e.version),
                    now: unix_now(),
                },
                request_id,
            )
            .await
            .map_err(|err| conflict(name, err))?;
        self.cache.lock().expect("tree cache").insert(d, Arc::new(t));
        Ok(Changed {
            digest: Some(d),
            version,
            site_created: !e.value.is_site(),
        })
    }

    /// Delete an overlay's site tree (a non-empty one only with `force`): a
    /// distribution overlay reverts to its shipped tree, a site-only one is gone.
    pub async fn delete(
        &self,
        name: &str,
        force: bool,
        expect: Option<u64>,
        request_id: Option<String>,
    ) -> Result<Changed, OverlayError> {
        let e = self.entry(name).await?;
        if let Some(site) = e.value.site {
            let t = self.tree(&site).await?;
            if !t.entries.is_empty() && !force {
                return Err(OverlayError::NotEmpty {
                    name: name.to_string(),
                    count: t.entries.len(),
                });
            }
        }
        let version = self
            .write(
                OverlayCommand::DeleteSite {
                    name: name.to_string(),
                    expect: Some(expect.unwrap_or(e.version)),
                },
                request_id,
            )
            .await
            .map_err(|err| conflict(name, err))?;
        let reverted = e.value.distribution;
        Ok(Changed {
            digest: reverted,
            version: if reverted.is_some() { version } else { 0 },
            site_created: false,
        })
    }

    /// Store `set` (the distribution trees this head ships) in this head's CAS and
    /// register it in the catalog when the catalog differs. Returns the names whose
    /// registration changed.
    pub async fn register_distribution(
        &self,
        set: &BTreeMap<String, OverlayTree>,
    ) -> Result<Vec<String>, OverlayError> {
        let mut digests = BTreeMap::new();
        for (name, t) in set {
            t.validate().map_err(|source| tree_err(name, source))?;
            digests.insert(name.clone(), self.put_tree(t).await?);
        }
        let differs = self.cluster.state().read(|s| {
            digests
                .iter()
                .any(|(n, d)| s.overlays.get(n).map(|v| v.value.distribution) != Some(Some(*d)))
        });
        if !differs {
            return Ok(Vec::new());
        }
        let w = self
            .cluster
            .write_within(
                Command::Overlay(OverlayCommand::RegisterDistribution {
                    set: digests,
                    now: unix_now(),
                }),
                CATALOG_DEADLINE,
            )
            .await?;
        Ok(w.outcome.changed)
    }
}

fn tree_err(name: &str, source: TreeError) -> OverlayError {
    OverlayError::Tree {
        name: name.to_string(),
        source,
    }
}

/// The state machine's conflict, in the overlay's words.
fn conflict(name: &str, e: OverlayError) -> OverlayError {
    match e {
        OverlayError::Catalog(ClusterError::Refused(CommandError::Conflict { expected, actual, .. })) => {
            OverlayError::Conflict {
                name: name.to_string(),
                expected,
                actual,
            }
        }
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_distribution_overlay_is_valid() {
        let set = distribution().unwrap();
        assert_eq!(set.len(), EMBEDDED.len());
        for (name, t) in &set {
            assert!(
                t.entries.values().all(|e| e.uid == 0 && e.gid == 0),
                "{name}: distribution files belong to root"
            );
        }
    }

    #[test]
    fn debian_interfaces_is_ifupdown_under_warewulfs_older_name() {
        // Warewulf's default profile lists `debian.interfaces`: an imported nodes.conf
        // that names it must build.
        let set = distribution().unwrap();
        assert_eq!(set["debian.interfaces"], set["ifupdown"]);
    }

    #[test]
    fn secrets_of_the_distribution_set_are_root_only() {
        // `cluster/overlays/<name>/modes` sets what git cannot keep.
        let set = distribution().unwrap();
        let mode = |o: &str, p: &str| set[o].entries[p].mode;
        assert_eq!(mode("ssh.host_keys", "etc/ssh/ssh_host_ed25519_key.ww"), 0o600);
        assert_eq!(mode("ssh.host_keys", "etc/ssh/ssh_host_ed25519_key.pub.ww"), 0o644);
        assert_eq!(
            mode("wwinit", "warewulf/config.ww"),
            0o600,
            "it holds the IPMI password"
        );
    }

    #[test]
    fn changes_travel_as_json_and_apply_to_operator_paths() {
        let c = Change::PutFile {
            path: "/etc/motd".into(),
            content: b"hi\n".to_vec(),
            mode: Some(0o640),
            owner: None,
            parents: true,
            overwrite: false,
            name_in_dir: None,
        };
        let back: Change = serde_json::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let mut t = OverlayTree::default();
        c.apply(&mut t).unwrap();
        assert_eq!(t.entry("etc/motd").unwrap().mode, 0o640);
        // Importing into a directory keeps the source's name.
        Change::PutFile {
            path: "etc".into(),
            content: vec![],
            mode: None,
            owner: None,
            parents: false,
            overwrite: false,
            name_in_dir: Some("issue".into()),
        }
        .apply(&mut t)
        .unwrap();
        assert!(t.entry("etc/issue").is_ok());
        let e = Change::Chmod {
            path: "../etc/motd".into(),
            mode: 0o600,
        }
        .apply(&mut t)
        .unwrap_err();
        assert!(matches!(e, TreeError::BadPath { .. }), "{e}");
    }
}
