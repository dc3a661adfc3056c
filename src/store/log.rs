//! The Raft log store ([`RaftLogStorage`] + [`RaftLogReader`]) on the sled trees `log` and `meta`.
//!
//! # Design
//!
//! * `log` maps the big-endian `u64` log index to the JSON-encoded [`Entry`]. Big-endian keys
//!   sort numerically, so index ranges map directly onto sled key ranges, and the last entry is
//!   `tree.last()`. Every decoded entry is checked against its key (defensive: a mismatch means
//!   corruption and is reported, not papered over).
//! * `meta` holds `vote`, `committed` and `last_purged` as JSON [`Vote`] / [`LogId`] values.
//! * **Durability / group commit.** `append` writes all entries of the call with one atomic sled
//!   `Batch` (so they are readable once it returns), flushes once, and only then reports success
//!   to openraft through the [`LogFlushed`] callback. `save_vote`, `truncate` and `purge` flush
//!   before returning. `save_committed` does not flush (see the module docs of `store`).
//! * **No holes.** `truncate(id)` deletes `[id.index, ∞)` and `purge(id)` deletes `(-∞, id.index]`,
//!   each with one atomic batch, so the remaining entries are always contiguous. `purge` records
//!   `last_purged` *before* deleting (in the same flush): after a crash in between, the log only
//!   holds some already-purged entries, which openraft never reads, and `get_log_state` reports
//!   `max(last entry, last_purged)` — the log is never seen as shorter than it was.
//! * Cloning is cheap (sled handles are `Arc`s), so [`RaftLogStorage::get_log_reader`] returns a
//!   clone; sled is internally synchronized, so readers and the writer need no extra locking.
//! * sled calls are synchronous and are made directly from the async methods: they are short
//!   in-memory operations (page cache hits) except flushes, which go to tokio's blocking pool.

use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::compaction::WorkCounters;
use super::{flush, storage_err, storage_msg, StoreError, StoreTypeConfig};

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

/// sled-backed Raft log storage. Cheap to clone; clones share the same trees.
pub struct LogStore<C> {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    /// Bytes appended since the last snapshot, for the snapshot trigger.
    work: Arc<WorkCounters>,
    _config: PhantomData<fn() -> C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            log: self.log.clone(),
            meta: self.meta.clone(),
            work: Arc::clone(&self.work),
            _config: PhantomData,
        }
    }
}

impl<C> Debug for LogStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No entry count: sled's `Tree::len` scans the whole tree.
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

/// Encodes a log index as a sled key (big-endian, so byte order equals numeric order).
fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Decodes a sled key written by [`index_key`].
fn key_index(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}

/// A range of sled keys written by [`index_key`].
type KeyRange = (Bound<[u8; 8]>, Bound<[u8; 8]>);

/// Converts an index range into a sled key range; `None` if the range is empty.
fn key_range(range: &impl RangeBounds<u64>) -> Option<KeyRange> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) if e >= start => Bound::Included(index_key(e)),
        Bound::Excluded(&e) if e > start => Bound::Excluded(index_key(e)),
        Bound::Unbounded => Bound::Unbounded,
        _ => return None,
    };
    Some((Bound::Included(index_key(start)), end))
}

impl<C: StoreTypeConfig> LogStore<C> {
    pub(super) fn new(db: sled::Db, log: sled::Tree, meta: sled::Tree, work: Arc<WorkCounters>) -> Self {
        Self {
            db,
            log,
            meta,
            work,
            _config: PhantomData,
        }
    }

