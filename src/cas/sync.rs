//! # Artifact sync: every blob the catalog references, on every head, ahead of need
//!
//! A head that only fetched a blob when a node asked for it could not serve that node
//! once the head holding the blob died. [`ArtifactSync`] runs on every head: whenever
//! the applied state changes it computes the blobs the catalog references
//! ([`referenced`], the same function the blob GC keeps by, so the two never
//! disagree) and fetches every one this head lacks from the other heads (their
//! registered gRPC ports, under mutual TLS: [`PeerLink`]), through the resumable, deadline-bounded [`Fetcher`].
//!
//! - **Bounded.** At most `transfers` blobs at a time; a blob that failed waits
//!   ([`backoff`]: 1 s doubling to 5 min, jittered) before its next try, so a blob no
//!   reachable peer has costs one try per 5 minutes, not a busy loop. A blob a node
//!   waits for may use as many slots again.
//! - **Boot-critical first.** Kernels, built images and overlay trees before OCI
//!   layers and configs (which only a rebuild needs); a blob a node asked for and did
//!   not get ([`ArtifactSync::want`]) goes before all of them, past its backoff.
//! - **Quiet failures.** A blob's failure is a WARN the first time and then at most
//!   once per 10 minutes (with the count of tries), DEBUG otherwise.
//! - **Corruption.** A blob found corrupt — by a verified read while serving, or by
//!   the scrub ([`ScrubConfig`]), which re-hashes every blob at a bounded rate,
//!   bypassing the verification cache, because bits rot without changing mtime — is
//!   quarantined by [`Cas::verify`] and refetched at once (the sync watches
//!   [`Cas::quarantine_watch`]).
//! - **Reported.** [`ArtifactSync::missing`] is a watch of what this head lacks
//!   ([`Missing`]: count, bytes where the catalog records sizes); `wwctl cluster
//!   status` shows it per head, and [`ArtifactSync::lacks`] answers whether a given set
//!   of blobs is all here (for the DHCP side: a head does not take a rack whose nodes
//!   need a blob it lacks).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::http::{Fetcher, PeerLink, Timeouts};
use super::{Cas, CasError, Digest};
use crate::state::State;
use crate::store::StateReader;

/// `artifacts:` in `wulfd.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArtifactsConfig {
    /// Fetch every blob the catalog references ahead of need (default true). Off: only
    /// on demand, when a node or a build asks.
    pub prefetch: bool,
    /// Peer transfers at a time (1–16, default 2).
    pub transfers: usize,
    /// Re-hash stored blobs at most this fast, MiB/s (default 16; 0 = no scrub).
    pub scrub_mib_per_sec: u64,
    /// A full scrub pass at most this often (default 86400 = daily).
    pub scrub_interval_secs: u64,
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        ArtifactsConfig {
            prefetch: true,
            transfers: 2,
            scrub_mib_per_sec: 16,
            scrub_interval_secs: 86_400,
        }
    }
}

/// The scrub: rate and period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubConfig {
    pub bytes_per_sec: u64,
    pub every: Duration,
}

/// The sync's validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    pub prefetch: bool,
    pub transfers: usize,
    pub scrub: Option<ScrubConfig>,
    pub timeouts: Timeouts,
}

impl Default for SyncConfig {
    fn default() -> Self {
        ArtifactsConfig::default().validate().expect("defaults are valid")
    }
}

impl ArtifactsConfig {
    /// Check ranges; the error names the field.
    pub fn validate(&self) -> Result<SyncConfig, String> {
        if !(1..=16).contains(&self.transfers) {
            return Err(format!("transfers is {}; it must be 1 to 16", self.transfers));
        }
        if self.scrub_mib_per_sec > 0 && self.scrub_interval_secs == 0 {
            return Err("scrub_interval_secs must be 1 or more while the scrub is on".into());
        }
        Ok(SyncConfig {
            prefetch: self.prefetch,
            transfers: self.transfers,
            scrub: (self.scrub_mib_per_sec > 0).then(|| ScrubConfig {
                bytes_per_sec: self.scrub_mib_per_sec * 1024 * 1024,
                every: Duration::from_secs(self.scrub_interval_secs),
            }),
            timeouts: Timeouts::default(),
        })
    }
}

