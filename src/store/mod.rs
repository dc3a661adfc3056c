//! Durable Raft storage for wulfpack: a sled-backed Raft log store and a state-machine store,
//! generic over the application's deterministic state machine ([`StateMachineCore`]).
//!
//! # Design
//!
//! * **One sled `Db` per data directory, three trees.** [`open`] opens a single [`sled::Db`] in
//!   the node's data dir and hands out the two openraft storage halves:
//!   - `log` — the Raft log: big-endian `u64` index → JSON-encoded [`openraft::Entry`]. Big-endian
//!     keys make sled's lexicographic order equal to numeric order, so range scans, `first()` and
//!     `last()` are index-ordered.
//!   - `meta` — small Raft bookkeeping values (`vote`, `committed`, `last_purged`) plus the
//!     on-disk `format` version.
//!   - `snapshot` — the latest snapshot (`meta`, `data`, and the snapshot-id `counter`), written
//!     as one atomic sled batch.
//!
//!   Both halves share the `Db`, so one flush makes *every* earlier write durable, whichever tree
//!   it went to. sled allows only one `Db` per directory per process (it holds a file lock), so
//!   [`open`] must be called once per data dir; clone the returned handles instead.
//!
//! * **The state machine lives in memory; snapshots are its only persistent form.** The
//!   application state `S` sits in an `Arc<RwLock<..>>` together with `last_applied` and the last
//!   membership. Nothing is written to disk on `apply` — openraft re-applies committed log entries
//!   after the last snapshot at start-up (the log store persists `committed` for this). Building
//!   or installing a snapshot persists `{state, last_applied, last_membership}` as JSON and
//!   flushes before returning, because openraft purges the log up to the snapshot right after.
//!   On [`open`], the state machine is restored from that snapshot and [`StateMachineCore::rebuilt`]
//!   is called.
//!
//! * **When to snapshot, and replay progress.** A restart re-applies every committed entry
//!   after the snapshot before the head serves, so the store counts the apply time, log bytes
//!   and age since the last snapshot and [`spawn_snapshot_trigger`] asks openraft for one when
//!   [`SnapshotPolicy`] says so (see `compaction.rs`). [`StateReader::replay_progress`] tells
//!   how many of the entries to replay are applied, while `Raft::new` replays them.
//!
//! * **Durability.** Every write that openraft relies on is flushed before it is acknowledged:
//!   `append` writes its whole batch with one sled `Batch` and flushes once before invoking the
//!   `LogFlushed` callback (group commit: one fsync per `append` call, however many entries);
//!   `save_vote`, `truncate`, `purge` and snapshot writes flush before returning. `save_committed`
//!   is *not* flushed: a stale `committed` only means fewer entries are re-applied at start-up,
//!   which openraft explicitly tolerates, and the value rides along with the next flush (or
//!   sled's background flush, every 500 ms).
//!
//! * **Flushing uses `spawn_blocking(Db::flush)` rather than `Db::flush_async`.** sled 0.34.7's
//!   `flush_async` can deadlock when several flushes are in flight at once or across tokio
//!   runtimes (sled issues #1241, #1308, #1357 — fixed only on sled's unreleased main branch).
//!   Here the log store, vote writes and snapshot builds flush concurrently, so we run the
//!   synchronous flush on tokio's blocking pool instead: same durability, no deadlock, and the
//!   async worker threads are never blocked by an fsync.
//!
//! * **Power loss caveat.** On Linux, sled 0.34's flush uses `sync_file_range` rather than
//!   `fsync`/`fdatasync`, which does not flush file metadata or the drive's volatile write cache,
//!   so a *power loss* (not a process crash) can lose writes that were reported flushed (sled
//!   issue #1452). We accept this: a process crash is fully covered, and for power loss the Raft
//!   majority is the protection — an entry is committed only once a quorum of head nodes holds
//!   it, and a node that lost its tail re-fetches it from the leader. Simultaneous power loss of
//!   a majority of head nodes could lose recently committed configuration.
//!
//! * **sled configuration.** The cache is bounded by [`StoreConfig::cache_capacity_bytes`]
//!   (default 64 MiB; sled's own default is 1 GiB, far too much for a head node that also serves
//!   provisioning traffic). We use [`sled::Mode::LowSpace`] (sled's default, set explicitly):
//!   a Raft log is append-then-bulk-delete, which produces a lot of garbage; `LowSpace` compacts
//!   segments more eagerly, keeping the data dir small, and the write rate of replicated
//!   cluster configuration is far too low for `HighThroughput` to matter.
//!
//! * **Errors.** Opening and configuration errors are [`StoreError`] (with context). Inside the
//!   openraft trait implementations every failure is mapped to [`openraft::StorageError`] with the
//!   matching [`openraft::ErrorSubject`] and [`openraft::ErrorVerb`]; openraft shuts the Raft
//!   node down on any storage error, which is what we want for an I/O failure or corruption.
//!
//! Constructing a Raft node:
//!
//! ```ignore
//! let (log_store, sm_store) = store::open::<TypeConfig, MyState>(&data_dir, &StoreConfig::default())?;
//! let reader = sm_store.reader(); // keep for the API side before moving the store into Raft
//! let raft = openraft::Raft::new(node_id, Arc::new(config), network, log_store, sm_store).await?;
//! ```

