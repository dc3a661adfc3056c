//! When to build a snapshot: on the work a restart would have to redo, not only on the
//! number of entries.
//!
//! # Why
//!
//! A head rebuilds its state at start-up from its latest snapshot plus every committed
//! entry after it, and openraft re-applies those entries inside `Raft::new`, before the
//! head can serve. openraft 0.9 only snapshots every `LogsSinceLast(n)` entries, and
//! entries differ by four orders of magnitude in cost: a bulk `node set` over 10,000
//! nodes is one entry that takes as long to apply as thousands of single-node writes.
//! So 150 such entries were 150 of the 5,000 allowed and took 20–65 s to replay.
//!
//! # How
//!
//! The store counts, since the last snapshot was built or installed ([`WorkCounters`]):
//! the entries applied, the wall time spent inside `StateMachineCore::apply` (what a
//! replay repeats, entry for entry), the bytes appended to the log (what a replay reads
//! and decodes) and the time since the last snapshot. [`SnapshotPolicy::decide`] (pure)
//! turns them into "snapshot now, because …"; [`spawn_snapshot_trigger`] is the small
//! task that checks after every applied batch and every [`SnapshotPolicy::check_every`]
//! and calls `raft.trigger().snapshot()`. openraft's own entry-count policy stays on.
//!
//! The counters are reset when a build clones the state (under the state lock, so the
//! entry and apply-time counts are exact) and when a snapshot is installed. Log bytes
//! appended but not yet applied at that moment are attributed to the old snapshot: an
//! under-count of at most the entries in flight. After a restart the counters start with
//! the replayed work (it is applied again) and the bytes of the log after the snapshot.
//!
//! Apply time is measured, not computed, so it is per head and not deterministic; that is
//! fine because each head snapshots on its own and a snapshot does not change the state.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::sm::StateReader;
use super::StoreTypeConfig;

/// When a head builds a snapshot, besides openraft's entry count. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Snapshot once applying the entries since the last snapshot took this long in
    /// total: a restart repeats that work before the head serves.
    pub max_apply_time: Duration,
    /// Snapshot once this many bytes of log entries were appended since the last one.
    pub max_log_bytes: u64,
    /// Snapshot a state with at least one new entry once the last snapshot is this old,
    /// so a quiet cluster restarts with nothing to replay.
    pub max_age: Duration,
    /// How often the trigger checks the age even when nothing is applied.
    pub check_every: Duration,
    /// After asking for a snapshot, do not ask again for this long unless one was built:
    /// openraft ignores a request while it builds, this only keeps the log quiet.
    pub retry_after: Duration,
}

impl Default for SnapshotPolicy {
    /// 500 ms of apply work keeps the replay of a restarting head well inside its 2 s
    /// start-up goal (the rest is opening sled, decoding the snapshot and an election);
    /// 16 MiB of log bounds what it reads; 5 minutes bounds how long a quiet head keeps
    /// a tail to replay. See docs/DECISIONS.md ("Snapshot policy").
    fn default() -> Self {
        Self {
            max_apply_time: Duration::from_millis(500),
            max_log_bytes: 16 * 1024 * 1024,
            max_age: Duration::from_secs(300),
            check_every: Duration::from_secs(1),
            retry_after: Duration::from_secs(5),
        }
    }
}

/// The work accumulated since the last snapshot (see [`StateReader::since_snapshot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SinceSnapshot {
    /// Log entries applied (or re-applied at start-up).
    pub entries: u64,
    /// Wall time spent applying them.
    pub apply_time: Duration,
    /// Bytes of log entries appended (at start-up: the log after the snapshot).
    pub log_bytes: u64,
    /// Time since the last snapshot was built or installed (or since the store opened).
    pub age: Duration,
    /// Snapshots built or installed since the store opened.
    pub snapshots: u64,
}

/// Why [`SnapshotPolicy::decide`] asks for a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotReason {
    /// [`SnapshotPolicy::max_apply_time`] reached.
    ApplyTime,
    /// [`SnapshotPolicy::max_log_bytes`] reached.
    LogBytes,
    /// [`SnapshotPolicy::max_age`] reached with new entries.
    Age,
}

impl SnapshotReason {
    /// Short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotReason::ApplyTime => "apply time since the last snapshot",
            SnapshotReason::LogBytes => "log bytes since the last snapshot",
            SnapshotReason::Age => "age of the last snapshot",
        }
    }
}

impl SnapshotPolicy {
    /// Whether to build a snapshot now, given the work since the last one.
    pub fn decide(&self, since: &SinceSnapshot) -> Option<SnapshotReason> {
        if since.entries == 0 {
            // Nothing applied since the last snapshot: a new one would be the same state.
            return None;
        }
        if since.apply_time >= self.max_apply_time {
            Some(SnapshotReason::ApplyTime)
        } else if since.log_bytes >= self.max_log_bytes {
            Some(SnapshotReason::LogBytes)
        } else if since.age >= self.max_age {
            Some(SnapshotReason::Age)
        } else {
            None
        }
    }
}

/// The counters behind [`SinceSnapshot`], shared by the log store (bytes) and the state
/// machine store (entries, apply time, resets).
#[derive(Debug)]
pub(crate) struct WorkCounters {
    entries: AtomicU64,
    apply_nanos: AtomicU64,
    log_bytes: AtomicU64,
    snapshots: AtomicU64,
    since: Mutex<Instant>,
}