/// One blob the catalog references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// Bytes, when the catalog records them (image layers, kernels and built images
    /// do; OCI configs and overlay trees do not).
    pub size: Option<u64>,
    /// A node's boot reads it (kernel, built image, overlay tree), as opposed to a
    /// rebuild (layers, OCI config).
    pub boot: bool,
}

/// Every blob the catalog references: images (layers, config, kernels, built
/// image) and overlays (site and distribution trees). The blob GC keeps exactly these.
pub fn referenced(s: &State) -> BTreeMap<Digest, Need> {
    let mut out: BTreeMap<Digest, Need> = BTreeMap::new();
    let mut add = |d: Digest, size: Option<u64>, boot: bool| {
        let n = out.entry(d).or_insert(Need { size, boot });
        n.size = n.size.or(size);
        n.boot |= boot;
    };
    for v in s.images.values() {
        let e = &v.value;
        for l in &e.layers {
            add(l.digest, Some(l.size), false);
        }
        if let Some(c) = e.config {
            add(c, None, false);
        }
        if let Some(a) = &e.artifact {
            add(a.digest, Some(a.size), true);
        }
        for k in e.kernel.iter().chain(&e.kernels) {
            add(k.digest, Some(k.size), true);
        }
    }
    for v in s.overlays.values() {
        for d in v.value.blobs() {
            add(d, None, true);
        }
    }
    out
}

/// What this head lacks of what the catalog references.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Missing {
    /// The blobs, with what the catalog says of each.
    pub blobs: BTreeMap<Digest, Need>,
    /// How many blobs the catalog references in all.
    pub referenced: usize,
}

impl Missing {
    pub fn count(&self) -> usize {
        self.blobs.len()
    }

    /// Bytes of the missing blobs whose size the catalog records.
    pub fn known_bytes(&self) -> u64 {
        self.blobs.values().filter_map(|n| n.size).sum()
    }

    /// Missing blobs of unrecorded size (not in [`Missing::known_bytes`]).
    pub fn unknown_sizes(&self) -> usize {
        self.blobs.values().filter(|n| n.size.is_none()).count()
    }
}

/// The first delay after a blob's first failure, and the longest.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Failed fetches (of any blob) are a WARN at most this often; the line counts them.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Re-check the disk this often even when nothing changed (a blob deleted by hand).
const RESCAN_EVERY: Duration = Duration::from_secs(60);
/// A node asking again for a blob that just failed waits at least this long.
const URGENT_MIN_GAP: Duration = Duration::from_secs(1);

/// The wait after `failures` (≥ 1) failed tries of `d`: 1 s doubling to 5 min, with
/// ±20 % jitter derived from the digest, so heads and blobs do not retry in lockstep.
pub fn backoff(failures: u32, d: &Digest) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let base = BACKOFF_FIRST.saturating_mul(1u32 << exp).min(BACKOFF_MAX);
    let spread = (d.0[0] as u32 ^ (failures.wrapping_mul(0x9e))) % 41; // 0..=40
    base.mul_f64(0.8 + f64::from(spread) / 100.0)
}

/// The artifact sync of one head (see the module doc). Cheap to clone.
#[derive(Clone)]
pub struct ArtifactSync {
    inner: Arc<Inner>,
}

struct Inner {
    cas: Cas,
    missing: watch::Receiver<Arc<Missing>>,
    urgent: mpsc::Sender<Digest>,
    /// The applied index the published missing set is computed for (see
    /// [`ArtifactSync::as_of`]).
    as_of: Arc<AtomicU64>,
}

impl std::fmt::Debug for ArtifactSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.inner.missing.borrow();
        f.debug_struct("ArtifactSync")
            .field("missing", &m.count())
            .finish_non_exhaustive()
    }
}

impl ArtifactSync {
    /// Start the sync (and the scrub, if configured) of the head `id`, whose applied
    /// state `sm` is; both stop with `stop`.
    pub fn start(
        cas: Cas,
        sm: StateReader<State>,
        id: u64,
        cfg: SyncConfig,
        link: PeerLink,
        stop: CancellationToken,
    ) -> ArtifactSync {
        let (first, at) = compute(&cas, &sm);
        let (tx, rx) = watch::channel(Arc::new(first));
        let as_of = Arc::new(AtomicU64::new(at));
        let (urgent_tx, urgent_rx) = mpsc::channel(256);
        if let Some(scrub) = cfg.scrub {
            tokio::spawn(scrub_loop(cas.clone(), scrub, stop.clone()));
        }
        let worker = Worker {
            cas: cas.clone(),
            sm,
            id,
            fetcher: Fetcher::with_client(link.client().clone(), cfg.timeouts),
            link,
            cfg,
            tx,
            urgent_rx,
            retry: HashMap::new(),
            urgent: Vec::new(),
            inflight: HashSet::new(),
            was_complete: None,
            refs: BTreeMap::new(),
            as_of: as_of.clone(),
            warn: crate::logging::Every::new(WARN_EVERY),
        };
        tokio::spawn(worker.run(stop));
        ArtifactSync {
            inner: Arc::new(Inner {
                cas,
                missing: rx,
                urgent: urgent_tx,
                as_of,
            }),
        }
    }