// openraft's trait methods must return `StorageError<u64>` (224 bytes); the internal helpers
// that feed them return it too rather than a boxed copy that would be unboxed at every call site.
#![allow(
    clippy::result_large_err,
    reason = "openraft::StorageError is the error type openraft's storage traits require"
)]

mod compaction;
mod log;
mod sm;
mod snapshot;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{AnyError, BasicNode, Entry, ErrorSubject, ErrorVerb, RaftTypeConfig};
use openraft::{StorageError, StorageIOError};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use self::compaction::{
    run_snapshot_trigger, spawn_snapshot_trigger, SinceSnapshot, SnapshotPolicy, SnapshotReason,
};
pub use self::log::LogStore;
pub use self::sm::{ReplayProgress, SmSnapshotBuilder, StateMachineStore, StateReader};

/// The application's deterministic state machine (pure, sans-IO). The store persists it via
/// snapshots (JSON, via its `Serialize`/`Deserialize` impls).
pub trait StateMachineCore: Default + Clone + Send + Sync + Serialize + DeserializeOwned + 'static {
    /// The command type; equals the Raft type config's `C::D`.
    type Request;
    /// The reply type; equals the Raft type config's `C::R`.
    type Response;

    /// Apply one committed command at log `index`. Must be deterministic and must never panic.
    ///
    /// (A panic is caught by the store and turned into a storage error, which shuts the Raft node
    /// down; the in-memory state may then be partially updated.)
    fn apply(&mut self, index: u64, req: &Self::Request) -> Self::Response;

    /// Called after the whole state was replaced (snapshot install / restart), e.g. to rebuild
    /// indexes that are not part of the serialized form.
    fn rebuilt(&mut self) {}
}

/// The Raft type configurations this store supports: `u64` node ids, [`BasicNode`], openraft's
/// standard [`Entry`] and in-memory snapshot data.
///
/// This is exactly the bound set spelled out on [`open`]; it is blanket-implemented, so any
/// `declare_raft_types!` config with those associated types satisfies it automatically.
pub trait StoreTypeConfig:
    RaftTypeConfig<NodeId = u64, Node = BasicNode, Entry = Entry<Self>, SnapshotData = Cursor<Vec<u8>>>
{
}

impl<C> StoreTypeConfig for C where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode, Entry = Entry<C>, SnapshotData = Cursor<Vec<u8>>>
{
}

/// Tuning knobs for the sled database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Upper bound of sled's page cache, in bytes (default 64 MiB).
    pub cache_capacity_bytes: u64,
    /// Longest a write or flush may take before it is a storage failure that stops Raft
    /// (default [`STORAGE_DEADLINE`]).
    pub write_deadline: std::time::Duration,
}

impl StoreConfig {
    /// Default page-cache bound: 64 MiB.
    pub const DEFAULT_CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: Self::DEFAULT_CACHE_CAPACITY_BYTES,
            write_deadline: STORAGE_DEADLINE,
        }
    }
}

