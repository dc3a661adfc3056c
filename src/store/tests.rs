//! Whole-store tests: openraft's storage conformance suite, crash/restart durability, and the
//! error paths of [`open`](super::open).
//!
//! The conformance suite drives each case on a fresh tokio runtime of its own, so it runs from a
//! plain `#[test]`, and the builder opens every case in a new temp dir whose `TempDir` guard the
//! suite keeps alive for the case's duration.

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{blank_ent, log_id, membership_ent, StoreBuilder, Suite};
use openraft::{RaftLogReader, RaftSnapshotBuilder, StorageError, StorageIOError, Vote};
use tempfile::TempDir;

use super::test_support::{
    append, normal_ent, reopen_kv, set, test_config, try_reopen_kv, KvConfig, KvLogStore, KvSmStore, KvState,
};
use super::{open, StoreConfig, StoreError};

struct SledStoreBuilder;

impl StoreBuilder<KvConfig, KvLogStore, KvSmStore, TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(TempDir, KvLogStore, KvSmStore), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let (log, sm) = open(dir.path(), &test_config()).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_conformance_suite() -> Result<(), StorageError<u64>> {
    Suite::<KvConfig, KvLogStore, KvSmStore, SledStoreBuilder, TempDir>::test_all(SledStoreBuilder)
}

#[tokio::test]
async fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let members = vec![[1u64, 2, 3].into_iter().collect()];
    let snapshot_id;
    {
        let (mut log, mut sm) = open::<KvConfig, KvState>(dir.path(), &test_config()).unwrap();
        log.save_vote(&Vote::new(4, 2)).await.unwrap();
        append(
            &mut log,
            [
                membership_ent::<KvConfig>(1, 1, 1, members.clone()),
                normal_ent(1, 2, set("a", "1")),
                normal_ent(1, 3, set("b", "2")),
                normal_ent(1, 4, set("a", "3")),
                blank_ent::<KvConfig>(2, 1, 5),
            ],
        )
        .await;
        sm.apply(log.try_get_log_entries(1..=3).await.unwrap()).await.unwrap();
        snapshot_id = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
            .meta
            .snapshot_id;
        // Entries after the snapshot are applied (in memory only) and committed.
        sm.apply(log.try_get_log_entries(4..=4).await.unwrap()).await.unwrap();
        log.save_committed(Some(log_id(1, 1, 4))).await.unwrap();
        log.purge(log_id(1, 1, 2)).await.unwrap();
        // Drop both halves: the sled Db closes and a new open takes the directory lock again.
    }

    let (mut log, mut sm) = reopen_kv(dir.path());
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 2)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1, 4)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(2, 1, 5)));
    assert_eq!(log_indexes(&mut log).await, vec![3, 4, 5]);

    // The state machine is back at the snapshot (index 3), not at the in-memory index 4.
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1, 3)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 1, 1)));
    assert_eq!(*sm.applied_watch().borrow(), 3);
    sm.read(|s| {
        assert_eq!(s.map.get("a").map(String::as_str), Some("1"));
        assert_eq!(s.map.get("b").map(String::as_str), Some("2"));
        assert_eq!(s.rebuilt_calls, 1, "rebuilt() runs once on restore");
        assert_eq!(s.key_count_index, 2);
    });
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.snapshot_id, snapshot_id);
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 1, 3)));

    // What openraft does at start-up: re-apply (last_applied, committed] from the log.
    sm.apply(log.try_get_log_entries(4..=4).await.unwrap()).await.unwrap();
    assert_eq!(sm.read(|s| s.map.get("a").cloned()), Some("3".into()));

    // Snapshot ids keep counting across the restart.
    let next = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_ne!(next.meta.snapshot_id, snapshot_id);
    assert!(next.meta.snapshot_id.ends_with("-2"), "{}", next.meta.snapshot_id);
}

/// Env var that turns [`crash_child_process`] into the crashing child of
/// [`acknowledged_writes_survive_a_process_crash`].
const CRASH_DIR_ENV: &str = "WPSTORE_CRASH_CHILD_DIR";