    /// What this head lacks, updated as the state changes and transfers finish.
    pub fn missing(&self) -> watch::Receiver<Arc<Missing>> {
        self.inner.missing.clone()
    }

    /// The applied log index whose catalog the missing set reflects: read it *before*
    /// [`ArtifactSync::current`] and the set read after reflects at least this index.
    /// A head that just caught up the log reports "0 missing" of its old catalog for a
    /// moment; the promotion of a learner asks for this index to rule that out.
    pub fn as_of(&self) -> u64 {
        self.inner.as_of.load(Ordering::Acquire)
    }

    /// The current missing set.
    pub fn current(&self) -> Arc<Missing> {
        self.inner.missing.borrow().clone()
    }

    /// Whether any of `digests` is not in this head's store (a stat per digest, so
    /// always the disk's truth, also for blobs the catalog does not reference yet).
    pub fn lacks<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) -> bool {
        digests.into_iter().any(|d| !self.inner.cas.contains(d))
    }

    /// A node needed `d` and this head lacked it: fetch it before anything else, past
    /// its backoff. Never blocks; a request while the queue is full is dropped (the
    /// node asks again).
    pub fn want(&self, d: Digest) {
        let _ = self.inner.urgent.try_send(d);
    }
}

/// The set of missing blobs, from the applied state and the disk, and the applied
/// index it is of.
fn compute(cas: &Cas, sm: &StateReader<State>) -> (Missing, u64) {
    let (refs, at) = refs_at(sm);
    (missing_of(cas, &refs), at)
}

/// The catalog's references and the applied index they are of.
fn refs_at(sm: &StateReader<State>) -> (BTreeMap<Digest, Need>, u64) {
    sm.read_with_applied(|s, a| (referenced(s), a.map_or(0, |l| l.index)))
}

fn missing_of(cas: &Cas, refs: &BTreeMap<Digest, Need>) -> Missing {
    Missing {
        blobs: refs
            .iter()
            .filter(|(d, _)| !cas.contains(d))
            .map(|(d, n)| (*d, *n))
            .collect(),
        referenced: refs.len(),
    }
}

/// A blob's failed tries.
#[derive(Debug, Clone, Copy)]
struct Retry {
    failures: u32,
    last: Instant,
    next: Instant,
}

struct Worker {
    cas: Cas,
    sm: StateReader<State>,
    id: u64,
    fetcher: Fetcher,
    link: PeerLink,
    cfg: SyncConfig,
    tx: watch::Sender<Arc<Missing>>,
    urgent_rx: mpsc::Receiver<Digest>,
    retry: HashMap<Digest, Retry>,
    /// Asked for by nodes, oldest first.
    urgent: Vec<Digest>,
    inflight: HashSet<Digest>,
    was_complete: Option<bool>,
    /// The catalog's references as last computed.
    refs: BTreeMap<Digest, Need>,
    /// Shared with [`ArtifactSync::as_of`]; stored after each publication.
    as_of: Arc<AtomicU64>,
    /// Rate limit of the failed-fetch warning (all blobs together).
    warn: crate::logging::Every,
}

impl Worker {
    fn peers(&self) -> Vec<String> {
        self.sm.read(|s| {
            self.link
                .bases(s.cluster.heads.iter().filter(|(id, _)| **id != self.id).map(|(_, h)| h))
        })
    }

    /// After an applied entry: recompute only when the catalog's references changed
    /// (most entries are leases and node edits; blobs leave the disk only through
    /// quarantine, GC of unreferenced ones, or by hand, which the other wakes cover).
    fn state_changed(&mut self) {
        let (refs, at) = refs_at(&self.sm);
        if refs != self.refs {
            self.refs = refs;
            self.publish_from_refs();
        }
        // After the publication: a reader of this index then reads a set at least as new.
        self.as_of.store(at, Ordering::Release);
    }