/// Errors from opening or configuring the store. (Errors inside the openraft trait
/// implementations are reported as [`openraft::StorageError`].)
///
/// Messages are self-contained — they include the underlying cause — because they end up in
/// daemon logs and CLI output formatted with `{}`; the cause is also available via `source()`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The [`StoreConfig`] is unusable.
    #[error("invalid store configuration: {0}")]
    InvalidConfig(String),

    /// The data directory could not be created.
    #[error("cannot create store directory {}: {source}", path.display())]
    CreateDir {
        /// The directory passed to [`open`].
        path: PathBuf,
        /// Why it could not be created.
        #[source]
        source: std::io::Error,
    },

    /// sled refused to open the database: another process (or another live `open` in this
    /// process) holds the directory lock — see [`StoreError::is_locked`] — or the files are
    /// damaged or unreadable.
    #[error("cannot open sled database in {}: {source}", path.display())]
    Open {
        /// The directory passed to [`open`].
        path: PathBuf,
        /// sled's reason.
        #[source]
        source: sled::Error,
    },

    /// A sled operation failed while opening the store.
    #[error("sled error while {context}: {source}")]
    Sled {
        /// What the store was doing.
        context: &'static str,
        /// sled's reason.
        #[source]
        source: sled::Error,
    },

    /// A persisted value could not be decoded.
    #[error("persisted {what} is corrupt: {source}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },

    /// The persisted snapshot's data disagrees with its metadata.
    #[error("persisted snapshot {meta} does not match its data")]
    InconsistentSnapshot {
        /// The snapshot's metadata, displayed.
        meta: String,
    },

    /// The data directory was written by an incompatible version of this store.
    #[error("store directory has on-disk format {found:?}, this build supports {supported:?}")]
    IncompatibleFormat {
        /// What was found on disk.
        found: String,
        /// What this build understands.
        supported: &'static str,
    },
}

impl StoreError {
    /// True if the data dir is locked by another open `Db` (another process, or a previous
    /// instance in this process that has not been dropped yet): retrying later may succeed.
    pub fn is_locked(&self) -> bool {
        match self {
            StoreError::Open {
                source: sled::Error::Io(e),
                ..
            } => e.to_string().contains("could not acquire lock"),
            _ => false,
        }
    }
}

/// The on-disk layout version, stored under `meta/format`.
const FORMAT_VERSION: &str = "wulfpack-store-v1";

pub(crate) const TREE_LOG: &str = "log";
pub(crate) const TREE_META: &str = "meta";
pub(crate) const TREE_SNAPSHOT: &str = "snapshot";
const KEY_FORMAT: &str = "format";

/// Opens both stores on one sled `Db` in `dir` (created if missing).
///
/// The state machine is restored from the persisted snapshot, if any. Call this once per data
/// directory per process; clone the returned handles if several owners need them.
pub fn open<C, S>(dir: &Path, cfg: &StoreConfig) -> Result<(LogStore<C>, StateMachineStore<C, S>), StoreError>
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode, Entry = Entry<C>, SnapshotData = Cursor<Vec<u8>>>,
    S: StateMachineCore<Request = C::D, Response = C::R>,
{
    if cfg.cache_capacity_bytes == 0 {
        return Err(StoreError::InvalidConfig(
            "cache_capacity_bytes must be greater than zero".to_string(),
        ));
    }
    if cfg.write_deadline.is_zero() {
        return Err(StoreError::InvalidConfig(
            "write_deadline must be greater than zero".to_string(),
        ));
    }
    WRITE_DEADLINE_MS.store(
        cfg.write_deadline.as_millis() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;

    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(cfg.cache_capacity_bytes)
        .mode(sled::Mode::LowSpace)
        .open()
        .map_err(|source| StoreError::Open {
            path: dir.to_path_buf(),
            source,
        })?;

    let open_tree = |name: &'static str| {
        db.open_tree(name).map_err(|source| StoreError::Sled {
            context: "opening a sled tree",
            source,
        })
    };
    let log_tree = open_tree(TREE_LOG)?;
    let meta_tree = open_tree(TREE_META)?;
    let snapshot_tree = open_tree(TREE_SNAPSHOT)?;

    check_format(&meta_tree)?;

    let work = Arc::new(compaction::WorkCounters::new());
    let log_store = LogStore::new(db.clone(), log_tree, meta_tree, Arc::clone(&work));
    let sm_store = StateMachineStore::restore(snapshot::SnapshotStore::new(db, snapshot_tree)?, Arc::clone(&work))?;
    let applied = sm_store.last_applied().map_or(0, |id| id.index);
    let (committed, tail_bytes) = log_store.open_counts(applied)?;
    work.appended(tail_bytes);
    sm_store.set_replay_target(committed);
    tracing::info!(
        dir = %dir.display(),
        last_applied = ?sm_store.last_applied(),
        replay = committed.saturating_sub(applied),
        tail_bytes,
        "opened raft store"
    );
    Ok((log_store, sm_store))
}

