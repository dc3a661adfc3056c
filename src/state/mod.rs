//! # Replicated state machine (pure, sans-IO)
//!
//! Everything an operator writes lives in [`State`]; every change is a [`Command`]
//! applied by [`State::apply`] at a Raft log index. `apply` does no I/O, takes no
//! clock and no randomness, so every head computes the same state from the same
//! log, and the state machine is unit-testable without Raft.
//!
//! Design notes:
//! - **All or nothing.** A command that touches many objects (a hostlist `node add`,
//!   an import) is validated as a whole before anything changes; an error leaves the
//!   state exactly as it was.
//! - **Versions.** Every object carries the log index of its last write. `node edit`
//!   sends the version it read ([`Put::expect`]); a concurrent change makes the write
//!   fail with [`CommandError::Conflict`] instead of silently overwriting it.
//! - **Exactly once.** A client may retry a write whose answer it lost (the head died
//!   after committing). Requests carry a client-chosen id; the last
//!   [`DEDUP_WINDOW`] outcomes are remembered, so a retry returns the first answer
//!   instead of applying twice. A bulk write's answer is counts and a digest, not its
//!   list of names ([`Outcome`]), so this memory stays small whatever the history.
//! - **Uniqueness index.** MACs and IPs must be unique across nodes. The index is
//!   derived state (not serialized) and rebuilt after a snapshot install, so a write
//!   checks only the nodes it changes, not all 10,000.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::model::{self, NodeConf, NodesConf, Patch, UniqueKey};

pub mod access;
pub mod audit;
pub mod images;
pub mod leases;
pub mod overlays;
pub mod racks;
pub mod ssh;
pub use access::{Access, AccessCommand};
pub use images::{Artifact, HeadInfo, ImageCommand, ImageEntry, KernelRef, LayerRef};
pub use leases::{Holder, Lease, LeaseOp, PoolAddr, PoolTable};
pub use overlays::{OverlayCommand, OverlayEntry};
pub use racks::{Rack, RackCommand, RackHead, RackPool};
pub use ssh::{SshCommand, SshKeys};

/// How many recent request ids are remembered for exactly-once retries.
pub const DEDUP_WINDOW: usize = 4096;

/// An object with the log index of its last write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versioned<T> {
    pub version: u64,
    pub value: T,
}

/// Which objects of one kind a query or command addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Selector {
    None,
    All,
    Names(Vec<String>),
}

/// Replace or create an object, optionally conditional on the version read earlier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Put {
    pub name: String,
    pub conf: NodeConf,
    /// `None`: unconditional. `Some(0)`: must not exist yet. `Some(v)`: must still be at version `v`.
    pub expect: Option<u64>,
}

/// Kind of object a command addresses; nodes and profiles share [`NodeConf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Node,
    Profile,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Profile => "profile",
        }
    }
}

