//! Test fixtures shared by the store's unit tests: a small key-value type config and state
//! machine, and helpers to open a store in a temp dir and append entries.
//!
//! The KV state machine deliberately has a derived index (`key_count_index`, not serialized) and
//! a `rebuilt_calls` counter so tests can check that [`StateMachineCore::rebuilt`] runs after a
//! snapshot install or restart, and a request that panics to test panic containment.

// openraft's `declare_raft_types!` makes its types `pub`; this module is test-only.
#![allow(unreachable_pub)]

use std::collections::BTreeMap;
use std::io::Cursor;

use openraft::storage::RaftLogStorageExt;
use openraft::testing::log_id;
use openraft::{BasicNode, Entry, EntryPayload};
use serde::{Deserialize, Serialize};

use super::{open, LogStore, StateMachineCore, StateMachineStore, StoreConfig};

/// A KV write command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvRequest {
    Set {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// Violates the "never panic" contract, to test containment.
    Explode,
}

/// Reply to a [`KvRequest`]: the previous value of the key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvResponse {
    pub previous: Option<String>,
}

openraft::declare_raft_types!(
    /// Type config used by the store tests.
    pub KvConfig:
        D = KvRequest,
        R = KvResponse,
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<KvConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The KV state machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvState {
    pub map: BTreeMap<String, String>,
    /// Every index `apply` was called with, in order.
    pub applied_indexes: Vec<u64>,
    /// Derived data, rebuilt by `rebuilt()`.
    #[serde(skip)]
    pub key_count_index: usize,
    #[serde(skip)]
    pub rebuilt_calls: u32,
}

impl StateMachineCore for KvState {
    type Request = KvRequest;
    type Response = KvResponse;

    fn apply(&mut self, index: u64, req: &KvRequest) -> KvResponse {
        self.applied_indexes.push(index);
        let previous = match req {
            KvRequest::Set { key, value } => self.map.insert(key.clone(), value.clone()),
            KvRequest::Delete { key } => self.map.remove(key),
            KvRequest::Explode => panic!("KvRequest::Explode applied at {index}"),
        };
        self.key_count_index = self.map.len();
        KvResponse { previous }
    }

    fn rebuilt(&mut self) {
        self.key_count_index = self.map.len();
        self.rebuilt_calls += 1;
    }
}

pub type KvLogStore = LogStore<KvConfig>;
pub type KvSmStore = StateMachineStore<KvConfig, KvState>;

/// A small-cache config for tests.
pub fn test_config() -> StoreConfig {
    StoreConfig {
        cache_capacity_bytes: 4 * 1024 * 1024,
        ..StoreConfig::default()
    }
}

/// Opens a fresh store in a new temp dir (kept alive by the returned guard).
pub fn open_kv() -> (tempfile::TempDir, KvLogStore, KvSmStore) {
    let dir = tempfile::tempdir().expect("create temp dir");
    let (log, sm) = open(dir.path(), &test_config()).expect("open store");
    (dir, log, sm)
}

/// Re-opens a store whose previous handles were just dropped.
///
/// sled's background flusher thread lets go of the directory lock a moment after the last
/// `Db` handle is dropped, so an immediate re-open can see `is_locked`; retry for up to 5 s,
/// as `wulfd` does on restart. Any other outcome is returned at once.
pub fn try_reopen_kv(dir: &std::path::Path) -> Result<(KvLogStore, KvSmStore), super::StoreError> {
    retry_locked(|| open(dir, &test_config()), |e: &super::StoreError| e.is_locked())
}

/// [`try_reopen_kv`] that must succeed.
pub fn reopen_kv(dir: &std::path::Path) -> (KvLogStore, KvSmStore) {
    try_reopen_kv(dir).expect("re-open store")
}

/// Re-opens a bare sled `Db` in `dir`, with the same retry as [`try_reopen_kv`].
pub fn reopen_sled(dir: &std::path::Path) -> sled::Db {
    retry_locked(
        || sled::Config::new().path(dir).open(),
        |e: &sled::Error| e.to_string().contains("could not acquire lock"),
    )
    .expect("re-open sled")
}

fn retry_locked<T, E>(mut f: impl FnMut() -> Result<T, E>, locked: impl Fn(&E) -> bool) -> Result<T, E> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match f() {
            Err(e) if locked(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// A `Set` request.
pub fn set(key: &str, value: &str) -> KvRequest {
    KvRequest::Set {
        key: key.into(),
        value: value.into(),
    }
}

/// A normal entry at `index` in `term`, proposed by node 1.
pub fn normal_ent(term: u64, index: u64, req: KvRequest) -> Entry<KvConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(req),
    }
}

/// Appends and waits until the entries are reported flushed.
pub async fn append(log: &mut KvLogStore, entries: impl IntoIterator<Item = Entry<KvConfig>> + Send) {
    let entries: Vec<_> = entries.into_iter().collect();
    log.blocking_append(entries).await.expect("append");
}