/// Stamps a fresh data dir with [`FORMAT_VERSION`], or verifies the stamp of an existing one.
fn check_format(meta: &sled::Tree) -> Result<(), StoreError> {
    let previous = meta
        .compare_and_swap(KEY_FORMAT, None as Option<&[u8]>, Some(FORMAT_VERSION))
        .map_err(|source| StoreError::Sled {
            context: "writing the store format version",
            source,
        })?;
    match previous {
        Ok(()) => Ok(()),
        Err(cas) if cas.current.as_deref() == Some(FORMAT_VERSION.as_bytes()) => Ok(()),
        Err(cas) => Err(StoreError::IncompatibleFormat {
            found: cas
                .current
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default(),
            supported: FORMAT_VERSION,
        }),
    }
}

/// Why a flush failed.
#[derive(Debug, thiserror::Error)]
enum FlushError {
    #[error("sled flush failed")]
    Sled(#[from] sled::Error),
    #[error("flush task did not complete")]
    Join(#[from] tokio::task::JoinError),
    #[error("the disk did not finish a write within {0:?} (full, failing or hung); treated as a storage failure")]
    Stalled(std::time::Duration),
}

/// Default longest time a sled write or flush may take before it counts as a storage
/// failure ([`StoreConfig::write_deadline`]).
///
/// Why: on a full disk sled can block a writer (waiting for IO buffers its flusher cannot
/// write) or a flush forever, without an error: the Raft core then waits for ever, no
/// storage error stops it, and wulfd stays up answering nothing (the chaos suite's `mixed`
/// scenario saw a head so after a disk-full fault). A deadline turns the stall into the
/// storage error that stops Raft and wulfd (`daemon::watch_raft`), for the service manager
/// to restart it. Generous: a busy spinning disk may take seconds for one flush.
pub const STORAGE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// The deadline in force, in milliseconds: one per process (a process opens one data
/// dir; tests that open several use the same setting), set by [`open`].
static WRITE_DEADLINE_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(STORAGE_DEADLINE.as_millis() as u64);

/// Runs `f` (a sled write) on the blocking pool within the write deadline. Every sled
/// write of the stores goes through here: one left on the async thread could block the
/// Raft core where no deadline reaches it.
async fn blocking_write<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, sled::Error> + Send + 'static,
) -> Result<T, FlushError> {
    let deadline = std::time::Duration::from_millis(WRITE_DEADLINE_MS.load(std::sync::atomic::Ordering::Relaxed));
    match tokio::time::timeout(deadline, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(FlushError::from(e)),
        Ok(Err(e)) => Err(FlushError::from(e)),
        Err(_) => Err(FlushError::Stalled(deadline)),
    }
}

/// Makes every write issued so far on `db` (all trees) durable.
///
/// Runs sled's synchronous flush on tokio's blocking pool; see the module docs for why this is
/// not `Db::flush_async`.
async fn flush(db: &sled::Db, subject: ErrorSubject<u64>, verb: ErrorVerb) -> Result<(), StorageError<u64>> {
    let db = db.clone();
    blocking_write(move || db.flush().map(|_bytes| ()))
        .await
        .map_err(|e| storage_err(subject, verb, &e))
}

/// Builds an openraft storage error for `subject`/`verb`, keeping `source`'s message and chain.
fn storage_err<E>(subject: ErrorSubject<u64>, verb: ErrorVerb, source: &E) -> StorageError<u64>
where
    E: std::error::Error + 'static,
{
    StorageIOError::new(subject, verb, AnyError::new(source)).into()
}

/// Builds an openraft storage error from a plain message (defensive checks).
fn storage_msg(subject: ErrorSubject<u64>, verb: ErrorVerb, msg: impl ToString) -> StorageError<u64> {
    StorageIOError::new(subject, verb, AnyError::error(msg)).into()
}
