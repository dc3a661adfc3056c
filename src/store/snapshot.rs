//! Persistence of the state-machine snapshot in the sled tree `snapshot`.
//!
//! # Design
//!
//! * Only the **latest** snapshot is kept, under the key `current`: one value framed as
//!   `meta length (u64 BE) | meta (JSON SnapshotMeta) | data (the JSON SnapshotPayload)`.
//!   Keeping meta and data in *one* value means a reader can never see the meta of one snapshot
//!   with the data of another (two sled `get`s are not atomic against a concurrent batch).
//!   Next to it, `counter` (big-endian `u64`) is the last snapshot-id counter used by this node;
//!   both keys are written with one sled `Batch` (atomic within a tree) and flushed before
//!   [`SnapshotStore::save`] returns, because openraft purges the log up to the snapshot as soon
//!   as it has been built or installed.
//! * Building a snapshot runs concurrently with applying (and possibly with installing a snapshot
//!   received from the leader). A build that finishes late must not replace a newer snapshot on
//!   disk — otherwise a restart would restore an older state while the log entries in between
//!   are already purged. Saves are serialized by an async mutex and [`SaveMode::IfNotOlder`]
//!   skips a write whose `last_log_id` is older than the stored one.
//! * Snapshot ids are `{term}-{index}-{counter}` (or `none-{counter}` for an empty state). The
//!   counter is persisted with each snapshot, so ids stay unique across restarts.
//! * The snapshot data carries `last_applied` and `last_membership` next to the state, so it is
//!   self-describing; on install they are checked against the [`SnapshotMeta`] that came with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::{BasicNode, ErrorSubject, ErrorVerb, LogId, SnapshotMeta, StorageError, StoredMembership};
use serde::{Deserialize, Serialize};

use super::{flush, storage_err, storage_msg, StoreError};

const KEY_CURRENT: &str = "current";
const KEY_COUNTER: &str = "counter";

/// The serialized content of a snapshot: the whole application state plus the Raft bookkeeping
/// needed to resume from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotPayload<S> {
    pub(crate) state: S,
    pub(crate) last_applied: Option<LogId<u64>>,
    pub(crate) last_membership: StoredMembership<u64, BasicNode>,
}

/// A snapshot as stored on disk.
#[derive(Debug, Clone)]
pub(crate) struct StoredSnapshot {
    pub(crate) meta: SnapshotMeta<u64, BasicNode>,
    pub(crate) data: Vec<u8>,
}

/// Whether [`SnapshotStore::save`] may be skipped for a stale snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SaveMode {
    /// Locally built snapshot: skip it if the stored one covers a later log id.
    IfNotOlder,
    /// Snapshot installed from the leader: openraft decided it is authoritative; always write.
    Always,
}

/// Handle to the `snapshot` tree. Cheap to clone; clones share the save lock and the counter.
#[derive(Clone)]
pub(crate) struct SnapshotStore {
    db: sled::Db,
    tree: sled::Tree,
    save_lock: Arc<tokio::sync::Mutex<()>>,
    counter: Arc<AtomicU64>,
}

impl SnapshotStore {
    /// Wraps the `snapshot` tree; the id counter resumes from the persisted value.
    pub(crate) fn new(db: sled::Db, tree: sled::Tree) -> Result<Self, StoreError> {
        let counter = match tree.get(KEY_COUNTER).map_err(|source| StoreError::Sled {
            context: "reading the snapshot counter",
            source,
        })? {
            Some(v) => decode_counter(&v).ok_or_else(|| StoreError::IncompatibleFormat {
                found: format!("snapshot counter of {} bytes", v.len()),
                supported: "8-byte big-endian snapshot counter",
            })?,
            None => 0,
        };
        Ok(Self {
            db,
            tree,
            save_lock: Arc::new(tokio::sync::Mutex::new(())),
            counter: Arc::new(AtomicU64::new(counter)),
        })
    }

