//! The Raft state-machine store ([`RaftStateMachine`] + [`RaftSnapshotBuilder`]) wrapping the
//! application's [`StateMachineCore`].
//!
//! # Design
//!
//! * The state lives in memory: `Arc<std::sync::RwLock<Applied<S>>>` holds the application state
//!   together with `last_applied` and the last membership, so a reader always sees a state and
//!   the log id it corresponds to as one consistent pair. A *synchronous* lock is right here: no
//!   critical section awaits, `S::apply` is pure and fast, and readers (API handlers, boot
//!   service) get a closure-based [`StateReader::read`] that works from sync and async code.
//!   `apply` takes the write lock once per batch handed over by openraft — readers observe batch
//!   boundaries, never a half-applied batch (except after a contained panic, below).
//! * After each batch the applied index is published on a `tokio::sync::watch` channel, so the
//!   API side can wait until its own write (index `N`) is visible ([`StateReader::wait_applied`]).
//! * `S::apply` must not panic; if it does anyway, the panic is caught (so the lock is not
//!   poisoned and readers keep working), the store refuses further applies, and a
//!   `StorageError` tells openraft to shut the node down instead of silently diverging.
//! * Responses: Normal entries return `S::apply`'s response; Blank and Membership entries return
//!   `C::R::default()` (hence the `C::R: Default` bound) — openraft only forwards responses of
//!   client writes, which are always Normal entries.
//! * Snapshots: building encodes the state under the *read* lock and persists outside it.
//!   Encoding 10,000 nodes takes 10–20 ms (benches/restart.rs), which is how long applies
//!   wait; cloning first (as this store did) blocked them for less but held a second full
//!   copy of the state (45 MiB at 10,000 nodes) through the encoding, on every head. Installing decodes and calls [`StateMachineCore::rebuilt`] before taking the write
//!   lock, persists first, and only then swaps the state in, so memory never runs ahead of disk.
//!   See `snapshot.rs` for the on-disk format and the stale-build guard.

use std::fmt::Debug;
use std::io::Cursor;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};
use std::time::Instant;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use tokio::sync::watch;

use super::compaction::{SinceSnapshot, WorkCounters};
use super::snapshot::{decode_payload, encode_payload, SaveMode, SnapshotPayload, SnapshotStore, StoredSnapshot};
use super::{storage_err, storage_msg, StateMachineCore, StoreError, StoreTypeConfig};

/// Everything the state machine has applied, guarded as one unit.
struct Applied<S> {
    state: S,
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, BasicNode>,
    /// Set when `S::apply` panicked: the state may be inconsistent, so no further apply.
    failed_at: Option<LogId<u64>>,
}

/// State shared by the store, its snapshot builders and its readers.
struct Shared<S> {
    applied: RwLock<Applied<S>>,
    applied_tx: watch::Sender<u64>,
    /// Work since the last snapshot, for the snapshot trigger (see `compaction`).
    work: Arc<WorkCounters>,
    /// The applied index the store opened with (its snapshot's last entry, or 0).
    replay_from: u64,
    /// The committed index persisted when the store opened: the replay's end.
    replay_to: AtomicU64,
}

impl<S> Shared<S> {
    fn new(applied: Applied<S>, work: Arc<WorkCounters>) -> Self {
        let index = applied.last_applied.map_or(0, |id| id.index);
        let (applied_tx, _rx) = watch::channel(index);
        Self {
            applied: RwLock::new(applied),
            applied_tx,
            work,
            replay_from: index,
            replay_to: AtomicU64::new(index),
        }
    }

    /// Write access for apply/install. The lock is only poisoned if our own code panicked while
    /// holding it (`S::apply` panics are caught), so refuse to continue on poison.
    fn write(&self) -> Result<RwLockWriteGuard<'_, Applied<S>>, StorageError<u64>> {
        self.applied.write().map_err(|_| {
            storage_msg(
                ErrorSubject::StateMachine,
                ErrorVerb::Write,
                "state machine lock is poisoned by an earlier panic",
            )
        })
    }

    /// Read access; a poisoned lock still holds a fully applied batch (see [`Shared::write`]),
    /// so readers keep going.
    fn read<R>(&self, f: impl FnOnce(&Applied<S>) -> R) -> R {
        let guard = self.applied.read().unwrap_or_else(PoisonError::into_inner);
        f(&guard)
    }

    fn publish(&self, last_applied: Option<LogId<u64>>) {
        let index = last_applied.map_or(0, |id| id.index);
        self.applied_tx.send_if_modified(|current| {
            let changed = *current != index;
            *current = index;
            changed
        });
    }
}