/// Child half of the crash test; a no-op unless [`CRASH_DIR_ENV`] is set. It performs
/// acknowledged writes and then exits the process immediately: `std::process::exit` runs no
/// destructors, so sled gets no drop-time flush and unflushed writes still in its user-space
/// buffers are lost — exactly like a crash. (sled's background flusher runs only every 500 ms.)
#[test]
fn crash_child_process() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut log, mut sm) = open::<KvConfig, KvState>(dir.as_ref(), &test_config()).unwrap();
        log.save_vote(&Vote::new(7, 1)).await.unwrap();
        append(
            &mut log,
            [
                normal_ent(7, 1, set("a", "1")),
                normal_ent(7, 2, set("b", "2")),
                normal_ent(7, 3, set("c", "3")),
            ],
        )
        .await;
        sm.apply(log.try_get_log_entries(1..=2).await.unwrap()).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        append(&mut log, [normal_ent(7, 4, set("d", "4"))]).await;
        std::process::exit(0);
    });
}

#[test]
fn acknowledged_writes_survive_a_process_crash() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["store::tests::crash_child_process", "--exact", "--nocapture"])
        .env(CRASH_DIR_ENV, dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "crash child failed: {status}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut log, sm) = open::<KvConfig, KvState>(dir.path(), &test_config()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(7, 1)));
        assert_eq!(log_indexes(&mut log).await, vec![1, 2, 3, 4]);
        assert_eq!(sm.last_applied(), Some(log_id(7, 1, 2)));
        assert_eq!(sm.read(|s| s.map.len()), 2);
    });
}

#[tokio::test]
async fn installed_snapshot_survives_a_restart() {
    let (_leader_dir, _leader_log, mut leader) = super::test_support::open_kv();
    leader.apply([normal_ent(3, 7, set("k", "v"))]).await.unwrap();
    let snap = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    {
        let (_log, mut sm) = open::<KvConfig, KvState>(dir.path(), &test_config()).unwrap();
        sm.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
    }
    let (_log, sm) = reopen_kv(dir.path());
    assert_eq!(sm.last_applied(), Some(log_id(3, 1, 7)));
    assert_eq!(sm.read(|s| s.map.get("k").cloned()), Some("v".into()));
}

#[test]
fn zero_cache_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let err = open::<KvConfig, KvState>(
        dir.path(),
        &StoreConfig {
            cache_capacity_bytes: 0,
            ..StoreConfig::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, StoreError::InvalidConfig(_)), "{err:?}");
    assert!(!err.is_locked());
}

#[test]
fn default_config_is_64_mib() {
    assert_eq!(StoreConfig::default().cache_capacity_bytes, 64 * 1024 * 1024);
}

#[test]
fn second_open_of_same_dir_fails_while_first_is_alive() {
    let dir = tempfile::tempdir().unwrap();
    let first = open::<KvConfig, KvState>(dir.path(), &test_config()).unwrap();
    let err = open::<KvConfig, KvState>(dir.path(), &test_config()).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(err.is_locked(), "{err:?}");
    assert!(err.to_string().contains("lock"), "{err}");
    drop(first);
    reopen_kv(dir.path());
}

#[test]
fn foreign_format_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        db.open_tree(super::TREE_META)
            .unwrap()
            .insert("format", "something-else")
            .unwrap();
        db.flush().unwrap();
    }
    match try_reopen_kv(dir.path()) {
        Err(StoreError::IncompatibleFormat { .. }) => {}
        Err(other) => panic!("expected IncompatibleFormat, got {other:?}"),
        Ok(_) => panic!("a foreign format must be refused"),
    }
}

#[test]
fn missing_parent_dirs_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b/raft");
    open::<KvConfig, KvState>(&nested, &test_config()).unwrap();
    assert!(nested.is_dir());
}