/// A change to the replicated state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create objects; fails if any already exists.
    Add { kind: Kind, items: Vec<(String, NodeConf)> },
    /// Replace objects (conditional on versions where given); used by `edit` and `import`.
    Put { kind: Kind, items: Vec<Put> },
    /// Field-level change of existing objects (`set`/`unset`); every name must exist.
    Patch {
        kind: Kind,
        names: Vec<String>,
        patch: Patch,
    },
    /// Delete objects; every name must exist. Profiles still in use are refused.
    Delete { kind: Kind, names: Vec<String> },
    /// Import a nodes.conf document: profiles first, then nodes, added or replaced.
    Import { conf: NodesConf },
    /// Image catalog changes.
    Image(ImageCommand),
    /// Overlay catalog changes.
    Overlay(OverlayCommand),
    /// Rack changes (`wwctl rack`).
    Rack(RackCommand),
    /// The cluster's SSH host keys and the heads' root keys (`wwctl configure ssh`).
    Ssh(SshCommand),
    /// Operators' credentials, revocations and join tokens (see [`access`]).
    Access(AccessCommand),
    /// Give a DHCP allocator run (`holder`, of head `head`) a block of up to `size`
    /// free addresses of the pool `first..=last` (see `state::leases`).
    ReservePoolBlock {
        holder: u64,
        head: u64,
        first: std::net::Ipv4Addr,
        last: std::net::Ipv4Addr,
        size: u32,
        /// The pool's lease time (how long a client may keep an address it got).
        lease_secs: u64,
        /// Unix seconds at the proposing head.
        now: u64,
    },
    /// A batch of bindings, releases and declines of one holder; empty: keep-alive.
    RecordLeases {
        holder: u64,
        /// Unix seconds at the proposing head.
        now: u64,
        ops: Vec<LeaseOp>,
    },
    /// Assign an unknown MAC to the first discoverable node, exactly once.
    Discover { mac: String },
    /// Record a head's HTTP address (sent by each head when it starts). Refused for a
    /// removed head's id.
    RegisterHead { id: u64, info: HeadInfo },
    /// Head `id` left the cluster (`wwctl cluster remove`): forget its address, so no
    /// head fetches from or probes it, and never accept the id again.
    HeadRemoved { id: u64 },
    /// Name a new cluster and create the `default` profile every node starts with
    /// (as Warewulf ships one). Idempotent: an existing `default` profile is kept.
    Init {
        name: String,
        /// The `default` profile to create, filled in by the head that proposes the
        /// command ([`model::default_profile`]), so replaying the log gives what that
        /// head wrote whatever version replays it. Absent in commands written before it
        /// travelled here: those create the comment-only profile they created then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default_profile: Option<Box<NodeConf>>,
    },
}

impl Command {
    /// Whether the caller needs the exact names of this command's [`Outcome`], even on a
    /// retry: the addresses of a reserved pool block, the refused lease ops, the node a
    /// MAC was assigned to. These lists are bounded (`leases::MAX_BLOCK`, the lease batch
    /// size), so they are never summarized.
    fn answer_is_list(&self) -> bool {
        matches!(
            self,
            Command::ReservePoolBlock { .. }
                | Command::RecordLeases { .. }
                | Command::Discover { .. }
                | Command::RegisterHead { .. }
        )
    }

    /// Whether this command can only be decided once the cluster is initialised
    /// (`Init` applied): node and profile writes refer to the `default` profile that
    /// `Init` creates. Internal commands (head registration, pools, discovery, images)
    /// do not wait.
    pub fn needs_init(&self) -> bool {
        matches!(
            self,
            Command::Add { .. } | Command::Put { .. } | Command::Patch { .. } | Command::Import { .. }
        )
    }
}

/// What a secret reads as when it is not shown (`api::auth::hide_secrets`); written
/// back, it means "unchanged" (`State::keep_masked_secrets`).
pub const SECRET_MASK: &str = "********";

/// Unix seconds now: the time a proposing head puts into commands (`now`, `created`,
/// `updated`), so that applying them stays deterministic.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl State {
    /// True once `Init` has been applied (the cluster has its name).
    pub fn initialised(&self) -> bool {
        !self.cluster.name.is_empty()
    }

    /// The canonical bytes of what [`PartialEq`] compares (everything replicated except
    /// the exactly-once memory, whose HashMap has no fixed order): equal states give
    /// equal bytes, as every map is ordered. Hash them outside any lock
    /// ([`state_digest`]); `wwctl cluster verify` and the chaos suite compare heads so.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&(
            &self.cluster,
            &self.nodes,
            &self.profiles,
            &self.images,
            &self.overlays,
            &self.pool,
            &self.ssh,
            &self.audit,
            &self.access,
        ))
        .expect("the state serializes (it is written to snapshots the same way)")
    }
}

/// SHA-256 (hex) of [`State::canonical_bytes`].
pub fn state_digest(canonical: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(canonical).iter().map(|b| format!("{b:02x}")).collect()
}