    /// Returns a fresh snapshot id for a snapshot covering `last`.
    pub(crate) fn next_id(&self, last: Option<&LogId<u64>>) -> String {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        match last {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, counter),
            None => format!("none-{counter}"),
        }
    }

    /// Reads the persisted snapshot, for use inside the openraft traits.
    pub(crate) fn load(&self) -> Result<Option<StoredSnapshot>, StorageError<u64>> {
        self.load_raw()
            .map_err(|e| storage_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e))
    }

    /// Reads the persisted snapshot, for use while opening the store.
    pub(crate) fn load_for_open(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        self.load_raw().map_err(|e| match e {
            LoadError::Sled(source) => StoreError::Sled {
                context: "reading the persisted snapshot",
                source,
            },
            LoadError::Meta(source) => StoreError::Corrupt {
                what: "snapshot metadata",
                source,
            },
            LoadError::BadFrame(len) => StoreError::IncompatibleFormat {
                found: format!("snapshot record of {len} bytes with an invalid header"),
                supported: "length-prefixed snapshot record",
            },
        })
    }

    fn load_raw(&self) -> Result<Option<StoredSnapshot>, LoadError> {
        match self.tree.get(KEY_CURRENT)? {
            None => Ok(None),
            Some(record) => decode_record(&record).map(Some),
        }
    }

    /// Persists `snap` as the current snapshot and flushes it. Returns `false` if the write was
    /// skipped because a newer snapshot is already stored (only with [`SaveMode::IfNotOlder`]).
    pub(crate) async fn save(&self, snap: &StoredSnapshot, mode: SaveMode) -> Result<bool, StorageError<u64>> {
        let signature = snap.meta.signature();
        let subject = || ErrorSubject::Snapshot(Some(signature.clone()));
        let _guard = self.save_lock.lock().await;

        if mode == SaveMode::IfNotOlder {
            let stored = self
                .load_raw()
                .map_err(|e| storage_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e))?;
            if let Some(stored) = stored {
                if stored.meta.last_log_id > snap.meta.last_log_id {
                    tracing::info!(
                        built = %snap.meta,
                        stored = %stored.meta,
                        "not persisting built snapshot: a newer one is already stored"
                    );
                    return Ok(false);
                }
            }
        }

        let record = encode_record(snap).map_err(|e| storage_err(subject(), ErrorVerb::Write, &e))?;
        let mut batch = sled::Batch::default();
        batch.insert(KEY_CURRENT, record);
        batch.insert(KEY_COUNTER, &self.counter.load(Ordering::Relaxed).to_be_bytes());
        let tree = self.tree.clone();
        super::blocking_write(move || tree.apply_batch(batch))
            .await
            .map_err(|e| storage_err(subject(), ErrorVerb::Write, &e))?;
        flush(&self.db, subject(), ErrorVerb::Write).await?;
        tracing::debug!(meta = %snap.meta, bytes = snap.data.len(), "persisted snapshot");
        Ok(true)
    }
}