/// Read-only handle to the applied state, for the API/boot side. Cheap to clone; stays valid
/// after the [`StateMachineStore`] has been moved into `Raft::new`.
pub struct StateReader<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for StateReader<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> Debug for StateReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateReader")
            .field("last_applied", &self.last_applied())
            .finish_non_exhaustive()
    }
}

impl<S> StateReader<S> {
    /// Runs `f` on the current state under a read lock. Keep `f` short — it delays the next
    /// apply batch while it runs — and do not call back into this reader (or the store) from
    /// inside `f`: the lock is writer-preferring, so a nested read queued behind a waiting apply
    /// deadlocks. Copy out what you need and work on it after `read` returns.
    pub fn read<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        self.shared.read(|a| f(&a.state))
    }

    /// Like [`Self::read`], also passing the id of the last entry reflected in the state.
    pub fn read_with_applied<R>(&self, f: impl FnOnce(&S, Option<LogId<u64>>) -> R) -> R {
        self.shared.read(|a| f(&a.state, a.last_applied))
    }

    /// Id of the last log entry applied to the state (or covered by the restored snapshot).
    pub fn last_applied(&self) -> Option<LogId<u64>> {
        self.shared.read(|a| a.last_applied)
    }

    /// The last applied membership config.
    pub fn last_membership(&self) -> StoredMembership<u64, BasicNode> {
        self.shared.read(|a| a.last_membership.clone())
    }

    /// A watch of the last applied log index (0 before anything was applied). Updated after
    /// every apply batch and snapshot install.
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.shared.applied_tx.subscribe()
    }

    /// Waits until the entry at `index` (or a later one) is applied; returns the applied index.
    pub async fn wait_applied(&self, index: u64) -> u64 {
        let mut rx = self.applied_watch();
        // The sender lives in `self.shared`, which `self` keeps alive: `wait_for` cannot fail.
        let applied = rx.wait_for(|&applied| applied >= index).await.map(|v| *v);
        applied.unwrap_or_else(|_| *rx.borrow())
    }

    /// How far the start-up replay is: openraft re-applies every committed entry after the
    /// snapshot inside `Raft::new`, before the head can serve. Known as soon as
    /// [`open`](super::open) returned (`total`), and `applied` advances while `Raft::new`
    /// runs, so a head can answer "starting, N of M entries applied" meanwhile.
    pub fn replay_progress(&self) -> ReplayProgress {
        let total = self
            .shared
            .replay_to
            .load(Ordering::Relaxed)
            .saturating_sub(self.shared.replay_from);
        let applied = (*self.shared.applied_tx.borrow()).saturating_sub(self.shared.replay_from);
        ReplayProgress {
            applied: applied.min(total),
            total,
        }
    }

    /// The work accumulated since the last snapshot, for the snapshot policy
    /// ([`SnapshotPolicy::decide`](super::SnapshotPolicy::decide)).
    pub fn since_snapshot(&self) -> SinceSnapshot {
        self.shared.work.get()
    }
}

/// Progress of the replay a head does at start-up (see [`StateReader::replay_progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayProgress {
    /// Entries re-applied so far.
    pub applied: u64,
    /// Entries to re-apply: the committed index persisted at open minus the snapshot's.
    pub total: u64,
}

impl ReplayProgress {
    /// True once every entry that was committed at open is applied again.
    pub fn done(&self) -> bool {
        self.applied >= self.total
    }
}

/// The Raft state machine store. Cheap to clone; clones share the state — but only the instance
/// handed to `Raft::new` should apply entries. Keep a [`StateReader`] (see [`Self::reader`]) or a
/// clone for read access.
pub struct StateMachineStore<C, S> {
    reader: StateReader<S>,
    snapshots: SnapshotStore,
    _config: PhantomData<fn() -> C>,
}

impl<C, S> Clone for StateMachineStore<C, S> {
    fn clone(&self) -> Self {
        Self {
            reader: self.reader.clone(),
            snapshots: self.snapshots.clone(),
            _config: PhantomData,
        }
    }
}

impl<C, S> Debug for StateMachineStore<C, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("last_applied", &self.last_applied())
            .finish_non_exhaustive()
    }
}

impl<C, S> StateMachineStore<C, S> {
    /// A read-only handle that stays usable after this store is moved into `Raft::new`.
    pub fn reader(&self) -> StateReader<S> {
        self.reader.clone()
    }