/// A command with the client's request id (for exactly-once retries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: Option<String>,
    pub cmd: Command,
    /// Who asked (an operator's write; internal writes have none): recorded in the
    /// audit log when applied. Absent from entries written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<audit::AuditStamp>,
}

impl Request {
    /// `cmd` with a fresh request id, unique enough across clients and heads: time,
    /// process and a counter. Proposers call this; `apply` never does.
    pub fn with_new_id(cmd: Command) -> Request {
        Request {
            id: Some(Request::new_id()),
            cmd,
            audit: None,
        }
    }

    /// A fresh request id (see [`Request::with_new_id`]), for callers that send the
    /// command through another layer (a head's own read-modify-write).
    pub fn new_id() -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!(
            "{:x}-{:x}-{:x}",
            nanos,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// What a successful command did.
///
/// Small outcomes list every name. A bulk write over more than [`OUTCOME_KEEP_NAMES`]
/// names answers with counts and a digest instead ([`Outcome::summary`], lists empty):
/// the answer is remembered for exactly-once retries ([`DEDUP_WINDOW`] of them, inside
/// the replicated state and its snapshots), and 4,096 lists of 10,000 names made memory
/// and snapshots grow with history instead of with the cluster. Read the counts with
/// [`Outcome::changed_count`] / [`Outcome::deleted_count`], which work for both forms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Names created or changed (empty when summarized).
    pub changed: Vec<String>,
    /// Names removed (empty when summarized).
    pub deleted: Vec<String>,
    /// Set instead of the lists when they were too long to keep. Optional and absent
    /// from the JSON of small outcomes, so older logs and snapshots stay readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<OutcomeSummary>,
}

/// Counts and digest standing in for the name lists of a large [`Outcome`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeSummary {
    /// How many names were created or changed.
    pub changed: u64,
    /// How many names were removed.
    pub deleted: u64,
    /// `sha256:<hex>` over the lists (see [`Outcome::digest`]): lets a caller check
    /// that two answers name the same objects without shipping the names.
    pub digest: String,
}

/// Outcomes naming at most this many objects (changed + deleted) keep their lists;
/// larger ones are summarized. Commands whose list *is* the answer (pool blocks,
/// refused lease ops, discovery, head registration) always keep it: they are bounded
/// by `leases::MAX_BLOCK` and the lease batch size.
pub const OUTCOME_KEEP_NAMES: usize = 256;

impl Outcome {
    /// How many objects were created or changed.
    pub fn changed_count(&self) -> u64 {
        match &self.summary {
            Some(s) => s.changed,
            None => self.changed.len() as u64,
        }
    }

    /// How many objects were removed.
    pub fn deleted_count(&self) -> u64 {
        match &self.summary {
            Some(s) => s.deleted,
            None => self.deleted.len() as u64,
        }
    }

    /// True if the name lists were replaced by a [`OutcomeSummary`].
    pub fn is_summarized(&self) -> bool {
        self.summary.is_some()
    }

    /// `sha256:<hex>` of the name lists: each changed name then each deleted name,
    /// every name followed by a NUL byte, the two lists separated by a `0x01` byte
    /// (names cannot contain either).
    pub fn digest(changed: &[String], deleted: &[String]) -> String {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for n in changed {
            h.update(n.as_bytes());
            h.update([0u8]);
        }
        h.update([1u8]);
        for n in deleted {
            h.update(n.as_bytes());
            h.update([0u8]);
        }
        model::Digest(h.finalize().into()).to_string()
    }

    /// This outcome with its lists replaced by counts and a digest if it names more than
    /// `keep` objects; unchanged otherwise.
    pub fn summarized(self, keep: usize) -> Outcome {
        if self.summary.is_some() || self.changed.len() + self.deleted.len() <= keep {
            return self;
        }
        Outcome {
            summary: Some(OutcomeSummary {
                changed: self.changed.len() as u64,
                deleted: self.deleted.len() as u64,
                digest: Outcome::digest(&self.changed, &self.deleted),
            }),
            changed: Vec::new(),
            deleted: Vec::new(),
        }
    }
}