/// Why reading the stored snapshot failed.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("sled read failed")]
    Sled(#[from] sled::Error),
    #[error("snapshot metadata is not valid JSON")]
    Meta(#[from] serde_json::Error),
    #[error("snapshot record of {0} bytes has an invalid length header")]
    BadFrame(usize),
}

/// Frames a snapshot as `meta length (u64 BE) | meta JSON | data`.
fn encode_record(snap: &StoredSnapshot) -> Result<Vec<u8>, serde_json::Error> {
    let meta = serde_json::to_vec(&snap.meta)?;
    let mut record = Vec::with_capacity(8 + meta.len() + snap.data.len());
    record.extend_from_slice(&(meta.len() as u64).to_be_bytes());
    record.extend_from_slice(&meta);
    record.extend_from_slice(&snap.data);
    Ok(record)
}

/// Inverse of [`encode_record`].
fn decode_record(record: &[u8]) -> Result<StoredSnapshot, LoadError> {
    let bad = || LoadError::BadFrame(record.len());
    let (header, rest) = record.split_first_chunk::<8>().ok_or_else(bad)?;
    let meta_len = usize::try_from(u64::from_be_bytes(*header)).map_err(|_| bad())?;
    if meta_len > rest.len() {
        return Err(bad());
    }
    let (meta, data) = rest.split_at(meta_len);
    Ok(StoredSnapshot {
        meta: serde_json::from_slice(meta)?,
        data: data.to_vec(),
    })
}

fn decode_counter(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

/// Encodes a snapshot payload as JSON.
pub(crate) fn encode_payload<S: Serialize>(payload: &SnapshotPayload<S>) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(payload)
}

/// Decodes a snapshot payload, checking it against the metadata it is installed with.
pub(crate) fn decode_payload<S: serde::de::DeserializeOwned>(
    meta: &SnapshotMeta<u64, BasicNode>,
    data: &[u8],
) -> Result<SnapshotPayload<S>, StorageError<u64>> {
    let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
    let payload: SnapshotPayload<S> =
        serde_json::from_slice(data).map_err(|e| storage_err(subject(), ErrorVerb::Read, &e))?;
    if payload.last_applied != meta.last_log_id || payload.last_membership != meta.last_membership {
        return Err(storage_msg(
            subject(),
            ErrorVerb::Read,
            format!(
                "snapshot data does not match its metadata: data covers {:?} with membership {:?}, \
                 metadata says {:?} with membership {:?}",
                payload.last_applied, payload.last_membership, meta.last_log_id, meta.last_membership
            ),
        ));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;
    use openraft::Membership;

    use super::*;

    fn open_tree() -> (tempfile::TempDir, SnapshotStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("snapshot").unwrap();
        (dir, SnapshotStore::new(db, tree).unwrap())
    }

    fn snap(store: &SnapshotStore, term: u64, index: u64) -> StoredSnapshot {
        let last = log_id(term, 1, index);
        StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: Some(last),
                last_membership: StoredMembership::default(),
                snapshot_id: store.next_id(Some(&last)),
            },
            data: format!("{term}/{index}").into_bytes(),
        }
    }

    #[test]
    fn ids_are_term_index_counter() {
        let (_dir, store) = open_tree();
        assert_eq!(store.next_id(Some(&log_id(3, 1, 9))), "3-9-1");
        assert_eq!(store.next_id(None), "none-2");
    }

    #[tokio::test]
    async fn stale_build_does_not_overwrite_newer_snapshot() {
        let (_dir, store) = open_tree();
        let newer = snap(&store, 2, 20);
        let older = snap(&store, 2, 10);
        assert!(store.save(&newer, SaveMode::Always).await.unwrap());
        assert!(!store.save(&older, SaveMode::IfNotOlder).await.unwrap());
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(loaded.meta, newer.meta);
        assert_eq!(loaded.data, newer.data);

        // An installed snapshot is authoritative even if older.
        assert!(store.save(&older, SaveMode::Always).await.unwrap());
        assert_eq!(store.load().unwrap().unwrap().meta, older.meta);
    }

    #[tokio::test]
    async fn counter_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let store = SnapshotStore::new(db.clone(), db.open_tree("snapshot").unwrap()).unwrap();
            let s = snap(&store, 1, 1);
            store.save(&s, SaveMode::IfNotOlder).await.unwrap();
            assert_eq!(s.meta.snapshot_id, "1-1-1");
        }
        let db = crate::store::test_support::reopen_sled(dir.path());
        let store = SnapshotStore::new(db.clone(), db.open_tree("snapshot").unwrap()).unwrap();
        assert_eq!(store.next_id(None), "none-2");
    }

    #[test]
    fn record_framing_round_trips_and_rejects_garbage() {
        let (_dir, store) = open_tree();
        let s = snap(&store, 4, 2);
        let back = decode_record(&encode_record(&s).unwrap()).unwrap();
        assert_eq!(back.meta, s.meta);
        assert_eq!(back.data, s.data);

        assert!(matches!(decode_record(b"short"), Err(LoadError::BadFrame(5))));
        let mut huge = u64::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(matches!(decode_record(&huge), Err(LoadError::BadFrame(_))));
        let mut not_json = 3u64.to_be_bytes().to_vec();
        not_json.extend_from_slice(b"abcdata");
        assert!(matches!(decode_record(&not_json), Err(LoadError::Meta(_))));
    }

    #[test]
    fn payload_must_match_meta() {
        let membership = StoredMembership::new(
            Some(log_id(1, 0, 1)),
            Membership::new(vec![[1u64, 2].into_iter().collect()], None),
        );
        let payload = SnapshotPayload {
            state: 7u32,
            last_applied: Some(log_id(1, 0, 5)),
            last_membership: membership.clone(),
        };
        let data = encode_payload(&payload).unwrap();
        let mut meta = SnapshotMeta {
            last_log_id: Some(log_id(1, 0, 5)),
            last_membership: membership,
            snapshot_id: "1-5-1".into(),
        };
        let back: SnapshotPayload<u32> = decode_payload(&meta, &data).unwrap();
        assert_eq!(back.state, 7);

        meta.last_log_id = Some(log_id(1, 0, 6));
        assert!(decode_payload::<u32>(&meta, &data).is_err());
        assert!(decode_payload::<u32>(&meta, b"not json").is_err());
    }
}