    /// Runs `f` on the current state under a read lock (see [`StateReader::read`]).
    pub fn read<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        self.reader.read(f)
    }

    /// Runs `f` on the state and its last applied log id (see [`StateReader::read_with_applied`]).
    pub fn read_with_applied<R>(&self, f: impl FnOnce(&S, Option<LogId<u64>>) -> R) -> R {
        self.reader.read_with_applied(f)
    }

    /// Id of the last applied log entry.
    pub fn last_applied(&self) -> Option<LogId<u64>> {
        self.reader.last_applied()
    }

    /// A watch of the last applied log index (see [`StateReader::applied_watch`]).
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.reader.applied_watch()
    }

    /// Waits until index `index` is applied (see [`StateReader::wait_applied`]).
    pub async fn wait_applied(&self, index: u64) -> u64 {
        self.reader.wait_applied(index).await
    }
}

impl<C, S> StateMachineStore<C, S>
where
    C: StoreTypeConfig,
    S: StateMachineCore<Request = C::D, Response = C::R>,
{
    /// Creates the store, restoring the state from the persisted snapshot if there is one.
    pub(super) fn restore(snapshots: SnapshotStore, work: Arc<WorkCounters>) -> Result<Self, StoreError> {
        let applied = match snapshots.load_for_open()? {
            None => Applied {
                state: S::default(),
                last_applied: None,
                last_membership: StoredMembership::default(),
                failed_at: None,
            },
            Some(stored) => {
                let payload: SnapshotPayload<S> =
                    serde_json::from_slice(&stored.data).map_err(|source| StoreError::Corrupt {
                        what: "snapshot data",
                        source,
                    })?;
                if payload.last_applied != stored.meta.last_log_id
                    || payload.last_membership != stored.meta.last_membership
                {
                    return Err(StoreError::InconsistentSnapshot {
                        meta: stored.meta.to_string(),
                    });
                }
                let mut state = payload.state;
                state.rebuilt();
                tracing::info!(snapshot = %stored.meta, "restored state machine from snapshot");
                Applied {
                    state,
                    last_applied: stored.meta.last_log_id,
                    last_membership: stored.meta.last_membership,
                    failed_at: None,
                }
            }
        };
        Ok(Self {
            reader: StateReader {
                shared: Arc::new(Shared::new(applied, work)),
            },
            snapshots,
            _config: PhantomData,
        })
    }

    fn shared(&self) -> &Shared<S> {
        &self.reader.shared
    }

    /// Records the committed index persisted in the log store: the start-up replay's end.
    pub(super) fn set_replay_target(&self, committed: u64) {
        self.shared().replay_to.store(committed, Ordering::Relaxed);
    }

    /// Applies one batch under a single write lock. Synchronous on purpose: the lock guard must
    /// never be held across an `.await`.
    fn apply_batch(&self, entries: impl Iterator<Item = Entry<C>>) -> Result<Vec<C::R>, StorageError<u64>>
    where
        C::R: Default,
    {
        let mut guard = self.shared().write()?;
        let applied = &mut *guard;
        if let Some(at) = applied.failed_at {
            return Err(storage_msg(
                ErrorSubject::Apply(at),
                ErrorVerb::Write,
                "state machine panicked earlier; refusing to apply more entries",
            ));
        }
        let mut responses = Vec::with_capacity(entries.size_hint().0);
        let mut result = Ok(());
        let started = Instant::now();
        for entry in entries {
            let log_id = entry.log_id;
            let response = match entry.payload {
                EntryPayload::Blank => C::R::default(),
                EntryPayload::Normal(req) => {
                    let state = &mut applied.state;
                    match catch_unwind(AssertUnwindSafe(|| state.apply(log_id.index, &req))) {
                        Ok(response) => response,
                        Err(panic) => {
                            applied.failed_at = Some(log_id);
                            result = Err(StorageIOError::apply(log_id, AnyError::error(panic_message(&*panic))).into());
                            break;
                        }
                    }
                }
                EntryPayload::Membership(membership) => {
                    applied.last_membership = StoredMembership::new(Some(log_id), membership);
                    C::R::default()
                }
            };
            applied.last_applied = Some(log_id);
            responses.push(response);
        }
        let last_applied = applied.last_applied;
        // Counted under the lock, so a snapshot build (which resets under the read lock)
        // sees every batch on exactly one side of its cut.
        self.shared().work.applied(responses.len() as u64, started.elapsed());
        drop(guard);
        self.shared().publish(last_applied);
        result.map(|()| responses)
    }
}