/// Why a command was refused. The state is unchanged when one is returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    #[error("{kind} {name:?} already exists; use `set` or `edit` to change it")]
    Exists { kind: String, name: String },
    #[error("{kind} {name:?} does not exist; check the name with `list`")]
    NotFound { kind: String, name: String },
    #[error("{kind} {name:?} was changed by someone else (now version {actual}, you read {expected}); read it again and retry")]
    Conflict {
        kind: String,
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("{name} is still used by {users}; remove it from them first")]
    InUse { name: String, users: String },
    #[error("{0}")]
    Invalid(String),
    #[error("dynamic pool {pool} is exhausted: every address is leased, reserved by a head or declined; enlarge the pool or register the nodes")]
    PoolExhausted { pool: String },
}

impl From<model::ModelError> for CommandError {
    fn from(e: model::ModelError) -> Self {
        CommandError::Invalid(e.to_string())
    }
}

/// The result stored in the log's response slot (openraft's `R`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyResult(pub Result<Outcome, CommandError>);

impl Default for ApplyResult {
    fn default() -> Self {
        ApplyResult(Ok(Outcome::default()))
    }
}

/// Cluster-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterConf {
    pub name: String,
    /// Heads by Raft id, with the addresses they registered.
    #[serde(default)]
    pub heads: BTreeMap<u64, HeadInfo>,
    /// Racks by name (see [`racks`]). Left out of the JSON while empty, so snapshots of
    /// clusters without racks read as before.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub racks: BTreeMap<String, Versioned<Rack>>,
    /// Ids of heads removed from the cluster: never reused (Raft would take a new head's
    /// empty log and votes for the old one's).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub removed: std::collections::BTreeSet<u64>,
}

/// A read of nodes, profiles and images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    pub nodes: Selector,
    pub profiles: Selector,
    #[serde(default = "selector_none")]
    pub images: Selector,
    /// Audit entries to return (`wwctl audit`); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditQuery>,
    /// Return credentials and join tokens (`wwctl cluster credentials|token list`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub access: bool,
}

/// Which audit entries a [`Query`] asks for: at or after unix second `since`, the
/// newest `limit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    pub since: u64,
    pub limit: usize,
}

fn selector_none() -> Selector {
    Selector::None
}

impl Query {
    pub fn nodes(sel: Selector) -> Query {
        Query {
            access: false,
            audit: None,
            nodes: sel,
            profiles: Selector::None,
            images: Selector::None,
        }
    }
    pub fn profiles(sel: Selector) -> Query {
        Query {
            access: false,
            audit: None,
            nodes: Selector::None,
            profiles: sel,
            images: Selector::None,
        }
    }
    pub fn images(sel: Selector) -> Query {
        Query {
            access: false,
            audit: None,
            nodes: Selector::None,
            profiles: Selector::None,
            images: sel,
        }
    }
}