    fn publish(&mut self) {
        let (refs, at) = refs_at(&self.sm);
        self.refs = refs;
        self.publish_from_refs();
        self.as_of.store(at, Ordering::Release);
    }

    fn publish_from_refs(&mut self) {
        let m = missing_of(&self.cas, &self.refs);
        self.retry.retain(|d, _| m.blobs.contains_key(d));
        let complete = m.blobs.is_empty();
        match (self.was_complete, complete) {
            (Some(false), true) => tracing::info!(
                blobs = m.referenced,
                "artifact sync: this head holds every blob the catalog references"
            ),
            (None | Some(true), false) => tracing::info!(
                missing = m.count(),
                bytes = m.known_bytes(),
                unknown_sizes = m.unknown_sizes(),
                "artifact sync: blobs the catalog references are missing here; fetching them from peers"
            ),
            _ => {}
        }
        self.was_complete = Some(complete);
        self.tx.send_if_modified(|cur| {
            if **cur == m {
                false
            } else {
                *cur = Arc::new(m);
                true
            }
        });
    }

    /// Blobs to start now, in order: asked-for ones, then boot-critical, then the rest.
    fn due(&self, now: Instant) -> Vec<Digest> {
        let missing = self.tx.borrow().clone();
        let ready = |d: &Digest| !self.inflight.contains(d) && self.retry.get(d).is_none_or(|r| r.next <= now);
        let mut out: Vec<Digest> = self.urgent.iter().copied().filter(|d| ready(d)).collect();
        if self.cfg.prefetch {
            for boot in [true, false] {
                out.extend(
                    missing
                        .blobs
                        .iter()
                        .filter(|(d, n)| n.boot == boot && ready(d) && !self.urgent.contains(d))
                        .map(|(d, _)| *d),
                );
            }
        }
        out
    }

    fn next_retry(&self) -> Option<Instant> {
        let missing = self.tx.borrow().clone();
        self.retry
            .iter()
            .filter(|(d, _)| {
                !self.inflight.contains(*d)
                    && (self.urgent.contains(d) || (self.cfg.prefetch && missing.blobs.contains_key(*d)))
            })
            .map(|(_, r)| r.next)
            .min()
    }

    fn urgent(&mut self, d: Digest) {
        if self.cas.contains(&d) || self.urgent.contains(&d) {
            return;
        }
        self.urgent.push(d);
        if let Some(r) = self.retry.get_mut(&d) {
            r.next = r.next.min(r.last + URGENT_MIN_GAP);
        }
    }

    fn finished(&mut self, d: Digest, r: Result<Digest, CasError>) {
        self.inflight.remove(&d);
        self.urgent.retain(|u| *u != d);
        match r {
            Ok(_) => {
                if let Some(r) = self.retry.remove(&d) {
                    tracing::info!(%d, failures = r.failures, "artifact sync: fetched after failed tries");
                } else {
                    tracing::debug!(%d, "artifact sync: fetched");
                }
            }
            Err(e) => {
                let now = Instant::now();
                let r = self.retry.entry(d).or_insert(Retry {
                    failures: 0,
                    last: now,
                    next: now,
                });
                r.failures += 1;
                r.last = now;
                let wait = backoff(r.failures, &d);
                r.next = now + wait;
                let (tries, failing) = (r.failures, self.retry.len());
                // One line for the whole worker, not one per blob: a dead head that held
                // a freshly built overlay leaves hundreds of blobs failing at once.
                if let Some(n) = self.warn.tick() {
                    tracing::warn!(
                        %d,
                        tries,
                        retry_in = ?wait,
                        blobs_failing = failing,
                        failed_fetches_since_last_line = n,
                        "artifact sync: {}",
                        crate::error::report(&e)
                    );
                } else {
                    tracing::debug!(%d, tries, retry_in = ?wait, "artifact sync: {e}");
                }
            }
        }
    }