impl WorkCounters {
    pub(crate) fn new() -> Self {
        Self {
            entries: AtomicU64::new(0),
            apply_nanos: AtomicU64::new(0),
            log_bytes: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            since: Mutex::new(Instant::now()),
        }
    }

    pub(crate) fn applied(&self, entries: u64, took: Duration) {
        self.entries.fetch_add(entries, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.apply_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub(crate) fn appended(&self, bytes: u64) {
        self.log_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A snapshot now covers everything applied so far.
    pub(crate) fn reset(&self) {
        self.entries.store(0, Ordering::Relaxed);
        self.apply_nanos.store(0, Ordering::Relaxed);
        self.log_bytes.store(0, Ordering::Relaxed);
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        *self.since.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }

    pub(crate) fn get(&self) -> SinceSnapshot {
        let since = *self.since.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        SinceSnapshot {
            entries: self.entries.load(Ordering::Relaxed),
            apply_time: Duration::from_nanos(self.apply_nanos.load(Ordering::Relaxed)),
            log_bytes: self.log_bytes.load(Ordering::Relaxed),
            age: since.elapsed(),
            snapshots: self.snapshots.load(Ordering::Relaxed),
        }
    }
}

/// Runs the snapshot trigger until `stop` resolves: after every applied batch and every
/// [`SnapshotPolicy::check_every`], asks [`SnapshotPolicy::decide`] and, if it says so,
/// awaits `trigger()` (which should ask Raft for a snapshot; see [`spawn_snapshot_trigger`]).
/// An error from `trigger` is logged and ends the loop (Raft has shut down).
pub async fn run_snapshot_trigger<S, F, Fut, E>(
    reader: StateReader<S>,
    policy: SnapshotPolicy,
    stop: impl Future<Output = ()>,
    mut trigger: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut applied = reader.applied_watch();
    let mut asked: Option<(Instant, u64)> = None;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            changed = applied.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(policy.check_every) => {}
        }
        let since = reader.since_snapshot();
        let Some(reason) = policy.decide(&since) else { continue };
        if let Some((at, snapshots)) = asked {
            if since.snapshots == snapshots && at.elapsed() < policy.retry_after {
                continue; // asked already; openraft is building it
            }
        }
        tracing::info!(
            reason = reason.as_str(),
            entries = since.entries,
            apply_ms = since.apply_time.as_millis() as u64,
            log_bytes = since.log_bytes,
            age_s = since.age.as_secs(),
            "asking for a snapshot"
        );
        asked = Some((Instant::now(), since.snapshots));
        if let Err(e) = trigger().await {
            tracing::warn!("snapshot trigger stops: raft is shut down: {e}");
            return;
        }
    }
}

/// Spawns [`run_snapshot_trigger`] for `raft`, asking it with `raft.trigger().snapshot()`.
/// Call it once per head, after `Raft::new` returned, with the reader of the store that
/// was handed to `Raft::new`; `stop` ends the task (e.g. the head's shutdown token).
pub fn spawn_snapshot_trigger<C, S>(
    raft: openraft::Raft<C>,
    reader: StateReader<S>,
    policy: SnapshotPolicy,
    stop: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    C: StoreTypeConfig,
    S: Send + Sync + 'static,
{
    tokio::spawn(run_snapshot_trigger(reader, policy, stop, move || {
        let raft = raft.clone();
        async move { raft.trigger().snapshot().await }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn since(entries: u64, apply_ms: u64, log_bytes: u64, age_s: u64) -> SinceSnapshot {
        SinceSnapshot {
            entries,
            apply_time: Duration::from_millis(apply_ms),
            log_bytes,
            age: Duration::from_secs(age_s),
            snapshots: 0,
        }
    }

    #[test]
    fn decides_on_apply_time_bytes_and_age() {
        let p = SnapshotPolicy {
            max_apply_time: Duration::from_millis(500),
            max_log_bytes: 1000,
            max_age: Duration::from_secs(60),
            ..SnapshotPolicy::default()
        };
        assert_eq!(p.decide(&since(3, 10, 100, 5)), None, "below every bound");
        assert_eq!(p.decide(&since(1, 500, 0, 0)), Some(SnapshotReason::ApplyTime));
        assert_eq!(p.decide(&since(1, 499, 1000, 0)), Some(SnapshotReason::LogBytes));
        assert_eq!(p.decide(&since(1, 0, 0, 60)), Some(SnapshotReason::Age));
        // Apply time wins when several bounds are passed.
        assert_eq!(p.decide(&since(9, 900, 9000, 900)), Some(SnapshotReason::ApplyTime));
    }

    #[test]
    fn nothing_new_means_no_snapshot() {
        let p = SnapshotPolicy::default();
        // Old, and (after a restart) bytes of an unapplied tail: still nothing to cover.
        assert_eq!(p.decide(&since(0, 0, u64::MAX, 1_000_000)), None);
    }

    #[test]
    fn counters_accumulate_and_reset() {
        let c = WorkCounters::new();
        c.appended(70);
        c.applied(2, Duration::from_millis(30));
        c.applied(1, Duration::from_millis(20));
        c.appended(30);
        let s = c.get();
        assert_eq!(
            (s.entries, s.apply_time, s.log_bytes, s.snapshots),
            (3, Duration::from_millis(50), 100, 0)
        );
        c.reset();
        let s = c.get();
        assert_eq!(
            (s.entries, s.apply_time, s.log_bytes, s.snapshots),
            (0, Duration::ZERO, 0, 1)
        );
        assert!(s.age < Duration::from_secs(5));
    }
}