/// The answer to a [`Query`]: raw (unmerged) objects with their versions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryResult {
    pub cluster: ClusterConf,
    pub nodes: BTreeMap<String, Versioned<NodeConf>>,
    pub profiles: BTreeMap<String, Versioned<NodeConf>>,
    #[serde(default)]
    pub images: BTreeMap<String, Versioned<ImageEntry>>,
    /// Requested names that do not exist.
    pub missing: Vec<String>,
    /// Audit entries, oldest first (when the query asked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<audit::AuditEntry>,
    /// Entries the log has dropped to stay bounded (when the query asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_dropped: Option<u64>,
    /// Credentials and join tokens, the tokens' secret hashes blanked (when asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub cluster: ClusterConf,
    pub nodes: BTreeMap<String, Versioned<NodeConf>>,
    pub profiles: BTreeMap<String, Versioned<NodeConf>>,
    #[serde(default)]
    pub images: BTreeMap<String, Versioned<ImageEntry>>,
    /// Overlay catalog: name → distribution and site tree digests. Left out of the
    /// JSON while empty, so snapshots of clusters without overlays read as before.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overlays: BTreeMap<String, Versioned<OverlayEntry>>,
    /// Dynamic DHCP pools: heads' blocks and recorded leases.
    #[serde(default)]
    pub pool: PoolTable,
    /// SSH host keys for nodes and the heads' root keys (never in a query answer).
    #[serde(default, skip_serializing_if = "SshKeys::is_empty")]
    pub ssh: SshKeys,
    /// Operators' writes, newest last, bounded (see [`audit`]).
    #[serde(default, skip_serializing_if = "audit::AuditLog::is_empty")]
    pub audit: audit::AuditLog,
    /// Credentials, revocations and join tokens (see [`access`]).
    #[serde(default, skip_serializing_if = "Access::is_empty")]
    pub access: Access,
    /// Recent request id → outcome, oldest first in `dedup_order`.
    dedup: HashMap<String, ApplyResult>,
    dedup_order: VecDeque<String>,
    /// Derived: MAC/IP → owning node. Rebuilt by [`State::rebuild_index`].
    #[serde(skip)]
    unique: HashMap<UniqueKey, String>,
}

impl PartialEq for State {
    fn eq(&self, o: &Self) -> bool {
        self.cluster == o.cluster
            && self.nodes == o.nodes
            && self.profiles == o.profiles
            && self.images == o.images
            && self.overlays == o.overlays
            && self.pool == o.pool
            && self.ssh == o.ssh
            && self.audit == o.audit
            && self.access == o.access
    }
}

impl State {
    /// Apply one committed request at log `index`.
    pub fn apply(&mut self, index: u64, req: &Request) -> ApplyResult {
        if let Some(id) = &req.id {
            if let Some(prev) = self.dedup.get(id) {
                return prev.clone();
            }
        }
        let res = ApplyResult(self.apply_cmd(index, &req.cmd).map(|o| {
            if req.cmd.answer_is_list() {
                o
            } else {
                o.summarized(OUTCOME_KEEP_NAMES)
            }
        }));
        if let Some(stamp) = &req.audit {
            self.audit.record(index, stamp, &req.cmd, &res);
        }
        if let Some(id) = &req.id {
            self.dedup.insert(id.clone(), res.clone());
            self.dedup_order.push_back(id.clone());
            while self.dedup_order.len() > DEDUP_WINDOW {
                if let Some(old) = self.dedup_order.pop_front() {
                    self.dedup.remove(&old);
                }
            }
        }
        res
    }

    /// Recompute derived indexes (after deserializing a snapshot).
    pub fn rebuild_index(&mut self) {
        self.unique.clear();
        for (name, v) in &self.nodes {
            for k in model::unique_keys(&v.value) {
                self.unique.insert(k, name.clone());
            }
        }
        self.pool.rebuild_index();
    }

    /// Answer a read.
    pub fn query(&self, q: &Query) -> QueryResult {
        let mut missing = Vec::new();
        let nodes = select(&self.nodes, &q.nodes, &mut missing);
        let profiles = select(&self.profiles, &q.profiles, &mut missing);
        let images = select(&self.images, &q.images, &mut missing);
        let (audit, audit_dropped) = match &q.audit {
            Some(a) => (self.audit.since(a.since, a.limit), Some(self.audit.dropped)),
            None => (Vec::new(), None),
        };
        QueryResult {
            cluster: self.cluster.clone(),
            nodes,
            profiles,
            images,
            missing,
            audit,
            audit_dropped,
            access: q.access.then(|| {
                let mut a = self.access.clone();
                for t in a.tokens.values_mut() {
                    t.secret_hash.clear();
                }
                a
            }),
        }
    }