    async fn run(mut self, stop: CancellationToken) {
        let mut applied = self.sm.applied_watch();
        let mut quarantined = self.cas.quarantine_watch();
        let mut tasks: JoinSet<(Digest, Result<Digest, CasError>)> = JoinSet::new();
        self.publish();
        loop {
            // Prefetches use `transfers` slots; a blob a node waits for may use as many
            // again, so it never queues behind large layers.
            let due = self.due(Instant::now());
            if !due.is_empty() {
                let peers = self.peers();
                for d in due {
                    let limit = if self.urgent.contains(&d) {
                        2 * self.cfg.transfers
                    } else {
                        self.cfg.transfers
                    };
                    if self.inflight.len() >= limit {
                        continue;
                    }
                    self.inflight.insert(d);
                    let (f, cas, peers) = (self.fetcher.clone(), self.cas.clone(), peers.clone());
                    tasks.spawn(async move { (d, f.fetch(&cas, &d, &peers).await) });
                }
            }
            let wake = self.next_retry().map(tokio::time::Instant::from_std);
            tokio::select! {
                _ = stop.cancelled() => return,
                r = applied.changed() => {
                    if r.is_err() {
                        return;
                    }
                    self.state_changed();
                }
                r = quarantined.changed() => {
                    if r.is_ok() {
                        self.publish();
                    }
                }
                Some(d) = self.urgent_rx.recv() => self.urgent(d),
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    match done {
                        Ok((d, r)) => self.finished(d, r),
                        Err(e) => {
                            tracing::error!("artifact sync: a transfer task failed: {e}");
                            self.inflight.clear();
                        }
                    }
                    self.publish();
                }
                _ = async { tokio::time::sleep_until(wake.expect("guarded")).await }, if wake.is_some() => {}
                _ = tokio::time::sleep(RESCAN_EVERY) => self.publish(),
            }
        }
    }
}

/// Re-hash every stored blob at most `cfg.bytes_per_sec`, once per `cfg.every`
/// (remembered across restarts in `scrub.stamp`, so a head restarted daily still
/// scrubs). A corrupt blob is quarantined by [`Cas::verify_fully`], which wakes the sync.
async fn scrub_loop(cas: Cas, cfg: ScrubConfig, stop: CancellationToken) {
    let stamp: PathBuf = cas.root().join("scrub.stamp");
    loop {
        let last = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let since = SystemTime::now().duration_since(last).unwrap_or_default();
        let wait = cfg.every.saturating_sub(since);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let (c, s) = (cas.clone(), stop.clone());
        let pass = tokio::task::spawn_blocking(move || scrub_pass(&c, cfg.bytes_per_sec, &s)).await;
        match pass {
            Ok(Ok(st)) => {
                if st.corrupt > 0 {
                    tracing::warn!(
                        blobs = st.blobs,
                        bytes = st.bytes,
                        corrupt = st.corrupt,
                        "scrub: corrupt blobs quarantined (they are fetched again from peers)"
                    );
                } else {
                    tracing::info!(blobs = st.blobs, bytes = st.bytes, "scrub: every blob verified");
                }
            }
            Ok(Err(e)) => tracing::warn!("scrub: {e}"),
            Err(e) => tracing::warn!("scrub task: {e}"),
        }
        if stop.is_cancelled() {
            return;
        }
        if let Err(e) = std::fs::write(&stamp, b"") {
            tracing::warn!(path = %stamp.display(), "scrub: cannot record the pass: {e}");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(cfg.every) => {}
            }
        }
    }
}

/// What one scrub pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrubStats {
    pub blobs: usize,
    pub bytes: u64,
    pub corrupt: usize,
}

/// Re-hash every blob (cache bypassed) at most `rate` bytes/s; stops early (at full
/// speed for the blob in hand) when `stop` fires.
pub fn scrub_pass(cas: &Cas, rate: u64, stop: &CancellationToken) -> Result<ScrubStats, CasError> {
    let started = Instant::now();
    let mut st = ScrubStats::default();
    let mut budget_used = 0u64;
    for b in cas.list()? {
        if stop.is_cancelled() {
            break;
        }
        let mut pace = |n: usize| {
            budget_used += n as u64;
            if rate == 0 || stop.is_cancelled() {
                return;
            }
            let due = Duration::from_secs_f64(budget_used as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead.min(Duration::from_secs(1)));
            }
        };
        match cas.verify_fully(&b.digest, &mut pace) {
            Ok(n) => {
                st.blobs += 1;
                st.bytes += n;
            }
            Err(CasError::Corrupt { .. }) => st.corrupt += 1,
            Err(CasError::Missing(_)) => {} // collected or fetched again meanwhile
            Err(e) => return Err(e),
        }
    }
    Ok(st)
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