/// Indexes of every entry still in the log.
async fn log_indexes(log: &mut KvLogStore) -> Vec<u64> {
    log.try_get_log_entries(..)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

#[tokio::test]
async fn replay_progress_counts_committed_entries_after_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, mut sm) = open::<KvConfig, KvState>(dir.path(), &test_config()).unwrap();
        // A fresh store has nothing to replay.
        let fresh = sm.reader().replay_progress();
        assert_eq!((fresh.applied, fresh.total), (0, 0));
        assert!(fresh.done());
        append(&mut log, (1..=6).map(|i| normal_ent(1, i, set("k", &i.to_string())))).await;
        sm.apply(log.try_get_log_entries(1..=2).await.unwrap()).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        sm.apply(log.try_get_log_entries(3..=5).await.unwrap()).await.unwrap();
        // Entry 6 is in the log but not committed: it is not part of the replay.
        log.save_committed(Some(log_id(1, 1, 5))).await.unwrap();
    }
    let (mut log, mut sm) = reopen_kv(dir.path());
    let reader = sm.reader();
    let p = reader.replay_progress();
    assert_eq!((p.applied, p.total), (0, 3), "snapshot at 2, committed 5");
    assert!(!p.done());
    sm.apply(log.try_get_log_entries(3..=4).await.unwrap()).await.unwrap();
    assert_eq!(reader.replay_progress().applied, 2);
    sm.apply(log.try_get_log_entries(5..=6).await.unwrap()).await.unwrap();
    let p = reader.replay_progress();
    assert_eq!((p.applied, p.total), (3, 3), "applied beyond the target is capped");
    assert!(p.done());
}

#[tokio::test]
async fn work_since_snapshot_is_counted_reset_and_restored() {
    let dir = tempfile::tempdir().unwrap();
    let tail_bytes;
    {
        let (mut log, mut sm) = open::<KvConfig, KvState>(dir.path(), &test_config()).unwrap();
        let reader = sm.reader();
        append(&mut log, (1..=4).map(|i| normal_ent(1, i, set("key", "value")))).await;
        let s = reader.since_snapshot();
        assert_eq!(s.entries, 0);
        assert!(s.log_bytes > 0);
        sm.apply(log.try_get_log_entries(1..=3).await.unwrap()).await.unwrap();
        assert_eq!(reader.since_snapshot().entries, 3);

        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let s = reader.since_snapshot();
        assert_eq!((s.entries, s.log_bytes, s.snapshots), (0, 0, 1));
        assert_eq!(s.apply_time, std::time::Duration::ZERO);

        sm.apply(log.try_get_log_entries(4..=4).await.unwrap()).await.unwrap();
        assert_eq!(reader.since_snapshot().entries, 1);
        tail_bytes = serde_json::to_vec(&normal_ent(1, 4, set("key", "value")))
            .unwrap()
            .len() as u64;
    }
    // After a restart the log after the snapshot (index 3) is work not covered yet.
    let (_log, sm) = reopen_kv(dir.path());
    let s = sm.reader().since_snapshot();
    assert_eq!((s.entries, s.log_bytes), (0, tail_bytes));
}

#[tokio::test]
async fn trigger_asks_for_a_snapshot_when_the_policy_says_so() {
    use std::time::Duration;

    use super::{run_snapshot_trigger, SnapshotPolicy};

    let dir = tempfile::tempdir().unwrap();
    let (mut log, mut sm) = open::<KvConfig, KvState>(dir.path(), &test_config()).unwrap();
    let policy = SnapshotPolicy {
        max_apply_time: Duration::from_secs(3600),
        max_log_bytes: 200,
        max_age: Duration::from_secs(3600),
        check_every: Duration::from_millis(20),
        retry_after: Duration::from_secs(5),
    };
    let (asked_tx, mut asked) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_snapshot_trigger(
        sm.reader(),
        policy,
        async {
            let _ = stop_rx.await;
        },
        move || {
            let tx = asked_tx.clone();
            async move { tx.send(()).map_err(|_| "receiver gone") }
        },
    ));

    // Below the byte bound: nothing asked.
    append(&mut log, [normal_ent(1, 1, set("a", "1"))]).await;
    sm.apply(log.try_get_log_entries(1..=1).await.unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(asked.try_recv().is_err(), "asked below every bound");

    // Past it: asked once, and not again while no snapshot was built (retry_after).
    append(
        &mut log,
        (2..=6).map(|i| normal_ent(1, i, set("a", "a much longer value"))),
    )
    .await;
    sm.apply(log.try_get_log_entries(2..=6).await.unwrap()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), asked.recv())
        .await
        .expect("asked for a snapshot")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(asked.try_recv().is_err(), "asked twice for the same snapshot");

    // A built snapshot resets the counters: nothing more to ask.
    sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    sm.apply([normal_ent(1, 7, set("b", "2"))]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(asked.try_recv().is_err(), "asked right after a snapshot");

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}