    fn map(&self, kind: Kind) -> &BTreeMap<String, Versioned<NodeConf>> {
        match kind {
            Kind::Node => &self.nodes,
            Kind::Profile => &self.profiles,
        }
    }

    fn apply_cmd(&mut self, index: u64, cmd: &Command) -> Result<Outcome, CommandError> {
        let mut tx = Tx::default();
        match cmd {
            Command::Add { kind, items } => {
                for (name, conf) in items {
                    if self.map(*kind).contains_key(name) || tx.touched(*kind, name) {
                        return Err(CommandError::Exists {
                            kind: kind.as_str().into(),
                            name: name.clone(),
                        });
                    }
                    tx.put(*kind, name, conf.clone());
                }
            }
            Command::Put { kind, items } => {
                for p in items {
                    let cur = self.map(*kind).get(&p.name).map(|v| v.version);
                    if let Some(expected) = p.expect {
                        let actual = cur.unwrap_or(0);
                        if actual != expected {
                            return Err(match (expected, cur) {
                                (0, Some(_)) => CommandError::Exists {
                                    kind: kind.as_str().into(),
                                    name: p.name.clone(),
                                },
                                (_, None) => CommandError::NotFound {
                                    kind: kind.as_str().into(),
                                    name: p.name.clone(),
                                },
                                _ => CommandError::Conflict {
                                    kind: kind.as_str().into(),
                                    name: p.name.clone(),
                                    expected,
                                    actual,
                                },
                            });
                        }
                    }
                    tx.put(*kind, &p.name, p.conf.clone());
                }
            }
            Command::Patch { kind, names, patch } => {
                for name in dedup_names(names) {
                    let cur = self.get(*kind, name)?;
                    let mut conf = cur.value.clone();
                    model::apply_patch(&mut conf, patch)
                        .map_err(|e| CommandError::Invalid(format!("{} {name}: {e}", kind.as_str())))?;
                    tx.put(*kind, name, conf);
                }
            }
            Command::Delete { kind, names } => {
                for name in dedup_names(names) {
                    self.get(*kind, name)?;
                    tx.delete(*kind, name);
                }
            }
            Command::Import { conf } => {
                for (name, p) in &conf.nodeprofiles {
                    tx.put(Kind::Profile, name, p.clone());
                }
                for (name, n) in &conf.nodes {
                    tx.put(Kind::Node, name, n.clone());
                }
            }
            Command::Image(c) => return self.apply_image(index, c),
            Command::Overlay(c) => return self.apply_overlay(index, c),
            Command::Rack(c) => return self.apply_rack(index, c),
            Command::Ssh(c) => return self.apply_ssh(c),
            Command::Access(c) => return self.apply_access(c),
            Command::ReservePoolBlock {
                holder,
                head,
                first,
                last,
                size,
                lease_secs,
                now,
            } => return self.reserve_pool_block(*holder, *head, *first, *last, *size, *lease_secs, *now),
            Command::RecordLeases { holder, now, ops } => return self.record_leases(*holder, *now, ops),
            Command::Discover { mac } => return self.discover(index, mac),
            Command::RegisterHead { id, info } => {
                if self.cluster.removed.contains(id) {
                    return Err(CommandError::Invalid(format!(
                        "head {id} was removed from the cluster and ids are never reused; start this head \
                         with an empty data directory and a new id, then `wwctl cluster join` it"
                    )));
                }
                self.cluster.heads.insert(*id, info.clone());
                return Ok(Outcome {
                    changed: vec![format!("head {id}")],
                    deleted: vec![],
                    summary: None,
                });
            }
            Command::HeadRemoved { id } => {
                self.cluster.heads.remove(id);
                self.cluster.removed.insert(*id);
                return Ok(Outcome {
                    deleted: vec![format!("head {id}")],
                    ..Default::default()
                });
            }
            Command::Init { name, default_profile } => {
                model::validate_name("cluster", name)?;
                self.cluster.name = name.clone();
                if !self.profiles.contains_key("default") {
                    let conf = match default_profile {
                        Some(p) => (**p).clone(),
                        None => NodeConf {
                            comment: Some(model::DEFAULT_PROFILE_COMMENT.into()),
                            ..Default::default()
                        },
                    };
                    tx.put(Kind::Profile, "default", conf);
                }
            }
        }
        self.keep_masked_secrets(&mut tx);
        self.validate(&tx)?;
        Ok(self.commit(index, tx))
    }