    /// At open: the persisted committed index (the end of the start-up replay) and the bytes
    /// of the log entries after `applied` (work a snapshot does not cover yet).
    pub(super) fn open_counts(&self, applied: u64) -> Result<(u64, u64), StoreError> {
        let committed = match self.meta.get(KEY_COMMITTED).map_err(|source| StoreError::Sled {
            context: "reading the committed index",
            source,
        })? {
            None => 0,
            Some(bytes) => {
                let id: LogId<u64> = serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                    what: "committed log id",
                    source,
                })?;
                id.index
            }
        };
        let mut bytes = 0u64;
        let after = (Bound::Excluded(index_key(applied)), Bound::Unbounded);
        for kv in self.log.range(after) {
            let (_, v) = kv.map_err(|source| StoreError::Sled {
                context: "measuring the log after the snapshot",
                source,
            })?;
            bytes += v.len() as u64;
        }
        Ok((committed, bytes))
    }

    /// Decodes one stored entry and checks it sits under the right key.
    fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry<C>, StorageError<u64>> {
        let index = key_index(key).ok_or_else(|| {
            storage_msg(
                ErrorSubject::Logs,
                ErrorVerb::Read,
                format!("log key of {} bytes is not a u64 index", key.len()),
            )
        })?;
        let entry: Entry<C> = serde_json::from_slice(value)
            .map_err(|e| storage_err(ErrorSubject::LogIndex(index), ErrorVerb::Read, &e))?;
        if entry.log_id.index != index {
            return Err(storage_msg(
                ErrorSubject::LogIndex(index),
                ErrorVerb::Read,
                format!("entry stored at index {index} has log id {}", entry.log_id),
            ));
        }
        Ok(entry)
    }

    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &str,
        subject: ErrorSubject<u64>,
    ) -> Result<Option<T>, StorageError<u64>> {
        let Some(bytes) = self
            .meta
            .get(key)
            .map_err(|e| storage_err(subject.clone(), ErrorVerb::Read, &e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| storage_err(subject, ErrorVerb::Read, &e))
    }

    /// Writes one metadata value, on the blocking pool within the storage deadline (as
    /// every sled write here: sled may block a writer on a full disk).
    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        subject: ErrorSubject<u64>,
    ) -> Result<(), StorageError<u64>> {
        let bytes = serde_json::to_vec(value).map_err(|e| storage_err(subject.clone(), ErrorVerb::Write, &e))?;
        let meta = self.meta.clone();
        super::blocking_write(move || meta.insert(key, bytes).map(drop))
            .await
            .map_err(|e| storage_err(subject, ErrorVerb::Write, &e))
    }

    fn last_purged(&self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        self.read_meta(KEY_LAST_PURGED, ErrorSubject::Logs)
    }

    /// Removes every entry whose key falls in `range`, with one atomic batch (written
    /// within the storage deadline). Returns how many.
    async fn remove_range(&self, range: KeyRange, subject: ErrorSubject<u64>) -> Result<usize, StorageError<u64>> {
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for key in self.log.range(range).keys() {
            let key = key.map_err(|e| storage_err(subject.clone(), ErrorVerb::Read, &e))?;
            batch.remove(key);
            removed += 1;
        }
        let log = self.log.clone();
        super::blocking_write(move || log.apply_batch(batch))
            .await
            .map_err(|e| storage_err(subject, ErrorVerb::Delete, &e))?;
        Ok(removed)
    }
}

impl<C: StoreTypeConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<C>>, StorageError<u64>> {
        let Some(keys) = key_range(&range) else {
            return Ok(Vec::new());
        };
        self.log
            .range(keys)
            .map(|kv| {
                let (k, v) = kv.map_err(|e| storage_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
                Self::decode_entry(&k, &v)
            })
            .collect()
    }
}

impl<C: StoreTypeConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<u64>> {
        let last_purged_log_id = self.last_purged()?;
        let last_in_log = match self
            .log
            .last()
            .map_err(|e| storage_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?
        {
            Some((k, v)) => Some(Self::decode_entry(&k, &v)?.log_id),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last_in_log.max(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.write_meta(KEY_VOTE, vote, ErrorSubject::Vote).await?;
        flush(&self.db, ErrorSubject::Vote, ErrorVerb::Write).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.read_meta(KEY_VOTE, ErrorSubject::Vote)
    }

    /// Not flushed: a stale `committed` after a crash only means fewer entries are re-applied at
    /// start-up, which openraft tolerates; the next flush persists it.
    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), StorageError<u64>> {
        match committed {
            Some(id) => self.write_meta(KEY_COMMITTED, &id, ErrorSubject::Store).await,
            None => {
                let meta = self.meta.clone();
                super::blocking_write(move || meta.remove(KEY_COMMITTED).map(drop))
                    .await
                    .map_err(|e| storage_err(ErrorSubject::Store, ErrorVerb::Delete, &e))
            }
        }
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        self.read_meta(KEY_COMMITTED, ErrorSubject::Store)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut count = 0usize;
        let mut size = 0u64;
        let mut last = None;
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| storage_err(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, &e))?;
            size += bytes.len() as u64;
            batch.insert(&index_key(entry.log_id.index), bytes);
            last = Some(entry.log_id);
            count += 1;
        }
        let Some(last) = last else {
            // Nothing new to persist; everything appended before was flushed already.
            callback.log_io_completed(Ok(()));
            return Ok(());
        };