/// Best-effort text of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let msg = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload");
    format!("state machine panicked while applying: {msg}")
}

impl<C, S> RaftStateMachine<C> for StateMachineStore<C, S>
where
    C: StoreTypeConfig,
    C::R: Default,
    S: StateMachineCore<Request = C::D, Response = C::R>,
{
    type SnapshotBuilder = SmSnapshotBuilder<C, S>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        Ok(self.shared().read(|a| (a.last_applied, a.last_membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<C::R>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_batch(entries.into_iter())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SmSnapshotBuilder { store: self.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let payload: SnapshotPayload<S> = decode_payload(meta, &data)?;
        let mut state = payload.state;
        state.rebuilt();

        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.snapshots.save(&stored, SaveMode::Always).await?;

        {
            let mut guard = self.shared().write()?;
            *guard = Applied {
                state,
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership.clone(),
                failed_at: None,
            };
            self.shared().work.reset();
        }
        self.shared().publish(meta.last_log_id);
        tracing::info!(snapshot = %meta, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<C>>, StorageError<u64>> {
        Ok(self.snapshots.load()?.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

/// Builds snapshots of a [`StateMachineStore`]; returned by `get_snapshot_builder`.
pub struct SmSnapshotBuilder<C, S> {
    store: StateMachineStore<C, S>,
}

impl<C, S> Debug for SmSnapshotBuilder<C, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmSnapshotBuilder").finish_non_exhaustive()
    }
}

impl<C, S> RaftSnapshotBuilder<C> for SmSnapshotBuilder<C, S>
where
    C: StoreTypeConfig,
    C::R: Default,
    S: StateMachineCore<Request = C::D, Response = C::R>,
{
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, StorageError<u64>> {
        // Encode under the read lock, straight from the live state: a clone would be a
        // second full copy of the state in memory (45 MiB at 10,000 nodes) to save the
        // few milliseconds applies wait for the encoding (see the module docs).
        // The work counters restart at the cut this snapshot covers.
        let (encoded, payload) = self.store.shared().read(|a| {
            self.store.shared().work.reset();
            let payload = SnapshotPayload {
                state: &a.state,
                last_applied: a.last_applied,
                last_membership: a.last_membership.clone(),
            };
            (
                encode_payload(&payload),
                (payload.last_applied, payload.last_membership),
            )
        });
        let (last_applied, last_membership) = payload;
        let data = encoded.map_err(|e| storage_err(ErrorSubject::StateMachine, ErrorVerb::Read, &e))?;
        let meta = SnapshotMeta {
            snapshot_id: self.store.snapshots.next_id(last_applied.as_ref()),
            last_log_id: last_applied,
            last_membership,
        };
        let stored = StoredSnapshot { meta, data };
        self.store.snapshots.save(&stored, SaveMode::IfNotOlder).await?;
        tracing::info!(snapshot = %stored.meta, bytes = stored.data.len(), "built snapshot");
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use openraft::testing::{blank_ent, log_id, membership_ent};
    use openraft::{Membership, RaftSnapshotBuilder};

    use super::*;
    use crate::store::test_support::{normal_ent, open_kv, set, KvConfig, KvRequest, KvResponse};

    #[tokio::test]
    async fn applies_in_order_with_responses_for_every_entry() {
        let (_dir, _log, mut sm) = open_kv();
        let members: BTreeSet<u64> = [1, 2, 3].into_iter().collect();
        let replies = sm
            .apply([
                blank_ent::<KvConfig>(1, 1, 1),
                normal_ent(1, 2, set("a", "1")),
                membership_ent::<KvConfig>(1, 1, 3, vec![members.clone()]),
                normal_ent(1, 4, set("a", "2")),
            ])
            .await
            .unwrap();
        assert_eq!(
            replies,
            vec![
                KvResponse::default(),
                KvResponse { previous: None },
                KvResponse::default(),
                KvResponse {
                    previous: Some("1".into())
                },
            ]
        );
        let (last, membership) = sm.applied_state().await.unwrap();
        assert_eq!(last, Some(log_id(1, 1, 4)));
        assert_eq!(membership.log_id(), &Some(log_id(1, 1, 3)));
        assert_eq!(membership.membership(), &Membership::new(vec![members], None));
        assert_eq!(sm.read(|s| s.map.get("a").cloned()), Some("2".into()));
        // The state remembers the indexes it was applied at (determinism check).
        assert_eq!(sm.read(|s| s.applied_indexes.clone()), vec![2, 4]);
    }

    #[tokio::test]
    async fn applied_watch_and_wait() {
        let (_dir, _log, mut sm) = open_kv();
        let reader = sm.reader();
        let rx = reader.applied_watch();
        assert_eq!(*rx.borrow(), 0);

        let waiter = tokio::spawn({
            let reader = reader.clone();
            async move { reader.wait_applied(3).await }
        });
        sm.apply([normal_ent(1, 1, set("k", "v"))]).await.unwrap();
        assert_eq!(*rx.borrow(), 1);
        assert!(!waiter.is_finished());
        sm.apply([blank_ent::<KvConfig>(1, 1, 2), blank_ent::<KvConfig>(1, 1, 3)])
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, 3);
        assert_eq!(
            reader.read_with_applied(|s, at| (s.map.len(), at)),
            (1, Some(log_id(1, 1, 3)))
        );
        // Already applied: returns at once.
        assert_eq!(reader.wait_applied(2).await, 3);
    }

    #[tokio::test]
    async fn panic_in_apply_is_contained() {
        let (_dir, _log, mut sm) = open_kv();
        let err = sm
            .apply([normal_ent(1, 1, set("a", "1")), normal_ent(1, 2, KvRequest::Explode)])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        // The entry before the panic was applied and stays readable; the lock is not poisoned.
        assert_eq!(sm.last_applied(), Some(log_id(1, 1, 1)));
        assert_eq!(sm.read(|s| s.map.len()), 1);
        // Further applies are refused.
        assert!(sm.apply([blank_ent::<KvConfig>(1, 1, 2)]).await.is_err());
    }

    #[tokio::test]
    async fn snapshot_install_replaces_state_and_calls_rebuilt() {
        let (_dir_l, _log_l, mut leader) = open_kv();
        let (_dir_f, _log_f, mut follower) = open_kv();
        leader
            .apply([normal_ent(2, 1, set("x", "1")), normal_ent(2, 2, set("y", "2"))])
            .await
            .unwrap();
        follower.apply([normal_ent(1, 1, set("stale", "!"))]).await.unwrap();

        let snap = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(2, 1, 2)));
        assert!(snap.meta.snapshot_id.starts_with("2-2-"), "{}", snap.meta.snapshot_id);

        let rx = follower.applied_watch();
        follower.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        assert_eq!(follower.last_applied(), Some(log_id(2, 1, 2)));
        assert_eq!(*rx.borrow(), 2);
        follower.read(|s| {
            assert_eq!(s.map.len(), 2);
            assert!(!s.map.contains_key("stale"));
            assert_eq!(s.rebuilt_calls, 1);
            assert_eq!(s.key_count_index, 2);
        });
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.snapshot_id, snap.meta.snapshot_id);
    }

    #[tokio::test]
    async fn install_rejects_mismatched_or_garbage_data() {
        let (_dir, _log, mut sm) = open_kv();
        let (_dir2, _log2, mut other) = open_kv();
        other.apply([normal_ent(1, 5, set("a", "b"))]).await.unwrap();
        let snap = other.get_snapshot_builder().await.build_snapshot().await.unwrap();

        let mut wrong_meta = snap.meta.clone();
        wrong_meta.last_log_id = Some(log_id(1, 1, 6));
        let err = sm
            .install_snapshot(&wrong_meta, snap.snapshot.clone())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(sm
            .install_snapshot(&snap.meta, Box::new(Cursor::new(b"garbage".to_vec())))
            .await
            .is_err());
        // Nothing was installed or persisted.
        assert_eq!(sm.last_applied(), None);
        assert!(sm.get_current_snapshot().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn builder_taken_before_install_snapshots_the_installed_state() {
        let (_dir, _log, mut sm) = open_kv();
        let (_dir2, _log2, mut leader) = open_kv();
        sm.apply([normal_ent(1, 1, set("a", "1"))]).await.unwrap();
        // Builder captured before a newer snapshot gets installed...
        let mut builder = sm.get_snapshot_builder().await;

        leader.apply([normal_ent(1, 9, set("b", "2"))]).await.unwrap();
        let newer = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
        sm.install_snapshot(&newer.meta, newer.snapshot).await.unwrap();

        // ...and the state it clones is the installed one, so even the late build is current.
        let built = builder.build_snapshot().await.unwrap();
        assert_eq!(built.meta.last_log_id, Some(log_id(1, 1, 9)));
        assert_eq!(
            sm.get_current_snapshot().await.unwrap().unwrap().meta.last_log_id,
            Some(log_id(1, 1, 9))
        );
    }
}