    /// A BMC password that reads [`SECRET_MASK`] is one a client was shown masked and
    /// sent back unchanged (`node edit`, `node export` then `import`): the stored value
    /// is kept instead of the mask (none when nothing was stored), so a round trip
    /// through a masked listing loses no password.
    fn keep_masked_secrets(&self, tx: &mut Tx) {
        for kind in [Kind::Node, Kind::Profile] {
            let current = match kind {
                Kind::Node => &self.nodes,
                Kind::Profile => &self.profiles,
            };
            for (name, conf) in tx.slot(kind).iter_mut() {
                let Some(ipmi) = conf.as_mut().and_then(|c| c.ipmi.as_mut()) else {
                    continue;
                };
                if ipmi.password.as_deref() == Some(SECRET_MASK) {
                    ipmi.password = current
                        .get(name)
                        .and_then(|v| v.value.ipmi.as_ref())
                        .and_then(|i| i.password.clone());
                }
            }
        }
    }

    fn get(&self, kind: Kind, name: &str) -> Result<&Versioned<NodeConf>, CommandError> {
        self.map(kind).get(name).ok_or_else(|| CommandError::NotFound {
            kind: kind.as_str().into(),
            name: name.into(),
        })
    }

    /// Check a whole transaction against the state as it would be after it.
    fn validate(&self, tx: &Tx) -> Result<(), CommandError> {
        let profile_exists = |p: &str| match tx.profiles.get(p) {
            Some(change) => change.is_some(),
            None => self.profiles.contains_key(p),
        };
        for (kind, changes) in [(Kind::Profile, &tx.profiles), (Kind::Node, &tx.nodes)] {
            for (name, change) in changes {
                let Some(conf) = change else { continue };
                model::validate_name(kind.as_str(), name)?;
                model::validate_conf(name, conf)?;
                for p in &conf.profiles {
                    let p = p.strip_prefix('~').unwrap_or(p);
                    if !profile_exists(p) {
                        return Err(CommandError::Invalid(format!(
                            "{} {name:?} refers to profile {p:?}, which does not exist; add the profile first",
                            kind.as_str()
                        )));
                    }
                }
            }
        }
        // A deleted profile must not be referenced by anything that remains.
        for (pname, change) in &tx.profiles {
            if change.is_some() {
                continue;
            }
            let mut users = Vec::new();
            let refs = |conf: &NodeConf| conf.profiles.iter().any(|p| p == pname);
            for (n, v) in &self.nodes {
                match tx.nodes.get(n) {
                    Some(Some(c)) if refs(c) => users.push(format!("node {n}")),
                    None if refs(&v.value) => users.push(format!("node {n}")),
                    _ => {}
                }
            }
            for (n, c) in tx.nodes.iter().filter(|(n, _)| !self.nodes.contains_key(*n)) {
                if c.as_ref().is_some_and(refs) {
                    users.push(format!("node {n}"));
                }
            }
            for (n, v) in &self.profiles {
                match tx.profiles.get(n) {
                    Some(Some(c)) if refs(c) => users.push(format!("profile {n}")),
                    None if refs(&v.value) => users.push(format!("profile {n}")),
                    _ => {}
                }
            }
            if !users.is_empty() {
                return Err(CommandError::InUse {
                    name: format!("profile {pname}"),
                    users: images::summarize(&users),
                });
            }
        }
        // MAC/IP uniqueness: only the changed nodes need checking against the index.
        let mut seen: HashMap<UniqueKey, &str> = HashMap::new();
        for (name, change) in &tx.nodes {
            let Some(conf) = change else { continue };
            for key in model::unique_keys(conf) {
                if let Some(other) = self.unique.get(&key) {
                    if other != name && !tx.nodes.contains_key(other) {
                        return Err(dup_error(&key, other, name));
                    }
                }
                if let Some(other) = seen.insert(key.clone(), name) {
                    if other != name {
                        return Err(dup_error(&key, other, name));
                    }
                }
            }
        }
        Ok(())
    }