        // On the blocking pool, within a deadline: sled may block a writer on a full disk.
        let tree = self.log.clone();
        if let Err(e) = super::blocking_write(move || tree.apply_batch(batch)).await {
            let e = storage_err(ErrorSubject::Logs, ErrorVerb::Write, &e);
            callback.log_io_completed(Err(io::Error::other(e.to_string())));
            return Err(e);
        }
        if let Err(e) = flush(&self.db, ErrorSubject::Logs, ErrorVerb::Write).await {
            callback.log_io_completed(Err(io::Error::other(e.to_string())));
            return Err(e);
        }
        self.work.appended(size);
        tracing::trace!(count, %last, "appended and flushed log entries");
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let subject = ErrorSubject::Log(log_id);
        let removed = self
            .remove_range(
                (Bound::Included(index_key(log_id.index)), Bound::Unbounded),
                subject.clone(),
            )
            .await?;
        flush(&self.db, subject, ErrorVerb::Delete).await?;
        tracing::debug!(since = %log_id, removed, "truncated log");
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let subject = ErrorSubject::Log(log_id);
        if let Some(previous) = self.last_purged()? {
            if previous.index > log_id.index {
                return Err(storage_msg(
                    subject,
                    ErrorVerb::Delete,
                    format!("purge up to {log_id} would move last_purged back from {previous}"),
                ));
            }
        }
        self.write_meta(KEY_LAST_PURGED, &log_id, subject.clone()).await?;
        let removed = self
            .remove_range(
                (Bound::Unbounded, Bound::Included(index_key(log_id.index))),
                subject.clone(),
            )
            .await?;
        flush(&self.db, subject, ErrorVerb::Delete).await?;
        tracing::debug!(upto = %log_id, removed, "purged log");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{blank_ent, log_id};
    use openraft::RaftLogReader;

    use super::*;
    use crate::store::test_support::{append, normal_ent, open_kv, KvConfig, KvRequest};

    #[test]
    fn keys_sort_numerically() {
        let mut keys: Vec<[u8; 8]> = [300u64, 2, 1 << 40, 0, 255, 256]
            .iter()
            .map(|&i| index_key(i))
            .collect();
        keys.sort();
        let back: Vec<u64> = keys.iter().map(|k| key_index(k).unwrap()).collect();
        assert_eq!(back, vec![0, 2, 255, 256, 300, 1 << 40]);
        assert_eq!(key_index(b"short"), None);
    }

    #[test]
    fn key_ranges_handle_edges() {
        assert!(key_range(&(5..5)).is_none());
        // Reversed ranges (written with explicit bounds; `6..5` literals are linted).
        assert!(key_range(&(Bound::Included(6), Bound::Excluded(5))).is_none());
        assert!(key_range(&(Bound::Included(5), Bound::Included(4))).is_none());
        assert!(key_range(&(..0)).is_none());
        assert!(key_range(&(Bound::Excluded(u64::MAX), Bound::Unbounded)).is_none());
        assert_eq!(
            key_range(&(3..=3)),
            Some((Bound::Included(index_key(3)), Bound::Included(index_key(3))))
        );
        assert_eq!(
            key_range(&(..)),
            Some((Bound::Included(index_key(0)), Bound::Unbounded))
        );
    }

    #[tokio::test]
    async fn reads_respect_all_range_forms() {
        let (_dir, mut log, _sm) = open_kv();
        append(&mut log, (1..=10).map(|i| blank_ent::<KvConfig>(1, 1, i))).await;
        let idx = |v: Vec<Entry<KvConfig>>| v.iter().map(|e| e.log_id.index).collect::<Vec<_>>();
        assert_eq!(idx(log.try_get_log_entries(3..6).await.unwrap()), vec![3, 4, 5]);
        assert_eq!(idx(log.try_get_log_entries(3..=6).await.unwrap()), vec![3, 4, 5, 6]);
        assert_eq!(idx(log.try_get_log_entries(..3).await.unwrap()), vec![1, 2]);
        assert_eq!(idx(log.try_get_log_entries(9..).await.unwrap()), vec![9, 10]);
        assert_eq!(idx(log.try_get_log_entries(11..20).await.unwrap()), Vec::<u64>::new());
        assert_eq!(idx(log.try_get_log_entries(7..7).await.unwrap()), Vec::<u64>::new());
        assert_eq!(idx(log.limited_get_log_entries(2, 4).await.unwrap()), vec![2, 3]);
        assert_eq!(log.try_get_log_entries(..).await.unwrap().len(), 10);
    }