    fn commit(&mut self, index: u64, tx: Tx) -> Outcome {
        let mut out = Outcome::default();
        for (name, change) in tx.profiles {
            match change {
                Some(conf) => {
                    self.profiles.insert(
                        name.clone(),
                        Versioned {
                            version: index,
                            value: conf,
                        },
                    );
                    out.changed.push(name);
                }
                None => {
                    self.profiles.remove(&name);
                    out.deleted.push(name);
                }
            }
        }
        for (name, change) in tx.nodes {
            if let Some(old) = self.nodes.remove(&name) {
                for k in model::unique_keys(&old.value) {
                    if self.unique.get(&k) == Some(&name) {
                        self.unique.remove(&k);
                    }
                }
            }
            match change {
                Some(conf) => {
                    for k in model::unique_keys(&conf) {
                        self.unique.insert(k, name.clone());
                    }
                    self.nodes.insert(
                        name.clone(),
                        Versioned {
                            version: index,
                            value: conf,
                        },
                    );
                    out.changed.push(name);
                }
                None => out.deleted.push(name),
            }
        }
        out
    }
}

fn dup_error(key: &UniqueKey, a: &str, b: &str) -> CommandError {
    CommandError::Invalid(format!(
        "{key} is used by both node {a:?} and node {b:?}; each node needs its own"
    ))
}

fn dedup_names(names: &[String]) -> impl Iterator<Item = &String> {
    let mut seen = HashSet::new();
    names.iter().filter(move |n| seen.insert(n.as_str()))
}

fn select<T: Clone>(
    map: &BTreeMap<String, Versioned<T>>,
    sel: &Selector,
    missing: &mut Vec<String>,
) -> BTreeMap<String, Versioned<T>> {
    match sel {
        Selector::None => BTreeMap::new(),
        Selector::All => map.clone(),
        Selector::Names(names) => names
            .iter()
            .filter_map(|n| match map.get(n) {
                Some(v) => Some((n.clone(), v.clone())),
                None => {
                    missing.push(n.clone());
                    None
                }
            })
            .collect(),
    }
}

/// Pending changes of one command: `Some(conf)` = put, `None` = delete.
#[derive(Default)]
struct Tx {
    nodes: BTreeMap<String, Option<NodeConf>>,
    profiles: BTreeMap<String, Option<NodeConf>>,
}

impl Tx {
    fn slot(&mut self, kind: Kind) -> &mut BTreeMap<String, Option<NodeConf>> {
        match kind {
            Kind::Node => &mut self.nodes,
            Kind::Profile => &mut self.profiles,
        }
    }
    fn touched(&self, kind: Kind, name: &str) -> bool {
        match kind {
            Kind::Node => self.nodes.contains_key(name),
            Kind::Profile => self.profiles.contains_key(name),
        }
    }
    fn put(&mut self, kind: Kind, name: &str, conf: NodeConf) {
        self.slot(kind).insert(name.to_string(), Some(conf));
    }
    fn delete(&mut self, kind: Kind, name: &str) {
        self.slot(kind).insert(name.to_string(), None);
    }
}

#[cfg(test)]
mod tests;