    #[tokio::test]
    async fn normal_entries_round_trip() {
        let (_dir, mut log, _sm) = open_kv();
        let req = KvRequest::Set {
            key: "node01".into(),
            value: "10.0.0.1".into(),
        };
        append(&mut log, [normal_ent(2, 7, req.clone())]).await;
        let got = log.try_get_log_entries(7..8).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].log_id, log_id(2, 1, 7));
        match &got[0].payload {
            openraft::EntryPayload::Normal(r) => assert_eq!(r, &req),
            other => panic!("unexpected payload {other:?}"),
        }
    }

    #[tokio::test]
    async fn truncate_then_append_replaces_conflicting_suffix() {
        let (_dir, mut log, _sm) = open_kv();
        append(&mut log, (1..=5).map(|i| blank_ent::<KvConfig>(1, 1, i))).await;
        log.truncate(log_id(1, 1, 3)).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 2)));
        append(&mut log, (3..=4).map(|i| blank_ent::<KvConfig>(2, 2, i))).await;
        let all = log.try_get_log_entries(..).await.unwrap();
        let ids: Vec<_> = all.iter().map(|e| e.log_id).collect();
        assert_eq!(
            ids,
            vec![log_id(1, 1, 1), log_id(1, 1, 2), log_id(2, 2, 3), log_id(2, 2, 4)]
        );
        // Truncating beyond the end is a no-op.
        log.truncate(log_id(2, 2, 100)).await.unwrap();
        assert_eq!(log.try_get_log_entries(..).await.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn purge_is_monotonic_and_keeps_last_log_id() {
        let (_dir, mut log, _sm) = open_kv();
        append(&mut log, (0..=5).map(|i| blank_ent::<KvConfig>(1, 1, i))).await;
        log.purge(log_id(1, 1, 2)).await.unwrap();
        assert_eq!(log.try_get_log_entries(..).await.unwrap().len(), 3);
        // Purging the same id again is fine; going back is a bug and is refused.
        log.purge(log_id(1, 1, 2)).await.unwrap();
        assert!(log.purge(log_id(1, 1, 1)).await.is_err());
        // Purge everything: the log is empty but its last log id is the purged one.
        log.purge(log_id(1, 1, 5)).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 5)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 5)));
        assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
        // Appending continues right after the purged prefix.
        append(&mut log, [blank_ent::<KvConfig>(1, 1, 6)]).await;
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 1, 6)));
    }

    #[tokio::test]
    async fn committed_round_trips_and_clears() {
        let (_dir, mut log, _sm) = open_kv();
        assert_eq!(log.read_committed().await.unwrap(), None);
        log.save_committed(Some(log_id(3, 1, 9))).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(3, 1, 9)));
        log.save_committed(None).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), None);
    }

    #[tokio::test]
    async fn corrupt_entry_is_reported_not_skipped() {
        let (_dir, mut log, _sm) = open_kv();
        append(&mut log, [blank_ent::<KvConfig>(1, 1, 1)]).await;
        // An entry whose log id disagrees with its key.
        let misplaced = serde_json::to_vec(&blank_ent::<KvConfig>(1, 1, 5)).unwrap();
        log.log.insert(index_key(2), misplaced).unwrap();
        assert!(log.try_get_log_entries(..).await.is_err());
        log.log.insert(index_key(2), &b"{not json"[..]).unwrap();
        assert!(log.try_get_log_entries(2..3).await.is_err());
        assert!(log.get_log_state().await.is_err());
    }

    #[tokio::test]
    async fn empty_append_acknowledges() {
        let (_dir, mut log, _sm) = open_kv();
        append(&mut log, std::iter::empty()).await;
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, None);
    }
}
